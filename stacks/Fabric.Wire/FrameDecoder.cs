using System.Globalization;
using System.Text;

namespace Fabric.Wire;

/// <summary>The outcome of decoding one frame for display: one line of text and, when a layer refused its bytes, why.</summary>
public sealed record DecodedFrame(string Text, WireError Error, string? RefusedLayer)
{
    /// <summary>True when every layer accepted its bytes.</summary>
    public bool IsValid => Error == WireError.None;
}

/// <summary>
/// Turns frames into one line each, in the spirit of <c>tcpdump -n -e -v</c>: link addresses and tags, the IP header's
/// fields in parentheses, then transport addresses, ports, flags and lengths. Fabric overlay datagrams are decoded
/// through to the inner frame. A layer that refuses its bytes ends the line with <c>[invalid LAYER: reason]</c>; no
/// input makes it throw.
/// </summary>
public static class FrameDecoder
{
    private const int MaxOverlayDepth = 2;

    /// <summary>Decodes one captured frame, time first.</summary>
    public static DecodedFrame Decode(in CaptureRecord record)
    {
        var text = new StringBuilder(160);
        text.Append(record.Timestamp.ToString("yyyy-MM-dd HH:mm:ss.ffffff", CultureInfo.InvariantCulture)).Append(' ');
        var state = new State(text) { Snapped = record.Data.Length < record.OriginalLength };
        DecodeLink(ref state, record.LinkType, record.Data.Span, record.OriginalLength);
        return new DecodedFrame(text.ToString(), state.Error, state.Layer);
    }

    /// <summary>Decodes one frame of the given link type without a timestamp.</summary>
    public static DecodedFrame Decode(LinkType linkType, ReadOnlySpan<byte> frame)
    {
        var state = new State(new StringBuilder(160));
        DecodeLink(ref state, linkType, frame, frame.Length);
        return new DecodedFrame(state.Text.ToString(), state.Error, state.Layer);
    }

    private struct State(StringBuilder text)
    {
        public readonly StringBuilder Text = text;
        public WireError Error;
        public string? Layer;
        public int Depth;
        /// <summary>The capture kept fewer bytes than the frame had (snapshot length): short packets are expected, not malformed.</summary>
        public bool Snapped;

        public void Refuse(string layer, WireError error, string? detail = null)
        {
            Error = error;
            Layer = layer;
            Text.Append("[invalid ").Append(layer).Append(": ").Append(error.Describe());
            if (detail is not null)
            {
                Text.Append(" (").Append(detail).Append(')');
            }
            Text.Append(']');
        }
    }

    private static void DecodeLink(ref State s, LinkType linkType, ReadOnlySpan<byte> frame, int originalLength)
    {
        switch (linkType)
        {
            case LinkType.Ethernet:
                DecodeEthernet(ref s, frame, originalLength);
                break;
            case LinkType.Raw or LinkType.RawLegacy12 or LinkType.RawLegacy14:
                DecodeRawIp(ref s, frame);
                break;
            case LinkType.IPv4:
                DecodeIPv4(ref s, frame);
                break;
            case LinkType.IPv6:
                DecodeIPv6(ref s, frame);
                break;
            case LinkType.LinuxSll:
                if (frame.Length < 16)
                {
                    s.Refuse("SLL", WireError.Truncated);
                    return;
                }
                DecodeSll(ref s, frame, packetType: (ushort)((frame[0] << 8) | frame[1]), addressLength: (frame[4] << 8) | frame[5],
                    address: frame[6..14], protocol: (ushort)((frame[14] << 8) | frame[15]), payload: frame[16..], "SLL");
                break;
            case LinkType.LinuxSll2:
                if (frame.Length < 20)
                {
                    s.Refuse("SLL2", WireError.Truncated);
                    return;
                }
                DecodeSll(ref s, frame, packetType: frame[10], addressLength: frame[11], address: frame[12..20],
                    protocol: (ushort)((frame[0] << 8) | frame[1]), payload: frame[20..], "SLL2");
                break;
            case LinkType.Null:
                if (frame.Length < 4)
                {
                    s.Refuse("NULL", WireError.Truncated);
                    return;
                }
                DecodeRawIp(ref s, frame[4..]);
                break;
            default:
                s.Text.Append("link type ").Append((uint)linkType).Append(", length ").Append(frame.Length).Append(" (not decoded)");
                break;
        }
    }

