using System.Buffers.Binary;

namespace Fabric.Agent.Switching;

/// <summary>Op codes of agent control messages (Fabric payload type 5): <c>op, slot[, UTF-8 text]</c>.</summary>
internal static class ControlMessages
{
    public const byte Open = 1;
    public const byte Opened = 2;
    public const byte Refused = 3;
    public const byte Close = 4;
    public const byte Unknown = 5;

    public static byte[] Make(byte op, int slot, string text = "")
    {
        var message = new byte[2 + System.Text.Encoding.UTF8.GetByteCount(text)];
        message[0] = op;
        message[1] = (byte)slot;
        System.Text.Encoding.UTF8.GetBytes(text, message.AsSpan(2));
        return message;
    }

    public static string Text(byte[] message) => message.Length <= 2 ? "" : System.Text.Encoding.UTF8.GetString(message.AsSpan(2));

    /// <summary>
    /// An open request: the stack id and the id of the instance the opener put in the slot (random per opening), so the
    /// peer can tell a repeated request (same instance: keep its own) from a slot opened anew after a restart (new
    /// instance: replace its own, whose state belongs to the opener's old one).
    /// </summary>
    public static byte[] MakeOpen(int slot, string stackId, ulong openId) => Make(Open, slot, $"{stackId} {openId:x16}");

    /// <summary>The stack id and instance id of an open request; the id is 0 when the opener sent none.</summary>
    public static (string StackId, ulong OpenId) ParseOpen(byte[] message)
    {
        var text = Text(message);
        var space = text.IndexOf(' ', StringComparison.Ordinal);
        return space > 0 && ulong.TryParse(text.AsSpan(space + 1), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out var id)
            ? (text[..space], id) : (text, 0);
    }
}

/// <summary>What one VM sent on a path during an interval, through which stack, and what its TCP traffic got (<see cref="TcpMeter"/>).</summary>
public sealed record VmInterval(string VmId, string Stack, long Frames, long Bytes, TcpInterval Tcp);

/// <summary>
/// One measurement interval of a path. <see cref="Sent"/> and <see cref="Lost"/> count this host's datagrams by the
/// peer's reports (path sequence numbers), so they cover all traffic, probes included; RTT percentiles come from the
/// probes answered in the interval (NaN when none was).
/// </summary>
/// <remarks><see cref="CapacityMbps"/>: the rate the path's bottleneck carried this host's last capacity train at (see
/// <see cref="PathMonitor"/>), as the peer measured it and answered in the interval; NaN when no answer came.</remarks>
public sealed record PathMeasurement(double RttP50Ms, double RttP99Ms, double JitterMs, long Sent, long Lost, long ProbesSent, long ProbesAnswered,
    long BytesSent, TimeSpan Interval, IReadOnlyList<VmInterval> Vms, double CapacityMbps = double.NaN)
{
    /// <summary>VM frames' bytes sent through a slot not their VM's own (counted in no VM's <see cref="VmInterval.Bytes"/>).</summary>
    public long BorrowedBytes { get; init; }

    public double Loss => Sent <= 0 ? 0 : Math.Clamp((double)Lost / Sent, 0, 1);
}

