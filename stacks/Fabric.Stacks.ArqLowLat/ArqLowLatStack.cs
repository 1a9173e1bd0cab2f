using System.Buffers.Binary;
using System.Globalization;
using Fabric.Wire;

namespace Fabric.Stacks.ArqLowLat;

/// <summary>
/// Selective-repeat ARQ tuned for latency, in the manner of KCP. Each frame leaves at once with a sequence number
/// (stack fields: kind 1, sequence 32 bits); the receiver answers every data packet with an acknowledgement (type
/// StackControl; fields: kind 2, the next sequence it expects 32 bits; payload: up to 16 sequences it holds beyond
/// that). The sender retransmits a packet when two packets sent after it were acknowledged (fast retransmit, no waiting
/// for a timeout), or when its RTO passes: RTO = SRTT + max(4·RTTVAR, SRTT/4) from acknowledged first transmissions (Karn), at least
/// <c>minRtoMs</c>, multiplied by 1.5 per retransmission — not doubled — up to <c>maxRtoMs</c>. The receiver delivers
/// in order, holding what arrives early within its window; duplicates are counted and acknowledged again. Buffers are
/// bounded: a frame that finds the send window full is dropped and counted (the VM's own transport recovers it), and a
/// packet retransmitted <c>maxRetransmissions</c> times is given up, so a dead peer never holds the path forever.
/// </summary>
public sealed class ArqLowLatStack : IStack
{
    public const int FieldLength = 5;
    private const byte KindData = 1;
    private const byte KindAck = 2;
    private const int MaxSacks = 16;

    private readonly StackCounters _counters = new();
    private readonly int _window;
    private readonly long _minRto;
    private readonly long _maxRto;
    private readonly int _maxRetransmissions;

    // Sender: packets in flight by sequence, oldest first.
    private readonly SortedDictionary<uint, Outstanding> _inFlight = new(SerialComparer.Instance);
    private uint _nextSequence;
    private double _srtt = -1;
    private double _rttvar;
    private long _nextTimer = long.MaxValue;

    // Receiver.
    private uint _expected;
    private readonly Dictionary<uint, (byte[] Frame, uint Vni)> _early = [];
    private readonly byte[] _ack = new byte[MaxSacks * 4];

    public ArqLowLatStack(IReadOnlyDictionary<string, string> configuration)
    {
        _window = (int)Setting(configuration, "window", 512, 16, 65536);
        _minRto = Setting(configuration, "minRtoMs", 10, 1, 10_000) * 1_000_000;
        _maxRto = Math.Max(_minRto, Setting(configuration, "maxRtoMs", 500, 1, 60_000) * 1_000_000);
        _maxRetransmissions = (int)Setting(configuration, "maxRetransmissions", 20, 1, 1000);
    }

    /// <summary>Packets sent again (fast or on timeout).</summary>
    public long Retransmissions { get; private set; }

    /// <summary>Of those, sent again because later packets were acknowledged first.</summary>
    public long FastRetransmissions { get; private set; }

    /// <summary>Packets given up after too many retransmissions.</summary>
    public long GivenUp { get; private set; }

    /// <summary>The current retransmission timeout for a first transmission, in nanoseconds.</summary>
    /// <remarks>SRTT plus the larger of 4·RTTVAR and SRTT/4: on a path whose RTT hardly varies the RTTVAR term vanishes, and
    /// a timeout equal to the RTT would fire just as the acknowledgement arrives.</remarks>
    public long Rto => _srtt < 0 ? Math.Max(_minRto, 200_000_000L) : Math.Clamp((long)(_srtt + Math.Max(4 * _rttvar, _srtt / 4)), _minRto, _maxRto);

    public long NextTimerNanoseconds => _nextTimer;

    private static long Setting(IReadOnlyDictionary<string, string> configuration, string key, long fallback, long min, long max) =>
        configuration.TryGetValue(key, out var text) && long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
            ? Math.Clamp(value, min, max) : fallback;

    public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
    {
        _counters.FramesIn++;
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        if (_inFlight.Count >= _window)
        {
            _counters.Drop(StackDropReason.BufferFull);
            return;
        }
        var packet = new Outstanding(_nextSequence++, frame.ToArray(), underlay.VirtualNetwork) { Rto = Rto };
        if (!Send(packet, nowNanoseconds, underlay))
        {
            return;
        }
        _inFlight[packet.Sequence] = packet;
        _nextTimer = Math.Min(_nextTimer, packet.Deadline);
    }

