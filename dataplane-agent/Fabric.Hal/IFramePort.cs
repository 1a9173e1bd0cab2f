namespace Fabric.Hal;

/// <summary>The outcome of one frame operation on a port. Data-path outcomes are values, never exceptions.</summary>
public enum PortResult
{
    /// <summary>The frame was sent or received.</summary>
    Ok = 0,
    /// <summary>No frame arrived within the timeout.</summary>
    Timeout,
    /// <summary>The port's queue is full: the frame was not sent (count it as a drop).</summary>
    WouldBlock,
    /// <summary>The frame is larger than the port accepts, or than the receive buffer.</summary>
    TooLarge,
    /// <summary>The port was closed or its device went away.</summary>
    Closed,
    /// <summary>The operating system refused the operation; <see cref="IFramePort.LastErrno"/> says why.</summary>
    Error,
}

/// <summary>What a port can carry.</summary>
/// <param name="Mtu">The device MTU (largest L3 packet).</param>
/// <param name="MaxFrameLength">The largest frame <see cref="IFramePort.Transmit"/> accepts, link header included.</param>
/// <param name="BatchedIo">True when batches cost one system call (recvmmsg/sendmmsg) instead of one per frame.</param>
/// <param name="Offloads">True when frames received may carry work the kernel left to the port's reader (a partial checksum, a
/// large segment to cut: see <see cref="FrameBatch.Offload"/>), and runs of TCP segments are joined on transmit.</param>
public sealed record PortCapabilities(int Mtu, int MaxFrameLength, bool BatchedIo, bool Offloads = false);

/// <summary>
/// A frame port: a place Ethernet frames come from and go to (an AF_PACKET socket on a netdev, a tap, an in-memory
/// channel). Frames carry no FCS.
/// </summary>
/// <remarks>
/// Thread affinity: one thread may receive while another transmits; two threads must not receive (or transmit) at once.
/// Buffers: <see cref="Transmit"/> reads the span only during the call. <see cref="Receive"/> writes into the caller's
/// buffer. A <see cref="FrameBatch"/> is owned by its caller; its frames are valid until the next call that fills it.
/// </remarks>
public interface IFramePort : IDisposable
{
    /// <summary>The device or channel name.</summary>
    string Name { get; }

    /// <summary>What the port can carry.</summary>
    PortCapabilities Capabilities { get; }

    /// <summary>The errno of the last <see cref="PortResult.Error"/>, 0 otherwise.</summary>
    int LastErrno { get; }

    /// <summary>Sends one frame.</summary>
    PortResult Transmit(ReadOnlySpan<byte> frame);

    /// <summary>Waits up to <paramref name="timeout"/> for one frame and copies it into <paramref name="buffer"/>.</summary>
    /// <param name="buffer">Receives the frame; frames longer than it are reported as <see cref="PortResult.TooLarge"/> and dropped.</param>
    /// <param name="length">The frame's length when the result is <see cref="PortResult.Ok"/>.</param>
    /// <param name="timeout">Zero polls; <see cref="Timeout.InfiniteTimeSpan"/> waits until a frame arrives or the port closes.</param>
    PortResult Receive(Span<byte> buffer, out int length, TimeSpan timeout);

    /// <summary>Waits up to <paramref name="timeout"/> for at least one frame, then takes as many as are ready (up to the batch's capacity).</summary>
    /// <returns><see cref="PortResult.Ok"/> with <see cref="FrameBatch.Count"/> ≥ 1, or why none was taken.</returns>
    PortResult ReceiveBatch(FrameBatch batch, TimeSpan timeout);

    /// <summary>Sends the first <see cref="FrameBatch.Count"/> frames of <paramref name="batch"/>; returns how many were sent.</summary>
    int TransmitBatch(FrameBatch batch);
}