/// <summary>
/// A path's measurements: active probes (RTT, jitter) and the peer's receive counts echoed in probe replies (loss of
/// everything this host sent). Used under the path's gate.
/// </summary>
/// <remarks>
/// Capacity, whatever the stacks in use deliver: every <see cref="TrainEveryNanoseconds"/> the path sends a train of
/// <see cref="TrainMemberLength"/>-byte datagrams back to back (payload type 6; every other one a byte shorter, see
/// <see cref="TrainMemberLengthOf"/>). They leave faster than any bottleneck drains them, so they arrive spaced by it:
/// the receiver takes the bytes of the members after the first over the time from the first's arrival to the last's as
/// the bottleneck's rate, and answers it in its next probe replies (which grow to <see cref="TrainReplyLength"/> bytes
/// only while the peer sends trains, so an older agent's 32-byte replies and probes are still understood both ways).
/// Traffic queued with the train spaces it further: under load the train measures what is left, and the path's
/// conditions take the larger of that and what the path delivered. A train is sized to last about
/// <see cref="TrainTargetMs"/> ms at the last rate measured (4 to 48 members; 8 before any): long enough to span the
/// receive thread's batching, short enough to cost a slow link little (on a 2 Mbit/s link 4 members are 19 ms, once
/// every 5 s) — and the shortest where the probes say that rate no longer holds (their round trip more than doubled, or
/// unanswered). A train whose members all arrived too close together to time is answered with a rate of 0 and followed
/// by the longest. Once a rate is known, a train that got no answer is followed by one a quarter of its size, and the
/// shortest by the longest only on a link fast enough that the shortest is too short to time, the trains after an
/// unanswered one a second apart (a report interval if longer; at most three in a row; where the rate no longer holds,
/// twice the period after the last instead, up to a minute); a rate more than twice off the last is confirmed by two
/// more as far apart (at most once a period). Trains take at most a twentieth of the path at the rate last measured
/// (<see cref="MaxTrainShare"/>): on a slower link than about 150 kbit/s they come further apart than a period (at most a
/// minute).
/// </remarks>
internal sealed class PathMonitor
{
    public const int ProbeLength = 16;
    public const int ReplyLength = 32;

    /// <summary>A reply that also carries the last train's measured rate: train id (64 bits), rate in kbit/s (64 bits; 0: it arrived too close together to time).</summary>
    public const int TrainReplyLength = 48;

    /// <summary>A train member: train id (64 bits), member index and member count (16 bits each), padding.</summary>
    public const int TrainMemberLength = 1200;

    public const int TrainHeaderLength = 12;
    public const int MinTrainMembers = 4;
    public const int MaxTrainMembers = 48;
    public const double TrainTargetMs = 5;
    public static readonly long TrainEveryNanoseconds = 5_000_000_000;

    private long _trainId;
    private long _nextTrainAt;
    private double _trainCapacityMbps = double.NaN;
    private double _intervalCapacityMbps = double.NaN;

    // The receiving end's view of the peer's current train.
    private long _inTrainId;
    private int _inTrainMembers;
    private long _inTrainFirstAt;
    private long _inTrainLastAt;
    private long _inTrainFirstArrival;
    private long _inTrainBytes;
    private ulong _inTrainSeen;
    private long _answeredTrainId;
    private long _answeredTrainKbps;
    private readonly List<double> _rtts = [];
    private long _probeNumber;
    private long _probesSent;
    private long _probesAnswered;
    private double _jitter;
    private double _lastRtt = double.NaN;
    private long _peerReceived;
    private long _peerExpected;
    private long _reportedReceived;
    private long _reportedExpected;
    private long _reportedProbes;
    private long _reportedAnswered;
    private long _reportedBytes;
    private long _lastTake = -1;

    public PathMonitor()
    {
        // Numbers start anywhere: a reply to a probe of an earlier run of this agent matches nothing outstanding.
        _probeNumber = _highestAnswered = Random.Shared.NextInt64(1, long.MaxValue / 2);
        _trainId = _highestTrainAnswered = Random.Shared.NextInt64(1, long.MaxValue / 2);
    }

    /// <summary>The highest train whose rate was taken: an answer counts only for a train sent since.</summary>
    private long _highestTrainAnswered;

