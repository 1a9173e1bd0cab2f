using Fabric.Wire;

namespace Fabric.Wire.Tests;

/// <summary>Real captured frames parsed field by field, and the same frames rebuilt byte for byte by the writers.</summary>
public class GoldenBytesTests
{
    [Fact]
    public void ArpRequest_ParsesAndRebuildsExactly()
    {
        var golden = Captures.Frame("ppp__ArpRequestPacket.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.Equal("6c:f0:49:b2:de:6e", eth.Source.ToString());
        Assert.True(eth.Destination.IsBroadcast);
        Assert.Equal(EtherTypes.Arp, eth.EtherType);
        Assert.True(ArpPacket.TryCreate(eth.Payload, out var arp));
        var repr = arp.ToRepr();
        Assert.Equal(ArpOperation.Request, repr.Operation);
        Assert.Equal("10.0.0.138", repr.TargetProtocol.ToString());
        Assert.Equal("10.0.0.1", repr.SenderProtocol.ToString());

        var built = Captures.Poisoned(golden.Length);
        var at = EthernetWriter.Write(built, eth.Destination, eth.Source, EtherTypes.Arp);
        at += repr.Write(built.AsSpan(at));
        Assert.Equal(golden.Length, at);
        Assert.Equal(golden, built);
    }

    [Fact]
    public void DoubleTaggedArp_ParsesBothTagsAndRebuilds()
    {
        var golden = Captures.Frame("ppp__ArpRequestWithVlan.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.Equal(2, eth.TagCount);
        Assert.Equal(new VlanTag(EtherTypes.Vlan, 5, true, 666), eth.GetTag(0));
        Assert.Equal(new VlanTag(EtherTypes.Vlan, 2, false, 200), eth.GetTag(1));
        Assert.True(ArpPacket.TryCreate(eth.Payload, out var arp));

        var built = Captures.Poisoned(golden.Length);
        var at = EthernetWriter.Write(built, eth.Destination, eth.Source, [eth.GetTag(0), eth.GetTag(1)], EtherTypes.Arp);
        at += arp.ToRepr().Write(built.AsSpan(at));
        Assert.Equal(golden[..at], built[..at]);
    }

    [Fact]
    public void QinQ_ReadsServiceAndCustomerTags()
    {
        var golden = Captures.Frame("tcpdump__802.1ad_QinQ.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.Equal(EtherTypes.QinQ, eth.GetTag(0).Tpid);
        Assert.Equal(200, eth.GetTag(0).VlanId);
        Assert.Equal(2001, eth.GetTag(1).VlanId);
        Assert.Equal(EtherTypes.Arp, eth.EtherType);
    }

    [Fact]
    public void Ipv4Udp_ParsesVerifiesChecksumsAndRebuildsExactly()
    {
        var golden = Captures.Frame("ppp__UdpPacket4Checksum.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(ip.VerifyChecksum());
        Assert.Equal(IPProtocols.Udp, ip.Protocol);
        Assert.True(ip.DontFragment);
        Assert.True(UdpDatagram.TryCreate(ip.Payload, out var udp));
        Assert.Equal(53, udp.SourcePort);
        Assert.True(udp.VerifyChecksumV4(ip.Source, ip.Destination));

        var built = Captures.Poisoned(golden.Length);
        var at = EthernetWriter.Write(built, eth.Destination, eth.Source, EtherTypes.IPv4);
        var ipRepr = ip.ToRepr();
        at += ipRepr.Write(built.AsSpan(at));
        var udpStart = at;
        at += UdpWriter.Write(built.AsSpan(at), udp.SourcePort, udp.DestinationPort, udp.Payload.Length);
        udp.Payload.CopyTo(built.AsSpan(at));
        at += udp.Payload.Length;
        UdpWriter.SetChecksumV4(built.AsSpan(udpStart, at - udpStart), ip.Source, ip.Destination);
        Assert.Equal(golden[..at], built[..at]);
    }

    [Fact]
    public void TcpSynWithMss_ParsesAndRebuildsExactly()
    {
        var golden = Captures.Frame("ppp__one_tcp_stream_fin_rst_close_packet.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(TcpSegment.TryCreate(ip.Payload, out var tcp));
        Assert.Equal(TcpFlags.Syn, tcp.Flags);
        Assert.Equal(1460, tcp.MaximumSegmentSize);
        Assert.True(tcp.VerifyChecksumV4(ip.Source, ip.Destination));

        var built = Captures.Poisoned(golden.Length);
        var at = EthernetWriter.Write(built, eth.Destination, eth.Source, EtherTypes.IPv4);
        at += ip.ToRepr().Write(built.AsSpan(at));
        var repr = new TcpRepr(tcp.SourcePort, tcp.DestinationPort, tcp.SequenceNumber, tcp.AcknowledgmentNumber, tcp.Flags, tcp.Window, tcp.MaximumSegmentSize);
        var tcpLength = repr.Write(built.AsSpan(at));
        TcpRepr.SetChecksumV4(built.AsSpan(at, tcpLength), ip.Source, ip.Destination);
        at += tcpLength;
        // The capture carries 6 bytes of Ethernet padding after the IP packet; compare what was written.
        Assert.Equal(ip.TotalLength + EthernetFrame.HeaderLength, at);
        Assert.Equal(golden[..at], built[..at]);
    }

    [Fact]
    public void TcpOptions_AreWalkedInOrder()
    {
        var golden = Captures.Frame("tcpdump__tcp-handshake-nano.pcap", 0);
        Assert.True(IPv4Packet.TryCreate(golden.AsSpan(16), out var ip));
        Assert.True(TcpSegment.TryCreate(ip.Payload, out var tcp));
        var kinds = new List<TcpOptionKind>();
        foreach (var option in tcp.Options)
        {
            kinds.Add(option.Kind);
        }
        Assert.Equal([TcpOptionKind.MaximumSegmentSize, TcpOptionKind.SackPermitted, TcpOptionKind.Timestamps, TcpOptionKind.WindowScale], kinds);
        Assert.Equal(1360, tcp.MaximumSegmentSize);
    }

    [Fact]
    public void IcmpV6Echo_ParsesAndRebuildsExactly()
    {
        var golden = Captures.Frame("ppp__IcmpV6_EchoMessages.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var ip));
        Assert.Equal(0xd2ce3u, ip.FlowLabel);
        Assert.Equal(IPProtocols.IcmpV6, ip.UpperLayerProtocol);
        Assert.True(IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var icmp));
        Assert.True(icmp.VerifyChecksum(ip.Source, ip.Destination));
        Assert.Equal(24, icmp.EchoIdentifier);
        Assert.Equal(20, icmp.EchoSequence);

        var built = Captures.Poisoned(golden.Length);
        var at = EthernetWriter.Write(built, eth.Destination, eth.Source, EtherTypes.IPv6);
        at += ip.ToRepr().Write(built.AsSpan(at));
        var data = ip.UpperLayerPayload[8..];
        data.CopyTo(built.AsSpan(at + 8));
        at += IcmpV6Writer.WriteEcho(built.AsSpan(at), request: true, 24, 20, data.Length, ip.Source, ip.Destination);
        Assert.Equal(golden, built);
    }

    [Fact]
    public void NeighborAdvertisement_RebuildsFromParsedFields()
    {
        var golden = Captures.Frame("ppp__IcmpV6_NeighAdvSoli.pcap", 1);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var na));
        Assert.Equal(IcmpV6Types.NeighborAdvertisement, na.Type);
        MacAddress mac = default;
        foreach (var option in na.Options)
        {
            Assert.True(option.TryGetLinkLayerAddress(out mac));
        }
        Assert.Equal("c2:00:54:f5:00:00", mac.ToString());

        var built = Captures.Poisoned(32);
        IcmpV6Writer.WriteNeighborAdvertisement(built, ip.Source, ip.Destination, na.TargetAddress, mac, na.RouterFlag, na.SolicitedFlag, na.OverrideFlag);
        Assert.Equal(na.Bytes.ToArray(), built);
    }

    [Fact]
    public void RouterAdvertisement_ExposesFieldsAndOptions()
    {
        var golden = Captures.Frame("tcpdump__icmpv6.pcap", 0);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var ra));
        Assert.Equal(64, ra.RouterCurrentHopLimit);
        Assert.Equal(15, ra.RouterLifetime);
        var types = new List<NdOptionType>();
        foreach (var option in ra.Options)
        {
            types.Add(option.Type);
        }
        Assert.Equal([NdOptionType.PrefixInformation, NdOptionType.RecursiveDnsServer, NdOptionType.DnsSearchList, NdOptionType.Mtu,
            NdOptionType.SourceLinkLayerAddress, (NdOptionType)7, (NdOptionType)8], types);
    }

    [Fact]
    public void Ipv6ExtensionHeaders_AreWalkedToTheUpperLayer()
    {
        var frames = Captures.Read("ppp__ipv6_options.pcap");
        Assert.True(EthernetFrame.TryCreate(frames[1].Data.Span, out var eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var routed));
        Assert.Equal(IPProtocols.IPv6Route, routed.NextHeader);
        Assert.Equal(IPProtocols.IcmpV6, routed.UpperLayerProtocol);
        Assert.True(EthernetFrame.TryCreate(frames[3].Data.Span, out eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var ah));
        Assert.Equal(IPProtocols.Ah, ah.NextHeader);
        Assert.Equal(89, ah.UpperLayerProtocol);
    }

    [Fact]
    public void Ipv6Fragments_ExposeOffsetsAndStopAtLaterFragments()
    {
        var frames = Captures.Read("ppp__ip6_fragments.pcap");
        Assert.True(EthernetFrame.TryCreate(frames[0].Data.Span, out var eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var first));
        Assert.True(first.IsFragment);
        Assert.Equal(0, first.FragmentOffset);
        Assert.True(first.MoreFragments);
        Assert.Equal(IPProtocols.Udp, first.UpperLayerProtocol);
        Assert.True(EthernetFrame.TryCreate(frames[1].Data.Span, out eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var second));
        Assert.Equal(120, second.FragmentOffset);
        Assert.Equal(first.FragmentIdentification, second.FragmentIdentification);
    }

    [Fact]
    public void Ipv4OptionsAndFragments_AreExposed()
    {
        Assert.True(EthernetFrame.TryCreate(Captures.Frame("ppp__ipv4-options.pcap", 0), out var eth));
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var withOptions));
        Assert.Equal(44, withOptions.HeaderLength);
        Assert.Equal(24, withOptions.Options.Length);
        Assert.True(withOptions.VerifyChecksum());

        Assert.True(EthernetFrame.TryCreate(Captures.Frame("ppp__IPv4Frag.pcap", 1), out eth));
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var fragment));
        Assert.True(fragment.IsFragment);
        Assert.Equal(1480, fragment.FragmentOffset);
        Assert.True(fragment.MoreFragments);
    }

    [Fact]
    public void IcmpV4Echo_ParsesAndRebuilds()
    {
        var golden = Captures.Frame("tcpdump__dhcp-rfc4388.pcap", 1);
        Assert.True(EthernetFrame.TryCreate(golden, out var eth));
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(IcmpV4Message.TryCreate(ip.Payload, out var icmp));
        Assert.True(icmp.VerifyChecksum());
        Assert.Equal(IcmpV4Message.EchoRequest, icmp.Type);
        Assert.Equal(16420, icmp.Identifier);

        var built = Captures.Poisoned(ip.Payload.Length);
        icmp.Data.CopyTo(built.AsSpan(8));
        IcmpV4Writer.Write(built, icmp.Type, icmp.Code, icmp.Identifier, icmp.SequenceNumber, icmp.Data.Length);
        Assert.Equal(ip.Payload.ToArray(), built);
    }
}
