using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Fabric.Wire;

/// <summary>The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers of RFC 768, 793 and 8200 §8.1.</summary>
public static class Checksum
{
    /// <summary>Adds <paramref name="data"/> to a running one's-complement sum (not yet folded).</summary>
    public static ulong Accumulate(ulong sum, ReadOnlySpan<byte> data)
    {
        // Eight bytes at a time in the machine's order, as two 32-bit words into a 64-bit accumulator; folded, the
        // little-endian sum is the network-order sum with its bytes swapped (RFC 1071 §2(B)). Data paths checksum whole
        // segments with this, so it reads words, not bytes.
        ulong acc = 0;
        ref var start = ref MemoryMarshal.GetReference(data);
        var i = 0;
        for (; i + 8 <= data.Length; i += 8)
        {
            var v = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i));
            acc += (uint)v;
            acc += v >> 32;
        }
        if (i + 4 <= data.Length)
        {
            acc += Unsafe.ReadUnaligned<uint>(ref Unsafe.Add(ref start, i));
            i += 4;
        }
        if (i + 2 <= data.Length)
        {
            acc += Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref start, i));
            i += 2;
        }
        if (i < data.Length)
        {
            // The odd last byte is the high byte of a network-order word: the low byte of a machine-order one here.
            acc += BitConverter.IsLittleEndian ? data[i] : (ulong)data[i] << 8;
        }
        var folded = (ushort)~Finish(acc);
        return sum + (BitConverter.IsLittleEndian ? BinaryPrimitives.ReverseEndianness(folded) : folded);
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
