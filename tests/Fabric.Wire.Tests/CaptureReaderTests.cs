using Fabric.Wire;

namespace Fabric.Wire.Tests;

public class CaptureReaderTests
{
    public static TheoryData<string> AllCaptures() => new(Captures.All().Select(Path.GetFileName)!);

    [Theory]
    [MemberData(nameof(AllCaptures))]
    public void EveryCapture_IsReadAndEveryFrameDecodes(string name)
    {
        var records = Captures.Read(name);
        if (name.Contains("empty", StringComparison.Ordinal))
        {
            Assert.Empty(records);
            return;
        }
        Assert.NotEmpty(records);
        for (var i = 0; i < records.Count; i++)
        {
            Assert.Equal(i + 1, records[i].Index);
            Assert.True(records[i].Data.Length <= records[i].OriginalLength || records[i].OriginalLength == 0, $"{name} frame {i + 1}: captured > original");
            var decoded = FrameDecoder.Decode(records[i]);
            Assert.False(string.IsNullOrWhiteSpace(decoded.Text));
        }
    }

    [Fact]
    public void BigEndianNanosecondPcap_ReadsFieldsAndTimestamps()
    {
        var records = Captures.Read("ppp__nanosecs_big_endian.pcap");
        Assert.Equal(LinkType.Ethernet, records[0].LinkType);
        Assert.Equal(74, records[0].OriginalLength);
        // Nanosecond resolution: consecutive frames 11 µs apart are not rounded to whole microseconds.
        Assert.NotEqual(0, records[1].TimestampNanoseconds % 1000);
        Assert.True(records[1].TimestampNanoseconds > records[0].TimestampNanoseconds);
    }

    [Fact]
    public void Pcapng_ReadsEnhancedPacketBlocksWithInterfaceLinkType()
    {
        using var reader = CaptureReader.Open(Path.Combine(Captures.PcapDirectory, "ppp__pcapng-example.pcapng"));
        Assert.True(reader.IsPcapng);
        var records = reader.ReadAll().ToList();
        // Two interface description blocks: interface 0 is Ethernet (59 frames), interface 1 Linux cooked (100 frames).
        Assert.Equal(159, records.Count);
        Assert.Equal(59, records.Count(r => r.LinkType == LinkType.Ethernet));
        Assert.Equal(100, records.Count(r => r.LinkType == LinkType.LinuxSll));
        Assert.All(records, r => Assert.True(FrameDecoder.Decode(r).IsValid, FrameDecoder.Decode(r).Text));
        Assert.Equal(new DateTime(2015, 1, 29, 10, 39, 58, DateTimeKind.Utc), records[0].Timestamp.AddTicks(-(records[0].Timestamp.Ticks % TimeSpan.TicksPerSecond)));
    }

    [Fact]
    public void LinuxCookedAndRawCaptures_DecodeToIp()
    {
        var sll = FrameDecoder.Decode(Captures.Read("tcpdump__tcp-handshake-nano.pcap")[0]);
        Assert.Contains("131.155.215.69.46656 > 137.116.81.94.80", sll.Text, StringComparison.Ordinal);
        var raw = FrameDecoder.Decode(Captures.Read("ppp__raw_ip.pcap")[0]);
        Assert.Contains("2001:618:400::5199:cc70.35995 > 2001:618:1:8000::5.80", raw.Text, StringComparison.Ordinal);
        var ipv4 = Captures.Read("ppp__linktype_ipv4.pcap");
        Assert.Equal(LinkType.IPv4, ipv4[0].LinkType);
        Assert.Contains("10.0.0.1.58121 > 10.0.0.138.53", FrameDecoder.Decode(ipv4[0]).Text, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Writer_RoundTripsThroughReader(bool nanos)
    {
        var frames = Captures.Read("ppp__UdpPacket4Checksum.pcap");
        using var stream = new MemoryStream();
        using (var writer = new CaptureWriter(stream, LinkType.Ethernet, nanos))
        {
            foreach (var f in frames)
            {
                writer.Write(f.TimestampNanoseconds, f.Data.Span);
            }
        }
        stream.Position = 0;
        using var reader = CaptureReader.Open(stream);
        var back = reader.ReadAll().ToList();
        Assert.Equal(frames.Count, back.Count);
        for (var i = 0; i < frames.Count; i++)
        {
            Assert.Equal(frames[i].Data.ToArray(), back[i].Data.ToArray());
            Assert.Equal(frames[i].TimestampNanoseconds, back[i].TimestampNanoseconds);
        }
    }

    [Theory]
    [InlineData(new byte[] { 1, 2, 3 }, "shorter than a file header")]
    [InlineData(new byte[] { 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0 }, "Unknown capture magic")]
    [InlineData(new byte[] { 0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0 }, "file header is truncated")]
    public void CorruptFiles_AreRefusedWithAMessage(byte[] bytes, string expected)
    {
        var e = Assert.Throws<CaptureFormatException>(() => CaptureReader.Open(new MemoryStream(bytes)));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RecordCutShort_IsRefusedNamingTheRecord()
    {
        var bytes = File.ReadAllBytes(Path.Combine(Captures.PcapDirectory, "ppp__UdpPacket4Checksum.pcap"));
        using var reader = CaptureReader.Open(new MemoryStream(bytes[..(bytes.Length - 10)]));
        var e = Assert.Throws<CaptureFormatException>(() => reader.ReadAll().ToList());
        Assert.Contains("Record 5", e.Message, StringComparison.Ordinal);
    }
}
