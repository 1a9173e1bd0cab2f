using System.Collections.Concurrent;

namespace Fabric.Hal;

/// <summary>
/// An in-memory frame port for tests and the simulated fleet: frames transmitted on one end of a pair are received on
/// the other, in order, copied. A bounded queue per direction drops (WouldBlock) when full, like a NIC ring.
/// </summary>
public sealed class ChannelPort : IFramePort
{
    private readonly ConcurrentQueue<byte[]> _inbound;

    /// <summary>
    /// Set when a frame is queued. No spinning before it blocks (a SemaphoreSlim spins and yields first: with a frame
    /// every few milliseconds, the embedded fleet's VM ports spent about 4,000 yields a second each doing that).
    /// </summary>
    private readonly ManualResetEventSlim _inboundReady = new(false, spinCount: 0);
    private readonly int _capacity;
    private ChannelPort? _peer;
    private volatile bool _closed;

    private ChannelPort(string name, int mtu, int capacity)
    {
        Name = name;
        _capacity = capacity;
        _inbound = new ConcurrentQueue<byte[]>();
        Capabilities = new PortCapabilities(mtu, mtu + 18, BatchedIo: true);
    }

    /// <summary>Creates two connected ports.</summary>
    public static (ChannelPort A, ChannelPort B) CreatePair(string nameA = "chan-a", string nameB = "chan-b", int mtu = 1500, int capacity = 4096)
    {
        var a = new ChannelPort(nameA, mtu, capacity);
        var b = new ChannelPort(nameB, mtu, capacity);
        a._peer = b;
        b._peer = a;
        return (a, b);
    }

    public string Name { get; }

    public PortCapabilities Capabilities { get; }

    public int LastErrno => 0;

    /// <summary>Frames waiting to be received on this end.</summary>
    public int Pending => _inbound.Count;

    public PortResult Transmit(ReadOnlySpan<byte> frame)
    {
        var peer = _peer!;
        if (_closed || peer._closed)
        {
            return PortResult.Closed;
        }
        if (frame.Length > Capabilities.MaxFrameLength)
        {
            return PortResult.TooLarge;
        }
        if (peer._inbound.Count >= peer._capacity)
        {
            return PortResult.WouldBlock;
        }
        peer._inbound.Enqueue(frame.ToArray());
        peer._inboundReady.Set();
        return PortResult.Ok;
    }

    public PortResult Receive(Span<byte> buffer, out int length, TimeSpan timeout)
    {
        length = 0;
        if (!Wait(timeout, out var frame))
        {
            return _closed ? PortResult.Closed : PortResult.Timeout;
        }
        if (frame.Length > buffer.Length)
        {
            return PortResult.TooLarge;
        }
        frame.CopyTo(buffer);
        length = frame.Length;
        return PortResult.Ok;
    }

    public PortResult ReceiveBatch(FrameBatch batch, TimeSpan timeout)
    {
        batch.Clear();
        if (!Wait(timeout, out var frame))
        {
            return _closed ? PortResult.Closed : PortResult.Timeout;
        }
        var index = 0;
        while (true)
        {
            if (frame.Length <= batch.FrameCapacity)
            {
                frame.CopyTo(batch.BufferAt(index), 0);
                batch.SetReceived(index, frame.Length);
                index++;
            }
            if (index == batch.Capacity || !_inbound.TryDequeue(out frame!))
            {
                break;
            }
        }
        return batch.Count > 0 ? PortResult.Ok : PortResult.TooLarge;
    }

    public int TransmitBatch(FrameBatch batch)
    {
        for (var i = 0; i < batch.Count; i++)
        {
            if (Transmit(batch[i]) != PortResult.Ok)
            {
                return i;
            }
        }
        return batch.Count;
    }

    /// <summary>Takes the next frame, waiting up to <paramref name="timeout"/> for one; false when none came or the port closed.</summary>
    private bool Wait(TimeSpan timeout, out byte[] frame)
    {
        frame = null!;
        var forever = timeout == Timeout.InfiniteTimeSpan;
        var deadline = Environment.TickCount64 + (long)Math.Ceiling(timeout.TotalMilliseconds);
        while (!_closed)
        {
            if (_inbound.TryDequeue(out frame!))
            {
                return true;
            }
            // Reset, then look again: a frame queued, or a close, between the look above and the reset is not missed.
            _inboundReady.Reset();
            if (_inbound.TryDequeue(out frame!))
            {
                return true;
            }
            if (_closed)
            {
                return false;
            }
            var left = forever ? Timeout.InfiniteTimeSpan : TimeSpan.FromMilliseconds(deadline - Environment.TickCount64);
            if ((!forever && left <= TimeSpan.Zero) || !_inboundReady.Wait(left))
            {
                return false;
            }
        }
        return false;
    }

    public void Dispose()
    {
        _closed = true;
        _inboundReady.Set();
    }
}
