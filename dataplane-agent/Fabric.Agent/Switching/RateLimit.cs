namespace Fabric.Agent.Switching;

/// <summary>
/// Lets at most one event through per interval, from any thread: an answer or a report about a flood of bad input must
/// not become a flood itself.
/// </summary>
public sealed class RateLimit(TimeSpan interval)
{
    private readonly long _interval = (long)(interval.TotalMilliseconds * 1_000_000);
    private long _last = long.MinValue / 2;

    /// <summary>True for the first event of each interval (times in nanoseconds of the caller's clock).</summary>
    public bool ShouldReport(long nowNanoseconds)
    {
        var last = Interlocked.Read(ref _last);
        return nowNanoseconds - last >= _interval && Interlocked.CompareExchange(ref _last, nowNanoseconds, last) == last;
    }
}