    private static void DecodeSll(ref State s, ReadOnlySpan<byte> frame, ushort packetType, int addressLength, ReadOnlySpan<byte> address,
        ushort protocol, ReadOnlySpan<byte> payload, string name)
    {
        var direction = packetType switch { 0 => "In", 1 => "B", 2 => "M", 3 => "P", 4 => "Out", _ => "?" };
        s.Text.Append(direction).Append(' ');
        if (addressLength == 6)
        {
            s.Text.Append(MacAddress.Read(address)).Append(' ');
        }
        s.Text.Append("ethertype ").Append(EtherTypeName(protocol)).Append(" (0x").Append(protocol.ToString("x4", CultureInfo.InvariantCulture))
            .Append("), length ").Append(frame.Length).Append(": ");
        DecodeEtherType(ref s, protocol, payload, name);
    }

    private static void DecodeRawIp(ref State s, ReadOnlySpan<byte> packet)
    {
        if (packet.IsEmpty)
        {
            s.Refuse("IP", WireError.Truncated);
            return;
        }
        switch (packet[0] >> 4)
        {
            case 4:
                DecodeIPv4(ref s, packet);
                break;
            case 6:
                DecodeIPv6(ref s, packet);
                break;
            default:
                s.Refuse("IP", WireError.BadVersion, $"version {packet[0] >> 4}");
                break;
        }
    }

    private static void DecodeEthernet(ref State s, ReadOnlySpan<byte> frame, int originalLength)
    {
        if (!EthernetFrame.TryCreate(frame, out var ethernet, out var error))
        {
            s.Refuse("Ethernet", error, $"{frame.Length} bytes");
            return;
        }
        s.Text.Append(ethernet.Source).Append(" > ").Append(ethernet.Destination).Append(", ");
        var first = ethernet.TagCount > 0 ? ethernet.GetTag(0).Tpid : ethernet.EtherType;
        s.Text.Append("ethertype ").Append(EtherTypeName(first)).Append(" (0x").Append(first.ToString("x4", CultureInfo.InvariantCulture))
            .Append("), length ").Append(originalLength).Append(": ");
        for (var i = 0; i < ethernet.TagCount; i++)
        {
            var tag = ethernet.GetTag(i);
            var next = i + 1 < ethernet.TagCount ? ethernet.GetTag(i + 1).Tpid : ethernet.EtherType;
            s.Text.Append("vlan ").Append(tag.VlanId).Append(", p ").Append(tag.Priority);
            if (tag.DropEligible)
            {
                s.Text.Append(", DEI");
            }
            s.Text.Append(", ethertype ").Append(EtherTypeName(next)).Append(" (0x").Append(next.ToString("x4", CultureInfo.InvariantCulture)).Append("), ");
        }
        DecodeEtherType(ref s, ethernet.EtherType, ethernet.Payload, "Ethernet");
    }

    private static void DecodeEtherType(ref State s, ushort etherType, ReadOnlySpan<byte> payload, string linkName)
    {
        switch (etherType)
        {
            case EtherTypes.IPv4:
                DecodeIPv4(ref s, payload);
                break;
            case EtherTypes.IPv6:
                DecodeIPv6(ref s, payload);
                break;
            case EtherTypes.Arp:
                DecodeArp(ref s, payload);
                break;
            default:
                s.Text.Append(linkName).Append(" payload, length ").Append(payload.Length);
                break;
        }
    }

    private static string EtherTypeName(ushort etherType) => etherType switch
    {
        EtherTypes.IPv4 => "IPv4",
        EtherTypes.IPv6 => "IPv6",
        EtherTypes.Arp => "ARP",
        EtherTypes.Vlan => "802.1Q",
        EtherTypes.QinQ => "802.1Q-QinQ",
        EtherTypes.QinQLegacy => "802.1Q-9100",
        _ => "Unknown",
    };

