using System.Buffers.Binary;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>
/// What a VM's TCP traffic on one path got during an interval, measured passively from the inner headers the switch
/// carries: new bytes acknowledged (goodput, both directions), bytes the VM sent again (what the stack did not recover,
/// as the VM's TCP saw it), the VM-experienced RTT (a data segment the VM sent to the ACK that covers it, seen at this
/// host's switch; Karn's rule: never over a retransmission), the request/response time (a VM's last new segment of a
/// request to the first segment of the answer: a request sent again does not restart the clock, so a lost request costs
/// the VM its retransmission timeout here too; a request still unanswered when the interval ends counts as at least that
/// late, see <see cref="TcpMeter.Take"/>), and the traffic's shape. Percentiles are NaN without samples.
/// </summary>
public sealed record TcpInterval(
    long AckedBytes,
    long SentDataBytes,
    long RetransmittedBytes,
    double RttP50Ms,
    double RttP99Ms,
    int RttSamples,
    double ResponseP50Ms,
    double ResponseP99Ms,
    int Responses,
    int Flows,
    long Packets)
{
    public static readonly TcpInterval Empty = new(0, 0, 0, double.NaN, double.NaN, 0, double.NaN, double.NaN, 0, 0, 0);

    /// <summary>
    /// The p99 of the delay the VM felt over the trailing window on the same stack (<see cref="LatencyWindow"/>): its
    /// answer times (and each request still waiting, once) where answers are at least 1 % as many as RTT samples, else its
    /// RTTs; NaN without samples, as in the interval the stack changed in (what it saw was the previous stack's). What a
    /// latency VM is judged on: a tail that shows in one second of fifteen is the p99 a tenant sees over minutes, and a
    /// mean of per-second scores hides it. Never below the median of the interval's own answers (with the requests still
    /// waiting): where the link just slowed, the window's many quick answers would hide the few slow ones for seconds. Few
    /// samples after a change of stack read the tail low (the largest of a few is below the p99 of many).
    /// </summary>
    public double TailP99Ms { get; init; } = double.NaN;

    /// <summary>bulk (data mostly one way), request-response (turns, small answers), or none (no TCP seen).</summary>
    public string Shape => Flows == 0 ? "none" : Responses > 0 && Responses * 16_384L >= AckedBytes ? "request-response" : "bulk";
}

/// <summary>
/// Passive TCP measurement of one VM on one path (the TCP analogue of tcptrace at the switch). Egress frames come from
/// the VM, ingress frames go to it. Not thread-safe: the owning path calls it under its gate. Nothing is allocated per
/// packet once a flow is known; a flow is forgotten after a FIN or RST, after a minute without packets, or when
/// <see cref="MaxFlows"/> are tracked (the longest idle goes).
/// </summary>
public sealed class TcpMeter
{
    public const int MaxFlows = 1024;

    private const int MaxSamples = 512;

    /// <summary>More new data than this since the last answer is an upload, not a request awaiting one.</summary>
    private const long MaxRequestBytes = 16_384;

    /// <summary>An unanswered request is counted as late for at most this long (a conversation whose end this host missed).</summary>
    private const double MaxCensoredMs = 10_000;
    private const long IdleNanoseconds = 60_000_000_000;

    private readonly Dictionary<FlowKey, Flow> _flows = [];
    private readonly List<double> _rtt = [];
    private readonly List<double> _responses = [];
    private LatencyWindow? _rttWindow;
    private LatencyWindow? _responseWindow;
    private string? _windowStack;
    // Samples of requests (and timed segments) sent before this belong to the previous stack: kept out of the window.
    private long _windowStart = long.MinValue;
    private readonly List<double> _waiting = [];
    private long _acked;
    private long _sentData;
    private long _retransmitted;
    private long _packets;
    // Flows seen this interval: each flow remembers the interval it was last counted in (no per-packet set).
    private int _interval;
    private int _activeFlows;

