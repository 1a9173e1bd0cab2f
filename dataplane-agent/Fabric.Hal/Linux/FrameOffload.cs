using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Fabric.Wire;

namespace Fabric.Hal.Linux;

/// <summary>
/// The virtio-net header a packet socket with PACKET_VNET_HDR puts before each frame (10 bytes, little-endian): what the
/// kernel left undone on a frame from a VM (a checksum to finish, a large TCP or UDP segment to cut), or asks of a frame to
/// a VM (a coalesced segment whose checksum nobody needs to verify).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public record struct VirtioNetHeader(byte Flags, byte GsoType, ushort HeaderLength, ushort GsoSize, ushort ChecksumStart, ushort ChecksumOffset)
{
    public const int Size = 10;
    public const byte NeedsChecksum = 1;
    public const byte GsoNone = 0;
    public const byte GsoTcpV4 = 1;
    public const byte GsoTcpV6 = 4;
    public const byte GsoUdpL4 = 5;
    public const byte GsoEcn = 0x80;

    /// <summary>True when the frame is complete as it stands: no checksum to finish and nothing to cut.</summary>
    public readonly bool IsPlain => (Flags & NeedsChecksum) == 0 && (GsoType & ~GsoEcn) == GsoNone;

    public static VirtioNetHeader Read(ReadOnlySpan<byte> bytes) => new(bytes[0], bytes[1],
        BinaryPrimitives.ReadUInt16LittleEndian(bytes[2..]), BinaryPrimitives.ReadUInt16LittleEndian(bytes[4..]),
        BinaryPrimitives.ReadUInt16LittleEndian(bytes[6..]), BinaryPrimitives.ReadUInt16LittleEndian(bytes[8..]));

    public readonly void Write(Span<byte> bytes)
    {
        bytes[0] = Flags;
        bytes[1] = GsoType;
        BinaryPrimitives.WriteUInt16LittleEndian(bytes[2..], HeaderLength);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes[4..], GsoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes[6..], ChecksumStart);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes[8..], ChecksumOffset);
    }
}

/// <summary>
/// Segmentation and checksum work the kernel hands to a port with offloads (<see cref="AfPacketOptions.Offloads"/>):
/// finishing a partial checksum, cutting a large TCP or UDP segment from a VM into frames no larger than its MSS, and
/// recognising runs of TCP segments of one flow that a VM can take as one (the reverse, done by
/// <see cref="AfPacketPort.TransmitBatch"/>). Pure functions over spans; nothing here trusts the header's lengths
/// beyond what the frame's own headers confirm.
/// </summary>
public static class FrameOffload
{
    private const int Ethernet = 14;
    private const ushort EtherIPv4 = EtherTypes.IPv4;
    private const ushort EtherIPv6 = EtherTypes.IPv6;
    private const byte Tcp = IPProtocols.Tcp;
    private const byte Udp = IPProtocols.Udp;
    private const byte Sctp = 132;
    private const byte TcpFin = 0x01;
    private const byte TcpSyn = 0x02;
    private const byte TcpRst = 0x04;
    private const byte TcpPsh = 0x08;
    private const byte TcpAck = 0x10;
    private const byte TcpCwr = 0x80;

    /// <summary>The most frames one large segment is cut into; a header asking for more is refused.</summary>
    public const int MaxSegments = 256;

    /// <summary>The one's complement sum of <paramref name="data"/> added to <paramref name="sum"/> (unfolded, network order).</summary>
    public static ulong Sum(ReadOnlySpan<byte> data, ulong sum = 0) => Checksum.Accumulate(sum, data);

    /// <summary>Folds a sum to 16 bits (not complemented).</summary>
    public static ushort Fold(ulong sum) => (ushort)~Checksum.Finish(sum);

    /// <summary>The pseudo-header sum of a TCP or UDP packet of <paramref name="l4Length"/> bytes in <paramref name="frame"/>'s IP packet.</summary>
    private static ulong PseudoHeader(ReadOnlySpan<byte> frame, bool ipv6, byte protocol, int l4Length) => ipv6
        ? Sum(frame.Slice(Ethernet + 8, 32), (ulong)l4Length + protocol)
        : Sum(frame.Slice(Ethernet + 12, 8), (ulong)l4Length + protocol);

