using System.Globalization;
using Fabric.Silo.Learning;

namespace Fabric.Silo.Rollouts;

/// <summary>
/// The health gates a rollout's rings must pass, each a pure function of what the fleet measured.
/// <para>
/// <b>utility</b>: what VMs got on the new version against the previous one, from the outcome log since the rollout
/// started. Paths differ (a canary pair's paths may be the lossy ones), so outcomes are compared only within strata of
/// comparable context — the VM's workload, the path's loss (below 0.5 %, 2 %, 5 %, above) and RTT (below 10, 50, 150 ms,
/// above) — and the strata's differences of mean utility are pooled with inverse-variance weights (a stratified Welch
/// comparison). With D the pooled difference (new − previous) and SE its standard error, the gate fails when the new
/// version is worse by more than the margin at the chosen confidence, (D + margin) / SE &lt; −z, passes when it is not
/// worse by more than the margin at that confidence, (D + margin) / SE &gt; z, and is pending otherwise or with fewer
/// than the minimum outcomes on either version in comparable strata. A one-sided non-inferiority test: a new version
/// must show it is no worse, not merely fail to show it is.
/// </para>
/// <para><b>quarantine</b>: fails when a host of a ring reached quarantined the new version (it threw, hung or returned
/// garbage on its packets), with the host's reason.</para>
/// </summary>
public static class RolloutGates
{
    /// <summary>The utility gate (see the class remarks) over outcomes of <paramref name="r"/>'s stack.</summary>
    public static GateResult Utility(Rollout r, IEnumerable<LoggedOutcome> outcomes, RolloutOptions options)
    {
        var strata = new Dictionary<string, (Moments To, Moments From)>(StringComparer.Ordinal);
        foreach (var o in outcomes)
        {
            if (o.Stack != r.StackId || o.At < r.Started || !double.IsFinite(o.Utility) || (o.StackVersion != r.To && o.StackVersion != r.From))
            {
                continue;
            }
            var key = $"{o.Workload}|{Bucket(o.Features.Loss, 0.005, 0.02, 0.05)}|{Bucket(o.Features.RttMs, 10, 50, 150)}";
            var (to, from) = strata.GetValueOrDefault(key);
            strata[key] = o.StackVersion == r.To ? (to.Add(o.Utility), from) : (to, from.Add(o.Utility));
        }
        var comparable = strata.Values.Where(s => s.To.N >= 2 && s.From.N >= 2).ToList();
        var (nTo, nFrom) = (comparable.Sum(s => s.To.N), comparable.Sum(s => s.From.N));
        var seen = $"{r.To}: {strata.Values.Sum(s => s.To.N)} outcomes, {r.From}: {strata.Values.Sum(s => s.From.N)}";
        if (nTo < options.MinSamples || nFrom < options.MinSamples)
        {
            return new GateResult("utility", GateVerdict.Pending,
                F($"{seen}; {nTo} and {nFrom} in {comparable.Count} comparable strata, {options.MinSamples} needed on each"));
        }
        double weights = 0, weighted = 0;
        foreach (var (to, from) in comparable)
        {
            // A floor on the variance: a stratum whose outcomes are all equal would otherwise weigh infinitely.
            var variance = Math.Max(to.Variance, 1e-4) / to.N + Math.Max(from.Variance, 1e-4) / from.N;
            weights += 1 / variance;
            weighted += (to.Mean - from.Mean) / variance;
        }
        var difference = weighted / weights;
        var error = Math.Sqrt(1 / weights);
        var z = (difference + options.Margin) / error;
        var critical = NormalQuantile(options.Confidence);
        var meanTo = comparable.Sum(s => s.To.Sum) / nTo;
        var meanFrom = comparable.Sum(s => s.From.Sum) / nFrom;
        var evidence = F($"utility {meanTo:0.000} on {r.To} (n {nTo}) vs {meanFrom:0.000} on {r.From} (n {nFrom}) in {comparable.Count} comparable strata; ")
            + F($"difference {difference:+0.000;-0.000} ± {error:0.000}, z {z:0.0} against ±{critical:0.00} for a margin of {options.Margin:0.000}");
        return z < -critical ? new GateResult("utility", GateVerdict.Failed, evidence + ": worse beyond the margin")
            : z > critical ? new GateResult("utility", GateVerdict.Passed, evidence + ": no worse")
            : new GateResult("utility", GateVerdict.Pending, evidence + ": not yet decided");
    }

    /// <summary>The quarantine gate: <paramref name="reached"/> are the hosts of the rings reached, with what each reported.</summary>
    public static GateResult Quarantine(Rollout r, IEnumerable<HostInfo> reached)
    {
        var hosts = reached.ToList();
        var quarantined = hosts.SelectMany(h => (h.StackVersions.IsDefault ? [] : h.StackVersions)
            .Where(u => u.Id == r.StackId && u.Version == r.To && u.Quarantined is not null).Select(u => $"{h.HostId} ({u.Quarantined})")).ToList();
        var running = hosts.Count(h => !h.StackVersions.IsDefault && h.StackVersions.Any(u => u.Id == r.StackId && u.Version == r.To && u.Quarantined is null));
        return quarantined.Count > 0
            ? new GateResult("quarantine", GateVerdict.Failed, $"{r.StackId} {r.To} quarantined on {string.Join(", ", quarantined)}")
            : new GateResult("quarantine", GateVerdict.Passed, $"no quarantine of {r.To}; {running} of {hosts.Count} hosts reached run it");
    }

    /// <summary>The standard normal's quantile (Acklam's rational approximation, relative error below 1.2e-9).</summary>
    public static double NormalQuantile(double p)
    {
        if (p is <= 0 or >= 1)
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "a probability strictly between 0 and 1");
        }
        double[] a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00];
        double[] b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01];
        double[] c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00];
        double[] d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00];
        const double low = 0.02425;
        if (p < low || p > 1 - low)
        {
            var q = Math.Sqrt(-2 * Math.Log(p < low ? p : 1 - p));
            var x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
            return p < low ? x : -x;
        }
        var s = p - 0.5;
        var t = s * s;
        return (((((a[0] * t + a[1]) * t + a[2]) * t + a[3]) * t + a[4]) * t + a[5]) * s / (((((b[0] * t + b[1]) * t + b[2]) * t + b[3]) * t + b[4]) * t + 1);
    }

    private static int Bucket(double value, double first, double second, double third) => value < first ? 0 : value < second ? 1 : value < third ? 2 : 3;

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    /// <summary>Count, sum and sum of squares (enough for a mean and a variance).</summary>
    private readonly record struct Moments(int N, double Sum, double Squares)
    {
        public Moments Add(double x) => new(N + 1, Sum + x, Squares + x * x);

        public double Mean => Sum / N;

        public double Variance => N < 2 ? 0 : Math.Max(0, (Squares - Sum * Sum / N) / (N - 1));
    }
}
