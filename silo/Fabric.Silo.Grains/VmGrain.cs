using System.Collections.Immutable;
using Fabric.Silo.Learning;
using Fabric.Silo.Selection;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo;

/// <summary>Persisted per VM, small and written on every material change: policy and its version, placement, the stack per remote host, pending switches.</summary>
[GenerateSerializer, Alias("fabric.vm-state")]
public sealed class VmState
{
    [Id(0)] public Policy Policy { get; set; } = Policy.Default;
    [Id(1)] public long PolicyVersion { get; set; }
    [Id(2)] public VmPlacement? Placement { get; set; }
    [Id(3)] public Dictionary<string, string> Stacks { get; set; } = new(StringComparer.Ordinal);
    [Id(4)] public Dictionary<string, PendingSwitch> Pending { get; set; } = new(StringComparer.Ordinal);

    /// <summary>A move an agent asked for while another live host has the VM: applied when that host lets it go or falls silent.</summary>
    [Id(5)] public VmPlacement? Claim { get; set; }
}

/// <summary>
/// Persisted per VM, lazily (every 30 s when it changed, and on deactivation): the history of decisions that
/// changed something (a switch, a switch pending or called off, an exploration). It is diagnostic — what a crash loses
/// is the last 30 s of history, never a binding. The last decision per path is not persisted at all: telemetry
/// brings a new one within seconds.
/// </summary>
[GenerateSerializer, Alias("fabric.vm-log")]
public sealed class VmLog
{
    [Id(0)] public List<Decision> History { get; set; } = [];
}