    /// <summary>How many members the next train has, or 0 when none is due at <paramref name="now"/> (the first comes at a random point of the first period).</summary>
    public int TrainDue(long now)
    {
        if (_nextTrainAt == 0)
        {
            // The first within one period, at a random point: an agent starting with a thousand paths must not send a
            // thousand trains in one round.
            _nextTrainAt = now + (long)(TrainEveryNanoseconds * Random.Shared.NextDouble());
        }
        if (now < _nextTrainAt)
        {
            return 0;
        }
        // Before any rate is known, a short train (a shallow buffer must not drop the tail of a long one, whose losses
        // would count as the path's); then one that lasts about TrainTargetMs at the rate last measured, while that rate
        // still holds (RateHolds): where the probes say the path changed, the shortest, or a train sized for a link the
        // path no longer has floods the one it has (the learning benchmark's 150 Mbit/s link turned into Verizon's EVDO
        // trace, about 36 kbit/s one way: 48 members, 60 KB, held every answer and acknowledgement behind them for 13 s).
        // Once a rate is known, a train that got no answer (fewer than half its members arrived, or too close together to
        // time) is followed by one of another size: a quarter of a long one, down to the shortest, then — only on a link
        // the last rate says is fast enough that the shortest arrives too close together to time — the longest again;
        // one the peer answered as too close together to time (rate 0), by the longest whatever the last rate. A
        // link that slowed under load drops most of a train sized for its old rate (the learning benchmark's 300 → 13
        // Mbit/s link with a 37-packet queue that a CUBIC VM kept full: 48 members, none answered, and the path's capacity
        // stayed 300 for the whole phase). A peer that never answered one (an agent that predates trains) keeps getting
        // short ones.
        var unanswered = _lastTrainMembers > 0 && _highestTrainAnswered < _trainId && double.IsFinite(_trainCapacityMbps);
        var holds = RateHolds(now);
        var tooClose = _tooClose;
        _tooClose = false;
        _lastTrainMembers = !double.IsFinite(_trainCapacityMbps) ? 2 * MinTrainMembers
            : tooClose ? MaxTrainMembers
            : !holds ? MinTrainMembers
            : unanswered ? _lastTrainMembers > MinTrainMembers ? Math.Max(MinTrainMembers, _lastTrainMembers / 4)
                : TrainSeconds(MinTrainMembers, _trainCapacityMbps) < TooShortToTimeSeconds ? MaxTrainMembers : MinTrainMembers
            : (int)Math.Clamp(_trainCapacityMbps * 1e6 * TrainTargetMs / 1000 / (TrainMemberLength * 8), MinTrainMembers, MaxTrainMembers);
        // The next a second after one that follows an unanswered train (at most QuickTrains in a row), or one that found
        // a rate more than twice off the one before it (the path's conditions take a change of the bottleneck from
        // three trains in a row); else in a period, spread over ±10 % so the paths of a host do not send theirs together.
        // Where the rate no longer holds, unanswered trains back off instead, each twice the period after the last (at
        // most MaxTrainBackoffNanoseconds). And a train takes at most 1/MaxTrainShare of the path at the rate last measured:
        // on a slow link they come further apart.
        _unansweredInRow = unanswered ? _unansweredInRow + 1 : 0;
        var quick = holds && ((unanswered && _unansweredInRow <= QuickTrains) || _confirming > 1);
        _confirming = Math.Max(0, _confirming - 1);
        var period = quick ? QuickSpacing
            : unanswered && !holds ? Math.Min(TrainEveryNanoseconds << Math.Min(_unansweredInRow, 8), MaxTrainBackoffNanoseconds)
            : (long)(TrainEveryNanoseconds * (0.9 + (0.2 * Random.Shared.NextDouble())));
        if (double.IsFinite(_trainCapacityMbps))
        {
            period = Math.Max(period, Budget(_lastTrainMembers, _trainCapacityMbps));
        }
        _nextTrainAt = now + period;
        return _lastTrainMembers;
    }