    private bool Send(Outstanding packet, long now, IUnderlayOutput underlay)
    {
        var buffer = underlay.Begin(FieldLength + packet.Frame.Length);
        if (buffer.Length < FieldLength + packet.Frame.Length)
        {
            _counters.Drop(buffer.IsEmpty ? StackDropReason.NoBuffer : StackDropReason.TooLarge);
            return false;
        }
        buffer[0] = KindData;
        BinaryPrimitives.WriteUInt32BigEndian(buffer[1..], packet.Sequence);
        packet.Frame.CopyTo(buffer[FieldLength..]);
        var vni = underlay.VirtualNetwork;
        underlay.VirtualNetwork = packet.Vni;
        underlay.Commit(FabricPayloadType.Ethernet, FieldLength, FieldLength + packet.Frame.Length);
        underlay.VirtualNetwork = vni;
        _counters.DatagramsOut++;
        packet.SentAt = now;
        packet.Deadline = now + packet.Rto;
        return true;
    }

    public void Receive(in StackDatagram datagram, long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        _counters.DatagramsIn++;
        var fields = datagram.StackFields;
        if (fields.Length != FieldLength)
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        var sequence = BinaryPrimitives.ReadUInt32BigEndian(fields[1..]);
        switch (datagram.Header.PayloadType, fields[0])
        {
            case (FabricPayloadType.Ethernet, KindData):
                ReceiveData(sequence, datagram.Payload, datagram.Header.VirtualNetworkId, vm, underlay);
                break;
            case (FabricPayloadType.StackControl, KindAck) when datagram.Payload.Length % 4 == 0 && datagram.Payload.Length <= MaxSacks * 4:
                ReceiveAck(sequence, datagram.Payload, nowNanoseconds, underlay);
                break;
            case (FabricPayloadType.Ethernet or FabricPayloadType.StackControl, _):
                _counters.Drop(StackDropReason.Malformed);
                break;
            default:
                _counters.Drop(StackDropReason.UnexpectedPayloadType);
                break;
        }
    }

    private void ReceiveData(uint sequence, ReadOnlySpan<byte> frame, uint vni, IVmOutput vm, IUnderlayOutput underlay)
    {
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        var ahead = (int)(sequence - _expected);
        if (ahead < 0 || _early.ContainsKey(sequence))
        {
            // Already delivered or held: the acknowledgement was lost, so say it again.
            _counters.Drop(StackDropReason.Duplicate);
        }
        else if (ahead >= _window)
        {
            _counters.Drop(StackDropReason.BufferFull);
            return;
        }
        else if (ahead == 0)
        {
            Deliver(frame, vni, vm);
            _expected++;
            while (_early.Remove(_expected, out var held))
            {
                Deliver(held.Frame, held.Vni, vm);
                _expected++;
            }
        }
        else
        {
            _early[sequence] = (frame.ToArray(), vni);
        }
        SendAck(underlay);
    }

    private void Deliver(ReadOnlySpan<byte> frame, uint vni, IVmOutput vm)
    {
        var previous = vm.VirtualNetwork;
        vm.VirtualNetwork = vni;
        vm.Deliver(frame);
        vm.VirtualNetwork = previous;
        _counters.FramesDelivered++;
    }

    private void SendAck(IUnderlayOutput underlay)
    {
        // The newest sequences held beyond the gap: what lets the sender repair the gap at once.
        var count = 0;
        foreach (var sequence in _early.Keys.OrderByDescending(s => s - _expected).Take(MaxSacks))
        {
            BinaryPrimitives.WriteUInt32BigEndian(_ack.AsSpan(count * 4), sequence);
            count++;
        }
        var buffer = underlay.Begin(FieldLength + count * 4);
        if (buffer.Length < FieldLength + count * 4)
        {
            _counters.Drop(StackDropReason.NoBuffer);
            return;
        }
        buffer[0] = KindAck;
        BinaryPrimitives.WriteUInt32BigEndian(buffer[1..], _expected);
        _ack.AsSpan(0, count * 4).CopyTo(buffer[FieldLength..]);
        underlay.Commit(FabricPayloadType.StackControl, FieldLength, FieldLength + count * 4);
        _counters.DatagramsOut++;
    }

