using System.Buffers.Binary;
using System.Globalization;
using Fabric.Wire;

namespace Fabric.Stacks.Fec;

/// <summary>
/// Forward error correction across groups of VM frames. Each frame leaves at once as a data shard (payload type
/// Ethernet, no added delay); the sender keeps a copy, and when the group has k frames — or its deadline passes first —
/// it sends m parity shards (type StackEncoded) computed by <see cref="ReedSolomon"/> over the group's frames, each framed
/// as <c>length (16 bits), virtual network (32 bits), frame, zero padding</c>. The receiver delivers data shards as they
/// come and, once any k shards of a group are in, rebuilds the frames that were lost and delivers them with their own
/// virtual network. So any m losses in a group are recovered, at most the deadline (plus the parity's transit) late.
/// The receiver reports the shard loss it sees about every 100 ms (type StackControl; payload, 32 bits each: loss in
/// ppm, the shards the report covers, the send stamp of the newest shard it had and how long it held it — the sender's
/// round trip — and the least any shard queued over the interval). It leaves out what the path's queue overflowed: the
/// groups whose shards queued (one-way delay over its minimum of the last 10 to 20 s, or since the last second without
/// shards, from the Fabric header's send timestamp; the clocks' offset cancels out, their drift does not) at least 2 ms
/// and half the recent peak, with the loss in them. Parity cannot outrun an overflowing queue, only add to its load, and
/// the guest's transport must see that loss to slow down: counting it, parity grew with the load it caused (at 30 ms
/// RTT and 200 Mbit/s a guest got 32 Mbit/s instead of 113). The sender keeps the reports' shards and losses in counts
/// that forget the oldest as new shards come (about the last 8,000), and picks the smallest m whose share of frames
/// lost for good (more than m of a group's shards lost, binomial) is below the target at the upper end of what those
/// counts allow (Wilson, one-sided 95 %): a path seen over few shards gets more parity than its point estimate asks,
/// which is when a guest's TCP is in slow start and a lost frame costs it most, and costs few bytes, for there is little
/// traffic. The parity is capped by the policy's overhead budget. The default target, 3 ppm of frames lost for good,
/// is what a loss-based TCP needs to fill a long fast path: at 120 ms and 100 Mbit/s, Mathis' estimate allows about 3
/// losses in a million packets. Where the peer reports a standing queue the path is full and parity displaces the
/// guests' own bytes; the target is then what a TCP at this rate and round trip bears (<see cref="Tolerance"/>), and a
/// group may go without parity: a marker (kind 3) then tells the receiver its size, so that its loss is still counted.
/// <para>Stack fields (8 bytes): group (32 bits), index (8: data 0..k-1, parity k..k+m-1), k (8), m (8), kind (8: 0
/// data, 1 parity, 2 loss report, 3 a group closed without parity, index = k). Data shards carry the previous group's k
/// and m (the first group's: 0 and 0), so that a group is counted even when all its parity, or its marker, was lost.</para>
/// </summary>
public sealed class FecStack : IStack
{
    public const int FieldLength = 8;
    public const int ShardHeader = 6;
    private const byte KindData = 0;
    private const byte KindParity = 1;
    private const byte KindReport = 2;
    private const byte KindClose = 3;
    private const int Window = 64;
    private const int FinalizeBehind = 8;

    /// <summary>True only in the build tests/stacks/Fabric.Stacks.FecNoParity makes of this code: a fec made worse on
    /// purpose (its groups go without parity, so nothing lost is rebuilt) for the rollout tests' bad version.</summary>
    private static readonly bool ParityDisabled =
#if PARITY_DISABLED
        true;
#else
        false;
#endif

    private readonly StackCounters _counters = new();
    private readonly int _k;
    private readonly long _deadline;
    private readonly double _target;
    private readonly Dictionary<(int K, int M), ReedSolomon> _codecs = [];

    // Sender.
    private uint _group;
    private readonly List<(byte[] Shard, int Length)> _pending = [];
    private long _groupOpenedAt = long.MaxValue;
    private int _m;
    private int _maxParity;
    private double _peerLoss;
    private double _observedShards;
    private double _observedLost;
    private long _shardsSent;
    private long _shardsSentAtReport;
    private long _lastReportTaken = long.MinValue / 2;
    private double _rate;
    private double _frameBytes = 1500;
    private bool _peerCountsClosedGroups;
    private int _standingQueueMicros;
    private uint _minRtt;
    private uint _previousMinRtt;
    private long _rttWindowStart;
    private bool _anyRtt;
    private double _tolerance;
    private double _parityShare = 1;
    private (int K, int M) _previousGroup;
    private double _parityCredit;

    /// <summary>The most residual loss a relaxed target allows, whatever Mathis' estimate says.</summary>
    private const double MaxTolerance = 0.01;

    // Receiver.
    private readonly Dictionary<uint, ReceivedGroup> _groups = [];
    private uint _highestGroup;
    private bool _anyGroup;
    private long _shardsExpected;
    private long _shardsReceived;
    private long _shardsLostToCongestion;
    private long _shardsInOverflowGroups;
    private double _lastLoss;
    private double _lastCongestionLoss;
    private bool _anyDelay;
    private uint _minDelay;
    private uint _previousMinDelay;
    private long _delayWindowStart;
    private int _queuePeakMicros;
    private const long DelayWindowNanoseconds = 10_000_000_000;