    /// <summary>How far apart trains of <paramref name="members"/> must be to take at most 1/<see cref="MaxTrainShare"/> of a
    /// path at <paramref name="mbps"/> (ns), and never more than <see cref="MaxTrainBackoffNanoseconds"/>: a rate measured
    /// wrong (one member held up on the underlay) is measured again within a minute.</summary>
    private static long Budget(int members, double mbps) =>
        (long)Math.Min(MaxTrainShare * TrainSeconds(members, mbps) * 1e9, MaxTrainBackoffNanoseconds);

    // The last train was answered as too close together to time (see OnTrainMember).
    private bool _tooClose;

    // The last probes' round trips (ms), a ring: the least of them says whether the rate still holds.
    private readonly double[] _recentRtts = [double.NaN, double.NaN, double.NaN, double.NaN, double.NaN];
    private int _recentRttNext;

    /// <summary>A train's members take at most one part in this many of the path's time at the rate last measured.</summary>
    public const int MaxTrainShare = 20;

    /// <summary>The longest wait between trains that go unanswered on a path whose rate no longer holds.</summary>
    public static readonly long MaxTrainBackoffNanoseconds = 60_000_000_000;

    /// <summary>A train that spans less than this at the rate last measured may arrive too close together to time (the
    /// receiver needs 100 µs between its first and last member, and receives in batches).</summary>
    private const double TooShortToTimeSeconds = 0.001;

    private static double TrainSeconds(int members, double mbps) => members * (double)TrainMemberLength * 8 / (mbps * 1e6);

    /// <summary>
    /// Whether the rate the last answered train measured still describes the path: the probes answer (none waits more
    /// than a second, or four times the round trip the rate was taken at), and the least of their
    /// last five round trips is at most twice that one's and 2 ms (the least: one probe held up by a busy host or a
    /// burst of jitter is no change of the link). A link that slowed shows so in the probes within a few of them, long
    /// before a train could. Where the RTT rose for good on a fast link (a new route, a queue a VM keeps full), the
    /// shortest train arrives too close together to time and is answered so, and the longest that follows it measures
    /// the link and takes its round trip as the new reference.
    /// </summary>
    private bool RateHolds(long now)
    {
        var reference = _trainRttMs;
        if (!double.IsFinite(reference))
        {
            return true;
        }
        var waiting = _unansweredSince > 0 && now - _unansweredSince > Math.Max(1e9, 4 * reference * 1e6);
        var least = double.NaN;
        foreach (var rtt in _recentRtts)
        {
            least = double.IsNaN(least) || rtt < least ? rtt : least;
        }
        return !waiting && !(least > (2 * reference) + 2);
    }

    // The probes' round trip when the last rate was taken (NaN: none taken), and since when a probe has been waiting for
    // an answer (0: none has, since the last reply).
    private double _trainRttMs = double.NaN;
    private long _unansweredSince;

    /// <summary>The least time between quick trains (see <see cref="TrainDue"/>).</summary>
    public static readonly long QuickTrainNanoseconds = 1_000_000_000;

    /// <summary>
    /// Quick trains come a tenth more than a report interval apart, and at least <see cref="QuickTrainNanoseconds"/>:
    /// each report carries the last rate taken, and the control plane counts three trains in three reports.
    /// </summary>
    private long QuickSpacing => Math.Max(QuickTrainNanoseconds, _takeInterval + (_takeInterval / 10));

    // The time between the last two reports (Take), and when a changed rate was last confirmed.
    private long _takeInterval;
    private long _confirmedAt;

    /// <summary>The most trains in a row that come a second apart.</summary>
    public const int QuickTrains = 3;

    // How many members the last train had (0: none sent yet); how many trains in a row got no answer; how many trains
    // are still to confirm a rate that changed (the first comes as the rate is taken, the next a second later).
    private int _lastTrainMembers;
    private int _unansweredInRow;
    private int _confirming;

    /// <summary>
    /// A member's length: 1,200 bytes, one less for every other member, so a receiver's UDP GRO (which coalesces only
    /// segments of one size) cannot hand many members over at once with one arrival time.
    /// </summary>
    public static int TrainMemberLengthOf(int index) => TrainMemberLength - (index % 2);

