using System.Buffers.Binary;
using Fabric.Agent.Switching;
using Fabric.Testing;
using Fabric.Wire;

namespace Fabric.Agent.Tests;

/// <summary>
/// The passive TCP meter against a real capture whose truth can be read off it (../shared/testdata/pcaps,
/// ppp__one_tcp_stream_fin_rst_close_packet.pcap: a MySQL client at 192.168.221.130 talking to 172.16.0.112:3306 —
/// handshake, a 53-byte request answered by 78 bytes, a 182-byte request, then FIN and RSTs). The client is the VM: its
/// frames are egress, the server's ingress, at the capture's own timestamps.
/// </summary>
public sealed class TcpMeterTests
{
    private static readonly byte[] ClientMac = [0x00, 0x0c, 0x29, 0x8c, 0x42, 0x06];

    private static List<CaptureRecord> Capture()
    {
        using var reader = CaptureReader.Open(TestData.PathOf("pcaps", "ppp__one_tcp_stream_fin_rst_close_packet.pcap"));
        return [.. reader.ReadAll()];
    }

    private static bool FromClient(CaptureRecord r) => r.Data.Span[6..12].SequenceEqual(ClientMac);

    private static TcpInterval Feed(IEnumerable<CaptureRecord> records, TcpMeter meter, string? stack = null)
    {
        long last = 0;
        foreach (var r in records)
        {
            if (FromClient(r))
            {
                meter.OnEgress(r.Data.Span, r.TimestampNanoseconds);
            }
            else
            {
                meter.OnIngress(r.Data.Span, r.TimestampNanoseconds);
            }
            last = r.TimestampNanoseconds;
        }
        return meter.Take(last, stack);
    }

    [Fact]
    public void ACapturedConversation_GivesTheGoodputRttAndAnswerTimeItHolds()
    {
        var frames = Capture();
        Assert.Equal(13, frames.Count);
        var interval = Feed(frames, new TcpMeter());

        // Goodput: the 53 + 182 request bytes the server acknowledged and the 78 answer bytes the client did; the SYNs and
        // FINs take sequence numbers but are no data.
        Assert.Equal(53 + 182 + 78, interval.AckedBytes);
        Assert.Equal(53 + 182, interval.SentDataBytes);
        Assert.Equal(0, interval.RetransmittedBytes);
        // RTT seen at the client's switch: frame 4 (.611706) to its ACK, frame 5 (.611917); frame 8 (.614933) to frame 9 (.615168).
        // Percentiles take the sample at rank ⌊p·n⌋ of the sorted samples: of two, p50 and p99 are both the larger.
        Assert.Equal(2, interval.RttSamples);
        Assert.Equal(0.235, interval.RttP50Ms, 3);
        Assert.Equal(0.235, interval.RttP99Ms, 3);
        // The request's last segment (frame 4, .611706) to the answer's first (frame 6, .614003); the second request got none.
        Assert.Equal(1, interval.Responses);
        Assert.Equal(2.297, interval.ResponseP50Ms, 3);
        Assert.Equal(1, interval.Flows);
        Assert.Equal(13, interval.Packets);
        Assert.Equal("request-response", interval.Shape);

        // The next interval starts empty.
        var next = new TcpMeter().Take(0);
        Assert.Equal(TcpInterval.Empty, next);
    }

    [Fact]
    public void ASegmentSentAgain_IsCountedAsRetransmitted_AndGivesNoRttSample()
    {
        var frames = Capture();
        // Frame 8 (the 182-byte request) sent a second time 50 ms later, before the server's ACK (frame 9) arrives.
        var again = frames[7] with { TimestampNanoseconds = frames[7].TimestampNanoseconds + 50_000_000 };
        var ack = frames[8] with { TimestampNanoseconds = again.TimestampNanoseconds + 200_000 };
        List<CaptureRecord> replayed = [.. frames[..8], again, ack, .. frames[9..]];
        var interval = Feed(replayed, new TcpMeter());
        Assert.Equal(182, interval.RetransmittedBytes);
        Assert.Equal(53 + 182 + 182, interval.SentDataBytes);
        Assert.Equal(53 + 182 + 78, interval.AckedBytes);
        // Karn: the retransmitted segment's ACK cannot tell which copy it answers, so only frame 4's sample remains.
        Assert.Equal(1, interval.RttSamples);
        Assert.Equal(0.211, interval.RttP50Ms, 3);
    }