    private static void DecodeArp(ref State s, ReadOnlySpan<byte> payload)
    {
        if (!ArpPacket.TryCreate(payload, out var arp, out var error))
        {
            s.Refuse("ARP", error);
            return;
        }
        if (arp.Operation == ArpOperation.Request)
        {
            s.Text.Append("ARP, Request who-has ").Append(arp.TargetProtocol).Append(" tell ").Append(arp.SenderProtocol);
        }
        else if (arp.Operation == ArpOperation.Reply)
        {
            s.Text.Append("ARP, Reply ").Append(arp.SenderProtocol).Append(" is-at ").Append(arp.SenderHardware);
        }
        else
        {
            s.Text.Append("ARP, op ").Append((ushort)arp.Operation);
        }
        s.Text.Append(", length ").Append(payload.Length);
    }

    private static void DecodeIPv4(ref State s, ReadOnlySpan<byte> bytes)
    {
        if (!IPv4Packet.TryCreate(bytes, out var ip, out var error) && error == WireError.TotalLengthExceedsBuffer && s.Snapped
            && IPv4Packet.TryCreate(WithTotalLength(bytes, out var claimed), out ip, out _))
        {
            // The capture's snapshot length cut the packet: decode what was kept, as tcpdump does, and say so.
            s.Text.Append("IP (snapshot ").Append(bytes.Length).Append(" of ").Append(claimed).Append(" bytes, proto ")
                .Append(IPProtocols.Name(ip.Protocol) ?? "unknown").Append(" (").Append(ip.Protocol).Append("), length ").Append(claimed).Append(") ");
            DescribeSnappedTransport(ref s, ip.Protocol, ip.Payload, ip.Source.ToString(), ip.Destination.ToString());
            return;
        }
        if (error != WireError.None)
        {
            s.Text.Append("IP ");
            if (bytes.Length >= IPv4Packet.MinHeaderLength)
            {
                s.Text.Append("(proto ").Append(IPProtocols.Name(bytes[9]) ?? "unknown").Append(" (").Append(bytes[9]).Append(")) ")
                    .Append(IPv4Address.Read(bytes[12..])).Append(" > ").Append(IPv4Address.Read(bytes[16..])).Append(": ");
            }
            var detail = error == WireError.TotalLengthExceedsBuffer
                ? $"total length {(bytes[2] << 8) | bytes[3]} > length {bytes.Length}"
                : bytes.Length > 0 ? $"{bytes.Length} bytes, IHL {(bytes[0] & 0xF) * 4}" : null;
            s.Refuse("IPv4", error, detail);
            return;
        }
        var proto = IPProtocols.Name(ip.Protocol) ?? "unknown";
        s.Text.Append("IP (tos 0x").Append(ip.TypeOfService.ToString("x", CultureInfo.InvariantCulture))
            .Append(", ttl ").Append(ip.TimeToLive).Append(", id ").Append(ip.Identification)
            .Append(", offset ").Append(ip.FragmentOffset).Append(", flags [")
            .Append(ip.DontFragment ? "DF" : ip.MoreFragments ? "+" : "none").Append("], proto ").Append(proto)
            .Append(" (").Append(ip.Protocol).Append("), length ").Append(ip.TotalLength);
        if (ip.HeaderLength > IPv4Packet.MinHeaderLength)
        {
            s.Text.Append(", options (").Append(ip.HeaderLength - IPv4Packet.MinHeaderLength).Append(" bytes)");
        }
        if (!ip.VerifyChecksum())
        {
            s.Text.Append(", bad cksum ").Append(ip.HeaderChecksum.ToString("x", CultureInfo.InvariantCulture));
        }
        s.Text.Append(") ");
        if (ip.FragmentOffset != 0)
        {
            s.Text.Append(ip.Source).Append(" > ").Append(ip.Destination).Append(": ip-proto-").Append(ip.Protocol)
                .Append(" fragment, length ").Append(ip.Payload.Length);
            return;
        }
        DecodeTransport(ref s, ip.Protocol, ip.Payload, ip.Source.ToString(), ip.Destination.ToString(), ip.MoreFragments);
    }

