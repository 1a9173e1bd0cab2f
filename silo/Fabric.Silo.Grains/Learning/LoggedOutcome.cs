namespace Fabric.Silo.Learning;

/// <summary>The path's conditions as the model sees them (what the selector sees when it scores).</summary>
public sealed record OutcomeFeatures(double RttMs, double MinRttMs, double JitterMs, double Loss, double LossBurstiness, double CapacityMbps, double RttStdMs)
{
    public static OutcomeFeatures Of(PathConditions c) => new(c.RttMs, c.MinRttMs, c.JitterMs, c.Loss, c.LossBurstiness, c.CapacityMbps, c.RttStdMs);

    /// <summary>The field-by-field mean of <paramref name="all"/> (at least one).</summary>
    public static OutcomeFeatures Mean(IReadOnlyList<OutcomeFeatures> all)
    {
        double rtt = 0, minRtt = 0, jitter = 0, loss = 0, burstiness = 0, capacity = 0, rttStd = 0;
        foreach (var f in all)
        {
            (rtt, minRtt, jitter, loss) = (rtt + f.RttMs, minRtt + f.MinRttMs, jitter + f.JitterMs, loss + f.Loss);
            (burstiness, capacity, rttStd) = (burstiness + f.LossBurstiness, capacity + f.CapacityMbps, rttStd + f.RttStdMs);
        }
        var n = all.Count;
        return new(rtt / n, minRtt / n, jitter / n, loss / n, burstiness / n, capacity / n, rttStd / n);
    }
}

/// <summary>
/// One line of the outcome log: the context (the VM's workload, the path's conditions), the action (stack id and
/// version), the probability with which the selector chose it (so other policies can be evaluated off-line), what the
/// VM's traffic got, and the reward (<see cref="Utility"/>) the model learns to predict.
/// </summary>
public sealed record LoggedOutcome(
    DateTimeOffset At,
    string VmId,
    string RemoteHost,
    string Workload,
    string Stack,
    string StackVersion,
    double Propensity,
    bool Exploration,
    OutcomeFeatures Features,
    double GoodputMbps,
    double DelayP99Ms,
    double ResidualLoss,
    double OverheadRatio,
    double Utility)
{
    /// <summary>
    /// The reward's definition the utility was computed under (<see cref="UtilityModel.SchemaVersion"/>; null: logged
    /// before versions were recorded). The learner trains and judges only on outcomes of the current one: two scales in
    /// one log would teach a model neither.
    /// </summary>
    public int? RewardVersion { get; init; }

    /// <summary>The host the VM ran on (null: logged before hosts were recorded); its latency outcomes are paired with those of
    /// the host's other latency VMs on the same path (<see cref="UtilityModel.SharedPairing"/>).</summary>
    public string? Host { get; init; }
}

/// <summary>
/// The reward, on the prior's scale (0..1, higher is better) so a learned score and a profile score compare. Latency
/// workloads: the tail delay the VM saw on a log scale (<see cref="LatencyScore"/>), charged for the share of the path's
/// capacity its extra bytes take; bulk: goodput as a share of the path's capacity; general: the mean of both. Every workload pays for
/// residual loss the stack left to the VM.
/// </summary>
/// <remarks>
/// The overhead charge is the extra bytes' share of the path, not of the VM's own goodput: a request/response VM moves a
/// few kilobytes a second, so fec's parity for each lone request (or arq's acknowledgment of each packet) doubles its
/// bytes while taking nothing anyone would miss. Charged against its goodput, such outcomes lost most of their utility
/// (in a learning benchmark run, fec's latency outcomes on clean paths: p99 14 ms, overhead 1.44 times the goodput,
/// utility 0.13 where the delay alone gives 0.41), and the model learned that no stack but std-ipv4 serves latency VMs.
/// The path's capacity estimate is what its agents' capacity trains measure (or, from an agent that sends none, the most
/// it delivered in the last minute: on a path only such a VM used, that VM's own rate), and the charge counts at least
/// <see cref="MinChargedCapacityMbps"/>. A bulk VM's extra bytes already show in its goodput (its utility is goodput
/// over capacity, or over its demand where that is known and less: a VM sending UDP at a set rate cannot use more).
/// <para>
/// The delay is the p99 over the agent's trailing window on the stack (<see cref="Outcome.TailP99Ms"/>), not one
/// second's, and is scored on a log scale, because a tenant (and the learning benchmark) judges the p99 over minutes: at
/// 1 % loss or more, std-ipv4's seconds were mostly fine with a retransmission timeout now and then (per-second p99
/// median 88 ms, mean 499 ms) and fec's evenly mediocre (median 177, mean 157); the mean over seconds of the old
/// 1/(1 + p99/10) favoured std-ipv4 (0.217 against 0.139) where the minutes' p99 favours fec, and that scale put
/// everything above 50 ms within 0.17 of nothing, inside the model's uncertainty. On a log scale a delay twice another
/// costs the same (0.081) at 5 ms as at 500, as a ratio of p99s (the benchmark's utility) does.
/// </para>
/// </remarks>
public static class Utility
{
    /// <summary>The least capacity overhead is charged against (see the remarks).</summary>
    public const double MinChargedCapacityMbps = 10;

