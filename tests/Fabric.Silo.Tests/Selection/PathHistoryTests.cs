using Fabric.Silo.Selection;

namespace Fabric.Silo.Tests.Selection;

/// <summary>A path's history in fixed memory: every recent report, older ones a step apart.</summary>
public class PathHistoryTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 1, 0, 0, 0, TimeSpan.Zero);

    private static PathConditions At(TimeSpan t, double rtt) =>
        new(rtt, rtt / 10, rtt / 1000, 100 + rtt, T0 + t, rtt / 2, 200 + rtt, 1.5, rtt / 4);

    [Fact]
    public void TwoHoursAtOneReportASecond_KeepTheLastMinuteWhole_AndNineMinutesBeforeItTenSecondsApart()
    {
        var history = new PathHistory();
        for (var s = 0; s < 7200; s++)
        {
            history.Add(At(TimeSpan.FromSeconds(s), s));
            Assert.True(history.Count <= PathHistory.Recent + PathHistory.Older);
        }
        var kept = history.ToImmutableArray();
        Assert.Equal(PathHistory.Recent + PathHistory.Older, kept.Length);
        var gaps = kept.Zip(kept.Skip(1), (a, b) => (b.At - a.At).TotalSeconds).ToArray();
        Assert.All(gaps[^(PathHistory.Recent - 1)..], g => Assert.Equal(1, g));
        Assert.All(gaps[..(PathHistory.Older - 1)], g => Assert.Equal(10, g));
        Assert.Equal(T0.AddSeconds(7199), kept[^1].At);
        // About ten minutes back, and nothing from before them.
        Assert.InRange((kept[^1].At - kept[0].At).TotalMinutes, 9.5, 10);
        // What is kept is what was added: the rates to single precision, the rest to half (three significant digits).
        var (last, added) = (kept[^1], At(TimeSpan.FromSeconds(7199), 7199));
        foreach (var (got, want) in new[] { (last.BandwidthMbps, added.BandwidthMbps), (last.CapacityMbps, added.CapacityMbps) })
        {
            Assert.Equal(want, got, want * 1e-6);
        }
        foreach (var (got, want) in new[] { (last.RttMs, added.RttMs), (last.JitterMs, added.JitterMs), (last.Loss, added.Loss), (last.MinRttMs, added.MinRttMs),
            (last.LossBurstiness, added.LossBurstiness), (last.RttStdMs, added.RttStdMs) })
        {
            Assert.Equal(want, got, want * 1e-3);
        }
    }

    [Fact]
    public void ReportsFasterThanOneASecond_StillThinOutBeforeTheLastOnes()
    {
        var history = new PathHistory();
        for (var i = 0; i < 100; i++)
        {
            history.Add(At(TimeSpan.FromMilliseconds(100 * i), i));
        }
        var kept = history.ToImmutableArray();
        // 100 reports in 10 s: the last 60 whole, and of the 40 before them only the first (the next would be 10 s later).
        Assert.Equal(PathHistory.Recent + 1, kept.Length);
        Assert.Equal(T0, kept[0].At);
        Assert.Equal(T0.AddSeconds(4), kept[1].At);
    }

    /// <summary>The figures a path can have keep three significant digits: a loss of one in ten thousand (the least the smoother resolves), a 100 Gbit/s link, a cellular RTT of 20 s.</summary>
    [Fact]
    public void ExtremeButRealFigures_KeepTheirDigits()
    {
        var history = new PathHistory();
        var added = new PathConditions(20_000, 3_000, PathSmoother.LossResolution, 100_000, T0, 0.02, 100_000, 7.5, 5_000);
        history.Add(added);
        var kept = history.ToImmutableArray()[0];
        foreach (var (got, want) in new[] { (kept.RttMs, added.RttMs), (kept.JitterMs, added.JitterMs), (kept.Loss, added.Loss), (kept.BandwidthMbps, added.BandwidthMbps),
            (kept.MinRttMs, added.MinRttMs), (kept.CapacityMbps, added.CapacityMbps), (kept.LossBurstiness, added.LossBurstiness), (kept.RttStdMs, added.RttStdMs) })
        {
            Assert.Equal(want, got, want * 1e-3);
        }
    }
}