    /// <summary>A frame the VM sent.</summary>
    public void OnEgress(ReadOnlySpan<byte> frame, long now)
    {
        if (!TryParse(frame, egress: true, out var key, out var tcp) || Stray(key, tcp))
        {
            return;
        }
        var flow = FlowOf(key, now);
        var seq = tcp.SequenceNumber;
        var length = tcp.Payload.Length + ((tcp.Flags & (TcpFlags.Syn | TcpFlags.Fin)) != 0 ? 1 : 0);
        if (length > 0)
        {
            var end = seq + (uint)length;
            var fresh = !flow.SentAny || !Before(seq, flow.HighestSent);
            if (!flow.SentAny)
            {
                // A SYN takes a sequence number but carries no data: its acknowledgment is no goodput.
                (flow.SentAny, flow.HighestSent, flow.HighestAckedBySender) = (true, end, (tcp.Flags & TcpFlags.Syn) != 0 ? seq + 1 : seq);
            }
            else if (!fresh)
            {
                flow.RequestResent |= flow.AwaitingAnswer;
                // Sent before: what overlaps what was already sent is a retransmission, and no RTT sample may span it.
                _retransmitted += Before(end, flow.HighestSent) ? length : (long)(flow.HighestSent - seq);
                if (flow.SampleEnd is { } sampled && After(sampled, seq))
                {
                    flow.SampleEnd = null;
                }
            }
            if (After(end, flow.HighestSent))
            {
                flow.HighestSent = end;
            }
            if ((tcp.Flags & TcpFlags.Fin) != 0)
            {
                flow.SentFinEnd = end;
            }
            _sentData += tcp.Payload.Length;
            if (tcp.Payload.Length > 0 && fresh)
            {
                if (flow.SampleEnd is null)
                {
                    (flow.SampleEnd, flow.SampleAt) = (end, now);
                }
                // New request data; a copy of what was sent before leaves the clock where the original started it.
                flow.RequestResent &= flow.AwaitingAnswer;
                (flow.AwaitingAnswer, flow.LastRequestAt) = (true, now);
                flow.RequestBytes += tcp.Payload.Length;
            }
        }
        // The VM acknowledging what it receives: goodput towards the VM.
        if ((tcp.Flags & TcpFlags.Ack) != 0)
        {
            var ack = tcp.AcknowledgmentNumber;
            if (flow.ReceiverAckKnown && After(ack, flow.HighestAckedByVm))
            {
                _acked += ack - flow.HighestAckedByVm - (CoversFin(ack, flow.PeerFinEnd, ref flow.PeerFinAcked) ? 1 : 0);
            }
            if (!flow.ReceiverAckKnown || After(ack, flow.HighestAckedByVm))
            {
                (flow.ReceiverAckKnown, flow.HighestAckedByVm) = (true, ack);
            }
        }
        Close(key, flow, tcp.Flags);
    }

    /// <summary>A frame delivered to the VM.</summary>
    public void OnIngress(ReadOnlySpan<byte> frame, long now)
    {
        if (!TryParse(frame, egress: false, out var key, out var tcp) || Stray(key, tcp))
        {
            return;
        }
        var flow = FlowOf(key, now);
        if ((tcp.Flags & TcpFlags.Fin) != 0)
        {
            flow.PeerFinEnd = tcp.SequenceNumber + (uint)tcp.Payload.Length + 1;
        }
        if (tcp.Payload.Length > 0 && flow.AwaitingAnswer)
        {
            (flow.AwaitingAnswer, flow.Answered, flow.RequestBytes) = (false, true, 0);
            Sample(_responses, (now - flow.LastRequestAt) / 1e6);
            if (flow.LastRequestAt >= _windowStart)
            {
                (_responseWindow ??= new()).Record((now - flow.LastRequestAt) / 1e6);
            }
        }
        if ((tcp.Flags & TcpFlags.Ack) != 0 && flow.SentAny)
        {
            var ack = tcp.AcknowledgmentNumber;
            // Acknowledging what the VM sent: goodput from the VM, and the RTT sample when it covers the timed segment.
            if (After(ack, flow.HighestAckedBySender) && !After(ack, flow.HighestSent))
            {
                _acked += ack - flow.HighestAckedBySender - (CoversFin(ack, flow.SentFinEnd, ref flow.SentFinAcked) ? 1 : 0);
                flow.HighestAckedBySender = ack;
            }
            if (flow.SampleEnd is { } end && !Before(ack, end))
            {
                Sample(_rtt, (now - flow.SampleAt) / 1e6);
                if (flow.SampleAt >= _windowStart)
                {
                    (_rttWindow ??= new()).Record((now - flow.SampleAt) / 1e6);
                }
                flow.SampleEnd = null;
            }
        }
        Close(key, flow, tcp.Flags);
    }

