using System.Buffers;

namespace Fabric.LinkEmulator;

/// <summary>What happened to a frame offered to a <see cref="LinkDirection"/>.</summary>
public enum OfferResult
{
    /// <summary>Accepted: it will be delivered after the bottleneck and the delay.</summary>
    Queued,
    /// <summary>Dropped by the loss model (random or Gilbert–Elliott).</summary>
    Lost,
    /// <summary>Dropped because the bottleneck queue was full (drop-tail).</summary>
    QueueFull,
}

/// <summary>Counters of one direction.</summary>
public readonly record struct LinkStats(long Offered, long Lost, long QueueDrops, long Delivered, long DeliveredBytes, int Queued, int InFlight);

/// <summary>A frame leaving the link: its bytes live in a pooled buffer until <see cref="LinkDirection.Release"/>.</summary>
public readonly record struct DeliveredFrame(byte[] Buffer, int Length, long ArrivedAt, long DeliverAt)
{
    public ReadOnlySpan<byte> Span => Buffer.AsSpan(0, Length);
}

/// <summary>
/// One direction of an emulated link as a pure state machine: time comes in as arguments, randomness from a seeded
/// generator, so the same inputs give the same outputs. Not thread-safe: callers serialize access.
/// </summary>
public sealed class LinkDirection
{
    /// <summary>Frame bytes one trace opportunity carries: a 1500-byte IP packet and its Ethernet header.</summary>
    public const int TraceFrameBytes = MahimahiTrace.BytesPerOpportunity + 14;
    private readonly Random _random;
    private readonly Queue<Pending> _bottleneck = new();
    private readonly PriorityQueue<Pending, (long At, long Sequence)> _inFlight = new();
    private LinkProfile _profile;
    private long _linkFreeAt;
    private long _traceStart;
    private long _traceCursor = -1;
    private int _traceCredit;
    private long? _headDeparture;
    private long _headOpportunity;
    private int _headCreditAfter;
    private bool _burstBad;
    private long _lastDeliverAt;
    private long _sequence;
    private long _offered;
    private long _lost;
    private long _queueDrops;
    private long _delivered;
    private long _deliveredBytes;

    private readonly record struct Pending(byte[] Buffer, int Length, long ArrivedAt);

    public LinkDirection(LinkProfile profile, long now, int seed)
    {
        _profile = profile;
        _random = new Random(seed);
        _traceStart = now;
        _linkFreeAt = now;
    }

    /// <summary>The profile in force.</summary>
    public LinkProfile Profile => _profile;

    public LinkStats Stats => new(_offered, _lost, _queueDrops, _delivered, _deliveredBytes, _bottleneck.Count, _inFlight.Count);

    /// <summary>Changes the profile from <paramref name="now"/> on. Frames already past the bottleneck keep their delivery time.</summary>
    public void SetProfile(LinkProfile profile, long now)
    {
        Advance(now);
        if (!ReferenceEquals(profile.Trace, _profile.Trace))
        {
            _traceStart = now;
            _traceCursor = -1;
            _traceCredit = 0;
        }
        _linkFreeAt = Math.Max(_linkFreeAt, now);
        _profile = profile;
        _headDeparture = null;
    }

    /// <summary>Offers a frame arriving at <paramref name="now"/>; the bytes are copied.</summary>
    public OfferResult Offer(ReadOnlySpan<byte> frame, long now)
    {
        Advance(now);
        _offered++;
        if (IsLost())
        {
            _lost++;
            return OfferResult.Lost;
        }
        if (_bottleneck.Count >= _profile.QueuePackets)
        {
            _queueDrops++;
            return OfferResult.QueueFull;
        }
        var buffer = ArrayPool<byte>.Shared.Rent(frame.Length);
        frame.CopyTo(buffer);
        _bottleneck.Enqueue(new Pending(buffer, frame.Length, now));
        Advance(now);
        return OfferResult.Queued;
    }

