using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>What the repository has published (a fleet-wide catalog: read when policies are validated, cached by selectors).</summary>
[Alias("fabric.catalog")]
public interface ICatalogGrain : IGrainWithStringKey
{
    /// <summary>The catalog's one key.</summary>
    const string Key = "fleet";

    /// <summary>Publishes (or updates) one stack by hand; it stays until published otherwise (the repository's sync leaves it alone).</summary>
    [Alias("publish")]
    ValueTask PublishAsync(StackInfo stack);

    /// <summary>
    /// What the signed repository publishes now (its sync calls this): each stack is published, and a stack an earlier
    /// sync published that is no longer among them is withdrawn — gone from <see cref="ListAsync"/> (so no selector
    /// chooses it and the VMs on it move at their next decision) and listed by <see cref="ListWithdrawnAsync"/>. Returns
    /// the ids withdrawn by this call. <paramref name="source"/> names the repository (its location and pinned root): a
    /// sync withdraws only what a sync of the same source published, and targets older than the newest one of that
    /// source (<paramref name="targetsVersion"/>: a silo whose read lags, or that was shown old metadata) change nothing.
    /// </summary>
    [Alias("sync")]
    ValueTask<ImmutableArray<string>> SyncAsync(ImmutableArray<StackInfo> published, int targetsVersion, string source);

    [Alias("list")]
    ValueTask<ImmutableArray<StackInfo>> ListAsync();

    [Alias("list-withdrawn")]
    ValueTask<ImmutableArray<WithdrawnStack>> ListWithdrawnAsync();

    /// <summary>
    /// Holds a stack id to one of its published versions on some hosts or all (replacing the stack's hold); a hold with
    /// an empty version releases it. Returns null when set, else why not (an unknown stack, a version the signed targets
    /// do not publish, no reason given): the hold is then as it was.
    /// </summary>
    [Alias("hold-version")]
    ValueTask<string?> HoldVersionAsync(VersionHold hold);

    /// <summary>Every hold in force, by stack id.</summary>
    [Alias("list-holds")]
    ValueTask<ImmutableArray<VersionHold>> ListHoldsAsync();

    /// <summary>What <paramref name="hostId"/> is to run: the holds that cover it, and each stack's released version for it
    /// (see <see cref="DesiredState.Releases"/>).</summary>
    [Alias("host-release")]
    ValueTask<HostRelease> GetHostReleaseAsync(string hostId);

    /// <summary>Each stack's latest rollout (running, paused or finished), by stack id.</summary>
    [Alias("list-rollouts")]
    ValueTask<ImmutableArray<Rollout>> ListRolloutsAsync();

    /// <summary>The versions judged bad (never released again), newest first.</summary>
    [Alias("list-bad")]
    ValueTask<ImmutableArray<BadVersion>> ListBadAsync();

    /// <summary>
    /// An operator's step in <paramref name="stackId"/>'s rollout: <c>pause</c>, <c>resume</c>, <c>promote</c> (reach the
    /// next ring now) or <c>rollback</c> (every host back to the previous version, which is marked bad). Returns null
    /// when taken, else why not (the rollout is then as it was). Who takes it is the verified operator where the control
    /// channel is secured, else <paramref name="by"/>.
    /// </summary>
    [Alias("rollout-step")]
    ValueTask<string?> StepRolloutAsync(string stackId, string action, string by, string why);

    /// <summary>A rollout judge's measurement (silos only: an operator cannot judge a rollout).</summary>
    [Alias("rollout-judged")]
    ValueTask JudgedAsync(RolloutJudgement judgement);
}

/// <summary>A VM (key: its id): policy, placement and the decision per remote host.</summary>
[Alias("fabric.vm")]
public interface IVmGrain : IGrainWithStringKey
{
    /// <summary>Validates against the catalog; a valid policy is persisted before it is acknowledged, then every path is re-evaluated.</summary>
    [Alias("set-policy")]
    ValueTask<PolicyResult> SetPolicyAsync(Policy policy);

