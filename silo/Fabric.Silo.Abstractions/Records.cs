using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>
/// A VM's policy. Workload: general | latency | bulk (what the selector optimizes). Security: standard | confidential
/// (confidential admits only stacks that encrypt). Family: the underlay family, ipv4 | ipv6. Allow (empty: every published
/// stack), Deny and Pin name stack ids. ExplorationShare (0..0.2) is the share of decisions that may try another allowed
/// stack to learn; never used for a pinned VM. Experimental: the VM admits experimental stacks (published for trial),
/// which it is given only by exploration, for the seconds its outcomes take to judge them.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.policy")]
public sealed record Policy(
    [property: Id(0)] string Workload,
    [property: Id(1)] string Security,
    [property: Id(2)] string Family,
    [property: Id(3)] ImmutableArray<string> Allow,
    [property: Id(4)] ImmutableArray<string> Deny,
    [property: Id(5)] string? Pin,
    [property: Id(6)] double ExplorationShare)
{
    public static Policy Default { get; } = new("general", "standard", "ipv4", [], [], null, 0);

    /// <summary>Whether experimental stacks may be tried for the VM (within <see cref="ExplorationShare"/> only).</summary>
    [Id(7)]
    public bool Experimental { get; init; }

    // ImmutableArray compares by reference; a policy read back from storage must equal the one written.
    public bool Equals(Policy? other) => other is not null && Workload == other.Workload && Security == other.Security && Family == other.Family
        && Allow.SequenceEqual(other.Allow) && Deny.SequenceEqual(other.Deny) && Pin == other.Pin && ExplorationShare.Equals(other.ExplorationShare)
        && Experimental == other.Experimental;

    public override int GetHashCode() => HashCode.Combine(Workload, Security, Family, Allow.Length, Deny.Length, Pin, ExplorationShare, Experimental);
}

/// <summary>
/// What a published stack costs and tolerates (from its signed manifest), as the selector sees it. Experimental: the
/// version was published for trial (<see cref="Policy.Experimental"/>).
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.stack-info")]
public sealed record StackInfo(
    [property: Id(0)] string Id,
    [property: Id(1)] string Version,
    [property: Id(2)] string Family,
    [property: Id(3)] int HeaderBytes,
    [property: Id(4)] double Redundancy,
    [property: Id(5)] double AddedDelayMs,
    [property: Id(6)] double ToleratesLoss,
    [property: Id(7)] bool Encrypts,
    [property: Id(8)] string Purpose,
    [property: Id(9)] bool Experimental = false)
{
    /// <summary>Every version of the stack the signed targets publish, newest first (this one, <see cref="Version"/>, among them); empty: not said.</summary>
    [Id(10)] public ImmutableArray<string> PublishedVersions { get; init; } = [];

    public bool Equals(StackInfo? other) => other is not null && Id == other.Id && Version == other.Version && Family == other.Family
        && HeaderBytes == other.HeaderBytes && Redundancy.Equals(other.Redundancy) && AddedDelayMs.Equals(other.AddedDelayMs)
        && ToleratesLoss.Equals(other.ToleratesLoss) && Encrypts == other.Encrypts && Purpose == other.Purpose && Experimental == other.Experimental
        && (PublishedVersions.IsDefault ? [] : PublishedVersions).SequenceEqual(other.PublishedVersions.IsDefault ? [] : other.PublishedVersions);

    public override int GetHashCode() => HashCode.Combine(Id, Version, Family, HeaderBytes, Redundancy, AddedDelayMs, ToleratesLoss, HashCode.Combine(Encrypts, Purpose, Experimental));
}

/// <summary>A stack the signed repository published and then withdrew: the version last published, and when the catalog saw it go.</summary>
[GenerateSerializer, Immutable, Alias("fabric.withdrawn-stack")]
public sealed record WithdrawnStack(
    [property: Id(0)] string Id,
    [property: Id(1)] string Version,
    [property: Id(2)] DateTimeOffset At);

