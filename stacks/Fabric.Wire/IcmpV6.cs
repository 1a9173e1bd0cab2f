using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>ICMPv6 message types (RFC 4443, RFC 4861, RFC 3810) this project names.</summary>
public static class IcmpV6Types
{
    public const byte DestinationUnreachable = 1;
    public const byte PacketTooBig = 2;
    public const byte TimeExceeded = 3;
    public const byte ParameterProblem = 4;
    public const byte EchoRequest = 128;
    public const byte EchoReply = 129;
    public const byte MulticastListenerQuery = 130;
    public const byte MulticastListenerReport = 131;
    public const byte RouterSolicitation = 133;
    public const byte RouterAdvertisement = 134;
    public const byte NeighborSolicitation = 135;
    public const byte NeighborAdvertisement = 136;
    public const byte Redirect = 137;
    public const byte MulticastListenerReportV2 = 143;
}

/// <summary>Neighbor Discovery option types (RFC 4861 §4.6, RFC 3971, RFC 8106).</summary>
public enum NdOptionType : byte
{
    SourceLinkLayerAddress = 1,
    TargetLinkLayerAddress = 2,
    PrefixInformation = 3,
    RedirectedHeader = 4,
    Mtu = 5,
    Nonce = 14,
    RecursiveDnsServer = 25,
    DnsSearchList = 31,
}

/// <summary>One Neighbor Discovery option: its type and its body (after the type and length octets).</summary>
public readonly ref struct NdOption
{
    public NdOption(NdOptionType type, ReadOnlySpan<byte> body)
    {
        Type = type;
        Body = body;
    }

    public NdOptionType Type { get; }

    /// <summary>The option after its two type/length octets (length × 8 − 2 bytes).</summary>
    public ReadOnlySpan<byte> Body { get; }

    /// <summary>For source/target link-layer address options on Ethernet: the MAC.</summary>
    public bool TryGetLinkLayerAddress(out MacAddress mac)
    {
        mac = default;
        if ((Type is NdOptionType.SourceLinkLayerAddress or NdOptionType.TargetLinkLayerAddress) && Body.Length >= 6)
        {
            mac = MacAddress.Read(Body);
            return true;
        }
        return false;
    }
}

/// <summary>Walks validated Neighbor Discovery options; no call fails.</summary>
public ref struct NdOptionEnumerator
{
    private ReadOnlySpan<byte> _rest;

    internal NdOptionEnumerator(ReadOnlySpan<byte> options)
    {
        _rest = options;
        Current = default;
    }

    public NdOption Current { get; private set; }

    public readonly NdOptionEnumerator GetEnumerator() => this;

    public bool MoveNext()
    {
        if (_rest.Length < 8)
        {
            return false;
        }
        var length = _rest[1] * 8;
        Current = new NdOption((NdOptionType)_rest[0], _rest[2..length]);
        _rest = _rest[length..];
        return true;
    }
}

