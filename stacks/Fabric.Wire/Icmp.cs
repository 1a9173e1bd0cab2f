using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>Zero-copy view of an ICMPv4 message (RFC 792).</summary>
/// <remarks>
/// <code>
///  0      1      2        4                 8
///  +------+------+--------+-----------------+---------
///  | type | code | cksum  | rest of header  | data
///  +------+------+--------+-----------------+---------
/// </code>
/// For echo request (8) and reply (0) the rest of the header is identifier and sequence number.
/// </remarks>
public readonly ref struct IcmpV4Message
{
    public const int HeaderLength = 8;
    public const byte EchoReply = 0;
    public const byte DestinationUnreachable = 3;
    public const byte EchoRequest = 8;
    public const byte TimeExceeded = 11;
    /// <summary>Code of "fragmentation needed and DF set" under <see cref="DestinationUnreachable"/> (RFC 1191).</summary>
    public const byte FragmentationNeeded = 4;
    private readonly ReadOnlySpan<byte> _bytes;

    private IcmpV4Message(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Checks the length.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IcmpV4Message message, out WireError error)
    {
        message = default;
        if (bytes.Length < HeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        message = new IcmpV4Message(bytes);
        error = WireError.None;
        return true;
    }

    /// <summary>Checks the length.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out IcmpV4Message message) => TryCreate(bytes, out message, out _);

    /// <summary>The "Type" field.</summary>
    public byte Type => _bytes[0];

    /// <summary>The "Code" field.</summary>
    public byte Code => _bytes[1];

    /// <summary>The "Checksum" field.</summary>
    public ushort ChecksumField => BinaryPrimitives.ReadUInt16BigEndian(_bytes[2..]);

    /// <summary>The echo "Identifier" field.</summary>
    public ushort Identifier => BinaryPrimitives.ReadUInt16BigEndian(_bytes[4..]);

    /// <summary>The echo "Sequence Number" field.</summary>
    public ushort SequenceNumber => BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]);

    /// <summary>The "Next-Hop MTU" of a fragmentation-needed message (RFC 1191).</summary>
    public ushort NextHopMtu => BinaryPrimitives.ReadUInt16BigEndian(_bytes[6..]);

    /// <summary>The data after the 8-byte header.</summary>
    public ReadOnlySpan<byte> Data => _bytes[HeaderLength..];

    /// <summary>The whole message.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;

    /// <summary>True when the checksum is correct.</summary>
    public bool VerifyChecksum() => Checksum.Compute(_bytes) == 0;
}

/// <summary>Writes ICMPv4 messages.</summary>
public static class IcmpV4Writer
{
    /// <summary>Writes the 8-byte header for data already in place after it and computes the checksum. Returns the message length.</summary>
    public static int Write(Span<byte> message, byte type, byte code, ushort identifier, ushort sequence, int dataLength)
    {
        message[0] = type;
        message[1] = code;
        BinaryPrimitives.WriteUInt16BigEndian(message[2..], 0);
        BinaryPrimitives.WriteUInt16BigEndian(message[4..], identifier);
        BinaryPrimitives.WriteUInt16BigEndian(message[6..], sequence);
        var length = IcmpV4Message.HeaderLength + dataLength;
        BinaryPrimitives.WriteUInt16BigEndian(message[2..], Checksum.Compute(message[..length]));
        return length;
    }
}
