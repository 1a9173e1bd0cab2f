namespace Fabric.Silo.Selection;

/// <summary>A stack's predicted utility (0..1, higher is better), how uncertain it is, which scorer gave it and why.</summary>
public readonly record struct StackScore(double Score, string Why, double Uncertainty = ProfileScorer.Uncertainty, string Source = "prior")
{
    /// <summary>
    /// How uncertain a prior's score is when another candidate of the same decision is scored by a model (0: as
    /// <see cref="Uncertainty"/>). Beside predictions whose uncertainty was measured, the prior's own 0.01 is a claim no
    /// one checked: a guess that beat a measured prediction by a hair would win a switch.
    /// </summary>
    public double BesideModel { get; init; }
}

/// <summary>Scores a stack for a policy on a path's conditions: the profile prior, or the fleet's learned model.</summary>
public interface IStackScorer
{
    /// <summary>How well <paramref name="stack"/> would serve a VM of <paramref name="policy"/> on a path in <paramref name="conditions"/> (0..1), and why.</summary>
    /// <param name="stack">The candidate.</param>
    /// <param name="conditions">The path's smoothed conditions.</param>
    /// <param name="policy">The VM's policy (its workload matters).</param>
    /// <param name="vmId">The VM the choice is for (a learned scorer knows some VMs' own effects); null for any VM.</param>
    /// <param name="current">The stack the VM runs now, which <paramref name="conditions"/> were measured on; null when none.</param>
    StackScore Score(StackInfo stack, PathConditions conditions, Policy policy, string? vmId = null, string? current = null);
}

/// <summary>
/// The first scorer: from the stack's declared profile alone, before the fleet has data. It estimates what the VM's
/// traffic gets — residual loss (what the stack does not recover), tail delay (a round trip plus what the stack adds
/// plus jitter, plus a retransmission timeout once residual loss touches about 1 % of small requests; scored as the reward
/// scores a measured p99, see Utility.LatencyScore), goodput (Mathis et al.: MSS / (RTT · √p), capped by the
/// bandwidth left after the stack's overhead) — and weighs them by workload: latency weighs delay and residual loss,
/// bulk weighs goodput, general both; overhead is paid as the reward charges it (bulk in goodput, latency by the share of
/// the path its extra bytes take, see <see cref="LatencyVmMbps"/>).
/// </summary>
public sealed class ProfileScorer : IStackScorer
{
    private const double MssBytes = 1400;

    /// <summary>
    /// Loss up to this rate is not charged: a second of a busy path shows some (queues at a full bottleneck, a host's
    /// buffers under a burst) that TCP's own congestion control causes and copes with, and a lossy-link estimate
    /// (Mathis) applied to it would call a clean 700 Mbit/s path a 50 Mbit/s one. Measured here: 0.01–0.06 % on a clean
    /// emulated link at full speed. Random loss above it counts in full from the floor up.
    /// </summary>
    public const double NoiseFloor = 0.001;

    /// <summary>The capacity assumed for a path that has never carried enough traffic to show one.</summary>
    public const double UnknownCapacityMbps = 1000;

    /// <summary>The rate a latency VM is taken to send when its stack's overhead is charged (request/response traffic).</summary>
    public const double LatencyVmMbps = 1;

    /// <summary>How far a profile's estimate is taken to be from what the stack really gets (in utility), at least: where it
    /// takes loss as congestion on a path its traffic does not fill, up to as far as the reading as the link's own loss is
    /// from it.</summary>
    public const double Uncertainty = 0.01;

