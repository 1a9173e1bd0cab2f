using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>TCP header flags (RFC 9293, RFC 3168).</summary>
[Flags]
public enum TcpFlags : ushort
{
    None = 0,
    Fin = 0x001,
    Syn = 0x002,
    Rst = 0x004,
    Psh = 0x008,
    Ack = 0x010,
    Urg = 0x020,
    Ece = 0x040,
    Cwr = 0x080,
}

/// <summary>TCP option kinds (IANA) this project names.</summary>
public enum TcpOptionKind : byte
{
    EndOfList = 0,
    NoOperation = 1,
    MaximumSegmentSize = 2,
    WindowScale = 3,
    SackPermitted = 4,
    Sack = 5,
    Timestamps = 8,
}

/// <summary>One TCP option: its kind and its data (without kind and length octets).</summary>
public readonly ref struct TcpOption
{
    public TcpOption(TcpOptionKind kind, ReadOnlySpan<byte> data)
    {
        Kind = kind;
        Data = data;
    }

    public TcpOptionKind Kind { get; }
    public ReadOnlySpan<byte> Data { get; }
}

/// <summary>Walks the options of a validated TCP header; no call fails.</summary>
public ref struct TcpOptionEnumerator
{
    private readonly ReadOnlySpan<byte> _options;
    private int _at;

    internal TcpOptionEnumerator(ReadOnlySpan<byte> options)
    {
        _options = options;
        _at = 0;
        Current = default;
    }

    public TcpOption Current { get; private set; }

    public readonly TcpOptionEnumerator GetEnumerator() => this;

    public bool MoveNext()
    {
        while (_at < _options.Length)
        {
            var kind = (TcpOptionKind)_options[_at];
            if (kind == TcpOptionKind.EndOfList)
            {
                _at = _options.Length;
                return false;
            }
            if (kind == TcpOptionKind.NoOperation)
            {
                _at++;
                continue;
            }
            var length = _options[_at + 1];
            Current = new TcpOption(kind, _options.Slice(_at + 2, length - 2));
            _at += length;
            return true;
        }
        return false;
    }
}