    [Fact]
    public void ARequestSentAgain_DoesNotRestartTheAnswersClock()
    {
        var frames = Capture();
        // Frame 4 (the 53-byte request) lost and sent again after a 200 ms retransmission timeout; everything after it later by as much.
        const long Rto = 200_000_000;
        var again = frames[3] with { TimestampNanoseconds = frames[3].TimestampNanoseconds + Rto };
        List<CaptureRecord> replayed = [.. frames[..4], again, .. frames[4..].Select(f => f with { TimestampNanoseconds = f.TimestampNanoseconds + Rto })];
        var interval = Feed(replayed, new TcpMeter());
        // The VM waited from its first copy: 200 ms of timeout and the 2.297 ms the answer took.
        Assert.Equal(1, interval.Responses);
        Assert.Equal(202.297, interval.ResponseP50Ms, 3);
        Assert.Equal(53, interval.RetransmittedBytes);
    }

    [Fact]
    public void ARequestUnansweredWhenTheIntervalEnds_CountsAsAtLeastThatLate_OnlyOnARequestResponseFlow()
    {
        var frames = Capture();
        // Up to the second request (frame 8), then half a second without its answer.
        var meter = new TcpMeter();
        var sent = Feed(frames[..8], meter);
        Assert.Equal(1, sent.Responses);
        var stuck = meter.Take(frames[7].TimestampNanoseconds + 500_000_000);
        Assert.Equal(1, stuck.Responses);
        Assert.Equal(500, stuck.ResponseP99Ms, 3);
        // An interval in which the waiting VM sent nothing (a retransmission timeout) still counts its flow, so the VM's
        // outcome is reported: a VM that only reported when it sent would go unheard exactly while it is stuck.
        var silent = meter.Take(frames[7].TimestampNanoseconds + 600_000_000);
        Assert.Equal((0, 1, "request-response"), (silent.Packets, silent.Flows, silent.Shape));
        // The VM sends the request again and still waits: counted from the first copy, interval after interval, for at
        // most ten seconds (a conversation whose end this host never saw).
        meter.OnEgress(frames[7].Data.Span, frames[7].TimestampNanoseconds + 700_000_000);
        Assert.Equal(1000, meter.Take(frames[7].TimestampNanoseconds + 1_000_000_000).ResponseP99Ms, 3);
        Assert.Equal(9000, meter.Take(frames[7].TimestampNanoseconds + 9_000_000_000).ResponseP99Ms, 3);
        Assert.Equal(0, meter.Take(frames[7].TimestampNanoseconds + 11_000_000_000).Responses);

        // A request the peer acknowledged (frame 9) and has not answered is its application's time (a long poll), not the
        // path's: not counted, and a silent interval reports no flow.
        var polling = new TcpMeter();
        Feed(frames[..9], polling);
        var idle = polling.Take(frames[8].TimestampNanoseconds + 500_000_000);
        Assert.Equal((0, 0), (idle.Responses, idle.Flows));

        // A flow never answered (the first request in flight) is not a request/response flow yet: nothing is counted.
        var fresh = new TcpMeter();
        Feed(frames[..4], fresh);
        Assert.True(double.IsNaN(fresh.Take(frames[3].TimestampNanoseconds + 500_000_000).ResponseP99Ms));

        // Nor is an upload after an answered request: 100 more segments of new data (18 KB) after frame 8.
        var upload = new TcpMeter();
        Feed(frames[..8], upload);
        var request = frames[7].Data.ToArray();
        var ipHeader = (request[14] & 0x0f) * 4;
        var sequence = BinaryPrimitives.ReadUInt32BigEndian(request.AsSpan(14 + ipHeader + 4));
        for (var i = 1; i <= 100; i++)
        {
            var segment = (byte[])request.Clone();
            BinaryPrimitives.WriteUInt32BigEndian(segment.AsSpan(14 + ipHeader + 4), sequence + (uint)(182 * i));
            upload.OnEgress(segment, frames[7].TimestampNanoseconds + (i * 1_000_000));
        }
        Assert.Equal(0, upload.Take(frames[7].TimestampNanoseconds + 500_000_000).Responses);
    }

