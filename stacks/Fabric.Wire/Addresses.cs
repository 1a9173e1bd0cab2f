using System.Buffers.Binary;
using System.Globalization;
using System.Net;

namespace Fabric.Wire;

/// <summary>A 48-bit IEEE 802 MAC address held in the low 48 bits of a <see cref="ulong"/>.</summary>
public readonly record struct MacAddress(ulong Value)
{
    /// <summary>The broadcast address ff:ff:ff:ff:ff:ff.</summary>
    public static MacAddress Broadcast { get; } = new(0xFFFF_FFFF_FFFFUL);

    /// <summary>Reads six bytes in transmission order.</summary>
    public static MacAddress Read(ReadOnlySpan<byte> bytes) =>
        new(((ulong)BinaryPrimitives.ReadUInt16BigEndian(bytes) << 32) | BinaryPrimitives.ReadUInt32BigEndian(bytes[2..]));

    /// <summary>Writes six bytes in transmission order.</summary>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)(Value >> 32));
        BinaryPrimitives.WriteUInt32BigEndian(destination[2..], (uint)Value);
    }

    /// <summary>True for group (multicast and broadcast) addresses: the I/G bit of the first octet.</summary>
    public bool IsMulticast => ((Value >> 40) & 1) != 0;

    /// <summary>True for ff:ff:ff:ff:ff:ff.</summary>
    public bool IsBroadcast => Value == Broadcast.Value;

    /// <summary>Parses "aa:bb:cc:dd:ee:ff" (or with '-'); false when the text is not six hex octets.</summary>
    public static bool TryParse(string? text, out MacAddress mac)
    {
        mac = default;
        if (text is null || text.Length != 17)
        {
            return false;
        }
        ulong value = 0;
        for (var i = 0; i < 6; i++)
        {
            if (i > 0 && text[(i * 3) - 1] != ':' && text[(i * 3) - 1] != '-')
            {
                return false;
            }
            if (!byte.TryParse(text.AsSpan(i * 3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var octet))
            {
                return false;
            }
            value = (value << 8) | octet;
        }
        mac = new MacAddress(value);
        return true;
    }

    /// <summary>Lower-case colon-separated form, as tcpdump prints it.</summary>
    public override string ToString() => string.Create(17, Value, static (span, v) =>
    {
        for (var i = 0; i < 6; i++)
        {
            var octet = (byte)(v >> (40 - (8 * i)));
            octet.TryFormat(span[(i * 3)..], out _, "x2", CultureInfo.InvariantCulture);
            if (i < 5)
            {
                span[(i * 3) + 2] = ':';
            }
        }
    });
}

/// <summary>An IPv4 address as its 32-bit big-endian value.</summary>
public readonly record struct IPv4Address(uint Value)
{
    /// <summary>Reads four bytes in network order.</summary>
    public static IPv4Address Read(ReadOnlySpan<byte> bytes) => new(BinaryPrimitives.ReadUInt32BigEndian(bytes));

    /// <summary>Writes four bytes in network order.</summary>
    public void Write(Span<byte> destination) => BinaryPrimitives.WriteUInt32BigEndian(destination, Value);

    /// <summary>Parses dotted-quad text.</summary>
    public static IPv4Address Parse(string text)
    {
        var ip = IPAddress.Parse(text);
        if (ip.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            throw new FormatException($"'{text}' is not an IPv4 address.");
        }
        Span<byte> b = stackalloc byte[4];
        ip.TryWriteBytes(b, out _);
        return Read(b);
    }

    /// <summary>The address as <see cref="IPAddress"/> (allocates; not for the data path).</summary>
    public IPAddress ToIPAddress()
    {
        Span<byte> b = stackalloc byte[4];
        Write(b);
        return new IPAddress(b);
    }

    /// <summary>Dotted-quad text.</summary>
    public override string ToString() => $"{Value >> 24}.{(Value >> 16) & 0xFF}.{(Value >> 8) & 0xFF}.{Value & 0xFF}";
}

/// <summary>An IPv6 address as two 64-bit big-endian halves.</summary>
public readonly record struct IPv6Address(ulong High, ulong Low)
{
    /// <summary>Reads sixteen bytes in network order.</summary>
    public static IPv6Address Read(ReadOnlySpan<byte> bytes) =>
        new(BinaryPrimitives.ReadUInt64BigEndian(bytes), BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]));

    /// <summary>Writes sixteen bytes in network order.</summary>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, High);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Low);
    }

    /// <summary>Parses RFC 4291 text.</summary>
    public static IPv6Address Parse(string text)
    {
        var ip = IPAddress.Parse(text);
        if (ip.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6)
        {
            throw new FormatException($"'{text}' is not an IPv6 address.");
        }
        Span<byte> b = stackalloc byte[16];
        ip.TryWriteBytes(b, out _);
        return Read(b);
    }

    /// <summary>True for ff00::/8.</summary>
    public bool IsMulticast => (High >> 56) == 0xFF;

    /// <summary>The address as <see cref="IPAddress"/> (allocates; not for the data path).</summary>
    public IPAddress ToIPAddress()
    {
        Span<byte> b = stackalloc byte[16];
        Write(b);
        return new IPAddress(b);
    }

    /// <summary>RFC 5952 text.</summary>
    public override string ToString() => ToIPAddress().ToString();
}
