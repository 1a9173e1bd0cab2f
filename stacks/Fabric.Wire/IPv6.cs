using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>Zero-copy view of an IPv6 packet (RFC 8200) with its extension headers walked.</summary>
/// <remarks>
/// <code>
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Traffic Class |           Flow Label                  |
/// |         Payload Length        |  Next Header  |   Hop Limit   |
/// |                  Source Address (128 bits)                    |
/// |               Destination Address (128 bits)                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | extension headers: hop-by-hop, routing, fragment, destination |
/// | options, AH — each (Next Header, Hdr Ext Len, ...)            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// </code>
/// TryCreate checks the fixed header, bounds the packet by Payload Length and walks the extension headers,
/// refusing any that runs past Payload Length. The walk stops at an upper-layer protocol, at ESP or No Next
/// Header, or after a fragment header whose offset is not zero (later fragments carry no upper-layer header).
/// </remarks>
public readonly ref struct IPv6Packet
{
    public const int HeaderLength = 40;
    public const int MaxExtensionHeaders = 8;
    private readonly ReadOnlySpan<byte> _bytes;
    private readonly int _upperOffset;
    private readonly byte _upperProtocol;
    private readonly int _fragmentHeaderOffset;

    private IPv6Packet(ReadOnlySpan<byte> bytes, int upperOffset, byte upperProtocol, int fragmentHeaderOffset)
    {
        _bytes = bytes;
        _upperOffset = upperOffset;
        _upperProtocol = upperProtocol;
        _fragmentHeaderOffset = fragmentHeaderOffset;
    }

    /// <summary>Validates the header and walks the extension headers.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IPv6Packet packet) => TryCreate(bytes, out packet, out _);

    /// <summary>Validates the header and walks the extension headers, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IPv6Packet packet, out WireError error)
    {
        packet = default;
        if (bytes.Length < HeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        if (bytes[0] >> 4 != 6)
        {
            error = WireError.BadVersion;
            return false;
        }
        var total = HeaderLength + BinaryPrimitives.ReadUInt16BigEndian(bytes[4..]);
        if (total > bytes.Length)
        {
            error = WireError.TotalLengthExceedsBuffer;
            return false;
        }
        bytes = bytes[..total];
        var next = bytes[6];
        var at = HeaderLength;
        var fragmentAt = -1;
        for (var walked = 0; ; walked++)
        {
            if (!IsExtensionHeader(next))
            {
                break;
            }
            if (walked == MaxExtensionHeaders)
            {
                error = WireError.TooManyHeaders;
                return false;
            }
            if (at + 8 > total)
            {
                error = WireError.ExtensionHeaderOverrun;
                return false;
            }
            var length = next switch
            {
                IPProtocols.IPv6Fragment => 8,
                IPProtocols.Ah => (bytes[at + 1] + 2) * 4,
                _ => (bytes[at + 1] + 1) * 8,
            };
            if (at + length > total)
            {
                error = WireError.ExtensionHeaderOverrun;
                return false;
            }
            var current = next;
            next = bytes[at];
            if (current == IPProtocols.IPv6Fragment)
            {
                fragmentAt = at;
                at += length;
                if ((BinaryPrimitives.ReadUInt16BigEndian(bytes[(at - 6)..]) & 0xFFF8) != 0)
                {
                    break; // A later fragment: what follows is the middle of the datagram, not a header.
                }
                continue;
            }
            at += length;
        }
        packet = new IPv6Packet(bytes, at, next, fragmentAt);
        error = WireError.None;
        return true;
    }

    private static bool IsExtensionHeader(byte next) =>
        next is IPProtocols.HopByHop or IPProtocols.IPv6Route or IPProtocols.IPv6Fragment or IPProtocols.IPv6DestinationOptions or IPProtocols.Ah;

    /// <summary>The "Traffic Class" field.</summary>
    public byte TrafficClass => (byte)(BinaryPrimitives.ReadUInt16BigEndian(_bytes) >> 4);

    /// <summary>The "Flow Label" field.</summary>
    public uint FlowLabel => BinaryPrimitives.ReadUInt32BigEndian(_bytes) & 0xFFFFF;

    /// <summary>The "Payload Length" field.</summary>
    public ushort PayloadLength => BinaryPrimitives.ReadUInt16BigEndian(_bytes[4..]);

    /// <summary>The "Next Header" field of the fixed header.</summary>
    public byte NextHeader => _bytes[6];

    /// <summary>The "Hop Limit" field.</summary>
    public byte HopLimit => _bytes[7];

    /// <summary>The "Source Address" field.</summary>
    public IPv6Address Source => IPv6Address.Read(_bytes[8..]);

    /// <summary>The "Destination Address" field.</summary>
    public IPv6Address Destination => IPv6Address.Read(_bytes[24..]);

    /// <summary>The protocol after the last extension header walked (TCP, UDP, ICMPv6, ESP, No Next Header...).</summary>
    public byte UpperLayerProtocol => _upperProtocol;

    /// <summary>The bytes after the last extension header walked.</summary>
    public ReadOnlySpan<byte> UpperLayerPayload => _bytes[_upperOffset..];

    /// <summary>The extension headers between the fixed header and <see cref="UpperLayerPayload"/>.</summary>
    public ReadOnlySpan<byte> ExtensionHeaders => _bytes[HeaderLength.._upperOffset];

    /// <summary>The bytes after the fixed header, bounded by Payload Length.</summary>
    public ReadOnlySpan<byte> Payload => _bytes[HeaderLength..];

    /// <summary>The packet, bounded by Payload Length.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;

    /// <summary>True when a fragment header was present.</summary>
    public bool IsFragment => _fragmentHeaderOffset >= 0;

    /// <summary>The fragment header's "Fragment Offset" in bytes (0 when not a fragment).</summary>
    public int FragmentOffset => IsFragment ? BinaryPrimitives.ReadUInt16BigEndian(_bytes[(_fragmentHeaderOffset + 2)..]) & 0xFFF8 : 0;

    /// <summary>The fragment header's "M" flag.</summary>
    public bool MoreFragments => IsFragment && (_bytes[_fragmentHeaderOffset + 3] & 1) != 0;

    /// <summary>The fragment header's "Identification" field (0 when not a fragment).</summary>
    public uint FragmentIdentification => IsFragment ? BinaryPrimitives.ReadUInt32BigEndian(_bytes[(_fragmentHeaderOffset + 4)..]) : 0;

    /// <summary>The parsed fixed header.</summary>
    public IPv6Repr ToRepr() => new(Source, Destination, NextHeader, HopLimit, PayloadLength, TrafficClass, FlowLabel);
}

/// <summary>A parsed IPv6 fixed header.</summary>
public readonly record struct IPv6Repr(IPv6Address Source, IPv6Address Destination, byte NextHeader, byte HopLimit, int PayloadLength,
    byte TrafficClass = 0, uint FlowLabel = 0)
{
    /// <summary>Writes the 40-byte fixed header; returns 40.</summary>
    public int Write(Span<byte> destination)
    {
        if ((uint)PayloadLength > ushort.MaxValue)
        {
            throw new InvalidOperationException($"PayloadLength {PayloadLength} needs a jumbogram, which is not supported.");
        }
        BinaryPrimitives.WriteUInt32BigEndian(destination, 0x6000_0000u | ((uint)TrafficClass << 20) | (FlowLabel & 0xFFFFF));
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)PayloadLength);
        destination[6] = NextHeader;
        destination[7] = HopLimit;
        Source.Write(destination[8..]);
        Destination.Write(destination[24..]);
        return IPv6Packet.HeaderLength;
    }
}
