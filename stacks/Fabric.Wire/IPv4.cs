using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>IP protocol numbers (IANA) this project names; IPv6 next-header values share the space.</summary>
public static class IPProtocols
{
    public const byte HopByHop = 0;
    public const byte Icmp = 1;
    public const byte Tcp = 6;
    public const byte Udp = 17;
    public const byte IPv6Route = 43;
    public const byte IPv6Fragment = 44;
    public const byte Esp = 50;
    public const byte Ah = 51;
    public const byte IcmpV6 = 58;
    public const byte NoNext = 59;
    public const byte IPv6DestinationOptions = 60;

    /// <summary>The name tcpdump prints for a protocol number, or null.</summary>
    public static string? Name(byte protocol) => protocol switch
    {
        HopByHop => "HBH",
        Icmp => "ICMP",
        Tcp => "TCP",
        Udp => "UDP",
        IPv6Route => "Routing",
        IPv6Fragment => "Fragment",
        Esp => "ESP",
        Ah => "AH",
        IcmpV6 => "ICMPv6",
        NoNext => "NONE",
        IPv6DestinationOptions => "DSTOPT",
        _ => null,
    };
}

/// <summary>Zero-copy view of an IPv4 packet (RFC 791).</summary>
/// <remarks>
/// <code>
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version|  IHL  |Type of Service|          Total Length         |
/// |         Identification        |Flags|      Fragment Offset    |
/// |  Time to Live |    Protocol   |         Header Checksum       |
/// |                       Source Address                          |
/// |                    Destination Address                        |
/// |                    Options (IHL > 5)                          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// </code>
/// TryCreate checks version, IHL, the total length against the received bytes (trailing link padding is cut off)
/// and the option list's structure. The header checksum is a separate step: <see cref="VerifyChecksum"/>.
/// </remarks>
public readonly ref struct IPv4Packet
{
    public const int MinHeaderLength = 20;
    private readonly ReadOnlySpan<byte> _bytes;

    private IPv4Packet(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Validates lengths and options.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IPv4Packet packet) => TryCreate(bytes, out packet, out _);

    /// <summary>Validates lengths and options, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IPv4Packet packet, out WireError error)
    {
        packet = default;
        if (bytes.Length < MinHeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        if (bytes[0] >> 4 != 4)
        {
            error = WireError.BadVersion;
            return false;
        }
        var ihl = (bytes[0] & 0x0F) * 4;
        if (ihl < MinHeaderLength)
        {
            error = WireError.BadHeaderLength;
            return false;
        }
        if (ihl > bytes.Length)
        {
            error = WireError.HeaderLengthExceedsBuffer;
            return false;
        }
        int total = BinaryPrimitives.ReadUInt16BigEndian(bytes[2..]);
        if (total < ihl)
        {
            error = WireError.TotalLengthTooSmall;
            return false;
        }
        if (total > bytes.Length)
        {
            error = WireError.TotalLengthExceedsBuffer;
            return false;
        }
        if (!OptionsAreWellFormed(bytes[MinHeaderLength..ihl]))
        {
            error = WireError.BadOption;
            return false;
        }
        packet = new IPv4Packet(bytes[..total]);
        error = WireError.None;
        return true;
    }

    private static bool OptionsAreWellFormed(ReadOnlySpan<byte> options)
    {
        var at = 0;
        while (at < options.Length)
        {
            var type = options[at];
            if (type == 0)
            {
                return true; // End of Option List: the rest is padding.
            }
            if (type == 1)
            {
                at++;
                continue;
            }
            if (at + 1 >= options.Length || options[at + 1] < 2 || at + options[at + 1] > options.Length)
            {
                return false;
            }
            at += options[at + 1];
        }
        return true;
    }

    /// <summary>The "IHL" field in bytes.</summary>
    public int HeaderLength => (_bytes[0] & 0x0F) * 4;

    /// <summary>The "Type of Service" octet (DSCP and ECN).</summary>
    public byte TypeOfService => _bytes[1];

    /// <summary>The "Total Length" field.</summary>
    public ushort TotalLength => BinaryPrimitives.ReadUInt16BigEndian(_bytes[2..]);

    /// <summary>The "Identification" field.</summary>
    public ushort Identification => BinaryPrimitives.ReadUInt16BigEndian(_bytes[4..]);

    /// <summary>The DF ("don't fragment") flag.</summary>
    public bool DontFragment => (_bytes[6] & 0x40) != 0;

    /// <summary>The MF ("more fragments") flag.</summary>
    public bool MoreFragments => (_bytes[6] & 0x20) != 0;

    /// <summary>The "Fragment Offset" field in bytes (the field counts 8-byte units).</summary>
    public int FragmentOffset => (BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]) & 0x1FFF) * 8;

    /// <summary>True when this packet is one fragment of a larger datagram.</summary>
    public bool IsFragment => MoreFragments || FragmentOffset != 0;

    /// <summary>The "Time to Live" field.</summary>
    public byte TimeToLive => _bytes[8];

    /// <summary>The "Protocol" field.</summary>
    public byte Protocol => _bytes[9];

    /// <summary>The "Header Checksum" field.</summary>
    public ushort HeaderChecksum => BinaryPrimitives.ReadUInt16BigEndian(_bytes[10..]);

    /// <summary>The "Source Address" field.</summary>
    public IPv4Address Source => IPv4Address.Read(_bytes[12..]);

    /// <summary>The "Destination Address" field.</summary>
    public IPv4Address Destination => IPv4Address.Read(_bytes[16..]);

    /// <summary>The options between the fixed header and the payload.</summary>
    public ReadOnlySpan<byte> Options => _bytes[MinHeaderLength..HeaderLength];

    /// <summary>The payload, bounded by Total Length.</summary>
    public ReadOnlySpan<byte> Payload => _bytes[HeaderLength..];

    /// <summary>The packet, bounded by Total Length.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;

    /// <summary>True when the header checksum is correct.</summary>
    public bool VerifyChecksum() => Checksum.Compute(_bytes[..HeaderLength]) == 0;

    /// <summary>The parsed fixed header (options are not carried).</summary>
    public IPv4Repr ToRepr() => new(Source, Destination, Protocol, TimeToLive, Payload.Length, TypeOfService, Identification, DontFragment);
}

/// <summary>A parsed IPv4 header without options.</summary>
public readonly record struct IPv4Repr(IPv4Address Source, IPv4Address Destination, byte Protocol, byte TimeToLive, int PayloadLength,
    byte TypeOfService = 0, ushort Identification = 0, bool DontFragment = true)
{
    /// <summary>Writes a 20-byte header with a correct checksum; returns 20.</summary>
    public int Write(Span<byte> destination)
    {
        var total = IPv4Packet.MinHeaderLength + PayloadLength;
        if (total > ushort.MaxValue)
        {
            throw new InvalidOperationException($"PayloadLength {PayloadLength} exceeds the 65515 bytes an IPv4 packet holds.");
        }
        destination[0] = 0x45;
        destination[1] = TypeOfService;
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], (ushort)total);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], Identification);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], DontFragment ? (ushort)0x4000 : (ushort)0);
        destination[8] = TimeToLive;
        destination[9] = Protocol;
        BinaryPrimitives.WriteUInt16BigEndian(destination[10..], 0);
        Source.Write(destination[12..]);
        Destination.Write(destination[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(destination[10..], Checksum.Compute(destination[..IPv4Packet.MinHeaderLength]));
        return IPv4Packet.MinHeaderLength;
    }
}
