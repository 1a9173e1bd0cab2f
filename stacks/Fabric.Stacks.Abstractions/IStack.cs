using System.Net.Sockets;
using Fabric.Wire;

namespace Fabric.Stacks;

/// <summary>
/// A plug-in's entry point. Each stack assembly has exactly one public, non-abstract class implementing this, with a
/// public parameterless constructor; the host finds it by reflection and never names it.
/// </summary>
public interface IStackFactory
{
    /// <summary>What the stack is and costs (its manifest profile repeats this for the selector).</summary>
    StackDescription Description { get; }

    /// <summary>Creates an instance for one path. The context belongs to the instance for its lifetime.</summary>
    IStack Create(StackContext context);
}

/// <summary>What a stack is, what it needs from the underlay and what it adds to every packet.</summary>
/// <param name="Id">The stack id (e.g. "std-ipv4").</param>
/// <param name="Version">Semantic version.</param>
/// <param name="UnderlayFamily">The underlay IP family the stack's datagrams travel over.</param>
/// <param name="MaxStackFieldBytes">Stack-specific bytes the stack may put between the Fabric header and the payload.</param>
/// <param name="MaxExpansionBytes">Bytes the stack may add to a VM frame's payload (tags, padding), beyond the stack fields.</param>
public sealed record StackDescription(string Id, string Version, AddressFamily UnderlayFamily, int MaxStackFieldBytes, int MaxExpansionBytes = 0)
{
    /// <summary>The contract version this assembly was built against; the host refuses other major versions.</summary>
    public const int ContractVersion = 1;

    /// <summary>
    /// True when every frame the stack carries is encrypted and authenticated end to end: only such a stack may carry a
    /// VM whose policy demands encryption, and the host never moves such a VM to one that does not (it drops instead).
    /// </summary>
    public bool Encrypts { get; init; }
}

/// <summary>
/// One stack instance bound to one path (this host → one remote host). The host calls it on one thread at a time and
/// passes the time in; an instance never reads a clock. Per-packet failures are counted drops in <see cref="GetStats"/>,
/// never exceptions: an exception from a stack is a bug, and the host quarantines the stack.
/// </summary>
public interface IStack : IDisposable
{
    /// <summary>Encapsulates one VM frame (Ethernet, no FCS) into zero or more underlay datagrams written to <paramref name="underlay"/>.</summary>
    /// <remarks><paramref name="frame"/> is valid only during the call.</remarks>
    void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay);

    /// <summary>
    /// Handles one datagram the host routed to this instance by its stack slot: VM frames go to <paramref name="vm"/>,
    /// the stack's own replies (acknowledgements) to <paramref name="underlay"/>.
    /// </summary>
    void Receive(in StackDatagram datagram, long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay);

    /// <summary>Called when <see cref="NextTimerNanoseconds"/> has passed (retransmissions, FEC deadlines, rekeying).</summary>
    void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay);

    /// <summary>When the stack next wants <see cref="OnTimer"/>; <see cref="long.MaxValue"/> for never.</summary>
    long NextTimerNanoseconds { get; }

    /// <summary>Counters since creation.</summary>
    StackStats GetStats();

    /// <summary>
    /// State to hand to an instance of another version of this stack that takes over this path (<see cref="StackContext.Previous"/>):
    /// what it measured of the path. Std stacks have none. Called on the path's thread, between the instance's other calls.
    /// </summary>
    StackState ExportState();

    /// <summary>A policy hook: the host tells the stack what the VM's policy now allows (e.g. a larger redundancy budget).</summary>
    void ApplyPolicy(StackPolicy policy);
}

/// <summary>Where a stack writes datagrams. Not thread-safe; valid only inside the call it was passed to.</summary>
public interface IUnderlayOutput
{
    /// <summary>
    /// A buffer for one datagram's stack fields and payload, placed after the Fabric header the host will write.
    /// At least <paramref name="maxLength"/> bytes long; empty when the host cannot take a datagram now (count a drop).
    /// </summary>
    Span<byte> Begin(int maxLength);

    /// <summary>Sends the datagram begun last: <paramref name="stackFieldLength"/> bytes of stack fields, then payload, <paramref name="length"/> bytes in all.</summary>
    void Commit(FabricPayloadType payloadType, int stackFieldLength, int length);

    /// <summary>
    /// The virtual network id the host writes into the Fabric header of datagrams committed from now on in this call.
    /// In <see cref="IStack.Transmit"/> it is the frame's network; a stack that sends frames it buffered earlier
    /// (retransmissions, parity over several frames) sets it to the network those frames came from.
    /// </summary>
    uint VirtualNetwork { get; set; }
}

/// <summary>Where a stack delivers frames for the VM. Valid only inside the call it was passed to.</summary>
public interface IVmOutput
{
    /// <summary>Delivers one Ethernet frame to the VM side of the path; the span is read during the call.</summary>
    void Deliver(ReadOnlySpan<byte> frame);

    /// <summary>
    /// The virtual network of frames delivered from now on in this call: the received datagram's network when the call
    /// begins; a stack delivering frames it recovered or buffered sets it to the network they were sent in.
    /// </summary>
    uint VirtualNetwork { get; set; }
}