    /// <summary>
    /// A pause in the shards this long (ns) starts the one-way delay's minimum anew (see <see cref="Queued"/>).
    /// </summary>
    private const long QuietNanoseconds = 1_000_000_000;

    private long _lastShardAt;

    /// <summary>Loss in a group whose shards queued less than this (µs) is never taken for overflow.</summary>
    private const int CongestionQueueMicros = 2000;

    /// <summary>The most a shard is taken to have queued (µs); more below the floor is the sender's clock stepping.</summary>
    private const int MaxQueueMicros = 1_000_000;
    private int _finalizedSinceReport;
    private long _lastReport = long.MinValue / 2;
    private uint _echoStamp;
    private long _echoArrival;
    private bool _anyEcho;
    private int _intervalMinQueued = int.MaxValue;
    private int _lastStandingQueue;

    public FecStack(IReadOnlyDictionary<string, string> configuration)
    {
        _k = Setting(configuration, "k", 8, 1, 64);
        _deadline = Setting(configuration, "deadlineMicroseconds", 5000, 100, 1_000_000) * 1000L;
        _target = Setting(configuration, "targetResidualPpm", 3, 1, 100_000) / 1e6;
        _maxParity = _k;
        _m = Math.Clamp(Setting(configuration, "initialParity", 2, 1, 64), 1, _k);
        _tolerance = _target;
    }

    /// <summary>Frames rebuilt from parity so far.</summary>
    public long Recovered { get; private set; }

    /// <summary>Groups that lost more shards than they had parity (frames lost for good).</summary>
    public long Unrecoverable { get; private set; }

    /// <summary>The parity shards per full group the sender uses now.</summary>
    public int Parity => _m;

    public long NextTimerNanoseconds => _pending.Count > 0 ? _groupOpenedAt + GroupDeadline : long.MaxValue;

    /// <summary>
    /// How long a group stays open for more frames: the configured deadline, or a quarter of the queue the peer reports
    /// standing (at most 50 ms). Every frame already waits that queue out, so a lost one rebuilt a little later changes
    /// little; but a slow path fills its groups, and a group of 8 frames with one parity shard costs an eighth where a
    /// group of 2 with one costs a half.
    /// </summary>
    private long GroupDeadline => _standingQueueMicros >= CongestionQueueMicros
        ? Math.Max(_deadline, Math.Min(_standingQueueMicros * 1000L / 4, MaxStretchedDeadline))
        : _deadline;

    /// <summary>How long without a report before groups without parity stop (ns).</summary>
    private const long SilentPeerNanoseconds = 1_000_000_000;

    /// <summary>The longest a standing queue stretches a group's deadline (ns).</summary>
    private const long MaxStretchedDeadline = 50_000_000;

    private static int Setting(IReadOnlyDictionary<string, string> configuration, string key, int fallback, int min, int max) =>
        configuration.TryGetValue(key, out var text) && int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
            ? Math.Clamp(value, min, max) : fallback;

    public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
    {
        _counters.FramesIn++;
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        var buffer = underlay.Begin(FieldLength + frame.Length);
        if (buffer.Length < FieldLength + frame.Length)
        {
            _counters.Drop(buffer.IsEmpty ? StackDropReason.NoBuffer : StackDropReason.TooLarge);
            return;
        }
        if (_pending.Count == 0)
        {
            _groupOpenedAt = nowNanoseconds;
        }
        var index = _pending.Count;
        WriteFields(buffer, _group, (byte)index, (byte)_previousGroup.K, (byte)_previousGroup.M, KindData);
        frame.CopyTo(buffer[FieldLength..]);
        underlay.Commit(FabricPayloadType.Ethernet, FieldLength, FieldLength + frame.Length);
        _counters.DatagramsOut++;
        _shardsSent++;
        _frameBytes += (frame.Length - _frameBytes) / 64;
        var shard = new byte[ShardHeader + frame.Length];
        BinaryPrimitives.WriteUInt16BigEndian(shard, (ushort)frame.Length);
        BinaryPrimitives.WriteUInt32BigEndian(shard.AsSpan(2), underlay.VirtualNetwork);
        frame.CopyTo(shard.AsSpan(ShardHeader));
        _pending.Add((shard, shard.Length));
        if (_pending.Count == _k)
        {
            CloseGroup(underlay, nowNanoseconds);
        }
    }

