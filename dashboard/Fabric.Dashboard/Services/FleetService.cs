using System.Collections.Immutable;
using Fabric.Silo;

namespace Fabric.Dashboard.Services;

/// <summary>A host as the overview lists it.</summary>
public sealed record HostSummary(string HostId, HostInfo? Info, long Desired, long Acknowledged, ImmutableArray<string> Vms,
    ImmutableArray<(string Peer, PathConditions? Conditions)> Paths)
{
    public bool InSync => Desired == Acknowledged;
}

/// <summary>The fleet as the pages read it (hosts, VMs, paths) and the operator's membership changes, over the grain contracts.</summary>
public sealed class FleetService(IGrainFactory grains)
{
    public async Task<(FleetView Fleet, ImmutableArray<HostSummary> Hosts, ImmutableArray<VmView> Vms)> ReadAsync()
    {
        var fleet = await ReadFleetAsync();
        var (hosts, vms) = (ReadHostsAsync(fleet), ReadVmsAsync(fleet));
        return (fleet, await hosts, await vms);
    }

    public ValueTask<FleetView> ReadFleetAsync() => Fleet.GetAsync();

    /// <summary>Every host's summary (a page that lists no VMs reads only these).</summary>
    public async Task<ImmutableArray<HostSummary>> ReadHostsAsync(FleetView fleet) => [.. await Task.WhenAll(fleet.Hosts.Select(ReadHostAsync))];

    /// <summary>Every VM's view (a page that lists no hosts reads only these).</summary>
    public async Task<ImmutableArray<VmView>> ReadVmsAsync(FleetView fleet) => [.. await Task.WhenAll(fleet.Vms.Keys.Select(id => ReadVmAsync(id).AsTask()))];

    public ValueTask<VmView> ReadVmAsync(string vmId) => grains.GetGrain<IVmGrain>(vmId).GetAsync();

    public async Task<HostSummary> ReadHostAsync(string hostId)
    {
        var host = grains.GetGrain<IHostGrain>(hostId);
        var peers = await host.ListPeersAsync();
        var paths = await Task.WhenAll(peers.Select(async p => (p, await host.GetPathAsync(p))));
        return new HostSummary(hostId, await host.GetInfoAsync(), (await host.GetDesiredStateAsync()).Version, await host.GetAcknowledgedAsync(),
            await host.ListVmsAsync(), [.. paths]);
    }

    /// <summary>The stacks the control plane wants a host to run, per VM and path.</summary>
    public async Task<ImmutableArray<Binding>> ReadBindingsAsync(string hostId) => (await grains.GetGrain<IHostGrain>(hostId).GetDesiredStateAsync()).Bindings;

    /// <summary>A path's recent conditions, oldest first.</summary>
    public ValueTask<ImmutableArray<PathConditions>> ReadPathHistoryAsync(string from, string to) => grains.GetGrain<IHostGrain>(from).GetPathHistoryAsync(to);

    public async Task<bool> IsRemovedAsync(string hostId) => (await Fleet.ListRemovedAsync()).Contains(hostId);

    public ValueTask RemoveHostAsync(string hostId) => Fleet.RemoveHostAsync(hostId);

    public ValueTask ReadmitHostAsync(string hostId) => Fleet.ReadmitHostAsync(hostId);

    private IFleetGrain Fleet => grains.GetGrain<IFleetGrain>(IFleetGrain.Key);
}