/// <summary>Zero-copy view of a TCP segment (RFC 9293).</summary>
/// <remarks>
/// <code>
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |          Source Port          |       Destination Port        |
/// |                        Sequence Number                        |
/// |                    Acknowledgment Number                      |
/// |  Data |       |C|E|U|A|P|R|S|F|                               |
/// | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
/// |           Checksum            |         Urgent Pointer        |
/// |                    Options                    |    Padding    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// </code>
/// TryCreate checks the data offset and the options' structure; the segment length comes from the IP layer.
/// </remarks>
public readonly ref struct TcpSegment
{
    public const int MinHeaderLength = 20;
    private readonly ReadOnlySpan<byte> _bytes;

    private TcpSegment(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Validates the data offset and options.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out TcpSegment segment) => TryCreate(bytes, out segment, out _);

    /// <summary>Validates the data offset and options, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out TcpSegment segment, out WireError error)
    {
        segment = default;
        if (bytes.Length < MinHeaderLength)
        {
            error = WireError.Truncated;
            return false;
        }
        var offset = (bytes[12] >> 4) * 4;
        if (offset < MinHeaderLength)
        {
            error = WireError.BadHeaderLength;
            return false;
        }
        if (offset > bytes.Length)
        {
            error = WireError.HeaderLengthExceedsBuffer;
            return false;
        }
        var options = bytes[MinHeaderLength..offset];
        var at = 0;
        while (at < options.Length)
        {
            var kind = options[at];
            if (kind == 0)
            {
                break;
            }
            if (kind == 1)
            {
                at++;
                continue;
            }
            if (at + 1 >= options.Length || options[at + 1] < 2 || at + options[at + 1] > options.Length)
            {
                error = WireError.BadOption;
                return false;
            }
            at += options[at + 1];
        }
        segment = new TcpSegment(bytes);
        error = WireError.None;
        return true;
    }

    /// <summary>The "Source Port" field.</summary>
    public ushort SourcePort => BinaryPrimitives.ReadUInt16BigEndian(_bytes);

    /// <summary>The "Destination Port" field.</summary>
    public ushort DestinationPort => BinaryPrimitives.ReadUInt16BigEndian(_bytes[2..]);

    /// <summary>The "Sequence Number" field.</summary>
    public uint SequenceNumber => BinaryPrimitives.ReadUInt32BigEndian(_bytes[4..]);

    /// <summary>The "Acknowledgment Number" field.</summary>
    public uint AcknowledgmentNumber => BinaryPrimitives.ReadUInt32BigEndian(_bytes[8..]);

    /// <summary>The "Data Offset" field in bytes.</summary>
    public int HeaderLength => (_bytes[12] >> 4) * 4;

    /// <summary>The control bits.</summary>
    public TcpFlags Flags => (TcpFlags)(BinaryPrimitives.ReadUInt16BigEndian(_bytes[12..]) & 0x01FF);

    /// <summary>The "Window" field (unscaled).</summary>
    public ushort Window => BinaryPrimitives.ReadUInt16BigEndian(_bytes[14..]);

    /// <summary>The "Checksum" field.</summary>
    public ushort ChecksumField => BinaryPrimitives.ReadUInt16BigEndian(_bytes[16..]);

    /// <summary>The "Urgent Pointer" field.</summary>
    public ushort UrgentPointer => BinaryPrimitives.ReadUInt16BigEndian(_bytes[18..]);

    /// <summary>The raw options.</summary>
    public ReadOnlySpan<byte> OptionBytes => _bytes[MinHeaderLength..HeaderLength];

    /// <summary>The options, in order, without NOPs.</summary>
    public TcpOptionEnumerator Options => new(OptionBytes);

    /// <summary>The data after the header.</summary>
    public ReadOnlySpan<byte> Payload => _bytes[HeaderLength..];

    /// <summary>The whole segment.</summary>
    public ReadOnlySpan<byte> Bytes => _bytes;

    /// <summary>The MSS option's value, or 0 when absent or malformed.</summary>
    public ushort MaximumSegmentSize
    {
        get
        {
            foreach (var option in Options)
            {
                if (option.Kind == TcpOptionKind.MaximumSegmentSize && option.Data.Length == 2)
                {
                    return BinaryPrimitives.ReadUInt16BigEndian(option.Data);
                }
            }
            return 0;
        }
    }

    /// <summary>True when the checksum is correct under the IPv4 pseudo-header.</summary>
    public bool VerifyChecksumV4(IPv4Address source, IPv4Address destination) =>
        Checksum.ComputeV4(source, destination, IPProtocols.Tcp, _bytes) == 0;

    /// <summary>True when the checksum is correct under the IPv6 pseudo-header.</summary>
    public bool VerifyChecksumV6(IPv6Address source, IPv6Address destination) =>
        Checksum.ComputeV6(source, destination, IPProtocols.Tcp, _bytes) == 0;
}

/// <summary>A parsed TCP header (options other than MSS are not carried).</summary>
public readonly record struct TcpRepr(ushort SourcePort, ushort DestinationPort, uint SequenceNumber, uint AcknowledgmentNumber,
    TcpFlags Flags, ushort Window, ushort MaximumSegmentSize = 0)
{
    /// <summary>The header length this repr writes.</summary>
    public int HeaderLength => TcpSegment.MinHeaderLength + (MaximumSegmentSize != 0 ? 4 : 0);

    /// <summary>Writes the header (checksum zero; call a SetChecksum method after the payload is in place). Returns its length.</summary>
    public int Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, SourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], DestinationPort);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], SequenceNumber);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], AcknowledgmentNumber);
        BinaryPrimitives.WriteUInt16BigEndian(destination[12..], (ushort)((HeaderLength / 4) << 12 | (ushort)Flags));
        BinaryPrimitives.WriteUInt16BigEndian(destination[14..], Window);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], 0);
        if (MaximumSegmentSize != 0)
        {
            destination[20] = (byte)TcpOptionKind.MaximumSegmentSize;
            destination[21] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(destination[22..], MaximumSegmentSize);
        }
        return HeaderLength;
    }

    /// <summary>Fills in the checksum of a complete segment under the IPv4 pseudo-header.</summary>
    public static void SetChecksumV4(Span<byte> segment, IPv4Address source, IPv4Address destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(segment[16..], 0);
        BinaryPrimitives.WriteUInt16BigEndian(segment[16..], Checksum.ComputeV4(source, destination, IPProtocols.Tcp, segment));
    }

    /// <summary>Fills in the checksum of a complete segment under the IPv6 pseudo-header.</summary>
    public static void SetChecksumV6(Span<byte> segment, IPv6Address source, IPv6Address destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(segment[16..], 0);
        BinaryPrimitives.WriteUInt16BigEndian(segment[16..], Checksum.ComputeV6(source, destination, IPProtocols.Tcp, segment));
    }
}
