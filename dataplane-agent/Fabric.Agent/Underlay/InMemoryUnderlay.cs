using System.Collections.Concurrent;
using System.Net;
using System.Threading.Channels;
using Fabric.Hal.Linux;

namespace Fabric.Agent.Underlay;

/// <summary>
/// A wire in memory that <see cref="InMemoryUnderlay"/>s attach to, each at its own address: a datagram goes to the
/// underlay attached at its destination, through <see cref="Tap"/> first (which may drop it), and is lost when none is
/// attached there — as on a real segment. <see cref="Inject"/> sends as any address: an attacker on the wire. For tests
/// of the switch that need no sockets and want to see, drop or forge what crosses the underlay.
/// </summary>
public sealed class InMemoryWire
{
    private readonly ConcurrentDictionary<UdpPeer, InMemoryUnderlay> _attached = new();
    private int _nextPort = 20000;
    private long _delivered;
    private long _lost;

    /// <summary>Sees each datagram (source, destination, bytes) before it is delivered; false drops it. Called on the sending thread.</summary>
    public Func<UdpPeer, UdpPeer, ReadOnlyMemory<byte>, bool>? Tap { get; set; }

    /// <summary>Datagrams handed to an attached underlay's inbox.</summary>
    public long Delivered => Interlocked.Read(ref _delivered);

    /// <summary>Datagrams the tap dropped, that had no underlay at their destination, or found its inbox full.</summary>
    public long Lost => Interlocked.Read(ref _lost);

    /// <summary>Makes underlays on this wire, as <see cref="UdpUnderlay"/>'s constructor does on a socket.</summary>
    public UnderlayFactory Factory => (local, handler, afterBatch, fault, time) => new InMemoryUnderlay(this, local, handler, afterBatch, fault, time);

    /// <summary>Sends <paramref name="datagram"/> as <paramref name="source"/> (anyone's address) to <paramref name="destination"/>.</summary>
    public void Inject(IPEndPoint source, IPEndPoint destination, ReadOnlySpan<byte> datagram) => Send(UdpPeer.From(source), UdpPeer.From(destination), datagram);

    internal IPEndPoint Attach(IPEndPoint local, InMemoryUnderlay underlay)
    {
        var bound = local.Port != 0 ? local : new IPEndPoint(local.Address, Interlocked.Increment(ref _nextPort));
        if (!_attached.TryAdd(UdpPeer.From(bound), underlay))
        {
            throw new InvalidOperationException($"Cannot bind the underlay to {bound}: the address is in use on the in-memory wire.");
        }
        return bound;
    }

    internal void Detach(IPEndPoint local, InMemoryUnderlay underlay) => _attached.TryRemove(KeyValuePair.Create(UdpPeer.From(local), underlay));

    internal void Send(UdpPeer source, UdpPeer destination, ReadOnlySpan<byte> datagram)
    {
        var bytes = datagram.ToArray();
        if (Tap is { } tap && !tap(source, destination, bytes))
        {
            Interlocked.Increment(ref _lost);
            return;
        }
        if (_attached.TryGetValue(destination, out var underlay) && underlay.Enqueue(source, bytes))
        {
            Interlocked.Increment(ref _delivered);
            return;
        }
        Interlocked.Increment(ref _lost);
    }
}

/// <summary>
/// An underlay on an <see cref="InMemoryWire"/>: what <see cref="UdpUnderlay"/> does on a kernel socket — a receive
/// thread handing each datagram to the handler and flushing after each batch, surviving what the handler throws, and
/// replaceable when stuck — without one. Its inbox holds 8,192 datagrams (beyond, they are lost, as a socket's buffer
/// overflows). No offloads.
/// </summary>
public sealed class InMemoryUnderlay : IUnderlay
{
    private const int InboxCapacity = 8192;
    private readonly InMemoryWire _wire;
    private readonly UnderlayHandler _handler;
    private readonly Action _afterBatch;
    private readonly Action<Exception>? _fault;
    private readonly Channel<(UdpPeer Source, byte[] Datagram)> _inbox =
        Channel.CreateBounded<(UdpPeer, byte[])>(new BoundedChannelOptions(InboxCapacity) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly ThreadLocal<byte[]> _buffer;
    private readonly UdpPeer _self;
    private Thread _receiver;
    private int _generation;
    private long _handlingSince;
    private readonly TimeProvider _time;
    private long _faults;
    private volatile bool _stopping;

    internal InMemoryUnderlay(InMemoryWire wire, IPEndPoint local, UnderlayHandler handler, Action afterBatch, Action<Exception>? fault, TimeProvider time)
    {
        (_wire, _handler, _afterBatch, _fault, _time) = (wire, handler, afterBatch, fault, time);
        _buffer = new ThreadLocal<byte[]>(() => new byte[MaxDatagram]);
        Local = wire.Attach(local, this);
        _self = UdpPeer.From(Local);
        _receiver = StartReceiver(0);
    }

    public IPEndPoint Local { get; }

    public int MaxDatagram => 9216;

    public long Faults => Interlocked.Read(ref _faults);

    public UdpOffloads Offloads { get; } = new();

    public TimeSpan HandlingFor
    {
        get
        {
            var since = Volatile.Read(ref _handlingSince);
            return since == 0 ? TimeSpan.Zero : _time.GetElapsedTime(since);
        }
    }

    public Span<byte> NextBuffer() => _buffer.Value!;

    /// <summary>Puts the datagram on the wire at once (the wire copies it); <see cref="Flush"/> has nothing left to send.</summary>
    public void Commit(int length, UdpPeer destination) => _wire.Send(_self, destination, _buffer.Value.AsSpan(0, length));

    public void Flush()
    {
    }

    internal bool Enqueue(UdpPeer source, byte[] datagram) => !_stopping && _inbox.Writer.TryWrite((source, datagram));

    public int ReplaceReceiver()
    {
        var replaced = Interlocked.Increment(ref _generation);
        Volatile.Write(ref _handlingSince, 0);
        _receiver = StartReceiver(replaced);
        return replaced;
    }

    private Thread StartReceiver(int generation)
    {
        var thread = new Thread(() => ReceiveLoop(generation)) { IsBackground = true, Name = $"underlay-rx {Local} (in memory)" };
        thread.Start();
        return thread;
    }

    private void ReceiveLoop(int generation)
    {
        var reader = _inbox.Reader;
        while (!_stopping && generation == Volatile.Read(ref _generation))
        {
            try
            {
                if (!reader.WaitToReadAsync().AsTask().Wait(50))
                {
                    continue;
                }
            }
            catch (AggregateException)
            {
                return;
            }
            Volatile.Write(ref _handlingSince, _time.GetTimestamp());
            // A batch, as a socket's receive thread takes one: what is waiting, up to 32.
            for (var n = 0; n < 32 && reader.TryRead(out var item); n++)
            {
                Guard(() => _handler(item.Datagram, item.Source));
            }
            Guard(_afterBatch);
            if (generation == Volatile.Read(ref _generation))
            {
                Volatile.Write(ref _handlingSince, 0);
            }
        }
    }

    private void Guard(Action action)
    {
        try
        {
            action();
        }
        catch (Exception e) when (!_stopping)
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
        catch (Exception)
        {
            // Stopping: what the handler met on the way out (a disposed switch) changes nothing.
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _wire.Detach(Local, this);
        _inbox.Writer.TryComplete();
        _receiver.Join(TimeSpan.FromSeconds(2));
        _buffer.Dispose();
    }
}
