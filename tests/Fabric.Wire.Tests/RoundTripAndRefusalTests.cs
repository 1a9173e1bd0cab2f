using System.Buffers.Binary;
using Fabric.Wire;

namespace Fabric.Wire.Tests;

/// <summary>Build-then-parse round trips for every protocol, and tables of truncated and inconsistent inputs.</summary>
public class RoundTripAndRefusalTests
{
    private static readonly MacAddress MacA = new(0x02_00_00_00_00_0A);
    private static readonly MacAddress MacB = new(0x02_00_00_00_00_0B);
    private static readonly IPv4Address V4A = IPv4Address.Parse("10.1.0.1");
    private static readonly IPv4Address V4B = IPv4Address.Parse("10.1.0.2");
    private static readonly IPv6Address V6A = IPv6Address.Parse("fd00::1");
    private static readonly IPv6Address V6B = IPv6Address.Parse("fd00::2");

    [Fact]
    public void FabricOverUdpOverIpv4_RoundTripsThroughEveryLayer()
    {
        var inner = Captures.Frame("ppp__ArpRequestPacket.pcap", 0);
        var buffer = new byte[14 + 20 + 8 + FabricHeader.Length + 4 + inner.Length];
        var at = EthernetWriter.Write(buffer, MacB, MacA, EtherTypes.IPv4);
        var payload = 8 + FabricHeader.Length + 4 + inner.Length;
        at += new IPv4Repr(V4A, V4B, IPProtocols.Udp, 64, payload).Write(buffer.AsSpan(at));
        var udpAt = at;
        at += UdpWriter.Write(buffer.AsSpan(at), 40000, FabricHeader.DefaultUdpPort, payload - 8);
        var header = new FabricHeaderRepr(7, FabricPayloadType.Ethernet, 0xABCDEF, 0xFFFF_FFFE, 123456789, StackFieldLength: 4);
        at += header.Write(buffer.AsSpan(at));
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(at), 0xDEADBEEF);
        at += 4;
        inner.CopyTo(buffer.AsSpan(at));
        UdpWriter.SetChecksumV4(buffer.AsSpan(udpAt), V4A, V4B);

        Assert.True(EthernetFrame.TryCreate(buffer, out var eth));
        Assert.Equal(MacA, eth.Source);
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(ip.VerifyChecksum());
        Assert.Equal(new IPv4Repr(V4A, V4B, IPProtocols.Udp, 64, payload), ip.ToRepr());
        Assert.True(UdpDatagram.TryCreate(ip.Payload, out var udp));
        Assert.True(udp.VerifyChecksumV4(V4A, V4B));
        Assert.True(FabricHeader.TryCreate(udp.Payload, out var fabric));
        Assert.Equal(header, fabric.ToRepr());
        Assert.Equal(0xDEADBEEF, BinaryPrimitives.ReadUInt32BigEndian(fabric.StackFields));
        Assert.Equal(inner, fabric.Payload.ToArray());

