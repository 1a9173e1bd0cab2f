using System.Collections.Immutable;
using Fabric.Silo;

namespace Fabric.Dashboard;

/// <summary>A host as the overview lists it.</summary>
public sealed record HostSummary(string HostId, HostInfo? Info, long Desired, long Acknowledged, ImmutableArray<string> Vms,
    ImmutableArray<(string Peer, PathConditions? Conditions)> Paths)
{
    public bool InSync => Desired == Acknowledged;
}

/// <summary>What every page reads from the grains, in one place.</summary>
public static class FleetReader
{
    public static async Task<(FleetView Fleet, ImmutableArray<HostSummary> Hosts, ImmutableArray<VmView> Vms)> ReadAsync(IGrainFactory grains)
    {
        var fleet = await ReadFleetAsync(grains);
        var (hosts, vms) = (ReadHostsAsync(grains, fleet), ReadVmsAsync(grains, fleet));
        return (fleet, await hosts, await vms);
    }

    public static ValueTask<FleetView> ReadFleetAsync(IGrainFactory grains) => grains.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync();

    /// <summary>Every host's summary (a page that lists no VMs reads only these).</summary>
    public static async Task<ImmutableArray<HostSummary>> ReadHostsAsync(IGrainFactory grains, FleetView fleet) =>
        [.. await Task.WhenAll(fleet.Hosts.Select(id => ReadHostAsync(grains, id)))];

    /// <summary>Every VM's view (a page that lists no hosts reads only these).</summary>
    public static async Task<ImmutableArray<VmView>> ReadVmsAsync(IGrainFactory grains, FleetView fleet) =>
        [.. await Task.WhenAll(fleet.Vms.Keys.Select(id => grains.GetGrain<IVmGrain>(id).GetAsync().AsTask()))];

    public static async Task<HostSummary> ReadHostAsync(IGrainFactory grains, string id)
    {
        var host = grains.GetGrain<IHostGrain>(id);
        var peers = await host.ListPeersAsync();
        var paths = await Task.WhenAll(peers.Select(async p => (p, await host.GetPathAsync(p))));
        return new HostSummary(id, await host.GetInfoAsync(), (await host.GetDesiredStateAsync()).Version, await host.GetAcknowledgedAsync(),
            await host.ListVmsAsync(), [.. paths]);
    }

    public static string Describe(PathConditions? c) => c is null ? "not measured yet"
        : $"{c.RttMs:0.#} ms, loss {c.Loss * 100:0.##} %, jitter {c.JitterMs:0.#} ms, {c.BandwidthMbps:0.#} Mbit/s";

    public static string Ago(DateTimeOffset at)
    {
        var age = DateTimeOffset.UtcNow - at;
        return age.TotalSeconds < 60 ? $"{Math.Max(0, age.TotalSeconds):0} s ago" : age.TotalMinutes < 60 ? $"{age.TotalMinutes:0} min ago" : at.ToString("u", System.Globalization.CultureInfo.InvariantCulture);
    }
}
