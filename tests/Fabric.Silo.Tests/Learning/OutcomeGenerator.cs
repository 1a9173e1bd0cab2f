using Fabric.Silo.Learning;

namespace Fabric.Silo.Tests.Learning;

/// <summary>
/// A seeded outcome log with a known rule: for latency VMs, std-ipv4's utility falls with loss (0.8 − 15 × loss) while
/// fec's stays at 0.6 (it recovers the loss and pays for its overhead), so fec wins above about 1.3 % loss. Noise ±0.02.
/// Every outcome has conditions of its own, so one VM's are further apart than the model pairs outcomes across stacks
/// (<see cref="UtilityModel.PairingWindow"/>); <see cref="Phases"/> makes a log where they are not.
/// </summary>
internal static class OutcomeGenerator
{
    public static readonly DateTimeOffset T0 = new(2026, 12, 1, 0, 0, 0, TimeSpan.Zero);

    public static double Rule(string stack, double loss) => stack == "fec" ? 0.6 : Math.Max(0, 0.8 - (15 * loss));

    public static List<LoggedOutcome> Generate(int count, int seed, double maxLoss = 0.05, double noise = 0.04)
    {
        var random = new Random(seed);
        var outcomes = new List<LoggedOutcome>(count);
        for (var i = 0; i < count; i++)
        {
            var stack = i % 2 == 0 ? "std-ipv4" : "fec";
            var loss = random.NextDouble() * maxLoss;
            var rtt = 10 + (random.NextDouble() * 90);
            var features = new OutcomeFeatures(rtt, rtt * 0.9, 1, loss, 0.5, 100, 2);
            var utility = Math.Clamp(Rule(stack, loss) + ((random.NextDouble() - 0.5) * noise), 0, 1);
            outcomes.Add(new LoggedOutcome(T0.AddSeconds(i * 3), $"vm{i % 7}", "host-b", "latency", stack, "1.0.0", 0.95, false, features, 10, 30, 0, 0.1, utility) { RewardVersion = UtilityModel.SchemaVersion });
        }
        return outcomes;
    }

    /// <summary>
    /// A log whose conditions are partly the VM's own doing, as on a real path: in each phase (a loss rate of 0-5 %, held
    /// for 20 s) a latency VM runs std-ipv4 for 10 s, then fec for 10 s. On std-ipv4 its TCP backs off and the RTT stays
    /// at the path's floor (20 ms); on fec it fills the queue and the RTT doubles. Utilities follow <see cref="Rule"/>.
    /// Conditions measured on std-ipv4 are never seen on fec's own outcomes.
    /// </summary>
    public static List<LoggedOutcome> Phases(int phases, int seed)
    {
        var random = new Random(seed);
        var outcomes = new List<LoggedOutcome>();
        for (var p = 0; p < phases; p++)
        {
            var loss = random.NextDouble() * 0.05;
            for (var s = 0; s < 20; s++)
            {
                var stack = s < 10 ? "std-ipv4" : "fec";
                var rtt = stack == "fec" ? 40 + random.NextDouble() * 4 : 20 + random.NextDouble();
                var utility = Math.Clamp(Rule(stack, loss) + ((random.NextDouble() - 0.5) * 0.04), 0, 1);
                outcomes.Add(new LoggedOutcome(T0.AddSeconds((p * 40) + s), "vm1", "host-b", "latency", stack, "1.0.0", 1, false,
                    new OutcomeFeatures(rtt, 20, 1, loss, 0.5, 100, 2), 10, 30, 0, 0.1, utility) { RewardVersion = UtilityModel.SchemaVersion });
            }
        }
        return outcomes;
    }

    /// <summary>
    /// Two VMs of one host on one path at the same seconds, each on its own stack for a whole phase (20 s, a loss rate of
    /// 0-5 %), the stacks changing hands from phase to phase: neither VM ever changes stack within a pairing window, so
    /// only the other VM's outcomes say what the path showed on the other stack. Conditions measured on std-ipv4 show
    /// the RTT at its floor (20 ms), on fec doubled, as in <see cref="Phases"/>.
    /// </summary>
    public static List<LoggedOutcome> SideBySide(int phases, int seed, string workload, string? host)
    {
        var random = new Random(seed);
        var outcomes = new List<LoggedOutcome>();
        for (var p = 0; p < phases; p++)
        {
            var loss = random.NextDouble() * 0.05;
            for (var s = 0; s < 20; s++)
            {
                foreach (var (vm, stack) in new[] { ("vm-a", p % 2 == 0 ? "std-ipv4" : "fec"), ("vm-b", p % 2 == 0 ? "fec" : "std-ipv4") })
                {
                    var rtt = stack == "fec" ? 40 + random.NextDouble() * 4 : 20 + random.NextDouble();
                    var utility = Math.Clamp(Rule(stack, loss) + ((random.NextDouble() - 0.5) * 0.04), 0, 1);
                    // 60 s between phases: no VM's outcomes of one phase are within a pairing window of the next's.
                    outcomes.Add(new LoggedOutcome(T0.AddSeconds((p * 60) + s), vm, "host-b", workload, stack, "1.0.0", 1, false,
                        new OutcomeFeatures(rtt, 20, 1, loss, 0.5, 100, 2), 10, 30, 0, 0.1, utility) { RewardVersion = UtilityModel.SchemaVersion, Host = host });
                }
            }
        }
        return outcomes;
    }

    public static PathConditions Conditions(double loss, double rtt = 50) => new(rtt, 1, loss, 50, T0, rtt * 0.9, 100, 0.5, 2);
}