    private void CloseGroup(IUnderlayOutput underlay, long now)
    {
        var k = _pending.Count;
        if (_peerCountsClosedGroups && now - _lastReportTaken > SilentPeerNanoseconds)
        {
            // No report taken for a second while groups leave: the peer may not count groups sent without parity (an older
            // version, or a forged report said it did), or its reports are lost. Every group gets parity again until a
            // report comes.
            (_peerCountsClosedGroups, _standingQueueMicros) = (false, 0);
            FitParity();
        }
        if (ParityDisabled)
        {
            _pending.Clear();
            _groupOpenedAt = long.MaxValue;
            _group++;
            return;
        }
        // A group closed early by its deadline gets parity in proportion (at least one: a lone frame is repeated).
        var m = k == _k || _m == 0 ? _m : Math.Max(1, (int)Math.Ceiling((double)k * _m / _k));
        if (_m == 1 && _parityShare < 1)
        {
            // One parity shard per group is more than the loss calls for: only a share of the groups get it, spread evenly.
            _parityCredit += _parityShare;
            if (_parityCredit >= 1)
            {
                _parityCredit -= 1;
            }
            else
            {
                m = 0;
            }
        }
        _previousGroup = (k, m);
        if (m == 0)
        {
            // No parity: a marker still tells the receiver the group's size, so that its loss is counted and reported (and
            // the next group's data shards say it again, should the marker be lost).
            var vniOfGroup = underlay.VirtualNetwork;
            underlay.VirtualNetwork = 0;
            var marker = underlay.Begin(FieldLength);
            if (marker.Length >= FieldLength)
            {
                WriteFields(marker, _group, (byte)k, (byte)k, 0, KindClose);
                underlay.Commit(FabricPayloadType.StackEncoded, FieldLength, FieldLength);
                _counters.DatagramsOut++;
            }
            underlay.VirtualNetwork = vniOfGroup;
            _pending.Clear();
            _groupOpenedAt = long.MaxValue;
            _group++;
            return;
        }
        var length = _pending.Max(p => p.Length);
        var data = _pending.Select(p => p.Length == length ? p.Shard : Padded(p.Shard, length)).ToList();
        var parity = Enumerable.Range(0, m).Select(_ => new byte[length]).ToList();
        Codec(k, m).Encode(data, parity, length);
        var vni = underlay.VirtualNetwork;
        underlay.VirtualNetwork = 0;
        for (var i = 0; i < m; i++)
        {
            var buffer = underlay.Begin(FieldLength + length);
            if (buffer.Length < FieldLength + length)
            {
                _counters.Drop(buffer.IsEmpty ? StackDropReason.NoBuffer : StackDropReason.TooLarge);
                continue;
            }
            WriteFields(buffer, _group, (byte)(k + i), (byte)k, (byte)m, KindParity);
            parity[i].CopyTo(buffer[FieldLength..]);
            underlay.Commit(FabricPayloadType.StackEncoded, FieldLength, FieldLength + length);
            _counters.DatagramsOut++;
            _shardsSent++;
        }
        underlay.VirtualNetwork = vni;
        _pending.Clear();
        _groupOpenedAt = long.MaxValue;
        _group++;
    }

    private static byte[] Padded(byte[] shard, int length)
    {
        var padded = new byte[length];
        shard.CopyTo(padded, 0);
        return padded;
    }

    private ReedSolomon Codec(int k, int m)
    {
        if (!_codecs.TryGetValue((k, m), out var codec))
        {
            _codecs[(k, m)] = codec = new ReedSolomon(k, m);
        }
        return codec;
    }

    private static void WriteFields(Span<byte> buffer, uint group, byte index, byte k, byte m, byte kind)
    {
        BinaryPrimitives.WriteUInt32BigEndian(buffer, group);
        buffer[4] = index;
        buffer[5] = k;
        buffer[6] = m;
        buffer[7] = kind;
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
        var group = BinaryPrimitives.ReadUInt32BigEndian(fields);
        var (index, k, m, kind) = (fields[4], fields[5], fields[6], fields[7]);
        switch (datagram.Header.PayloadType, kind)
        {
            case (FabricPayloadType.Ethernet, KindData) when index < 64 && k <= 64 && (k > 0 || m == 0) && k + m <= ReedSolomon.MaxShards:
                if (ReceiveData(group, index, datagram.Payload, datagram.Header.VirtualNetworkId, vm, nowNanoseconds, underlay))
                {
                    Queued(group, datagram.Header.SendTimestampMicros, nowNanoseconds);
                    if (k > 0)
                    {
                        // The previous group's size: counted even if its marker, or all its parity, was lost.
                        ClosedEarlier(group - 1, k, m, vm, nowNanoseconds, underlay);
                    }
                }
                break;
            case (FabricPayloadType.StackEncoded, KindParity) when k is >= 1 and <= 64 && m >= 1 && k + m <= ReedSolomon.MaxShards && index >= k && index < k + m
                && datagram.Payload.Length >= ShardHeader:
                if (ReceiveParity(group, index, k, m, datagram.Payload, vm, nowNanoseconds, underlay))
                {
                    Queued(group, datagram.Header.SendTimestampMicros, nowNanoseconds);
                }
                break;
            case (FabricPayloadType.StackEncoded, KindClose) when k is >= 1 and <= 64 && m == 0 && index == k && datagram.Payload.IsEmpty:
                if (ReceiveClose(group, k, vm, nowNanoseconds, underlay))
                {
                    Queued(group, datagram.Header.SendTimestampMicros, nowNanoseconds);
                }
                break;
            case (FabricPayloadType.StackControl, KindReport) when datagram.Payload.Length is 4 or 8 or ReportLength && BinaryPrimitives.ReadUInt32BigEndian(datagram.Payload) <= 1_000_000:
            {
                // A report without its count (4 bytes, an older peer's) is taken as covering few shards; one without the
                // echo and the queue (8 bytes) says nothing of the path's round trip.
                var payload = datagram.Payload;
                OnLossReport(BinaryPrimitives.ReadUInt32BigEndian(payload) / 1e6,
                    payload.Length >= 8 ? BinaryPrimitives.ReadUInt32BigEndian(payload[4..]) : UncountedReportShards, nowNanoseconds,
                    payload.Length == ReportLength
                        ? new PathEcho(BinaryPrimitives.ReadUInt32BigEndian(payload[8..]), BinaryPrimitives.ReadUInt32BigEndian(payload[12..]), BinaryPrimitives.ReadUInt32BigEndian(payload[16..]))
                        : null);
                break;
            }
            case (FabricPayloadType.Ethernet or FabricPayloadType.StackEncoded or FabricPayloadType.StackControl, _):
                _counters.Drop(StackDropReason.Malformed);
                break;
            default:
                _counters.Drop(StackDropReason.UnexpectedPayloadType);
                break;
        }
    }