    private static ReadOnlySpan<byte> WithTotalLength(ReadOnlySpan<byte> bytes, out int claimed)
    {
        claimed = (bytes[2] << 8) | bytes[3];
        var copy = bytes.ToArray();
        copy[2] = (byte)(bytes.Length >> 8);
        copy[3] = (byte)bytes.Length;
        return copy;
    }

    private static void DescribeSnappedTransport(ref State s, byte protocol, ReadOnlySpan<byte> payload, string source, string destination)
    {
        if ((protocol is IPProtocols.Tcp or IPProtocols.Udp) && payload.Length >= 4)
        {
            s.Text.Append(source).Append('.').Append((payload[0] << 8) | payload[1]).Append(" > ").Append(destination).Append('.')
                .Append((payload[2] << 8) | payload[3]).Append(": ").Append(protocol == IPProtocols.Tcp ? "TCP" : "UDP");
        }
        else
        {
            s.Text.Append(source).Append(" > ").Append(destination).Append(": ").Append(IPProtocols.Name(protocol) ?? "ip-proto-" + protocol);
        }
        s.Text.Append(" [|snapshot]");
    }

    private static void DecodeIPv6(ref State s, ReadOnlySpan<byte> bytes)
    {
        if (!IPv6Packet.TryCreate(bytes, out var ip, out var error) && error == WireError.TotalLengthExceedsBuffer && s.Snapped)
        {
            var copy = bytes.ToArray();
            var claimed = (copy[4] << 8) | copy[5];
            copy[4] = (byte)((copy.Length - IPv6Packet.HeaderLength) >> 8);
            copy[5] = (byte)(copy.Length - IPv6Packet.HeaderLength);
            if (IPv6Packet.TryCreate(copy, out ip, out _))
            {
                s.Text.Append("IP6 (snapshot ").Append(ip.PayloadLength).Append(" of ").Append(claimed).Append(" payload bytes, hlim ").Append(ip.HopLimit)
                    .Append(", next-header ").Append(IPProtocols.Name(ip.NextHeader) ?? "unknown").Append(" (").Append(ip.NextHeader)
                    .Append("), payload length ").Append(claimed).Append(") ");
                DescribeSnappedTransport(ref s, ip.UpperLayerProtocol, ip.UpperLayerPayload, ip.Source.ToString(), ip.Destination.ToString());
                return;
            }
        }
        if (error != WireError.None)
        {
            s.Text.Append("IP6 ");
            if (bytes.Length >= IPv6Packet.HeaderLength)
            {
                s.Text.Append("(hlim ").Append(bytes[7]).Append(", next-header ").Append(IPProtocols.Name(bytes[6]) ?? "unknown")
                    .Append(" (").Append(bytes[6]).Append("), payload length ").Append((bytes[4] << 8) | bytes[5]).Append(") ")
                    .Append(IPv6Address.Read(bytes[8..])).Append(" > ").Append(IPv6Address.Read(bytes[24..])).Append(": ");
            }
            s.Refuse("IPv6", error, $"{bytes.Length} bytes");
            return;
        }
        s.Text.Append("IP6 (");
        if (ip.TrafficClass != 0)
        {
            s.Text.Append("class 0x").Append(ip.TrafficClass.ToString("x", CultureInfo.InvariantCulture)).Append(", ");
        }
        if (ip.FlowLabel != 0)
        {
            s.Text.Append("flowlabel 0x").Append(ip.FlowLabel.ToString("x5", CultureInfo.InvariantCulture)).Append(", ");
        }
        s.Text.Append("hlim ").Append(ip.HopLimit).Append(", next-header ").Append(IPProtocols.Name(ip.NextHeader) ?? "unknown")
            .Append(" (").Append(ip.NextHeader).Append("), payload length ").Append(ip.PayloadLength).Append(") ");
        var source = ip.Source.ToString();
        var destination = ip.Destination.ToString();
        if (ip.ExtensionHeaders.Length > 0)
        {
            s.Text.Append("[ext ").Append(ip.ExtensionHeaders.Length).Append(" bytes] ");
        }
        if (ip.IsFragment)
        {
            s.Text.Append("frag (0x").Append(ip.FragmentIdentification.ToString("x8", CultureInfo.InvariantCulture)).Append(':')
                .Append(ip.FragmentOffset).Append('|').Append(ip.UpperLayerPayload.Length).Append(ip.MoreFragments ? ", more" : "").Append(") ");
            if (ip.FragmentOffset != 0)
            {
                s.Text.Append(source).Append(" > ").Append(destination).Append(": fragment, length ").Append(ip.UpperLayerPayload.Length);
                return;
            }
        }
        DecodeTransport(ref s, ip.UpperLayerProtocol, ip.UpperLayerPayload, source, destination, ip.MoreFragments);
    }

