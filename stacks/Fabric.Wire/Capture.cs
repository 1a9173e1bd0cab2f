using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>Link-layer header types (tcpdump.org LINKTYPE_ values) that captures here carry.</summary>
public enum LinkType : uint
{
    Null = 0,
    Ethernet = 1,
    /// <summary>DLT_RAW as OpenBSD and some Linux builds write it.</summary>
    RawLegacy12 = 12,
    /// <summary>DLT_RAW as other builds write it.</summary>
    RawLegacy14 = 14,
    Raw = 101,
    LinuxSll = 113,
    IPv4 = 228,
    IPv6 = 229,
    LinuxSll2 = 276,
}

/// <summary>One captured frame. <see cref="Data"/> is valid until the reader moves to the next record.</summary>
public readonly record struct CaptureRecord(int Index, long TimestampNanoseconds, LinkType LinkType, int OriginalLength, ReadOnlyMemory<byte> Data)
{
    /// <summary>The capture time as UTC.</summary>
    public DateTime Timestamp => DateTime.UnixEpoch.AddTicks(TimestampNanoseconds / 100);
}

/// <summary>Raised when a capture file itself (not a frame in it) is unreadable; the message names the offset and the field.</summary>
public sealed class CaptureFormatException : Exception
{
    public CaptureFormatException(string message) : base(message)
    {
    }

    public CaptureFormatException()
    {
    }

    public CaptureFormatException(string message, Exception innerException) : base(message, innerException)
    {
    }
}

/// <summary>
/// Reads classic pcap (both byte orders, microsecond and nanosecond) and pcapng (section header, interface
/// description, enhanced, simple and obsolete packet blocks; other blocks are skipped). Frames are handed out one at a
/// time from one reused buffer.
/// </summary>
public sealed class CaptureReader : IDisposable
{
    private const uint PcapMagicMicros = 0xA1B2C3D4;
    private const uint PcapMagicNanos = 0xA1B23C4D;
    private const uint PcapngSectionHeader = 0x0A0D0D0A;
    private const uint PcapngByteOrderMagic = 0x1A2B3C4D;
    private const int MaxRecordLength = 256 * 1024;
    private readonly Stream _stream;
    private readonly bool _ownsStream;
    private readonly bool _isPcapng;
    private readonly List<(LinkType LinkType, int SnapLength, long TicksPerSecond, long OffsetSeconds)> _interfaces = [];
    private bool _bigEndian;
    private bool _nanos;
    private LinkType _linkType;
    private byte[] _buffer = new byte[2048];
    private long _offset;
    private int _index;

    private CaptureReader(Stream stream, bool ownsStream)
    {
        _stream = stream;
        _ownsStream = ownsStream;
        Span<byte> head = stackalloc byte[4];
        if (!TryReadExactly(head))
        {
            throw new CaptureFormatException("The capture is shorter than a file header (4 bytes).");
        }
        var magicLe = BinaryPrimitives.ReadUInt32LittleEndian(head);
        var magicBe = BinaryPrimitives.ReadUInt32BigEndian(head);
        if (magicLe == PcapngSectionHeader)
        {
            _isPcapng = true;
            ReadSectionHeaderBody();
            return;
        }
        if (magicLe is PcapMagicMicros or PcapMagicNanos)
        {
            _bigEndian = false;
            _nanos = magicLe == PcapMagicNanos;
        }
        else if (magicBe is PcapMagicMicros or PcapMagicNanos)
        {
            _bigEndian = true;
            _nanos = magicBe == PcapMagicNanos;
        }
        else
        {
            throw new CaptureFormatException($"Unknown capture magic 0x{magicBe:x8}: neither pcap (a1b2c3d4, a1b23c4d) nor pcapng (0a0d0d0a).");
        }
        Span<byte> rest = stackalloc byte[20];
        if (!TryReadExactly(rest))
        {
            throw new CaptureFormatException("The pcap file header is truncated (24 bytes expected).");
        }
        // The upper 16 bits of the link-type field may carry FCS information (pcap spec §"LinkType and additional information").
        _linkType = (LinkType)(ReadU32(rest[16..]) & 0xFFFF);
    }