    /// <summary>
    /// What the interval since the last call got; forgets flows idle for a minute. A request stuck in a retransmission
    /// timeout has no answer yet, and an interval that only counted answers would look its best exactly when the VM waits
    /// longest: a request still unanswered counts as one answer as late as its wait so far, when it waits longer than
    /// every answer of the interval — on a request/response flow only (answered before, and at most
    /// <see cref="MaxRequestBytes"/> of new data since: not an upload), while the path holds it (the peer has not
    /// acknowledged it, or the VM sent it again: a request the peer took and has not answered is its application's
    /// time, a long poll or a server's push, not the path's), sent on the stack in use, and for at most
    /// <see cref="MaxCensoredMs"/>; such a flow counts as active, packets or not.
    /// </summary>
    /// <param name="now">The end of the interval.</param>
    /// <param name="stack">The stack the VM's traffic runs on now; when it changes, the trailing window starts again (null: unchanged).</param>
    public TcpInterval Take(long now, string? stack = null)
    {
        var latest = _responses.Count > 0 ? _responses.Max() : 0;
        if (stack is not null && stack != _windowStack)
        {
            // Another stack's tail says nothing about this one's: what the interval just ended saw (mostly before the
            // switch) goes, and so will every answer to a request sent before now.
            (_windowStack, _windowStart, _rttWindow, _responseWindow) = (stack, now, null, null);
        }
        _waiting.Clear();
        foreach (var (key, flow) in _flows)
        {
            if (now - flow.LastSeen > IdleNanoseconds)
            {
                _flows.Remove(key);
            }
            else if (flow.AwaitingAnswer && flow.Answered && flow.RequestBytes <= MaxRequestBytes && flow.LastRequestAt >= _windowStart
                && (Before(flow.HighestAckedBySender, flow.HighestSent) || flow.RequestResent)
                && (now - flow.LastRequestAt) / 1e6 is var waited && waited > latest && waited <= MaxCensoredMs)
            {
                Sample(_responses, waited);
                // A flow waiting for its answer is in use, packets or not: a request stuck in a retransmission timeout
                // (a cellular outage) sends nothing for seconds, and an interval without it would say nothing of the wait.
                if (flow.Interval != _interval)
                {
                    flow.Interval = _interval;
                    _activeFlows++;
                }
                // In the window's percentile once, as it stands now: not recorded, or a request stuck for three intervals
                // would count three times, and its answer a fourth.
                _waiting.Add(waited);
            }
        }
        var tail = Tail();
        _rttWindow = _rttWindow?.Advance();
        _responseWindow = _responseWindow?.Advance();
        var interval = new TcpInterval(_acked, _sentData, _retransmitted, Percentile(_rtt, 0.5), Percentile(_rtt, 0.99), _rtt.Count,
            Percentile(_responses, 0.5), Percentile(_responses, 0.99), _responses.Count, _activeFlows, _packets) { TailP99Ms = tail };
        (_acked, _sentData, _retransmitted, _packets, _activeFlows) = (0, 0, 0, 0, 0);
        _interval++;
        _rtt.Clear();
        _responses.Clear();
        return interval;
    }

    /// <summary>
    /// The window's p99: of the answer times (with the requests still waiting) when answers are at least 1 % as many as
    /// RTT samples — a request/response VM; else of the RTTs — a bulk VM, whose few control exchanges say little. At
    /// least the median of the interval that ends (<see cref="LatencyWindow.IntervalPercentile"/>): the window pools
    /// samples, not seconds, so where the link just slowed, the many quick answers of its last seconds outnumbered the few
    /// slow ones for up to the whole window (the learning benchmark's latency VM: 7 ms for 8 s into a 300-ms cellular
    /// phase, from the 3 ms link's answers before it) — half of this second's answers bound its tail from below.
    /// </summary>
    private double Tail()
    {
        var answers = (_responseWindow?.Count ?? 0) + _waiting.Count;
        if (answers > 0 && answers * 100L >= (_rttWindow?.Count ?? 0))
        {
            var window = _responseWindow ?? LatencyWindow.Empty;
            return AtLeast(window.Percentile(0.99, _waiting), window.IntervalPercentile(0.5, _waiting));
        }
        return _rttWindow is { } rtt ? AtLeast(rtt.Percentile(0.99), rtt.IntervalPercentile(0.5)) : double.NaN;
    }

