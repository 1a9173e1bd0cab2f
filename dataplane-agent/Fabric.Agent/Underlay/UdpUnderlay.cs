using System.Net;
using System.Net.Sockets;
using Fabric.Hal.Linux;

namespace Fabric.Agent.Underlay;

/// <summary>
/// The underlay as a kernel UDP socket: the kernel routes, resolves next hops (ARP/ND through its neighbour table)
/// and completes checksums. Datagrams move in batches: a receive thread takes up to 32 per recvmmsg, and each sending
/// thread fills its own outbox that goes out in one sendmmsg when full or when the thread calls <see cref="Flush"/>
/// at the end of the batch it is working on. The receive thread flushes what a batch made (frames for the VMs, the
/// stacks' answers) after a batch that was not full, after 8 full ones in a row or 2 ms, or when none is queued after a full one:
/// with 100 paths' datagrams interleaved, a flush after every 32 gave each VM port about one frame per call
/// (`bench/overlay.sh`: 100 paths moved 354–434 Mbit/s, 16 paths 2.8–2.9 Gbit/s; with the wait as it is 448–634 and
/// 3.2–3.9, see `bench/evidence/overlay-20261207.md`).
/// </summary>
public sealed class UdpUnderlay : IUnderlay
{
    private readonly Socket _socket;
    private Thread _receiver;
    private int _generation;

    /// <summary>When the receive thread began handling its current batch (a timestamp of <see cref="_time"/>; 0 while it waits for datagrams).</summary>
    private long _handlingSince;
    private readonly TimeProvider _time;
    private readonly UnderlayHandler _handler;
    private readonly Action _afterBatch;
    private readonly ThreadLocal<UdpBatchSocket> _outbox;
    private volatile bool _stopping;
    private readonly Action<Exception>? _fault;
    private long _faults;

    /// <summary>Exceptions the receive thread caught and survived (a bug in what handles datagrams, never a reason to stop receiving).</summary>
    public long Faults => Interlocked.Read(ref _faults);

