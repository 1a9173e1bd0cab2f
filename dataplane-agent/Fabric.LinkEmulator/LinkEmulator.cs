using Fabric.Hal;

namespace Fabric.LinkEmulator;

/// <summary>Which way frames travel through the emulator.</summary>
public enum Direction
{
    /// <summary>Frames received on port A and sent out of port B.</summary>
    AToB,
    /// <summary>Frames received on port B and sent out of port A.</summary>
    BToA,
}

/// <summary>
/// A bridge between two frame ports that applies a <see cref="LinkProfile"/> per direction. Two ways to drive it:
/// <see cref="Step"/> under any clock (deterministic tests over channel ports), or <see cref="Start"/>, which runs a
/// receive thread per port and a delivery thread per direction against the real clock.
/// </summary>
public sealed class LinkEmulator : IDisposable
{
    private readonly IFramePort _a;
    private readonly IFramePort _b;
    private readonly IClock _clock;
    private readonly Lane[] _lanes;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Thread> _threads = [];

    private sealed class Lane(Direction direction, IFramePort from, IFramePort to, LinkDirection link)
    {
        public Direction Direction { get; } = direction;
        public IFramePort From { get; } = from;
        public IFramePort To { get; } = to;
        public LinkDirection Link { get; } = link;
        public object Gate { get; } = new();
        public AutoResetEvent Wake { get; } = new(false);
        public long TransmitFailures;
    }

    public LinkEmulator(IFramePort a, IFramePort b, LinkProfile aToB, LinkProfile bToA, IClock clock, int seed = 1)
    {
        _a = a;
        _b = b;
        _clock = clock;
        var now = clock.NowNanoseconds;
        _lanes =
        [
            new Lane(Direction.AToB, a, b, new LinkDirection(aToB, now, seed)),
            new Lane(Direction.BToA, b, a, new LinkDirection(bToA, now, seed + 1)),
        ];
    }

    /// <summary>The profile in force for a direction.</summary>
    public LinkProfile GetProfile(Direction direction)
    {
        var lane = _lanes[(int)direction];
        lock (lane.Gate)
        {
            return lane.Link.Profile;
        }
    }

    /// <summary>Changes a direction's profile at once; queued frames keep their schedule, new ones follow the new profile.</summary>
    public void SetProfile(Direction direction, LinkProfile profile)
    {
        var lane = _lanes[(int)direction];
        lock (lane.Gate)
        {
            lane.Link.SetProfile(profile, _clock.NowNanoseconds);
        }
        lane.Wake.Set();
    }

    /// <summary>Counters of a direction, plus frames the output port refused.</summary>
    public (LinkStats Link, long TransmitFailures) GetStats(Direction direction)
    {
        var lane = _lanes[(int)direction];
        lock (lane.Gate)
        {
            return (lane.Link.Stats, Interlocked.Read(ref lane.TransmitFailures));
        }
    }

    /// <summary>
    /// One deterministic step at the clock's current time: takes every frame waiting on both ports, then sends every
    /// frame due. Returns when the next event is due (or <see cref="long.MaxValue"/>), so a simulation can jump there.
    /// </summary>
    public long Step()
    {
        var buffer = new byte[Math.Max(_a.Capabilities.MaxFrameLength, _b.Capabilities.MaxFrameLength) + 64];
        var now = _clock.NowNanoseconds;
        var next = long.MaxValue;
        foreach (var lane in _lanes)
        {
            while (lane.From.Receive(buffer, out var length, TimeSpan.Zero) == PortResult.Ok)
            {
                lane.Link.Offer(buffer.AsSpan(0, length), now);
            }
            while (lane.Link.TryTakeDue(now, out var frame))
            {
                if (lane.To.Transmit(frame.Span) != PortResult.Ok)
                {
                    lane.TransmitFailures++;
                }
                LinkDirection.Release(frame);
            }
            next = Math.Min(next, lane.Link.NextEventNanoseconds);
        }
        return next;
    }

    /// <summary>Starts the real-time threads. Dispose stops them.</summary>
    public void Start()
    {
        foreach (var lane in _lanes)
        {
            _threads.Add(StartThread($"linkem-rx-{lane.Direction}", () => ReceiveLoop(lane)));
            _threads.Add(StartThread($"linkem-tx-{lane.Direction}", () => DeliverLoop(lane)));
        }
    }

    private static Thread StartThread(string name, Action body)
    {
        var thread = new Thread(() => body()) { IsBackground = true, Name = name, Priority = ThreadPriority.AboveNormal };
        thread.Start();
        return thread;
    }

    private void ReceiveLoop(Lane lane)
    {
        var batch = new FrameBatch(64, Math.Max(lane.From.Capabilities.MaxFrameLength, 2048));
        while (!_stop.IsCancellationRequested)
        {
            var result = lane.From.ReceiveBatch(batch, TimeSpan.FromMilliseconds(50));
            if (result == PortResult.Closed)
            {
                return;
            }
            if (result != PortResult.Ok)
            {
                continue;
            }
            lock (lane.Gate)
            {
                var now = _clock.NowNanoseconds;
                for (var i = 0; i < batch.Count; i++)
                {
                    lane.Link.Offer(batch[i], now);
                }
            }
            lane.Wake.Set();
        }
    }

    private void DeliverLoop(Lane lane)
    {
        var batch = new FrameBatch(64, Math.Max(lane.To.Capabilities.MaxFrameLength, 2048));
        while (!_stop.IsCancellationRequested)
        {
            long next;
            lock (lane.Gate)
            {
                var now = _clock.NowNanoseconds;
                while (batch.Count < batch.Capacity && lane.Link.TryTakeDue(now, out var frame))
                {
                    if (!batch.TryAdd(frame.Span))
                    {
                        Interlocked.Increment(ref lane.TransmitFailures);
                    }
                    LinkDirection.Release(frame);
                }
                next = lane.Link.NextEventNanoseconds;
            }
            if (batch.Count > 0)
            {
                var sent = lane.To.TransmitBatch(batch);
                if (sent < batch.Count)
                {
                    Interlocked.Add(ref lane.TransmitFailures, batch.Count - sent);
                }
                batch.Clear();
                continue;
            }
            WaitUntil(lane, next);
        }
    }

    /// <summary>
    /// Waits until <paramref name="deadline"/> or a wake-up. Monitor/WaitOne sleeps round to whole milliseconds, so the
    /// wait is made of nanosleep() slices of at most 1 ms (checking for wake-ups between them) and a short spin at the
    /// end to absorb the kernel's timer slack (about 50 µs).
    /// </summary>
    private void WaitUntil(Lane lane, long deadline)
    {
        const long SpinBelow = 80_000;
        const long Slice = 1_000_000;
        if (deadline == long.MaxValue)
        {
            lane.Wake.WaitOne(100);
            return;
        }
        while (true)
        {
            var remaining = deadline - _clock.NowNanoseconds;
            if (remaining <= 0 || lane.Wake.WaitOne(0))
            {
                return;
            }
            if (remaining > SpinBelow)
            {
                PreciseSleep.Sleep(Math.Min(Slice, remaining - SpinBelow));
            }
            else
            {
                Thread.SpinWait(20);
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        foreach (var lane in _lanes)
        {
            lane.Wake.Set();
        }
        foreach (var thread in _threads)
        {
            thread.Join(TimeSpan.FromSeconds(2));
        }
        foreach (var lane in _lanes)
        {
            lane.Wake.Dispose();
        }
        _stop.Dispose();
    }
}
