using System.Collections.Immutable;
using Fabric.Silo.Selection;

namespace Fabric.Silo;

/// <summary>Persisted per VM: policy and its version, placement, the stack per remote host, pending switches, the decision log.</summary>
[GenerateSerializer, Alias("fabric.vm-state")]
public sealed class VmState
{
    [Id(0)] public Policy Policy { get; set; } = Policy.Default;
    [Id(1)] public long PolicyVersion { get; set; }
    [Id(2)] public VmPlacement? Placement { get; set; }
    [Id(3)] public Dictionary<string, string> Stacks { get; set; } = new(StringComparer.Ordinal);
    [Id(4)] public Dictionary<string, PendingSwitch> Pending { get; set; } = new(StringComparer.Ordinal);
    [Id(5)] public List<Decision> Log { get; set; } = [];
}

/// <summary>
/// A VM: validates and persists its policy, follows its placement, and runs select_stack for each remote host when a
/// path changes, when its policy changes, or when a pending switch has waited long enough. A changed decision is
/// persisted, then bound on the VM's host (which pushes the desired state to the agent).
/// </summary>
public sealed class VmGrain([PersistentState("vm", Storage.Name)] IPersistentState<VmState> state, StackSelector selector, TimeProvider time) : Grain, IVmGrain
{
    /// <summary>Decisions kept per VM (the dashboard's history); older ones are dropped.</summary>
    public const int LogLength = 200;

    /// <summary>Conditions assumed for a path nothing has been measured on yet: a clean, fast link.</summary>
    private static readonly PathConditions Unmeasured = new(1, 0, 0, 1000, DateTimeOffset.UnixEpoch);

    /// <summary>How long a VM trusts its copy of the catalog and of its host's stacks: keeps the fleet-wide catalog grain off the per-decision path.</summary>
    private static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(10);

    private readonly Dictionary<string, IGrainTimer> _timers = new(StringComparer.Ordinal);
    private (ImmutableArray<StackInfo> Stacks, DateTimeOffset At) _catalog;
    private (HashSet<string> Stacks, string HostId, DateTimeOffset At)? _hostStacks;

    private string VmId => this.GetPrimaryKeyString();

    private async Task<ImmutableArray<StackInfo>> CatalogAsync(bool fresh = false)
    {
        if (fresh || _catalog.Stacks.IsDefault || time.GetUtcNow() - _catalog.At > CacheFor)
        {
            _catalog = (await GrainFactory.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync(), time.GetUtcNow());
        }
        return _catalog.Stacks;
    }

    private async Task<HashSet<string>> HostStacksAsync(string hostId)
    {
        if (_hostStacks is not { } cached || cached.HostId != hostId || time.GetUtcNow() - cached.At > CacheFor)
        {
            var info = await GrainFactory.GetGrain<IHostGrain>(hostId).GetInfoAsync();
            _hostStacks = cached = ((info?.LoadedStacks ?? []).ToHashSet(StringComparer.Ordinal), hostId, time.GetUtcNow());
        }
        return cached.Stacks;
    }

    public async ValueTask<PolicyResult> SetPolicyAsync(Policy policy)
    {
        // Validation reads the catalog itself: an operator's change is judged against what is published now.
        var catalog = await CatalogAsync(fresh: true);
        var errors = PolicyValidator.Validate(policy, catalog);
        if (errors.Length > 0)
        {
            return new PolicyResult(false, errors, state.State.PolicyVersion);
        }
        if (policy == state.State.Policy && state.State.PolicyVersion > 0)
        {
            return new PolicyResult(true, [], state.State.PolicyVersion);
        }
        state.State.Policy = policy;
        state.State.PolicyVersion++;
        // A pending switch was judged under the old policy.
        state.State.Pending.Clear();
        await state.WriteStateAsync();
        await EvaluateAllAsync(catalog);
        return new PolicyResult(true, [], state.State.PolicyVersion);
    }

    public async ValueTask PlaceAsync(VmPlacement placement)
    {
        var previous = state.State.Placement;
        if (previous == placement)
        {
            return;
        }
        if (previous is not null && previous.HostId != placement.HostId)
        {
            await LeaveHostAsync(previous.HostId);
        }
        state.State.Placement = placement;
        if (placement.Policy is { } policy && state.State.PolicyVersion == 0)
        {
            // The policy the hypervisor hook carried, unless an operator has set one here already.
            if (PolicyValidator.Validate(policy, await CatalogAsync(fresh: true)).Length == 0)
            {
                state.State.Policy = policy;
                state.State.PolicyVersion = 1;
            }
        }
        await state.WriteStateAsync();
        var host = GrainFactory.GetGrain<IHostGrain>(placement.HostId);
        await host.AddVmAsync(VmId);
        foreach (var peer in await host.ListPeersAsync())
        {
            await GrainFactory.GetGrain<IPathGrain>(IPathGrain.KeyOf(placement.HostId, peer)).SubscribeAsync(VmId);
        }
        await EvaluateAllAsync(await CatalogAsync());
    }

