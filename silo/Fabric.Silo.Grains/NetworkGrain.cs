using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>Persisted per virtual network: each member VM's vNICs in it, as routes (each names the VM's host).</summary>
[GenerateSerializer, Alias("fabric.network-state")]
public sealed class NetworkState
{
    [Id(0)] public Dictionary<string, List<Route>> Members { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>
/// A virtual network: the source of truth for where its vNICs live. A change is persisted, then told to the hosts it
/// concerns: every host with a VM in the network gets the routes that changed on other hosts, a host that joins the
/// network gets every route of the others, and a host whose last VM left gets them all withdrawn.
/// </summary>
public sealed class NetworkGrain([PersistentState("network", Storage.Name)] IPersistentState<NetworkState> state) : Grain, INetworkGrain
{
    private uint Vni => uint.Parse(this.GetPrimaryKeyString(), System.Globalization.CultureInfo.InvariantCulture);

    private HashSet<string> Hosts() => state.State.Members.Values.SelectMany(routes => routes.Select(r => r.HostId)).ToHashSet(StringComparer.Ordinal);

    private IEnumerable<Route> AllRoutes() => state.State.Members.Values.SelectMany(routes => routes);

    public async ValueTask SetMemberAsync(string vmId, string hostId, ImmutableArray<Vnic> vnics)
    {
        if (vnics.Any(v => v.Vni != Vni))
        {
            throw new ArgumentException($"network {Vni}: vNIC of VM '{vmId}' is in vni {vnics.First(v => v.Vni != Vni).Vni}", nameof(vnics));
        }
        var before = state.State.Members.GetValueOrDefault(vmId) ?? [];
        var after = vnics.Select(v => new Route(vmId, hostId, v)).ToList();
        if (before.SequenceEqual(after))
        {
            return;
        }
        var hostsBefore = Hosts();
        var removed = before.Where(old => !after.Any(r => r.Key == old.Key)).ToList();
        var upserted = after.Where(r => !before.Contains(r)).ToList();
        if (after.Count == 0)
        {
            state.State.Members.Remove(vmId);
        }
        else
        {
            state.State.Members[vmId] = after;
        }
        await state.WriteStateAsync();
        var hostsAfter = Hosts();
        var calls = new List<Task>();
        foreach (var host in hostsBefore.Union(hostsAfter, StringComparer.Ordinal))
        {
            var member = hostsAfter.Contains(host);
            ImmutableArray<Route> upserts, removals;
            if (!hostsBefore.Contains(host))
            {
                // Joined the network: everything the others have.
                (upserts, removals) = ([.. AllRoutes().Where(r => r.HostId != host)], []);
            }
            else if (!member)
            {
                // Its last VM here left: nothing of this network stays on it.
                (upserts, removals) = ([], [.. AllRoutes().Concat(before).Where(r => r.HostId != host)]);
            }
            else
            {
                // A route moved here (the VM migrated to this host) is withdrawn: the VM is local now.
                (upserts, removals) = ([.. upserted.Where(r => r.HostId != host)],
                    [.. removed.Where(r => r.HostId != host).Concat(before.Where(r => r.HostId != host && after.Any(a => a.Key == r.Key && a.HostId == host)))]);
            }
            if (upserts.Length > 0 || removals.Length > 0 || member != hostsBefore.Contains(host))
            {
                calls.Add(GrainFactory.GetGrain<IHostGrain>(host).NetworkChangedAsync(Vni, member, upserts, removals).AsTask());
            }
        }
        await Task.WhenAll(calls);
    }

    public ValueTask<ImmutableArray<Route>> GetRoutesAsync() => ValueTask.FromResult(AllRoutes().ToImmutableArray());

    public async ValueTask HostChangedAsync(Peer peer) =>
        await Task.WhenAll(Hosts().Where(h => h != peer.HostId).Select(h => GrainFactory.GetGrain<IHostGrain>(h).PeerChangedAsync(peer).AsTask()));
}