    /// <summary>Binds <paramref name="local"/> and starts receiving. Throws naming the address when it cannot bind.</summary>
    /// <param name="local">The address and port to bind.</param>
    /// <param name="handler">Called per datagram on the receive thread.</param>
    /// <param name="afterBatch">Called on the receive thread after each batch (to flush what the handlers queued).</param>
    /// <param name="fault">Told of an exception a handler (or the batch's flush) let escape; the thread goes on with the next datagram.</param>
    /// <param name="time">The clock a batch's handling is timed by; null: the system's.</param>
    public UdpUnderlay(IPEndPoint local, UnderlayHandler handler, Action afterBatch, Action<Exception>? fault = null, TimeProvider? time = null)
    {
        _time = time ?? TimeProvider.System;
        _handler = handler;
        _afterBatch = afterBatch;
        _fault = fault;
        _socket = new Socket(local.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        if (local.AddressFamily == AddressFamily.InterNetworkV6)
        {
            _socket.DualMode = false;
        }
        try
        {
            _socket.ReceiveBufferSize = 8 * 1024 * 1024;
            _socket.SendBufferSize = 8 * 1024 * 1024;
            _socket.Bind(local);
        }
        catch (SocketException e)
        {
            _socket.Dispose();
            throw new InvalidOperationException($"Cannot bind the underlay to {local}: {e.Message}.", e);
        }
        Local = (IPEndPoint)_socket.LocalEndPoint!;
        // Offloads both ways: a thread's run of datagrams to one peer leaves as one segmented send, and the kernel may
        // hand several datagrams from one peer over as one buffer (split again before any handler sees them).
        ReceiveOffload = UdpBatchSocket.EnableGro(_socket);
        _timestamps = UdpBatchSocket.EnableTimestamps(_socket);
        _outbox = new ThreadLocal<UdpBatchSocket>(() => new UdpBatchSocket(_socket, capacity: 64, datagramCapacity: 9216, gso: true, offloads: Offloads));
        _receiver = StartReceiver(0);
    }

    private Thread StartReceiver(int generation)
    {
        var thread = new Thread(() => ReceiveLoop(generation)) { IsBackground = true, Name = $"underlay-rx {Local}" };
        thread.Start();
        return thread;
    }

    /// <summary>How long the receive thread has been handling its current batch (zero while it waits for datagrams).</summary>
    public TimeSpan HandlingFor
    {
        get
        {
            var since = Volatile.Read(ref _handlingSince);
            return since == 0 ? TimeSpan.Zero : _time.GetElapsedTime(since);
        }
    }

    /// <summary>
    /// Starts a new receive thread in place of one stuck in a handler (a stack that never returns): the socket is read
    /// again at once, and the stuck thread, should its call ever return, finishes its batch and ends. Returns the
    /// number of receive threads replaced so far.
    /// </summary>
    public int ReplaceReceiver()
    {
        var replaced = Interlocked.Increment(ref _generation);
        Volatile.Write(ref _handlingSince, 0);
        _receiver = StartReceiver(replaced);
        return replaced;
    }

    private readonly bool _timestamps;

    // The kernel's receive time of the datagram the calling receive thread is handling (see Arrival).
    [ThreadStatic]
    private static long t_arrival;

    /// <summary>When the kernel received the datagram the calling handler is handling (SO_TIMESTAMPNS; 0 where the kernel gives none).</summary>
    public long Arrival => t_arrival;

    /// <summary>True when the kernel may coalesce received datagrams (UDP_GRO).</summary>
    public bool ReceiveOffload { get; }

    /// <summary>What the socket's offloads did: segmented sends, coalesced receives, and whether the device refused segmentation.</summary>
    public UdpOffloads Offloads { get; } = new();

    /// <summary>The bound address and port.</summary>
    public IPEndPoint Local { get; }

    /// <summary>The largest datagram <see cref="NextBuffer"/> holds.</summary>
    public int MaxDatagram => 9216;

    /// <summary>This thread's buffer for the next datagram (sending the outbox first when it is full).</summary>
    public Span<byte> NextBuffer()
    {
        var outbox = _outbox.Value!;
        if (outbox.Count == outbox.Capacity)
        {
            outbox.Send();
        }
        return outbox.Next;
    }

    /// <summary>Queues the datagram written into <see cref="NextBuffer"/>.</summary>
    public void Commit(int length, UdpPeer destination) => _outbox.Value!.Add(length, destination);

    /// <summary>Sends what this thread has queued.</summary>
    public void Flush()
    {
        if (_outbox.IsValueCreated && _outbox.Value!.Count > 0)
        {
            _outbox.Value.Send();
        }
    }

    private void ReceiveLoop(int generation)
    {
        var batch = new UdpBatchSocket(_socket, capacity: 32, gro: ReceiveOffload, offloads: Offloads, timestamps: _timestamps);
        var (unflushed, deferredFrom) = (0, 0L);
        while (!_stopping && generation == Volatile.Read(ref _generation))
        {
            int n;
            try
            {
                // While output waits, only what is queued already: none left, and it goes now.
                n = batch.Receive(unflushed > 0 ? 0 : 50);
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (Exception e)
            {
                // A socket error is reported and the thread tries again shortly: it never ends on one.
                Fault(e);
                if (unflushed > 0 && !AfterBatch())
                {
                    return;
                }
                unflushed = 0;
                Thread.Sleep(10);
                continue;
            }
            if (n == 0)
            {
                if (unflushed > 0 && !AfterBatch())
                {
                    return;
                }
                unflushed = 0;
                continue;
            }
            if (generation != Volatile.Read(ref _generation))
            {
                // Replaced while it waited (it was taken for stuck): the thread in its place reads from here on. What this
                // batch holds is still handled, without touching the timestamp that is the new thread's now.
                HandleBatch(batch, n);
                return;
            }
            // A handler that throws costs its own datagram, never the thread: the rest of the batch and every later
            // one are still handled.
            var started = _time.GetTimestamp();
            Volatile.Write(ref _handlingSince, started);
            // As many messages as a receive takes says more are waiting: what the batch makes for the VMs and the
            // underlay waits for them (at most UnflushedBatches batches, begun within MostDeferred of the first), so a
            // port gets its frames in fewer calls when many paths' datagrams interleave.
            deferredFrom = unflushed == 0 ? started : deferredFrom;
            unflushed = batch.Messages == batch.Capacity && unflushed < UnflushedBatches - 1 && _time.GetElapsedTime(deferredFrom) < MostDeferred ? unflushed + 1 : 0;
            if (!HandleBatch(batch, n, flush: unflushed == 0))
            {
                return;
            }
            if (generation == Volatile.Read(ref _generation))
            {
                // A thread replaced while it was stuck leaves the timestamp to the thread that took its place.
                Volatile.Write(ref _handlingSince, 0);
            }
        }
        if (unflushed > 0)
        {
            // Replaced or stopped with output still waiting: it is this thread's own (per thread), so this thread sends it.
            AfterBatch();
        }
    }

    /// <summary>The most full batches whose output waits for the next before it is flushed.</summary>
    private const int UnflushedBatches = 8;

    /// <summary>
    /// The longest a batch's output waits for the batches after it (from when the first of them began): a batch of costly
    /// datagrams (an attacker's, each checked against a key) delays what the ones before it made by no more than this
    /// and its own handling.
    /// </summary>
    private static readonly TimeSpan MostDeferred = TimeSpan.FromMilliseconds(2);

    /// <summary>Hands each datagram of the batch to the handler, then flushes (unless <paramref name="flush"/> is false); false when the underlay is stopping.</summary>
    private bool HandleBatch(UdpBatchSocket batch, int n, bool flush = true)
    {
        for (var i = 0; i < n; i++)
        {
            try
            {
                t_arrival = batch.Arrival(i);
                _handler(batch.Datagram(i), batch.Peer(i));
            }
            catch (ObjectDisposedException) when (_stopping)
            {
                return false;
            }
            catch (Exception e)
            {
                Fault(e);
            }
        }
        return !flush || AfterBatch();
    }

    /// <summary>Flushes what the batches handled since the last flush made; false when the underlay is stopping.</summary>
    private bool AfterBatch()
    {
        try
        {
            _afterBatch();
        }
        catch (ObjectDisposedException) when (_stopping)
        {
            return false;
        }
        catch (Exception e)
        {
            Fault(e);
        }
        return true;
    }

    private void Fault(Exception e)
    {
        Interlocked.Increment(ref _faults);
        try
        {
            _fault?.Invoke(e);
        }
        catch (Exception)
        {
            // Reporting must not be what stops the receive thread.
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _receiver.Join(TimeSpan.FromSeconds(2));
        _socket.Dispose();
        _outbox.Dispose();
    }
}