    /// <summary>
    /// The tail a latency VM is judged on: its answer times pooled over the trailing window on the stack it runs, kept
    /// through intervals without answers, a request still waiting counted as late as its wait so far; started again when
    /// the stack changes, without what the interval of the change saw or any answer to a request sent before it (another
    /// stack's tail is not this one's).
    /// </summary>
    [Fact]
    public void TheTail_IsPooledOverTheTrailingWindow_AndStartsAgainOnAnotherStack()
    {
        var frames = Capture();
        var meter = new TcpMeter();
        // On std-ipv4 from before the conversation's first frame.
        Assert.True(double.IsNaN(meter.Take(frames[0].TimestampNanoseconds - 1, "std-ipv4").TailP99Ms));
        var first = Feed(frames, meter, "std-ipv4");
        // The one answer, 2.297 ms, read back from the window's histogram within 9.1 %.
        Assert.InRange(first.TailP99Ms, 2.297 / 1.091, 2.297 * 1.091);
        var quiet = meter.Take(frames[^1].TimestampNanoseconds + 1_000_000_000, "std-ipv4");
        Assert.True(double.IsNaN(quiet.ResponseP99Ms));
        Assert.Equal(first.TailP99Ms, quiet.TailP99Ms);
        Assert.True(double.IsNaN(meter.Take(frames[^1].TimestampNanoseconds + 2_000_000_000, "fec").TailP99Ms));

        // A request left waiting is the tail as late as its wait so far, interval after interval, until the stack changes:
        // then it was sent on the other stack, and the new window holds nothing of it.
        var waiting = new TcpMeter();
        waiting.Take(frames[0].TimestampNanoseconds - 1, "std-ipv4");
        Feed(frames[..8], waiting, "std-ipv4");
        Assert.InRange(waiting.Take(frames[7].TimestampNanoseconds + 500_000_000, "std-ipv4").TailP99Ms, 500 / 1.091, 500 * 1.091);
        Assert.InRange(waiting.Take(frames[7].TimestampNanoseconds + 1_000_000_000, "std-ipv4").TailP99Ms, 1000 / 1.091, 1000 * 1.091);
        Assert.True(double.IsNaN(waiting.Take(frames[7].TimestampNanoseconds + 1_500_000_000, "fec").TailP99Ms));
        Assert.True(double.IsNaN(waiting.Take(frames[7].TimestampNanoseconds + 2_000_000_000, "fec").TailP99Ms));

        // Without answers, the tail is the RTT's: a bulk VM feels its round trips.
        var bulk = new TcpMeter();
        bulk.Take(frames[0].TimestampNanoseconds - 1, "fec");
        var interval = Feed(frames[..5], bulk, "fec");
        Assert.Equal(0, interval.Responses);
        Assert.InRange(interval.TailP99Ms, interval.RttP99Ms / 1.091, interval.RttP99Ms * 1.091);
    }

    /// <summary>
    /// Ten seconds of a quick link fill the window with a thousand 2-ms answers; then the link slows and the next second
    /// brings three 300-ms answers. Pooled, those are 3 of 1,003 samples and the window's p99 is still the quick link's;
    /// the tail is at least the median of the second that ends, so the VM is judged on the link it has now. And a VM that
    /// is stuck, no answer and no packet for two seconds, has a tail as late as its wait.
    /// </summary>
    [Fact]
    public void WhereTheLinkJustSlowed_TheTailIsAtLeastTheSecondsMedian_NotTheQuickAnswersOfTheSecondsBefore()
    {
        var frames = Capture();
        var meter = new TcpMeter();
        meter.Take(frames[0].TimestampNanoseconds - 1, "arq-lowlat");
        Feed(frames[..3], meter, "arq-lowlat");
        var (at, exchange) = (frames[3].TimestampNanoseconds, 0);
        TcpInterval quick = TcpInterval.Empty;
        for (var second = 0; second < 10; second++)
        {
            for (var i = 0; i < 100; i++, at += 10_000_000)
            {
                Exchange(meter, frames, exchange++, at, answerAfter: 2_000_000);
            }
            quick = meter.Take(at, "arq-lowlat");
        }
        Assert.Equal(100, quick.Responses);
        Assert.InRange(quick.TailP99Ms, 2 / 1.091, 2 * 1.091);
        for (var i = 0; i < 3; i++, at += 333_000_000)
        {
            Exchange(meter, frames, exchange++, at, answerAfter: 300_000_000);
        }
        var slowed = meter.Take(at, "arq-lowlat");
        Assert.Equal(3, slowed.Responses);
        Assert.InRange(slowed.TailP99Ms, 300 / 1.091, 300 * 1.091);

        // Stuck: a request and nothing back for two seconds, no packet in the second interval.
        meter.OnEgress(Shifted(frames[3], exchange, at).Data.Span, at);
        meter.Take(at + 1_000_000_000, "arq-lowlat");
        var stuck = meter.Take(at + 2_000_000_000, "arq-lowlat");
        Assert.Equal((0, 1), (stuck.Packets, stuck.Flows));
        Assert.InRange(stuck.TailP99Ms, 2000 / 1.091, 2000 * 1.091);
    }