/// <summary>Zero-copy view of an ICMPv6 message (RFC 4443) with the Neighbor Discovery bodies of RFC 4861.</summary>
/// <remarks>
/// <code>
///  0      1      2        4
///  +------+------+--------+-------------------------------------
///  | type | code | cksum  | body (echo: id, seq, data; ND: fields, options)
///  +------+------+--------+-------------------------------------
///  RS: reserved(4) options@8      NS: reserved(4) target(16) options@24
///  RA: hop(1) flags(1) lifetime(2) reachable(4) retrans(4) options@16
///  NA: flags R|S|O (4) target(16) options@24    Redirect: target(16) dest(16) options@40
/// </code>
/// For ND types TryCreate also checks the minimum body and that every option has a non-zero length within the message.
/// </remarks>
public readonly ref struct IcmpV6Message
{
    public const int HeaderLength = 4;
    private readonly ReadOnlySpan<byte> _bytes;

    private IcmpV6Message(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Checks lengths and, for ND messages, the option list.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IcmpV6Message message) => TryCreate(bytes, out message, out _);

    /// <summary>Checks lengths and, for ND messages, the option list, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IcmpV6Message message, out WireError error)
    {
        message = default;
        if (bytes.Length < HeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        var optionsAt = OptionsOffset(bytes[0]);
        var minimum = optionsAt > 0 ? optionsAt : bytes[0] is IcmpV6Types.EchoRequest or IcmpV6Types.EchoReply ? 8 : HeaderLength;
        if (bytes.Length < minimum)
        {
            error = WireError.Truncated;
            return false;
        }
        if (optionsAt > 0)
        {
            var options = bytes[optionsAt..];
            while (options.Length > 0)
            {
                if (options.Length < 2 || options[1] == 0 || options[1] * 8 > options.Length)
                {
                    error = WireError.BadOption;
                    return false;
                }
                options = options[(options[1] * 8)..];
            }
        }
        message = new IcmpV6Message(bytes);
        error = WireError.None;
        return true;
    }

    private static int OptionsOffset(byte type) => type switch
    {
        IcmpV6Types.RouterSolicitation => 8,
        IcmpV6Types.RouterAdvertisement => 16,
        IcmpV6Types.NeighborSolicitation => 24,
        IcmpV6Types.NeighborAdvertisement => 24,
        IcmpV6Types.Redirect => 40,
        _ => 0,
    };

    /// <summary>The "Type" field.</summary>
    public byte Type => _bytes[0];

    /// <summary>The "Code" field.</summary>
    public byte Code => _bytes[1];

    /// <summary>The "Checksum" field.</summary>
    public ushort ChecksumField => BinaryPrimitives.ReadUInt16BigEndian(_bytes[2..]);

    /// <summary>The whole message.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;

    /// <summary>True for Neighbor Discovery messages (RS, RA, NS, NA, Redirect).</summary>
    public bool IsNeighborDiscovery => OptionsOffset(Type) > 0;

    /// <summary>The echo "Identifier" field (echo request/reply only; 0 otherwise).</summary>
    public ushort EchoIdentifier => _bytes.Length >= 8 ? BinaryPrimitives.ReadUInt16BigEndian(_bytes[4..]) : (ushort)0;

    /// <summary>The echo "Sequence Number" field (echo request/reply only; 0 otherwise).</summary>
    public ushort EchoSequence => _bytes.Length >= 8 ? BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]) : (ushort)0;

    /// <summary>The "MTU" field of a Packet Too Big message (0 otherwise).</summary>
    public uint PacketTooBigMtu => Type == IcmpV6Types.PacketTooBig && _bytes.Length >= 8 ? BinaryPrimitives.ReadUInt32BigEndian(_bytes[4..]) : 0;

    /// <summary>The "Target Address" of NS, NA and Redirect (default otherwise).</summary>
    public IPv6Address TargetAddress => Type is IcmpV6Types.NeighborSolicitation or IcmpV6Types.NeighborAdvertisement or IcmpV6Types.Redirect
        ? IPv6Address.Read(_bytes[8..]) : default;

    /// <summary>NA "Router" flag.</summary>
    public bool RouterFlag => Type == IcmpV6Types.NeighborAdvertisement && (_bytes[4] & 0x80) != 0;

    /// <summary>NA "Solicited" flag.</summary>
    public bool SolicitedFlag => Type == IcmpV6Types.NeighborAdvertisement && (_bytes[4] & 0x40) != 0;

    /// <summary>NA "Override" flag.</summary>
    public bool OverrideFlag => Type == IcmpV6Types.NeighborAdvertisement && (_bytes[4] & 0x20) != 0;

    /// <summary>RA "Cur Hop Limit".</summary>
    public byte RouterCurrentHopLimit => Type == IcmpV6Types.RouterAdvertisement ? _bytes[4] : (byte)0;

    /// <summary>RA flags octet (M, O, H, Prf...).</summary>
    public byte RouterFlags => Type == IcmpV6Types.RouterAdvertisement ? _bytes[5] : (byte)0;

    /// <summary>RA "Router Lifetime" in seconds.</summary>
    public ushort RouterLifetime => Type == IcmpV6Types.RouterAdvertisement ? BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]) : (ushort)0;

    /// <summary>RA "Reachable Time" in milliseconds.</summary>
    public uint ReachableTime => Type == IcmpV6Types.RouterAdvertisement ? BinaryPrimitives.ReadUInt32BigEndian(_bytes[8..]) : 0;

    /// <summary>RA "Retrans Timer" in milliseconds.</summary>
    public uint RetransTimer => Type == IcmpV6Types.RouterAdvertisement ? BinaryPrimitives.ReadUInt32BigEndian(_bytes[12..]) : 0;

    /// <summary>The ND options (empty for other types).</summary>
    public NdOptionEnumerator Options => new(IsNeighborDiscovery ? _bytes[OptionsOffset(Type)..] : default);

    /// <summary>True when the checksum is correct under the IPv6 pseudo-header.</summary>
    public bool VerifyChecksum(IPv6Address source, IPv6Address destination) =>
        Checksum.ComputeV6(source, destination, IPProtocols.IcmpV6, _bytes) == 0;
}