    private static void DecodeTransport(ref State s, byte protocol, ReadOnlySpan<byte> payload, string source, string destination, bool firstFragment)
    {
        switch (protocol)
        {
            case IPProtocols.Udp:
                DecodeUdp(ref s, payload, source, destination, firstFragment);
                break;
            case IPProtocols.Tcp:
                DecodeTcp(ref s, payload, source, destination);
                break;
            case IPProtocols.Icmp:
                s.Text.Append(source).Append(" > ").Append(destination).Append(": ");
                DecodeIcmp(ref s, payload);
                break;
            case IPProtocols.IcmpV6:
                s.Text.Append(source).Append(" > ").Append(destination).Append(": ");
                DecodeIcmpV6(ref s, payload);
                break;
            default:
                s.Text.Append(source).Append(" > ").Append(destination).Append(": ").Append(IPProtocols.Name(protocol) ?? "ip-proto-" + protocol)
                    .Append(", length ").Append(payload.Length);
                break;
        }
    }

    private static void DecodeUdp(ref State s, ReadOnlySpan<byte> payload, string source, string destination, bool firstFragment)
    {
        if (!UdpDatagram.TryCreate(payload, out var udp, out var error))
        {
            // The first fragment of a large datagram holds only part of what the UDP length field announces.
            if (firstFragment && error == WireError.TotalLengthExceedsBuffer)
            {
                s.Text.Append(source).Append('.').Append((payload[0] << 8) | payload[1]).Append(" > ").Append(destination).Append('.')
                    .Append((payload[2] << 8) | payload[3]).Append(": UDP, length ").Append(((payload[4] << 8) | payload[5]) - UdpDatagram.HeaderLength)
                    .Append(" (first fragment)");
                return;
            }
            s.Text.Append(source).Append(" > ").Append(destination).Append(": ");
            s.Refuse("UDP", error, $"{payload.Length} bytes");
            return;
        }
        s.Text.Append(source).Append('.').Append(udp.SourcePort).Append(" > ").Append(destination).Append('.').Append(udp.DestinationPort).Append(": ");
        if ((udp.DestinationPort == FabricHeader.DefaultUdpPort || udp.SourcePort == FabricHeader.DefaultUdpPort) && s.Depth < MaxOverlayDepth)
        {
            DecodeFabric(ref s, udp.Payload);
            return;
        }
        s.Text.Append("UDP, length ").Append(udp.Payload.Length);
    }