    /// <summary>Opens a capture file.</summary>
    public static CaptureReader Open(string path) => new(File.OpenRead(path), ownsStream: true);

    /// <summary>Reads a capture from a stream the caller keeps owning.</summary>
    public static CaptureReader Open(Stream stream) => new(stream, ownsStream: false);

    /// <summary>True for pcapng, false for classic pcap.</summary>
    public bool IsPcapng => _isPcapng;

    /// <summary>Reads the next frame; false at the end of the capture. Throws <see cref="CaptureFormatException"/> on a corrupt file.</summary>
    public bool TryReadNext(out CaptureRecord record)
    {
        return _isPcapng ? TryReadNextBlock(out record) : TryReadNextPcap(out record);
    }

    /// <summary>All remaining frames (each one's data copied, for callers that keep them).</summary>
    public IEnumerable<CaptureRecord> ReadAll()
    {
        while (TryReadNext(out var record))
        {
            yield return record with { Data = record.Data.ToArray() };
        }
    }

    private bool TryReadNextPcap(out CaptureRecord record)
    {
        record = default;
        Span<byte> header = stackalloc byte[16];
        var recordOffset = _offset;
        var got = _stream.ReadAtLeast(header, header.Length, throwOnEndOfStream: false);
        _offset += got;
        if (got == 0)
        {
            return false;
        }
        if (got < header.Length)
        {
            throw new CaptureFormatException($"Record {_index + 1} at offset {recordOffset}: the record header is truncated ({got} of 16 bytes).");
        }
        var seconds = ReadU32(header);
        var fraction = ReadU32(header[4..]);
        var included = ReadU32(header[8..]);
        var original = ReadU32(header[12..]);
        if (included > MaxRecordLength)
        {
            throw new CaptureFormatException($"Record {_index + 1} at offset {recordOffset}: captured length {included} is beyond any sane snapshot length.");
        }
        var data = ReadData((int)included, recordOffset);
        var nanos = (seconds * 1_000_000_000L) + (_nanos ? fraction : fraction * 1000L);
        record = new CaptureRecord(++_index, nanos, _linkType, (int)Math.Min(original, int.MaxValue), data);
        return true;
    }

    private ReadOnlyMemory<byte> ReadData(int length, long recordOffset)
    {
        if (_buffer.Length < length)
        {
            _buffer = new byte[Math.Max(length, _buffer.Length * 2)];
        }
        if (!TryReadExactly(_buffer.AsSpan(0, length)))
        {
            throw new CaptureFormatException($"Record {_index + 1} at offset {recordOffset}: the capture ends inside the frame data ({length} bytes expected).");
        }
        return _buffer.AsMemory(0, length);
    }

    private bool TryReadNextBlock(out CaptureRecord record)
    {
        record = default;
        Span<byte> head = stackalloc byte[8];
        while (true)
        {
            var blockOffset = _offset;
            var got = _stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            _offset += got;
            if (got == 0)
            {
                return false;
            }
            if (got < head.Length)
            {
                throw new CaptureFormatException($"pcapng block at offset {blockOffset}: truncated block header.");
            }
            var type = BinaryPrimitives.ReadUInt32LittleEndian(head);
            if (type == PcapngSectionHeader)
            {
                // The section header's length is in the section's own byte order, which its body says: re-read it there.
                _offset -= 4;
                ReadSectionHeaderBody(head[4..].ToArray());
                continue;
            }
            type = ReadU32(head);
            var total = ReadU32(head[4..]);
            if (total < 12 || total % 4 != 0 || total > MaxRecordLength + 64)
            {
                throw new CaptureFormatException($"pcapng block at offset {blockOffset}: block total length {total} is invalid.");
            }
            var body = ReadData((int)total - 8, blockOffset).Span;
            if (ReadU32(body[^4..]) != total)
            {
                throw new CaptureFormatException($"pcapng block at offset {blockOffset}: trailing block length differs from the leading one ({total}).");
            }
            body = body[..^4];
            switch (type)
            {
                case 1:
                    ReadInterfaceDescription(body, blockOffset);
                    continue;
                case 6 or 2:
                    record = ReadPacketBlock(body, type == 2, blockOffset);
                    return true;
                case 3:
                    record = ReadSimplePacketBlock(body, blockOffset);
                    return true;
                default:
                    continue; // Name resolution, statistics, custom blocks: nothing a frame decoder needs.
            }
        }
    }

