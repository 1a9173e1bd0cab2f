using Fabric.LinkEmulator;
using Fabric.Testing;

namespace Fabric.LinkEmulator.Tests;

/// <summary>The emulation state machine under a simulated clock: exact, seeded, no sleeping.</summary>
public class LinkDirectionTests
{
    private const long Ms = 1_000_000;
    private static readonly byte[] FullFrame = new byte[1514];
    private static readonly byte[] SmallFrame = new byte[64];

    [Fact]
    public void Delay_DeliversEachFrameExactlyThatLaterInOrder()
    {
        var link = new LinkDirection(LinkProfile.Clean with { Delay = TimeSpan.FromMilliseconds(30) }, 0, seed: 1);
        for (var t = 0L; t < 10; t++)
        {
            Assert.Equal(OfferResult.Queued, link.Offer(Marked(t), t * Ms));
        }
        Assert.False(link.TryTakeDue(30 * Ms - 1, out _));
        for (var t = 0L; t < 10; t++)
        {
            Assert.True(link.TryTakeDue((30 + t) * Ms, out var frame));
            Assert.Equal(t, frame.Span[0]);
            Assert.Equal((30 + t) * Ms, frame.DeliverAt);
            LinkDirection.Release(frame);
        }
    }

    [Fact]
    public void Jitter_StaysInBoundsAndKeepsOrderUnlessReorderIsOn()
    {
        var profile = LinkProfile.Clean with { Delay = TimeSpan.FromMilliseconds(20), Jitter = TimeSpan.FromMilliseconds(5) };
        var (delays, reordered) = Run(profile);
        Assert.All(delays, d => Assert.InRange(d, 15 * Ms, 25 * Ms + 10 * Ms));
        Assert.Equal(0, reordered);
        var (jittered, reorderedWithReorder) = Run(profile with { AllowReorder = true });
        Assert.All(jittered, d => Assert.InRange(d, 15 * Ms, 25 * Ms));
        Assert.True(reorderedWithReorder > 100, $"reorder=on should reorder frames 0.1 ms apart; saw {reorderedWithReorder}");
        var mean = jittered.Average() / Ms;
        Assert.InRange(mean, 19.8, 20.2);

        static (List<long> Delays, int Reordered) Run(LinkProfile profile)
        {
            var link = new LinkDirection(profile, 0, seed: 7);
            var delays = new List<long>();
            var last = -1L;
            var reordered = 0;
            for (var i = 0; i < 5000; i++)
            {
                link.Offer(Marked(i), i * Ms / 10);
            }
            for (var now = 0L; now < 600 * Ms; now += Ms / 10)
            {
                while (link.TryTakeDue(now, out var frame))
                {
                    var id = BitConverter.ToInt64(frame.Span);
                    reordered += id < last ? 1 : 0;
                    last = Math.Max(last, id);
                    delays.Add(frame.DeliverAt - frame.ArrivedAt);
                    LinkDirection.Release(frame);
                }
            }
            Assert.Equal(5000, delays.Count);
            return (delays, reordered);
        }
    }

    [Theory]
    [InlineData(0.01)]
    [InlineData(0.05)]
    [InlineData(0.30)]
    public void RandomLoss_MatchesTheConfiguredRate(double rate)
    {
        var link = new LinkDirection(LinkProfile.Clean with { LossRate = rate }, 0, seed: 3);
        const int N = 100_000;
        var lost = Enumerable.Range(0, N).Count(i => link.Offer(SmallFrame, i * Ms) == OfferResult.Lost);
        Assert.InRange(lost / (double)N, rate - 0.005, rate + 0.005);
    }

    [Fact]
    public void GilbertElliott_GivesItsStationaryRateInBursts()
    {
        var ge = new GilbertElliott(P: 0.01, R: 0.25);
        var link = new LinkDirection(LinkProfile.Clean with { BurstLoss = ge }, 0, seed: 11);
        const int N = 200_000;
        var bursts = new List<int>();
        var run = 0;
        var lost = 0;
        for (var i = 0; i < N; i++)
        {
            if (link.Offer(SmallFrame, i * Ms) == OfferResult.Lost)
            {
                lost++;
                run++;
            }
            else if (run > 0)
            {
                bursts.Add(run);
                run = 0;
            }
        }
        Assert.InRange(lost / (double)N, ge.StationaryLossRate * 0.9, ge.StationaryLossRate * 1.1);
        // With loss 1 in Bad and 0 in Good, bursts are the Bad sojourns: geometric with mean 1/R = 4.
        Assert.InRange(bursts.Average(), 3.6, 4.4);
        var random = new LinkDirection(LinkProfile.Clean with { LossRate = ge.StationaryLossRate }, 0, seed: 11);
        Assert.True(bursts.Average() > 3 * MeanBurst(random, N), "burst loss must be burstier than random loss at the same rate");
    }