/// <summary>
/// A path's measured conditions (smoothed by the source host's grain). Loss is a fraction (0.02 = 2 %). BandwidthMbps is
/// what the path delivers now (0 on an idle path); CapacityMbps the bottleneck's rate, as the agents' capacity trains
/// measure it (or the most it delivered in the last minute where that is more; 0 when unknown).
/// MinRttMs is the lowest RTT since the path last changed regime, over at most two minutes (the path without queues; 0
/// when unknown): RTT well above it means queues are building, and loss that comes with them is congestion rather than a
/// lossy link. LossBurstiness is the dispersion of the per-second loss counts since the link's loss last changed, over at
/// most a minute (0: no loss; about 1: datagrams lost each on its own; above: in runs or bad seconds); RttStdMs the
/// standard deviation of RTT over the last minute. Idle: no VM traffic on the path for the last minute (its
/// agents' probes and capacity trains do not count).
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.path-conditions")]
public sealed record PathConditions(
    [property: Id(0)] double RttMs,
    [property: Id(1)] double JitterMs,
    [property: Id(2)] double Loss,
    [property: Id(3)] double BandwidthMbps,
    [property: Id(4)] DateTimeOffset At,
    [property: Id(5)] double MinRttMs = 0,
    [property: Id(6)] double CapacityMbps = 0,
    [property: Id(7)] double LossBurstiness = 0,
    [property: Id(8)] double RttStdMs = 0,
    [property: Id(9)] bool Idle = false)
{
    public override string ToString() =>
        $"rtt {RttMs:0.#} ms (min {MinRttMs:0.#}, sd {RttStdMs:0.#}), jitter {JitterMs:0.#} ms, loss {Loss * 100:0.##} % (burstiness {LossBurstiness:0.#}), {BandwidthMbps:0.#} of {CapacityMbps:0.#} Mbit/s{(Idle ? ", no VM traffic" : "")}";
}

/// <summary>
/// One candidate's score in a decision (its predicted utility, 0..1), how uncertain it is, which scorer gave it
/// ("model vN" or "prior") and why it scored so.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.candidate")]
public sealed record CandidateScore(
    [property: Id(0)] string Stack,
    [property: Id(1)] double Score,
    [property: Id(2)] string Why,
    [property: Id(3)] double Uncertainty = 0,
    [property: Id(4)] string Source = "prior");

/// <summary>
/// One run of select_stack for a (VM, remote host): its inputs, every candidate's score, the stack chosen and why.
/// Changed is false when the current stack stays. Propensity is the probability with which the selector would have
/// chosen this stack (exploration included), logged with outcomes so other policies can be evaluated off-line.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.decision")]
public sealed record Decision(
    [property: Id(0)] string VmId,
    [property: Id(1)] string RemoteHost,
    [property: Id(2)] string? Previous,
    [property: Id(3)] string Stack,
    [property: Id(4)] bool Changed,
    [property: Id(5)] string Reason,
    [property: Id(6)] PathConditions Conditions,
    [property: Id(7)] Policy Policy,
    [property: Id(8)] ImmutableArray<CandidateScore> Candidates,
    [property: Id(9)] bool Exploration,
    [property: Id(10)] DateTimeOffset At,
    [property: Id(11)] double Propensity = 1);

/// <summary>The answer to a policy change: accepted (and persisted) with its version, or refused with every problem named.</summary>
[GenerateSerializer, Immutable, Alias("fabric.policy-result")]
public sealed record PolicyResult([property: Id(0)] bool Accepted, [property: Id(1)] ImmutableArray<string> Errors, [property: Id(2)] long Version);

/// <summary>One version of a stack on a host, and how many VM paths it carries there.</summary>
[GenerateSerializer, Immutable, Alias("fabric.stack-version-use")]
public sealed record StackVersionUse(
    [property: Id(0)] string Id,
    [property: Id(1)] string Version,
    [property: Id(2)] int VmPaths)
{
    /// <summary>Why the host quarantined this version (it threw, hung or returned garbage), or null: it is usable.</summary>
    [Id(3)] public string? Quarantined { get; init; }

    /// <summary>Packets (frames from VMs and datagrams from peers) the version's slots on the host took since the agent
    /// started, as its instances count them (closed slots as they last said; refreshed every 30 s). 0 when the host has
    /// only one version of the stack (nothing for a rollout to compare).</summary>
    [Id(4)] public long Packets { get; init; }

    /// <summary>What the same instances dropped, by reason (a <c>StackDropReason</c>'s name); empty when none.</summary>
    [Id(5)] public ImmutableDictionary<string, long> Drops { get; init; } = ImmutableDictionary<string, long>.Empty;

    /// <summary>The time a sample of the host's calls into the version's instances took in all, in nanoseconds (the
    /// agent times one call in 64: a packet's way through the stack, mostly).</summary>
    [Id(6)] public long CallNanoseconds { get; init; }

    /// <summary>How many calls <see cref="CallNanoseconds"/> timed.</summary>
    [Id(7)] public long CallsTimed { get; init; }
}