    public StackScore Score(StackInfo stack, PathConditions c, Policy policy, string? vmId = null, string? current = null)
    {
        // Loss that comes with queues (RTT 25 % or more above the path's minimum, fully at twice it) is congestion: the
        // VM's TCP causes it and backs off, and no stack recovers goodput from it. Only the rest counts as a lossy link.
        var baseRtt = c.MinRttMs > 0 ? Math.Min(c.MinRttMs, c.RttMs) : c.RttMs;
        var queueing = Math.Clamp((c.RttMs / Math.Max(baseRtt, 0.1) - 1.25) / 0.75, 0, 1);
        var (score, residual, delay, goodput, overhead) = Estimate(stack, c, policy, queueing);
        var congestion = "";
        var uncertainty = Uncertainty;
        if (queueing > 0)
        {
            // That reading is sure where the path's own traffic fills it (a queue it builds itself: delivered near the
            // capacity), and a guess where it does not: the same figures fit a link whose delay grew. In the seconds after a
            // link goes from 8 to 30 ms with 0.5 % loss, its minimum RTT is still the old one, the new RTT looks like a
            // queue and the loss like congestion; taken as sure, std-ipv4 scored 0.99 for a bulk VM there and won a switch
            // at once over what arq-bulk gave it (the learning benchmark, 2026-12-06; std-ipv4 got 9 Mbit/s where fec gave
            // 208). So the less the path's traffic fills it (below 90 % of the capacity, fully below half), the more the
            // estimate is as uncertain as the two readings are apart.
            var asLinkLoss = Estimate(stack, c, policy, 0).Score;
            var filled = c.CapacityMbps > 0 ? c.BandwidthMbps / c.CapacityMbps : 0;
            var guess = Math.Clamp((0.9 - filled) / 0.4, 0, 1);
            uncertainty = Math.Max(uncertainty, guess * Math.Abs(score - asLinkLoss));
            congestion = $"loss taken as congestion {queueing * 100:0} % (rtt {c.RttMs:0.#} ms over min {baseRtt:0.#}, the path {Math.Min(filled, 1) * 100:0} % full; as the link's own loss {asLinkLoss:0.###}), ";
        }
        return new(score, $"{congestion}residual loss {residual * 100:0.###} %, p99 delay {delay:0.#} ms, goodput {goodput:0.#} Mbit/s, overhead {overhead * 100:0.#} %", uncertainty);
    }

    /// <summary>The estimate with <paramref name="queueing"/> (0–1) of the path's loss taken as congestion.</summary>
    private static (double Score, double Residual, double Delay, double Goodput, double Overhead) Estimate(StackInfo stack, PathConditions c, Policy policy, double queueing)
    {
        var loss = Math.Clamp(c.Loss * (1 - queueing) - NoiseFloor, 0, 1);
        // A stack that tolerates loss up to its declared level recovers nearly all of it; beyond that the excess leaks.
        var residual = stack.ToleratesLoss >= loss ? loss * 0.02 : loss - stack.ToleratesLoss * 0.98;
        var overhead = stack.HeaderBytes / MssBytes + stack.Redundancy;
        // Latency is judged at the tail (p99) of a small request/response (about 3 packets): once more than 1 % of
        // requests meet a loss, the VM's TCP sits out a retransmission timeout (≥ 200 ms on Linux) at the p99. The
        // step is softened into a ramp from 0.5 % to 1.5 % of requests, so estimates near the edge move gradually.
        var rto = Math.Max(200, 3 * c.RttMs);
        var lossyRequests = 1 - Math.Pow(1 - residual, 3);
        // A request and its answer cross the path both ways: the delay the agent measures (and the model learns) is a round
        // trip, and a profile's added delay is one way (half the extra request/response time, builtin-stacks.json).
        var delay = c.RttMs + 2 * stack.AddedDelayMs + 2 * c.JitterMs + Math.Clamp((lossyRequests - 0.005) / 0.01, 0, 1) * rto;
        var latencyScore = Learning.Utility.LatencyScore(delay);
        // The path's capacity, not what it delivers now: an idle path delivers nothing and a busy one is capped by its
        // senders, neither says what a stack could get. Unknown capacity (never loaded) is taken as a fast link.
        var pathCapacity = c.CapacityMbps > 0 ? Math.Max(c.CapacityMbps, c.BandwidthMbps) : UnknownCapacityMbps;
        var capacity = pathCapacity * (1 - Math.Min(overhead, 0.9));
        var mathis = residual <= 1e-6 ? double.PositiveInfinity : MssBytes * 8 / 1e6 / (Math.Max(c.RttMs, 0.1) / 1000 * Math.Sqrt(residual)) * 1.22;
        var goodput = Math.Min(capacity, mathis);
        var bulkScore = goodput / pathCapacity;
        var score = policy.Workload switch
        {
            // As the reward charges it (Utility.Of): by the share of the path a request/response VM's extra bytes take,
            // which at its kilobytes a second is next to nothing; its tail delay decides.
            // The path counts as at least Utility.MinChargedCapacityMbps, as there: a path only this VM uses shows its own
            // rate as its capacity.
            "latency" => latencyScore * (1 - Math.Min(overhead * LatencyVmMbps / Math.Max(pathCapacity, Learning.Utility.MinChargedCapacityMbps), 1)),
            "bulk" => bulkScore,
            _ => 0.5 * latencyScore + 0.5 * bulkScore,
        };
        return (Math.Clamp(score, 0, 1), residual, delay, goodput, overhead);
    }
}
