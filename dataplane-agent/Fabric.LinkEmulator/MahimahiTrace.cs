using System.Globalization;

namespace Fabric.LinkEmulator;

/// <summary>
/// A Mahimahi link trace (../shared/testdata/mahimahi/FORMAT.md): one delivery opportunity per line, at a millisecond
/// offset; the trace repeats with a period equal to its last timestamp. Pantheon's calibrated traces use the same format.
/// </summary>
public sealed class MahimahiTrace
{
    private readonly long[] _opportunitiesMs;

    private MahimahiTrace(string name, long[] opportunitiesMs)
    {
        Name = name;
        _opportunitiesMs = opportunitiesMs;
        PeriodMs = opportunitiesMs[^1];
    }

    /// <summary>The file name it came from.</summary>
    public string Name { get; }

    /// <summary>The repeat period: the last timestamp.</summary>
    public long PeriodMs { get; }

    /// <summary>Opportunities per period.</summary>
    public int Count => _opportunitiesMs.Length;

    /// <summary>Bytes one opportunity may carry: one MTU-sized IP packet.</summary>
    public const int BytesPerOpportunity = 1500;

    /// <summary>The average capacity in bit/s: opportunities × 1500 B × 8 / period.</summary>
    public double AverageBitsPerSecond => Count * BytesPerOpportunity * 8.0 / (PeriodMs / 1000.0);

    /// <summary>Loads a trace; throws <see cref="FormatException"/> naming the file and line of any bad line.</summary>
    public static MahimahiTrace Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Trace file '{path}' does not exist.", path);
        }
        return Parse(Path.GetFileName(path), File.ReadLines(path));
    }

    /// <summary>Parses trace lines; throws <see cref="FormatException"/> naming the line of any bad one.</summary>
    public static MahimahiTrace Parse(string name, IEnumerable<string> lines)
    {
        var values = new List<long>();
        var lineNumber = 0;
        foreach (var raw in lines)
        {
            lineNumber++;
            var line = raw.Trim();
            if (line.Length == 0)
            {
                continue;
            }
            if (!long.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out var ms))
            {
                throw new FormatException($"Trace '{name}' line {lineNumber}: '{line}' is not a whole number of milliseconds.");
            }
            if (values.Count > 0 && ms < values[^1])
            {
                throw new FormatException($"Trace '{name}' line {lineNumber}: {ms} ms goes back in time (previous line was {values[^1]} ms).");
            }
            values.Add(ms);
        }
        if (values.Count == 0)
        {
            throw new FormatException($"Trace '{name}' has no delivery opportunities.");
        }
        if (values[^1] == 0)
        {
            throw new FormatException($"Trace '{name}' ends at 0 ms: its period would be zero.");
        }
        return new MahimahiTrace(name, [.. values]);
    }

    /// <summary>The time (ns, trace clock) of opportunity <paramref name="index"/> counted from the trace's start, across repeats.</summary>
    public long OpportunityNanoseconds(long index)
    {
        var cycle = index / _opportunitiesMs.Length;
        var within = (int)(index % _opportunitiesMs.Length);
        return ((cycle * PeriodMs) + _opportunitiesMs[within]) * 1_000_000;
    }

    /// <summary>The index of the first opportunity at or after <paramref name="nanoseconds"/> (trace clock).</summary>
    public long FirstOpportunityAtOrAfter(long nanoseconds)
    {
        var periodNs = PeriodMs * 1_000_000;
        var cycle = nanoseconds / periodNs;
        var offsetMs = (nanoseconds - (cycle * periodNs) + 999_999) / 1_000_000;
        var i = Array.BinarySearch(_opportunitiesMs, offsetMs);
        if (i < 0)
        {
            i = ~i;
        }
        else
        {
            // Several opportunities may share a millisecond: take the first of them.
            while (i > 0 && _opportunitiesMs[i - 1] == offsetMs)
            {
                i--;
            }
        }
        return (cycle * _opportunitiesMs.Length) + i;
    }
}
