using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>Persisted fleet index: hosts and each VM's host. Recent switches are soft state (the VMs keep their own logs).</summary>
[GenerateSerializer, Alias("fabric.fleet-state")]
public sealed class FleetState
{
    [Id(0)] public SortedSet<string> Hosts { get; set; } = new(StringComparer.Ordinal);
    [Id(1)] public Dictionary<string, string> Vms { get; set; } = new(StringComparer.Ordinal);
    [Id(2)] public SortedSet<string> Removed { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>
/// The fleet's index. Every placement tells it, so it must not cost a placement a write of the whole index: changes are
/// written together at most every <see cref="FlushPeriod"/> (and on deactivation). A crash loses at most that much of
/// the index, never a placement (each VM persists its own, and agents place their VMs again on a new epoch). Measured
/// by <c>bench/fleet.sh</c>: a write per placement halved placements per second at 10,000 VMs.
/// </summary>
public sealed class FleetGrain([PersistentState("fleet", Storage.Name)] IPersistentState<FleetState> state) : Grain, IFleetGrain
{
    /// <summary>Switches kept for the overview, newest first.</summary>
    public const int RecentLength = 200;

    private static readonly TimeSpan FlushPeriod = TimeSpan.FromSeconds(2);

    private readonly LinkedList<Decision> _recent = new();
    private bool _dirty;
    private IGrainTimer? _flush;

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _flush = this.RegisterGrainTimer(FlushAsync, FlushPeriod, FlushPeriod);
        return Task.CompletedTask;
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _flush?.Dispose();
        await FlushAsync();
    }

    private async Task FlushAsync()
    {
        if (_dirty)
        {
            _dirty = false;
            await state.WriteStateAsync();
        }
    }

    public ValueTask HostSeenAsync(string hostId)
    {
        _dirty |= !state.State.Removed.Contains(hostId) && state.State.Hosts.Add(hostId);
        return ValueTask.CompletedTask;
    }

    public ValueTask VmPlacedAsync(string vmId, string hostId)
    {
        if (state.State.Vms.GetValueOrDefault(vmId) != hostId)
        {
            state.State.Vms[vmId] = hostId;
            _dirty = true;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask VmRemovedAsync(string vmId)
    {
        _dirty |= state.State.Vms.Remove(vmId);
        return ValueTask.CompletedTask;
    }

    public ValueTask SwitchedAsync(Decision decision)
    {
        _recent.AddFirst(decision);
        while (_recent.Count > RecentLength)
        {
            _recent.RemoveLast();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask<FleetView> GetAsync() => ValueTask.FromResult(new FleetView([.. state.State.Hosts],
        state.State.Vms.ToImmutableSortedDictionary(StringComparer.Ordinal), [.. _recent]) { Removed = [.. state.State.Removed] });

    public async ValueTask RemoveHostAsync(string hostId)
    {
        if (state.State.Removed.Add(hostId))
        {
            state.State.Hosts.Remove(hostId);
            // Persisted before anything else: a silo that restarts meanwhile still refuses the host.
            await state.WriteStateAsync();
        }
        // The host grain refuses the host first, so nothing it does from now on places a VM; then its VMs leave their
        // networks, so the hosts that shared them withdraw its routes and then the host itself. The VM grains call back
        // here (interleaved) and into the host grain, which is not busy: this grain orchestrates.
        var host = GrainFactory.GetGrain<IHostGrain>(hostId);
        var vms = (await host.ListVmsAsync()).Union(state.State.Vms.Where(v => v.Value == hostId).Select(v => v.Key), StringComparer.Ordinal).ToList();
        await host.ForgetAsync();
        foreach (var vm in vms)
        {
            await GrainFactory.GetGrain<IVmGrain>(vm).RemoveAsync(hostId);
        }
    }

    public async ValueTask ReadmitHostAsync(string hostId)
    {
        if (state.State.Removed.Remove(hostId))
        {
            await state.WriteStateAsync();
        }
        await GrainFactory.GetGrain<IHostGrain>(hostId).ReadmitAsync();
    }

    public ValueTask<ImmutableArray<string>> ListRemovedAsync() => ValueTask.FromResult<ImmutableArray<string>>([.. state.State.Removed]);
}