/// <summary>
/// A port whose readiness to receive the kernel reports on a descriptor, so that one thread can wait on many ports at once
/// (<see cref="Linux.EpollSet"/>) instead of a thread per port.
/// </summary>
public interface IPollablePort : IFramePort
{
    /// <summary>The descriptor that polls readable while frames wait; −1 once the port is closed.</summary>
    int ReadinessDescriptor { get; }
}

/// <summary>A reusable set of frame buffers for batched receive and transmit. Not thread-safe.</summary>
public sealed class FrameBatch
{
    private readonly byte[][] _buffers;
    private readonly int[] _lengths;
    private readonly Linux.VirtioNetHeader[] _offloads;
    private readonly byte[] _headers;

    /// <summary>Allocates <paramref name="capacity"/> buffers of <paramref name="frameCapacity"/> bytes, once.</summary>
    public FrameBatch(int capacity, int frameCapacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(frameCapacity, 64);
        _buffers = new byte[capacity][];
        for (var i = 0; i < capacity; i++)
        {
            // Pinned, so ports can hand the addresses to recvmmsg/sendmmsg without pinning per call.
            _buffers[i] = GC.AllocateUninitializedArray<byte>(frameCapacity, pinned: true);
        }
        _lengths = new int[capacity];
        _offloads = new Linux.VirtioNetHeader[capacity];
        _headers = GC.AllocateArray<byte>(capacity * Linux.VirtioNetHeader.Size, pinned: true);
        FrameCapacity = frameCapacity;
    }

    /// <summary>
    /// What the kernel left undone on received frame <paramref name="index"/> (ports with
    /// <see cref="PortCapabilities.Offloads"/>; plain otherwise): finish it with <see cref="Linux.FrameOffload"/>.
    /// </summary>
    public Linux.VirtioNetHeader Offload(int index) => _offloads[index];

    /// <summary>The pinned place of slot <paramref name="index"/>'s virtio-net header, for ports that read one before each frame.</summary>
    internal unsafe void* HeaderAddressOf(int index) =>
        System.Runtime.CompilerServices.Unsafe.AsPointer(ref _headers[index * Linux.VirtioNetHeader.Size]);

    /// <summary>Slot <paramref name="index"/>'s header bytes as received.</summary>
    internal ReadOnlySpan<byte> HeaderAt(int index) => _headers.AsSpan(index * Linux.VirtioNetHeader.Size, Linux.VirtioNetHeader.Size);

    internal void SetOffload(int index, Linux.VirtioNetHeader header) => _offloads[index] = header;

    /// <summary>How many frames the batch holds at most.</summary>
    public int Capacity => _buffers.Length;

    /// <summary>The size of each buffer.</summary>
    public int FrameCapacity { get; }

    /// <summary>How many frames are in the batch.</summary>
    public int Count { get; private set; }

    /// <summary>Frame <paramref name="index"/> (below <see cref="Count"/>).</summary>
    public Span<byte> this[int index] => _buffers[index].AsSpan(0, _lengths[index]);

    /// <summary>Empties the batch (the buffers are kept).</summary>
    public void Clear() => Count = 0;

    /// <summary>Copies a frame in; false when the batch is full or the frame does not fit a buffer.</summary>
    public bool TryAdd(ReadOnlySpan<byte> frame)
    {
        if (Count == _buffers.Length || frame.Length > FrameCapacity)
        {
            return false;
        }
        frame.CopyTo(_buffers[Count]);
        _offloads[Count] = default;
        _lengths[Count++] = frame.Length;
        return true;
    }

    /// <summary>The whole buffer of slot <paramref name="index"/>, for ports that receive into it.</summary>
    internal byte[] BufferAt(int index) => _buffers[index];

    /// <summary>The address of slot <paramref name="index"/>'s buffer (stable: the buffers are pinned).</summary>
    internal unsafe void* AddressOf(int index) =>
        System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(_buffers[index]));

    /// <summary>Sets the number of frames and the length of each, for ports that received into the buffers.</summary>
    internal void SetReceived(int index, int length)
    {
        _lengths[index] = length;
        _offloads[index] = default;
        Count = index + 1;
    }
}