/// <summary>One NIC of a host's HAL inventory.</summary>
[GenerateSerializer, Immutable, Alias("fabric.nic")]
public sealed record NicInfo(
    [property: Id(0)] string Name,
    [property: Id(1)] string Driver,
    [property: Id(2)] string Mac,
    [property: Id(3)] int Mtu,
    [property: Id(4)] long SpeedMbps,
    [property: Id(5)] string State,
    [property: Id(6)] int TotalVfs,
    [property: Id(7)] int NumVfs,
    [property: Id(8)] string? PhysicalFunction);

/// <summary>What an agent tells the control plane about its host when it registers.</summary>
[GenerateSerializer, Immutable, Alias("fabric.host-info")]
public sealed record HostInfo(
    [property: Id(0)] string HostId,
    [property: Id(1)] string? UnderlayIPv4,
    [property: Id(2)] string? UnderlayIPv6,
    [property: Id(3)] int UnderlayPort,
    [property: Id(4)] ImmutableArray<string> LoadedStacks,
    [property: Id(5)] ImmutableArray<NicInfo> Nics,
    [property: Id(6)] string AgentVersion)
{
    /// <summary>
    /// The host's public key agreement key (ECDH P-256, SubjectPublicKeyInfo, base64): each peer derives the pair's path
    /// keys from it and its own private key, so the control plane carries public keys only. Null: an agent without one
    /// (its peers then need hand-configured keys).
    /// </summary>
    [Id(7)] public string? PublicKey { get; init; }

    /// <summary>
    /// The key <see cref="PublicKey"/> replaced, while the agent still keeps it (a rotation's overlap): peers holding it
    /// take the new key in place, as a rotation; a new key that names no previous one (an agent that lost its state, or
    /// was re-enrolled) gets a new path. Not part of the host's identity.
    /// </summary>
    [Id(9)] public string? PreviousPublicKey { get; init; }

    /// <summary>
    /// The stack versions the host runs now (registered, neither quarantined nor withdrawn; several per id side by side)
    /// and how many VM paths each carries, as of this registration. Not part of the host's identity (<see cref="Equals(HostInfo?)"/>):
    /// it changes with every binding, and the host grain keeps the latest in memory rather than writing it.
    /// </summary>
    [Id(8)] public ImmutableArray<StackVersionUse> StackVersions { get; init; } = [];

    public bool Equals(HostInfo? other) => other is not null && HostId == other.HostId && UnderlayIPv4 == other.UnderlayIPv4 && UnderlayIPv6 == other.UnderlayIPv6
        && UnderlayPort == other.UnderlayPort && LoadedStacks.SequenceEqual(other.LoadedStacks) && Nics.SequenceEqual(other.Nics) && AgentVersion == other.AgentVersion
        && PublicKey == other.PublicKey;

    public override int GetHashCode() => HashCode.Combine(HostId, UnderlayIPv4, UnderlayIPv6, UnderlayPort, LoadedStacks.Length, Nics.Length, AgentVersion);
}

/// <summary>
/// A VM as its host's agent registers it. <see cref="Running"/> is what the agent runs for it now (stack per remote
/// host): a VM that lost its decisions (a silo restarted on memory storage) adopts them instead of starting over, so a
/// control-plane restart never swaps a stack. It is not part of the placement's identity.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.vm-placement")]
public sealed record VmPlacement(
    [property: Id(0)] string HostId,
    [property: Id(1)] string Name,
    [property: Id(2)] uint Vni,
    [property: Id(3)] ImmutableArray<string> Macs,
    [property: Id(4)] Policy? Policy,
    [property: Id(5)] ImmutableDictionary<string, string>? Running = null)
{
    /// <summary>The VM's vNICs (MAC, virtual network, addresses): what the control plane turns into other hosts' routes.</summary>
    [Id(6)] public ImmutableArray<Vnic> Vnics { get; init; } = [];

    public bool Equals(VmPlacement? other) => other is not null && HostId == other.HostId && Name == other.Name && Vni == other.Vni
        && Macs.SequenceEqual(other.Macs) && Equals(Policy, other.Policy) && Vnics.SequenceEqual(other.Vnics);

    public override int GetHashCode() => HashCode.Combine(HostId, Name, Vni, Macs.Length, Policy);
}

