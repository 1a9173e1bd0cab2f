using Fabric.Silo.Learning;

namespace Fabric.Silo.Tests.Learning;

/// <summary>
/// A seeded outcome log with a known rule: for latency VMs, std-ipv4's utility falls with loss (0.8 − 15 × loss) while
/// fec's stays at 0.6 (it recovers the loss and pays for its overhead), so fec wins above about 1.3 % loss. Noise ±0.02.
/// </summary>
internal static class OutcomeGenerator
{
    public static readonly DateTimeOffset T0 = new(2026, 12, 1, 0, 0, 0, TimeSpan.Zero);

    public static double Rule(string stack, double loss) => stack == "fec" ? 0.6 : Math.Max(0, 0.8 - (15 * loss));

    public static List<LoggedOutcome> Generate(int count, int seed, double maxLoss = 0.05)
    {
        var random = new Random(seed);
        var outcomes = new List<LoggedOutcome>(count);
        for (var i = 0; i < count; i++)
        {
            var stack = i % 2 == 0 ? "std-ipv4" : "fec";
            var loss = random.NextDouble() * maxLoss;
            var rtt = 10 + (random.NextDouble() * 90);
            var features = new OutcomeFeatures(rtt, rtt * 0.9, 1, loss, 0.5, 100, 2);
            var utility = Math.Clamp(Rule(stack, loss) + ((random.NextDouble() - 0.5) * 0.04), 0, 1);
            outcomes.Add(new LoggedOutcome(T0.AddSeconds(i), $"vm{i % 7}", "host-b", "latency", stack, "1.0.0", 0.95, false, features, 10, 30, 0, 0.1, utility));
        }
        return outcomes;
    }

    public static PathConditions Conditions(double loss, double rtt = 50) => new(rtt, 1, loss, 50, T0, rtt * 0.9, 100, 0.5, 2);
}