    /// <summary>
    /// Registers or moves the VM (its agent calls this); idempotent for the same placement. An agent's move of a VM that
    /// another live host has is a claim: it takes effect when that host removes the VM or stops being seen (its agent
    /// silent for <c>VmGrain.SourceSilence</c>), so a host cannot take a running VM's traffic from another.
    /// </summary>
    [Alias("place")]
    ValueTask PlaceAsync(VmPlacement placement);

    /// <summary>The VM left <paramref name="hostId"/> (its agent calls this); ignored when it is placed on another host
    /// now — the source of a migration deregisters after the destination placed it.</summary>
    [Alias("remove")]
    ValueTask RemoveAsync(string hostId);

    /// <summary>A path this VM uses changed significantly (or its conditions are told again): run select_stack if it needs to.</summary>
    [Alias("path-changed")]
    ValueTask PathChangedAsync(string remoteHost, PathConditions conditions);

    /// <summary>What the VM's traffic got in the last interval (from the report of <paramref name="hostId"/>, the host it
    /// ran on then, with the path's smoothed conditions): joined with the decision that chose each stack and appended to
    /// the outcome log; a path whose stack now gives the VM other than its last decision scored is decided again.</summary>
    [Alias("outcomes"), Orleans.Concurrency.OneWay]
    ValueTask ReportOutcomesAsync(string hostId, ImmutableArray<Outcome> outcomes);

