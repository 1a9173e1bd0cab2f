using Fabric.Silo.Selection;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests.Selection;

/// <summary>What a VM got on its stack lately: only the stack's settled outcomes, on the link as it is now.</summary>
public class OutcomeWindowTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 3, 0, 0, 0, TimeSpan.Zero);

    [Fact]
    public void AnObservation_TakesOnlyTheStacksSettledOutcomes_OnTheLinkAsItIsNow()
    {
        var window = new OutcomeWindow();
        var lossy = Path(6, 0.03) with { MinRttMs = 6, CapacityMbps = 120 };
        var clean = lossy with { Loss = 0 };
        // 0–9 s: std-ipv4 on a clean link (0.9); switched to fec at 10 s; 10–12 s its first seconds (0.1, not settled);
        // 13–19 s fec on the clean link (0.8); 20–29 s the link is lossy (0.6).
        for (var t = 0; t < 30; t++)
        {
            var (stack, utility, path) = t < 10 ? ("std-ipv4", 0.9, clean) : t < 13 ? ("fec", 0.1, clean) : t < 20 ? ("fec", 0.8, clean) : ("fec", 0.6, lossy);
            window.Add(T0.AddSeconds(t), stack, utility, path);
        }
        var now = T0.AddSeconds(29);
        var onLossy = window.Of("fec", T0.AddSeconds(10), now, lossy);
        Assert.NotNull(onLossy);
        Assert.Equal((10, 0.6), (onLossy.Count, Math.Round(onLossy.Score, 6)));
        Assert.Equal(OutcomeWindow.LeastSpread, onLossy.Spread);
        // On the clean link's conditions: fec's settled seconds there only (its first three are the swap's).
        var onClean = window.Of("fec", T0.AddSeconds(10), now, clean);
        Assert.NotNull(onClean);
        Assert.Equal((7, 0.8), (onClean.Count, Math.Round(onClean.Score, 6)));
        // std-ipv4's outcomes are older than the window keeps.
        Assert.Null(window.Of("std-ipv4", T0, now, clean));
        // Fewer than three settled outcomes make no observation.
        Assert.Null(window.Of("fec", T0.AddSeconds(25), now, lossy));
        Assert.Null(new OutcomeWindow().Of("fec", T0, now, lossy));
    }

    [Fact]
    public void ASpreadOfNoisyOutcomes_CountsNeighbouringSecondsAsOne_AndGarbageIsRefused()
    {
        var window = new OutcomeWindow();
        var path = Path(20, 0);
        for (var t = 0; t < 16; t++)
        {
            window.Add(T0.AddSeconds(t), "std-ipv4", t % 2 == 0 ? 0.2 : 0.8, path);
        }
        window.Add(T0.AddSeconds(16), "std-ipv4", double.NaN, path);
        window.Add(T0.AddSeconds(16), "std-ipv4", 7, path);
        var seen = window.Of("std-ipv4", DateTimeOffset.MinValue.AddDays(1), T0.AddSeconds(16), path);
        Assert.NotNull(seen);
        // The NaN is dropped; 7 counts as 1 (a utility is 0–1).
        Assert.Equal(17, seen.Count);
        Assert.InRange(seen.Score, 0.52, 0.54);
        // Standard deviation about 0.32 over 17 outcomes taken as about 4 independent ones: about 0.15.
        Assert.InRange(seen.Spread, 0.14, 0.17);
    }
}