    /// <summary>
    /// How long a shard queued on the way, as far as this end can tell: its one-way delay (this end's clock less the
    /// sender's timestamp in the Fabric header; the clocks' offset cancels out) over the smallest one-way delay of the last
    /// 10 to 20 seconds. Each group keeps the most any of its shards queued; the recent peak says how deep the path's queue
    /// gets.
    /// <para>After a second without shards the minimum starts anew from the next shard: whatever queue this traffic had
    /// built has drained by then (its shards would still be arriving), so the first shard after it meets the path as it
    /// is now. The path's own delay may have changed meanwhile: the learning benchmark's training moved a link from 1 to
    /// 10 ms one way while no VM sent on fec, and against the old minimum every shard after it looked 9 ms queued for
    /// 10 to 20 s. Every loss was then taken for the queue's overflow and left out of the reports, and the queue for one
    /// that stands, so the sender sent next to no parity while a guest's TCP lost 2 % of its frames (1 to 8 Mbit/s of
    /// 200). Where the link itself held the traffic back (an outage of a cellular trace, its queue standing) the new
    /// minimum is too high, and falls as that queue drains.</para>
    /// </summary>
    private void Queued(uint group, uint sentMicros, long now)
    {
        if (!_groups.TryGetValue(group, out var state))
        {
            // Refused (too old, or beyond the window): it says nothing of the path's delay.
            return;
        }
        var delay = unchecked((uint)(now / 1000) - sentMicros);
        var quiet = _anyDelay && now - _lastShardAt >= QuietNanoseconds;
        _lastShardAt = now;
        // (A window started twice its length ago can only mean such a quiet: shards a second apart roll the window.)
        if (!_anyDelay || quiet)
        {
            // The first shard, or the first after a quiet: an old minimum says nothing of the path now, nor a peak or a
            // least queue measured against it.
            (_previousMinDelay, _minDelay, _delayWindowStart, _anyDelay) = (delay, delay, now, true);
            (_queuePeakMicros, _intervalMinQueued) = (0, int.MaxValue);
            QuietRestarts += quiet ? 1 : 0;
        }
        else if (now - _delayWindowStart >= DelayWindowNanoseconds)
        {
            // A new window: the previous one's minimum still counts until this one has seen as much.
            (_previousMinDelay, _minDelay, _delayWindowStart) = (_minDelay, delay, now);
        }
        if ((int)(delay - DelayFloor) < -MaxQueueMicros)
        {
            // A second or more below the floor: the sender's clock stepped (an agent restarted), not a queue that emptied.
            (_previousMinDelay, _minDelay, _delayWindowStart) = (delay, delay, now);
        }
        if ((int)(delay - _minDelay) < 0)
        {
            _minDelay = delay;
        }
        var queued = Math.Clamp((int)(delay - DelayFloor), 0, MaxQueueMicros);
        _queuePeakMicros = Math.Max(_queuePeakMicros, queued);
        _intervalMinQueued = Math.Min(_intervalMinQueued, queued);
        state.QueuedMicros = Math.Max(state.QueuedMicros, queued);
        (_echoStamp, _echoArrival, _anyEcho) = (sentMicros, now, true);
    }

    /// <summary>How many times a pause in the shards started the one-way delay's minimum anew (<see cref="Queued"/>).</summary>
    public long QuietRestarts { get; private set; }

    /// <summary>The smallest one-way delay of this window and the previous one (serial order: the stamps wrap).</summary>
    private uint DelayFloor => (int)(_previousMinDelay - _minDelay) < 0 ? _previousMinDelay : _minDelay;

    private ReceivedGroup? GroupFor(uint group, long now, IUnderlayOutput underlay)
    {
        if (_groups.TryGetValue(group, out var existing))
        {
            return existing;
        }
        if (_anyGroup && (int)(group - _highestGroup) <= -Window)
        {
            return null;
        }
        var created = new ReceivedGroup();
        _groups[group] = created;
        if (!_anyGroup || (int)(group - _highestGroup) > 0)
        {
            _highestGroup = group;
            _anyGroup = true;
            Finalize(now, underlay);
        }
        return created;
    }

