using System.Net;
using Fabric.Agent.Stacks;
using Fabric.Agent.Underlay;
using Fabric.Hal.Linux;
using Fabric.Stacks;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>A remote host as the switch knows it: its id and underlay addresses.</summary>
public sealed record RemoteHostSpec(string HostId, IPAddress? UnderlayIPv4, IPAddress? UnderlayIPv6, string Stack);

/// <summary>
/// The path from this host to one remote host: the stack instances bound to it by slot, the path sequence, and the
/// adapters the stacks write through. All calls into a stack instance hold <see cref="_gate"/>, so the stack sees one
/// thread at a time whichever VM port or underlay thread the packet came from.
/// </summary>
public sealed class RemotePath : IDisposable
{
    private readonly object _gate = new();
    private readonly IStack?[] _slots = new IStack?[256];
    private readonly string?[] _slotStacks = new string?[256];
    private readonly long[] _drainUntil = new long[256];
    private long _highestSequence = -1;
    private long _firstSequence = -1;
    private long _sequenced;
    private readonly PathOutput _output;
    private readonly PathDelivery _delivery;
    private int _transmitSlot;

    /// <summary>The slot every path keeps open with the family's std stack, so a path whose stack fails can fall back at once.</summary>
    public const int FallbackSlot = 255;

    private long _inCallSince;
    private volatile int _inCallSlot;

    /// <summary>The slot whose stack the current (or last) call went into.</summary>
    internal int InCallSlot => _inCallSlot;

    /// <summary>The stack id in a slot, read without the gate (for the watchdog, which must not wait on a hung path).</summary>
    internal string? StackInUnlocked(int slot) => Volatile.Read(ref _slotStacks[slot]);

    /// <summary>Called (outside the path's gate) when a stack instance throws: the path, the slot, the stack id, whether it was transmitting, the exception.</summary>
    internal Action<RemotePath, int, string, bool, Exception>? OnFault { get; set; }

    internal RemotePath(RemoteHostSpec spec, UdpPeer destination, UdpUnderlay underlay, Action<uint, ReadOnlySpan<byte>> deliver, Func<long> clock)
    {
        Spec = spec;
        Destination = destination;
        Clock = clock;
        _output = new PathOutput(this, underlay);
        _delivery = new PathDelivery(deliver);
    }

    public RemoteHostSpec Spec { get; }

    /// <summary>The remote host's underlay socket address for the family of the bound stack.</summary>
    public UdpPeer Destination { get; }

    /// <summary>Rx = datagrams from the remote host; Tx = datagrams sent to it.</summary>
    public TrafficCounters Counters { get; } = new();

    internal Func<long> Clock { get; }

    /// <summary>The id of the stack that transmits on this path.</summary>
    /// <remarks>Read without the gate, so status and metrics never wait on a path whose stack is stuck in a call.</remarks>
    public string? TransmitStack => Volatile.Read(ref _slotStacks[Volatile.Read(ref _transmitSlot)]);

    /// <summary>The slot transmissions use.</summary>
    public int TransmitSlot => Volatile.Read(ref _transmitSlot);

    /// <summary>Opens <paramref name="slot"/> with a new instance of <paramref name="stack"/>: it receives at once, transmits after <see cref="Commit"/>.</summary>
    internal void Open(LoadedStack stack, int slot, string localHost)
    {
        var instance = stack.Factory.Create(new StackContext(localHost, Spec.HostId, new Dictionary<string, string>(), NullTelemetry.Instance));
        lock (_gate)
        {
            if (_slots[slot] is not null)
            {
                instance.Dispose();
                throw new InvalidOperationException($"Path to '{Spec.HostId}': slot {slot} is in use by {_slotStacks[slot]}.");
            }
            _slots[slot] = instance;
            _slotStacks[slot] = stack.Description.Id;
            _drainUntil[slot] = 0;
        }
    }

    /// <summary>
    /// Moves transmission to <paramref name="slot"/> atomically (the next packet uses it). The previous slot keeps
    /// receiving until <paramref name="drainUntil"/>, then <see cref="TakeDrained"/> hands it back for release.
    /// Returns the previous slot.
    /// </summary>
    internal int Commit(int slot, long drainUntil)
    {
        lock (_gate)
        {
            if (_slots[slot] is null)
            {
                throw new InvalidOperationException($"Path to '{Spec.HostId}': slot {slot} was not prepared.");
            }
            var previous = _transmitSlot;
            if (previous != slot)
            {
                _drainUntil[previous] = drainUntil;
                Volatile.Write(ref _transmitSlot, slot);
            }
            return previous;
        }
    }

