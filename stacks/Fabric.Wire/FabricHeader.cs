using System.Buffers.Binary;

namespace Fabric.Wire;

/// <summary>What follows the Fabric header and the stack's own fields.</summary>
public enum FabricPayloadType : byte
{
    /// <summary>A VM's Ethernet frame, as the VM sent it (without FCS).</summary>
    Ethernet = 0,
    /// <summary>The stack's own control traffic (acknowledgements, handshakes); never delivered to a VM.</summary>
    StackControl = 1,
    /// <summary>An active path probe from the agent's monitor.</summary>
    Probe = 2,
    /// <summary>The answer to a <see cref="Probe"/>.</summary>
    ProbeReply = 3,
    /// <summary>Bytes only the stack can read (ciphertext, FEC parity); the inner frame is not visible on the wire.</summary>
    StackEncoded = 4,
    /// <summary>Agents' own messages about the path (open or close a stack slot at the other end); never given to a stack.</summary>
    AgentControl = 5,
    /// <summary>A member of an agent's capacity train (sent back to back; the peer times their arrival). Never given to a stack.</summary>
    ProbeTrain = 6,
}

/// <summary>Zero-copy view of the Fabric overlay header, carried in UDP (default port <see cref="DefaultUdpPort"/>).</summary>
/// <remarks>
/// <code>
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Flags |  Stack Slot   | Payload Type  |Stack Field Len|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |            Virtual Network Id (VNI)           |   Reserved    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         Path Sequence                         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |              Send Timestamp (microseconds, mod 2^32)          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Stack fields (Stack Field Len bytes) ...  | Payload ...      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// </code>
/// <list type="bullet">
/// <item>Version: 1. Flags: reserved, sent as zero, ignored on receipt.</item>
/// <item>Stack Slot: which stack instance on the receiving host decodes this packet; a hitless swap opens a new
/// slot before the sender moves to it, so packets of both slots can be in flight at once.</item>
/// <item>Payload Type: <see cref="FabricPayloadType"/>. Stack Field Len: bytes of stack-specific fields
/// (sequence, ACK, FEC group...) between this header and the payload, so any reader can skip them.</item>
/// <item>VNI: the tenant's virtual network (24 bits, as VXLAN and Geneve).</item>
/// <item>Path Sequence: per (sending host, receiving host) path, +1 for every packet sent on it, all slots
/// together; gaps measure loss and reordering without the stack's help.</item>
/// <item>Send Timestamp: the sender's monotonic clock in microseconds, low 32 bits (wraps every ~71 min);
/// one-way delay variation and, echoed in probe replies, round-trip time.</item>
/// </list>
/// All fields are big-endian. Get a view from <see cref="TryCreate(ReadOnlySpan{byte}, out FabricHeader, out WireError)"/>.
/// </remarks>
public readonly ref struct FabricHeader
{
    public const int Length = 16;
    public const byte CurrentVersion = 1;
    public const ushort DefaultUdpPort = 47110;
    public const uint MaxVirtualNetworkId = 0xFF_FFFF;
    private readonly ReadOnlySpan<byte> _bytes;

    private FabricHeader(ReadOnlySpan<byte> bytes) => _bytes = bytes;

    /// <summary>Checks the length, the version and the stack field length.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out FabricHeader header) => TryCreate(bytes, out header, out _);

    /// <summary>Checks the length, the version and the stack field length, saying why on refusal.</summary>
    public static bool TryCreate(ReadOnlySpan<byte> bytes, out FabricHeader header, out WireError error)
    {
        header = default;
        if (bytes.Length < Length)
        {
            error = WireError.Truncated;
            return false;
        }
        if (bytes[0] >> 4 != CurrentVersion)
        {
            error = WireError.BadVersion;
            return false;
        }
        if (Length + bytes[3] > bytes.Length)
        {
            error = WireError.HeaderLengthExceedsBuffer;
            return false;
        }
        header = new FabricHeader(bytes);
        error = WireError.None;
        return true;
    }

    /// <summary>The "Version" field.</summary>
    public byte Version => (byte)(_bytes[0] >> 4);

    /// <summary>The "Flags" field.</summary>
    public byte Flags => (byte)(_bytes[0] & 0x0F);

    /// <summary>The "Stack Slot" field.</summary>
    public byte Slot => _bytes[1];

    /// <summary>The "Payload Type" field.</summary>
    public FabricPayloadType PayloadType => (FabricPayloadType)_bytes[2];

    /// <summary>The "Stack Field Len" field in bytes.</summary>
    public byte StackFieldLength => _bytes[3];

    /// <summary>The "VNI" field.</summary>
    public uint VirtualNetworkId => BinaryPrimitives.ReadUInt32BigEndian(_bytes[4..]) >> 8;

    /// <summary>The "Path Sequence" field.</summary>
    public uint PathSequence => BinaryPrimitives.ReadUInt32BigEndian(_bytes[8..]);

    /// <summary>The "Send Timestamp" field (µs mod 2^32).</summary>
    public uint SendTimestampMicros => BinaryPrimitives.ReadUInt32BigEndian(_bytes[12..]);

    /// <summary>The stack-specific fields.</summary>
    public ReadOnlySpan<byte> StackFields => _bytes.Slice(Length, StackFieldLength);

    /// <summary>What follows the stack fields.</summary>
    public ReadOnlySpan<byte> Payload => _bytes[(Length + StackFieldLength)..];

    /// <summary>The parsed header.</summary>
    public FabricHeaderRepr ToRepr() => new(Slot, PayloadType, VirtualNetworkId, PathSequence, SendTimestampMicros, StackFieldLength);
}

/// <summary>A parsed Fabric overlay header.</summary>
public readonly record struct FabricHeaderRepr(byte Slot, FabricPayloadType PayloadType, uint VirtualNetworkId, uint PathSequence,
    uint SendTimestampMicros, byte StackFieldLength = 0)
{
    /// <summary>Writes the 16-byte header; returns 16.</summary>
    public int Write(Span<byte> destination)
    {
        if (VirtualNetworkId > FabricHeader.MaxVirtualNetworkId)
        {
            throw new InvalidOperationException($"VirtualNetworkId {VirtualNetworkId} does not fit the 24-bit VNI field.");
        }
        destination[0] = FabricHeader.CurrentVersion << 4;
        destination[1] = Slot;
        destination[2] = (byte)PayloadType;
        destination[3] = StackFieldLength;
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], VirtualNetworkId << 8);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], PathSequence);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], SendTimestampMicros);
        return FabricHeader.Length;
    }
}
