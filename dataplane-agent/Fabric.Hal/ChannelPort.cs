using System.Collections.Concurrent;

namespace Fabric.Hal;

/// <summary>
/// An in-memory frame port for tests and the simulated fleet: frames transmitted on one end of a pair are received on
/// the other, in order, copied. A bounded queue per direction drops (WouldBlock) when full, like a NIC ring.
/// A receiver with nothing to read sleeps on a monitor until a frame comes, without spinning first: a
/// <see cref="SemaphoreSlim"/> spins (yielding the core up to 35 times) before it sleeps, and on the embedded default,
/// whose twelve VM ports each get a few frames every 20 ms, those yields were nearly all of the VM threads' time
/// (perf, 2026-12-05).
/// </summary>
public sealed class ChannelPort : IFramePort
{
    private readonly ConcurrentQueue<byte[]> _inbound;
    private readonly object _gate = new();
    private int _waiting;
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
        // The enqueue's interlocked exchange orders it before Wake's read of the waiter's flag.
        peer.Wake();
        return PortResult.Ok;
    }

    public PortResult Receive(Span<byte> buffer, out int length, TimeSpan timeout)
    {
        length = 0;
        if (!Wait(timeout))
        {
            return _closed ? PortResult.Closed : PortResult.Timeout;
        }
        if (!_inbound.TryDequeue(out var frame))
        {
            // Another receiver on this end took it first.
            return PortResult.Timeout;
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
        if (!Wait(timeout))
        {
            return _closed ? PortResult.Closed : PortResult.Timeout;
        }
        var (index, tooLarge) = (0, false);
        while (index < batch.Capacity && _inbound.TryDequeue(out var frame))
        {
            if (frame.Length <= batch.FrameCapacity)
            {
                frame.CopyTo(batch.BufferAt(index), 0);
                batch.SetReceived(index, frame.Length);
                index++;
            }
            else
            {
                tooLarge = true;
            }
        }
        // Nothing taken and nothing too large: another receiver on this end took the frames first.
        return batch.Count > 0 ? PortResult.Ok : tooLarge ? PortResult.TooLarge : PortResult.Timeout;
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

    /// <summary>Waits until a frame is queued (true) or the timeout passes or the port closes (false).</summary>
    /// <remarks>
    /// A waiter raises <see cref="_waiting"/> (an interlocked write) before each look at the queue, and a sender looks at it
    /// after its enqueue (interlocked too): one of them sees the other, so no frame sits unseen while a receiver sleeps.
    /// The first sender to see it lowers it and wakes every waiter; the frames after it in the same burst cost nothing.
    /// </remarks>
    private bool Wait(TimeSpan timeout)
    {
        if (!_inbound.IsEmpty || _closed || timeout == TimeSpan.Zero)
        {
            // A poll (zero timeout) does not announce a waiter: the next sender would take the gate for no one.
            return !_inbound.IsEmpty && !_closed;
        }
        var infinite = timeout == Timeout.InfiniteTimeSpan;
        var deadline = infinite ? 0 : Environment.TickCount64 + (long)Math.Ceiling(timeout.TotalMilliseconds);
        lock (_gate)
        {
            while (true)
            {
                Interlocked.Exchange(ref _waiting, 1);
                if (!_inbound.IsEmpty || _closed)
                {
                    break;
                }
                var left = infinite ? Timeout.Infinite : (int)Math.Min(int.MaxValue, deadline - Environment.TickCount64);
                if (!infinite && left <= 0 || !Monitor.Wait(_gate, left))
                {
                    break;
                }
            }
        }
        return !_inbound.IsEmpty && !_closed;
    }

    private void Wake()
    {
        if (Volatile.Read(ref _waiting) == 0 || Interlocked.Exchange(ref _waiting, 0) == 0)
        {
            return;
        }
        lock (_gate)
        {
            Monitor.PulseAll(_gate);
        }
    }

    public void Dispose()
    {
        _closed = true;
        Interlocked.MemoryBarrier();
        Wake();
    }
}