    /// <summary>Writes member <paramref name="index"/> of <paramref name="count"/> of a new train (index 0 starts it).</summary>
    public void WriteTrainMember(Span<byte> buffer, int index, int count)
    {
        if (index == 0)
        {
            _trainId++;
        }
        buffer[..TrainMemberLengthOf(index)].Clear();
        BinaryPrimitives.WriteInt64BigEndian(buffer, _trainId);
        BinaryPrimitives.WriteUInt16BigEndian(buffer[8..], (ushort)index);
        BinaryPrimitives.WriteUInt16BigEndian(buffer[10..], (ushort)count);
    }

    /// <summary>
    /// A member of the peer's train arrived. Members of an older train than the one under way are ignored; a new id
    /// starts a new one. Returns false for a malformed member.
    /// </summary>
    /// <param name="payload">The member's payload (after the overlay header).</param>
    /// <param name="length">Its datagram's bytes.</param>
    /// <param name="now">The path's clock.</param>
    /// <param name="arrival">When the host received it (<see cref="Underlay.IUnderlay.Arrival"/>), or 0: the members are spaced by
    /// this when every member of the train has one, else by <paramref name="now"/>.</param>
    public bool OnTrainMember(ReadOnlySpan<byte> payload, int length, long now, long arrival = 0)
    {
        if (payload.Length < TrainHeaderLength)
        {
            return false;
        }
        var id = BinaryPrimitives.ReadInt64BigEndian(payload);
        int index = BinaryPrimitives.ReadUInt16BigEndian(payload[8..]);
        int count = BinaryPrimitives.ReadUInt16BigEndian(payload[10..]);
        if (count is < 2 or > MaxTrainMembers || index >= count)
        {
            return false;
        }
        if (id != _inTrainId)
        {
            if (id < _inTrainId && _inTrainId - id < 1_000_000)
            {
                return true;
            }
            (_inTrainId, _inTrainMembers, _inTrainFirstAt, _inTrainLastAt, _inTrainBytes, _inTrainSeen) = (id, 1, now, now, 0, 1UL << index);
            _inTrainFirstArrival = arrival;
            return true;
        }
        if ((_inTrainSeen & (1UL << index)) != 0)
        {
            // A member seen already (a duplicate, or a replay of an authentic one): more bytes in the same time would make
            // the path look faster than it is.
            return true;
        }
        _inTrainSeen |= 1UL << index;
        _inTrainMembers++;
        _inTrainLastAt = now;
        _inTrainBytes += length;
        // A member without the host's receive time makes the whole train timed by the path's clock.
        _inTrainFirstArrival = arrival > 0 && _inTrainFirstArrival > 0 ? _inTrainFirstArrival : 0;
        var spread = _inTrainFirstArrival > 0 ? arrival - _inTrainFirstArrival : _inTrainLastAt - _inTrainFirstAt;
        // Half the members at least, spread over 100 µs at least (one receive batch, or one coalesced receive, says nothing about the link).
        if (_inTrainMembers >= count / 2 && spread >= 100_000)
        {
            (_answeredTrainId, _answeredTrainKbps, _answeredAt) = (id, _inTrainBytes * 8 * 1_000_000 / spread, now);
        }
        else if (_inTrainMembers == count)
        {
            // Every member came, too close together to time (a link faster than the train is long): answered with no
            // rate (0), which tells the sender to send a longer one. An agent that predates it ignores a 0.
            (_answeredTrainId, _answeredTrainKbps, _answeredAt) = (id, 0, now);
        }
        return true;
    }

    private long _answeredAt;

    /// <summary>
    /// Whether this end's probe replies carry the peer's last train: only while the peer sends them (one measured in the
    /// last three periods). A peer replaced by an agent that predates trains (a rollback) gets 32-byte replies again
    /// within 15 s; it would drop longer ones and see every probe lost.
    /// </summary>
    public bool AnswersTrains(long now) => _answeredTrainId != 0 && now - _answeredAt < 3 * TrainEveryNanoseconds;