/// <summary>Helpers for stacks over <see cref="IVmOutput"/>.</summary>
public static class VmOutputExtensions
{
    /// <summary>Delivers a frame in <paramref name="virtualNetwork"/> (one a stack buffered or recovered), leaving the output's network as it was.</summary>
    public static void Deliver(this IVmOutput vm, ReadOnlySpan<byte> frame, uint virtualNetwork)
    {
        var previous = vm.VirtualNetwork;
        vm.VirtualNetwork = virtualNetwork;
        vm.Deliver(frame);
        vm.VirtualNetwork = previous;
    }
}

/// <summary>A received datagram as the host parsed it: the Fabric header's fields and what follows.</summary>
public readonly ref struct StackDatagram
{
    public StackDatagram(FabricHeaderRepr header, ReadOnlySpan<byte> stackFields, ReadOnlySpan<byte> payload)
    {
        Header = header;
        StackFields = stackFields;
        Payload = payload;
    }

    public FabricHeaderRepr Header { get; }
    public ReadOnlySpan<byte> StackFields { get; }
    public ReadOnlySpan<byte> Payload { get; }
}

/// <summary>What the host gives a stack instance.</summary>
/// <param name="LocalHost">This host's id.</param>
/// <param name="RemoteHost">The peer host's id.</param>
/// <param name="Configuration">The stack's configuration (from its manifest and the control plane), e.g. keys.</param>
/// <param name="Telemetry">Where the stack reports events it wants logged (never per packet).</param>
public sealed record StackContext(string LocalHost, string RemoteHost, IReadOnlyDictionary<string, string> Configuration, IStackTelemetry Telemetry)
{
    /// <summary>
    /// When the host moves traffic from another version of this stack id to this instance on the same path (a version
    /// upgrade or roll back): what that instance's <see cref="IStack.ExportState"/> returned, for this one to start from.
    /// Only what describes the path belongs in it (RTT and delivery-rate estimates, a loss estimate), never sequence
    /// numbers, windows of packets or keys: the new instance opens a new slot with a new peer instance, and the old slot
    /// drains what it has in flight. A stack that cannot read it (another format, another stack's) starts fresh and says
    /// so in a telemetry event; it never throws for it. Null: nothing to start from.
    /// </summary>
    public StackState? Previous { get; init; }
}

/// <summary>Events a stack reports to the host's log (rate-limited by the host).</summary>
public interface IStackTelemetry
{
    void Event(string name, string detail);
}

/// <summary>Why a stack dropped a packet.</summary>
public enum StackDropReason
{
    /// <summary>Bytes that do not parse as what the stack expects.</summary>
    Malformed,
    /// <summary>A payload type the stack does not handle.</summary>
    UnexpectedPayloadType,
    /// <summary>A frame too large for the stack to carry.</summary>
    TooLarge,
    /// <summary>The host could not take a datagram (its buffer was refused).</summary>
    NoBuffer,
    /// <summary>A duplicate or replayed packet.</summary>
    Duplicate,
    /// <summary>Authentication failed.</summary>
    AuthenticationFailed,
    /// <summary>A window or buffer was full.</summary>
    BufferFull,
    /// <summary>Older than the replay window: it cannot be told from a replay.</summary>
    OutOfWindow,
    /// <summary>The stack lacks configuration it needs to carry the packet (e.g. a key).</summary>
    NotConfigured,
}

/// <summary>Counters of one stack instance.</summary>
public sealed record StackStats(long FramesIn, long DatagramsOut, long DatagramsIn, long FramesDelivered, IReadOnlyDictionary<StackDropReason, long> Drops)
{
    /// <summary>What the stack's own state looks like now, by name (e.g. "queued" frames, "windowPackets", "deliveryMbit"),
    /// for operators and benchmarks watching it over time; empty for a stack that keeps none worth showing.</summary>
    public IReadOnlyDictionary<string, double> Gauges { get; init; } = new Dictionary<string, double>();
}

/// <summary>Opaque state handed from an instance to its successor in a swap.</summary>
public sealed record StackState(string StackId, ReadOnlyMemory<byte> Data)
{
    public static StackState Empty(string stackId) => new(stackId, ReadOnlyMemory<byte>.Empty);
}

/// <summary>The parts of a VM's policy a stack may act on.</summary>
/// <param name="LatencySensitive">The workload weighs tail delay above goodput.</param>
/// <param name="MaxOverheadRatio">Extra underlay bytes per delivered byte the policy allows (0.1 = 10 %).</param>
public sealed record StackPolicy(bool LatencySensitive, double MaxOverheadRatio);

/// <summary>A helper for stacks: counts drops by reason without allocating per packet.</summary>
public sealed class StackCounters
{
    private readonly long[] _drops = new long[Enum.GetValues<StackDropReason>().Length];

    public long FramesIn;
    public long DatagramsOut;
    public long DatagramsIn;
    public long FramesDelivered;

    public void Drop(StackDropReason reason) => _drops[(int)reason]++;

    public StackStats Snapshot() => new(FramesIn, DatagramsOut, DatagramsIn, FramesDelivered,
        Enum.GetValues<StackDropReason>().Where(r => _drops[(int)r] > 0).ToDictionary(r => r, r => _drops[(int)r]));
}
