using System.Diagnostics;

namespace Fabric.Dashboard.Tests;

/// <summary>The process's own figures the fleet page shows.</summary>
public sealed class ProcessMeterTests
{
    [Fact]
    public void CpuIsWhatTheProcessUsedOverTheWindow_AndHeldUntilTheWindowHasPassed()
    {
        var meter = new ProcessMeter(TimeProvider.System, TimeSpan.FromMilliseconds(200));
        var first = meter.Read();
        // The first reading covers the process's life: at least what it has used so far.
        Assert.True(first.Over > TimeSpan.Zero && first.CpuSeconds > 0, first.ToString());

        // Half a second of CPU on this thread (counted in CPU time, not wall time: the machine is shared).
        using var process = Process.GetCurrentProcess();
        var (start, wall) = (process.TotalProcessorTime, Stopwatch.StartNew());
        while (Process.GetCurrentProcess().TotalProcessorTime - start < TimeSpan.FromMilliseconds(500))
        {
            Thread.SpinWait(10_000);
        }
        Thread.Sleep(250);
        var busy = meter.Read();
        Assert.True(busy.CpuSeconds >= 0.5, busy.ToString());
        Assert.InRange(busy.Over, TimeSpan.FromMilliseconds(200), wall.Elapsed + TimeSpan.FromSeconds(1));
        Assert.Equal(busy.CpuSeconds / busy.Over.TotalSeconds, busy.CpuOfOneCore, 9);
        Assert.True(busy.WorkingSetBytes > 10_000_000 && busy.GcHeapBytes > 0, busy.ToString());

        // Within the window a reading repeats the last one (a page refreshing every second shows a steady figure).
        var steady = new ProcessMeter(TimeProvider.System, TimeSpan.FromHours(1));
        var once = steady.Read();
        Thread.SpinWait(1_000_000);
        var again = steady.Read();
        Assert.Equal((once.CpuSeconds, once.Over), (again.CpuSeconds, again.Over));
    }
}