        var decoded = FrameDecoder.Decode(LinkType.Ethernet, buffer);
        Assert.True(decoded.IsValid, decoded.Text);
        Assert.Contains("Fabric v1, slot 7, vni 11259375, seq 4294967294", decoded.Text, StringComparison.Ordinal);
        Assert.Contains("{ 6c:f0:49:b2:de:6e > ff:ff:ff:ff:ff:ff", decoded.Text, StringComparison.Ordinal);
        Assert.Contains("Request who-has 10.0.0.138 tell 10.0.0.1", decoded.Text, StringComparison.Ordinal);
    }

    [Fact]
    public void TcpOverIpv6_RoundTripsWithChecksum()
    {
        var buffer = new byte[40 + 24 + 5];
        var repr = new TcpRepr(1234, 80, 1000, 2000, TcpFlags.Syn | TcpFlags.Ack, 65535, 1440);
        new IPv6Repr(V6A, V6B, IPProtocols.Tcp, 64, 24 + 5, 0x10, 0xBEEF).Write(buffer);
        var length = repr.Write(buffer.AsSpan(40));
        "hello"u8.CopyTo(buffer.AsSpan(40 + length));
        TcpRepr.SetChecksumV6(buffer.AsSpan(40), V6A, V6B);

        Assert.True(IPv6Packet.TryCreate(buffer, out var ip));
        Assert.Equal(new IPv6Repr(V6A, V6B, IPProtocols.Tcp, 64, 29, 0x10, 0xBEEF), ip.ToRepr());
        Assert.True(TcpSegment.TryCreate(ip.UpperLayerPayload, out var tcp));
        Assert.True(tcp.VerifyChecksumV6(V6A, V6B));
        Assert.Equal(repr, new TcpRepr(tcp.SourcePort, tcp.DestinationPort, tcp.SequenceNumber, tcp.AcknowledgmentNumber, tcp.Flags, tcp.Window, tcp.MaximumSegmentSize));
        Assert.Equal("hello"u8.ToArray(), tcp.Payload.ToArray());
        buffer[^1] ^= 1;
        Assert.True(TcpSegment.TryCreate(ip.UpperLayerPayload, out tcp));
        Assert.False(tcp.VerifyChecksumV6(V6A, V6B));
    }

    [Fact]
    public void UdpOverIpv6_AndNeighborSolicitation_RoundTrip()
    {
        var buffer = new byte[8 + 3];
        UdpWriter.Write(buffer, 1, 2, 3);
        UdpWriter.SetChecksumV6(buffer, V6A, V6B);
        Assert.True(UdpDatagram.TryCreate(buffer, out var udp));
        Assert.True(udp.VerifyChecksumV6(V6A, V6B));

        var ns = new byte[32];
        var target = IPv6Address.Parse("fd00::99");
        IcmpV6Writer.WriteNeighborSolicitation(ns, V6A, IcmpV6Writer.SolicitedNodeMulticast(target), target, MacA);
        Assert.True(IcmpV6Message.TryCreate(ns, out var message));
        Assert.Equal(target, message.TargetAddress);
        Assert.True(message.VerifyChecksum(V6A, IcmpV6Writer.SolicitedNodeMulticast(target)));
        Assert.Equal("ff02::1:ff00:99", IcmpV6Writer.SolicitedNodeMulticast(target).ToString());
    }

    [Fact]
    public void Addresses_ParseAndFormat()
    {
        Assert.True(MacAddress.TryParse("02:AB:cd:00:00:01", out var mac));
        Assert.Equal("02:ab:cd:00:00:01", mac.ToString());
        Assert.False(MacAddress.TryParse("02:ab:cd:00:00", out _));
        Assert.False(MacAddress.TryParse("02:ab:cd:00:00:zz", out _));
        Assert.True(new MacAddress(0x01_00_5e_00_00_01).IsMulticast);
        Assert.False(MacA.IsMulticast);
        Assert.Equal("10.1.0.1", V4A.ToString());
        Assert.Throws<FormatException>(() => IPv4Address.Parse("fd00::1"));
        Assert.True(IPv6Address.Parse("ff02::1").IsMulticast);
    }

    [Fact]
    public void Checksum_MatchesRfc1071Example()
    {
        // RFC 1071 §3: the one's-complement sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        Assert.Equal((ushort)0x220d, Checksum.Compute([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]));
        Assert.Equal((ushort)0xfeff, Checksum.Compute([0x01]));
    }

    public static TheoryData<string, byte[], WireError> RefusedInputs()
    {
        var ipv4 = new byte[28];
        new IPv4Repr(V4A, V4B, IPProtocols.Udp, 64, 8).Write(ipv4);
        var ipv6 = new byte[48];
        new IPv6Repr(V6A, V6B, IPProtocols.HopByHop, 64, 8).Write(ipv6);
        return new TheoryData<string, byte[], WireError>
        {
            { "ethernet-13-bytes", new byte[13], WireError.Truncated },
            { "ethernet-tag-cut", [.. new byte[12], 0x81, 0x00, 0, 1], WireError.Truncated },
            { "ethernet-three-tags", [.. new byte[12], 0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0x00], WireError.TooManyHeaders },
            { "arp-27-bytes", new byte[27], WireError.Truncated },
            { "arp-not-ethernet-ipv4", [0, 6, 8, 0, 6, 4, .. new byte[22]], WireError.UnsupportedAddressFormat },
            { "ipv4-19-bytes", ipv4[..19], WireError.Truncated },
            { "ipv4-version-6", [0x65, .. ipv4[1..]], WireError.BadVersion },
            { "ipv4-ihl-4", [0x44, .. ipv4[1..]], WireError.BadHeaderLength },
            { "ipv4-ihl-past-end", [0x4f, .. ipv4[1..]], WireError.HeaderLengthExceedsBuffer },
            { "ipv4-total-below-ihl", [.. ipv4[..2], 0, 10, .. ipv4[4..]], WireError.TotalLengthTooSmall },
            { "ipv4-total-past-end", ipv4[..27], WireError.TotalLengthExceedsBuffer },
            { "ipv4-option-zero-length", [0x46, 0, 0, 24, .. ipv4[4..20], 7, 0, 0, 0], WireError.BadOption },
            { "ipv6-39-bytes", ipv6[..39], WireError.Truncated },
            { "ipv6-version-4", [0x40, .. ipv6[1..]], WireError.BadVersion },
            { "ipv6-payload-past-end", ipv6[..47], WireError.TotalLengthExceedsBuffer },
            { "ipv6-hbh-past-payload", [.. ipv6[..40], 17, 1, .. new byte[6]], WireError.ExtensionHeaderOverrun },
            { "udp-7-bytes", new byte[7], WireError.Truncated },
            { "udp-length-7", [0, 1, 0, 2, 0, 7, 0, 0], WireError.TotalLengthTooSmall },
            { "udp-length-past-end", [0, 1, 0, 2, 0, 9, 0, 0], WireError.TotalLengthExceedsBuffer },
            { "tcp-19-bytes", new byte[19], WireError.Truncated },
            { "tcp-offset-16", [.. new byte[12], 0x40, .. new byte[7]], WireError.BadHeaderLength },
            { "tcp-offset-past-end", [.. new byte[12], 0x60, .. new byte[7]], WireError.HeaderLengthExceedsBuffer },
            { "tcp-option-overrun", [.. new byte[12], 0x60, .. new byte[7], 2, 9, 0, 0], WireError.BadOption },
            { "icmp-7-bytes", new byte[7], WireError.Truncated },
            { "icmpv6-ns-23-bytes", [135, .. new byte[22]], WireError.Truncated },
            { "icmpv6-nd-option-zero-length", [135, .. new byte[23], 1, 0, .. new byte[6]], WireError.BadOption },
            { "fabric-15-bytes", [0x10, .. new byte[14]], WireError.Truncated },
            { "fabric-version-2", [0x20, .. new byte[15]], WireError.BadVersion },
            { "fabric-stack-fields-past-end", [0x10, 0, 0, 5, .. new byte[12]], WireError.HeaderLengthExceedsBuffer },
        };
    }

    [Theory]
    [MemberData(nameof(RefusedInputs))]
    public void TruncatedOrInconsistentInput_IsRefused(string name, byte[] bytes, WireError expected)
    {
        var actual = name.Split('-')[0] switch
        {
            "ethernet" => Refusal(EthernetFrame.TryCreate(bytes, out _, out var e), e),
            "arp" => Refusal(ArpPacket.TryCreate(bytes, out _, out var e), e),
            "ipv4" => Refusal(IPv4Packet.TryCreate(bytes, out _, out var e), e),
            "ipv6" => Refusal(IPv6Packet.TryCreate(bytes, out _, out var e), e),
            "udp" => Refusal(UdpDatagram.TryCreate(bytes, out _, out var e), e),
            "tcp" => Refusal(TcpSegment.TryCreate(bytes, out _, out var e), e),
            "icmp" => Refusal(IcmpV4Message.TryCreate(bytes, out _, out var e), e),
            "icmpv6" => Refusal(IcmpV6Message.TryCreate(bytes, out _, out var e), e),
            "fabric" => Refusal(FabricHeader.TryCreate(bytes, out _, out var e), e),
            _ => throw new InvalidOperationException(name),
        };
        Assert.Equal(expected, actual);
    }

    private static WireError Refusal(bool accepted, WireError error)
    {
        Assert.False(accepted);
        return error;
    }

    [Fact]
    public void Writers_RefuseValuesTheFieldsCannotHold()
    {
        Assert.Throws<InvalidOperationException>(() => new FabricHeaderRepr(0, FabricPayloadType.Ethernet, 0x1_000_000, 0, 0).Write(new byte[16]));
        Assert.Throws<InvalidOperationException>(() => new IPv4Repr(V4A, V4B, 17, 64, 65516).Write(new byte[20]));
        Assert.Throws<ArgumentException>(() => EthernetWriter.Write(new byte[30], MacA, MacB, [default, default, default], EtherTypes.IPv4));
    }
}