    /// <summary>
    /// Completes a frame whose checksum the kernel left partial (NEEDS_CSUM): the sum from the header's start to the end,
    /// folded and complemented, at the header's offset. False when the header points outside the frame.
    /// </summary>
    public static bool FinishChecksum(Span<byte> frame, in VirtioNetHeader header)
    {
        int start = header.ChecksumStart, at = header.ChecksumStart + header.ChecksumOffset;
        if (start < Ethernet || at + 2 > frame.Length)
        {
            return false;
        }
        if (TryTransport(frame, out var protocol, out var transport) && protocol == Sctp && start == transport && header.ChecksumOffset == 8 && at + 4 <= frame.Length)
        {
            // SCTP's checksum is a CRC32c (RFC 9260 App. A), which a NIC with SCTP checksum offload computes: so does this.
            BinaryPrimitives.WriteUInt32LittleEndian(frame[at..], 0);
            BinaryPrimitives.WriteUInt32LittleEndian(frame[at..], Crc32C(frame[start..]));
            return true;
        }
        // Anything else must be the Internet checksum of a TCP or UDP header where the frame's own headers put it.
        if (!TryLayout(frame, out var layout) || start != layout.Transport || header.ChecksumOffset != (layout.Protocol == Tcp ? 16 : 6))
        {
            return false;
        }
        var check = (ushort)~Fold(Sum(frame[start..]));
        // A UDP checksum that comes out 0 is sent as all ones (0 means "none" for UDP over IPv4).
        if (check == 0 && header.ChecksumOffset == 6)
        {
            check = 0xFFFF;
        }
        BinaryPrimitives.WriteUInt16BigEndian(frame[at..], check);
        return true;
    }