    private void ReadSectionHeaderBody(byte[]? lengthBytes = null)
    {
        Span<byte> lengthAndMagic = stackalloc byte[8];
        if (lengthBytes is not null)
        {
            lengthBytes.CopyTo(lengthAndMagic);
            if (!TryReadExactly(lengthAndMagic[4..]))
            {
                throw new CaptureFormatException("pcapng section header block is truncated.");
            }
        }
        else if (!TryReadExactly(lengthAndMagic))
        {
            throw new CaptureFormatException("pcapng section header block is truncated.");
        }
        var magic = BinaryPrimitives.ReadUInt32LittleEndian(lengthAndMagic[4..]);
        if (magic == PcapngByteOrderMagic)
        {
            _bigEndian = false;
        }
        else if (BinaryPrimitives.ReadUInt32BigEndian(lengthAndMagic[4..]) == PcapngByteOrderMagic)
        {
            _bigEndian = true;
        }
        else
        {
            throw new CaptureFormatException($"pcapng section header: byte-order magic 0x{magic:x8} is not 1a2b3c4d.");
        }
        var total = ReadU32(lengthAndMagic);
        if (total < 28 || total % 4 != 0 || total > MaxRecordLength)
        {
            throw new CaptureFormatException($"pcapng section header: block total length {total} is invalid.");
        }
        ReadData((int)total - 12, _offset);
        _interfaces.Clear();
    }

    private void ReadInterfaceDescription(ReadOnlySpan<byte> body, long blockOffset)
    {
        if (body.Length < 8)
        {
            throw new CaptureFormatException($"pcapng interface description at offset {blockOffset}: body shorter than 8 bytes.");
        }
        var linkType = (LinkType)ReadU16(body);
        var snap = (int)Math.Min(ReadU32(body[4..]), int.MaxValue);
        long ticksPerSecond = 1_000_000;
        long offsetSeconds = 0;
        var options = body[8..];
        while (options.Length >= 4)
        {
            var code = ReadU16(options);
            var length = ReadU16(options[2..]);
            if (code == 0 || 4 + length > options.Length)
            {
                break;
            }
            if (code == 9 && length >= 1)
            {
                // if_tsresol: high bit clear = 10^-n, set = 2^-n seconds per tick.
                var resolution = options[4];
                ticksPerSecond = (resolution & 0x80) == 0 ? (long)Math.Pow(10, resolution & 0x7F) : 1L << (resolution & 0x7F);
            }
            if (code == 14 && length == 8)
            {
                // if_tsoffset: seconds to add to every timestamp of this interface.
                offsetSeconds = _bigEndian ? BinaryPrimitives.ReadInt64BigEndian(options[4..]) : BinaryPrimitives.ReadInt64LittleEndian(options[4..]);
            }
            options = options[Math.Min(options.Length, 4 + ((length + 3) & ~3))..];
        }
        _interfaces.Add((linkType, snap == 0 ? int.MaxValue : snap, ticksPerSecond, offsetSeconds));
    }

