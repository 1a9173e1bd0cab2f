using System.Collections.Immutable;

namespace Fabric.Silo.Selection;

/// <summary>
/// About ten minutes of a path's smoothed conditions (what the dashboard charts) in fixed memory: every one of the last
/// <see cref="Recent"/> reports, and before them one entry per <see cref="OlderStep"/>, <see cref="Older"/> of them.
/// Entries are kept as single-precision numbers (40 bytes, not a 96-byte record and its reference): keeping every report
/// of ten minutes as records grew the control-plane benchmark's heap from 433 to 1,046 MiB over ten minutes at 10,100
/// paths; this keeps 4.6 KB per path, from the first report on.
/// </summary>
public sealed class PathHistory
{
    /// <summary>The newest reports, each kept (a minute at one report a second).</summary>
    public const int Recent = 60;

    /// <summary>Entries kept before the newest reports, at most one per <see cref="OlderStep"/> (nine minutes).</summary>
    public const int Older = 54;

    public static readonly TimeSpan OlderStep = TimeSpan.FromSeconds(10);

    private readonly record struct Entry(float Rtt, float Jitter, float Loss, float Bandwidth, float MinRtt, float Capacity, float Burstiness, float RttStd, long UtcTicks)
    {
        public static Entry Of(in SmoothedConditions c) => new((float)c.RttMs, (float)c.JitterMs, (float)c.Loss, (float)c.BandwidthMbps, (float)c.MinRttMs,
            (float)c.CapacityMbps, (float)c.LossBurstiness, (float)c.RttStdMs, c.At.UtcTicks);

        public PathConditions ToConditions() =>
            new(Rtt, Jitter, Loss, Bandwidth, new DateTimeOffset(UtcTicks, TimeSpan.Zero), MinRtt, Capacity, Burstiness, RttStd);
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
