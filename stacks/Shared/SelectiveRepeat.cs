using System.Buffers.Binary;
using System.Globalization;
using Fabric.Wire;

namespace Fabric.Stacks;

/// <summary>How a <see cref="SelectiveRepeat"/> instance trades latency against overhead and throughput.</summary>
/// <param name="Id">The stack id.</param>
/// <param name="Window">Most packets in flight, held early at the receiver, or queued to send.</param>
/// <param name="AckEvery">Acknowledge every Nth in-order packet (out-of-order ones at once).</param>
/// <param name="AckDelayNanoseconds">Longest an acknowledgement waits for its Nth packet.</param>
/// <param name="Pacing">Pace first transmissions at twice the delivery rate acknowledged, in a window of 1.25 times the bandwidth-delay product on the minimum RTT (plus 2 ms of the rate).</param>
/// <param name="MinRtoNanoseconds">Smallest retransmission timeout.</param>
/// <param name="MaxRtoNanoseconds">Largest, after the ×1.5 backoff.</param>
/// <param name="MaxRetransmissions">A packet sent more often than this is given up.</param>
internal sealed record SelectiveRepeatOptions(string Id, int Window, int AckEvery, long AckDelayNanoseconds, bool Pacing, long MinRtoNanoseconds, long MaxRtoNanoseconds,
    int MaxRetransmissions)
{
    public static long Setting(IReadOnlyDictionary<string, string> configuration, string key, long fallback, long min, long max) =>
        configuration.TryGetValue(key, out var text) && long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
            ? Math.Clamp(value, min, max) : fallback;
}

/// <summary>
/// Selective-repeat ARQ under a VM's traffic, shared by arq-lowlat and arq-bulk (compiled into each plug-in). Each frame
/// gets a sequence number (stack fields: kind 1, sequence 32 bits). The receiver acknowledges (type StackControl;
/// fields: kind 2, the next sequence it expects; payload: up to 16 ranges it holds beyond that, newest first, each
/// start 32 bits and count 16 bits) every <c>AckEvery</c>th packet or after <c>AckDelay</c>, and at once when a packet
/// arrives out of order. The sender retransmits a packet as soon as packets two or more sequences later were
/// acknowledged (fast retransmit), or when its RTO passes: SRTT + max(4·RTTVAR, SRTT/4) from first transmissions
/// (Karn), at least the minimum, ×1.5 per retransmission of the packet — not doubled — up to the cap, and doubled by a
/// round of timeouts while acknowledgements still come until the next RTT sample (RFC 6298; past the cap, up to a
/// minute), counted from its last send; for
/// a packet no later one has overtaken, from the last time the acknowledgements moved on if that is later (as TCP
/// restarts its timer when new data is acknowledged: a queue that grows faster than SRTT follows must not make every
/// packet look lost, while one that later packets overtook is lost, not queued). When no acknowledgement came since the
/// last timeout, only the oldest packet is sent again, on its own timeout (a probe of a path that may be down), and the
/// packets behind it are given up with it. The receiver delivers in order,
/// holding what arrives early within the window; duplicates are counted and acknowledged again. Buffers are bounded: a
/// frame that finds the window full is dropped and counted (the VM's own transport recovers it), and a packet
/// retransmitted too often is given up, so a dead peer never holds the path forever. The receiver is told so (a skip:
/// type StackControl; fields: kind 3, the oldest sequence the sender still has, or its next when none), once per round
/// that gave packets up and again whenever an acknowledgement still asks for one: it delivers what it held before that
/// sequence and waits no more for the rest, or every later frame of the path would wait behind a packet that never
/// comes. It takes a skip no further than one past the newest data that arrived and one window beyond what it expects,
/// and acknowledges data it refuses for being too far ahead, so a lost skip is said again; the sender refuses an
/// acknowledgement of what it never sent. With pacing, first transmissions leave at twice the delivery rate the
/// acknowledgements show (never slower than twice 64 packets per SRTT), within 1.25 times the bandwidth-delay product on
/// the minimum RTT plus 2 ms of the rate, and every 10 s without a sample as low as the minimum (or once the lowest
/// sample of a second, or of four SRTTs, is over twice the minimum plus 4 ms), a drain of 200 ms measures the minimum
/// again. The delivery rate rises at once; it falls by a tenth of the difference a sample while the VM sends less than
/// the window and the pacer allow, and by half while frames wait for them (outside a drain).
/// </summary>
internal sealed class SelectiveRepeat(SelectiveRepeatOptions options) : IStack
{
    public const int FieldLength = 5;
    private const byte KindData = 1;
    private const byte KindAck = 2;
    private const byte KindSkip = 3;
    private const int MaxRanges = 16;
    private const int RangeLength = 6;
    private const long PacingSlackNanoseconds = 2_000_000;

    private readonly StackCounters _counters = new();

    // Sender: packets in flight by sequence, oldest first; frames waiting for the window or the pacer.
    private readonly SortedDictionary<uint, Outstanding> _inFlight = new(SerialComparer.Instance);
    private readonly Queue<Outstanding> _queued = new();
    private readonly List<uint> _gaps = []; // scratch for ReceiveAck
    private readonly List<Outstanding> _lost = []; // scratch for ReceiveAck
    private uint _nextSequence;
    private double _srtt = -1;
    private double _rttvar;
    private double _minRtt = -1; // the lowest RTT sample since _minRttAt (first transmissions only)
    private long _minRttAt;
    private long _drainUntil = long.MinValue; // until then, the window is cut: the queue empties, the floor is measured
    private double _drainRtt; // the minimum RTT that stood when the drain began (the drain's window is counted on it)
    private long _retransmitTimer = long.MaxValue;
    private long _lastAdvance = long.MinValue / 2;
    private long _lastAckAt = long.MinValue / 2;
    private long _lastTimeout = long.MinValue / 2;
    private uint _highestAcked;
    private bool _anyAcked;
    private long _nextSendAt;
    private double _deliveryRate; // bytes per nanosecond: rises to a higher sample at once, falls slowly (MeasureDelivery)
    private long _rateWindowStart = -1;
    private long _rateWindowBytes;
    private bool _rateWindowHeld = true; // frames waited for the window or the pacer every time the sender stopped in this rate window
    private double _averageSize = 1000;
    private bool _skipDue; // packets were given up since the receiver was last told