    [Fact]
    public void Rate_SpacesDeparturesBySerializationTime_AndTheQueueDropsTheTail()
    {
        var link = new LinkDirection(LinkProfile.Clean with { RateBitsPerSecond = 10_000_000, QueuePackets = 50 }, 0, seed: 1);
        var results = Enumerable.Range(0, 100).Select(i => link.Offer(FullFrame, 0)).ToList();
        Assert.Equal(50, results.Count(r => r == OfferResult.Queued));
        Assert.Equal(50, results.Count(r => r == OfferResult.QueueFull));
        var times = new List<long>();
        for (var now = 0L; now < 200 * Ms; now += Ms / 100)
        {
            while (link.TryTakeDue(now, out var frame))
            {
                times.Add(frame.DeliverAt);
                LinkDirection.Release(frame);
            }
        }
        // 1514 bytes at 10 Mbit/s = 1.2112 ms each.
        Assert.Equal(50, times.Count);
        Assert.Equal(1_211_200, times[0]);
        Assert.Equal(50 * 1_211_200, times[^1]);
    }

    [Fact]
    public void PantheonTrace_DeliversItsAverageRate()
    {
        var trace = MahimahiTrace.Load(TestData.PathOf("pantheon", "2017-01-03T21-30-Nepal-to-AWS-India-10-runs_13.38mbps.trace"));
        Assert.InRange(trace.AverageBitsPerSecond / 1e6, 13.37, 13.39);
        var delivered = Saturate(trace, seconds: 10);
        Assert.InRange(delivered * 1500 * 8 / 10.0 / 1e6, 13.38 * 0.98, 13.38 * 1.02);
    }

    [Fact]
    public void MahimahiTrace_WithLongGapsAndLateStart_RepeatsAtItsPeriod()
    {
        var trace = MahimahiTrace.Load(TestData.PathOf("mahimahi", "Verizon-LTE-short.up"));
        Assert.Equal(140_000, trace.PeriodMs);
        Assert.Equal(69_367, trace.Count);
        // Over exactly one period a saturated link delivers one full frame per opportunity.
        Assert.Equal(trace.Count, Saturate(trace, seconds: 140));
        Assert.Equal(7 * Ms, trace.OpportunityNanoseconds(0));
        Assert.Equal((140_000 + 7) * Ms, trace.OpportunityNanoseconds(trace.Count));
    }

    [Fact]
    public void SmallFrames_ShareATraceOpportunity()
    {
        var trace = MahimahiTrace.Parse("one-per-10ms", Enumerable.Range(1, 100).Select(i => (i * 10).ToString(System.Globalization.CultureInfo.InvariantCulture)));
        var link = new LinkDirection(LinkProfile.Clean with { Trace = trace, QueuePackets = 10_000 }, 0, seed: 1);
        for (var i = 0; i < 100; i++)
        {
            link.Offer(new byte[100], 0);
        }
        var count = 0;
        while (link.TryTakeDue(10 * Ms, out var frame))
        {
            count++;
            LinkDirection.Release(frame);
        }
        Assert.Equal(LinkDirection.TraceFrameBytes / 100, count);
    }

