using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>ARP operation codes (RFC 826).</summary>
public enum ArpOperation : ushort
{
    Request = 1,
    Reply = 2,
}

/// <summary>Zero-copy view of an ARP packet for Ethernet/IPv4 (RFC 826).</summary>
/// <remarks>
/// <code>
///  0     2     4    5    6     8      14     18     24     28
///  +-----+-----+----+----+-----+------+------+------+------+
///  | htype| ptype|hlen|plen| oper| sha  | spa  | tha  | tpa  |
///  +-----+-----+----+----+-----+------+------+------+------+
/// </code>
/// Only hardware type 1 (Ethernet, hlen 6) and protocol 0x0800 (IPv4, plen 4) are accepted.
/// </remarks>
public readonly ref struct ArpPacket
{
    public const int Length = 28;
    private readonly ReadOnlySpan<byte> _bytes;

    private ArpPacket(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Checks length and the address formats.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out ArpPacket packet, out WireError error)
    {
        packet = default;
        if (bytes.Length < Length)
        {
            error = WireError.Truncated;
            return false;
        }
        if (BinaryPrimitives.ReadUInt16BigEndian(bytes) != 1 || BinaryPrimitives.ReadUInt16BigEndian(bytes[2..]) != EtherTypes.IPv4
            || bytes[4] != 6 || bytes[5] != 4)
        {
            error = WireError.UnsupportedAddressFormat;
            return false;
        }
        packet = new ArpPacket(bytes[..Length]);
        error = WireError.None;
        return true;
    }

    /// <summary>Checks length and the address formats.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out ArpPacket packet) => TryCreate(bytes, out packet, out _);

    /// <summary>The "oper" field.</summary>
    public ArpOperation Operation => (ArpOperation)BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]);

    /// <summary>The "sender hardware address" field.</summary>
    public MacAddress SenderHardware => MacAddress.Read(_bytes[8..]);

    /// <summary>The "sender protocol address" field.</summary>
    public IPv4Address SenderProtocol => IPv4Address.Read(_bytes[14..]);

    /// <summary>The "target hardware address" field.</summary>
    public MacAddress TargetHardware => MacAddress.Read(_bytes[18..]);

    /// <summary>The "target protocol address" field.</summary>
    public IPv4Address TargetProtocol => IPv4Address.Read(_bytes[24..]);

    /// <summary>The parsed form.</summary>
    public ArpRepr ToRepr() => new(Operation, SenderHardware, SenderProtocol, TargetHardware, TargetProtocol);
}

/// <summary>A parsed Ethernet/IPv4 ARP packet.</summary>
public readonly record struct ArpRepr(ArpOperation Operation, MacAddress SenderHardware, IPv4Address SenderProtocol, MacAddress TargetHardware, IPv4Address TargetProtocol)
{
    /// <summary>Writes the 28-byte packet; returns its length.</summary>
    public int Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, 1);
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], EtherTypes.IPv4);
        destination[4] = 6;
        destination[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)Operation);
        SenderHardware.Write(destination[8..]);
        SenderProtocol.Write(destination[14..]);
        TargetHardware.Write(destination[18..]);
        TargetProtocol.Write(destination[24..]);
        return ArpPacket.Length;
    }
}
