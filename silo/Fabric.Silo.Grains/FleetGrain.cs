using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>Persisted fleet index: hosts and each VM's host. Recent switches are soft state (the VMs keep their own logs).</summary>
[GenerateSerializer, Alias("fabric.fleet-state")]
public sealed class FleetState
{
    [Id(0)] public SortedSet<string> Hosts { get; set; } = new(StringComparer.Ordinal);
    [Id(1)] public Dictionary<string, string> Vms { get; set; } = new(StringComparer.Ordinal);
}

public sealed class FleetGrain([PersistentState("fleet", Storage.Name)] IPersistentState<FleetState> state) : Grain, IFleetGrain
{
    /// <summary>Switches kept for the overview, newest first.</summary>
    public const int RecentLength = 200;

    private readonly LinkedList<Decision> _recent = new();

    public async ValueTask HostSeenAsync(string hostId)
    {
        if (state.State.Hosts.Add(hostId))
        {
            await state.WriteStateAsync();
        }
    }

    public async ValueTask VmPlacedAsync(string vmId, string hostId)
    {
        if (state.State.Vms.GetValueOrDefault(vmId) != hostId)
        {
            state.State.Vms[vmId] = hostId;
            await state.WriteStateAsync();
        }
    }

    public async ValueTask VmRemovedAsync(string vmId)
    {
        if (state.State.Vms.Remove(vmId))
        {
            await state.WriteStateAsync();
        }
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
        state.State.Vms.ToImmutableSortedDictionary(StringComparer.Ordinal), [.. _recent]));
}
