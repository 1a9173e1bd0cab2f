using System.Collections.Immutable;
using Fabric.Silo.Selection;

namespace Fabric.Silo;

/// <summary>
/// A directed host pair. Conditions are soft state rebuilt from telemetry within seconds, so they are not persisted;
/// the VMs to wake are the source host's VMs (asked once on activation, kept current by subscribe/unsubscribe).
/// </summary>
public sealed class PathGrain : Grain, IPathGrain
{
    private const int HistoryLength = 600;
    private readonly PathSmoother _smoother = new();
    private readonly Queue<PathConditions> _history = new();
    private HashSet<string> _vms = new(StringComparer.Ordinal);

    private string FromHost => this.GetPrimaryKeyString().Split("->")[0];

    private string ToHost => this.GetPrimaryKeyString().Split("->")[1];

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _vms = (await GrainFactory.GetGrain<IHostGrain>(FromHost).ListVmsAsync()).ToHashSet(StringComparer.Ordinal);
    }

    public ValueTask ReportAsync(PathSample sample)
    {
        var changed = _smoother.Add(sample);
        _history.Enqueue(_smoother.Current!);
        while (_history.Count > HistoryLength)
        {
            _history.Dequeue();
        }
        if (changed)
        {
            foreach (var vm in _vms)
            {
                // One-way: a slow VM never holds up telemetry ingestion.
                _ = GrainFactory.GetGrain<IVmGrain>(vm).PathChangedAsync(ToHost, _smoother.Current!).AsTask();
            }
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

    public ValueTask<PathConditions?> GetConditionsAsync() => ValueTask.FromResult(_smoother.Current);

    public ValueTask<ImmutableArray<PathConditions>> GetHistoryAsync() => ValueTask.FromResult(_history.ToImmutableArray());
}