    private static double AtLeast(double tail, double floor) => double.IsNaN(floor) ? tail : double.IsNaN(tail) ? floor : Math.Max(tail, floor);

    private bool TryParse(ReadOnlySpan<byte> frame, bool egress, out FlowKey key, out TcpSegment tcp)
    {
        key = default;
        tcp = default;
        if (!EthernetFrame.TryCreate(frame, out var eth))
        {
            return false;
        }
        UInt128 source, destination;
        ReadOnlySpan<byte> transport;
        switch (eth.EtherType)
        {
            case EtherTypes.IPv4 when IPv4Packet.TryCreate(eth.Payload, out var ip) && ip.Protocol == IPProtocols.Tcp && ip.FragmentOffset == 0:
                source = BinaryPrimitives.ReadUInt32BigEndian(eth.Payload[12..]);
                destination = BinaryPrimitives.ReadUInt32BigEndian(eth.Payload[16..]);
                transport = ip.Payload;
                break;
            case EtherTypes.IPv6 when IPv6Packet.TryCreate(eth.Payload, out var ip6) && ip6.UpperLayerProtocol == IPProtocols.Tcp:
                source = BinaryPrimitives.ReadUInt128BigEndian(eth.Payload[8..]);
                destination = BinaryPrimitives.ReadUInt128BigEndian(eth.Payload[24..]);
                transport = ip6.UpperLayerPayload;
                break;
            default:
                return false;
        }
        if (!TcpSegment.TryCreate(transport, out tcp))
        {
            return false;
        }
        _packets++;
        key = egress
            ? new FlowKey(source, destination, tcp.SourcePort, tcp.DestinationPort)
            : new FlowKey(destination, source, tcp.DestinationPort, tcp.SourcePort);
        return true;
    }

    /// <summary>A reset for a flow already closed (or never seen) opens no flow.</summary>
    private bool Stray(FlowKey key, TcpSegment tcp) => (tcp.Flags & TcpFlags.Rst) != 0 && !_flows.ContainsKey(key);

    private Flow FlowOf(FlowKey key, long now)
    {
        if (!_flows.TryGetValue(key, out var flow))
        {
            if (_flows.Count >= MaxFlows)
            {
                _flows.Remove(_flows.MinBy(f => f.Value.LastSeen).Key);
            }
            _flows[key] = flow = new Flow();
        }
        flow.LastSeen = now;
        if (flow.Interval != _interval)
        {
            flow.Interval = _interval;
            _activeFlows++;
        }
        return flow;
    }

    private void Close(FlowKey key, Flow flow, TcpFlags flags)
    {
        if ((flags & TcpFlags.Rst) != 0 || ((flags & TcpFlags.Fin) != 0 && flow.FinSeen))
        {
            _flows.Remove(key);
        }
        else if ((flags & TcpFlags.Fin) != 0)
        {
            flow.FinSeen = true;
        }
    }

    private static void Sample(List<double> samples, double value)
    {
        if (samples.Count < MaxSamples)
        {
            samples.Add(value);
        }
    }

    private static double Percentile(List<double> samples, double p)
    {
        if (samples.Count == 0)
        {
            return double.NaN;
        }
        samples.Sort();
        return samples[Math.Min(samples.Count - 1, (int)Math.Floor(p * samples.Count))];
    }

    /// <summary>True once, for the acknowledgment that first covers a FIN (which takes a sequence number, not data).</summary>
    private static bool CoversFin(uint ack, uint? finEnd, ref bool counted)
    {
        if (counted || finEnd is not { } end || Before(ack, end))
        {
            return false;
        }
        counted = true;
        return true;
    }

    // Sequence numbers wrap: compare them as RFC 1982 serial numbers.
    private static bool Before(uint a, uint b) => (int)(a - b) < 0;

    private static bool After(uint a, uint b) => (int)(a - b) > 0;

    /// <summary>A flow from the VM's side: its address and port, the peer's.</summary>
    private readonly record struct FlowKey(UInt128 Local, UInt128 Remote, ushort LocalPort, ushort RemotePort);