    // Receiver.
    private uint _expected;
    private uint _highestSeen; // the newest data sequence that arrived (a skip never passes it)
    private bool _seenAny;
    private readonly Dictionary<uint, (byte[] Frame, uint Vni)> _early = [];
    // What is held, as runs of consecutive sequences (start, end exclusive), oldest first: an acknowledgement's ranges
    // are the newest runs, read without walking every frame held (a SortedSet walked newest first was O(held) for each
    // acknowledgement, and every frame that arrives past a gap is acknowledged at once).
    private readonly List<(uint Start, uint End)> _earlyRuns = [];
    private int _unacknowledged;
    private long _ackDue = long.MaxValue;
    private readonly byte[] _ranges = new byte[MaxRanges * RangeLength];

    /// <summary>Packets sent again (fast or on timeout).</summary>
    public long Retransmissions { get; private set; }

    /// <summary>Packets given up after too many retransmissions.</summary>
    public long GivenUp { get; private set; }

    /// <summary>The current retransmission timeout for a first transmission, in nanoseconds.</summary>
    /// <remarks>SRTT plus the larger of 4·RTTVAR and SRTT/4: on a path whose RTT hardly varies the RTTVAR term vanishes, and
    /// a timeout equal to the RTT would fire just as the acknowledgement arrives. Times <see cref="_backoff"/>.</remarks>
    public long Rto => (long)Math.Min(MaxBackedOffRtoNanoseconds, _backoff * BaseRto);

    /// <summary>The timeout from the RTT estimate alone (200 ms before the first sample), within the configured bounds.</summary>
    private long BaseRto => _srtt < 0 ? Math.Max(options.MinRtoNanoseconds, 200_000_000L)
        : Math.Clamp((long)(_srtt + Math.Max(4 * _rttvar, _srtt / 4)), options.MinRtoNanoseconds, options.MaxRtoNanoseconds);

    /// <summary>
    /// What the timeout is multiplied by: doubled by a round of timeouts while acknowledgements still come (at most once
    /// per timeout), back to 1 by the next RTT sample (RFC 6298 5.5 and 5.7). Without it, a path whose RTT jumped above
    /// the timeout never measured again: every packet went again before its acknowledgement came, an acknowledgement of a
    /// packet sent more than once is no sample (Karn), and SRTT stood at the old path's. Seen when a 150 Mbit/s, 12-ms
    /// path turned into a 5.65 Mbit/s one of 176 ms with a deep queue (Pantheon's calibrated Brazil-Colombia emulator):
    /// the timeout stayed 30 ms, the copies filled the queue to a second's RTT, and arq-bulk sent five datagrams for each
    /// it delivered, 1 Mbit/s for as long as the phase lasted. The backed-off timeout may pass the configured maximum
    /// (up to a minute), or a path slower than that maximum would never measure. While nothing answers at all (an
    /// outage), only the probe's own ×1.5 applies, so a path that comes back is found as soon as before.
    /// </summary>
    private double _backoff = 1;

    private long _lastBackoffAt = long.MinValue / 2;

    private const double MaxBackoff = 64;

    private const long MaxBackedOffRtoNanoseconds = 60_000_000_000;

    /// <summary>A packet's timeout after its <paramref name="transmissions"/>th send: ×1.5 per retransmission up to the
    /// configured maximum, and never below the backed-off <see cref="Rto"/>.</summary>
    private long RetryRto(int transmissions) =>
        Math.Max(Rto, Math.Min((long)(BaseRto * Math.Pow(1.5, transmissions - 1)), options.MaxRtoNanoseconds));

    /// <remarks>Queued frames need a timer only while the pacer holds them; frames held by a full window leave when
    /// acknowledgements open it.</remarks>
    public long NextTimerNanoseconds => Math.Min(Math.Min(_retransmitTimer, _ackDue),
        _queued.Count > 0 && options.Pacing && _deliveryRate > 0 && _inFlight.Count < SendWindow ? _nextSendAt : long.MaxValue);

    /// <summary>
    /// Packets the sender keeps in flight now: the window, or with pacing the bandwidth-delay product counted on the path's
    /// minimum RTT, times <see cref="WindowGain"/>, plus <see cref="AckAggregationNanoseconds"/> of the delivery rate.
    /// Counted on the smoothed RTT (before 1.1.0), the queue the window built lengthened the RTT and so the window, until the
    /// bottleneck's queue overflowed for good: on a clean 300 Mbit/s link arq-bulk lost 30 % of what it sent and its RTT
    /// stood at ten times the floor. On the minimum, the queue stays under a quarter of the product plus the batching
    /// allowance. (A floor of the delivery rate times SRTT was tried: the queue lengthened SRTT and the window with it, the
    /// same loop.) While draining (see <see cref="MinRttLifetimeNanoseconds"/>) half the product is allowed, so the queue
    /// empties.
    /// </summary>
    private int SendWindow => !options.Pacing || _deliveryRate <= 0 || _srtt < 0
        ? Math.Min(options.Window, 256)
        : _drainUntil > _lastClock
            ? (int)Math.Clamp(0.5 * _deliveryRate * _drainRtt / _averageSize, 4, options.Window)
            : (int)Math.Clamp(_deliveryRate * (WindowGain * BaseRtt + AckAggregationNanoseconds) / _averageSize, MinimumWindow, options.Window);

