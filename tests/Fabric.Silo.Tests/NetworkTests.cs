using System.Collections.Immutable;
using Fabric.Testing;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// The control plane as the source of truth for where VMs live (a real two-silo cluster): each host's desired state holds
/// the routes and peers of exactly the virtual networks it has a VM in, follows placements, moves and removals as deltas,
/// and survives the host grain's reactivation.
/// </summary>
[Collection(ClusterCollection.Name)]
public class NetworkTests(ClusterFixture fixture)
{
    private static string Unique(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..20];

    private static uint UniqueVni() => (uint)Random.Shared.Next(1_000, 16_000_000);

    private static HostInfo Host(string id, string key, string address = "127.0.0.1") => new(id, address, null, 47110, [.. HostStacks], [], "test") { PublicKey = key };

    private static VmPlacement On(string host, uint vni, string mac, string ipv4) =>
        new(host, "vm", vni, [mac], null) { Vnics = [new Vnic(mac, vni, [ipv4], [])] };

    private async Task<(string Id, RecordingAgent Agent)> RegisteredAsync(string prefix)
    {
        var id = Unique(prefix);
        var agent = new RecordingAgent();
        await fixture.Client.GetGrain<IHostGrain>(id).RegisterAsync(Host(id, "key-" + id), fixture.Client.CreateObjectReference<IAgentObserver>(agent));
        return (id, agent);
    }

    private Task<DesiredState> DesiredAsync(string host) => fixture.Client.GetGrain<IHostGrain>(host).GetDesiredStateAsync().AsTask();

    private static string[] Routes(DesiredState state) => [.. state.Routes.Select(r => $"{r.VmId}@{r.HostId}:{r.Vnic.Mac}")];

    private static string[] Peers(DesiredState state) => [.. state.Peers.Select(p => $"{p.HostId}={p.PublicKey}")];

    [Fact]
    public async Task ARouteToAConfidentialVm_SaysSo_AndFollowsItsPolicy()
    {
        var (a, agentA) = await RegisteredAsync("host-a");
        var (b, _) = await RegisteredAsync("host-b");
        var net = UniqueVni();
        var (vm1, vm2) = (Unique("vm1"), Unique("vm2"));
        await fixture.Client.GetGrain<IVmGrain>(vm1).PlaceAsync(On(a, net, "52:54:00:00:00:01", "10.0.0.1"));
        await fixture.Client.GetGrain<IVmGrain>(vm2).PlaceAsync(On(b, net, "52:54:00:00:00:02", "10.0.0.2"));
        Assert.False((await DesiredAsync(a)).Routes.Single().Sealed);
        // vm2 becomes confidential: host-a, which forwards to it, is told to send to it only encrypted; and told again
        // when it no longer is.
        Assert.True((await fixture.Client.GetGrain<IVmGrain>(vm2).SetPolicyAsync(Policy("general", security: "confidential"))).Accepted);
        Assert.True((await DesiredAsync(a)).Routes.Single().Sealed);
        Eventually.True(() => agentA.States.Any(s => s.RouteUpserts.Any(r => r.VmId == vm2 && r.Sealed)), TimeSpan.FromSeconds(10), "host-a's agent told",
            () => string.Join("; ", agentA.States.Select(s => string.Join(",", s.RouteUpserts.Select(r => $"{r.VmId}:{r.Sealed}")))));
        Assert.False((await DesiredAsync(b)).Routes.Single().Sealed);
        Assert.True((await fixture.Client.GetGrain<IVmGrain>(vm2).SetPolicyAsync(Policy("general"))).Accepted);
        Assert.False((await DesiredAsync(a)).Routes.Single().Sealed);
    }