    private sealed class Flow
    {
        public long LastSeen;
        // The interval this flow was last counted in; a new flow has been counted in none.
        public int Interval = -1;
        public uint? SentFinEnd;
        public bool SentFinAcked;
        public uint? PeerFinEnd;
        public bool PeerFinAcked;
        public bool SentAny;
        public uint HighestSent;
        public uint HighestAckedBySender;
        public bool ReceiverAckKnown;
        public uint HighestAckedByVm;
        public uint? SampleEnd;
        public long SampleAt;
        public bool AwaitingAnswer;
        public bool Answered;
        public long RequestBytes;
        public long LastRequestAt;
        // The VM sent part of the request it awaits an answer to again.
        public bool RequestResent;
        public bool FinSeen;
    }
}

/// <summary>
/// Delay samples of the last <see cref="Intervals"/> intervals (reports: 15 s at the agent's default of one a second),
/// pooled for their percentiles: a histogram per interval with four buckets per doubling (a value is read back within
/// 9.1 % of itself: 2^⅛) from 1/16 ms to 65 s, so its memory is fixed (<see cref="Intervals"/> × <see cref="Buckets"/>
/// counts, 2.4 KB) however many samples come, and every sample of an interval counts, not only its first few hundred.
/// </summary>
public sealed class LatencyWindow
{
    public const int Intervals = 15;

    /// <summary>A window with nothing in it (never recorded into).</summary>
    public static readonly LatencyWindow Empty = new();

    private const int Buckets = 80;
    private const double SmallestMs = 1 / 16.0;

    private readonly ushort[,] _counts = new ushort[Intervals, Buckets];
    private readonly int[] _totals = new int[Intervals];
    private int _current;

    /// <summary>Samples in the window.</summary>
    public int Count => _totals.Sum();

    /// <summary>A sample (milliseconds) of the interval under way.</summary>
    public void Record(double ms)
    {
        ref var count = ref _counts[_current, BucketOf(ms)];
        if (count < ushort.MaxValue)
        {
            count++;
            _totals[_current]++;
        }
    }

    /// <summary>Ends the interval under way and forgets the oldest; returns the window, or null once nothing is left in it
    /// (an idle VM holds no histogram).</summary>
    public LatencyWindow? Advance()
    {
        _current = (_current + 1) % Intervals;
        for (var b = 0; b < Buckets; b++)
        {
            _counts[_current, b] = 0;
        }
        _totals[_current] = 0;
        return Count > 0 ? this : null;
    }

    /// <summary>
    /// The pooled percentile (the sample at rank ⌊p·n⌋, as <see cref="TcpMeter"/> takes an interval's) of the window and
    /// <paramref name="also"/> (values counted once, not recorded); NaN when both are empty.
    /// </summary>
    public double Percentile(double p, IReadOnlyList<double>? also = null) => Ranked(p, also, intervalOnly: false);

    /// <summary>
    /// The percentile (as <see cref="Percentile"/> takes it) of the interval under way alone, with <paramref name="also"/>;
    /// NaN when both are empty.
    /// </summary>
    public double IntervalPercentile(double p, IReadOnlyList<double>? also = null) => Ranked(p, also, intervalOnly: true);

    private double Ranked(double p, IReadOnlyList<double>? also, bool intervalOnly)
    {
        var extra = new int[Buckets];
        foreach (var ms in also ?? [])
        {
            extra[BucketOf(ms)]++;
        }
        var count = (intervalOnly ? _totals[_current] : Count) + (also?.Count ?? 0);
        if (count == 0)
        {
            return double.NaN;
        }
        var rank = Math.Min(count - 1, (int)Math.Floor(p * count));
        for (var b = 0; b < Buckets; b++)
        {
            rank -= extra[b];
            for (var i = 0; i < Intervals; i++)
            {
                rank -= !intervalOnly || i == _current ? _counts[i, b] : 0;
            }
            if (rank < 0)
            {
                // The bucket's geometric middle.
                return SmallestMs * Math.Pow(2, (b + 0.5) / 4);
            }
        }
        return SmallestMs * Math.Pow(2, Buckets / 4.0);
    }

    private static int BucketOf(double ms) =>
        ms <= SmallestMs || double.IsNaN(ms) ? 0 : Math.Min(Buckets - 1, (int)(Math.Log2(ms / SmallestMs) * 4));
}