    private CaptureRecord ReadPacketBlock(ReadOnlySpan<byte> body, bool obsolete, long blockOffset)
    {
        if (body.Length < 20)
        {
            throw new CaptureFormatException($"pcapng packet block at offset {blockOffset}: body shorter than 20 bytes.");
        }
        var interfaceId = obsolete ? ReadU16(body) : ReadU32(body);
        var timestamp = ((ulong)ReadU32(body[4..]) << 32) | ReadU32(body[8..]);
        var captured = ReadU32(body[12..]);
        var original = ReadU32(body[16..]);
        if (interfaceId >= _interfaces.Count)
        {
            throw new CaptureFormatException($"pcapng packet block at offset {blockOffset}: interface {interfaceId} was never described.");
        }
        if (20 + captured > body.Length)
        {
            throw new CaptureFormatException($"pcapng packet block at offset {blockOffset}: captured length {captured} exceeds the block.");
        }
        var (linkType, _, ticks, offsetSeconds) = _interfaces[(int)interfaceId];
        var sinceEpoch = (long)(timestamp / (ulong)ticks * 1_000_000_000UL) + (long)(timestamp % (ulong)ticks * 1_000_000_000UL / (ulong)ticks);
        var nanos = (offsetSeconds * 1_000_000_000L) + sinceEpoch;
        // The block body sits at the start of the reused buffer; packet data starts 20 bytes into it.
        return new CaptureRecord(++_index, nanos, linkType, (int)Math.Min(original, int.MaxValue), _buffer.AsMemory(20, (int)captured));
    }

    private CaptureRecord ReadSimplePacketBlock(ReadOnlySpan<byte> body, long blockOffset)
    {
        if (body.Length < 4 || _interfaces.Count == 0)
        {
            throw new CaptureFormatException($"pcapng simple packet block at offset {blockOffset}: no interface described or body too short.");
        }
        var original = ReadU32(body);
        var (linkType, snap, _, _) = _interfaces[0];
        var captured = (int)Math.Min(Math.Min(original, (uint)snap), (uint)(body.Length - 4));
        return new CaptureRecord(++_index, 0, linkType, (int)Math.Min(original, int.MaxValue), _buffer.AsMemory(4, captured));
    }

    private bool TryReadExactly(Span<byte> destination)
    {
        var got = _stream.ReadAtLeast(destination, destination.Length, throwOnEndOfStream: false);
        _offset += got;
        return got == destination.Length;
    }

    private uint ReadU32(ReadOnlySpan<byte> b) => _bigEndian ? BinaryPrimitives.ReadUInt32BigEndian(b) : BinaryPrimitives.ReadUInt32LittleEndian(b);

    private ushort ReadU16(ReadOnlySpan<byte> b) => _bigEndian ? BinaryPrimitives.ReadUInt16BigEndian(b) : BinaryPrimitives.ReadUInt16LittleEndian(b);

    public void Dispose()
    {
        if (_ownsStream)
        {
            _stream.Dispose();
        }
    }
}

/// <summary>Writes classic little-endian pcap files, microsecond or nanosecond resolution.</summary>
public sealed class CaptureWriter : IDisposable
{
    private readonly Stream _stream;
    private readonly bool _nanos;
    private readonly int _snapLength;
    private readonly byte[] _header = new byte[16];

    /// <summary>Writes the file header at once.</summary>
    public CaptureWriter(Stream stream, LinkType linkType, bool nanosecondResolution = false, int snapLength = 262144)
    {
        _stream = stream;
        _nanos = nanosecondResolution;
        _snapLength = snapLength;
        Span<byte> header = stackalloc byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(header, nanosecondResolution ? 0xA1B23C4Du : 0xA1B2C3D4u);
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], 4);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], (uint)snapLength);
        BinaryPrimitives.WriteUInt32LittleEndian(header[20..], (uint)linkType);
        _stream.Write(header);
    }

    /// <summary>Appends one frame; frames longer than the snapshot length are cut, their original length kept.</summary>
    public void Write(long timestampNanoseconds, ReadOnlySpan<byte> frame)
    {
        var captured = Math.Min(frame.Length, _snapLength);
        BinaryPrimitives.WriteUInt32LittleEndian(_header, (uint)(timestampNanoseconds / 1_000_000_000));
        var fraction = timestampNanoseconds % 1_000_000_000;
        BinaryPrimitives.WriteUInt32LittleEndian(_header.AsSpan(4), (uint)(_nanos ? fraction : fraction / 1000));
        BinaryPrimitives.WriteUInt32LittleEndian(_header.AsSpan(8), (uint)captured);
        BinaryPrimitives.WriteUInt32LittleEndian(_header.AsSpan(12), (uint)frame.Length);
        _stream.Write(_header);
        _stream.Write(frame[..captured]);
    }

    public void Dispose() => _stream.Flush();
}