/// <summary>
/// The stack a host must use towards a remote host for a VM. <see cref="Sealed"/>: the VM's policy demands encryption, so
/// the agent carries its frames only through a stack that encrypts and drops them where none does (never in clear).
/// <see cref="Role"/>: whose stack carries the VM's conversations with the VMs on other hosts.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.binding")]
public sealed record Binding([property: Id(0)] string VmId, [property: Id(1)] string RemoteHost, [property: Id(2)] string Stack,
    [property: Id(3)] bool Sealed = false, [property: Id(4)] PairRole Role = PairRole.Own);

/// <summary>
/// Whose stack carries a conversation between two VMs on different hosts. Each VM's binding carries what it sends, so a
/// request/response VM's answers ride its peer's choice unless one of them follows the other: a VM whose policy declares a
/// need (a latency or bulk workload, or a pin) leads, and a VM that declares none (general, unpinned) follows, answering a
/// leader on the leader's stack. Two leaders, or two followers, each send on their own binding.
/// </summary>
[GenerateSerializer]
public enum PairRole
{
    /// <summary>Its frames ride its own binding only (a binding from before roles, or a host without a control plane).</summary>
    Own = 0,

    /// <summary>Its choice carries both directions of its conversations with VMs that follow.</summary>
    Leads = 1,

    /// <summary>It answers a VM that leads on the leader's stack; its other frames ride its own binding.</summary>
    Follows = 2,
}

/// <summary>How a policy's VM takes part in its conversations (<see cref="PairRole"/>).</summary>
public static class PairRoles
{
    /// <summary>A policy that declares a need (a latency or bulk workload, or a pin) leads; one that declares none follows.</summary>
    public static PairRole Of(string workload, string? pin) => workload == "general" && pin is null ? PairRole.Follows : PairRole.Leads;
}

/// <summary>One vNIC of a VM: its MAC, its virtual network and the addresses it may use (what its host lets it send from).</summary>
[GenerateSerializer, Immutable, Alias("fabric.vnic")]
public sealed record Vnic([property: Id(0)] string Mac, [property: Id(1)] uint Vni, [property: Id(2)] ImmutableArray<string> IPv4, [property: Id(3)] ImmutableArray<string> IPv6)
{
    public bool Equals(Vnic? other) => other is not null && Mac == other.Mac && Vni == other.Vni && IPv4.SequenceEqual(other.IPv4) && IPv6.SequenceEqual(other.IPv6);

    public override int GetHashCode() => HashCode.Combine(Mac, Vni, IPv4.Length, IPv6.Length);
}

/// <summary>Where a remote VM's vNIC lives: what a host with a VM in the same virtual network needs to forward to it.
/// <paramref name="Sealed"/>: the VM's policy is confidential; it takes frames only as they crossed the underlay encrypted,
/// so a host forwarding to it sends them only through a stack that encrypts.</summary>
[GenerateSerializer, Immutable, Alias("fabric.route")]
public sealed record Route([property: Id(0)] string VmId, [property: Id(1)] string HostId, [property: Id(2)] Vnic Vnic, [property: Id(3)] bool Sealed = false)
{
    /// <summary>A route's identity on a host: the vNIC's virtual network and MAC.</summary>
    public string Key => KeyOf(Vnic.Vni, Vnic.Mac);

    public static string KeyOf(uint vni, string mac) => $"{vni}/{mac.ToLowerInvariant()}";
}

/// <summary>A virtual network's routes and the hosts they name.</summary>
[GenerateSerializer, Immutable, Alias("fabric.network-view")]
public sealed record NetworkView([property: Id(0)] ImmutableArray<Route> Routes, [property: Id(1)] ImmutableArray<Peer> Hosts);