    private void ReceiveAck(uint next, ReadOnlySpan<byte> sacks, long now, IUnderlayOutput underlay)
    {
        // Everything before `next` arrived.
        while (_inFlight.Count > 0)
        {
            var oldest = _inFlight.First();
            if ((int)(oldest.Key - next) >= 0)
            {
                break;
            }
            Acknowledged(oldest.Value, now);
            _inFlight.Remove(oldest.Key);
        }
        uint newestSacked = 0;
        var anySack = false;
        for (var i = 0; i < sacks.Length; i += 4)
        {
            var sequence = BinaryPrimitives.ReadUInt32BigEndian(sacks[i..]);
            if (_inFlight.Remove(sequence, out var packet))
            {
                Acknowledged(packet, now);
            }
            if (!anySack || (int)(sequence - newestSacked) > 0)
            {
                (newestSacked, anySack) = (sequence, true);
            }
        }
        if (!anySack)
        {
            return;
        }
        // Fast retransmit: a packet that two later packets overtook is lost, not late.
        foreach (var packet in _inFlight.Values.ToList())
        {
            if ((int)(newestSacked - packet.Sequence) < 2)
            {
                break;
            }
            if (++packet.Skipped >= 2 && packet.FastRetransmitted < packet.Transmissions)
            {
                packet.FastRetransmitted = packet.Transmissions + 1;
                FastRetransmissions++;
                Retransmit(packet, now, underlay);
            }
        }
    }

    private void Acknowledged(Outstanding packet, long now)
    {
        if (packet.Transmissions != 1)
        {
            return;
        }
        // RFC 6298 on first transmissions only (Karn): a retransmitted packet's ack cannot say which copy it answers.
        var rtt = now - packet.SentAt;
        if (_srtt < 0)
        {
            (_srtt, _rttvar) = (rtt, rtt / 2.0);
        }
        else
        {
            _rttvar = 0.75 * _rttvar + 0.25 * Math.Abs(_srtt - rtt);
            _srtt = 0.875 * _srtt + 0.125 * rtt;
        }
    }

    private void Retransmit(Outstanding packet, long now, IUnderlayOutput underlay)
    {
        if (packet.Transmissions > _maxRetransmissions)
        {
            _inFlight.Remove(packet.Sequence);
            GivenUp++;
            return;
        }
        packet.Transmissions++;
        packet.Skipped = 0;
        // Backed off by half, not doubled: under random loss a lost retransmission is no sign of congestion.
        packet.Rto = Math.Min((long)(packet.Rto * 1.5), _maxRto);
        if (Send(packet, now, underlay))
        {
            Retransmissions++;
        }
        _nextTimer = Math.Min(_nextTimer, packet.Deadline);
    }

    public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        var next = long.MaxValue;
        foreach (var packet in _inFlight.Values.ToList())
        {
            if (packet.Deadline <= nowNanoseconds)
            {
                Retransmit(packet, nowNanoseconds, underlay);
            }
            if (_inFlight.ContainsKey(packet.Sequence))
            {
                next = Math.Min(next, packet.Deadline);
            }
        }
        _nextTimer = next;
    }

    public StackStats GetStats() => _counters.Snapshot();

    public StackState ExportState() => StackState.Empty("arq-lowlat");

    public void ApplyPolicy(StackPolicy policy)
    {
    }

    public void Dispose()
    {
        _inFlight.Clear();
        _early.Clear();
    }

    private sealed class Outstanding(uint sequence, byte[] frame, uint vni)
    {
        public uint Sequence { get; } = sequence;
        public byte[] Frame { get; } = frame;
        public uint Vni { get; } = vni;
        public long SentAt;
        public long Deadline;
        public long Rto;
        public int Transmissions = 1;
        public int Skipped;
        public int FastRetransmitted;
    }

    /// <summary>Orders 32-bit sequence numbers that may wrap (RFC 1982 serial arithmetic, within half the space).</summary>
    private sealed class SerialComparer : IComparer<uint>
    {
        public static SerialComparer Instance { get; } = new();

        public int Compare(uint x, uint y) => (int)(x - y) switch { < 0 => -1, > 0 => 1, _ => 0 };
    }
}
