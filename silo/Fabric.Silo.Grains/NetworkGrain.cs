using System.Collections.Immutable;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo;

/// <summary>Persisted per virtual network: each member VM's vNICs in it as routes (each names the VM's host), and each member host's addresses and key.</summary>
[GenerateSerializer, Alias("fabric.network-state")]
public sealed class NetworkState
{
    [Id(0)] public Dictionary<string, List<Route>> Members { get; set; } = new(StringComparer.Ordinal);
    [Id(1)] public Dictionary<string, Peer> Hosts { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>
/// A virtual network: the source of truth for where its vNICs live. A change is persisted, then told to the hosts it
/// concerns: every host with a VM in the network gets the routes that changed on other hosts, a host that joins the
/// network gets every route of the others, and a host whose last VM left gets them all withdrawn. It keeps the member
/// hosts' addresses and keys too, so a host grain learns its peers from its networks and never calls another host.
/// </summary>
public sealed class NetworkGrain([PersistentState("network", Storage.Name)] IPersistentState<NetworkState> state, ILogger<NetworkGrain> logger) : Grain, INetworkGrain
{
    private uint Vni => uint.Parse(this.GetPrimaryKeyString(), System.Globalization.CultureInfo.InvariantCulture);

    private HashSet<string> MemberHosts() => state.State.Members.Values.SelectMany(routes => routes.Select(r => r.HostId)).ToHashSet(StringComparer.Ordinal);

    private IEnumerable<Route> AllRoutes() => state.State.Members.Values.SelectMany(routes => routes);

    private ImmutableArray<Peer> PeersOf(IEnumerable<Route> routes) =>
        [.. routes.Select(r => r.HostId).Distinct(StringComparer.Ordinal).Select(h => state.State.Hosts.GetValueOrDefault(h)).OfType<Peer>()];

    public async ValueTask<ImmutableArray<string>> SetMemberAsync(string vmId, Peer host, ImmutableArray<Vnic> vnics, bool sealedVm)
    {
        if (vnics.FirstOrDefault(v => v.Vni != Vni) is { } foreign)
        {
            throw new ArgumentException($"network {Vni}: vNIC {foreign.Mac} of VM '{vmId}' is in vni {foreign.Vni}", nameof(vnics));
        }
        // A MAC is one vNIC's in a network: another VM claiming it (a misconfiguration, or a host lying) is not routed.
        var held = AllRoutes().Where(r => r.VmId != vmId).Select(r => r.Key).ToHashSet(StringComparer.Ordinal);
        var refused = vnics.Where(v => held.Contains(Route.KeyOf(Vni, v.Mac))).Select(v => v.Mac).ToImmutableArray();
        foreach (var mac in refused)
        {
            Log.MacTaken(logger, Vni, mac, vmId, AllRoutes().First(r => r.Key == Route.KeyOf(Vni, mac)).VmId);
        }
        var before = state.State.Members.GetValueOrDefault(vmId) ?? [];
        var after = vnics.Where(v => !refused.Contains(v.Mac)).Select(v => new Route(vmId, host.HostId, v, sealedVm)).ToList();
        var hostChanged = after.Count > 0 && state.State.Hosts.GetValueOrDefault(host.HostId) != host;
        if (before.SequenceEqual(after) && !hostChanged)
        {
            return refused;
        }
        var hostsBefore = MemberHosts();
        var removed = before.Where(old => !after.Any(r => r.Key == old.Key)).ToList();
        var upserted = after.Where(r => !before.Contains(r)).ToList();
        var (previousMembers, previousHosts) = (new Dictionary<string, List<Route>>(state.State.Members, StringComparer.Ordinal), new Dictionary<string, Peer>(state.State.Hosts, StringComparer.Ordinal));
        if (after.Count == 0)
        {
            state.State.Members.Remove(vmId);
        }
        else
        {
            state.State.Members[vmId] = after;
            state.State.Hosts[host.HostId] = host;
        }
        var hostsAfter = MemberHosts();
        foreach (var gone in state.State.Hosts.Keys.Where(h => !hostsAfter.Contains(h)).ToList())
        {
            state.State.Hosts.Remove(gone);
        }
        try
        {
            await state.WriteStateAsync();
        }
        catch
        {
            // Not persisted, so not told: the caller's retry finds the change still to make.
            (state.State.Members, state.State.Hosts) = (previousMembers, previousHosts);
            throw;
        }
        var calls = new List<Task>();
        foreach (var member in hostsBefore.Union(hostsAfter, StringComparer.Ordinal))
        {
            var stays = hostsAfter.Contains(member);
            ImmutableArray<Route> upserts, removals;
            if (!hostsBefore.Contains(member))
            {
                // Joined the network: everything the others have.
                (upserts, removals) = ([.. AllRoutes().Where(r => r.HostId != member)], []);
            }
            else if (!stays)
            {
                // Its last VM here left: nothing of this network stays on it.
                (upserts, removals) = ([], [.. AllRoutes().Concat(before).Where(r => r.HostId != member)]);
            }
            else
            {
                // A route moved here (the VM migrated to this host) is withdrawn: the VM is local now. A host whose
                // addresses or key changed comes again with every route that names it.
                (upserts, removals) = ([.. upserted.Concat(hostChanged ? AllRoutes().Where(r => r.HostId == host.HostId) : []).Distinct().Where(r => r.HostId != member)],
                    [.. removed.Where(r => r.HostId != member).Concat(before.Where(r => r.HostId != member && after.Any(a => a.Key == r.Key && a.HostId == member)))]);
            }
            if (upserts.Length > 0 || removals.Length > 0 || stays != hostsBefore.Contains(member))
            {
                calls.Add(TellAsync(member, stays, upserts, removals));
            }
        }
        await Task.WhenAll(calls);
        if (_owed.Count > 0)
        {
            // Hosts a call failed to (their silo died under it) are repaired from the state, not by the caller: its retry
            // finds the change made and would tell no one.
            // Kept alive meanwhile: the owed hosts are known only here, in memory.
            _repair ??= this.RegisterGrainTimer(RepairAsync, new GrainTimerCreationOptions(RepairEvery, RepairEvery) { KeepAlive = true });
        }
        return refused;
    }

    /// <summary>How often the hosts a change could not be told to are told the network as it is now.</summary>
    public static readonly TimeSpan RepairEvery = TimeSpan.FromSeconds(5);

    /// <summary>Per host a change could not be told to, the routes it was to withdraw (it may still hold them).</summary>
    private readonly Dictionary<string, HashSet<Route>> _owed = new(StringComparer.Ordinal);
    private IGrainTimer? _repair;

    /// <summary>Tells <paramref name="member"/> a change; a failure is owed to it (the change is persisted already).</summary>
    private async Task TellAsync(string member, bool stays, ImmutableArray<Route> upserts, ImmutableArray<Route> removals)
    {
        if (!await TryTellAsync(member, stays, upserts, removals))
        {
            if (!_owed.TryGetValue(member, out var owed))
            {
                _owed[member] = owed = [];
            }
            owed.UnionWith(removals);
        }
    }

    /// <summary>One call of <see cref="IHostGrain.NetworkChangedAsync"/>; false (and logged) when it failed.</summary>
    private async Task<bool> TryTellAsync(string member, bool stays, ImmutableArray<Route> upserts, ImmutableArray<Route> removals)
    {
        try
        {
            await GrainFactory.GetGrain<IHostGrain>(member).NetworkChangedAsync(Vni, stays, upserts, removals, PeersOf(upserts));
            return true;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Log.HostNotTold(logger, Vni, member, e.GetType().Name, e.Message);
            return false;
        }
    }

    /// <summary>
    /// Tells each host a change was lost to the network as it is now: a member gets every other host's route and loses
    /// the routes it was to withdraw that are not routes still; a host that left loses them all. Derived from the state,
    /// so an older change cannot undo a newer one.
    /// </summary>
    private async Task RepairAsync()
    {
        var routes = AllRoutes().ToList();
        var members = MemberHosts();
        // At once, not one after another: a host whose silo is suspected but not yet declared dead may take a response
        // timeout to fail, and this turn holds the network's other changes back meanwhile.
        await Task.WhenAll(_owed.ToList().Select(async owed =>
        {
            var (member, removed) = (owed.Key, owed.Value);
            var stays = members.Contains(member);
            ImmutableArray<Route> upserts = stays ? [.. routes.Where(r => r.HostId != member)] : [];
            ImmutableArray<Route> removals = [.. removed.Where(o => !routes.Any(r => r.Key == o.Key && r.VmId == o.VmId && r.HostId == o.HostId))
                .Concat(stays ? [] : routes.Where(r => r.HostId != member)).Distinct()];
            // A failure is tried again at the next tick.
            if (await TryTellAsync(member, stays, upserts, removals))
            {
                _owed.Remove(member);
                Log.HostRepaired(logger, Vni, member);
            }
        }));
        if (_owed.Count == 0)
        {
            _repair?.Dispose();
            _repair = null;
        }
    }

    public ValueTask<NetworkView> GetAsync() => ValueTask.FromResult(new NetworkView([.. AllRoutes()], PeersOf(AllRoutes())));

    public async ValueTask HostChangedAsync(Peer peer)
    {
        if (!state.State.Hosts.TryGetValue(peer.HostId, out var held) || held == peer)
        {
            return;
        }
        state.State.Hosts[peer.HostId] = peer;
        await state.WriteStateAsync();
        await Task.WhenAll(MemberHosts().Where(h => h != peer.HostId).Select(h => GrainFactory.GetGrain<IHostGrain>(h).PeerChangedAsync(peer).AsTask()));
    }
}

internal static partial class Log
{
    [LoggerMessage(20, LogLevel.Warning, "Network {Vni}: MAC {Mac} of VM '{VmId}' is already VM '{Holder}''s; it is not routed")]
    public static partial void MacTaken(ILogger logger, uint vni, string mac, string vmId, string holder);

    [LoggerMessage(21, LogLevel.Warning, "Network {Vni}: host {Host} was not told a change ({Error}: {Message}); it is told the network as it is every 5 s until it takes it")]
    public static partial void HostNotTold(ILogger logger, uint vni, string host, string error, string message);

    [LoggerMessage(22, LogLevel.Information, "Network {Vni}: host {Host} told the network as it is, after a change had not reached it")]
    public static partial void HostRepaired(ILogger logger, uint vni, string host);
}