    /// <summary>
    /// The window over the bandwidth-delay product on the minimum RTT: what keeps the bottleneck busy while the queue
    /// before it stays under a quarter of the product. With twice the product (the pacer sends at twice the rate, so the
    /// window is what holds the sender back), a queue of one product stood before the bottleneck, and a link whose buffer
    /// holds one product (the stacks benchmark's at 30 ms, 200 Mbit/s) overflowed it: 34 % of the datagrams sent again,
    /// 101 Mbit/s where std-ipv4 got 179.
    /// </summary>
    private const double WindowGain = 1.25;

    /// <summary>
    /// Time's worth of the delivery rate added to the window for acknowledgements that come in batches (the hosts receive
    /// in batches, the receiver acknowledges every second packet or after 1 ms): on a 2 ms path a quarter of the product
    /// would leave the bottleneck idle between batches.
    /// </summary>
    private const double AckAggregationNanoseconds = 2_000_000;

    /// <summary>The path's minimum RTT as measured (the smoothed RTT before the first sample).</summary>
    private double BaseRtt => _minRtt > 0 ? _minRtt : _srtt;

    /// <summary>
    /// How long a minimum RTT stands without a sample as low. When it runs out, the window is cut to half the bandwidth-delay
    /// product for <see cref="DrainNanoseconds"/> (or an SRTT, if longer): the queue the full window keeps drains, and the
    /// samples taken then are the path's floor again, a lower one or, after a route change, a higher one. Without the
    /// drain every sample would carry the standing queue, and each renewal would raise the floor the window is counted on
    /// by that queue. About 2 % of the time, as BBR spends probing its RTT.
    /// </summary>
    private const long MinRttLifetimeNanoseconds = 10_000_000_000;

    private const long DrainNanoseconds = 200_000_000;

    /// <summary>The time of the latest call that passed one in (what <see cref="SendWindow"/> compares the drain with).</summary>
    private long _lastClock;

    /// <summary>The fewest packets the pacer lets out per SRTT, and the smallest window: what a guest's TCP sends in its first
    /// round trips leaves at once, whatever rate the path showed before there was traffic to measure.</summary>
    private const int MinimumWindow = 64;

    /// <summary>
    /// Bytes per nanosecond first transmissions are paced at: twice the delivery rate, and never below twice the minimum
    /// window per SRTT. A rate measured while the VM sent little (a handshake, an idle path) says nothing of the path; pacing a
    /// guest's first window at twice that held it for a second and more, its TCP timed out and left slow start with a
    /// threshold of a few dozen packets (seen at 120 ms RTT: 0.1 Mbit/s paced, 3 Mbit/s for the whole transfer).
    /// </summary>
    private double PacingRate => 2 * Math.Max(_deliveryRate, _srtt > 0 ? MinimumWindow * _averageSize / _srtt : 0);

    public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
    {
        _lastClock = nowNanoseconds;
        _counters.FramesIn++;
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        if (_inFlight.Count + _queued.Count >= options.Window)
        {
            _counters.Drop(StackDropReason.BufferFull);
            return;
        }
        _averageSize += (frame.Length + FieldLength - _averageSize) / 64;
        _queued.Enqueue(new Outstanding(0, frame.ToArray(), underlay.VirtualNetwork));
        Pump(nowNanoseconds, underlay);
    }