    /// <summary>
    /// As in mm-link, a trace's opportunities carry bytes, not frames: a small frame queued between full ones costs its
    /// bytes, not an opportunity of its own, and a frame longer than an opportunity leaves with its last byte, in the next
    /// one.
    /// </summary>
    [Fact]
    public void TraceOpportunities_CarryBytes_AFrameSpansThemAndASmallOneCostsItsBytes()
    {
        var trace = MahimahiTrace.Parse("one-per-10ms", Enumerable.Range(1, 100).Select(i => (i * 10).ToString(System.Globalization.CultureInfo.InvariantCulture)));
        var link = new LinkDirection(LinkProfile.Clean with { Trace = trace, QueuePackets = 10_000 }, 0, seed: 1);
        var full = LinkDirection.TraceFrameBytes;
        link.Offer(new byte[full - 100], 0);
        link.Offer(new byte[200], 0);
        link.Offer(new byte[full - 100], 0);
        link.Offer(new byte[full + 500], 0);
        var departures = new List<(int Length, long At)>();
        for (var now = 0L; now <= 100 * Ms; now += Ms)
        {
            while (link.TryTakeDue(now, out var frame))
            {
                departures.Add((frame.Length, now));
                LinkDirection.Release(frame);
            }
        }
        // 10 ms: the first (100 bytes of that opportunity left); 20 ms: the small one (those 100 bytes and 100 of the
        // next), and the second one in what 20 ms has left; the long one needs all of 30 ms and part of 40 ms. A link that
        // gave each frame an opportunity of its own would send the second at 30 ms.
        Assert.Equal([(full - 100, 10 * Ms), (200, 20 * Ms), (full - 100, 20 * Ms), (full + 500, 40 * Ms)], departures);
    }

    [Fact]
    public void ProfileChange_AppliesToTheNextFrame()
    {
        var link = new LinkDirection(LinkProfile.Clean, 0, seed: 1);
        Assert.Equal(OfferResult.Queued, link.Offer(SmallFrame, 0));
        link.SetProfile(LinkProfile.Clean with { LossRate = 1.0 }, Ms);
        Assert.Equal(OfferResult.Lost, link.Offer(SmallFrame, Ms));
        link.SetProfile(LinkProfile.Clean with { Delay = TimeSpan.FromMilliseconds(5) }, 2 * Ms);
        Assert.Equal(OfferResult.Queued, link.Offer(SmallFrame, 2 * Ms));
        Assert.True(link.TryTakeDue(2 * Ms, out var first));
        LinkDirection.Release(first);
        Assert.False(link.TryTakeDue(7 * Ms - 1, out _));
        Assert.True(link.TryTakeDue(7 * Ms, out var second));
        LinkDirection.Release(second);
        Assert.Equal(new LinkStats(3, 1, 0, 2, 128, 0, 0), link.Stats);
    }

    [Fact]
    public void SameSeed_SameOutcome()
    {
        var profile = LinkProfile.Clean with { LossRate = 0.1, Jitter = TimeSpan.FromMilliseconds(3), Delay = TimeSpan.FromMilliseconds(5), AllowReorder = true };
        Assert.Equal(Trace(profile, 42), Trace(profile, 42));
        Assert.NotEqual(Trace(profile, 42), Trace(profile, 43));

        static List<long> Trace(LinkProfile profile, int seed)
        {
            var link = new LinkDirection(profile, 0, seed);
            var log = new List<long>();
            for (var i = 0; i < 1000; i++)
            {
                log.Add((long)link.Offer(Marked(i), i * Ms));
                while (link.TryTakeDue(i * Ms, out var frame))
                {
                    log.Add(frame.DeliverAt);
                    LinkDirection.Release(frame);
                }
            }
            return log;
        }
    }

    private static int Saturate(MahimahiTrace trace, int seconds)
    {
        var link = new LinkDirection(LinkProfile.Clean with { Trace = trace, QueuePackets = 100 }, 0, seed: 1);
        var delivered = 0;
        for (var now = 0L; now <= seconds * 1000 * Ms; now += Ms)
        {
            while (link.Stats.Queued < 50)
            {
                link.Offer(FullFrame, now);
            }
            while (link.TryTakeDue(now, out var frame))
            {
                delivered++;
                LinkDirection.Release(frame);
            }
        }
        return delivered;
    }

    private static double MeanBurst(LinkDirection link, int n)
    {
        var bursts = new List<int>();
        var run = 0;
        for (var i = 0; i < n; i++)
        {
            if (link.Offer(SmallFrame, i * Ms) == OfferResult.Lost)
            {
                run++;
            }
            else if (run > 0)
            {
                bursts.Add(run);
                run = 0;
            }
        }
        return bursts.Average();
    }

    private static byte[] Marked(long id) => BitConverter.GetBytes(id).Concat(new byte[56]).ToArray();
}