    /// <summary>The capture's first request (frame 4) and its answer (frame 6), as the <paramref name="n"/>-th exchange of the conversation: the request at <paramref name="at"/>, the answer <paramref name="answerAfter"/> ns later.</summary>
    private static void Exchange(TcpMeter meter, List<CaptureRecord> frames, int n, long at, long answerAfter)
    {
        meter.OnEgress(Shifted(frames[3], n, at).Data.Span, at);
        meter.OnIngress(Shifted(frames[5], n, at + answerAfter).Data.Span, at + answerAfter);
    }

    /// <summary>
    /// Frame 4 (the client's 53-byte request) or frame 6 (the server's 78-byte answer) moved <paramref name="n"/> exchanges
    /// on: its sequence number by n of its own payloads, its acknowledgment by n of the other side's.
    /// </summary>
    private static CaptureRecord Shifted(CaptureRecord frame, int n, long at)
    {
        var bytes = frame.Data.ToArray();
        var tcp = 14 + ((bytes[14] & 0x0f) * 4);
        var (own, other) = FromClient(frame) ? (53u, 78u) : (78u, 53u);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(tcp + 4), BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(tcp + 4)) + ((uint)n * own));
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(tcp + 8), BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(tcp + 8)) + ((uint)n * other));
        return frame with { Data = bytes, TimestampNanoseconds = at };
    }

    /// <summary>
    /// One bad second in fifteen (a retransmission timeout's worth of late answers) is the window's p99; it leaves the
    /// window fifteen intervals later, and a window with nothing left in it is let go. Values given beside the window
    /// (requests still waiting) count once, without being recorded.
    /// </summary>
    [Fact]
    public void AWindowsPercentile_PoolsItsIntervals_AndForgetsTheOldest()
    {
        var window = new LatencyWindow();
        void Interval(int fast, int slow)
        {
            for (var i = 0; i < fast; i++)
            {
                window.Record(5);
            }
            for (var i = 0; i < slow; i++)
            {
                window.Record(1000);
            }
            Assert.Same(window, window.Advance());
        }
        Interval(80, 20);
        for (var i = 1; i < LatencyWindow.Intervals - 1; i++)
        {
            Interval(100, 0);
        }
        for (var i = 0; i < 100; i++)
        {
            window.Record(5);
        }
        Assert.Equal(1500, window.Count);
        // 20 of 1500 samples (1.3 %) at a second: the p99 is a second, the median 5 ms.
        Assert.InRange(window.Percentile(0.99), 1000 / 1.091, 1000 * 1.091);
        Assert.InRange(window.Percentile(0.5), 5 / 1.091, 5 * 1.091);
        window.Advance();
        Assert.InRange(window.Percentile(0.99), 5 / 1.091, 5 * 1.091);
        Assert.Equal(1400, window.Count);
        // Three waits beside 1400 samples: not the p99 (rank 1388 of 1403); fifteen are.
        Assert.InRange(window.Percentile(0.99, [800, 900, 950]), 5 / 1.091, 5 * 1.091);
        Assert.InRange(window.Percentile(0.99, [.. Enumerable.Repeat(800.0, 15)]), 800 / 1.091, 800 * 1.091);
        Assert.Equal(1400, window.Count);
        LatencyWindow? left = window;
        for (var i = 0; i < LatencyWindow.Intervals && left is not null; i++)
        {
            left = left.Advance();
        }
        Assert.Null(left);
        Assert.True(double.IsNaN(LatencyWindow.Empty.Percentile(0.99)));
        // Beyond the histogram's range, a sample is read as its last bucket: still a tail, never lost.
        var far = new LatencyWindow();
        far.Record(120_000);
        Assert.True(far.Percentile(0.99) > 50_000);
    }

    [Fact]
    public void FramesThatAreNotTcp_OrAreCutShort_AreNotCounted()
    {
        var meter = new TcpMeter();
        var frame = Capture()[3].Data.ToArray();
        meter.OnEgress(frame.AsSpan(0, 40), 0); // cut inside the TCP header
        meter.OnEgress(new byte[14], 0);
        var udp = Frames.Udp(TwoHosts.Mac1, TwoHosts.Mac3, "10.0.0.1", "10.0.0.2", 10);
        meter.OnIngress(udp, 0);
        Assert.Equal(TcpInterval.Empty, meter.Take(1));
    }
}
