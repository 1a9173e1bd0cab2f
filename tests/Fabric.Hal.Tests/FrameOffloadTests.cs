using System.Buffers.Binary;
using Fabric.Hal.Linux;

namespace Fabric.Hal.Tests;

/// <summary>
/// Cutting a VM's large segments and joining runs of segments for it: every cut segment is a valid packet (lengths, ids,
/// sequence numbers, flags, IP and TCP/UDP checksums checked independently of the code under test), their payloads put
/// together are the original, and only true continuations are joined.
/// </summary>
public sealed class FrameOffloadTests
{
    private const int Mss = 1400;

    [Theory]
    [InlineData(false, 40_000)]
    [InlineData(true, 40_000)]
    [InlineData(false, Mss * 3)]
    [InlineData(true, 1)]
    public void ALargeTcpSegment_IsCutIntoValidSegments_WhosePayloadsAreTheOriginal(bool ipv6, int payloadLength)
    {
        var payload = Payload(payloadLength, 7);
        var frame = Tcp(ipv6, sequence: 1000, payload, flags: 0x10 | 0x08 | 0x01 | 0x80, ipId: 500);
        var header = new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, ipv6 ? VirtioNetHeader.GsoTcpV6 : VirtioNetHeader.GsoTcpV4, 0, Mss, 0, 0);

