using System.Diagnostics;

namespace Fabric.LinkEmulator;

/// <summary>A monotonic time source in nanoseconds. Emulation reads time only through this.</summary>
public interface IClock
{
    /// <summary>Nanoseconds since an arbitrary, fixed origin.</summary>
    long NowNanoseconds { get; }
}

/// <summary>The machine's monotonic clock.</summary>
public sealed class SystemClock : IClock
{
    public static SystemClock Instance { get; } = new();

    public long NowNanoseconds => (long)(Stopwatch.GetTimestamp() * (1_000_000_000.0 / Stopwatch.Frequency));
}

/// <summary>A clock that moves only when told: deterministic tests.</summary>
public sealed class ManualClock(long start = 0) : IClock
{
    public long NowNanoseconds { get; private set; } = start;

    public void Advance(TimeSpan by) => NowNanoseconds += (long)(by.TotalMilliseconds * 1_000_000);

    public void AdvanceNanoseconds(long nanoseconds) => NowNanoseconds += nanoseconds;
}
