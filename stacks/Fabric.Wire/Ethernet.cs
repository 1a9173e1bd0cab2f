using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>EtherType values this project names (IEEE 802 numbers).</summary>
public static class EtherTypes
{
    public const ushort IPv4 = 0x0800;
    public const ushort Arp = 0x0806;
    public const ushort Vlan = 0x8100;
    public const ushort IPv6 = 0x86DD;
    public const ushort QinQ = 0x88A8;
    /// <summary>Pre-standard QinQ tag still seen on old switches.</summary>
    public const ushort QinQLegacy = 0x9100;

    /// <summary>True for the EtherTypes that introduce an 802.1Q/802.1ad tag.</summary>
    public static bool IsVlanTag(ushort etherType) => etherType is Vlan or QinQ or QinQLegacy;
}

/// <summary>One 802.1Q / 802.1ad tag: TPID, priority (PCP), drop eligible (DEI) and VLAN id.</summary>
public readonly record struct VlanTag(ushort Tpid, byte Priority, bool DropEligible, ushort VlanId)
{
    /// <summary>The tag control information field (PCP, DEI, VID) as it is on the wire.</summary>
    public ushort Tci => (ushort)((Priority << 13) | (DropEligible ? 0x1000 : 0) | VlanId);

    /// <summary>Builds a tag from a TPID and the TCI field.</summary>
    public static VlanTag FromTci(ushort tpid, ushort tci) => new(tpid, (byte)(tci >> 13), (tci & 0x1000) != 0, (ushort)(tci & 0x0FFF));
}

/// <summary>Zero-copy view of an Ethernet II frame with up to two VLAN tags (IEEE 802.3, 802.1Q, 802.1ad).</summary>
/// <remarks>
/// <code>
///  0      6      12         12+4n        14+4n
///  +------+------+-[TPID|TCI]*-+----------+---------
///  | dst  | src  |  0..2 tags  | EtherType| payload
///  +------+------+-------------+----------+---------
/// </code>
/// The frame check sequence is not part of the view (ports deliver frames without it).
/// Get one from <see cref="TryCreate(ReadOnlySpan{byte}, out EthernetFrame)"/>; after it returns true no member throws.
/// </remarks>
public readonly ref struct EthernetFrame
{
    public const int HeaderLength = 14;
    public const int TagLength = 4;
    public const int MaxTags = 2;
    private readonly ReadOnlySpan<byte> _bytes;
    private readonly int _tagCount;

    private EthernetFrame(ReadOnlySpan<byte> bytes, int tagCount)
    {
        _bytes = bytes;
        _tagCount = tagCount;
    }

    /// <summary>Checks lengths and walks the tags.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out EthernetFrame frame) => TryCreate(bytes, out frame, out _);

    /// <summary>Checks lengths and walks the tags, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out EthernetFrame frame, out WireError error)
    {
        frame = default;
        if (bytes.Length < HeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        var tags = 0;
        while (EtherTypes.IsVlanTag(BinaryPrimitives.ReadUInt16BigEndian(bytes[(12 + (TagLength * tags))..])))
        {
            if (tags == MaxTags)
            {
                error = WireError.TooManyHeaders;
                return false;
            }
            tags++;
            if (bytes.Length < HeaderLength + (TagLength * tags))
            {
                error = WireError.Truncated;
                return false;
            }
        }
        frame = new EthernetFrame(bytes, tags);
        error = WireError.None;
        return true;
    }

    /// <summary>The "destination address" field.</summary>
    public MacAddress Destination => MacAddress.Read(_bytes);

    /// <summary>The "source address" field.</summary>
    public MacAddress Source => MacAddress.Read(_bytes[6..]);

    /// <summary>How many VLAN tags precede the EtherType (0 to <see cref="MaxTags"/>).</summary>
    public int TagCount => _tagCount;

    /// <summary>Tag <paramref name="index"/>, outermost first; index must be below <see cref="TagCount"/>.</summary>
    public VlanTag GetTag(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)_tagCount, nameof(index));
        var at = 12 + (TagLength * index);
        return VlanTag.FromTci(BinaryPrimitives.ReadUInt16BigEndian(_bytes[at..]), BinaryPrimitives.ReadUInt16BigEndian(_bytes[(at + 2)..]));
    }

    /// <summary>The "EtherType" field after the tags.</summary>
    public ushort EtherType => BinaryPrimitives.ReadUInt16BigEndian(_bytes[(12 + (TagLength * _tagCount))..]);

    /// <summary>The length of the header including tags.</summary>
    public int HeaderBytes => HeaderLength + (TagLength * _tagCount);

    /// <summary>Everything after the EtherType (may include Ethernet padding).</summary>
    public ReadOnlySpan<byte> Payload => _bytes[HeaderBytes..];

    /// <summary>The whole frame.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;
}

/// <summary>Writes Ethernet II headers.</summary>
public static class EthernetWriter
{
    /// <summary>Writes an untagged header; returns the header length (14).</summary>
    public static int Write(Span<byte> destination, MacAddress dst, MacAddress src, ushort etherType)
    {
        dst.Write(destination);
        src.Write(destination[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(destination[12..], etherType);
        return EthernetFrame.HeaderLength;
    }

    /// <summary>Writes a header with the given tags, outermost first; returns the header length.</summary>
    public static int Write(Span<byte> destination, MacAddress dst, MacAddress src, ReadOnlySpan<VlanTag> tags, ushort etherType)
    {
        if (tags.Length > EthernetFrame.MaxTags)
        {
            throw new ArgumentException($"At most {EthernetFrame.MaxTags} VLAN tags are supported, got {tags.Length}.", nameof(tags));
        }
        dst.Write(destination);
        src.Write(destination[6..]);
        var at = 12;
        foreach (var tag in tags)
        {
            BinaryPrimitives.WriteUInt16BigEndian(destination[at..], tag.Tpid);
            BinaryPrimitives.WriteUInt16BigEndian(destination[(at + 2)..], tag.Tci);
            at += EthernetFrame.TagLength;
        }
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], etherType);
        return at + 2;
    }
}