        var count = FrameOffload.SegmentCount(frame, header);
        Assert.Equal((payloadLength + Mss - 1) / Mss, count);
        var joined = new List<byte>();
        var output = new byte[65536];
        for (var i = 0; i < count; i++)
        {
            var segment = output.AsSpan(0, FrameOffload.Segment(frame, header, i, output));
            var transport = ipv6 ? 54 : 34;
            Assert.True(ChecksumsValid(segment, ipv6, 6), $"segment {i} checksums");
            Assert.Equal(1000u + (uint)(i * Mss), BinaryPrimitives.ReadUInt32BigEndian(segment[(transport + 4)..]));
            var flags = segment[transport + 13];
            Assert.Equal(i == count - 1, (flags & 0x09) == 0x09); // FIN and PSH only on the last
            Assert.Equal(i == 0, (flags & 0x80) != 0); // CWR only on the first
            if (!ipv6)
            {
                Assert.Equal(segment.Length - 14, BinaryPrimitives.ReadUInt16BigEndian(segment[16..]));
                Assert.Equal(500 + i, BinaryPrimitives.ReadUInt16BigEndian(segment[18..]));
            }
            else
            {
                Assert.Equal(segment.Length - 54, BinaryPrimitives.ReadUInt16BigEndian(segment[18..]));
            }
            joined.AddRange(segment[(transport + 32)..].ToArray());
        }
        Assert.Equal(payload, joined);
    }

    [Fact]
    public void ALargeUdpSegment_IsCutIntoDatagramsWithTheirOwnLengthAndChecksum()
    {
        var payload = Payload(5000, 3);
        var frame = Udp(payload);
        var header = new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, VirtioNetHeader.GsoUdpL4, 0, 1200, 0, 0);
        Assert.Equal(5, FrameOffload.SegmentCount(frame, header));
        var output = new byte[65536];
        var joined = new List<byte>();
        for (var i = 0; i < 5; i++)
        {
            var segment = output.AsSpan(0, FrameOffload.Segment(frame, header, i, output));
            Assert.True(ChecksumsValid(segment, false, 17));
            Assert.Equal(segment.Length - 34, BinaryPrimitives.ReadUInt16BigEndian(segment[38..]));
            joined.AddRange(segment[42..].ToArray());
        }
        Assert.Equal(payload, joined);
    }

    [Fact]
    public void AHeaderTheFrameDoesNotBearOut_CutsNothing()
    {
        var tcp = Tcp(false, 1, Payload(4000, 1), 0x10, 1);
        Assert.Equal(0, FrameOffload.SegmentCount(tcp, new VirtioNetHeader(0, VirtioNetHeader.GsoTcpV6, 0, Mss, 0, 0)));
        Assert.Equal(0, FrameOffload.SegmentCount(tcp, new VirtioNetHeader(0, VirtioNetHeader.GsoUdpL4, 0, Mss, 0, 0)));
        Assert.Equal(0, FrameOffload.SegmentCount(tcp, new VirtioNetHeader(0, VirtioNetHeader.GsoTcpV4, 0, 0, 0, 0)));
        // A guest claiming a tiny segment size to turn one frame into thousands.
        Assert.Equal(0, FrameOffload.SegmentCount(Tcp(false, 1, Payload(60_000, 1), 0x10, 1), new VirtioNetHeader(0, VirtioNetHeader.GsoTcpV4, 0, 8, 0, 0)));
        Assert.Equal(0, FrameOffload.SegmentCount(tcp.AsSpan(0, 40), new VirtioNetHeader(0, VirtioNetHeader.GsoTcpV4, 0, Mss, 0, 0)));
        var fragment = (byte[])tcp.Clone();
        fragment[20] |= 0x20; // more fragments
        Assert.Equal(0, FrameOffload.SegmentCount(fragment, new VirtioNetHeader(0, VirtioNetHeader.GsoTcpV4, 0, Mss, 0, 0)));
        Assert.False(FrameOffload.FinishChecksum(tcp, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 34, (ushort)(tcp.Length - 34))));
        Assert.False(FrameOffload.FinishChecksum(tcp, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 4, 16)));
    }

    [Fact]
    public void APartialChecksum_IsFinished()
    {
        var frame = Tcp(false, 1, Payload(999, 5), 0x18, 1);
        Assert.True(ChecksumsValid(frame, false, 6));
        // As the kernel leaves it: the pseudo-header's sum, not complemented, in the checksum field.
        var tcpLength = frame.Length - 34;
        var pseudo = Fold16(frame.AsSpan(26, 8), (ulong)tcpLength + 6);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(50), pseudo);
        Assert.False(ChecksumsValid(frame, false, 6));
        Assert.True(FrameOffload.FinishChecksum(frame, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 34, 16)));
        Assert.True(ChecksumsValid(frame, false, 6));
    }

    [Fact]
    public void ASmallUdpDatagramsPartialChecksum_IsFinished_AndAnSctpPacketGetsItsCrc()
    {
        var frame = Udp(Payload(3, 9));
        Assert.Equal(45, frame.Length);
        var expected = BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(40));
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(40), Fold16(frame.AsSpan(26, 8), 11 + 17UL));
        Assert.True(FrameOffload.FinishChecksum(frame, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 34, 6)));
        Assert.Equal(expected, BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(40)));
        // Only the checksum field of the transport header the frame's own headers name.
        Assert.False(FrameOffload.FinishChecksum(frame, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 34, 2)));
        Assert.False(FrameOffload.FinishChecksum(frame, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 30, 6)));

        // RFC 3720 B.4's CRC32c vectors (the bytes as sent: aa 36 91 8a for 32 zeros).
        Assert.Equal(0x8A9136AAu, FrameOffload.Crc32C(new byte[32]));
        Assert.Equal(0x62A8AB43u, FrameOffload.Crc32C(Enumerable.Repeat((byte)0xFF, 32).ToArray()));
        Assert.Equal(0x46DD794Eu, FrameOffload.Crc32C(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()));
        var sctp = new byte[14 + 20 + 28];
        Ethernet(sctp, false);
        IpHeader(sctp, false, 132, 28, 1);
        sctp[34 + 12] = 1; // an INIT chunk's type: any bytes do
        Assert.True(FrameOffload.FinishChecksum(sctp, new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, 0, 0, 0, 34, 8)));
        var crc = BinaryPrimitives.ReadUInt32LittleEndian(sctp.AsSpan(42));
        sctp.AsSpan(42, 4).Clear();
        Assert.Equal(FrameOffload.Crc32C(sctp.AsSpan(34)), crc);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OnlyTrueContinuations_AreJoined_AndTheJoinedHeadDescribesTheWhole(bool ipv6)
    {
        var transport = ipv6 ? 54 : 34;
        var headers = transport + 32; // with the timestamp option
        var segments = Enumerable.Range(0, 4).Select(i => Tcp(ipv6, (uint)(5000 + i * Mss), Payload(i == 3 ? 300 : Mss, i), (byte)(i == 3 ? 0x18 : 0x10), (ushort)(9 + i))).ToArray();
        Assert.Equal(headers, FrameOffload.JoinableHeaders(segments[0]));
        for (var i = 1; i < 4; i++)
        {
            Assert.True(FrameOffload.Continues(segments[i - 1], segments[i], headers), $"segment {i}");
        }
        Assert.False(FrameOffload.Continues(segments[0], segments[2], headers)); // a gap
        Assert.False(FrameOffload.Continues(segments[3], Tcp(ipv6, 5000 + 3 * Mss + 300, Payload(10, 1), 0x10, 1), headers)); // after a push
        var otherPort = (byte[])segments[1].Clone();
        otherPort[transport + 1] ^= 1;
        Assert.False(FrameOffload.Continues(segments[0], otherPort, headers));
        var otherAck = (byte[])segments[1].Clone();
        otherAck[transport + 11] ^= 1;
        Assert.False(FrameOffload.Continues(segments[0], otherAck, headers));
        Assert.Equal(0, FrameOffload.JoinableHeaders(Tcp(ipv6, 1, Payload(10, 1), 0x02, 1))); // a SYN is never joined
        Assert.Equal(0, FrameOffload.JoinableHeaders(Tcp(ipv6, 1, [], 0x10, 1))); // nor a bare ACK
        // Frames the VM's stack would have refused are never joined (a joined segment's checksum is not checked again):
        var badChecksum = (byte[])segments[1].Clone();
        badChecksum[^1] ^= 0x40;
        Assert.Equal(0, FrameOffload.JoinableHeaders(badChecksum));
        Assert.False(FrameOffload.Continues(segments[0], badChecksum, headers));
        // padding after the IP packet would be taken for data,
        var padded = segments[3].Concat(new byte[6]).ToArray();
        Assert.Equal(0, FrameOffload.JoinableHeaders(padded));
        Assert.False(FrameOffload.Continues(segments[2], padded, headers));
        if (!ipv6)
        {
            var badHeader = (byte[])segments[1].Clone();
            badHeader[22] ^= 1; // the TTL, header checksum not updated
            Assert.Equal(0, FrameOffload.JoinableHeaders(badHeader));
            var otherTtl = Tcp(ipv6, (uint)(5000 + Mss), Payload(Mss, 1), 0x10, 10);
            otherTtl[22] = 63;
            BinaryPrimitives.WriteUInt16BigEndian(otherTtl.AsSpan(24), 0);
            BinaryPrimitives.WriteUInt16BigEndian(otherTtl.AsSpan(24), (ushort)~Fold16(otherTtl.AsSpan(14, 20), 0));
            Assert.NotEqual(0, FrameOffload.JoinableHeaders(otherTtl));
            Assert.False(FrameOffload.Continues(segments[0], otherTtl, headers)); // another TTL: another path
        }

        var head = (byte[])segments[0].Clone();
        var total = 3 * Mss + 300;
        var header = FrameOffload.JoinHead(head, headers, Mss, total, push: true);
        Assert.Equal(ipv6 ? VirtioNetHeader.GsoTcpV6 : VirtioNetHeader.GsoTcpV4, header.GsoType);
        Assert.Equal((Mss, headers, transport, 16), (header.GsoSize, header.HeaderLength, header.ChecksumStart, header.ChecksumOffset));
        Assert.Equal(VirtioNetHeader.NeedsChecksum, header.Flags);
        Assert.Equal(0x18, head[transport + 13]);
        if (ipv6)
        {
            Assert.Equal(32 + total, BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(18)));
        }
        else
        {
            Assert.Equal(52 + total, BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(16)));
            Assert.Equal(0xFFFF, FrameOffload.Fold(FrameOffload.Sum(head.AsSpan(14, 20))));
        }
        // The whole joined packet, checksum finished as the kernel would, is valid.
        var whole = head.Take(headers).Concat(segments.SelectMany(s => s.Skip(headers))).ToArray();
        Assert.True(FrameOffload.FinishChecksum(whole, header));
        Assert.True(ChecksumsValid(whole, ipv6, 6));
    }

    /// <summary>An independent check: the IPv4 header sums to all ones, and the transport checksum with its pseudo-header does.</summary>
    internal static bool ChecksumsValid(ReadOnlySpan<byte> frame, bool ipv6, byte protocol)
    {
        ulong sum = 0;
        var transport = ipv6 ? 54 : 34;
        if (!ipv6)
        {
            if (Fold16(frame[14..34], 0) != 0xFFFF)
            {
                return false;
            }
            sum = Fold16(frame[26..34], 0);
        }
        else
        {
            sum = Fold16(frame[22..54], 0);
        }
        var length = frame.Length - transport;
        sum += (ulong)length + protocol;
        return Fold16(frame[transport..], sum) == 0xFFFF;
    }

    /// <summary>RFC 1071, big-endian words, one at a time: nothing shared with the code under test.</summary>
    private static ushort Fold16(ReadOnlySpan<byte> data, ulong sum)
    {
        for (var i = 0; i < data.Length; i += 2)
        {
            sum += (ulong)(data[i] << 8 | (i + 1 < data.Length ? data[i + 1] : 0));
        }
        while (sum >> 16 != 0)
        {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        return (ushort)sum;
    }

    internal static byte[] Payload(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>A TCP segment with a timestamp option, checksums valid.</summary>
    internal static byte[] Tcp(bool ipv6, uint sequence, byte[] payload, byte flags, ushort ipId)
    {
        var ip = ipv6 ? 40 : 20;
        var frame = new byte[14 + ip + 32 + payload.Length];
        Ethernet(frame, ipv6);
        IpHeader(frame, ipv6, 6, 32 + payload.Length, ipId);
        var t = frame.AsSpan(14 + ip);
        BinaryPrimitives.WriteUInt16BigEndian(t, 40000);
        BinaryPrimitives.WriteUInt16BigEndian(t[2..], 5201);
        BinaryPrimitives.WriteUInt32BigEndian(t[4..], sequence);
        BinaryPrimitives.WriteUInt32BigEndian(t[8..], 777);
        t[12] = 8 << 4;
        t[13] = flags;
        BinaryPrimitives.WriteUInt16BigEndian(t[14..], 502);
        t[20] = 1;
        t[21] = 1;
        t[22] = 8;
        t[23] = 10;
        BinaryPrimitives.WriteUInt32BigEndian(t[24..], 123456);
        payload.CopyTo(t[32..]);
        Checksum(frame, ipv6, 6, 16);
        return frame;
    }

    private static byte[] Udp(byte[] payload)
    {
        var frame = new byte[42 + payload.Length];
        Ethernet(frame, false);
        IpHeader(frame, false, 17, 8 + payload.Length, 1);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(34), 5000);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(36), 6000);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(38), (ushort)(8 + payload.Length));
        payload.CopyTo(frame, 42);
        Checksum(frame, false, 17, 6);
        return frame;
    }

    private static void Ethernet(byte[] frame, bool ipv6)
    {
        frame[0] = 0x02;
        frame[5] = 0x03;
        frame[6] = 0x02;
        frame[11] = 0x01;
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(12), (ushort)(ipv6 ? 0x86DD : 0x0800));
    }

    private static void IpHeader(byte[] frame, bool ipv6, byte protocol, int l4Length, ushort id)
    {
        var ip = frame.AsSpan(14);
        if (ipv6)
        {
            ip[0] = 0x60;
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], (ushort)l4Length);
            ip[6] = protocol;
            ip[7] = 64;
            ip[8] = 0xFD;
            ip[23] = 1;
            ip[24] = 0xFD;
            ip[39] = 3;
            return;
        }
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(20 + l4Length));
        BinaryPrimitives.WriteUInt16BigEndian(ip[4..], id);
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = protocol;
        ip[12] = 10;
        ip[15] = 1;
        ip[16] = 10;
        ip[19] = 3;
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], (ushort)~Fold16(ip[..20], 0));
    }

    private static void Checksum(byte[] frame, bool ipv6, byte protocol, int offset)
    {
        var transport = ipv6 ? 54 : 34;
        var sum = (ipv6 ? Fold16(frame.AsSpan(22, 32), 0) : Fold16(frame.AsSpan(26, 8), 0)) + (ulong)(frame.Length - transport) + protocol;
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(transport + offset), (ushort)~Fold16(frame.AsSpan(transport), sum));
    }
}