    /// <summary>Sends queued frames the window and the pacer allow.</summary>
    private void Pump(long now, IUnderlayOutput underlay)
    {
        while (_queued.Count > 0 && _inFlight.Count < SendWindow && (!options.Pacing || _deliveryRate <= 0 || now >= _nextSendAt))
        {
            var packet = _queued.Dequeue();
            packet.Sequence = _nextSequence;
            packet.Rto = Rto;
            if (!Send(packet, now, underlay))
            {
                continue;
            }
            _nextSequence++;
            _inFlight[packet.Sequence] = packet;
            _retransmitTimer = Math.Min(_retransmitTimer, packet.Deadline);
            if (options.Pacing && _deliveryRate > 0)
            {
                // The host runs a timer when it is due, within about a millisecond: packets due in the last 2 ms may
                // leave together, or the pace would be one packet per wake-up.
                _nextSendAt = Math.Max(now - PacingSlackNanoseconds, _nextSendAt) + (long)((packet.Frame.Length + FieldLength) / PacingRate);
            }
        }
        // A drain holds frames on purpose: what it lets through says nothing of the path.
        _rateWindowHeld &= _queued.Count > 0 && now >= _drainUntil;
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
        _lastClock = nowNanoseconds;
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
                ReceiveData(sequence, datagram.Payload, datagram.Header.VirtualNetworkId, nowNanoseconds, vm, underlay);
                break;
            case (FabricPayloadType.StackControl, KindAck) when datagram.Payload.Length % RangeLength == 0 && datagram.Payload.Length <= MaxRanges * RangeLength:
                ReceiveAck(sequence, datagram.Payload, nowNanoseconds, underlay);
                break;
            case (FabricPayloadType.StackControl, KindSkip) when datagram.Payload.IsEmpty:
                ReceiveSkip(sequence, vm, underlay);
                break;
            case (FabricPayloadType.Ethernet or FabricPayloadType.StackControl, _):
                _counters.Drop(StackDropReason.Malformed);
                break;
            default:
                _counters.Drop(StackDropReason.UnexpectedPayloadType);
                break;
        }
    }

    private void ReceiveData(uint sequence, ReadOnlySpan<byte> frame, uint vni, long now, IVmOutput vm, IUnderlayOutput underlay)
    {
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        var ahead = (int)(sequence - _expected);
        var immediately = false;
        if (ahead >= 0 && (!_seenAny || (int)(sequence - _highestSeen) > 0))
        {
            (_highestSeen, _seenAny) = (sequence, true);
        }
        if (ahead < 0 || _early.ContainsKey(sequence))
        {
            // Already delivered or held: the acknowledgement was lost, so say it again now.
            _counters.Drop(StackDropReason.Duplicate);
            immediately = true;
        }
        else if (ahead >= options.Window)
        {
            // Say where this end stands: a sender that gave up what this end waits for (and whose skip was lost) hears
            // it and says so again, where silence would leave both waiting for ever.
            _counters.Drop(StackDropReason.BufferFull);
            SendAck(underlay);
            return;
        }
        else if (ahead == 0)
        {
            Deliver(frame, vni, vm);
            _expected++;
            // A gap just filled: the sender should hear at once.
            immediately = _early.Count > 0;
            DeliverHeldInOrder(vm);
        }
        else
        {
            _early[sequence] = (frame.ToArray(), vni);
            AddEarly(sequence);
            immediately = true;
        }
        if (immediately || ++_unacknowledged >= options.AckEvery)
        {
            SendAck(underlay);
        }
        else if (_ackDue == long.MaxValue)
        {
            _ackDue = now + options.AckDelayNanoseconds;
        }
    }

    /// <summary>Delivers the held frames that follow what was delivered, up to the next gap.</summary>
    private void DeliverHeldInOrder(IVmOutput vm)
    {
        while (_early.Remove(_expected, out var held))
        {
            Deliver(held.Frame, held.Vni, vm);
            _expected++;
        }
        DropEarlyRunsBefore(_expected);
    }

    /// <summary>Records a held sequence (not held before, after what is expected) in <see cref="_earlyRuns"/>.</summary>
    private void AddEarly(uint sequence)
    {
        // Most arrivals past a gap extend the newest run.
        var last = _earlyRuns.Count - 1;
        if (last >= 0 && _earlyRuns[last].End == sequence)
        {
            _earlyRuns[last] = (_earlyRuns[last].Start, sequence + 1);
            return;
        }
        // The first run that starts after it.
        var (low, high) = (0, _earlyRuns.Count);
        while (low < high)
        {
            var middle = (low + high) / 2;
            (low, high) = (int)(_earlyRuns[middle].Start - sequence) > 0 ? (low, middle) : (middle + 1, high);
        }
        var joinsBefore = low > 0 && _earlyRuns[low - 1].End == sequence;
        var joinsAfter = low < _earlyRuns.Count && _earlyRuns[low].Start == sequence + 1;
        if (joinsBefore && joinsAfter)
        {
            _earlyRuns[low - 1] = (_earlyRuns[low - 1].Start, _earlyRuns[low].End);
            _earlyRuns.RemoveAt(low);
        }
        else if (joinsBefore)
        {
            _earlyRuns[low - 1] = (_earlyRuns[low - 1].Start, sequence + 1);
        }
        else if (joinsAfter)
        {
            _earlyRuns[low] = (sequence, _earlyRuns[low].End);
        }
        else
        {
            _earlyRuns.Insert(low, (sequence, sequence + 1));
        }
    }

    /// <summary>Forgets the held runs, or their parts, before <paramref name="sequence"/> (delivered or passed over).</summary>
    private void DropEarlyRunsBefore(uint sequence)
    {
        var gone = 0;
        while (gone < _earlyRuns.Count && (int)(_earlyRuns[gone].End - sequence) <= 0)
        {
            gone++;
        }
        _earlyRuns.RemoveRange(0, gone);
        if (_earlyRuns.Count > 0 && (int)(_earlyRuns[0].Start - sequence) < 0)
        {
            _earlyRuns[0] = (sequence, _earlyRuns[0].End);
        }
    }

    /// <summary>
    /// The sender gave up everything before <paramref name="oldest"/>: what is held before it is delivered in order, the
    /// gaps are passed over (the VM's own transport recovers them), and the receiver expects <paramref name="oldest"/>.
    /// A skip behind what was delivered is stale. The receiver moves no further than one past the newest data that
    /// arrived and one window beyond what it expects: the sender's packets beyond that were refused here (too far
    /// ahead) and are still in its flight, or were given up and will be skipped again; a forged skip cannot carry the
    /// receiver past what the sender has sent.
    /// </summary>
    private void ReceiveSkip(uint oldest, IVmOutput vm, IUnderlayOutput underlay)
    {
        var limit = !_seenAny ? _expected : (int)(_highestSeen + 1 - _expected) < options.Window ? _highestSeen + 1 : _expected + (uint)options.Window;
        if ((int)(oldest - limit) > 0)
        {
            oldest = limit;
        }
        if ((int)(oldest - _expected) <= 0)
        {
            // Stale, or nothing arrived beyond what this end waits for: not answered (an answer would only draw the same
            // skip again); the next data that arrives draws an acknowledgement and a skip that can be taken.
            return;
        }
        foreach (var (start, end) in _earlyRuns)
        {
            if ((int)(start - oldest) >= 0)
            {
                break;
            }
            for (var sequence = start; sequence != end && (int)(sequence - oldest) < 0; sequence++)
            {
                _early.Remove(sequence, out var held);
                Deliver(held.Frame, held.Vni, vm);
            }
        }
        DropEarlyRunsBefore(oldest);
        _expected = oldest;
        DeliverHeldInOrder(vm);
        SendAck(underlay);
    }

    /// <summary>Tells the receiver the oldest sequence this end still has (everything before it is acknowledged or given up).</summary>
    private void SendSkip(IUnderlayOutput underlay)
    {
        var buffer = underlay.Begin(FieldLength);
        if (buffer.Length < FieldLength)
        {
            _counters.Drop(StackDropReason.NoBuffer);
            return;
        }
        buffer[0] = KindSkip;
        BinaryPrimitives.WriteUInt32BigEndian(buffer[1..], Oldest);
        underlay.Commit(FabricPayloadType.StackControl, FieldLength, FieldLength);
        _counters.DatagramsOut++;
    }

    /// <summary>The oldest sequence this sender still has in flight (the next it will send when none).</summary>
    private uint Oldest => _inFlight.Count > 0 ? _inFlight.First().Key : _nextSequence;

    private void Deliver(ReadOnlySpan<byte> frame, uint vni, IVmOutput vm)
    {
        vm.Deliver(frame, vni);
        _counters.FramesDelivered++;
    }

    private void SendAck(IUnderlayOutput underlay)
    {
        (_unacknowledged, _ackDue) = (0, long.MaxValue);
        // The newest ranges held beyond the gap: what lets the sender repair the gaps at once (a run longer than a range's
        // count can say goes as several, newest first).
        var count = 0;
        for (var run = _earlyRuns.Count - 1; run >= 0 && count < MaxRanges; run--)
        {
            var (start, top) = _earlyRuns[run];
            while (top != start && count < MaxRanges)
            {
                var length = Math.Min(top - start, (uint)ushort.MaxValue);
                AddRange(ref count, top - length, length);
                top -= length;
            }
        }
        var buffer = underlay.Begin(FieldLength + count * RangeLength);
        if (buffer.Length < FieldLength + count * RangeLength)
        {
            _counters.Drop(StackDropReason.NoBuffer);
            return;
        }
        buffer[0] = KindAck;
        BinaryPrimitives.WriteUInt32BigEndian(buffer[1..], _expected);
        _ranges.AsSpan(0, count * RangeLength).CopyTo(buffer[FieldLength..]);
        underlay.Commit(FabricPayloadType.StackControl, FieldLength, FieldLength + count * RangeLength);
        _counters.DatagramsOut++;
    }

    private bool AddRange(ref int count, uint start, uint length)
    {
        if (count == MaxRanges)
        {
            return false;
        }
        BinaryPrimitives.WriteUInt32BigEndian(_ranges.AsSpan(count * RangeLength), start);
        BinaryPrimitives.WriteUInt16BigEndian(_ranges.AsSpan(count * RangeLength + 4), (ushort)length);
        count++;
        return true;
    }

    private void ReceiveAck(uint next, ReadOnlySpan<byte> ranges, long now, IUnderlayOutput underlay)
    {
        if ((int)(next - _nextSequence) > 0)
        {
            // Acknowledges what this end never sent: not from the receiver (or it was carried past by a forged skip), and
            // taken, it would discard the next packets as delivered.
            _counters.Drop(StackDropReason.OutOfWindow);
            return;
        }
        for (var i = 0; i < ranges.Length; i += RangeLength)
        {
            // The receiver says what it holds past `next`, all of which this end sent. A range elsewhere is forged: one
            // beyond what was sent would have every packet in flight sent again at once (two later packets "overtook"
            // each), a window's worth of copies for one small datagram.
            var start = BinaryPrimitives.ReadUInt32BigEndian(ranges[i..]);
            var length = BinaryPrimitives.ReadUInt16BigEndian(ranges[(i + 4)..]);
            if ((int)(start - next) <= 0 || (int)(start + length - _nextSequence) > 0)
            {
                _counters.Drop(StackDropReason.OutOfWindow);
                return;
            }
        }
        // The first answer after a timeout: the path is back. What waited behind the probe goes again now, not a timeout
        // after this acknowledgement.
        var endsSilence = _lastTimeout > _lastAckAt;
        _lastAckAt = now;
        var highestBefore = (_highestAcked, _anyAcked);
        long acked = 0;
        // Everything before `next` arrived.
        while (_inFlight.Count > 0)
        {
            var oldest = _inFlight.First();
            if ((int)(oldest.Key - next) >= 0)
            {
                break;
            }
            acked += Acknowledged(oldest.Value, now);
            _inFlight.Remove(oldest.Key);
            _lastAdvance = endsSilence ? _lastAdvance : now;
            Overtook(oldest.Key);
        }
        uint newest = 0;
        var anyRange = false;
        // What is still in flight at or below the highest sequence acknowledged is the gaps (what was acknowledged is
        // gone): a range can newly cover only those and what lies above that sequence and below the next to send.
        // Walking every sequence of every range (the receiver says its newest ranges again in every acknowledgement, up
        // to 65,535 sequences each) cost the agent a core at a few hundred losses a second; a range forged to lie far
        // ahead or behind costs nothing now.
        var (highest, anyBefore) = (_highestAcked, _anyAcked);
        var inFlightFrom = Oldest;
        _gaps.Clear();
        if (anyBefore && ranges.Length > 0)
        {
            foreach (var sequence in _inFlight.Keys)
            {
                if ((int)(sequence - highest) > 0)
                {
                    break;
                }
                _gaps.Add(sequence);
            }
        }
        for (var i = 0; i < ranges.Length; i += RangeLength)
        {
            var start = BinaryPrimitives.ReadUInt32BigEndian(ranges[i..]);
            var length = BinaryPrimitives.ReadUInt16BigEndian(ranges[(i + 4)..]);
            foreach (var gap in _gaps)
            {
                if ((uint)(gap - start) < length && _inFlight.Remove(gap, out var packet))
                {
                    acked += Acknowledged(packet, now);
                    Overtook(gap);
                }
            }
            // From above the highest acknowledged (and what is in flight) to the range's end, which lies within what was
            // sent (checked above).
            var from = anyBefore && (int)(highest + 1 - start) > 0 ? highest + 1 : start;
            from = (int)(inFlightFrom - from) > 0 ? inFlightFrom : from;
            var offset = from - start;
            var count = offset < length ? length - offset : 0u;
            for (var s = from; s != from + count; s++)
            {
                if (_inFlight.Remove(s, out var packet))
                {
                    acked += Acknowledged(packet, now);
                    Overtook(s);
                }
            }
            var last = start + length - 1;
            if (length > 0 && (!anyRange || (int)(last - newest) > 0))
            {
                (newest, anyRange) = (last, true);
            }
        }
        MeasureDelivery(acked, now);
        if (_inFlight.Count > 0 && (endsSilence || highestBefore != (_highestAcked, _anyAcked)))
        {
            // Packets now overtaken time out from their own sends again, and after a silence from before it.
            _retransmitTimer = Math.Min(_retransmitTimer, Math.Max(now, endsSilence ? now : _inFlight.First().Value.Deadline));
        }
        if (anyRange)
        {
            // Fast retransmit: a packet that two or more later packets overtook is lost, not late. (The gaps come first in
            // flight, so the walk ends after them; a copy of everything in flight for each acknowledgement was a hot spot.)
            _lost.Clear();
            foreach (var packet in _inFlight.Values)
            {
                if ((int)(newest - packet.Sequence) < 2)
                {
                    break;
                }
                _lost.Add(packet);
            }
            foreach (var packet in _lost)
            {
                if (packet.FastRetransmitted < packet.Transmissions)
                {
                    packet.FastRetransmitted = packet.Transmissions + 1;
                    Retransmit(packet, now, underlay);
                }
            }
        }
        if (_skipDue || (int)(Oldest - next) > 0)
        {
            // Packets were just given up, or the receiver still waits for one given up earlier (the skip was lost).
            _skipDue = false;
            SendSkip(underlay);
        }
        Pump(now, underlay);
    }

    /// <summary>
    /// The shortest stretch of acknowledgements a delivery-rate sample spans. Over one SRTT of a 2 ms path, a batch of
    /// acknowledgements the hosts' receive batching let through together read as 270–360 Mbit/s on a 200 Mbit/s link, and
    /// the window followed the overestimate.
    /// </summary>
    private const long MinRateWindowNanoseconds = 20_000_000;

    /// <summary>Delivery rate: acknowledged bytes over at least one SRTT (and <see cref="MinRateWindowNanoseconds"/>), the highest of recent windows (pacing and the window follow it).</summary>
    private void MeasureDelivery(long acked, long now)
    {
        if (!options.Pacing || acked == 0)
        {
            return;
        }
        if (_rateWindowStart < 0)
        {
            (_rateWindowStart, _rateWindowBytes) = (now, 0);
        }
        _rateWindowBytes += acked;
        var elapsed = now - _rateWindowStart;
        if (_srtt > 0 && elapsed >= Math.Max(_srtt, MinRateWindowNanoseconds))
        {
            var rate = (double)_rateWindowBytes / elapsed;
            // Rise at once. Fall by a tenth of the difference while the VM sent less than the window and the pacer allowed
            // (a quiet VM must not shrink the window the next burst needs), by half while frames waited for them: then the
            // rate is the path's. With the slow fall only, a path that turned from 150 to 5.65 Mbit/s was paced and windowed
            // for twice its rate and more for 8 s: the queue that made lifted the minimum RTT, and so the window, again.
            _deliveryRate = rate > _deliveryRate ? rate : _rateWindowHeld ? 0.5 * (_deliveryRate + rate) : 0.9 * _deliveryRate + 0.1 * rate;
            (_rateWindowStart, _rateWindowBytes, _rateWindowHeld) = (now, 0, true);
        }
    }

    private long Acknowledged(Outstanding packet, long now)
    {
        if (packet.Transmissions == 1)
        {
            // RFC 6298 on first transmissions only (Karn): a retransmitted packet's ack cannot say which copy it answers.
            var rtt = now - packet.SentAt;
            if (_backoff > 1)
            {
                _backoff = 1;
                ForgetBackoff();
            }
            if (_srtt < 0)
            {
                (_srtt, _rttvar) = (rtt, rtt / 2.0);
            }
            else
            {
                _rttvar = 0.75 * _rttvar + 0.25 * Math.Abs(_srtt - rtt);
                _srtt = 0.875 * _srtt + 0.125 * rtt;
            }
            TakeMinRtt(rtt, now);
        }
        return packet.Frame.Length + FieldLength;
    }

    /// <summary>
    /// Keeps the lowest RTT sample. Once it has stood <see cref="MinRttLifetimeNanoseconds"/> without one as low, or a stretch
    /// of samples says the floor rose (<see cref="FloorPeriodNanoseconds"/>), drains the queue and takes the lowest sample
    /// from the drain on as the floor (higher than before if the path's own delay rose).
    /// </summary>
    private void TakeMinRtt(long rtt, long now)
    {
        if (_periodLowest == double.MaxValue)
        {
            _periodStart = now;
        }
        _periodLowest = Math.Min(_periodLowest, rtt);
        if (_minRtt < 0 || rtt <= _minRtt)
        {
            (_minRtt, _minRttAt) = (rtt, now);
            return;
        }
        if (!options.Pacing || now < _drainUntil)
        {
            return;
        }
        var floorMoved = false;
        if (now - _periodStart >= Math.Max(FloorPeriodNanoseconds, 4 * _srtt))
        {
            floorMoved = _periodLowest > 2 * (_minRtt + AckAggregationNanoseconds);
            _periodLowest = double.MaxValue;
        }
        if (!floorMoved && now - _minRttAt < MinRttLifetimeNanoseconds)
        {
            return;
        }
        // The drain's window is half the product on the floor that stood: the queue empties even if the window (not the
        // path) lifted the samples.
        _drainRtt = _minRtt;
        _drainUntil = now + Math.Max(DrainNanoseconds, (long)_srtt);
        // Stands a lifetime from the drain's end unless a lower sample comes.
        (_minRtt, _minRttAt) = (rtt, _drainUntil);
        _periodLowest = double.MaxValue;
    }

    /// <summary>
    /// The shortest stretch (or four SRTTs, if longer) whose lowest RTT sample, when above twice the sum of the minimum and
    /// <see cref="AckAggregationNanoseconds"/> (on a sub-millisecond path, what batching adds), says the path's floor
    /// rose: the window keeps at most a quarter of the product and 2 ms of the rate queued, so its own queue cannot lift
    /// every sample that far. The floor is then measured again, not when the minimum's lifetime runs out (on the old
    /// floor the window was a fraction of the new product: arq-bulk carried 2.4–2.9 Mbit/s over a 5.65 Mbit/s path for
    /// the rest of the 10 s). The stretch in which the floor rose still holds the old low samples, so it takes one to two.
    /// </summary>
    private const long FloorPeriodNanoseconds = 1_000_000_000;

    private long _periodStart;
    private double _periodLowest = double.MaxValue; // the lowest RTT sample since _periodStart (MaxValue: none yet)

    private void Retransmit(Outstanding packet, long now, IUnderlayOutput underlay)
    {
        if (packet.Transmissions > options.MaxRetransmissions)
        {
            _inFlight.Remove(packet.Sequence);
            GivenUp++;
            _skipDue = true;
            return;
        }
        packet.Transmissions++;
        // Backed off by half, not doubled: under random loss a lost retransmission is no sign of congestion. From the
        // current estimate: a packet first sent before any RTT was measured must not carry that guess into its retries.
        packet.Rto = RetryRto(packet.Transmissions);
        if (Send(packet, now, underlay))
        {
            Retransmissions++;
        }
        _retransmitTimer = Math.Min(_retransmitTimer, packet.Deadline);
    }

    /// <summary>
    /// An RTT sample ended a back-off: packets sent under it would otherwise keep its long timeouts, and one lost at the
    /// end of a request (nothing behind it to overtake it) would wait up to the longest for nothing. Rare (once per
    /// back-off), so the walk over what is in flight costs nothing on the way of a packet.
    /// </summary>
    private void ForgetBackoff()
    {
        foreach (var packet in _inFlight.Values)
        {
            var rto = RetryRto(packet.Transmissions);
            if (rto < packet.Rto)
            {
                (packet.Rto, packet.Deadline) = (rto, packet.SentAt + rto);
                _retransmitTimer = Math.Min(_retransmitTimer, packet.Deadline);
            }
        }
    }

    public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        _lastClock = nowNanoseconds;
        if (_ackDue <= nowNanoseconds)
        {
            SendAck(underlay);
        }
        if (_retransmitTimer <= nowNanoseconds)
        {
            var timeoutsBefore = _lastTimeout;
            var probing = _lastTimeout > _lastAckAt && _inFlight.Count > 0;
            if (probing)
            {
                Probe(nowNanoseconds, underlay);
            }
            else
            {
                foreach (var packet in _inFlight.Values.ToList())
                {
                    if (Due(packet) <= nowNanoseconds)
                    {
                        Retransmit(packet, nowNanoseconds, underlay);
                        _lastTimeout = nowNanoseconds;
                    }
                }
            }
            if (_lastTimeout != timeoutsBefore && !probing && nowNanoseconds - _lastBackoffAt >= Rto)
            {
                (_backoff, _lastBackoffAt) = (Math.Min(2 * _backoff, MaxBackoff), nowNanoseconds);
            }
            _retransmitTimer = _inFlight.Count == 0 ? long.MaxValue : _inFlight.Values.Min(Due);
        }
        if (_skipDue)
        {
            // One skip for every packet given up in this round (a dead peer's window would otherwise get one each).
            _skipDue = false;
            SendSkip(underlay);
        }
        Pump(nowNanoseconds, underlay);
    }

    /// <summary>
    /// No acknowledgement came since the last timeout sent packets again: the path may be down (an outage, a dead peer).
    /// Only the oldest packet probes it, on its own backed-off timeout; the others wait for it, or a window of copies
    /// would go into the outage every round. When the probe is given up, so are the packets that waited behind it.
    /// </summary>
    private void Probe(long now, IUnderlayOutput underlay)
    {
        var oldest = _inFlight.Values.First();
        if (Due(oldest) <= now)
        {
            Retransmit(oldest, now, underlay);
            _lastTimeout = now;
        }
        var probing = _inFlight.ContainsKey(oldest.Sequence);
        foreach (var packet in _inFlight.Values.ToList())
        {
            if (packet == oldest || Due(packet) > now)
            {
                continue;
            }
            if (probing)
            {
                // Due with the probe's next try (later than now: it is not due, or was just sent).
                packet.Deadline = Due(oldest);
            }
            else
            {
                _inFlight.Remove(packet.Sequence);
                GivenUp++;
                _skipDue = true;
            }
        }
    }

    /// <summary>When a packet's timeout passes: its RTO after its last send, or, while no later packet overtook it, after
    /// the acknowledgements last moved on.</summary>
    private long Due(Outstanding packet) => _anyAcked && (int)(_highestAcked - packet.Sequence) > 0
        ? packet.Deadline
        : Math.Max(packet.Deadline, _lastAdvance + packet.Rto);

    private void Overtook(uint sequence)
    {
        if (!_anyAcked || (int)(sequence - _highestAcked) > 0)
        {
            (_highestAcked, _anyAcked) = (sequence, true);
        }
    }

    /// <summary>The counters, and the sender's and receiver's state: frames queued for the window or the pacer, packets in
    /// flight and the window allowed, the delivery-rate estimate, SRTT and the minimum RTT (0 before the first sample) and RTO,
    /// retransmissions and packets given up, frames held early at the receiver.</summary>
    public StackStats GetStats() => _counters.Snapshot() with
    {
        Gauges = new Dictionary<string, double>
        {
            ["queued"] = _queued.Count,
            ["inFlight"] = _inFlight.Count,
            ["windowPackets"] = SendWindow,
            ["deliveryMbit"] = _deliveryRate * 8e3,
            ["srttMs"] = Math.Max(_srtt, 0) / 1e6,
            ["minRttMs"] = Math.Max(_minRtt, 0) / 1e6,
            ["rtoMs"] = Rto / 1e6,
            ["retransmissions"] = Retransmissions,
            ["givenUp"] = GivenUp,
            ["heldEarly"] = _early.Count,
        },
    };

    /// <summary>State format <see cref="StateFormat"/>: the format byte, then the smoothed RTT and its variation (ns), the delivery rate (bytes/ns) and the mean datagram size, as doubles.</summary>
    public StackState ExportState()
    {
        if (_srtt < 0)
        {
            return StackState.Empty(options.Id);
        }
        var data = new byte[1 + 4 * sizeof(double)];
        data[0] = StateFormat;
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(1), _srtt);
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(9), _rttvar);
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(17), _deliveryRate);
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(25), _averageSize);
        return new StackState(options.Id, data);
    }

    private const byte StateFormat = 1;

    /// <summary>
    /// Starts from what the instance of another version of this stack measured on the path (<see cref="StackContext.Previous"/>):
    /// its RTT and delivery-rate estimates, so the first retransmission timer and the pacer's window fit the path instead
    /// of the defaults. Anything it cannot read (another stack's state, another format, values out of range) is left
    /// aside, said in a telemetry event, and the instance starts fresh.
    /// </summary>
    public SelectiveRepeat Resume(StackContext context)
    {
        if (context.Previous is not { } previous || previous.Data.IsEmpty)
        {
            return this;
        }
        var data = previous.Data.Span;
        var refusal = previous.StackId != options.Id ? $"state of '{previous.StackId}', not of '{options.Id}'"
            : data.Length != 1 + 4 * sizeof(double) || data[0] != StateFormat ? $"state format {data[0]} of {data.Length} bytes, this version reads format {StateFormat} of 33"
            : null;
        double srtt = 0, rttvar = 0, rate = 0, size = 0;
        if (refusal is null)
        {
            (srtt, rttvar) = (BinaryPrimitives.ReadDoubleLittleEndian(data[1..]), BinaryPrimitives.ReadDoubleLittleEndian(data[9..]));
            (rate, size) = (BinaryPrimitives.ReadDoubleLittleEndian(data[17..]), BinaryPrimitives.ReadDoubleLittleEndian(data[25..]));
            // An RTT up to a minute, a rate up to 1 Tbit/s, a datagram up to 64 KiB: anything else is not a measurement.
            if (!(srtt is > 0 and < 60e9) || !(rttvar is >= 0 and < 60e9) || !(rate is >= 0 and < 125) || !(size is >= 1 and <= 65536))
            {
                refusal = "values out of range";
            }
        }
        if (refusal is not null)
        {
            context.Telemetry.Event("state-refused", $"{refusal}; starting fresh");
            return this;
        }
        (_srtt, _rttvar, _deliveryRate, _averageSize) = (srtt, rttvar, rate, size);
        context.Telemetry.Event("state-resumed", $"srtt {srtt / 1e6:0.###} ms, delivery rate {rate * 8e3:0.#} Mbit/s");
        return this;
    }

    public void ApplyPolicy(StackPolicy policy)
    {
    }

    public void Dispose()
    {
        _inFlight.Clear();
        _queued.Clear();
        _early.Clear();
        _earlyRuns.Clear();
    }

    private sealed class Outstanding(uint sequence, byte[] frame, uint vni)
    {
        public uint Sequence { get; set; } = sequence;
        public byte[] Frame { get; } = frame;
        public uint Vni { get; } = vni;
        public long SentAt;
        public long Deadline;
        public long Rto;
        public int Transmissions = 1;
        public int FastRetransmitted;
    }

    /// <summary>Orders 32-bit sequence numbers that may wrap (RFC 1982 serial arithmetic, within half the space).</summary>
    private sealed class SerialComparer : IComparer<uint>
    {
        public static SerialComparer Instance { get; } = new();

        public int Compare(uint x, uint y) => (int)(x - y) switch { < 0 => -1, > 0 => 1, _ => 0 };
    }
}
