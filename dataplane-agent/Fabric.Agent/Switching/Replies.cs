using System.Buffers.Binary;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>
/// Frames the switch writes to a VM on behalf of the network: ARP replies and neighbour advertisements answered from
/// the forwarding table, ICMP "fragmentation needed" / ICMPv6 "packet too big" for frames larger than the path, and
/// IPv4 fragments. Every method writes into a caller's buffer and returns the frame length (0 when nothing is written).
/// </summary>
public static class Replies
{
    /// <summary>An ARP reply telling <paramref name="request"/>'s sender that the asked-for address is at <paramref name="targetMac"/>.</summary>
    public static int ArpReply(in ArpRepr request, MacAddress targetMac, Span<byte> output)
    {
        var at = EthernetWriter.Write(output, request.SenderHardware, targetMac, EtherTypes.Arp);
        at += new ArpRepr(ArpOperation.Reply, targetMac, request.TargetProtocol, request.SenderHardware, request.SenderProtocol).Write(output[at..]);
        return at;
    }

    /// <summary>A solicited neighbour advertisement for <paramref name="target"/> at <paramref name="targetMac"/>, to the soliciting VM.</summary>
    public static int NeighborAdvertisement(MacAddress vmMac, IPv6Address vmAddress, IPv6Address target, MacAddress targetMac, Span<byte> output)
    {
        var at = EthernetWriter.Write(output, vmMac, targetMac, EtherTypes.IPv6);
        at += new IPv6Repr(target, vmAddress, IPProtocols.IcmpV6, 255, 32).Write(output[at..]);
        at += IcmpV6Writer.WriteNeighborAdvertisement(output[at..], target, vmAddress, target, targetMac, router: false, solicited: true, overrideFlag: true);
        return at;
    }

    /// <summary>ICMP type 3 code 4 with the path's MTU, quoting the offending packet's header and 8 bytes (RFC 792, RFC 1191).</summary>
    public static int FragmentationNeeded(in EthernetFrame frame, in IPv4Packet packet, int mtu, Span<byte> output)
    {
        var quoted = packet.Bytes[..Math.Min(packet.Bytes.Length, packet.HeaderLength + 8)];
        var at = EthernetWriter.Write(output, frame.Source, frame.Destination, EtherTypes.IPv4);
        var icmpLength = IcmpV4Message.HeaderLength + quoted.Length;
        // The answer comes "from" the destination: the VM's stack accepts PMTU messages quoting its own packet.
        at += new IPv4Repr(packet.Destination, packet.Source, IPProtocols.Icmp, 64, icmpLength, DontFragment: false).Write(output[at..]);
        quoted.CopyTo(output[(at + 8)..]);
        IcmpV4Writer.Write(output[at..], IcmpV4Message.DestinationUnreachable, IcmpV4Message.FragmentationNeeded, 0, (ushort)mtu, quoted.Length);
        return at + icmpLength;
    }

    /// <summary>ICMPv6 Packet Too Big with the path's MTU, quoting as much of the packet as keeps the reply within 1280 bytes (RFC 4443).</summary>
    public static int PacketTooBig(in EthernetFrame frame, in IPv6Packet packet, int mtu, Span<byte> output)
    {
        var quoted = packet.Bytes[..Math.Min(packet.Bytes.Length, 1280 - IPv6Packet.HeaderLength - 8)];
        var at = EthernetWriter.Write(output, frame.Source, frame.Destination, EtherTypes.IPv6);
        var icmpLength = 8 + quoted.Length;
        at += new IPv6Repr(packet.Destination, packet.Source, IPProtocols.IcmpV6, 64, icmpLength).Write(output[at..]);
        var icmp = output.Slice(at, icmpLength);
        icmp[0] = IcmpV6Types.PacketTooBig;
        icmp[1] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(icmp[4..], (uint)mtu);
        quoted.CopyTo(icmp[8..]);
        IcmpV6Writer.SetChecksum(icmp, packet.Destination, packet.Source);
        return at + icmpLength;
    }

    /// <summary>
    /// Splits an IPv4 packet without DF into fragments of at most <paramref name="mtu"/> bytes (RFC 791 §3.2), each
    /// handed to <paramref name="emit"/> as a complete Ethernet frame in <paramref name="scratch"/>. Options are copied into
    /// every fragment. Returns the number of fragments.
    /// </summary>
    public static int Fragment(in EthernetFrame frame, in IPv4Packet packet, int mtu, Span<byte> scratch, FrameSink emit)
    {
        var header = packet.Bytes[..packet.HeaderLength];
        var data = packet.Payload;
        var chunk = (mtu - header.Length) & ~7;
        if (chunk <= 0)
        {
            return 0;
        }
        var baseOffset = packet.FragmentOffset;
        var count = 0;
        for (var offset = 0; offset < data.Length; offset += chunk)
        {
            var length = Math.Min(chunk, data.Length - offset);
            var last = offset + length >= data.Length;
            var at = EthernetWriter.Write(scratch, frame.Destination, frame.Source, EtherTypes.IPv4);
            var ip = scratch.Slice(at, header.Length + length);
            header.CopyTo(ip);
            data.Slice(offset, length).CopyTo(ip[header.Length..]);
            BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)ip.Length);
            var more = !last || packet.MoreFragments;
            BinaryPrimitives.WriteUInt16BigEndian(ip[6..], (ushort)((more ? 0x2000 : 0) | ((baseOffset + offset) / 8)));
            BinaryPrimitives.WriteUInt16BigEndian(ip[10..], 0);
            BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Compute(ip[..header.Length]));
            emit(scratch[..(at + ip.Length)]);
            count++;
        }
        return count;
    }

    /// <summary>Receives frames the helpers produce.</summary>
    public delegate void FrameSink(ReadOnlySpan<byte> frame);
}
