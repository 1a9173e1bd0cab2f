using System.Diagnostics;

namespace Fabric.Dashboard;

/// <summary>What this process costs: CPU over a window, and memory now.</summary>
/// <param name="CpuSeconds">CPU time every thread of the process used over <paramref name="Over"/>.</param>
/// <param name="Over">The window the CPU figure covers (the process's whole life at the first reading).</param>
/// <param name="WorkingSetBytes">Resident memory at the reading.</param>
/// <param name="GcHeapBytes">The managed heap at the reading.</param>
public sealed record ProcessReading(double CpuSeconds, TimeSpan Over, long WorkingSetBytes, long GcHeapBytes)
{
    /// <summary>Share of one core, averaged over the window (1 = one core busy all the time).</summary>
    public double CpuOfOneCore => Over > TimeSpan.Zero ? CpuSeconds / Over.TotalSeconds : 0;

    public override string ToString() =>
        $"{CpuOfOneCore * 100:0.#} % of one core over {Over.TotalSeconds:0} s, {WorkingSetBytes / 1e6:0} MB resident, GC heap {GcHeapBytes / 1e6:0} MB";
}

/// <summary>
/// The dashboard process's own CPU and memory, as the fleet page shows them (on the embedded default this process is the
/// whole of Fabric: silo, repository, simulated fleet and dashboard). It samples only when read: nobody watching costs
/// nothing. CPU is averaged from the previous reading that is at least <paramref name="window"/> old, so a page
/// refreshing every second shows a steady figure.
/// </summary>
public sealed class ProcessMeter(TimeProvider time, TimeSpan window)
{
    public ProcessMeter()
        : this(TimeProvider.System, TimeSpan.FromSeconds(10))
    {
    }

    private readonly Lock _gate = new();
    private (DateTimeOffset At, TimeSpan Cpu)? _mark;
    private (double CpuSeconds, TimeSpan Over)? _last;

    public ProcessReading Read()
    {
        using var process = Process.GetCurrentProcess();
        var (now, cpu) = (time.GetUtcNow(), process.TotalProcessorTime);
        lock (_gate)
        {
            // The first reading covers the process's life so far.
            var mark = _mark ?? (new DateTimeOffset(process.StartTime.ToUniversalTime()), TimeSpan.Zero);
            if (_last is null || now - mark.At >= window)
            {
                _last = ((cpu - mark.Cpu).TotalSeconds, now - mark.At);
                _mark = (now, cpu);
            }
            return new ProcessReading(_last.Value.CpuSeconds, _last.Value.Over, process.WorkingSet64, GC.GetTotalMemory(false));
        }
    }
}