    /// <summary>Read-only and interleaved: its host asks while the VM may be waiting on that host.</summary>
    [Alias("view"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<VmView> GetAsync();
}

/// <summary>
/// A directed host pair (key: "FROM->TO"), read by operators and agents. The smoothing runs in the source host's grain,
/// which receives the samples anyway and wakes its VMs on a significant change — so a second of fleet telemetry costs one
/// message per host, and a path costs no activation until someone reads it.
/// </summary>
[Alias("fabric.path")]
public interface IPathGrain : IGrainWithStringKey
{
    /// <summary>The smoothed conditions now; null before the first report.</summary>
    [Alias("conditions")]
    ValueTask<PathConditions?> GetConditionsAsync();

    /// <summary>The smoothed conditions of the last ten minutes, one point per report.</summary>
    [Alias("history")]
    ValueTask<ImmutableArray<PathConditions>> GetHistoryAsync();

    static string KeyOf(string fromHost, string toHost) => $"{fromHost}->{toHost}";
}

/// <summary>A host (key: host id): the agent's session, its inventory, the desired state it must run and what it acknowledged.</summary>
[Alias("fabric.host")]
public interface IHostGrain : IGrainWithStringKey
{
    /// <summary>Registers the agent and its observer; returns the current desired state so the agent can reconcile at once.</summary>
    [Alias("register")]
    ValueTask<DesiredState> RegisterAsync(HostInfo info, IAgentObserver observer);

    /// <summary>Keeps the observer subscription alive (subscriptions expire when not renewed).</summary>
    [Alias("renew")]
    ValueTask RenewAsync(IAgentObserver observer);

    /// <summary>Sets the stacks of (VM, remote host) pairs; one new version and one push to the agent for all that changed.</summary>
    [Alias("bind")]
    ValueTask<long> BindAsync(ImmutableArray<Binding> bindings);

    [Alias("unbind-vm")]
    ValueTask<long> UnbindVmAsync(string vmId);

    /// <summary>The agent applied a version (idempotent; an older version than already acknowledged is ignored).</summary>
    [Alias("ack")]
    ValueTask AcknowledgeAsync(long version);

    /// <summary>One telemetry batch per host per second: path samples and outcomes.</summary>
    [Alias("telemetry")]
    ValueTask ReportAsync(ImmutableArray<PathSample> paths, ImmutableArray<Outcome> outcomes);

    [Alias("desired")]
    ValueTask<DesiredState> GetDesiredStateAsync();

    [Alias("acknowledged")]
    ValueTask<long> GetAcknowledgedAsync();

    [Alias("info"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<HostInfo?> GetInfoAsync();

    /// <summary>From the fleet grain, before the host's VMs are removed: marks it removed (refused from now on) and drops what it held.</summary>
    [Alias("forget")]
    ValueTask ForgetAsync();

    /// <summary>From the fleet grain: the host may register again.</summary>
    [Alias("readmit")]
    ValueTask ReadmitAsync();

    [Alias("is-removed"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<bool> IsRemovedAsync();

    /// <summary>When its agent last registered, renewed or reported (null: not since this grain activated).</summary>
    [Alias("last-seen"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<DateTimeOffset?> GetLastSeenAsync();

    [Alias("outcomes")]
    ValueTask<ImmutableArray<Outcome>> GetOutcomesAsync();

    [Alias("add-vm")]
    ValueTask AddVmAsync(string vmId);

    [Alias("remove-vm")]
    ValueTask RemoveVmAsync(string vmId);

    /// <summary>Read-only and interleaved.</summary>
    [Alias("vms"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<ImmutableArray<string>> ListVmsAsync();

    /// <summary>The remote hosts this host has reported paths to.</summary>
    [Alias("peers"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<ImmutableArray<string>> ListPeersAsync();

    /// <summary>
    /// From a virtual network's grain: routes of that network that this host must add or drop (never its own VMs'), and
    /// whether this host still has a VM in the network, with the hosts the upserts name (addresses and keys, so this
    /// grain never has to ask another host's). Becomes one desired-state change for the agent.
    /// </summary>
    [Alias("network-changed")]
    ValueTask NetworkChangedAsync(uint vni, bool member, ImmutableArray<Route> upserts, ImmutableArray<Route> removals, ImmutableArray<Peer> peers);

    /// <summary>From a virtual network's grain: a host this host forwards to re-registered with other addresses or another key.</summary>
    [Alias("peer-changed")]
    ValueTask PeerChangedAsync(Peer peer);

    /// <summary>The smoothed conditions of the path to a peer (null before its first sample).</summary>
    [Alias("path"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<PathConditions?> GetPathAsync(string peer);

    /// <summary>About ten minutes of that path's smoothed conditions, oldest first: every report of the last minute, one per 10 s before.</summary>
    [Alias("path-history"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<ImmutableArray<PathConditions>> GetPathHistoryAsync(string peer);
}

/// <summary>
/// A virtual network (key: its VNI in decimal): which VMs' vNICs are in it and on which host. It is the source of truth
/// for routes: when a vNIC joins, moves or leaves, it tells exactly the hosts with a VM in this network (and a host that
/// joins or leaves it), so a registration costs messages in proportion to the network, never to the fleet.
/// </summary>
[Alias("fabric.network")]
public interface INetworkGrain : IGrainWithStringKey
{
    /// <summary>
    /// The VM's vNICs in this network are now <paramref name="vnics"/> on <paramref name="host"/> (replacing what it had
    /// here, on whatever host); empty: it left the network. Idempotent. A vNIC whose MAC another VM of the network holds
    /// is not routed (the first holder keeps it); the MACs refused so are returned. <paramref name="sealedVm"/>: the VM's
    /// policy is confidential, so the hosts that forward to it must carry its frames encrypted (<see cref="Route.Sealed"/>).
    /// </summary>
    [Alias("set-member")]
    ValueTask<ImmutableArray<string>> SetMemberAsync(string vmId, Peer host, ImmutableArray<Vnic> vnics, bool sealedVm);

    /// <summary>Every vNIC in the network as routes, and the hosts they name.</summary>
    [Alias("routes"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<NetworkView> GetAsync();

    /// <summary>A member host re-registered with other addresses or another key: every other member host hears of it.
    /// One-way: the host grain that calls it may itself be called by this network meanwhile.</summary>
    [Alias("host-changed"), Orleans.Concurrency.OneWay]
    ValueTask HostChangedAsync(Peer peer);

    static string KeyOf(uint vni) => vni.ToString(System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>Implemented by the agent (an Orleans client); the host grain pushes each change of its desired state.</summary>
[Alias("fabric.agent-observer")]
public interface IAgentObserver : IGrainObserver
{
    [Alias("desired-state-changed")]
    Task DesiredStateChangedAsync(DesiredStateChange change);
}

/// <summary>
/// The fleet's index (one grain, key <see cref="Key"/>): which hosts registered, where each VM runs, and the stack
/// switches of the last minutes — what an operator's overview lists. Hosts and VMs tell it as they register and move.
/// </summary>
[Alias("fabric.fleet")]
public interface IFleetGrain : IGrainWithStringKey
{
    const string Key = "fleet";

    /// <summary>Interleaved (as the two below): an in-memory note that a host removal, which waits on VMs, may receive.</summary>
    [Alias("host-seen"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask HostSeenAsync(string hostId);

    [Alias("vm-placed"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask VmPlacedAsync(string vmId, string hostId);

    [Alias("vm-removed"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask VmRemovedAsync(string vmId);

    /// <summary>
    /// An operator takes a host out of the fleet (decommissioned, or its key or certificate suspected): it is recorded as
    /// removed (persisted before this returns), every silo refuses its agent within <c>RevokedHosts.RefreshPeriod</c>,
    /// and each of its VMs is removed, so every host that shared a network with it drops its routes, the host itself and
    /// the keys derived with it. Idempotent.
    /// </summary>
    [Alias("remove-host")]
    ValueTask RemoveHostAsync(string hostId);

    /// <summary>An operator lets a removed host back in (its agent registers and places its VMs again).</summary>
    [Alias("readmit-host")]
    ValueTask ReadmitHostAsync(string hostId);

    /// <summary>The hosts removed from the fleet.</summary>
    [Alias("removed"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<ImmutableArray<string>> ListRemovedAsync();

    /// <summary>One-way, from a VM's grain: a decision that switched its stack on a path.</summary>
    [Alias("switched"), Orleans.Concurrency.OneWay]
    ValueTask SwitchedAsync(Decision decision);

    [Alias("view"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<FleetView> GetAsync();
}

/// <summary>
/// Named policies (key "policies"): an operator writes a policy once ("pci-web", "bulk-nightly"), checked against the
/// published stacks like a VM's, and applies it to any number of VMs; each VM keeps its own copy (a later change to the
/// named policy is applied again, not inherited silently).
/// </summary>
[Alias("fabric.policies")]
public interface IPolicyLibraryGrain : IGrainWithStringKey
{
    const string Key = "policies";

    [Alias("list"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<ImmutableArray<NamedPolicy>> ListAsync();

    /// <summary>Creates or replaces a named policy; refused with errors naming the field ("name: …", "pin: …") when invalid.</summary>
    [Alias("save")]
    ValueTask<PolicyResult> SaveAsync(string name, Policy policy);

    [Alias("delete")]
    ValueTask<bool> DeleteAsync(string name);

    /// <summary>Sets the named policy on each VM (each VM's grain validates and re-evaluates its paths); one result per VM, in order.</summary>
    [Alias("apply")]
    ValueTask<ImmutableArray<PolicyResult>> ApplyAsync(string name, ImmutableArray<string> vmIds);
}

/// <summary>
/// The fleet's learner (one activation in the cluster, so one training at a time): trains a utility model from the
/// outcome log on a schedule and on demand, adopts a version only when it beats the one in service on held-back recent
/// outcomes, and says which version every silo scores with.
/// </summary>
[Alias("fabric.learner")]
public interface ILearnerGrain : IGrainWithStringKey
{
    const string Key = "fleet";

    [Alias("view"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<LearnerView> GetAsync();

    [Alias("train")]
    ValueTask<TrainingResult> TrainAsync();

    /// <summary>Off: every silo scores with the prior (the profiles) until it is switched on again.</summary>
    [Alias("set-enabled")]
    ValueTask SetLearningEnabledAsync(bool enabled);

    /// <summary>The newest outcomes judged by the model in service (computed at most every 10 s; cheap to poll).</summary>
    [Alias("evaluate"), Orleans.Concurrency.AlwaysInterleave]
    ValueTask<LearnerEvaluation> EvaluateAsync();
}