/// <summary>A host that another host forwards to: where its underlay listens and its public key (see <see cref="HostInfo.PublicKey"/>).</summary>
[GenerateSerializer, Immutable, Alias("fabric.peer")]
public sealed record Peer(
    [property: Id(0)] string HostId,
    [property: Id(1)] string? UnderlayIPv4,
    [property: Id(2)] string? UnderlayIPv6,
    [property: Id(3)] int UnderlayPort,
    [property: Id(4)] string? PublicKey)
{
    public static Peer Of(HostInfo info) => new(info.HostId, info.UnderlayIPv4, info.UnderlayIPv6, info.UnderlayPort, info.PublicKey) { PreviousPublicKey = info.PreviousPublicKey };

    /// <summary>The key <see cref="PublicKey"/> replaced, while its host keeps it (<see cref="HostInfo.PreviousPublicKey"/>); not part of the peer's identity.</summary>
    [Id(5)] public string? PreviousPublicKey { get; init; }

    public bool Equals(Peer? other) => other is not null && HostId == other.HostId && UnderlayIPv4 == other.UnderlayIPv4 && UnderlayIPv6 == other.UnderlayIPv6
        && UnderlayPort == other.UnderlayPort && PublicKey == other.PublicKey;

    public override int GetHashCode() => HashCode.Combine(HostId, UnderlayIPv4, UnderlayIPv6, UnderlayPort, PublicKey);
}

/// <summary>
/// Everything a host should run, at a version that only grows; applying the same version twice changes nothing: the
/// bindings of its VMs, and for every virtual network with a VM here, the other hosts' VMs in it (routes) and those
/// hosts (peers) — nothing of networks it has no VM in.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.desired-state")]
public sealed record DesiredState([property: Id(0)] string HostId, [property: Id(1)] long Version, [property: Id(2)] ImmutableArray<Binding> Bindings)
{
    [Id(3)] public ImmutableArray<Route> Routes { get; init; } = [];

    [Id(4)] public ImmutableArray<Peer> Peers { get; init; } = [];

    /// <summary>The VMs the control plane has placed on this host: the agent places again any of its VMs missing here.</summary>
    [Id(5)] public ImmutableArray<string> Vms { get; init; } = [];

    /// <summary>
    /// The stack versions the control plane holds this host to (<see cref="VersionHold"/>, those that name it or every
    /// host): bindings of such a stack use no newer version than that one (the newest at or below it), and bindings on a
    /// newer one move. Read by the agent at each registration (every 5 s), not carried in deltas.
    /// </summary>
    [Id(6)] public ImmutableArray<VersionHold> Holds { get; init; } = [];

    /// <summary>
    /// The version of each stack in the catalog this host is to run when no hold says otherwise: a rollout's release for
    /// it (the new version once a ring with this host is reached, else the previous one), otherwise the newest published
    /// version not judged bad. A version the catalog has not released (published after it last synced) is not used.
    /// Read at each registration, like <see cref="Holds"/>.
    /// </summary>
    [Id(7)] public ImmutableDictionary<string, string> Releases { get; init; } = ImmutableDictionary<string, string>.Empty;
}

/// <summary>
/// An operator's hold of a stack id to one of its published versions, on <see cref="Hosts"/> (empty: every host): a roll
/// back (hold to the previous version) or a staged start (hold most hosts to the old one). Who set it, why and when are kept.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.version-hold")]
public sealed record VersionHold(
    [property: Id(0)] string StackId,
    [property: Id(1)] string Version,
    [property: Id(2)] ImmutableArray<string> Hosts,
    [property: Id(3)] string By,
    [property: Id(4)] string Reason,
    [property: Id(5)] DateTimeOffset At)
{
    /// <summary>Whether the hold applies to <paramref name="hostId"/>.</summary>
    public bool Covers(string hostId) => Hosts.IsDefaultOrEmpty || Hosts.Contains(hostId, StringComparer.Ordinal);
}

/// <summary>
/// What changed in a host's desired state between two versions: pushed to the agent instead of the whole state. An
/// agent whose version is not <see cref="PreviousVersion"/> missed a push and fetches the whole state instead.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.desired-state-change")]
public sealed record DesiredStateChange(
    [property: Id(0)] string HostId,
    [property: Id(1)] long PreviousVersion,
    [property: Id(2)] long Version,
    [property: Id(3)] ImmutableArray<Binding> Upserts,
    [property: Id(4)] ImmutableArray<Binding> Removals)
{
    [Id(5)] public ImmutableArray<Route> RouteUpserts { get; init; } = [];

    /// <summary>Routes that went (only <see cref="Route.Key"/> matters).</summary>
    [Id(6)] public ImmutableArray<Route> RouteRemovals { get; init; } = [];

    [Id(7)] public ImmutableArray<Peer> PeerUpserts { get; init; } = [];

    [Id(8)] public ImmutableArray<string> PeerRemovals { get; init; } = [];
}