/// <summary>
/// A VM: validates and persists its policy, follows its placement, and runs select_stack for each remote host when a
/// path changes, when its policy changes, or when a pending switch has waited long enough. A changed decision is
/// persisted, then bound on the VM's host (which pushes the change to the agent).
/// </summary>
public sealed partial class VmGrain(
    [PersistentState("vm", Storage.Name)] IPersistentState<VmState> state,
    [PersistentState("vm-log", Storage.Name)] IPersistentState<VmLog> log,
    StackSelector selector,
    OutcomeLog outcomeLog,
    TimeProvider time,
    ILogger<VmGrain> logger) : Grain, IVmGrain
{
    /// <summary>Material decisions kept per VM (the dashboard's history); older ones are dropped.</summary>
    public const int LogLength = 100;

    /// <summary>How long a VM trusts its copy of the catalog and of its host's stacks: keeps the fleet-wide catalog grain off the per-decision path.</summary>
    private static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(10);

    /// <summary>The version an outcome names when the catalog publishes it for that stack (an agent's word is not taken for more), else the catalog's newest.</summary>
    /// <summary>The version an outcome names, when the catalog publishes it; else none ("": an agent that does not say,
    /// or says a version no signed target has, is not taken at its word, nor credited to the newest version).</summary>
    private static string VersionOf(Outcome o, ImmutableArray<StackInfo> catalog) =>
        catalog.FirstOrDefault(s => s.Id == o.Stack) is { } stack && o.StackVersion is { } said
            && (said == stack.Version || (!stack.PublishedVersions.IsDefault && stack.PublishedVersions.Contains(said, StringComparer.Ordinal))) ? said : "";

    /// <summary>
    /// How often a changed log is written. Each write is the whole log (up to <see cref="LogLength"/> decisions with their
    /// candidates): at 5 s, serializing them was the largest share of the control plane's work at 100,000 paths.
    /// </summary>
    private static readonly TimeSpan LogFlushPeriod = TimeSpan.FromSeconds(30);

    /// <summary>Conditions assumed for a path nothing has been measured on yet: a clean, fast link.</summary>
    private static readonly PathConditions Unmeasured = new(1, 0, 0, 1000, DateTimeOffset.UnixEpoch);

    private readonly Dictionary<string, IGrainTimer> _timers = new(StringComparer.Ordinal);
    private (ImmutableArray<StackInfo> Stacks, DateTimeOffset At) _catalog;
    private (HashSet<string> Stacks, string HostId, DateTimeOffset At)? _hostStacks;
    private readonly Dictionary<string, Decision> _last = new(StringComparer.Ordinal);

    /// <summary>Per remote host, how the running stack was chosen (its propensity, and whether it was exploration): what
    /// the outcome log records beside each outcome. Unknown after a reactivation: then the stack counts as chosen for sure.</summary>
    private readonly Dictionary<string, (double Propensity, bool Exploration, DateTimeOffset At)> _chosen = new(StringComparer.Ordinal);

    /// <summary>When each path last explored, and on what (in memory: a reactivated VM may explore once sooner).</summary>
    private readonly Dictionary<string, Explored> _explored = new(StringComparer.Ordinal);

    /// <summary>Per path, the stacks it left and what they scored there (in memory, as <see cref="_explored"/>).</summary>
    private readonly Dictionary<string, IReadOnlyList<Left>> _left = new(StringComparer.Ordinal);

    /// <summary>Per path, this VM's recent outcomes (what it gets on its stack), and since when the path runs its stack: the
    /// first outcome the agent reported on it after it was chosen (a binding can reach the agent late).</summary>
    private readonly Dictionary<string, OutcomeWindow> _outcomes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (string Stack, DateTimeOffset At)> _since = new(StringComparer.Ordinal);

    /// <summary>
    /// How far what the VM gets on its stack may drift from the score its last decision gave that stack (or twice that
    /// observation's spread, when more) before the path is decided again without a change in its conditions (otherwise a
    /// path is decided when they change, when its policy changes, and when a pending switch is due).
    /// </summary>
    public const double ObservedDrift = 0.05;

    /// <summary>
    /// The least time between two decisions of a path that drift alone asks for: a VM's outcomes come every second, and a
    /// fleet's worth of paths each decided every second on the model would cost the control plane its cores. Counted from
    /// the last decision that outcomes asked for (drift, or a first observation), not from any; and the first observation
    /// after a decision that scored the current stack by a prediction (a link that changed is decided at once on its
    /// conditions) is heard at once: the learning benchmark's latency VM spent 9 s of a 25 s phase on std-ipv4 at 3 % loss
    /// waiting 5 s after that decision.
    /// </summary>
    public static readonly TimeSpan ObservedRecheck = TimeSpan.FromSeconds(5);

    /// <summary>Per remote host, when drift last had the path decided (see <see cref="ObservedRecheck"/>).</summary>
    private readonly Dictionary<string, DateTimeOffset> _drifted = new(StringComparer.Ordinal);

    /// <summary>Per remote host, the decision after which the path was decided again once it held still (see <see cref="MayExplore"/>).</summary>
    private readonly Dictionary<string, DateTimeOffset> _steadyHeard = new(StringComparer.Ordinal);

    /// <summary>
    /// Whether a path whose VM may explore is decided again because it has held still since its last decision: a path
    /// explores only on a steady observation (<see cref="Observed.Steady"/>), and is decided on a change of its conditions
    /// (never steady) or on a drift of what the VM gets, so without this it would never explore (the learning benchmark's
    /// two runs after the steadiness rule: no exploration in 8.3 path-minutes each). Once per decision, and only when the
    /// exploration spacing allows one.
    /// </summary>
    private bool MayExplore(string remoteHost, Decision last, Observed seen, DateTimeOffset now) =>
        seen.Steady && state.State.Policy is { Pin: null, ExplorationShare: > 0 }
        && _steadyHeard.GetValueOrDefault(remoteHost) != last.At
        && (_explored.GetValueOrDefault(remoteHost) is not { } explored || now - explored.At >= selector.Options.ExploreSpacing);

    private bool _logDirty;
    private IGrainTimer? _logFlush;

    /// <summary>
    /// Per remote host, the binding this VM decided that its host grain has not yet taken (the call failed: the host's
    /// silo died under it, or the store refused the write first); its Sealed flag is set when it is sent. Retried until
    /// taken: the VM skips conditions it has decided on, so without this a binding lost on the way stayed lost until the
    /// path changed again (a CI run saw one VM of 1,000 left on its old stack for over a minute after a kill -9).
    /// </summary>
    private readonly Dictionary<string, Binding> _unbound = new(StringComparer.Ordinal);
    private bool _unwritten;
    private IGrainTimer? _rebind;

    /// <summary>How often bindings a host has not taken are offered again.</summary>
    public static readonly TimeSpan RebindEvery = TimeSpan.FromSeconds(5);

    /// <summary>The VM's id, made once: every decision and binding carries it, and each call of GetPrimaryKeyString makes a
    /// new string (a million (VM, path) decisions each held their own copy at 100,000 paths).</summary>
    private string VmId => _vmId ??= this.GetPrimaryKeyString();

    private string? _vmId;

    /// <summary>
    /// How long after an activation, or after this activation chose a path's stack, a path of which it has heard no outcome
    /// yet is taken as one that reports outcomes (<see cref="CurrentSince"/>): an agent reports a VM's outcomes every
    /// second, and the first report after a reactivation wakes the VM with its conditions before the outcomes of the same
    /// report.
    /// </summary>
    public static readonly TimeSpan OutcomesExpectedWithin = TimeSpan.FromSeconds(3);

    private DateTimeOffset _activatedAt;

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _activatedAt = time.GetUtcNow();
        _logFlush = this.RegisterGrainTimer(FlushLogAsync, LogFlushPeriod, LogFlushPeriod);
        // A switch pending when the VM last ran (its silo died, or it was deactivated) is checked when its time is up,
        // not only when the path's conditions are told again.
        foreach (var (remoteHost, pending) in state.State.Pending)
        {
            ScheduleRecheck(remoteHost, pending);
        }
        if (state.State.Claim is not null)
        {
            _claimCheck = this.RegisterGrainTimer(CheckClaimAsync, SourceSilence / 3, SourceSilence / 3);
        }
        // Its stacks are offered to its host once, soon after: a silo that died between persisting a decision and binding
        // it left the host without it. Not here: the host's own activation reads this VM. The host ignores what it has.
        if (state.State.Placement is not null && state.State.Stacks.Count > 0)
        {
            OfferStoredStacks();
            ScheduleRebind(TimeSpan.FromSeconds(1 + Random.Shared.NextDouble()));
        }
        return Task.CompletedTask;
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _logFlush?.Dispose();
        await FlushLogAsync();
    }

    private async Task FlushLogAsync()
    {
        if (_logDirty)
        {
            _logDirty = false;
            await log.WriteStateAsync();
        }
    }

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
            if (state.State.Placement is { } unchanged)
            {
                // The same policy again (an operator retrying a call that failed midway): the routes to the VM are told
                // once more whether they must be sealed (idempotent: a network with nothing to change writes nothing).
                await SetNetworksAsync(unchanged, unchanged);
            }
            return new PolicyResult(true, [], state.State.PolicyVersion);
        }
        var (wasSealed, wasRole) = (Sealed, Role);
        var judgedAlike = policy.Workload == state.State.Policy.Workload && policy.Security == state.State.Policy.Security
            && policy.Family == state.State.Policy.Family;
        state.State.Policy = policy;
        state.State.PolicyVersion++;
        // A pending switch was judged under the old policy. What the VM got on its stacks was scored under its workload:
        // forgotten when that, its security or its family changes, kept when only the pin, the allowed or denied stacks or
        // the exploration share do (a VM an operator pinned to each stack in turn showed what each gives it, and is judged
        // on that once unpinned).
        state.State.Pending.Clear();
        if (!judgedAlike)
        {
            // Emptied, not removed: a path that reports outcomes still does, and its stack explores only once they say
            // what the VM gets there under its new policy (removed, the path counted as one without outcomes, which
            // explores on a prediction alone).
            foreach (var remoteHost in _outcomes.Keys.ToList())
            {
                _outcomes[remoteHost] = new OutcomeWindow();
            }
            _left.Clear();
        }
        await state.WriteStateAsync();
        if (Sealed != wasSealed && state.State.Placement is { } placed)
        {
            // The hosts that forward to it learn whether they must encrypt what they send it: before its own bindings
            // change, so that no peer sends it in clear what it would now drop.
            await SetNetworksAsync(placed, placed);
        }
        await EvaluateAllAsync(catalog);
        if ((Sealed != wasSealed || Role != wasRole) && state.State.Placement is not null && state.State.Stacks.Count > 0)
        {
            // Whether the agent must refuse to carry this VM in clear, or whose stack its conversations ride, changed, even
            // where its stack did not: every binding again, through the same queue as decisions (so a retry queued earlier
            // cannot overtake it with the old flags).
            OfferStoredStacks();
            await FlushBindingsAsync();
        }
        return new PolicyResult(true, [], state.State.PolicyVersion);
    }

    /// <summary>How long a host's agent must have been silent before another host's agent may take its VMs without it removing them.</summary>
    public static readonly TimeSpan SourceSilence = TimeSpan.FromSeconds(30);

    private IGrainTimer? _claimCheck;

    public async ValueTask PlaceAsync(VmPlacement placement)
    {
        if (await GrainFactory.GetGrain<IHostGrain>(placement.HostId).IsRemovedAsync())
        {
            throw new InvalidOperationException($"VM '{VmId}': host '{placement.HostId}' was removed from the fleet");
        }
        if (state.State.Placement is { } current && current.HostId != placement.HostId && CallerContext.AgentHost is not null
            && !await SilentAsync(current.HostId))
        {
            // Another host's agent says the VM runs there now — a migration's destination, or a host claiming a VM it
            // should not have. The VM moves when its host lets it go (removes it) or falls silent, not before. The
            // claim is persisted: the source may remove the VM after this grain moved or restarted.
            if (state.State.Claim != placement)
            {
                LogClaim(logger, VmId, placement.HostId, current.HostId);
                state.State.Claim = placement;
                await state.WriteStateAsync();
            }
            _claimCheck ??= this.RegisterGrainTimer(CheckClaimAsync, SourceSilence / 3, SourceSilence / 3);
            return;
        }
        await PlaceCoreAsync(placement);
    }

    [LoggerMessage(LogLevel.Information, "VM {Vm} placed on {Claimant} while {Host} still has it: it moves there when that host removes it or falls silent")]
    private static partial void LogClaim(ILogger logger, string vm, string claimant, string host);

    private async Task<bool> SilentAsync(string hostId) =>
        await GrainFactory.GetGrain<IHostGrain>(hostId).GetLastSeenAsync() is not { } seen || time.GetUtcNow() - seen > SourceSilence;

    private async Task CheckClaimAsync()
    {
        if (state.State.Claim is { } claim && (state.State.Placement is not { } current || current.HostId == claim.HostId || await SilentAsync(current.HostId)))
        {
            await PlaceCoreAsync(claim);
        }
        if (state.State.Claim is null)
        {
            _claimCheck?.Dispose();
            _claimCheck = null;
        }
    }

    private async Task PlaceCoreAsync(VmPlacement placement)
    {
        if (state.State.Claim?.HostId == placement.HostId && await GrainFactory.GetGrain<IHostGrain>(placement.HostId).IsRemovedAsync())
        {
            // The claimant was removed from the fleet meanwhile: its claim goes with it.
            state.State.Claim = null;
            await state.WriteStateAsync();
            return;
        }
        var claimMet = state.State.Claim?.HostId == placement.HostId;
        if (claimMet)
        {
            state.State.Claim = null;
        }
        var previous = state.State.Placement;
        if (previous == placement)
        {
            if (claimMet)
            {
                await state.WriteStateAsync();
            }
            // The same placement again (an agent placing anew after the control plane started over, retrying a call
            // that failed midway, or finding its host holds no binding for the VM on a path): nothing to store, but the
            // networks are told again, so a membership a failed call lost is repaired (an unchanged one costs each
            // network a comparison). One whose settling failed settles now. Otherwise the host is offered the VM's
            // stacks again and the paths without one are decided: a decision lost with a silo, or with an activation
            // the grain directory deactivated (its retry timers with it), comes back.
            if (_unsettled is { } owed && owed.Placement == placement)
            {
                await SettleAsync(owed.Previous, placement, owed.Adopted);
                return;
            }
            await SetNetworksAsync(null, placement);
            await GrainFactory.GetGrain<IHostGrain>(placement.HostId).AddVmAsync(VmId);
            OfferStoredStacks();
            await EvaluateAllAsync(await CatalogAsync(), undecidedOnly: true);
            await FlushBindingsAsync();
            return;
        }
        var adopted = new List<Binding>();
        if (state.State.Stacks.Count == 0 && placement.Running is { Count: > 0 } running)
        {
            // This VM's decisions were lost while the agent kept forwarding: what runs is the current decision.
            foreach (var (remote, stack) in running)
            {
                state.State.Stacks[remote] = stack;
                adopted.Add(new Binding(VmId, remote, stack, Sealed, Role));
            }
        }
        if (previous is not null && previous.HostId != placement.HostId)
        {
            await LeaveHostAsync(previous.HostId);
            state.State.Stacks.Clear();
            state.State.Pending.Clear();
        }
        state.State.Placement = placement;
        var (wasSealed, wasRole) = (Sealed, Role);
        if (placement.Policy is { } policy && state.State.PolicyVersion == 0 && PolicyValidator.Validate(policy, await CatalogAsync(fresh: true)).Length == 0)
        {
            // The policy the hypervisor hook carried, unless an operator has set one here already.
            state.State.Policy = policy;
            state.State.PolicyVersion = 1;
        }
        await state.WriteStateAsync();
        await GrainFactory.GetGrain<IFleetGrain>(IFleetGrain.Key).VmPlacedAsync(VmId, placement.HostId);
        await SettleAsync(previous, placement, [.. adopted]);
        if ((Sealed != wasSealed || Role != wasRole) && adopted.Count == 0 && state.State.Stacks.Count > 0)
        {
            // The hook's policy changed whether the VM is sealed or leads where its stacks did not change: every binding
            // again, as an operator's policy change does.
            OfferStoredStacks();
            await FlushBindingsAsync();
        }
    }

    /// <summary>The placement stored whose host, networks and first decisions are still owed (a call failed), the one
    /// before it, and the bindings adopted from what ran.</summary>
    private (VmPlacement? Previous, VmPlacement Placement, ImmutableArray<Binding> Adopted)? _unsettled;
    private IGrainTimer? _settle;

    /// <summary>
    /// Tells a stored placement's host it has the VM (with the bindings adopted from what ran there), tells its networks,
    /// and decides every path from the host. A failure is tried again every <see cref="RebindEvery"/> until it succeeds:
    /// once the placement is stored, the caller's retry finds it placed (a migration's source removing the VM again is
    /// told it is not gone) and would do none of it.
    /// </summary>
    private async Task SettleAsync(VmPlacement? previous, VmPlacement placement, ImmutableArray<Binding> adopted)
    {
        _unsettled = (previous, placement, adopted);
        try
        {
            var host = GrainFactory.GetGrain<IHostGrain>(placement.HostId);
            await host.AddVmAsync(VmId);
            if (adopted.Length > 0)
            {
                // Sealed and led as the policy the placement may have carried says.
                await host.BindAsync([.. adopted.Select(b => b with { Sealed = Sealed, Role = Role })]);
            }
            await SetNetworksAsync(previous, placement);
            await EvaluateAllAsync(await CatalogAsync());
            _unsettled = null;
            _settle?.Dispose();
            _settle = null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogUnsettled(logger, VmId, placement.HostId, e.GetType().Name, e.Message);
            _settle ??= this.RegisterGrainTimer(async () =>
            {
                if (_unsettled is not { } owed || state.State.Placement != owed.Placement)
                {
                    // Placed elsewhere or removed since: that change settled its own placement.
                    _settle?.Dispose();
                    (_settle, _unsettled) = (null, null);
                    return;
                }
                try
                {
                    await SettleAsync(owed.Previous, owed.Placement, owed.Adopted);
                }
                catch (Exception)
                {
                    // Said by SettleAsync; tried again at the next tick.
                }
            }, RebindEvery, RebindEvery);
            throw;
        }
    }

    [LoggerMessage(LogLevel.Warning, "VM {Vm}: placed on {Host}, but its networks or first decisions failed ({Error}: {Message}); tried again every 5 s until they succeed")]
    private static partial void LogUnsettled(ILogger logger, string vm, string host, string error, string message);

    /// <summary>
    /// Tells each virtual network the VM's vNICs in it now (on the new host) and each network it left that it is gone:
    /// those networks program the routes of every host that shares them.
    /// </summary>
    private async Task SetNetworksAsync(VmPlacement? previous, VmPlacement? placement)
    {
        var now = placement?.Vnics.GroupBy(v => v.Vni).ToDictionary(g => g.Key, g => g.ToImmutableArray()) ?? [];
        var left = (previous?.Vnics ?? []).Select(v => v.Vni).Where(vni => !now.ContainsKey(vni)).Distinct();
        var hostId = placement?.HostId ?? previous?.HostId ?? "";
        // The host as it registered (addresses, public key): its networks hand it to the hosts that will forward to it.
        var host = now.Count == 0 ? new Peer(hostId, null, null, 0, null)
            : await GrainFactory.GetGrain<IHostGrain>(hostId).GetInfoAsync() is { } info ? Peer.Of(info) : new Peer(hostId, null, null, 0, null);
        await Task.WhenAll(now.Select(n => GrainFactory.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(n.Key)).SetMemberAsync(VmId, host, n.Value, Sealed).AsTask())
            .Concat(left.Select(vni => GrainFactory.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(vni)).SetMemberAsync(VmId, host, [], false).AsTask())));
    }

    public async ValueTask RemoveAsync(string hostId)
    {
        if (state.State.Claim?.HostId == hostId)
        {
            // The claimant let the VM go before it got it.
            state.State.Claim = null;
            await state.WriteStateAsync();
        }
        if (state.State.Placement is { } current && current.HostId != hostId)
        {
            // The source of a migration deregistering after the destination placed the VM: it is not gone.
            return;
        }
        if (state.State.Placement is { } placement)
        {
            await LeaveHostAsync(placement.HostId);
            await SetNetworksAsync(placement, null);
        }
        state.State.Placement = null;
        state.State.Stacks.Clear();
        state.State.Pending.Clear();
        await state.WriteStateAsync();
        if (state.State.Claim is { } claim && claim.HostId != hostId)
        {
            // The source of a migration let the VM go: its destination has it now.
            await PlaceCoreAsync(claim);
            return;
        }
        await GrainFactory.GetGrain<IFleetGrain>(IFleetGrain.Key).VmRemovedAsync(VmId);
    }

    public async ValueTask PathChangedAsync(string remoteHost, PathConditions conditions)
    {
        if (state.State.Placement is null)
        {
            return;
        }
        if (_last.TryGetValue(remoteHost, out var last) && !PathSmoother.Significant(last.Conditions, conditions) && !state.State.Pending.ContainsKey(remoteHost))
        {
            // Conditions this VM has already decided on (the host grain tells every path again now and then, in case a
            // notice was lost): nothing to decide. But a decision not yet stored or bound (its write or bind failed, the
            // rebind timer retries) is tried now, and its failure answers the host: a notice that returns means what it
            // decided is stored, so a silo's death after it loses nothing the host thinks told.
            if (_unwritten || _unbound.Count > 0)
            {
                await FlushBindingsAsync();
            }
            return;
        }
        var bindings = Evaluate(remoteHost, conditions, await CatalogAsync(), await HostStacksAsync(state.State.Placement.HostId));
        await CommitAsync(bindings);
    }

    public async ValueTask ReportOutcomesAsync(string hostId, ImmutableArray<Outcome> outcomes)
    {
        if (state.State.Placement is null)
        {
            // Not placed through the control plane (a VM from an agent's own configuration): no policy to learn for.
            return;
        }
        var workload = state.State.Policy.Workload;
        var catalog = await CatalogAsync();
        var now = time.GetUtcNow();
        var logged = outcomes.Where(o => o.Stack.Length > 0 && double.IsFinite(o.GoodputMbps) && double.IsFinite(o.ResidualLoss)
            && (double.IsFinite(o.DelayP99Ms) || double.IsFinite(o.ResponseP99Ms))).Select(o =>
        {
            var (propensity, exploration, _) = _chosen.GetValueOrDefault(o.RemoteHost, (1, false, default));
            var overhead = o.GoodputMbps > 0 ? o.OverheadBytes * 8 / 1e6 / Math.Max(o.Interval.TotalSeconds, 1e-3) / o.GoodputMbps : 0;
            // A request/response VM feels the answer's time, a bulk one its round trips; both judged on the tail of the
            // agent's trailing window on this stack where it has one (see Outcome). Never 0: an agent that predates the
            // field sends none, which Orleans reads as 0, not as the record's NaN.
            var delay = o.TailP99Ms > 0 && double.IsFinite(o.TailP99Ms) ? o.TailP99Ms : double.IsNaN(o.ResponseP99Ms) ? o.DelayP99Ms : o.ResponseP99Ms;
            return (Outcome: o, Logged: new LoggedOutcome(o.Conditions.At, VmId, o.RemoteHost, workload, o.Stack, VersionOf(o, catalog),
                propensity, exploration, OutcomeFeatures.Of(o.Conditions), o.GoodputMbps, delay, o.ResidualLoss, overhead,
                // Without TCP the goodput is the VM's offered rate, all it wants: its bulk share is of that, not of the path.
                Utility.Of(workload, o.GoodputMbps, delay, o.ResidualLoss, overhead, o.Conditions.CapacityMbps, o.Flows == 0 ? o.GoodputMbps : double.PositiveInfinity))
            { RewardVersion = UtilityModel.SchemaVersion, Host = hostId });
        }).ToList();
        outcomeLog.Append(logged.Select(l => l.Logged));
        if (hostId != state.State.Placement.HostId)
        {
            // A host the VM has left (its last report, after a move): logged for the learner, but not this VM's paths now.
            return;
        }
        // Only the paths this VM has: a report cannot open windows for remote hosts it made up.
        var onPaths = logged.Where(l => state.State.Stacks.ContainsKey(l.Outcome.RemoteHost)).ToList();
        foreach (var (o, l) in onPaths)
        {
            if (!_outcomes.TryGetValue(o.RemoteHost, out var window))
            {
                _outcomes[o.RemoteHost] = window = new OutcomeWindow();
            }
            window.Add(now, o.Stack, l.Utility, o.Conditions);
            if (o.Stack == state.State.Stacks[o.RemoteHost] && _since.GetValueOrDefault(o.RemoteHost).Stack != o.Stack)
            {
                _since[o.RemoteHost] = (o.Stack, now);
            }
        }
        // A path is decided again when what the VM gets on its stack has drifted from what its last decision scored the
        // stack: a stack that starves the VM on conditions that no longer change is not kept for a phase on a prediction.
        var bindings = new List<Binding>();
        foreach (var newest in onPaths.Select(l => l.Outcome).GroupBy(o => o.RemoteHost, StringComparer.Ordinal).Select(g => g.Last()))
        {
            // The first observation after a decision that predicted the current stack is news and is heard at once; after
            // that, only a drift from what was observed, at most every ObservedRecheck.
            if (_last.TryGetValue(newest.RemoteHost, out var last) && !newest.Conditions.Idle
                && state.State.Stacks.GetValueOrDefault(newest.RemoteHost) is { } current && last.Stack == current
                && Observe(newest.RemoteHost, current, now, newest.Conditions) is { } seen
                && last.Candidates.FirstOrDefault(c => c.Stack == current) is { } scored
                && (scored.Source != "observed" || (Math.Abs(scored.Score - seen.Score) > Math.Max(ObservedDrift, 2 * seen.Spread)
                    && now - _drifted.GetValueOrDefault(newest.RemoteHost, DateTimeOffset.MinValue) >= ObservedRecheck)
                    || MayExplore(newest.RemoteHost, last, seen, now)))
            {
                _drifted[newest.RemoteHost] = now;
                bindings.AddRange(Evaluate(newest.RemoteHost, newest.Conditions, catalog, await HostStacksAsync(state.State.Placement.HostId)));
                if (_last.TryGetValue(newest.RemoteHost, out var decided) && seen.Steady)
                {
                    _steadyHeard[newest.RemoteHost] = decided.At;
                }
            }
        }
        await CommitAsync(bindings);
    }

    /// <summary>What this VM got on <paramref name="stack"/> on its path to <paramref name="remoteHost"/> lately (see <see cref="OutcomeWindow.Of"/>).</summary>
    private Observed? Observe(string remoteHost, string stack, DateTimeOffset now, PathConditions conditions) =>
        _outcomes.TryGetValue(remoteHost, out var window) && _since.TryGetValue(remoteHost, out var since) && since.Stack == stack
            ? window.Of(stack, since.At, now, conditions) : null;

    public ValueTask<VmView> GetAsync() => ValueTask.FromResult(new VmView(VmId, state.State.Placement, state.State.Policy, state.State.PolicyVersion,
        state.State.Stacks.ToImmutableDictionary(StringComparer.Ordinal), [.. log.State.History], _last.ToImmutableDictionary(StringComparer.Ordinal)) { Claim = state.State.Claim });

    private async Task LeaveHostAsync(string hostId)
    {
        // What the old host had not taken is not the new host's, nor what the VM got on its paths, nor what they ran.
        _unbound.Clear();
        _outcomes.Clear();
        _since.Clear();
        _left.Clear();
        _drifted.Clear();
        _steadyHeard.Clear();
        _explored.Clear();
        // Nor what it decided there: a path from the old host is another path, even to the same remote host. A decision
        // kept from it made the VM ignore its new host's notices of like conditions (a VM back on a host it had left got
        // no stack for the path it had decided from the host in between).
        _last.Clear();
        _chosen.Clear();
        var host = GrainFactory.GetGrain<IHostGrain>(hostId);
        await host.UnbindVmAsync(VmId);
        await host.RemoveVmAsync(VmId);
    }

    /// <summary>Decides every path from the VM's host (with <paramref name="undecidedOnly"/>, those it has no stack on).</summary>
    private async Task EvaluateAllAsync(ImmutableArray<StackInfo> catalog, bool undecidedOnly = false)
    {
        if (state.State.Placement is not { } placement)
        {
            return;
        }
        var hostStacks = await HostStacksAsync(placement.HostId);
        var host = GrainFactory.GetGrain<IHostGrain>(placement.HostId);
        var peers = await host.ListPeersAsync();
        if (undecidedOnly)
        {
            peers = peers.RemoveAll(state.State.Stacks.ContainsKey);
        }
        var conditions = await Task.WhenAll(peers.Select(peer => host.GetPathAsync(peer).AsTask()));
        var bindings = new List<Binding>();
        for (var i = 0; i < peers.Length; i++)
        {
            bindings.AddRange(Evaluate(peers[i], conditions[i] ?? Unmeasured, catalog, hostStacks));
        }
        // Every path has its entry now, and later decisions replace entries: the tables keep what they hold, not the room
        // their growth left (about twice as much: 12 KB a VM with 100 paths, 120 MB at 100,000 paths).
        _last.TrimExcess();
        _chosen.TrimExcess();
        _left.TrimExcess();
        await CommitAsync(bindings);
    }

    /// <summary>The VM's policy demands encryption: its bindings tell the agent never to carry it in clear.</summary>
    private bool Sealed => state.State.Policy.Security == "confidential";

    /// <summary>
    /// Whose stack carries the VM's conversations (<see cref="PairRole"/>): a policy that declares a need (a latency or bulk
    /// workload, or a pin) leads them, one that declares none follows the VMs that do.
    /// </summary>
    private PairRole Role => RoleOf(state.State.Policy);

    public static PairRole RoleOf(Policy policy) => PairRoles.Of(policy.Workload, policy.Pin);

    /// <summary>Persists what changed (once for any number of paths), then binds it on the host in one call.</summary>
    private async Task CommitAsync(List<Binding> bindings)
    {
        if (bindings.Count == 0)
        {
            return;
        }
        foreach (var binding in bindings.Where(b => b.Stack.Length > 0))
        {
            _unbound[binding.RemoteHost] = binding;
        }
        // Persisted before the host is told: after a silo restart the VM knows what it asked for.
        _unwritten = true;
        await FlushBindingsAsync();
    }

    /// <summary>
    /// Writes the state if a write is owed and binds what the host has not taken, in that order; on failure the rebind
    /// timer tries again (and the caller sees the error). Grain turns do not interleave here, so binds reach the host in order.
    /// </summary>
    private async Task FlushBindingsAsync()
    {
        try
        {
            if (_unwritten)
            {
                await state.WriteStateAsync();
                _unwritten = false;
            }
            if (_unbound.Count > 0 && state.State.Placement is { } placement)
            {
                // Sealed and led as the policy says when they go, not when they were queued (the policy may have changed since).
                await GrainFactory.GetGrain<IHostGrain>(placement.HostId).BindAsync([.. _unbound.Values.Select(b => b with { Sealed = Sealed, Role = Role })]);
            }
            // Emptied to its least: the 100 bindings of a VM's first placement left every VM a table of 100 free entries.
            _unbound.Clear();
            _unbound.TrimExcess();
            _rebind?.Dispose();
            _rebind = null;
        }
        catch (Exception e)
        {
            LogRebind(logger, VmId, e.GetType().Name, e.Message);
            if (e is Orleans.Storage.InconsistentStateException)
            {
                // Another activation wrote this VM's state (a silo thought dead came back): retrying the write cannot
                // succeed. The grain starts over from what is stored, and offers its stored stacks to its host again.
                _rebind?.Dispose();
                _rebind = null;
                this.DeactivateOnIdle();
                throw;
            }
            ScheduleRebind(RebindEvery);
            throw;
        }
    }

    /// <summary>Queues every stored stack to be bound on the VM's host again (the host ignores what it has; the flags go as the
    /// policy says when they are flushed).</summary>
    private void OfferStoredStacks()
    {
        foreach (var (remote, stack) in state.State.Stacks)
        {
            _unbound[remote] = new Binding(VmId, remote, stack);
        }
    }

    private void ScheduleRebind(TimeSpan due) =>
        _rebind ??= this.RegisterGrainTimer(async () =>
        {
            try
            {
                await FlushBindingsAsync();
            }
            catch (Exception)
            {
                // Said by FlushBindingsAsync; tried again at the next tick.
            }
        }, due, RebindEvery);

    [LoggerMessage(LogLevel.Warning, "VM {Vm}: a decision could not be stored or bound on its host ({Error}: {Message}); offered again every 5 s until it is (after a conflicting write, by a fresh activation)")]
    private static partial void LogRebind(ILogger logger, string vm, string error, string message);

    /// <summary>
    /// When the path's stack was chosen, as the selector takes it (<see cref="StackSelector.Select"/>'s currentSince): where
    /// the VM's outcomes on the path come, when this activation chose it (a stack stored before the activation: long
    /// ago); where none has come yet but may still be on its way (within <see cref="OutcomesExpectedWithin"/> of the later
    /// of the activation and this activation's choice), long ago: not held for outcomes that may never come, but explored
    /// from only on a steady observation; elsewhere null (a path that reports no outcomes).
    /// </summary>
    private DateTimeOffset? CurrentSince(string remoteHost, DateTimeOffset now)
    {
        var chosen = _chosen.TryGetValue(remoteHost, out var c) ? c.At : (DateTimeOffset?)null;
        return _outcomes.ContainsKey(remoteHost) ? chosen ?? DateTimeOffset.MinValue
            : now - (chosen ?? _activatedAt) < OutcomesExpectedWithin ? DateTimeOffset.MinValue : null;
    }

    /// <summary>Runs select_stack for one path; returns the binding to commit (empty when nothing material changed).</summary>
    private List<Binding> Evaluate(string remoteHost, PathConditions conditions, ImmutableArray<StackInfo> catalog, HashSet<string> hostStacks)
    {
        var current = state.State.Stacks.GetValueOrDefault(remoteHost);
        var previousPending = state.State.Pending.GetValueOrDefault(remoteHost);
        var now = time.GetUtcNow();
        var observed = current is null ? null : Observe(remoteHost, current, now, conditions);
        var (decision, pending) = selector.Select(VmId, remoteHost, state.State.Policy, conditions, catalog, hostStacks, current,
            previousPending, now, Random.Shared.NextDouble(), _explored.GetValueOrDefault(remoteHost), _left.GetValueOrDefault(remoteHost), observed,
            // Held until judged only where the VM's outcomes come (null: an agent that reports none would hold every switch).
            // A stack this activation did not choose (stored before it) counts as chosen long ago: not held, but explored
            // from only on a steady observation like any other (null skipped that rule: the learning benchmark's unpinned
            // VMs explored 2.8 s into a phase). So is the stack in the first seconds of an activation, or after this
            // activation chose it, before the path's first outcome can have arrived (a reactivated VM hears its host's
            // conditions before the outcomes of the same report, and a new placement is decided again on the next
            // conditions; both explored on a prediction alone); after them, a path that brought none reports none.
            CurrentSince(remoteHost, now));
        if (decision.Exploration)
        {
            _explored[remoteHost] = new(decision.At, conditions);
        }
        if (decision.Changed)
        {
            _left[remoteHost] = Left.After(_left.GetValueOrDefault(remoteHost), decision, observed, catalog.FirstOrDefault(s => s.Id == current)?.Version ?? "");
        }
        _last[remoteHost] = decision;
        if (!decision.Changed && !decision.Exploration && decision.Stack == current && _chosen.TryGetValue(remoteHost, out var held) && held.Exploration
            && !catalog.Any(s => s.Id == current && s.Experimental))
        {
            // The policy keeps the stack an exploration tried: what the VM gets on it from now on is the policy's choice, and
            // is logged with this decision's propensity (until now every outcome to the next switch counted as exploring).
            // Not an experimental stack held for its trial: the policy never chooses one, so its outcomes stay exploration's.
            _chosen[remoteHost] = (decision.Propensity, false, held.At);
        }
        if (!decision.Changed && !decision.Exploration && pending?.Stack == previousPending?.Stack)
        {
            if (pending is not null)
            {
                // The same candidate still winning: its sustain may have grown (a smaller gain), and a recheck that came
                // too early must be followed by another.
                state.State.Pending[remoteHost] = pending;
                ScheduleRecheck(remoteHost, pending);
            }
            return [];
        }
        _logDirty = true;
        log.State.History.Add(decision);
        if (log.State.History.Count > LogLength)
        {
            log.State.History.RemoveRange(0, log.State.History.Count - LogLength);
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
            _chosen[remoteHost] = (decision.Propensity, decision.Exploration, decision.At);
            _since.Remove(remoteHost);
            _ = GrainFactory.GetGrain<IFleetGrain>(IFleetGrain.Key).SwitchedAsync(decision).AsTask();
            state.State.Stacks[remoteHost] = decision.Stack;
            return [new Binding(VmId, remoteHost, decision.Stack)];
        }
        // A pending switch started or was called off: worth persisting, nothing to bind.
        return [new Binding(VmId, remoteHost, "")];
    }

    /// <summary>A pending switch is decided when its sustain time is up, even if the path reports nothing new by then.</summary>
    private void ScheduleRecheck(string remoteHost, PendingSwitch pending, TimeSpan? after = null)
    {
        if (_timers.ContainsKey(remoteHost))
        {
            return;
        }
        var due = after ?? RecheckAfter(pending, selector.Options.SustainFor, time.GetUtcNow());
        _timers[remoteHost] = this.RegisterGrainTimer(async () =>
        {
            _timers.Remove(remoteHost, out var timer);
            timer?.Dispose();
            if (state.State.Placement is { } placement && state.State.Pending.ContainsKey(remoteHost))
            {
                try
                {
                    var conditions = await GrainFactory.GetGrain<IHostGrain>(placement.HostId).GetPathAsync(remoteHost) ?? Unmeasured;
                    await CommitAsync(Evaluate(remoteHost, conditions, await CatalogAsync(), await HostStacksAsync(placement.HostId)));
                    _recheckFailures.Remove(remoteHost);
                }
                catch (Exception) when (state.State.Pending.TryGetValue(remoteHost, out var still))
                {
                    // A call that failed (the host grain's silo dying, a catalog or storage fault) does not strand the
                    // switch until the host tells the path again (a minute, when nothing changes): it is checked again,
                    // 1, 2, 4 … 32 s later while the calls keep failing. In a CI run, one VM of 1,000 had not decided
                    // again 90 s after a silo's kill -9.
                    var failures = _recheckFailures[remoteHost] = _recheckFailures.GetValueOrDefault(remoteHost) + 1;
                    ScheduleRecheck(remoteHost, still, TimeSpan.FromSeconds(1 << Math.Min(failures - 1, 5)));
                    throw;
                }
            }
        }, due, Timeout.InfiniteTimeSpan);
    }

    // Per remote host, how many rechecks in a row failed.
    private readonly Dictionary<string, int> _recheckFailures = new(StringComparer.Ordinal);

    /// <summary>How long a recheck waits once the sustain is over and the switch is still pending (kept until the VM's outcomes judge its current stack).</summary>
    public static readonly TimeSpan RecheckWhenOver = TimeSpan.FromSeconds(1);

    /// <summary>
    /// When a pending switch is checked again: just after its sustain ends; once that has passed, a second later (the pace
    /// of the path's samples and the VM's outcomes, which are what can decide it). Rechecked at once instead, a switch the
    /// selector keeps pending until outcomes come was evaluated 150 times a second for seconds on end (the embedded
    /// default, 2026-12-05: a third of a core in bursts).
    /// </summary>
    public static TimeSpan RecheckAfter(PendingSwitch pending, TimeSpan sustainFor, DateTimeOffset now)
    {
        var due = pending.Since + (pending.Sustain ?? sustainFor) - now + TimeSpan.FromMilliseconds(20);
        return due > TimeSpan.Zero ? due : RecheckWhenOver;
    }
}