    [Fact]
    public async Task EachHostGetsTheRoutesAndPeersOfItsOwnNetworksOnly_AndFollowsMovesAndRemovals()
    {
        var (a, agentA) = await RegisteredAsync("host-a");
        var (b, _) = await RegisteredAsync("host-b");
        var (c, agentC) = await RegisteredAsync("host-c");
        var (d, agentD) = await RegisteredAsync("host-d");
        var (net1, net2) = (UniqueVni(), UniqueVni());
        var (vm1, vm2, vm3) = (Unique("vm1"), Unique("vm2"), Unique("vm3"));
        await fixture.Client.GetGrain<IVmGrain>(vm1).PlaceAsync(On(a, net1, "52:54:00:00:00:01", "10.0.0.1"));
        await fixture.Client.GetGrain<IVmGrain>(vm2).PlaceAsync(On(b, net1, "52:54:00:00:00:02", "10.0.0.2"));
        await fixture.Client.GetGrain<IVmGrain>(vm3).PlaceAsync(On(c, net2, "52:54:00:00:00:03", "10.0.0.3"));

        var stateA = await DesiredAsync(a);
        Assert.Equal([$"{vm2}@{b}:52:54:00:00:00:02"], Routes(stateA));
        Assert.Equal(["10.0.0.2"], stateA.Routes[0].Vnic.IPv4);
        Assert.Equal([$"{b}=key-{b}"], Peers(stateA));
        Assert.Equal([$"{vm1}@{a}:52:54:00:00:00:01"], Routes(await DesiredAsync(b)));
        // host-c shares no network with them: it hears of none of it, and has no peers.
        Assert.Empty(Routes(await DesiredAsync(c)));
        Assert.Empty(Peers(await DesiredAsync(c)));
        Assert.DoesNotContain(agentC.States, s => s.RouteUpserts.Length > 0 || s.PeerUpserts.Length > 0);
        // host-a's agent heard it as a delta.
        Assert.Contains(agentA.States, s => s.RouteUpserts.Any(r => r.VmId == vm2) && s.PeerUpserts.Any(p => p.HostId == b));

        // vm2 migrates to host-d: host-a routes it there and drops host-b, host-b keeps nothing of the network, host-d gets it all.
        await fixture.Client.GetGrain<IVmGrain>(vm2).PlaceAsync(On(d, net1, "52:54:00:00:00:02", "10.0.0.2"));
        stateA = await DesiredAsync(a);
        Assert.Equal([$"{vm2}@{d}:52:54:00:00:00:02"], Routes(stateA));
        Assert.Equal([$"{d}=key-{d}"], Peers(stateA));
        Assert.Empty(Routes(await DesiredAsync(b)));
        Assert.Empty(Peers(await DesiredAsync(b)));
        Assert.Equal([$"{vm1}@{a}:52:54:00:00:00:01"], Routes(await DesiredAsync(d)));
        Assert.Contains(agentD.States, s => s.RouteUpserts.Any(r => r.VmId == vm1));

        // host-d comes back with a new key (its agent lost its state): host-a learns it; host-c still hears nothing.
        await fixture.Client.GetGrain<IHostGrain>(d).RegisterAsync(Host(d, "rotated-" + d), fixture.Client.CreateObjectReference<IAgentObserver>(agentD));
        await Eventually.TrueAsync(async () => Peers(await DesiredAsync(a)).SequenceEqual([$"{d}=rotated-{d}"]), TimeSpan.FromSeconds(10), "host-a learns host-d's new key",
            async () => string.Join(", ", Peers(await DesiredAsync(a))));
        // The push to host-a's agent is a one-way call: it may land after the desired state read above.
        Eventually.True(() => agentA.States.Any(s => s.PeerUpserts.Any(p => p.PublicKey == "rotated-" + d)), TimeSpan.FromSeconds(10), "host-a's agent told of host-d's new key",
            () => string.Join("; ", agentA.States.Select(s => string.Join(",", s.PeerUpserts.Select(p => p.PublicKey)))));

        // The host grain's routes are soft state: a new activation reads them back from its networks.
        var versionBefore = (await DesiredAsync(a)).Version;
        await fixture.Cluster.DeactivateAsync((IAddressable)fixture.Client.GetGrain<IHostGrain>(a));
        stateA = await DesiredAsync(a);
        Assert.NotEqual(versionBefore >> 32, stateA.Version >> 32);
        Assert.Equal([$"{vm2}@{d}:52:54:00:00:00:02"], Routes(stateA));
        Assert.Equal([$"{d}=rotated-{d}"], Peers(stateA));

        // vm1 goes: host-d keeps nothing of the network; vm2's own host keeps its VM (no route to itself).
        // The old host's late deregistration of a VM that moved on changes nothing.
        await fixture.Client.GetGrain<IVmGrain>(vm2).RemoveAsync(b);
        Assert.Equal(d, (await fixture.Client.GetGrain<IVmGrain>(vm2).GetAsync()).Placement?.HostId);
        Assert.Equal([$"{vm2}@{d}:52:54:00:00:00:02"], Routes(await DesiredAsync(a)));

        await fixture.Client.GetGrain<IVmGrain>(vm1).RemoveAsync(a);
        Assert.Empty(Routes(await DesiredAsync(d)));
        Assert.Empty(Peers(await DesiredAsync(d)));
        Assert.Empty(Routes(await DesiredAsync(a)));
        Assert.Empty(Peers(await DesiredAsync(a)));
        Assert.Equal([$"{vm2}@{d}:52:54:00:00:00:02"], (await fixture.Client.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(net1)).GetAsync()).Routes.Select(r => $"{r.VmId}@{r.HostId}:{r.Vnic.Mac}"));
    }

    [Fact]
    public async Task HostGrainsThatShareANetwork_ReactivateTogether_AndReadTheirRoutesAndPeersBack()
    {
        // Six hosts, two VMs each, all in one network: every host's activation reads routes and peers that name the
        // others. They reactivate at once (as after a silo's loss): none may wait on another's activation.
        var hosts = new List<string>();
        for (var i = 0; i < 6; i++)
        {
            hosts.Add((await RegisteredAsync($"host{i}")).Id);
        }
        var vni = UniqueVni();
        for (var i = 0; i < 12; i++)
        {
            await fixture.Client.GetGrain<IVmGrain>(Unique($"vm{i}")).PlaceAsync(On(hosts[i % 6], vni, $"52:54:00:00:01:{i:x2}", $"10.1.0.{i + 1}"));
        }
        var before = await Task.WhenAll(hosts.Select(DesiredAsync));
        Assert.All(before, state => Assert.Equal(10, state.Routes.Length));
        Assert.All(before, state => Assert.Equal(5, state.Peers.Length));
        await Task.WhenAll(hosts.Select(h => fixture.Cluster.DeactivateAsync((IAddressable)fixture.Client.GetGrain<IHostGrain>(h))));
        var after = await Task.WhenAll(hosts.Select(DesiredAsync)).WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        for (var i = 0; i < hosts.Count; i++)
        {
            Assert.Equal(Routes(before[i]), Routes(after[i]));
            Assert.Equal(Peers(before[i]), Peers(after[i]));
        }
    }

    [Fact]
    public async Task AVnicOfAnotherNetwork_IsRefusedNamingIt_AndNothingChanges()
    {
        var vni = UniqueVni();
        var network = fixture.Client.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(vni));
        var e = await Assert.ThrowsAsync<ArgumentException>(async () =>
            await network.SetMemberAsync("vm-x", new Peer("host-x", "127.0.0.1", null, 1, null), [new Vnic("52:54:00:00:00:09", vni + 1, [], [])], false));
        Assert.Contains($"is in vni {vni + 1}", e.Message, StringComparison.Ordinal);
        Assert.Empty((await network.GetAsync()).Routes);
    }

    [Fact]
    public async Task AMacAnotherVmOfTheNetworkHolds_IsNotRouted_AndTheHolderKeepsIt()
    {
        var (a, _) = await RegisteredAsync("host-a");
        var (b, _) = await RegisteredAsync("host-b");
        var (c, _) = await RegisteredAsync("host-c");
        var vni = UniqueVni();
        var (owner, thief) = (Unique("owner"), Unique("thief"));
        await fixture.Client.GetGrain<IVmGrain>(owner).PlaceAsync(On(a, vni, "52:54:00:00:00:01", "10.0.0.1"));
        await fixture.Client.GetGrain<IVmGrain>(Unique("vm")).PlaceAsync(On(c, vni, "52:54:00:00:00:03", "10.0.0.3"));
        // Another VM on another host claims the owner's MAC (say, in upper case): nobody routes it there.
        await fixture.Client.GetGrain<IVmGrain>(thief).PlaceAsync(On(b, vni, "52:54:00:00:00:01", "10.0.0.9") with { Vnics = [new Vnic("52:54:00:00:00:01", vni, ["10.0.0.9"], [])] });
        var refused = await fixture.Client.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(vni)).SetMemberAsync(thief, new Peer(b, "127.0.0.1", null, 47110, "key-" + b),
            [new Vnic("52:54:00:00:00:01".ToUpperInvariant(), vni, ["10.0.0.9"], [])], false);
        Assert.Equal(["52:54:00:00:00:01".ToUpperInvariant()], refused);
        Assert.Equal([$"{owner}@{a}:52:54:00:00:00:01"], Routes(await DesiredAsync(c)).Where(r => r.EndsWith(":52:54:00:00:00:01", StringComparison.Ordinal)));
        Assert.DoesNotContain((await fixture.Client.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(vni)).GetAsync()).Routes, r => r.VmId == thief);
    }

    [Fact]
    public async Task AHostRegisteredUnderAnotherHostsId_IsRefused()
    {
        var id = Unique("host");
        var e = await Assert.ThrowsAsync<ArgumentException>(async () =>
            await fixture.Client.GetGrain<IHostGrain>(id).RegisterAsync(Host("someone-else", "key"), fixture.Client.CreateObjectReference<IAgentObserver>(new RecordingAgent())));
        Assert.Contains("registered on host grain", e.Message, StringComparison.Ordinal);
        Assert.Null(await fixture.Client.GetGrain<IHostGrain>(id).GetInfoAsync());
    }

    [Fact]
    public void ThePlacementsVnicsAreItsIdentity_ButWhatItRunsIsNot()
    {
        var a = On("h", 7, "52:54:00:00:00:01", "10.0.0.1");
        Assert.Equal(a, On("h", 7, "52:54:00:00:00:01", "10.0.0.1") with { Running = ImmutableDictionary<string, string>.Empty.Add("x", "y") });
        Assert.NotEqual(a, On("h", 7, "52:54:00:00:00:01", "10.0.0.9"));
    }
}
