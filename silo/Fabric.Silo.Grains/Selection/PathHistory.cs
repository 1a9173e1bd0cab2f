using System.Collections.Immutable;
using System.Runtime.InteropServices;

namespace Fabric.Silo.Selection;

/// <summary>
/// About ten minutes of a path's smoothed conditions (what the dashboard charts) in fixed memory: every one of the last
/// <see cref="Recent"/> reports, and before them one entry per <see cref="OlderStep"/>, <see cref="Older"/> of them.
/// Entries are kept as compact numbers (28 bytes, not a 96-byte record and its reference): keeping every report of ten
/// minutes as records grew the control-plane benchmark's heap from 433 to 1,046 MiB over ten minutes at 10,100 paths;
/// this keeps 3.2 KB per path, from the first report on (4.6 KB in single precision: 140 MB more at 100,000 paths).
/// </summary>
public sealed class PathHistory
{
    /// <summary>The newest reports, each kept (a minute at one report a second).</summary>
    public const int Recent = 60;

    /// <summary>Entries kept before the newest reports, at most one per <see cref="OlderStep"/> (nine minutes).</summary>
    public const int Older = 54;

    public static readonly TimeSpan OlderStep = TimeSpan.FromSeconds(10);

    /// <summary>
    /// One entry in 28 bytes: the RTT figures, loss and burstiness in half precision (three significant digits, what a
    /// chart shows, down to the 0.01 % loss the smoother resolves), the rates in single precision (half tops out at 65,504 Mbit/s).
    /// </summary>
    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    private readonly record struct Entry(long UtcTicks, float Bandwidth, float Capacity, Half Rtt, Half Jitter, Half Loss, Half MinRtt, Half Burstiness, Half RttStd)
    {
        public static Entry Of(in SmoothedConditions c) => new(c.At.UtcTicks, (float)c.BandwidthMbps, (float)c.CapacityMbps, (Half)c.RttMs, (Half)c.JitterMs,
            (Half)c.Loss, (Half)c.MinRttMs, (Half)c.LossBurstiness, (Half)c.RttStdMs);

        public PathConditions ToConditions() =>
            new((double)Rtt, (double)Jitter, (double)Loss, Bandwidth, new DateTimeOffset(UtcTicks, TimeSpan.Zero), (double)MinRtt, Capacity, (double)Burstiness, (double)RttStd);
    }

    private readonly Ring _recent = new(Recent);
    private readonly Ring _older = new(Older);

    /// <summary>How many entries it holds.</summary>
    public int Count => _older.Count + _recent.Count;

    public void Add(PathConditions conditions) => Add(SmoothedConditions.Of(conditions));

    public void Add(in SmoothedConditions conditions)
    {
        if (_recent.Count == Recent)
        {
            var leaving = _recent.RemoveOldest();
            // An entry leaving the newest reports is kept only a step after the last one kept before them.
            if (_older.Count == 0 || leaving.UtcTicks - _older.Newest.UtcTicks >= OlderStep.Ticks)
            {
                if (_older.Count == Older)
                {
                    _older.RemoveOldest();
                }
                _older.Add(leaving);
            }
        }
        _recent.Add(Entry.Of(conditions));
    }

    /// <summary>Oldest first.</summary>
    public ImmutableArray<PathConditions> ToImmutableArray()
    {
        var all = ImmutableArray.CreateBuilder<PathConditions>(Count);
        _older.AppendTo(all);
        _recent.AppendTo(all);
        return all.MoveToImmutable();
    }

    private sealed class Ring(int capacity)
    {
        private readonly Entry[] _entries = new Entry[capacity];
        private int _start;

        public int Count { get; private set; }

        public Entry Newest => _entries[(_start + Count - 1) % _entries.Length];

        public void Add(Entry entry)
        {
            _entries[(_start + Count) % _entries.Length] = entry;
            Count++;
        }

        public Entry RemoveOldest()
        {
            var oldest = _entries[_start];
            _start = (_start + 1) % _entries.Length;
            Count--;
            return oldest;
        }

        public void AppendTo(ImmutableArray<PathConditions>.Builder to)
        {
            for (var i = 0; i < Count; i++)
            {
                to.Add(_entries[(_start + i) % _entries.Length].ToConditions());
            }
        }
    }
}
