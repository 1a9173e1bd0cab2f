using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>
/// A directed host pair: wakes the VMs of the source host when the source host's grain announces a significant change.
/// Its conditions and history live with the samples, in the source host's grain. The VMs to wake are asked from that
/// host on activation and kept current by subscribe/unsubscribe.
/// </summary>
public sealed class PathGrain : Grain, IPathGrain
{
    private HashSet<string> _vms = new(StringComparer.Ordinal);

    private string FromHost => this.GetPrimaryKeyString().Split("->")[0];

    private string ToHost => this.GetPrimaryKeyString().Split("->")[1];

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _vms = (await GrainFactory.GetGrain<IHostGrain>(FromHost).ListVmsAsync()).ToHashSet(StringComparer.Ordinal);
    }

    public ValueTask ConditionsChangedAsync(PathConditions conditions)
    {
        foreach (var vm in _vms)
        {
            // One-way: a slow VM never holds up the others.
            _ = GrainFactory.GetGrain<IVmGrain>(vm).PathChangedAsync(ToHost, conditions).AsTask();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask SubscribeAsync(string vmId)
    {
        _vms.Add(vmId);
        return ValueTask.CompletedTask;
    }

    public ValueTask UnsubscribeAsync(string vmId)
    {
        _vms.Remove(vmId);
        return ValueTask.CompletedTask;
    }

    public ValueTask<PathConditions?> GetConditionsAsync() => GrainFactory.GetGrain<IHostGrain>(FromHost).GetPathAsync(ToHost);

    public ValueTask<ImmutableArray<PathConditions>> GetHistoryAsync() => GrainFactory.GetGrain<IHostGrain>(FromHost).GetPathHistoryAsync(ToHost);
}
