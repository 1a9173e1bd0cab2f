using Fabric.Wire;

namespace Fabric.Testing;

/// <summary>Builds the frames a VM would send.</summary>
public static class Frames
{
    /// <summary>A non-IP frame whose payload starts with <paramref name="marker"/> (the faulty test stack acts on such markers).</summary>
    public static byte[] Marked(MacAddress src, MacAddress dst, string marker)
    {
        var frame = new byte[14 + 100];
        EthernetWriter.Write(frame, dst, src, 0x88B5);
        System.Text.Encoding.ASCII.GetBytes(marker).CopyTo(frame, 14);
        return frame;
    }

    public static byte[] Udp(MacAddress src, MacAddress dst, string from, string to, int payload, bool dontFragment = true)
    {
        var frame = new byte[14 + 20 + 8 + payload];
        var at = EthernetWriter.Write(frame, dst, src, EtherTypes.IPv4);
        at += new IPv4Repr(IPv4Address.Parse(from), IPv4Address.Parse(to), IPProtocols.Udp, 64, 8 + payload, DontFragment: dontFragment, Identification: 7).Write(frame.AsSpan(at));
        UdpWriter.Write(frame.AsSpan(at), 1000, 2000, payload);
        frame.AsSpan(at + 8).Fill(0x5A);
        UdpWriter.SetChecksumV4(frame.AsSpan(at), IPv4Address.Parse(from), IPv4Address.Parse(to));
        return frame;
    }

    /// <summary>A TCP segment (ACK, PSH) carrying <paramref name="payload"/> bytes from sequence number <paramref name="sequence"/>.</summary>
    public static byte[] Tcp(MacAddress src, MacAddress dst, string from, string to, int payload, uint sequence = 1000)
    {
        var frame = new byte[14 + 20 + 20 + payload];
        var at = EthernetWriter.Write(frame, dst, src, EtherTypes.IPv4);
        at += new IPv4Repr(IPv4Address.Parse(from), IPv4Address.Parse(to), IPProtocols.Tcp, 64, 20 + payload, DontFragment: true, Identification: 9).Write(frame.AsSpan(at));
        new TcpRepr(40000, 5201, sequence, 1, TcpFlags.Ack | TcpFlags.Psh, 65535).Write(frame.AsSpan(at));
        frame.AsSpan(at + 20).Fill(0x5A);
        TcpRepr.SetChecksumV4(frame.AsSpan(at), IPv4Address.Parse(from), IPv4Address.Parse(to));
        return frame;
    }

    public static byte[] Udp6(MacAddress src, MacAddress dst, string from, string to, int payload)
    {
        var frame = new byte[14 + 40 + 8 + payload];
        var at = EthernetWriter.Write(frame, dst, src, EtherTypes.IPv6);
        at += new IPv6Repr(IPv6Address.Parse(from), IPv6Address.Parse(to), IPProtocols.Udp, 64, 8 + payload).Write(frame.AsSpan(at));
        UdpWriter.Write(frame.AsSpan(at), 1000, 2000, payload);
        UdpWriter.SetChecksumV6(frame.AsSpan(at), IPv6Address.Parse(from), IPv6Address.Parse(to));
        return frame;
    }

    public static byte[] ArpRequest(MacAddress src, string from, string who)
    {
        var frame = new byte[42];
        var at = EthernetWriter.Write(frame, MacAddress.Broadcast, src, EtherTypes.Arp);
        new ArpRepr(ArpOperation.Request, src, IPv4Address.Parse(from), default, IPv4Address.Parse(who)).Write(frame.AsSpan(at));
        return frame;
    }

    /// <summary>An unsolicited neighbour advertisement to all nodes: "<paramref name="target"/> is at <paramref name="src"/>".</summary>
    public static byte[] NeighborAdvertisement(MacAddress src, string from, string target)
    {
        var allNodes = IPv6Address.Parse("ff02::1");
        var frame = new byte[14 + 40 + 32];
        var at = EthernetWriter.Write(frame, new MacAddress(0x33_33_00_00_00_01), src, EtherTypes.IPv6);
        at += new IPv6Repr(IPv6Address.Parse(from), allNodes, IPProtocols.IcmpV6, 255, 32).Write(frame.AsSpan(at));
        IcmpV6Writer.WriteNeighborAdvertisement(frame.AsSpan(at), IPv6Address.Parse(from), allNodes, IPv6Address.Parse(target), src, router: false, solicited: false, overrideFlag: true);
        return frame;
    }

    public static byte[] NeighborSolicitation(MacAddress src, string from, string target)
    {
        var targetAddress = IPv6Address.Parse(target);
        var group = IcmpV6Writer.SolicitedNodeMulticast(targetAddress);
        var frame = new byte[14 + 40 + 32];
        var at = EthernetWriter.Write(frame, new MacAddress(0x33_33_FF_00_00_00 | (targetAddress.Low & 0xFF_FFFF)), src, EtherTypes.IPv6);
        at += new IPv6Repr(IPv6Address.Parse(from), group, IPProtocols.IcmpV6, 255, 32).Write(frame.AsSpan(at));
        IcmpV6Writer.WriteNeighborSolicitation(frame.AsSpan(at), IPv6Address.Parse(from), group, targetAddress, src);
        return frame;
    }
}
