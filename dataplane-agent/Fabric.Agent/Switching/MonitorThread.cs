using Microsoft.Extensions.Logging;

namespace Fabric.Agent.Switching;

/// <summary>
/// The path monitor: one thread that runs the stacks' due timers and sends each path's probes every 100 ms. Between
/// rounds it sleeps until the earliest stack timer or probe is due — a path whose stack arms an earlier timer wakes it
/// (<see cref="TimerArmed"/>) — instead of looking every millisecond: an idle agent costs nothing here. Timers fire
/// within about a millisecond (the wait's granularity). A fault in a round is said, counted and survived; a thread held
/// by a stack stuck in a timer call is given a successor (<see cref="ReplaceIfStuck"/>), and ends when the call returns.
/// </summary>
internal sealed class MonitorThread(SwitchState state) : IDisposable
{
    /// <summary>How long the monitor may go without beginning a round before the watchdog gives it a successor.</summary>
    public const long StuckNanoseconds = 1_000_000_000;

    private readonly AutoResetEvent _wake = new(false);
    private readonly RateLimit _faultReports = new(TimeSpan.FromSeconds(1));
    private Thread? _thread;
    private volatile bool _stopping;

    /// <summary>Which thread is the current one: an older one that comes back from a stuck call ends.</summary>
    private int _generation;

    /// <summary>When the current thread last began a round (its heartbeat; it sleeps at most 100 ms between rounds).</summary>
    private long _beat;

    /// <summary>When the thread plans to wake (<see cref="long.MinValue"/> while it is awake: it looks at every path before sleeping).</summary>
    private long _wakeAt = long.MinValue;

    private long _nextProbe;
    private long _replacements;
    private long _faults;

    /// <summary>Threads replaced because a stack held one in a call that did not return.</summary>
    public long Replacements => Interlocked.Read(ref _replacements);

    /// <summary>Exceptions the monitor caught and survived.</summary>
    public long Faults => Interlocked.Read(ref _faults);

    /// <summary>Starts a monitor thread; one started before it (stuck in a stack's call) ends when that call returns.</summary>
    public void Start()
    {
        var generation = Interlocked.Increment(ref _generation);
        Volatile.Write(ref _beat, state.Clock());
        _thread = new Thread(() => Loop(generation)) { IsBackground = true, Name = "path-monitor" };
        _thread.Start();
    }

    /// <summary>Gives the monitor a successor when it has not begun a round for <see cref="StuckNanoseconds"/> (a stack
    /// stuck in a timer call holds it, and every path's timers and probes share it); returns whether it did.</summary>
    public bool ReplaceIfStuck(long now)
    {
        if (_thread is null || now - Volatile.Read(ref _beat) <= StuckNanoseconds)
        {
            return false;
        }
        var count = Interlocked.Increment(ref _replacements);
        state.Report($"the path monitor was stuck for over {StuckNanoseconds / 1_000_000} ms: a new one took its place ({count} so far)", LogLevel.Error);
        Start();
        return true;
    }

    /// <summary>A stack's timer is due at <paramref name="at"/>: wakes the monitor if it planned to sleep past it.</summary>
    public void TimerArmed(long at)
    {
        if (at < Volatile.Read(ref _wakeAt))
        {
            _wake.Set();
        }
    }

    private void Loop(int generation)
    {
        while (!_stopping && Volatile.Read(ref _generation) == generation)
        {
            try
            {
                Rounds(generation);
            }
            catch (Exception e)
            {
                // A bug in one round must not end probing and stack timers for every path: report, pause, go on. Said
                // before it is counted, so whoever sees the count finds the event.
                if (_faultReports.ShouldReport(state.Clock()))
                {
                    state.Report($"the path monitor threw {e.GetType().Name}: {e.Message} (it goes on)", LogLevel.Error);
                }
                Interlocked.Increment(ref _faults);
                Thread.Sleep(10);
            }
        }
    }

    private void Rounds(int generation)
    {
        while (!_stopping && Volatile.Read(ref _generation) == generation)
        {
            var now = state.Clock();
            Volatile.Write(ref _beat, now);
            var probe = now >= _nextProbe;
            if (probe)
            {
                _nextProbe = now + 100_000_000;
            }
            foreach (var path in state.Paths.Values)
            {
                path.RunTimers(now);
                if (probe)
                {
                    path.SendProbe();
                }
            }
            state.Flush();
            // Said before the paths are asked, so a timer armed meanwhile wakes the wait below (it sets the event).
            Volatile.Write(ref _wakeAt, _nextProbe);
            var next = _nextProbe;
            foreach (var path in state.Paths.Values)
            {
                next = Math.Min(next, path.NextTimer(now));
            }
            Volatile.Write(ref _wakeAt, next);
            // At least 1 ms: a stack whose timer stays due after it ran is called every millisecond, not in a spin.
            _wake.WaitOne((int)Math.Clamp(Math.Ceiling((next - state.Clock()) / 1_000_000.0), 1, 100));
            Volatile.Write(ref _wakeAt, long.MinValue);
        }
    }

    /// <summary>Stops the monitor, waiting up to 2 s for the current thread to end.</summary>
    public void Dispose()
    {
        _stopping = true;
        _wake.Set();
        _thread?.Join(TimeSpan.FromSeconds(2));
    }
}