    /// <summary>The delay at which a latency score reaches 0 (from 1 at <see cref="FloorDelayMs"/> or less).</summary>
    public const double WorstDelayMs = 5000;

    /// <summary>A delay this short or shorter scores 1: below it no request/response VM tells the difference.</summary>
    public const double FloorDelayMs = 1;

    /// <summary>
    /// A p99 delay's score: 1 at <see cref="FloorDelayMs"/> or less, falling by the same step for each doubling (0.081)
    /// to 0 at <see cref="WorstDelayMs"/> (10 ms 0.73, 100 ms 0.46, 1 s 0.19). A delay not known (NaN) scores 0.
    /// </summary>
    public static double LatencyScore(double p99Ms) => double.IsNaN(p99Ms) ? 0
        : Math.Clamp(1 - (Math.Log(Math.Max(p99Ms, FloorDelayMs) / FloorDelayMs) / Math.Log(WorstDelayMs / FloorDelayMs)), 0, 1);

    /// <summary>
    /// The most any stack can give <paramref name="workload"/> on a path in <paramref name="c"/>: a request's answer takes
    /// at least a round trip, so a latency VM's p99 is no shorter than the path's least RTT (as the path measured it; the
    /// current RTT where that is less or none is known), and its score no higher than that delay's. General: half of
    /// that and half of bulk's best, 1. Bulk: 1. A path with no RTT known: 1.
    /// </summary>
    public static double Ceiling(string workload, PathConditions c)
    {
        var floor = RoundTripFloorMs(c);
        if (workload == "bulk" || !(floor > 0))
        {
            return 1;
        }
        var latency = LatencyScore(floor);
        return workload == "latency" ? latency : (0.5 * latency) + 0.5;
    }

    /// <summary>The shortest round trip the path allows as its conditions say: its least RTT, or the current one where that is less or none is known.</summary>
    public static double RoundTripFloorMs(PathConditions c) => c.MinRttMs > 0 ? Math.Min(c.MinRttMs, c.RttMs) : c.RttMs;

    /// <summary>A VM's utility for one outcome, 0–1 (see the class remarks). <paramref name="demandMbps"/>: what the VM
    /// would send at most (its offered rate when it sends without TCP); infinite when not known.</summary>
    public static double Of(string workload, double goodputMbps, double delayP99Ms, double residualLoss, double overheadRatio, double capacityMbps,
        double demandMbps = double.PositiveInfinity)
    {
        // A capacity not known (NaN from a report that had none) is charged as the least.
        var path = Math.Max(Math.Max(double.IsFinite(capacityMbps) ? capacityMbps : 0, MinChargedCapacityMbps), goodputMbps);
        var overheadShare = Math.Clamp(Math.Max(overheadRatio, 0) * Math.Max(goodputMbps, 0) / path, 0, 1);
        var latency = LatencyScore(delayP99Ms) * (1 - overheadShare);
        var bulk = Math.Clamp(goodputMbps / Math.Max(Math.Max(Math.Min(capacityMbps, demandMbps), goodputMbps), 1e-3), 0, 1);
        var utility = workload switch
        {
            "latency" => latency,
            "bulk" => bulk,
            _ => (0.5 * latency) + (0.5 * bulk),
        };
        return Math.Clamp(utility * (1 - Math.Clamp(residualLoss * 10, 0, 1)), 0, 1);
    }
}

/// <summary>Conditions rebuilt from logged features (for scoring an old outcome with the prior).</summary>
public static class OutcomeFeaturesExtensions
{
    public static PathConditions ToConditions(this OutcomeFeatures f, DateTimeOffset at) =>
        new(f.RttMs, f.JitterMs, f.Loss, 0, at, f.MinRttMs, f.CapacityMbps, f.LossBurstiness, f.RttStdMs);
}