/// <summary>Writes ICMPv6 messages the agent answers with (echo, neighbor advertisement).</summary>
public static class IcmpV6Writer
{
    /// <summary>Writes a Neighbor Advertisement with a target link-layer address option; returns its length (32).</summary>
    public static int WriteNeighborAdvertisement(Span<byte> message, IPv6Address source, IPv6Address destination, IPv6Address target,
        MacAddress targetMac, bool router, bool solicited, bool overrideFlag)
    {
        message[..32].Clear();
        message[0] = IcmpV6Types.NeighborAdvertisement;
        message[4] = (byte)((router ? 0x80 : 0) | (solicited ? 0x40 : 0) | (overrideFlag ? 0x20 : 0));
        target.Write(message[8..]);
        message[24] = (byte)NdOptionType.TargetLinkLayerAddress;
        message[25] = 1;
        targetMac.Write(message[26..]);
        SetChecksum(message[..32], source, destination);
        return 32;
    }

    /// <summary>Writes a Neighbor Solicitation for <paramref name="target"/> with a source link-layer option; returns 32.</summary>
    public static int WriteNeighborSolicitation(Span<byte> message, IPv6Address source, IPv6Address destination, IPv6Address target, MacAddress sourceMac)
    {
        message[..32].Clear();
        message[0] = IcmpV6Types.NeighborSolicitation;
        target.Write(message[8..]);
        message[24] = (byte)NdOptionType.SourceLinkLayerAddress;
        message[25] = 1;
        sourceMac.Write(message[26..]);
        SetChecksum(message[..32], source, destination);
        return 32;
    }

    /// <summary>Writes an echo header for data already in place after it and computes the checksum; returns the message length.</summary>
    public static int WriteEcho(Span<byte> message, bool request, ushort identifier, ushort sequence, int dataLength, IPv6Address source, IPv6Address destination)
    {
        message[0] = request ? IcmpV6Types.EchoRequest : IcmpV6Types.EchoReply;
        message[1] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(message[4..], identifier);
        BinaryPrimitives.WriteUInt16BigEndian(message[6..], sequence);
        var length = 8 + dataLength;
        SetChecksum(message[..length], source, destination);
        return length;
    }

    /// <summary>Fills in the checksum of a complete message.</summary>
    public static void SetChecksum(Span<byte> message, IPv6Address source, IPv6Address destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(message[2..], 0);
        BinaryPrimitives.WriteUInt16BigEndian(message[2..], Checksum.ComputeV6(source, destination, IPProtocols.IcmpV6, message));
    }

    /// <summary>The solicited-node multicast address of <paramref name="target"/> (ff02::1:ffXX:XXXX, RFC 4291 §2.7.1).</summary>
    public static IPv6Address SolicitedNodeMulticast(IPv6Address target) =>
        new(0xFF02_0000_0000_0000UL, 0x0000_0001_FF00_0000UL | (target.Low & 0xFF_FFFF));
}