    private static void DecodeFabric(ref State s, ReadOnlySpan<byte> payload)
    {
        if (!FabricHeader.TryCreate(payload, out var header, out var error))
        {
            s.Refuse("Fabric", error, $"{payload.Length} bytes");
            return;
        }
        s.Text.Append("Fabric v").Append(header.Version).Append(", slot ").Append(header.Slot).Append(", vni ").Append(header.VirtualNetworkId)
            .Append(", seq ").Append(header.PathSequence).Append(", ts ").Append(header.SendTimestampMicros)
            .Append(", ").Append(header.PayloadType switch
            {
                FabricPayloadType.Ethernet => "ethernet",
                FabricPayloadType.StackControl => "stack-control",
                FabricPayloadType.Probe => "probe",
                FabricPayloadType.ProbeReply => "probe-reply",
                FabricPayloadType.StackEncoded => "stack-encoded",
                _ => "type " + (byte)header.PayloadType,
            });
        if (header.StackFieldLength > 0)
        {
            s.Text.Append(", stack fields ").Append(header.StackFieldLength);
        }
        s.Text.Append(", length ").Append(header.Payload.Length);
        if (header.PayloadType == FabricPayloadType.Ethernet)
        {
            s.Text.Append(": { ");
            s.Depth++;
            DecodeEthernet(ref s, header.Payload, header.Payload.Length);
            s.Depth--;
            s.Text.Append(" }");
        }
    }

    private static void DecodeTcp(ref State s, ReadOnlySpan<byte> payload, string source, string destination)
    {
        if (!TcpSegment.TryCreate(payload, out var tcp, out var error))
        {
            s.Text.Append(source).Append(" > ").Append(destination).Append(": ");
            s.Refuse("TCP", error, $"{payload.Length} bytes, data offset {(payload.Length > 12 ? (payload[12] >> 4) * 4 : 0)}");
            return;
        }
        s.Text.Append(source).Append('.').Append(tcp.SourcePort).Append(" > ").Append(destination).Append('.').Append(tcp.DestinationPort)
            .Append(": Flags [");
        var flags = tcp.Flags;
        if ((flags & TcpFlags.Syn) != 0) { s.Text.Append('S'); }
        if ((flags & TcpFlags.Fin) != 0) { s.Text.Append('F'); }
        if ((flags & TcpFlags.Psh) != 0) { s.Text.Append('P'); }
        if ((flags & TcpFlags.Rst) != 0) { s.Text.Append('R'); }
        if ((flags & TcpFlags.Urg) != 0) { s.Text.Append('U'); }
        if ((flags & TcpFlags.Ece) != 0) { s.Text.Append('E'); }
        if ((flags & TcpFlags.Cwr) != 0) { s.Text.Append('W'); }
        if ((flags & TcpFlags.Ack) != 0) { s.Text.Append('.'); }
        s.Text.Append("], seq ").Append(tcp.SequenceNumber);
        if (tcp.Payload.Length > 0)
        {
            s.Text.Append(':').Append(unchecked(tcp.SequenceNumber + (uint)tcp.Payload.Length));
        }
        if ((flags & TcpFlags.Ack) != 0)
        {
            s.Text.Append(", ack ").Append(tcp.AcknowledgmentNumber);
        }
        s.Text.Append(", win ").Append(tcp.Window);
        var any = false;
        foreach (var option in tcp.Options)
        {
            s.Text.Append(any ? "," : ", options [");
            any = true;
            s.Text.Append(option.Kind switch
            {
                TcpOptionKind.MaximumSegmentSize when option.Data.Length == 2 => "mss " + ((option.Data[0] << 8) | option.Data[1]),
                TcpOptionKind.WindowScale when option.Data.Length == 1 => "wscale " + option.Data[0],
                TcpOptionKind.SackPermitted => "sackOK",
                TcpOptionKind.Sack => "sack " + (option.Data.Length / 8),
                TcpOptionKind.Timestamps when option.Data.Length == 8 =>
                    "TS val " + (((uint)option.Data[0] << 24) | ((uint)option.Data[1] << 16) | ((uint)option.Data[2] << 8) | option.Data[3])
                    + " ecr " + (((uint)option.Data[4] << 24) | ((uint)option.Data[5] << 16) | ((uint)option.Data[6] << 8) | option.Data[7]),
                _ => "opt-" + (byte)option.Kind,
            });
        }
        if (any)
        {
            s.Text.Append(']');
        }
        s.Text.Append(", length ").Append(tcp.Payload.Length);
    }