    /// <summary>CRC32c (Castagnoli) of <paramref name="data"/>, as SCTP puts it in its common header (to be written little-endian).</summary>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        var crc = 0xFFFF_FFFFu;
        var i = 0;
        for (; i + 8 <= data.Length; i += 8)
        {
            crc = System.Numerics.BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data[i..]));
        }
        for (; i < data.Length; i++)
        {
            crc = System.Numerics.BitOperations.Crc32C(crc, data[i]);
        }
        return ~crc;
    }

    /// <summary>The transport protocol and offset of an unfragmented IPv4 or IPv6 (no extension headers) packet.</summary>
    private static bool TryTransport(ReadOnlySpan<byte> frame, out byte protocol, out int transport)
    {
        (protocol, transport) = (0, 0);
        if (frame.Length < Ethernet + 20)
        {
            return false;
        }
        var etherType = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        if (etherType == EtherIPv4 && frame[Ethernet] >> 4 == 4 && (frame[Ethernet] & 0x0F) >= 5 && frame.Length >= Ethernet + ((frame[Ethernet] & 0x0F) * 4))
        {
            (protocol, transport) = (frame[Ethernet + 9], Ethernet + ((frame[Ethernet] & 0x0F) * 4));
            return true;
        }
        if (etherType == EtherIPv6 && frame.Length >= Ethernet + 40 && frame[Ethernet] >> 4 == 6)
        {
            (protocol, transport) = (frame[Ethernet + 6], Ethernet + 40);
            return true;
        }
        return false;
    }

    /// <summary>Where a TCP or UDP packet's layers start in a frame: the transport header's offset and length, the IP version.</summary>
    private readonly record struct Layout(bool IPv6, byte Protocol, int Transport, int TransportHeader)
    {
        public int Headers => Transport + TransportHeader;
    }

    private static bool TryLayout(ReadOnlySpan<byte> frame, out Layout layout)
    {
        layout = default;
        if (frame.Length < Ethernet + 20)
        {
            return false;
        }
        var etherType = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        int transport;
        byte protocol;
        bool ipv6;
        if (etherType == EtherIPv4)
        {
            var ihl = (frame[Ethernet] & 0x0F) * 4;
            // A fragment (more fragments, or an offset) is never a segment to cut or join.
            if (frame[Ethernet] >> 4 != 4 || ihl < 20 || frame.Length < Ethernet + ihl || (BinaryPrimitives.ReadUInt16BigEndian(frame[(Ethernet + 6)..]) & 0x3FFF) != 0)
            {
                return false;
            }
            (transport, protocol, ipv6) = (Ethernet + ihl, frame[Ethernet + 9], false);
        }
        else if (etherType == EtherIPv6 && frame.Length >= Ethernet + 40 && frame[Ethernet] >> 4 == 6)
        {
            // Extension headers are not followed: such packets are never offloaded by Linux's TCP, and never joined here.
            (transport, protocol, ipv6) = (Ethernet + 40, frame[Ethernet + 6], true);
        }
        else
        {
            return false;
        }
        int transportHeader;
        if (protocol == Tcp && frame.Length >= transport + 20)
        {
            transportHeader = (frame[transport + 12] >> 4) * 4;
            if (transportHeader < 20)
            {
                return false;
            }
        }
        else if (protocol == Udp)
        {
            transportHeader = 8;
        }
        else
        {
            return false;
        }
        if (frame.Length < transport + transportHeader)
        {
            return false;
        }
        layout = new Layout(ipv6, protocol, transport, transportHeader);
        return true;
    }

    /// <summary>
    /// How many frames <see cref="Segment"/> cuts <paramref name="frame"/> into: 0 when it cannot (not TCP or UDP over
    /// IPv4/IPv6 as the header's type says, no segment size, no payload, or more than <see cref="MaxSegments"/>).
    /// </summary>
    public static int SegmentCount(ReadOnlySpan<byte> frame, in VirtioNetHeader header)
    {
        var type = header.GsoType & ~VirtioNetHeader.GsoEcn;
        if (header.GsoSize == 0 || !TryLayout(frame, out var layout))
        {
            return 0;
        }
        var expected = type switch
        {
            VirtioNetHeader.GsoTcpV4 => layout is { IPv6: false, Protocol: Tcp },
            VirtioNetHeader.GsoTcpV6 => layout is { IPv6: true, Protocol: Tcp },
            VirtioNetHeader.GsoUdpL4 => layout.Protocol == Udp,
            _ => false,
        };
        var payload = frame.Length - layout.Headers;
        var count = expected && payload > 0 ? (payload + header.GsoSize - 1) / header.GsoSize : 0;
        // A tiny segment size is what a guest writing its own header may claim to turn one frame into thousands: a 64 KiB
        // segment cut at an MSS of 256 is the most any stack asks.
        return count <= MaxSegments ? count : 0;
    }

    /// <summary>
    /// Writes segment <paramref name="index"/> of a large TCP or UDP segment into <paramref name="output"/> and returns its
    /// length: the frame's headers with lengths, IPv4 id, sequence number, flags and checksums made right for that slice
    /// of the payload (FIN and PSH only on the last, CWR only on the first). Call with 0 ≤ index &lt;
    /// <see cref="SegmentCount"/>.
    /// </summary>
    public static int Segment(ReadOnlySpan<byte> frame, in VirtioNetHeader header, int index, Span<byte> output)
    {
        TryLayout(frame, out var layout);
        var size = (int)header.GsoSize;
        var headers = layout.Headers;
        var offset = index * size;
        var chunk = Math.Min(size, frame.Length - headers - offset);
        var length = headers + chunk;
        frame[..headers].CopyTo(output);
        frame.Slice(headers + offset, chunk).CopyTo(output[headers..]);
        var segment = output[..length];
        var l4Length = length - layout.Transport;
        if (layout.IPv6)
        {
            BinaryPrimitives.WriteUInt16BigEndian(segment[(Ethernet + 4)..], (ushort)(length - Ethernet - 40));
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(segment[(Ethernet + 2)..], (ushort)(length - Ethernet));
            var id = BinaryPrimitives.ReadUInt16BigEndian(frame[(Ethernet + 4)..]);
            BinaryPrimitives.WriteUInt16BigEndian(segment[(Ethernet + 4)..], (ushort)(id + index));
            segment[Ethernet + 10] = 0;
            segment[Ethernet + 11] = 0;
            BinaryPrimitives.WriteUInt16BigEndian(segment[(Ethernet + 10)..], (ushort)~Fold(Sum(segment[Ethernet..layout.Transport])));
        }
        var transport = segment[layout.Transport..];
        int checksumAt;
        if (layout.Protocol == Tcp)
        {
            var sequence = BinaryPrimitives.ReadUInt32BigEndian(frame[(layout.Transport + 4)..]);
            BinaryPrimitives.WriteUInt32BigEndian(transport[4..], sequence + (uint)offset);
            var last = offset + chunk >= frame.Length - headers;
            var flags = transport[13];
            if (!last)
            {
                flags &= unchecked((byte)~(TcpFin | TcpPsh));
            }
            if (index > 0)
            {
                flags &= unchecked((byte)~TcpCwr);
            }
            transport[13] = flags;
            checksumAt = 16;
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(transport[4..], (ushort)l4Length);
            checksumAt = 6;
        }
        transport[checksumAt] = 0;
        transport[checksumAt + 1] = 0;
        var check = (ushort)~Fold(Sum(transport, PseudoHeader(segment, layout.IPv6, layout.Protocol, l4Length)));
        if (check == 0 && layout.Protocol == Udp)
        {
            check = 0xFFFF;
        }
        BinaryPrimitives.WriteUInt16BigEndian(transport[checksumAt..], check);
        return length;
    }

    /// <summary>
    /// The headers' length of a TCP segment that may be joined with others (plain ACK, or ACK with PSH), or 0. A joined
    /// segment reaches the VM marked as needing no checksum check, so every frame is checked here as the VM's stack would
    /// have: IP length equal to the frame's (no padding taken for data), IPv4 header and TCP checksums valid.
    /// </summary>
    public static int JoinableHeaders(ReadOnlySpan<byte> frame)
    {
        if (!TryLayout(frame, out var layout) || layout.Protocol != Tcp || frame.Length <= layout.Headers)
        {
            return 0;
        }
        if (!layout.IPv6 && (frame[Ethernet] & 0x0F) != 5)
        {
            return 0; // IP options: left alone
        }
        var flags = frame[layout.Transport + 13];
        if ((flags & ~TcpPsh) != TcpAck)
        {
            return 0;
        }
        var ipLength = layout.IPv6
            ? BinaryPrimitives.ReadUInt16BigEndian(frame[(Ethernet + 4)..]) + 40
            : BinaryPrimitives.ReadUInt16BigEndian(frame[(Ethernet + 2)..]);
        if (ipLength != frame.Length - Ethernet
            || (!layout.IPv6 && Fold(Sum(frame[Ethernet..layout.Transport])) != 0xFFFF)
            || Fold(Sum(frame[layout.Transport..], PseudoHeader(frame, layout.IPv6, Tcp, frame.Length - layout.Transport))) != 0xFFFF)
        {
            return 0;
        }
        return layout.Headers;
    }

    /// <summary>
    /// True when <paramref name="next"/> continues <paramref name="previous"/> (both joinable, <paramref name="headers"/>
    /// bytes of headers each): same addresses, ports, acknowledgement, window, options and IP fields but lengths, ids
    /// and checksums; its sequence number right after <paramref name="previous"/>'s payload; <paramref name="previous"/>
    /// without PSH (a push ends a run).
    /// </summary>
    public static bool Continues(ReadOnlySpan<byte> previous, ReadOnlySpan<byte> next, int headers)
    {
        if (next.Length <= headers || JoinableHeaders(next) != headers)
        {
            return false;
        }
        var transport = BinaryPrimitives.ReadUInt16BigEndian(previous[12..]) == EtherIPv6 ? Ethernet + 40 : Ethernet + 20;
        if ((previous[transport + 13] & TcpPsh) != 0)
        {
            return false;
        }
        // Ethernet header, then IP: v4 compares TOS, flags, TTL, protocol, addresses; v6 version/class/flow, next header, hop limit, addresses.
        if (!previous[..Ethernet].SequenceEqual(next[..Ethernet]))
        {
            return false;
        }
        if (transport == Ethernet + 20)
        {
            if (previous[Ethernet + 1] != next[Ethernet + 1] || !previous.Slice(Ethernet + 6, 4).SequenceEqual(next.Slice(Ethernet + 6, 4))
                || !previous.Slice(Ethernet + 12, 8).SequenceEqual(next.Slice(Ethernet + 12, 8)))
            {
                return false;
            }
        }
        else if (!previous.Slice(Ethernet, 4).SequenceEqual(next[Ethernet..(Ethernet + 4)]) || !previous.Slice(Ethernet + 6, 34).SequenceEqual(next.Slice(Ethernet + 6, 34)))
        {
            return false;
        }
        // Ports; then acknowledgement, data offset, window; then options (everything after the checksum and urgent pointer).
        if (!previous.Slice(transport, 4).SequenceEqual(next.Slice(transport, 4))
            || !previous.Slice(transport + 8, 5).SequenceEqual(next.Slice(transport + 8, 5))
            || !previous.Slice(transport + 14, 2).SequenceEqual(next.Slice(transport + 14, 2))
            || !previous[(transport + 20)..headers].SequenceEqual(next[(transport + 20)..headers]))
        {
            return false;
        }
        var expected = BinaryPrimitives.ReadUInt32BigEndian(previous[(transport + 4)..]) + (uint)(previous.Length - headers);
        return BinaryPrimitives.ReadUInt32BigEndian(next[(transport + 4)..]) == expected;
    }

    /// <summary>
    /// Rewrites the first segment of a run into the head of one large segment of <paramref name="payload"/> bytes in all:
    /// IP length (and IPv4 header checksum), PSH if the run's last had it, and the TCP checksum field holding the pseudo-header
    /// sum as the kernel expects of a partial checksum. Returns the virtio-net header that goes with it.
    /// </summary>
    public static VirtioNetHeader JoinHead(Span<byte> first, int headers, int segmentSize, int payload, bool push)
    {
        var ipv6 = BinaryPrimitives.ReadUInt16BigEndian(first[12..]) == EtherIPv6;
        var transport = ipv6 ? Ethernet + 40 : Ethernet + 20;
        var l4Length = headers - transport + payload;
        if (ipv6)
        {
            BinaryPrimitives.WriteUInt16BigEndian(first[(Ethernet + 4)..], (ushort)l4Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(first[(Ethernet + 2)..], (ushort)(headers - Ethernet + payload));
            first[Ethernet + 10] = 0;
            first[Ethernet + 11] = 0;
            BinaryPrimitives.WriteUInt16BigEndian(first[(Ethernet + 10)..], (ushort)~Fold(Sum(first[Ethernet..transport])));
        }
        if (push)
        {
            first[transport + 13] |= TcpPsh;
        }
        BinaryPrimitives.WriteUInt16BigEndian(first[(transport + 16)..], Fold(PseudoHeader(first, ipv6, Tcp, l4Length)));
        return new VirtioNetHeader(VirtioNetHeader.NeedsChecksum, ipv6 ? VirtioNetHeader.GsoTcpV6 : VirtioNetHeader.GsoTcpV4,
            (ushort)headers, (ushort)segmentSize, (ushort)transport, 16);
    }

    /// <summary>True when a TCP segment's flags include PSH (the frame is joinable: see <see cref="JoinableHeaders"/>).</summary>
    public static bool Pushes(ReadOnlySpan<byte> frame)
    {
        var transport = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) == EtherIPv6 ? Ethernet + 40 : Ethernet + 20;
        return (frame[transport + 13] & TcpPsh) != 0;
    }
}