    /// <summary>How long this end's probe replies are at <paramref name="now"/>.</summary>
    public int ReplyLengthAt(long now) => AnswersTrains(now) ? TrainReplyLength : ReplyLength;

    /// <summary>A probe's answer, <paramref name="length"/> bytes (<see cref="ReplyLengthAt"/>): with the peer's last train measured when it is long enough.</summary>
    public void Answer(Span<byte> buffer, int length, ReadOnlySpan<byte> probe, long received, long expected)
    {
        WriteReply(buffer, probe, received, expected);
        if (length == TrainReplyLength)
        {
            BinaryPrimitives.WriteInt64BigEndian(buffer[32..], _answeredTrainId);
            BinaryPrimitives.WriteInt64BigEndian(buffer[40..], _answeredTrainKbps);
        }
    }

    /// <summary>The highest probe number answered: a reply counts only for a probe sent since, and only once.</summary>
    private long _highestAnswered;

    public void WriteProbe(Span<byte> buffer, long now)
    {
        BinaryPrimitives.WriteInt64BigEndian(buffer, ++_probeNumber);
        BinaryPrimitives.WriteInt64BigEndian(buffer[8..], now);
        _probesSent++;
        _unansweredSince = _unansweredSince == 0 ? now : _unansweredSince;
    }

    public static void WriteReply(Span<byte> buffer, ReadOnlySpan<byte> probe, long received, long expected)
    {
        probe.CopyTo(buffer);
        BinaryPrimitives.WriteInt64BigEndian(buffer[16..], received);
        BinaryPrimitives.WriteInt64BigEndian(buffer[24..], expected);
    }

    public void OnReply(ReadOnlySpan<byte> reply, long now)
    {
        if (reply.Length is not (ReplyLength or TrainReplyLength))
        {
            return;
        }
        var number = BinaryPrimitives.ReadInt64BigEndian(reply);
        var sent = BinaryPrimitives.ReadInt64BigEndian(reply[8..]);
        var rtt = (now - sent) / 1e6;
        if (number <= _highestAnswered || number > _probeNumber || rtt < 0 || rtt > 60_000)
        {
            // Not a probe outstanding here: a replay, a duplicate, or a reply overtaken by a later one.
            return;
        }
        _highestAnswered = number;
        _probesAnswered++;
        // Later probes may still wait; this one says the path answered at `now`.
        _unansweredSince = number == _probeNumber ? 0 : now;
        _rtts.Add(rtt);
        // RFC 3550's interarrival jitter, over round trips.
        if (!double.IsNaN(_lastRtt))
        {
            _jitter += (Math.Abs(rtt - _lastRtt) - _jitter) / 16;
        }
        _lastRtt = rtt;
        _recentRtts[_recentRttNext++ % _recentRtts.Length] = rtt;
        // Cumulative counts: a reordered older reply must not move them back.
        _peerReceived = Math.Max(_peerReceived, BinaryPrimitives.ReadInt64BigEndian(reply[16..]));
        _peerExpected = Math.Max(_peerExpected, BinaryPrimitives.ReadInt64BigEndian(reply[24..]));
        if (reply.Length == TrainReplyLength)
        {
            // A train this host sent, newer than the last taken; at most 100 Gbit/s.
            var train = BinaryPrimitives.ReadInt64BigEndian(reply[32..]);
            var kbps = BinaryPrimitives.ReadInt64BigEndian(reply[40..]);
            if (train > _highestTrainAnswered && train <= _trainId && kbps == 0)
            {
                // It arrived too close together to time: the next is the longest, a second on where this one was shorter
                // (the link is fast, whatever the rate last measured said; one too fast for the longest keeps its period).
                (_highestTrainAnswered, _tooClose) = (train, true);
                _nextTrainAt = _lastTrainMembers < MaxTrainMembers ? Math.Min(_nextTrainAt, now + QuickSpacing) : _nextTrainAt;
            }
            else if (train > _highestTrainAnswered && train <= _trainId && kbps is > 0 and <= 100_000_000)
            {
                _highestTrainAnswered = train;
                var mbps = kbps / 1000.0;
                // At most one confirmation a period: a rate that keeps flipping (a noisy bottleneck, or members an
                // attacker on the underlay delays) must not keep trains coming every second.
                if (double.IsFinite(_trainCapacityMbps) && Math.Abs(Math.Log2(mbps / _trainCapacityMbps)) > 1
                    && _confirming == 0 && (_confirmedAt == 0 || now - _confirmedAt >= TrainEveryNanoseconds))
                {
                    (_confirming, _confirmedAt) = (QuickTrains - 1, now);
                    _nextTrainAt = Math.Min(_nextTrainAt, now + Math.Max(QuickSpacing, Budget(_lastTrainMembers, mbps)));
                }
                (_trainCapacityMbps, _intervalCapacityMbps, _trainRttMs) = (mbps, mbps, rtt);
            }
        }
    }

