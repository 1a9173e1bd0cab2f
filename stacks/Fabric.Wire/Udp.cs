using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>Zero-copy view of a UDP datagram (RFC 768).</summary>
/// <remarks>
/// <code>
///  0      2      4      6      8
///  +------+------+------+------+---------
///  | sport| dport|length| cksum| payload
///  +------+------+------+------+---------
/// </code>
/// TryCreate checks that the "length" field covers the header and fits the bytes; the view is bounded by it.
/// </remarks>
public readonly ref struct UdpDatagram
{
    public const int HeaderLength = 8;
    private const int LengthOffset = 4;
    private readonly ReadOnlySpan<byte> _bytes;

    private UdpDatagram(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Checks the length field.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out UdpDatagram datagram) => TryCreate(bytes, out datagram, out _);

    /// <summary>Checks the length field, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out UdpDatagram datagram, out WireError error)
    {
        datagram = default;
        if (bytes.Length < HeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        int length = BinaryPrimitives.ReadUInt16BigEndian(bytes[LengthOffset..]);
        if (length < HeaderLength)
        {
            error = WireError.TotalLengthTooSmall;
            return false;
        }
        if (length > bytes.Length)
        {
            error = WireError.TotalLengthExceedsBuffer;
            return false;
        }
        datagram = new UdpDatagram(bytes[..length]);
        error = WireError.None;
        return true;
    }

    /// <summary>The "source port" field.</summary>
    public ushort SourcePort => BinaryPrimitives.ReadUInt16BigEndian(_bytes);

    /// <summary>The "destination port" field.</summary>
    public ushort DestinationPort => BinaryPrimitives.ReadUInt16BigEndian(_bytes[2..]);

    /// <summary>The "length" field.</summary>
    public ushort Length => BinaryPrimitives.ReadUInt16BigEndian(_bytes[LengthOffset..]);

    /// <summary>The "checksum" field (0 means "not computed" over IPv4).</summary>
    public ushort ChecksumField => BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]);

    /// <summary>The data after the header, bounded by the length field.</summary>
    public ReadOnlySpan<byte> Payload => _bytes[HeaderLength..];

    /// <summary>The whole datagram, bounded by the length field.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;

    /// <summary>True when the checksum is correct under the IPv4 pseudo-header, or absent (zero).</summary>
    public bool VerifyChecksumV4(IPv4Address source, IPv4Address destination) =>
        ChecksumField == 0 || Checksum.ComputeV4(source, destination, IPProtocols.Udp, _bytes) == 0;

    /// <summary>True when the checksum is correct under the IPv6 pseudo-header (mandatory over IPv6).</summary>
    public bool VerifyChecksumV6(IPv6Address source, IPv6Address destination) =>
        ChecksumField != 0 && Checksum.ComputeV6(source, destination, IPProtocols.Udp, _bytes) == 0;
}

/// <summary>Writes UDP headers.</summary>
public static class UdpWriter
{
    /// <summary>Writes the header for a payload already in place after it; checksum 0 (none). Returns 8.</summary>
    public static int Write(Span<byte> datagram, ushort sourcePort, ushort destinationPort, int payloadLength)
    {
        var length = UdpDatagram.HeaderLength + payloadLength;
        if (length > ushort.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(payloadLength), payloadLength, "A UDP datagram holds at most 65527 payload bytes.");
        }
        BinaryPrimitives.WriteUInt16BigEndian(datagram, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(datagram[2..], destinationPort);
        BinaryPrimitives.WriteUInt16BigEndian(datagram[4..], (ushort)length);
        BinaryPrimitives.WriteUInt16BigEndian(datagram[6..], 0);
        return UdpDatagram.HeaderLength;
    }

    /// <summary>Fills in the checksum of a complete datagram under the IPv4 pseudo-header.</summary>
    public static void SetChecksumV4(Span<byte> datagram, IPv4Address source, IPv4Address destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(datagram[6..], 0);
        var sum = Checksum.ComputeV4(source, destination, IPProtocols.Udp, datagram);
        // RFC 768: a computed zero is sent as all ones, since zero means "no checksum".
        BinaryPrimitives.WriteUInt16BigEndian(datagram[6..], sum == 0 ? (ushort)0xFFFF : sum);
    }

    /// <summary>Fills in the checksum of a complete datagram under the IPv6 pseudo-header.</summary>
    public static void SetChecksumV6(Span<byte> datagram, IPv6Address source, IPv6Address destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(datagram[6..], 0);
        var sum = Checksum.ComputeV6(source, destination, IPProtocols.Udp, datagram);
        BinaryPrimitives.WriteUInt16BigEndian(datagram[6..], sum == 0 ? (ushort)0xFFFF : sum);
    }
}