    /// <summary>Takes the next frame due by <paramref name="now"/>, if any. Give its buffer back with <see cref="Release"/>.</summary>
    public bool TryTakeDue(long now, out DeliveredFrame frame)
    {
        Advance(now);
        if (_inFlight.TryPeek(out var pending, out var key) && key.At <= now)
        {
            _inFlight.Dequeue();
            _delivered++;
            _deliveredBytes += pending.Length;
            frame = new DeliveredFrame(pending.Buffer, pending.Length, pending.ArrivedAt, key.At);
            return true;
        }
        frame = default;
        return false;
    }

    /// <summary>Returns a delivered frame's buffer to the pool.</summary>
    public static void Release(in DeliveredFrame frame) => ArrayPool<byte>.Shared.Return(frame.Buffer);

    /// <summary>When something next happens (a departure or a delivery), or <see cref="long.MaxValue"/> when idle.</summary>
    public long NextEventNanoseconds
    {
        get
        {
            var next = long.MaxValue;
            if (_inFlight.TryPeek(out _, out var key))
            {
                next = key.At;
            }
            if (_bottleneck.Count > 0)
            {
                next = Math.Min(next, HeadDeparture());
            }
            return next;
        }
    }

    /// <summary>Moves every frame whose bottleneck departure is due into the delay stage.</summary>
    private void Advance(long now)
    {
        while (_bottleneck.Count > 0)
        {
            var departure = HeadDeparture();
            if (departure > now)
            {
                return;
            }
            var pending = _bottleneck.Dequeue();
            CommitDeparture(pending, departure);
            _headDeparture = null;
            var deliverAt = departure + DelaySample();
            if (!_profile.AllowReorder)
            {
                deliverAt = Math.Max(deliverAt, _lastDeliverAt);
                _lastDeliverAt = deliverAt;
            }
            _inFlight.Enqueue(pending, (deliverAt, _sequence++));
        }
    }

    private long HeadDeparture()
    {
        if (_headDeparture is { } known)
        {
            return known;
        }
        var head = _bottleneck.Peek();
        long departure;
        if (_profile.Trace is { } trace)
        {
            // Byte by byte, as mm-link does: the frame takes what is left of the opportunity in use (if that one comes after
            // it arrived), else the first one after its arrival, and as many more as its bytes need. It leaves with its last
            // byte; what its last opportunity has left is for the frames behind it.
            var first = trace.FirstOpportunityAtOrAfter(head.ArrivedAt - _traceStart);
            var (index, credit) = first <= _traceCursor && _traceCredit > 0
                ? (_traceCursor, _traceCredit)
                : (Math.Max(first, _traceCursor + 1), TraceFrameBytes);
            var remaining = head.Length - credit;
            while (remaining > 0)
            {
                index++;
                remaining -= TraceFrameBytes;
            }
            (_headOpportunity, _headCreditAfter) = (index, -remaining);
            departure = _traceStart + trace.OpportunityNanoseconds(index);
        }
        else if (_profile.RateBitsPerSecond > 0)
        {
            departure = Math.Max(head.ArrivedAt, _linkFreeAt) + TransmitNanoseconds(head.Length);
        }
        else
        {
            departure = head.ArrivedAt;
        }
        _headDeparture = departure;
        return departure;
    }

    private void CommitDeparture(Pending pending, long departure)
    {
        if (_profile.Trace is not null)
        {
            (_traceCursor, _traceCredit) = (_headOpportunity, _headCreditAfter);
        }
        else if (_profile.RateBitsPerSecond > 0)
        {
            _linkFreeAt = departure;
        }
    }

    private long TransmitNanoseconds(int bytes) => (long)(bytes * 8.0 * 1_000_000_000 / _profile.RateBitsPerSecond);

    private long DelaySample()
    {
        var delay = _profile.Delay.Ticks * 100;
        var jitter = _profile.Jitter.Ticks * 100;
        if (jitter > 0)
        {
            delay += (long)(((_random.NextDouble() * 2) - 1) * jitter);
        }
        return Math.Max(0, delay);
    }

    private bool IsLost()
    {
        if (_profile.BurstLoss is { } ge)
        {
            _burstBad = _burstBad ? _random.NextDouble() >= ge.R : _random.NextDouble() < ge.P;
            return _random.NextDouble() < (_burstBad ? ge.LossInBad : ge.LossInGood);
        }
        return _profile.LossRate > 0 && _random.NextDouble() < _profile.LossRate;
    }
}