/// <summary>
/// One path measurement interval from an agent (about a second): active probes and passive sequence/timestamp counts.
/// CapacityMbps: the bottleneck rate the agent's last capacity train measured in the interval (0: none came; an agent
/// that predates trains sends none).
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.path-sample")]
public sealed record PathSample(
    [property: Id(0)] string FromHost,
    [property: Id(1)] string ToHost,
    [property: Id(2)] double RttMs,
    [property: Id(3)] double JitterMs,
    [property: Id(4)] long Sent,
    [property: Id(5)] long Lost,
    [property: Id(6)] double DeliveredMbps,
    [property: Id(7)] DateTimeOffset At,
    [property: Id(8)] double CapacityMbps = 0);

/// <summary>
/// What a (VM, path) got during an interval on a stack — the learner's raw material. With TCP traffic (Passive), measured
/// from the VM's own inner headers at its host's switch: goodput is new bytes acknowledged, delay the VM-experienced RTT
/// (data to its ACK), residual loss the share of its data the VM's TCP sent again, ResponseP99Ms the time from a
/// request's last segment to the answer's first; without, the VM's offered rate, the path's probe RTT and raw loss.
/// Shape: bulk, request-response or none (no TCP). TailP99Ms: the p99 of the VM's answer times (else its RTT) pooled over
/// the agent's trailing window on this stack (15 intervals), which holds a tail no single interval shows; NaN without TCP.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.outcome")]
public sealed record Outcome(
    [property: Id(0)] string VmId,
    [property: Id(1)] string RemoteHost,
    [property: Id(2)] string Stack,
    [property: Id(3)] PathConditions Conditions,
    [property: Id(4)] double GoodputMbps,
    [property: Id(5)] double DelayP50Ms,
    [property: Id(6)] double DelayP99Ms,
    [property: Id(7)] double ResidualLoss,
    [property: Id(8)] long OverheadBytes,
    [property: Id(9)] TimeSpan Interval,
    [property: Id(10)] bool Passive = false,
    [property: Id(11)] long RetransmittedBytes = 0,
    [property: Id(12)] double ResponseP99Ms = double.NaN,
    [property: Id(13)] int Flows = 0,
    [property: Id(14)] long Packets = 0,
    [property: Id(15)] string Shape = "none",
    [property: Id(16)] double TailP99Ms = double.NaN,
    [property: Id(17)] string? StackVersion = null);

/// <summary>
/// A VM's state for operators: policy, placement, the stack per remote host, the decisions that changed something (Log)
/// and the last decision per remote host (Last: why the current stack is what it is).
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.vm-view")]
public sealed record VmView(
    [property: Id(0)] string VmId,
    [property: Id(1)] VmPlacement? Placement,
    [property: Id(2)] Policy Policy,
    [property: Id(3)] long PolicyVersion,
    [property: Id(4)] ImmutableDictionary<string, string> Stacks,
    [property: Id(5)] ImmutableArray<Decision> Log,
    [property: Id(6)] ImmutableDictionary<string, Decision> Last)
{
    /// <summary>Another host's agent placed the VM there while its host still has it: the move waits for that host to let it go.</summary>
    [Id(7)] public VmPlacement? Claim { get; init; }
}

/// <summary>The fleet's index: hosts, each VM's host, and the newest stack switches first.</summary>
[GenerateSerializer, Immutable, Alias("fabric.fleet-view")]
public sealed record FleetView(
    [property: Id(0)] ImmutableArray<string> Hosts,
    [property: Id(1)] ImmutableSortedDictionary<string, string> Vms,
    [property: Id(2)] ImmutableArray<Decision> RecentSwitches)
{
    /// <summary>Hosts an operator removed from the fleet (refused by every silo until readmitted).</summary>
    [Id(3)] public ImmutableArray<string> Removed { get; init; } = [];
}

/// <summary>A named policy of the library, its version (each save adds one) and when it was saved.</summary>
[GenerateSerializer, Immutable, Alias("fabric.named-policy")]
public sealed record NamedPolicy([property: Id(0)] string Name, [property: Id(1)] Policy Policy, [property: Id(2)] long Version, [property: Id(3)] DateTimeOffset SavedAt);