    /// <summary>Closes a slot that is not transmitting (an aborted prepare); returns its stack id, or null when the slot was empty.</summary>
    internal string? Close(int slot)
    {
        lock (_gate)
        {
            if (slot == _transmitSlot || _slots[slot] is null)
            {
                return null;
            }
            return CloseLocked(slot);
        }
    }

    /// <summary>Closes every drained slot whose time has come; returns their stack ids (for the stack host to release).</summary>
    internal List<string> TakeDrained(long now)
    {
        var released = new List<string>();
        // Housekeeping must not wait on a path whose stack is stuck: try again next round.
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(50)))
        {
            return released;
        }
        try
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is not null && i != _transmitSlot && _drainUntil[i] != 0 && _drainUntil[i] <= now)
                {
                    released.Add(CloseLocked(i));
                }
            }
        }
        finally
        {
            Monitor.Exit(_gate);
        }
        return released;
    }

    private string CloseLocked(int slot)
    {
        var id = _slotStacks[slot]!;
        _slots[slot]!.Dispose();
        _slots[slot] = null;
        Volatile.Write(ref _slotStacks[slot], null);
        _drainUntil[slot] = 0;
        return id;
    }

    /// <summary>A slot no instance occupies, other than 0 when possible; -1 when all 256 are taken.</summary>
    internal int FreeSlot()
    {
        lock (_gate)
        {
            for (var i = 1; i < _slots.Length; i++)
            {
                var candidate = (_transmitSlot + i) % _slots.Length;
                if (_slots[candidate] is null && candidate != FallbackSlot)
                {
                    return candidate;
                }
            }
            return -1;
        }
    }

    /// <summary>The stack ids of every occupied slot (for release when the path goes away).</summary>
    internal List<string> BoundStacks()
    {
        lock (_gate)
        {
            return [.. _slotStacks.OfType<string>()];
        }
    }

    /// <summary>Path sequence numbers missing so far (from the Fabric header): loss on the path, whatever the stack.</summary>
    /// <remarks>Read without the gate (the three counters are written under it; a read between two writes is off by one at most).</remarks>
    public long SequenceGaps
    {
        get
        {
            var first = Volatile.Read(ref _firstSequence);
            return first < 0 ? 0 : (Volatile.Read(ref _highestSequence) - first + 1) - Volatile.Read(ref _sequenced);
        }
    }

    /// <summary>Stats of each bound stack instance by slot.</summary>
    /// <remarks>Empty when the path is busy for more than 100 ms (a stack stuck in a call must not stall status or metrics).</remarks>
    public IReadOnlyDictionary<int, (string Stack, StackStats Stats)> StackStats()
    {
        var result = new Dictionary<int, (string, StackStats)>();
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(100)))
        {
            return result;
        }
        try
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is { } stack)
                {
                    result[i] = (_slotStacks[i]!, stack.GetStats());
                }
            }
            return result;
        }
        finally
        {
            Monitor.Exit(_gate);
        }
    }

    /// <summary>Sends a VM frame of virtual network <paramref name="vni"/> through the transmit slot's stack.</summary>
    internal void Transmit(ReadOnlySpan<byte> frame, uint vni)
    {
        Exception? fault = null;
        int slot;
        string? stackId;
        lock (_gate)
        {
            slot = _transmitSlot;
            stackId = _slotStacks[slot];
            var stack = _slots[slot];
            if (stack is null)
            {
                Counters.Drop(DropReason.NoPath);
                return;
            }
            _output.Prepare((byte)slot, vni);
            _inCallSlot = slot;
            Volatile.Write(ref _inCallSince, Clock());
            try
            {
                stack.Transmit(frame, Clock(), _output);
            }
            catch (Exception e)
            {
                // A stack must count per-packet failures, not throw: this one is broken and will be quarantined.
                fault = e;
            }
            Volatile.Write(ref _inCallSince, 0);
        }
        if (fault is not null)
        {
            Counters.Drop(DropReason.StackFault);
            OnFault?.Invoke(this, slot, stackId!, true, fault);
        }
    }

    /// <summary>How long the current call into a stack has lasted, in nanoseconds (0 when none is running).</summary>
    internal long InCallFor(long now)
    {
        var since = Volatile.Read(ref _inCallSince);
        return since == 0 ? 0 : now - since;
    }

    /// <summary>The stack id in <paramref name="slot"/>, or null.</summary>
    internal string? StackIn(int slot)
    {
        lock (_gate)
        {
            return _slotStacks[slot];
        }
    }

    /// <summary>Retires a faulted instance at once (its slot then drops what arrives for it); returns its stack id.</summary>
    internal string? Retire(int slot)
    {
        lock (_gate)
        {
            return _slots[slot] is null ? null : CloseLocked(slot);
        }
    }

    /// <summary>Hands a datagram from this host to the stack in its slot.</summary>
    internal void Receive(ReadOnlySpan<byte> datagram)
    {
        if (!FabricHeader.TryCreate(datagram, out var header))
        {
            Counters.Drop(DropReason.UnknownPeer);
            return;
        }
        Counters.Received(datagram.Length);
        Exception? fault = null;
        string? faultStack = null;
        lock (_gate)
        {
            TrackSequence(header.PathSequence);
            var stack = _slots[header.Slot];
            if (stack is null)
            {
                Counters.Drop(DropReason.UnknownSlot);
                return;
            }
            _output.Prepare(header.Slot, header.VirtualNetworkId);
            _delivery.Vni = header.VirtualNetworkId;
            _inCallSlot = header.Slot;
            Volatile.Write(ref _inCallSince, Clock());
            try
            {
                stack.Receive(new StackDatagram(header.ToRepr(), header.StackFields, header.Payload), Clock(), _delivery, _output);
            }
            catch (Exception e)
            {
                fault = e;
                faultStack = _slotStacks[header.Slot];
            }
            Volatile.Write(ref _inCallSince, 0);
        }
        if (fault is not null)
        {
            Counters.Drop(DropReason.StackFault);
            OnFault?.Invoke(this, header.Slot, faultStack!, false, fault);
        }
    }

    private void TrackSequence(uint sequence)
    {
        if (_firstSequence < 0)
        {
            _firstSequence = _highestSequence = sequence;
            _sequenced = 1;
            return;
        }
        // Unwrap the 32-bit counter against the highest seen: a small negative step is reordering, not a wrap.
        var step = (int)(sequence - (uint)_highestSequence);
        var unwrapped = _highestSequence + step;
        if (unwrapped < _firstSequence)
        {
            return;
        }
        _sequenced++;
        _highestSequence = Math.Max(_highestSequence, unwrapped);
    }

    public void Dispose()
    {
        lock (_gate)
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                _slots[i]?.Dispose();
                _slots[i] = null;
                _slotStacks[i] = null;
            }
        }
    }

    /// <summary>
    /// Writes the Fabric header in front of what the stack wrote, straight into the calling thread's underlay outbox.
    /// Used under the path's gate.
    /// </summary>
    private sealed class PathOutput(RemotePath path, UdpUnderlay underlay) : IUnderlayOutput
    {
        private byte _slot;
        private uint _vni;
        private uint _sequence;
        private int _begun;

        public void Prepare(byte slot, uint vni)
        {
            _slot = slot;
            _vni = vni;
        }

        public Span<byte> Begin(int maxLength)
        {
            if (maxLength > underlay.MaxDatagram - FabricHeader.Length)
            {
                return Span<byte>.Empty;
            }
            _begun = 1;
            return underlay.NextBuffer()[FabricHeader.Length..];
        }

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length)
        {
            if (_begun == 0)
            {
                return;
            }
            _begun = 0;
            var now = path.Clock();
            // Path sequence counts every datagram on this path, across slots: loss and reordering measured for free.
            new FabricHeaderRepr(_slot, payloadType, _vni, _sequence++, (uint)(now / 1000), (byte)stackFieldLength).Write(underlay.NextBuffer());
            underlay.Commit(FabricHeader.Length + length, path.Destination);
            path.Counters.Sent(FabricHeader.Length + length);
        }
    }

    private sealed class PathDelivery(Action<uint, ReadOnlySpan<byte>> deliver) : IVmOutput
    {
        public uint Vni;

        public void Deliver(ReadOnlySpan<byte> frame) => deliver(Vni, frame);
    }

    private sealed class NullTelemetry : IStackTelemetry
    {
        public static NullTelemetry Instance { get; } = new();

        public void Event(string name, string detail)
        {
        }
    }
}
