using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers of RFC 768, 793 and 8200 §8.1.</summary>
public static class Checksum
{
    /// <summary>Adds <paramref name="data"/> to a running one's-complement sum (not yet folded).</summary>
    public static ulong Accumulate(ulong sum, ReadOnlySpan<byte> data)
    {
        // Sum 32-bit words into a 64-bit accumulator: carries are folded once at the end.
        while (data.Length >= 4)
        {
            sum += BinaryPrimitives.ReadUInt32BigEndian(data);
            data = data[4..];
        }
        if (data.Length >= 2)
        {
            sum += BinaryPrimitives.ReadUInt16BigEndian(data);
            data = data[2..];
        }
        if (data.Length == 1)
        {
            sum += (ulong)data[0] << 8;
        }
        return sum;
    }

    /// <summary>Folds a running sum to 16 bits and complements it: the value to put in a checksum field.</summary>
    public static ushort Finish(ulong sum)
    {
        while ((sum >> 16) != 0)
        {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        return (ushort)~sum;
    }

    /// <summary>The checksum of <paramref name="data"/> alone (IPv4 header, ICMPv4).</summary>
    public static ushort Compute(ReadOnlySpan<byte> data) => Finish(Accumulate(0, data));

    /// <summary>The sum of the IPv4 pseudo-header: source, destination, zero, protocol, upper-layer length.</summary>
    public static ulong PseudoHeaderV4(IPv4Address source, IPv4Address destination, byte protocol, int length) =>
        (ulong)source.Value + destination.Value + protocol + (uint)length;

    /// <summary>The sum of the IPv6 pseudo-header: source, destination, upper-layer length, next header.</summary>
    public static ulong PseudoHeaderV6(IPv6Address source, IPv6Address destination, byte nextHeader, int length) =>
        (source.High >> 32) + (source.High & 0xFFFF_FFFF) + (source.Low >> 32) + (source.Low & 0xFFFF_FFFF)
        + (destination.High >> 32) + (destination.High & 0xFFFF_FFFF) + (destination.Low >> 32) + (destination.Low & 0xFFFF_FFFF)
        + (uint)length + nextHeader;

    /// <summary>The checksum of an upper-layer segment (checksum field included as is) under an IPv4 pseudo-header.</summary>
    public static ushort ComputeV4(IPv4Address source, IPv4Address destination, byte protocol, ReadOnlySpan<byte> segment) =>
        Finish(Accumulate(PseudoHeaderV4(source, destination, protocol, segment.Length), segment));

    /// <summary>The checksum of an upper-layer segment under an IPv6 pseudo-header.</summary>
    public static ushort ComputeV6(IPv6Address source, IPv6Address destination, byte nextHeader, ReadOnlySpan<byte> segment) =>
        Finish(Accumulate(PseudoHeaderV6(source, destination, nextHeader, segment.Length), segment));
}
