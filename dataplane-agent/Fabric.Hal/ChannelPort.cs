using System.Collections.Concurrent;

namespace Fabric.Hal;

/// <summary>
/// An in-memory frame port for tests and the simulated fleet: frames transmitted on one end of a pair are received on
/// the other, in order, copied. A bounded queue per direction drops (WouldBlock) when full, like a NIC ring.
/// </summary>
public sealed class ChannelPort : IFramePort
{
    private readonly ConcurrentQueue<byte[]> _inbound;
    private readonly SemaphoreSlim _inboundReady;
    private readonly int _capacity;
    private ChannelPort? _peer;
    private volatile bool _closed;

    private ChannelPort(string name, int mtu, int capacity)
    {
        Name = name;
        _capacity = capacity;
        _inbound = new ConcurrentQueue<byte[]>();
        _inboundReady = new SemaphoreSlim(0);
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
        peer._inboundReady.Release();
        return PortResult.Ok;
    }

    public PortResult Receive(Span<byte> buffer, out int length, TimeSpan timeout)
    {
        length = 0;
        if (!Wait(timeout))
        {
            return _closed ? PortResult.Closed : PortResult.Timeout;
        }
        _inbound.TryDequeue(out var frame);
        if (frame!.Length > buffer.Length)
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
        if (!Wait(timeout))
        {
            return _closed ? PortResult.Closed : PortResult.Timeout;
        }
        var index = 0;
        while (true)
        {
            _inbound.TryDequeue(out var frame);
            if (frame!.Length <= batch.FrameCapacity)
            {
                frame.CopyTo(batch.BufferAt(index), 0);
                batch.SetReceived(index, frame.Length);
                index++;
            }
            if (index == batch.Capacity || !_inboundReady.Wait(0))
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

    private bool Wait(TimeSpan timeout)
    {
        if (_closed)
        {
            return false;
        }
        return _inboundReady.Wait(timeout) && !_closed;
    }

    public void Dispose()
    {
        _closed = true;
        _inboundReady.Release();
    }
}
