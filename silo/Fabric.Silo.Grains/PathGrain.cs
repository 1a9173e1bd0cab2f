using System.Collections.Immutable;
using Fabric.Silo.Selection;

namespace Fabric.Silo;

/// <summary>
/// A directed host pair: wakes the VMs of the source host when the source host's grain announces a significant change
/// (two-way calls, not awaited, so a VM's failure is known and it is told again).
/// Its conditions and history live with the samples, in the source host's grain. The VMs to wake are asked from that
/// host on activation and kept current by subscribe/unsubscribe.
/// </summary>
public sealed class PathGrain : Grain, IPathGrain
{
    /// <summary>How long a VM that took the path's conditions goes without being told them again.</summary>
    public static readonly TimeSpan RetellEvery = TimeSpan.FromMinutes(1);

    private HashSet<string> _vms = new(StringComparer.Ordinal);

    /// <summary>Per VM, the conditions it last took (its call returned) and when: what a renotification need not repeat.</summary>
    private readonly Dictionary<string, (PathConditions Conditions, DateTimeOffset At)> _told = new(StringComparer.Ordinal);

    private string FromHost => Ends[0];

    /// <summary>The destination host, one instance for every notice: each VM keeps it as the key of its path's state.</summary>
    private string ToHost => Ends[1];

    private string[] Ends => _ends ??= this.GetPrimaryKeyString().Split("->");

    private string[]? _ends;

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _vms = (await GrainFactory.GetGrain<IHostGrain>(FromHost).ListVmsAsync()).ToHashSet(StringComparer.Ordinal);
    }

    public ValueTask ConditionsChangedAsync(PathConditions conditions, bool repeat)
    {
        var now = DateTimeOffset.UtcNow;
        foreach (var vm in _vms)
        {
            // A change reaches every VM. The host grain also tells every path again every 15 s in case a notice was lost:
            // a VM whose last notice got through, of conditions like these, hears that repeat only once a minute (at
            // 100,000 paths the repeats were 67,000 VM calls a second).
            var known = _told.TryGetValue(vm, out var told);
            var news = !known || PathSmoother.Significant(told.Conditions, conditions);
            if (repeat && !news && now - told.At < RetellEvery)
            {
                continue;
            }
            // Not awaited: a slow VM never holds up the others. A repeat that is no news leaves what the VM took as it
            // was (the VM ignores conditions close to those it decided on, and drift must not hide the next change).
            _ = TellAsync(vm, news || !repeat ? conditions : told.Conditions, conditions, now);
        }
        return ValueTask.CompletedTask;
    }

    private async Task TellAsync(string vm, PathConditions taken, PathConditions conditions, DateTimeOffset at)
    {
        try
        {
            await GrainFactory.GetGrain<IVmGrain>(vm).PathChangedAsync(ToHost, conditions);
            if (_vms.Contains(vm))
            {
                _told[vm] = (taken, at);
            }
        }
        catch (Exception)
        {
            // Lost (the VM's silo died, or it failed): told again at the host's next renotification. The VM says its own faults.
            _told.Remove(vm);
        }
    }

    public ValueTask SubscribeAsync(string vmId)
    {
        _vms.Add(vmId);
        _told.Remove(vmId);
        return ValueTask.CompletedTask;
    }

    public ValueTask UnsubscribeAsync(string vmId)
    {
        _vms.Remove(vmId);
        _told.Remove(vmId);
        return ValueTask.CompletedTask;
    }

    public ValueTask<PathConditions?> GetConditionsAsync() => GrainFactory.GetGrain<IHostGrain>(FromHost).GetPathAsync(ToHost);

    public ValueTask<ImmutableArray<PathConditions>> GetHistoryAsync() => GrainFactory.GetGrain<IHostGrain>(FromHost).GetPathHistoryAsync(ToHost);
}
