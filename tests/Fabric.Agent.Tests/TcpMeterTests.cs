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

    private static TcpInterval Feed(IEnumerable<CaptureRecord> records, TcpMeter meter)
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
        return meter.Take(last);
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
