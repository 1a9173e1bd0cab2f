using System.Collections.Immutable;
using Microsoft.Extensions.Logging;
using Orleans.Utilities;

namespace Fabric.Silo;

/// <summary>Persisted per host: what the agent said about itself, the desired state and its acknowledgement, the VMs placed here.</summary>
[GenerateSerializer, Alias("fabric.host-state")]
public sealed class HostState
{
    [Id(0)] public HostInfo? Info { get; set; }
    [Id(1)] public long Version { get; set; }
    [Id(2)] public Dictionary<string, Binding> Bindings { get; set; } = new(StringComparer.Ordinal);
    [Id(3)] public long Acknowledged { get; set; }
    [Id(4)] public HashSet<string> Vms { get; set; } = new(StringComparer.Ordinal);
    [Id(5)] public HashSet<string> Peers { get; set; } = new(StringComparer.Ordinal);
}

public sealed class HostGrain : Grain, IHostGrain
{
    private const int OutcomeLimit = 2000;
    private readonly IPersistentState<HostState> _state;
    private readonly ObserverManager<IAgentObserver> _observers;
    private readonly Queue<Outcome> _outcomes = new();

    public HostGrain([PersistentState("host", Storage.Name)] IPersistentState<HostState> state, ILogger<HostGrain> logger)
    {
        _state = state;
        // An agent renews well within this; a vanished agent stops being notified after it.
        _observers = new ObserverManager<IAgentObserver>(TimeSpan.FromMinutes(1), logger);
    }

    private static string Key(Binding b) => $"{b.VmId}|{b.RemoteHost}";

    private DesiredState Desired => new(this.GetPrimaryKeyString(), _state.State.Version,
        [.. _state.State.Bindings.Values.OrderBy(b => b.VmId, StringComparer.Ordinal).ThenBy(b => b.RemoteHost, StringComparer.Ordinal)]);

    public async ValueTask<DesiredState> RegisterAsync(HostInfo info, IAgentObserver observer)
    {
        if (info.HostId != this.GetPrimaryKeyString())
        {
            throw new ArgumentException($"host id '{info.HostId}' registered on host grain '{this.GetPrimaryKeyString()}'", nameof(info));
        }
        _observers.Subscribe(observer, observer);
        if (_state.State.Info != info)
        {
            _state.State.Info = info;
            await _state.WriteStateAsync();
        }
        return Desired;
    }

    public ValueTask RenewAsync(IAgentObserver observer)
    {
        _observers.Subscribe(observer, observer);
        return ValueTask.CompletedTask;
    }

    public async ValueTask<long> BindAsync(Binding binding)
    {
        if (_state.State.Bindings.TryGetValue(Key(binding), out var existing) && existing == binding)
        {
            return _state.State.Version;
        }
        _state.State.Bindings[Key(binding)] = binding;
        return await PublishAsync([binding], []);
    }

    public async ValueTask<long> UnbindVmAsync(string vmId)
    {
        var removed = _state.State.Bindings.Where(b => b.Value.VmId == vmId).ToList();
        if (removed.Count == 0)
        {
            return _state.State.Version;
        }
        removed.ForEach(b => _state.State.Bindings.Remove(b.Key));
        return await PublishAsync([], [.. removed.Select(b => b.Value)]);
    }

    private async ValueTask<long> PublishAsync(ImmutableArray<Binding> upserts, ImmutableArray<Binding> removals)
    {
        var change = new DesiredStateChange(this.GetPrimaryKeyString(), _state.State.Version, _state.State.Version + 1, upserts, removals);
        _state.State.Version++;
        // Persisted before anyone is told: a restarted silo never hands out an older version under a newer number.
        await _state.WriteStateAsync();
        // Not awaited: a slow or vanished agent must not hold up the VMs deciding for this host. It reconciles by
        // version whenever it hears (a push, its renewal, or re-registering after a restart), so a lost push costs time,
        // never consistency. Observers that fail are dropped by the manager.
        _ = _observers.Notify(o => o.DesiredStateChangedAsync(change));
        return change.Version;
    }

    public async ValueTask AcknowledgeAsync(long version)
    {
        if (version > _state.State.Acknowledged && version <= _state.State.Version)
        {
            _state.State.Acknowledged = version;
            await _state.WriteStateAsync();
        }
    }

    public async ValueTask ReportAsync(ImmutableArray<PathSample> paths, ImmutableArray<Outcome> outcomes)
    {
        var newPeer = false;
        var reports = new List<Task>(paths.Length);
        foreach (var sample in paths)
        {
            newPeer |= _state.State.Peers.Add(sample.ToHost);
            reports.Add(GrainFactory.GetGrain<IPathGrain>(IPathGrain.KeyOf(sample.FromHost, sample.ToHost)).ReportAsync(sample).AsTask());
        }
        foreach (var outcome in outcomes)
        {
            _outcomes.Enqueue(outcome);
        }
        while (_outcomes.Count > OutcomeLimit)
        {
            _outcomes.Dequeue();
        }
        await Task.WhenAll(reports);
        if (newPeer)
        {
            await _state.WriteStateAsync();
        }
    }

    public ValueTask<DesiredState> GetDesiredStateAsync() => ValueTask.FromResult(Desired);

    public ValueTask<long> GetAcknowledgedAsync() => ValueTask.FromResult(_state.State.Acknowledged);

    public ValueTask<HostInfo?> GetInfoAsync() => ValueTask.FromResult(_state.State.Info);

    public ValueTask<ImmutableArray<Outcome>> GetOutcomesAsync() => ValueTask.FromResult(_outcomes.ToImmutableArray());

    public async ValueTask AddVmAsync(string vmId)
    {
        if (_state.State.Vms.Add(vmId))
        {
            await _state.WriteStateAsync();
        }
    }

    public async ValueTask RemoveVmAsync(string vmId)
    {
        if (_state.State.Vms.Remove(vmId))
        {
            await _state.WriteStateAsync();
        }
    }

    public ValueTask<ImmutableArray<string>> ListVmsAsync() => ValueTask.FromResult(_state.State.Vms.Order(StringComparer.Ordinal).ToImmutableArray());

    public ValueTask<ImmutableArray<string>> ListPeersAsync() => ValueTask.FromResult(_state.State.Peers.Order(StringComparer.Ordinal).ToImmutableArray());
}