/// <summary>How much one feature matters to the model: the drop in its accuracy (R², permutation feature importance)
/// when the feature's values are shuffled.</summary>
[GenerateSerializer, Immutable, Alias("fabric.feature-importance")]
public sealed record FeatureImportance([property: Id(0)] string Feature, [property: Id(1)] double Importance);

/// <summary>
/// A trained model version: when, on how many outcomes, how long training took, its error (mean absolute, in utility)
/// on held-back recent outcomes next to the error of what it was compared with (the model in service, or the prior),
/// and its feature importance.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.model-info")]
public sealed record ModelInfo(
    [property: Id(0)] long Version,
    [property: Id(1)] DateTimeOffset TrainedAt,
    [property: Id(2)] int Outcomes,
    [property: Id(3)] double TrainingSeconds,
    [property: Id(4)] double HoldoutError,
    [property: Id(5)] double BaselineError,
    [property: Id(6)] string Baseline,
    [property: Id(7)] ImmutableArray<FeatureImportance> Importance,
    [property: Id(8)] int HoldoutOutcomes);

/// <summary>What one training run did: adopted a new version, or why not.</summary>
[GenerateSerializer, Immutable, Alias("fabric.training-result")]
public sealed record TrainingResult([property: Id(0)] bool Adopted, [property: Id(1)] string Reason, [property: Id(2)] ModelInfo? Candidate);

/// <summary>One logged outcome next to what the model in service predicted for it.</summary>
[GenerateSerializer, Immutable, Alias("fabric.predicted-outcome")]
public sealed record PredictedOutcome(
    [property: Id(0)] DateTimeOffset At,
    [property: Id(1)] string VmId,
    [property: Id(2)] string Workload,
    [property: Id(3)] string Stack,
    [property: Id(4)] double Predicted,
    [property: Id(5)] double Observed,
    [property: Id(6)] bool Exploration);

/// <summary>
/// The newest outcomes of the log judged by the model in service: predicted against observed utility, the share of
/// them that were exploration, and the off-line regret estimate — per outcome, the best utility the model predicts
/// for any stack the catalog offered minus what it predicts for the stack that was chosen (a direct-method estimate:
/// as good as the model is). <see cref="ModelVersion"/> 0: no model, the rest is empty.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.learner-evaluation")]
public sealed record LearnerEvaluation(
    [property: Id(0)] DateTimeOffset At,
    [property: Id(1)] long ModelVersion,
    [property: Id(2)] ImmutableArray<PredictedOutcome> Recent,
    [property: Id(3)] int Evaluated,
    [property: Id(4)] double ExplorationShare,
    [property: Id(5)] double EstimatedRegret,
    [property: Id(6)] double MeanAbsoluteError);

/// <summary>The learner for operators: the model in service, whether learning is on, and the last training runs.</summary>
[GenerateSerializer, Immutable, Alias("fabric.learner-view")]
public sealed record LearnerView(
    [property: Id(0)] ModelInfo? InService,
    [property: Id(1)] bool LearningEnabled,
    [property: Id(2)] ImmutableArray<TrainingResult> Recent);

/// <summary>
/// The verified caller of the grain call that runs now, as a silo's authorization filter found it: the host id when an
/// agent calls (which may then act only for that host); null for a silo's own calls, an operator's, and a silo without
/// the control channel's security.
/// </summary>
public static class CallerContext
{
    private static readonly AsyncLocal<string?> Agent = new();

    private static readonly AsyncLocal<string?> OperatorName = new();

    public static string? AgentHost
    {
        get => Agent.Value;
        set => Agent.Value = value;
    }

    /// <summary>The operator's name when an operator calls (the verified certificate's), else null.</summary>
    public static string? Operator
    {
        get => OperatorName.Value;
        set => OperatorName.Value = value;
    }

    private static readonly AsyncLocal<Func<bool>?> AgentRevoked = new();

    /// <summary>
    /// When an agent calls: a check, good for later, that says whether the credentials it called with have been withdrawn
    /// since (its certificate revoked by the fleet's authority, its host removed). A grain that keeps something of the
    /// caller's — an observer to push to — asks it before each use. Null otherwise.
    /// </summary>
    public static Func<bool>? Revoked
    {
        get => AgentRevoked.Value;
        set => AgentRevoked.Value = value;
    }
}
