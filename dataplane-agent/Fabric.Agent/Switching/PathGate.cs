namespace Fabric.Agent.Switching;

/// <summary>
/// The gate of one path's stack instances, and the watch on calls into them. Every call into an instance holds the gate,
/// so a stack sees one thread at a time whichever VM port or underlay thread the packet came from. A call marked with
/// <see cref="Calling(int, string?)"/> that has not <see cref="Returned"/> after <see cref="StuckNanoseconds"/> makes the path
/// <see cref="Stuck"/>: from then on no thread waits on the gate (frames are dropped, operations fail naming the path),
/// and the switch's watchdog replaces the path.
/// </summary>
internal sealed class PathGate(string hostId, Func<long> clock)
{
    /// <summary>After how long a call into a stack counts as stuck.</summary>
    public const long StuckNanoseconds = 200_000_000;

    /// <summary>How long a frame, datagram or probe waits for the gate (held for microseconds, except by a slow or stuck
    /// stack; one seen stuck is not waited for at all). Generous, so a busy machine never drops a healthy path's frames.</summary>
    public const int DataWaitMilliseconds = 250;

    /// <summary>How long an operation (a binding, a slot opened) waits for the gate before it fails naming the stuck path.</summary>
    private const int OperationWaitMilliseconds = 2000;

    private readonly object _lock = new();
    private long _inCallSince;
    private volatile int _inCallSlot;
    private volatile string? _inCallStack;
    private volatile int _inCallThread;

    /// <summary>Whether a call into a stack has lasted longer than <see cref="StuckNanoseconds"/>.</summary>
    public bool Stuck => InCallFor(clock()) > StuckNanoseconds;

    /// <summary>Takes the gate for data (a frame, a datagram, a probe), waiting at most <paramref name="milliseconds"/>
    /// and not at all once the path is stuck. The free gate is taken without reading the clock.</summary>
    public bool TryTake(int milliseconds = DataWaitMilliseconds) => Monitor.TryEnter(_lock) || Monitor.TryEnter(_lock, Stuck ? 0 : milliseconds);

    /// <summary>Takes the gate for a reader that must not stall (status, metrics, housekeeping, timers), waiting at most
    /// <paramref name="milliseconds"/> (0: only if free) whether or not the path is stuck.</summary>
    public bool TryTakeWithin(int milliseconds) => Monitor.TryEnter(_lock, milliseconds);

    /// <summary>Takes the gate for an operation; throws <see cref="PathStuckException"/> rather than wait on a stuck stack.</summary>
    public Hold Take() => TryTake(OperationWaitMilliseconds) ? new Hold(_lock) : throw new PathStuckException(hostId, InCallFor(clock()));

    /// <summary>The gate, already taken by a TryTake: released when disposed.</summary>
    public Hold Held() => new(_lock);

    /// <summary>The gate, held until disposed.</summary>
    public readonly struct Hold(object gate) : IDisposable
    {
        public void Dispose() => Monitor.Exit(gate);
    }

    /// <summary>Marks a call into <paramref name="slot"/>'s instance of <paramref name="stackId"/> as running since
    /// <paramref name="now"/> (under the gate).</summary>
    public void Calling(int slot, string? stackId, long now)
    {
        _inCallSlot = slot;
        _inCallStack = stackId;
        _inCallThread = Environment.CurrentManagedThreadId;
        Volatile.Write(ref _inCallSince, now);
    }

    /// <summary><see cref="Calling(int, string?, long)"/> from now.</summary>
    public void Calling(int slot, string? stackId) => Calling(slot, stackId, clock());

    /// <summary>The call <see cref="Calling(int, string?, long)"/> marked has returned (under the gate). One call in
    /// <see cref="SampleEvery"/> is timed, for <see cref="CallTimes"/>, once a version has warmed up on the path.</summary>
    public void Returned()
    {
        var since = Volatile.Read(ref _inCallSince);
        Volatile.Write(ref _inCallSince, 0);
        if (++_returns % SampleEvery != 0 || since == 0 || _inCallStack is not { } stack)
        {
            return;
        }
        var took = clock() - since;
        lock (_callTimes)
        {
            var (nanoseconds, samples) = _callTimes.TryGetValue(stack, out var counted) ? counted : (0, -WarmupSamples);
            if (samples < 0)
            {
                // Still warming up: its first calls compile its code (a fresh load context's), which a rollout's cpu gate
                // must not take for what a call costs.
                _callTimes[stack] = (0, samples + 1);
                return;
            }
            _callTimes[stack] = (nanoseconds + took, samples + 1);
        }
    }

    /// <summary>How many calls into stacks go by for each one timed: a clock read per call would cost the data path.</summary>
    public const int SampleEvery = 64;

    /// <summary>Samples of a version on a path not counted (its first <c>WarmupSamples × SampleEvery</c> or so calls).</summary>
    public const int WarmupSamples = 16;

    private long _returns;

    /// <summary>Per version: time and samples counted; a version not yet warmed up counts its samples from −<see cref="WarmupSamples"/>.</summary>
    private readonly Dictionary<string, (long Nanoseconds, long Samples)> _callTimes = new(StringComparer.Ordinal);

    /// <summary>
    /// Per stack version key: the time its timed calls took in all and how many were timed, since the path began, leaving
    /// out its first <see cref="WarmupSamples"/> samples on the path (versions still warming up are not listed).
    /// </summary>
    public IReadOnlyDictionary<string, (long Nanoseconds, long Samples)> CallTimes()
    {
        lock (_callTimes)
        {
            return _callTimes.Where(c => c.Value.Samples > 0).ToDictionary(c => c.Key, c => c.Value, StringComparer.Ordinal);
        }
    }

    /// <summary>The slot whose stack the current (or last) call went into.</summary>
    public int InCallSlot => _inCallSlot;

    /// <summary>The stack the current (or last) call went into, read without the gate (for the watchdog).</summary>
    public string? InCallStack => _inCallStack;

    /// <summary>The managed id of the thread that made the current (or last) call.</summary>
    public int InCallThread => _inCallThread;

    /// <summary>How long the current call into a stack has lasted, in nanoseconds (0 when none is running).</summary>
    public long InCallFor(long now)
    {
        var since = Volatile.Read(ref _inCallSince);
        return since == 0 ? 0 : now - since;
    }
}

/// <summary>
/// What the calls into a path's stacks threw during one turn of the gate: the first fault is kept (with its slot and
/// stack) and reported once the gate is released, so the switch's handler, which may close slots of this very path,
/// never runs under it. A stack must count per-packet failures, not throw: one that throws is broken and is quarantined.
/// </summary>
internal struct StackFaults
{
    public Exception? First;
    public int Slot;
    public string? Stack;

    /// <summary>Keeps <paramref name="fault"/> unless an earlier one of this turn is kept.</summary>
    public void Add(Exception fault, int slot, string? stack)
    {
        if (First is null)
        {
            (First, Slot, Stack) = (fault, slot, stack);
        }
    }
}