    public async ValueTask RemoveAsync()
    {
        if (state.State.Placement is { } placement)
        {
            await LeaveHostAsync(placement.HostId);
        }
        state.State.Placement = null;
        state.State.Stacks.Clear();
        state.State.Pending.Clear();
        await state.WriteStateAsync();
    }

    public async ValueTask PathChangedAsync(string remoteHost, PathConditions conditions)
    {
        if (state.State.Placement is null)
        {
            return;
        }
        await EvaluateAsync(remoteHost, conditions, await CatalogAsync());
    }

    public ValueTask<VmView> GetAsync() => ValueTask.FromResult(new VmView(VmId, state.State.Placement, state.State.Policy, state.State.PolicyVersion,
        state.State.Stacks.ToImmutableDictionary(StringComparer.Ordinal), [.. state.State.Log]));

    private async Task LeaveHostAsync(string hostId)
    {
        var host = GrainFactory.GetGrain<IHostGrain>(hostId);
        foreach (var peer in await host.ListPeersAsync())
        {
            await GrainFactory.GetGrain<IPathGrain>(IPathGrain.KeyOf(hostId, peer)).UnsubscribeAsync(VmId);
        }
        await host.UnbindVmAsync(VmId);
        await host.RemoveVmAsync(VmId);
    }

    private async Task EvaluateAllAsync(ImmutableArray<StackInfo> catalog)
    {
        if (state.State.Placement is not { } placement)
        {
            return;
        }
        foreach (var peer in await GrainFactory.GetGrain<IHostGrain>(placement.HostId).ListPeersAsync())
        {
            var conditions = await GrainFactory.GetGrain<IPathGrain>(IPathGrain.KeyOf(placement.HostId, peer)).GetConditionsAsync() ?? Unmeasured;
            await EvaluateAsync(peer, conditions, catalog);
        }
    }

    private async Task EvaluateAsync(string remoteHost, PathConditions conditions, ImmutableArray<StackInfo> catalog)
    {
        var placement = state.State.Placement!;
        var hostStacks = await HostStacksAsync(placement.HostId);
        var current = state.State.Stacks.GetValueOrDefault(remoteHost);
        var (decision, pending) = selector.Select(VmId, remoteHost, state.State.Policy, conditions, catalog, hostStacks, current,
            state.State.Pending.GetValueOrDefault(remoteHost), time.GetUtcNow(), Random.Shared.NextDouble());
        state.State.Log.Add(decision);
        if (state.State.Log.Count > LogLength)
        {
            state.State.Log.RemoveRange(0, state.State.Log.Count - LogLength);
        }
        if (pending is null)
        {
            state.State.Pending.Remove(remoteHost);
        }
        else
        {
            state.State.Pending[remoteHost] = pending;
            ScheduleRecheck(remoteHost, pending);
        }
        if (decision.Changed && decision.Stack.Length > 0)
        {
            state.State.Stacks[remoteHost] = decision.Stack;
        }
        // Persisted before the host is told: after a silo restart the VM knows what it asked for.
        await state.WriteStateAsync();
        if (decision.Changed && decision.Stack.Length > 0)
        {
            await GrainFactory.GetGrain<IHostGrain>(placement.HostId).BindAsync(new Binding(VmId, remoteHost, decision.Stack));
        }
    }

    /// <summary>A pending switch is decided when its sustain time is up, even if the path reports nothing new by then.</summary>
    private void ScheduleRecheck(string remoteHost, PendingSwitch pending)
    {
        if (_timers.ContainsKey(remoteHost))
        {
            return;
        }
        var due = pending.Since + selector.Options.SustainFor - time.GetUtcNow() + TimeSpan.FromMilliseconds(20);
        _timers[remoteHost] = this.RegisterGrainTimer(async () =>
        {
            _timers.Remove(remoteHost, out var timer);
            timer?.Dispose();
            if (state.State.Placement is { } placement && state.State.Pending.ContainsKey(remoteHost))
            {
                var conditions = await GrainFactory.GetGrain<IPathGrain>(IPathGrain.KeyOf(placement.HostId, remoteHost)).GetConditionsAsync() ?? Unmeasured;
                await EvaluateAsync(remoteHost, conditions, await CatalogAsync());
            }
        }, due < TimeSpan.Zero ? TimeSpan.Zero : due, Timeout.InfiniteTimeSpan);
    }
}