    /// <summary>At most one "not encrypted" event per second per path.</summary>
    public RateLimit UnencryptedReports { get; } = new(TimeSpan.FromSeconds(1));

    /// <summary>How often the path asks the switch for a slot that encrypts (frames to a confidential VM found none).</summary>
    public RateLimit EncryptingSlotRequests { get; } = new(TimeSpan.FromSeconds(1));

    /// <summary>At most one "unknown slot" answer per 100 ms per path: a burst of stray datagrams must not become a burst of replies.</summary>
    public RateLimit UnknownReports { get; } = new(TimeSpan.FromMilliseconds(100));

    /// <summary>The path's borrowed bytes (<see cref="PathMeasurement.BorrowedBytes"/>) at the last <see cref="Take"/>.</summary>
    private long _borrowedBytes;

    public PathMeasurement Take(long now, long bytesSent, List<VmInterval> vms, long borrowedBytes = 0)
    {
        var interval = _lastTake < 0 ? TimeSpan.Zero : TimeSpan.FromTicks((now - _lastTake) / 100);
        _takeInterval = _lastTake < 0 ? 0 : now - _lastTake;
        _lastTake = now;
        _rtts.Sort();
        var p50 = _rtts.Count == 0 ? double.NaN : _rtts[(_rtts.Count - 1) / 2];
        var p99 = _rtts.Count == 0 ? double.NaN : _rtts[(int)Math.Ceiling(0.99 * _rtts.Count) - 1];
        _rtts.Clear();
        var expected = _peerExpected - _reportedExpected;
        var received = _peerReceived - _reportedReceived;
        var probes = _probesSent - _reportedProbes;
        var answered = _probesAnswered - _reportedAnswered;
        (_reportedExpected, _reportedReceived, _reportedProbes, _reportedAnswered) = (_peerExpected, _peerReceived, _probesSent, _probesAnswered);
        long sent;
        long lost;
        if (expected > 0)
        {
            (sent, lost) = (expected, Math.Max(0, expected - received));
        }
        else
        {
            // No reply brought counts: the probes themselves are the evidence (all lost when none came back).
            (sent, lost) = (probes, probes - answered);
        }
        var bytes = bytesSent - _reportedBytes;
        _reportedBytes = bytesSent;
        var capacity = _intervalCapacityMbps;
        _intervalCapacityMbps = double.NaN;
        var borrowed = borrowedBytes - _borrowedBytes;
        _borrowedBytes = borrowedBytes;
        return new PathMeasurement(p50, p99, _jitter, sent, lost, probes, answered, bytes, interval, vms, capacity) { BorrowedBytes = borrowed };
    }
}