    private static void DecodeIcmp(ref State s, ReadOnlySpan<byte> payload)
    {
        if (!IcmpV4Message.TryCreate(payload, out var icmp, out var error))
        {
            s.Refuse("ICMP", error, $"{payload.Length} bytes");
            return;
        }
        s.Text.Append("ICMP ");
        switch (icmp.Type)
        {
            case IcmpV4Message.EchoRequest or IcmpV4Message.EchoReply:
                s.Text.Append(icmp.Type == IcmpV4Message.EchoRequest ? "echo request" : "echo reply").Append(", id ").Append(icmp.Identifier)
                    .Append(", seq ").Append(icmp.SequenceNumber);
                break;
            case IcmpV4Message.DestinationUnreachable:
                s.Text.Append("unreachable, code ").Append(icmp.Code);
                if (icmp.Code == IcmpV4Message.FragmentationNeeded)
                {
                    s.Text.Append(", need to frag (mtu ").Append(icmp.NextHopMtu).Append(')');
                }
                break;
            case IcmpV4Message.TimeExceeded:
                s.Text.Append("time exceeded, code ").Append(icmp.Code);
                break;
            default:
                s.Text.Append("type ").Append(icmp.Type).Append(", code ").Append(icmp.Code);
                break;
        }
        s.Text.Append(", length ").Append(payload.Length);
    }

    private static void DecodeIcmpV6(ref State s, ReadOnlySpan<byte> payload)
    {
        if (!IcmpV6Message.TryCreate(payload, out var icmp, out var error))
        {
            s.Refuse("ICMP6", error, $"{payload.Length} bytes");
            return;
        }
        s.Text.Append("ICMP6, ");
        switch (icmp.Type)
        {
            case IcmpV6Types.EchoRequest or IcmpV6Types.EchoReply:
                s.Text.Append(icmp.Type == IcmpV6Types.EchoRequest ? "echo request" : "echo reply").Append(", id ").Append(icmp.EchoIdentifier)
                    .Append(", seq ").Append(icmp.EchoSequence);
                break;
            case IcmpV6Types.NeighborSolicitation:
                s.Text.Append("neighbor solicitation, who has ").Append(icmp.TargetAddress);
                break;
            case IcmpV6Types.NeighborAdvertisement:
                s.Text.Append("neighbor advertisement, tgt is ").Append(icmp.TargetAddress);
                break;
            case IcmpV6Types.RouterSolicitation:
                s.Text.Append("router solicitation");
                break;
            case IcmpV6Types.RouterAdvertisement:
                s.Text.Append("router advertisement, hop limit ").Append(icmp.RouterCurrentHopLimit).Append(", router lifetime ")
                    .Append(icmp.RouterLifetime).Append('s');
                break;
            case IcmpV6Types.Redirect:
                s.Text.Append("redirect, target ").Append(icmp.TargetAddress);
                break;
            case IcmpV6Types.PacketTooBig:
                s.Text.Append("packet too big, mtu ").Append(icmp.PacketTooBigMtu);
                break;
            case IcmpV6Types.MulticastListenerQuery:
                s.Text.Append("multicast listener query");
                break;
            case IcmpV6Types.MulticastListenerReport or IcmpV6Types.MulticastListenerReportV2:
                s.Text.Append(icmp.Type == IcmpV6Types.MulticastListenerReportV2 ? "multicast listener report v2" : "multicast listener report");
                break;
            case IcmpV6Types.DestinationUnreachable:
                s.Text.Append("destination unreachable, code ").Append(icmp.Code);
                break;
            case IcmpV6Types.TimeExceeded:
                s.Text.Append("time exceeded, code ").Append(icmp.Code);
                break;
            default:
                s.Text.Append("type ").Append(icmp.Type).Append(", code ").Append(icmp.Code);
                break;
        }
        foreach (var option in icmp.Options)
        {
            if (option.TryGetLinkLayerAddress(out var mac))
            {
                s.Text.Append(option.Type == NdOptionType.SourceLinkLayerAddress ? ", source link-address " : ", target link-address ").Append(mac);
            }
        }
        s.Text.Append(", length ").Append(payload.Length);
    }
}