    /// <returns>Whether the shard was taken as one of its group's (not malformed, a duplicate or too old): only those say
    /// anything of the path's delay.</returns>
    private bool ReceiveData(uint group, int index, ReadOnlySpan<byte> frame, uint vni, IVmOutput vm, long now, IUnderlayOutput underlay)
    {
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return false;
        }
        var state = GroupFor(group, now, underlay);
        if (state is null)
        {
            // Older than the window: nothing can be told about duplicates any more; the frame itself is good.
            Deliver(frame, vni, vm);
            return false;
        }
        if (state.Data.ContainsKey(index))
        {
            _counters.Drop(StackDropReason.Duplicate);
            return false;
        }
        var shard = new byte[ShardHeader + frame.Length];
        BinaryPrimitives.WriteUInt16BigEndian(shard, (ushort)frame.Length);
        BinaryPrimitives.WriteUInt32BigEndian(shard.AsSpan(2), vni);
        frame.CopyTo(shard.AsSpan(ShardHeader));
        state.Data[index] = shard;
        if (state.Recovered.Contains(index))
        {
            // Rebuilt from parity already and delivered then.
            _counters.Drop(StackDropReason.Duplicate);
            return true;
        }
        Deliver(frame, vni, vm);
        TryRecover(state, vm);
        return true;
    }

    private bool ReceiveParity(uint group, int index, int k, int m, ReadOnlySpan<byte> payload, IVmOutput vm, long now, IUnderlayOutput underlay)
    {
        var state = GroupFor(group, now, underlay);
        if (state is null || state.Parity.ContainsKey(index) || (state.K > 0 && (state.K != k || state.M != m || (state.Length != 0 && state.Length != payload.Length))))
        {
            _counters.Drop(state is null || state.Parity.ContainsKey(index) ? StackDropReason.Duplicate : StackDropReason.Malformed);
            return false;
        }
        (state.K, state.M, state.Length) = (k, m, payload.Length);
        state.Parity[index] = payload.ToArray();
        TryRecover(state, vm);
        return true;
    }

    /// <summary>A group sent without parity: its size, so that what it lost is counted.</summary>
    private bool ReceiveClose(uint group, int k, IVmOutput vm, long now, IUnderlayOutput underlay)
    {
        var state = GroupFor(group, now, underlay);
        if (state is null || state.K > 0)
        {
            _counters.Drop(state is null || (state.K == k && state.M == 0) ? StackDropReason.Duplicate : StackDropReason.Malformed);
            return false;
        }
        (state.K, state.M, state.Length) = (k, 0, 0);
        TryRecover(state, vm);
        return true;
    }

    /// <summary>What the next group's data shards say of a group: its frames and parity shards. A group whose parity
    /// (or marker) and every frame were lost is then counted too, all lost. Its parity's length stays unknown (0) until a
    /// parity shard comes.</summary>
    private void ClosedEarlier(uint group, int k, int m, IVmOutput vm, long now, IUnderlayOutput underlay)
    {
        if (GroupFor(group, now, underlay) is { K: 0 } state)
        {
            (state.K, state.M, state.Length) = (k, m, 0);
            TryRecover(state, vm);
        }
    }

    private void TryRecover(ReceivedGroup state, IVmOutput vm)
    {
        if (state.K == 0 || state.Done)
        {
            return;
        }
        var data = state.Data.Count(d => d.Key < state.K);
        if (data == state.K)
        {
            state.Done = true;
            return;
        }
        if (data + state.Parity.Count < state.K)
        {
            return;
        }
        var shards = new byte[]?[state.K + state.M];
        foreach (var (index, shard) in state.Data)
        {
            if (index < state.K && shard.Length <= state.Length)
            {
                shards[index] = shard.Length == state.Length ? shard : Padded(shard, state.Length);
            }
        }
        foreach (var (index, shard) in state.Parity)
        {
            shards[index] = shard;
        }
        var missing = Enumerable.Range(0, state.K).Where(i => shards[i] is null).ToList();
        if (!Codec(state.K, state.M).Reconstruct(shards, state.Length))
        {
            return;
        }
        state.Done = true;
        foreach (var index in missing)
        {
            var shard = shards[index]!;
            var length = BinaryPrimitives.ReadUInt16BigEndian(shard);
            if (length + ShardHeader > shard.Length || !EthernetFrame.TryCreate(shard.AsSpan(ShardHeader, length), out _))
            {
                _counters.Drop(StackDropReason.Malformed);
                continue;
            }
            state.Recovered.Add(index);
            Recovered++;
            Deliver(shard.AsSpan(ShardHeader, length), BinaryPrimitives.ReadUInt32BigEndian(shard.AsSpan(2)), vm);
        }
    }

    private void Deliver(ReadOnlySpan<byte> frame, uint vni, IVmOutput vm)
    {
        vm.Deliver(frame, vni);
        _counters.FramesDelivered++;
    }

    /// <summary>Groups far enough behind the newest are counted (shards expected vs received) and forgotten; the loss is reported now and then.</summary>
    private void Finalize(long now, IUnderlayOutput underlay)
    {
        List<uint>? old = null;
        foreach (var (id, state) in _groups)
        {
            var behind = (int)(_highestGroup - id);
            if (behind >= FinalizeBehind && !state.Counted && state.K > 0)
            {
                state.Counted = true;
                _shardsExpected += state.K + state.M;
                // Data shards numbered beyond the group's k were never sent by the peer: counted, they would hide a loss.
                var received = Math.Min(state.K + state.M, state.Data.Keys.Count(i => i < state.K) + state.Parity.Count);
                _shardsReceived += received;
                if (received < state.K + state.M && state.QueuedMicros >= Math.Max(CongestionQueueMicros, _queuePeakMicros / 2))
                {
                    // Lost while the path's queue stood near its recent peak: the queue overflowed. Parity would not
                    // repair that, only add to the load that caused it; the guest's transport must see it and slow down.
                    _shardsLostToCongestion += state.K + state.M - received;
                    _shardsInOverflowGroups += state.K + state.M;
                }
                if (!state.Done)
                {
                    Unrecoverable++;
                }
                _finalizedSinceReport++;
            }
            if (behind >= Window)
            {
                (old ??= []).Add(id);
            }
        }
        old?.ForEach(id => _groups.Remove(id));
        if (_finalizedSinceReport >= 4 && now - _lastReport >= 100_000_000 && _shardsExpected > 0)
        {
            // The loss parity can repair: what was lost in the groups the queue's overflow did not take, over their shards.
            var counted = _shardsExpected - _shardsInOverflowGroups;
            var loss = counted > 0 ? (double)(_shardsExpected - _shardsReceived - _shardsLostToCongestion) / counted : 0;
            (_lastLoss, _lastCongestionLoss) = (1 - (double)_shardsReceived / _shardsExpected, (double)_shardsLostToCongestion / _shardsExpected);
            _queuePeakMicros = (int)(_queuePeakMicros * 0.8);
            _lastStandingQueue = _intervalMinQueued == int.MaxValue ? 0 : _intervalMinQueued;
            var buffer = underlay.Begin(FieldLength + ReportLength);
            if (buffer.Length >= FieldLength + ReportLength && _anyEcho)
            {
                var report = buffer[FieldLength..];
                WriteFields(buffer, 0, 0, 0, 0, KindReport);
                BinaryPrimitives.WriteUInt32BigEndian(report, (uint)Math.Round(Math.Clamp(loss, 0, 1) * 1e6));
                BinaryPrimitives.WriteUInt32BigEndian(report[4..], (uint)Math.Min(counted, uint.MaxValue));
                BinaryPrimitives.WriteUInt32BigEndian(report[8..], _echoStamp);
                BinaryPrimitives.WriteUInt32BigEndian(report[12..], (uint)Math.Clamp((now - _echoArrival) / 1000, 0, uint.MaxValue));
                BinaryPrimitives.WriteUInt32BigEndian(report[16..], (uint)_lastStandingQueue);
                underlay.Commit(FabricPayloadType.StackControl, FieldLength, FieldLength + ReportLength);
                _counters.DatagramsOut++;
            }
            (_shardsExpected, _shardsReceived, _shardsLostToCongestion, _shardsInOverflowGroups, _finalizedSinceReport, _lastReport) = (0, 0, 0, 0, 0, now);
            _intervalMinQueued = int.MaxValue;
        }
    }

    /// <summary>About how many of the newest shards the loss estimate rests on: a report's shards weigh the older ones
    /// down by e^(−shards/8000). Enough that on a clean path the bound lets one parity shard per group do.</summary>
    private const double MemoryShards = 8000;

    /// <summary>What a report that does not say how many shards it covers (an older peer's) counts for.</summary>
    private const int UncountedReportShards = 32;

    /// <summary>The peer's measured shard loss over <paramref name="shards"/> shards: the smallest parity count that keeps a
    /// full group's failure chance under the target at the loss's bound.</summary>
    /// <remarks>
    /// A report counts for no more shards than this end sent since the last report it took, and reports closer than 50 ms
    /// apart are not taken (the peer reports about every 100 ms): a forged report — nothing authenticates fec's — weighs as
    /// much as the traffic it claims to cover and no more, and is outweighed by the next genuine ones.
    /// </remarks>
    private void OnLossReport(double loss, double shards, long now, PathEcho? echo)
    {
        if (now - _lastReportTaken < 50_000_000)
        {
            return;
        }
        shards = Math.Min(shards, Math.Min(_shardsSent - _shardsSentAtReport, MemoryShards));
        if (shards <= 0)
        {
            return;
        }
        var elapsed = now - _lastReportTaken;
        if (elapsed < 5_000_000_000)
        {
            // What reached the peer, not what left here: while a queue grows, this end sends faster than the path delivers.
            var rate = shards * _frameBytes * 8e9 / elapsed;
            _rate = _rate == 0 ? rate : _rate + (rate - _rate) * 0.2;
        }
        (_lastReportTaken, _shardsSentAtReport) = (now, _shardsSent);
        if (echo is { } path)
        {
            OnEcho(path, now);
        }
        var kept = Math.Exp(-shards / MemoryShards);
        _observedShards = _observedShards * kept + shards;
        _observedLost = _observedLost * kept + loss * shards;
        _peerLoss = _observedShards > 0 ? _observedLost / _observedShards : 0;
        FitParity();
    }

    /// <summary>
    /// The highest shard loss the counts allow with 95 % confidence (the Wilson score bound, one-sided): over 40 shards
    /// with none lost it is 6 %, over 4,000 with 2 % lost 2.4 %.
    /// </summary>
    public static double LossBound(double lost, double shards)
    {
        if (shards <= 0)
        {
            return 0;
        }
        const double z = 1.645;
        var p = Math.Clamp(lost / shards, 0, 1);
        var bound = (p + z * z / (2 * shards) + z * Math.Sqrt(p * (1 - p) / shards + z * z / (4 * shards * shards))) / (1 + z * z / shards);
        return Math.Min(bound, 1);
    }

    /// <summary>A report's word on the path: the send stamp of the newest shard the peer had, how long it held it (µs),
    /// and the least any shard queued over the report's interval (µs).</summary>
    private readonly record struct PathEcho(uint Stamp, uint HeldMicros, uint StandingQueueMicros);

    /// <summary>The report's length since the echo: loss (ppm), shards, echoed stamp, held, standing queue (32 bits each).</summary>
    private const int ReportLength = 20;

    private void OnEcho(PathEcho echo, long now)
    {
        _peerCountsClosedGroups = true;
        _standingQueueMicros = (int)Math.Min(echo.StandingQueueMicros, MaxQueueMicros);
        var rtt = unchecked((uint)(now / 1000) - echo.Stamp - echo.HeldMicros);
        if ((int)rtt is < 0 or > MaxRttMicros)
        {
            // An echo of no stamp this end sent lately (or held longer than it says): no round trip to learn from.
            return;
        }
        if (!_anyRtt || now - _rttWindowStart >= 2 * DelayWindowNanoseconds)
        {
            (_previousMinRtt, _minRtt, _rttWindowStart, _anyRtt) = (rtt, rtt, now, true);
        }
        else if (now - _rttWindowStart >= DelayWindowNanoseconds)
        {
            (_previousMinRtt, _minRtt, _rttWindowStart) = (_minRtt, rtt, now);
        }
        _minRtt = Math.Min(_minRtt, rtt);
    }

    /// <summary>The longest round trip an echo is taken for (µs).</summary>
    private const int MaxRttMicros = 10_000_000;

    /// <summary>The path's round trip without queues: the least of this window's and the previous one's (µs).</summary>
    private uint RttFloor => Math.Min(_minRtt, _previousMinRtt);

    /// <summary>
    /// The residual loss per frame the guests can bear. While the peer reports a queue that stands (every shard over its
    /// interval queued at least 2 ms), the path is full: each parity byte displaces a guest's byte, and a loss-based TCP
    /// keeps the path full as long as its mean window, 1.22 / √p packets (Mathis), covers the path's bandwidth-delay
    /// product. So it bears p = (1.22 · frame / (round trip · rate))², at the rate the peer's reports count and the path's round
    /// trip without its queue — a slow cellular path a few in ten thousand, a long fast one less than the configured
    /// target, which stays the floor (and 1 % the ceiling). Without a standing queue the path has room, parity costs the
    /// guests nothing they could use, and the configured target holds.
    /// </summary>
    private double Tolerance()
    {
        if (_standingQueueMicros < CongestionQueueMicros || !_anyRtt || _rate <= 0)
        {
            return _target;
        }
        var rtt = Math.Max(RttFloor, 100) / 1e6;
        var bearable = Math.Pow(1.22 * _frameBytes * 8 / (rtt * _rate), 2);
        return Math.Clamp(bearable, _target, Math.Max(_target, MaxTolerance));
    }

    private void FitParity()
    {
        var loss = LossBound(_observedLost, _observedShards);
        _tolerance = Tolerance();
        // No parity only where the queue stands (elsewhere parity costs the guests nothing they could use) and the peer
        // counts groups sent without it.
        var withoutParity = _peerCountsClosedGroups && _standingQueueMicros >= CongestionQueueMicros;
        var m = withoutParity ? 0 : 1;
        while (m < _maxParity && Residual(_k + m, m, loss) > _tolerance)
        {
            m++;
        }
        _m = m;
        // Between none and one parity shard per group, the share of groups with one that brings the residual loss to the
        // tolerance: (1 − f)·p + f·r₁ = tolerance.
        var one = Residual(_k + 1, 1, loss);
        _parityShare = m == 1 && withoutParity && loss > one ? Math.Clamp((loss - _tolerance) / (loss - one), 0, 1) : 1;
    }

    /// <summary>The share of a group's frames lost for good: E[shards lost, when more than <paramref name="m"/> of
    /// <paramref name="n"/> are] / n, with independent loss <paramref name="p"/> (without parity, p itself).</summary>
    public static double Residual(int n, int m, double p)
    {
        var lost = 0.0;
        var term = Math.Pow(1 - p, n);
        for (var i = 0; i <= n; i++)
        {
            if (i > m)
            {
                lost += term * i;
            }
            term = p >= 1 ? (i + 1 == n ? 1 : 0) : term * (n - i) / (i + 1) * p / (1 - p);
        }
        return lost / n;
    }

    public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        if (_pending.Count > 0 && nowNanoseconds >= _groupOpenedAt + GroupDeadline)
        {
            var vni = underlay.VirtualNetwork;
            CloseGroup(underlay, nowNanoseconds);
            underlay.VirtualNetwork = vni;
        }
    }

    /// <summary>The counters, and the parity in use, the loss the peer reports, frames rebuilt and groups lost for good.</summary>
    public StackStats GetStats() => _counters.Snapshot() with
    {
        Gauges = new Dictionary<string, double>
        {
            ["k"] = _k,
            ["parity"] = _m,
            ["parityShare"] = _m == 1 ? _parityShare : _m == 0 ? 0 : 1,
            ["peerLossPercent"] = _peerLoss * 100,
            ["lossBoundPercent"] = LossBound(_observedLost, _observedShards) * 100,
            ["observedShards"] = _observedShards,
            ["recovered"] = Recovered,
            ["receivedLossPercent"] = _lastLoss * 100,
            ["overflowLossPercent"] = _lastCongestionLoss * 100,
            ["queuePeakMs"] = _queuePeakMicros / 1000.0,
            ["unrecoverable"] = Unrecoverable,
            ["toleranceppm"] = _tolerance * 1e6,
            ["rateMbit"] = _rate / 1e6,
            ["minRttMs"] = _anyRtt ? RttFloor / 1000.0 : double.NaN,
            ["peerStandingQueueMs"] = _standingQueueMicros / 1000.0,
            ["groupDeadlineMs"] = GroupDeadline / 1e6,
            ["standingQueueMs"] = _lastStandingQueue / 1000.0,
            ["delayFloorRestarts"] = QuietRestarts,
        },
    };

    /// <summary>
    /// State format <see cref="StateFormat"/>: the format byte, then the peer's smoothed shard loss as a double. What the
    /// sender learned of the path, so a new version's instance sends the parity the path needs from its first group on,
    /// not the initial parity until the peer's next reports. Groups in flight are not carried: the new instance has its
    /// own slot, and the old one finishes its groups while it drains.
    /// </summary>
    public StackState ExportState()
    {
        if (_peerLoss == 0)
        {
            return StackState.Empty("fec");
        }
        var data = new byte[1 + sizeof(double)];
        data[0] = StateFormat;
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(1), _peerLoss);
        return new StackState("fec", data);
    }

    private const byte StateFormat = 1;

    /// <summary>How many shards a carried loss estimate counts for.</summary>
    private const double ResumedShards = 1000;

    /// <summary>
    /// Starts from what the instance of another version measured (<see cref="StackContext.Previous"/>): the peer's loss,
    /// and so the parity it calls for. State it cannot read (another stack's, another format, a loss outside 0..1) is
    /// left aside, said in a telemetry event, and the instance starts fresh.
    /// </summary>
    public FecStack Resume(StackContext context)
    {
        if (context.Previous is not { } previous || previous.Data.IsEmpty)
        {
            return this;
        }
        var data = previous.Data.Span;
        var loss = data.Length == 1 + sizeof(double) ? BinaryPrimitives.ReadDoubleLittleEndian(data[1..]) : double.NaN;
        var refusal = previous.StackId != "fec" ? $"state of '{previous.StackId}', not of 'fec'"
            : data.Length != 1 + sizeof(double) || data[0] != StateFormat ? $"state format {data[0]} of {data.Length} bytes, this version reads format {StateFormat} of 9"
            : loss is not (> 0 and <= 1) ? "a loss outside 0..1"
            : null;
        if (refusal is not null)
        {
            context.Telemetry.Event("state-refused", $"{refusal}; starting fresh");
            return this;
        }
        // Taken as what the last thousand shards showed: more parity than the point estimate asks until the peer's own
        // reports come.
        (_peerLoss, _observedShards, _observedLost) = (loss, ResumedShards, loss * ResumedShards);
        FitParity();
        context.Telemetry.Event("state-resumed", string.Create(CultureInfo.InvariantCulture, $"peer loss {loss * 100:0.##} %, parity {_m} of {_k}"));
        return this;
    }

    /// <summary>The policy's overhead budget caps the parity per group (at least one).</summary>
    public void ApplyPolicy(StackPolicy policy)
    {
        _maxParity = Math.Clamp((int)Math.Floor(_k * policy.MaxOverheadRatio), 1, _k);
        _m = Math.Min(_m, _maxParity);
    }

    public void Dispose()
    {
    }

    private sealed class ReceivedGroup
    {
        public readonly Dictionary<int, byte[]> Data = [];
        public readonly Dictionary<int, byte[]> Parity = [];
        public readonly HashSet<int> Recovered = [];
        public int K;
        public int M;
        public int Length;
        public bool Done;
        public bool Counted;
        public int QueuedMicros;
    }
}
