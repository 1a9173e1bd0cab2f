using System.Globalization;
using Fabric.Silo.Learning;

namespace Fabric.Silo.Rollouts;

/// <summary>
/// The health gates a rollout's rings must pass, each a pure function of what the fleet measured.
/// <para>
/// <b>utility</b>: what VMs got on the new version against the previous one, from the outcome log. Only the new
/// version's outcomes on a host since the rollout reached it and the previous version's on a host before then, from one
/// bake (at most 10 minutes) before the rollout started on, count (an agent cannot vote for a version it was not released; a fleet whose every
/// host is in the canary still has the previous version's recent outcomes to compare with). The unit is a VM path: its outcomes in one context are
/// averaged into one value (outcomes of consecutive seconds are not independent), and each host gives at most
/// <see cref="UnitsPerHost"/> units per version and context (a host with many VMs, or one that makes VMs up, weighs no
/// more than that). Paths differ (a canary pair's paths may be the lossy ones), so units are compared only within strata
/// of comparable context — the VM's workload, the path's loss (below 0.5 %, 2 %, 5 %, above) and RTT (below 10, 50, 150
/// ms, above) — and the strata's differences of mean utility are pooled with weights of their size (n₁n₂/(n₁+n₂), not
/// inverse variance, which let a stratum of identical values drown the others). With D the pooled difference (new −
/// previous) and SE its standard error, the gate passes when the new version is not worse by more than the margin at the
/// chosen confidence, (D + margin) / SE &gt; t(confidence) — a one-sided non-inferiority test: a new version must show
/// it is no worse, not merely fail to show it is — and fails when it is worse beyond the margin at 99 %,
/// (D + margin) / SE &lt; −t(0.99), t being Student's with min(n₁, n₂) − 1 degrees of freedom (Welch's lower bound):
/// the judgement is repeated every few seconds, and a failure is for good. Otherwise, or with fewer than the minimum
/// units on either version in comparable strata, it is pending.
/// </para>
/// <para><b>drops</b>: on each reached host that carried <see cref="RolloutOptions.MinPackets"/> packets on both
/// versions, the share the new version's instances dropped (for any reason but <see cref="NotHarmful"/>) against the
/// share the previous version's dropped on the same host, as its registrations count them (since the agent started;
/// open slots as their instances say, closed ones as they last said). With p₁ and p₀ those shares and SE the standard
/// error of their difference, a host finds the new version worse when (p₁ − p₀ − margin) / SE &gt; z(0.99) and no worse
/// when (p₀ + margin − p₁) / SE &gt; z(confidence). The gate fails when two hosts (or every one, if fewer) find it
/// worse — one agent's word, or one plug-in's counters on one host, rolls nothing back — passes when every host
/// measured finds it no worse, passes with nothing to compare when no host carried both, and is pending otherwise.
/// Packets are not independent (drops come in bursts), so the margin carries most of the judgement; the evidence names
/// the reason whose share grew most.</para>
/// <para><b>quarantine</b>: fails when two hosts the rollout reached (or every one, if fewer) quarantined the new version
/// (it threw, hung or returned garbage on their packets), with their reasons: one agent's word alone rolls nothing back.</para>
/// </summary>
public static class RolloutGates
{
    /// <summary>The most units (VM paths) one host gives a version in one context.</summary>
    public const int UnitsPerHost = 16;

    /// <summary>The confidence at which the utility gate fails a version.</summary>
    public const double FailConfidence = 0.99;

    /// <summary>
    /// The utility gate (see the class remarks) over outcomes of <paramref name="r"/>'s stack; <paramref name="reachedAt"/>
    /// says when the rollout reached a host (null: not yet; <see cref="Rollout.ReachedAt"/>).
    /// </summary>
    public static GateResult Utility(Rollout r, IEnumerable<LoggedOutcome> outcomes, Func<string, DateTimeOffset?> reachedAt, RolloutOptions options)
    {
        // Per unit (host, VM, remote host, context): the mean of its outcomes.
        var units = new Dictionary<(string Host, string Vm, string Remote, string Stratum, bool New), Moments>();
        foreach (var o in outcomes)
        {
            if (o.Stack != r.StackId || o.At < r.Started - LookBack(r) || !double.IsFinite(o.Utility) || o.Host is not { } host)
            {
                continue;
            }
            var reached = reachedAt(host);
            if (!(o.StackVersion == r.To ? reached <= o.At : o.StackVersion == r.From && (reached is null || o.At < reached)))
            {
                continue;
            }
            var key = (host, o.VmId, o.RemoteHost, $"{o.Workload}|{Bucket(o.Features.Loss, 0.005, 0.02, 0.05)}|{Bucket(o.Features.RttMs, 10, 50, 150)}", o.StackVersion == r.To);
            units[key] = units.GetValueOrDefault(key).Add(o.Utility);
        }
        var strata = new Dictionary<string, (Moments To, Moments From)>(StringComparer.Ordinal);
        foreach (var group in units.GroupBy(u => (u.Key.Host, u.Key.Stratum, u.Key.New)))
        {
            foreach (var unit in group.OrderByDescending(u => u.Value.N).ThenBy(u => u.Key.Vm, StringComparer.Ordinal).Take(UnitsPerHost))
            {
                var (to, from) = strata.GetValueOrDefault(group.Key.Stratum);
                strata[group.Key.Stratum] = group.Key.New ? (to.Add(unit.Value.Mean), from) : (to, from.Add(unit.Value.Mean));
            }
        }
        var comparable = strata.Values.Where(s => s.To.N >= 2 && s.From.N >= 2).ToList();
        var (nTo, nFrom) = (comparable.Sum(s => s.To.N), comparable.Sum(s => s.From.N));
        var seen = $"{r.To}: {strata.Values.Sum(s => s.To.N)} VM paths, {r.From}: {strata.Values.Sum(s => s.From.N)}";
        if (nTo < options.MinSamples || nFrom < options.MinSamples)
        {
            return new GateResult("utility", GateVerdict.Pending,
                F($"{seen}; {nTo} and {nFrom} in {comparable.Count} comparable strata, {options.MinSamples} needed on each"));
        }
        double weights = 0, weighted = 0, variance = 0;
        foreach (var (to, from) in comparable)
        {
            var weight = (double)to.N * from.N / (to.N + from.N);
            weights += weight;
            weighted += weight * (to.Mean - from.Mean);
            // A floor on each side's variance: two units that happen to agree are not proof of no spread.
            variance += weight * weight * (Math.Max(to.Variance, 1e-4) / to.N + Math.Max(from.Variance, 1e-4) / from.N);
        }
        var difference = weighted / weights;
        var error = Math.Sqrt(variance) / weights;
        var z = (difference + options.Margin) / error;
        // Student's t rather than the normal: a small fleet judges on few VM paths. The variances are not pooled, so the
        // degrees of freedom are Welch's lower bound, the smaller side's units less one.
        var freedom = Math.Max(1, Math.Min(nTo, nFrom) - 1);
        var (pass, fail) = (StudentQuantile(options.Confidence, freedom), StudentQuantile(FailConfidence, freedom));
        var meanTo = comparable.Sum(s => s.To.Sum) / nTo;
        var meanFrom = comparable.Sum(s => s.From.Sum) / nFrom;
        var evidence = F($"utility {meanTo:0.000} on {r.To} ({nTo} VM paths) vs {meanFrom:0.000} on {r.From} ({nFrom}) in {comparable.Count} comparable strata; ")
            + F($"difference {difference:+0.000;-0.000} ± {error:0.000}, t {z:0.0} against {pass:0.00} to pass and −{fail:0.00} to fail ({freedom} degrees of freedom), margin {options.Margin:0.000}");
        return z < -fail ? new GateResult("utility", GateVerdict.Failed, evidence + ": worse beyond the margin")
            : z > pass ? new GateResult("utility", GateVerdict.Passed, evidence + ": no worse")
            : new GateResult("utility", GateVerdict.Pending, evidence + ": not yet decided");
    }

    /// <summary>The drop reason the drops gate leaves out: a duplicate discarded is a redundant stack doing its job (fec's
    /// parity for a group already whole), and how many there are follows the path's loss, not the version.</summary>
    public const string NotHarmful = "Duplicate";

    /// <summary>The drops gate (see the class remarks): <paramref name="reached"/> are the hosts of the rings reached.</summary>
    public static GateResult Drops(Rollout r, IEnumerable<HostInfo> reached, RolloutOptions options)
    {
        static long Harmful(StackVersionUse u) => u.Drops.Where(d => d.Key != NotHarmful).Sum(d => d.Value);
        var (worse, undecided, fine) = (new List<string>(), new List<string>(), new List<string>());
        foreach (var host in reached.OrderBy(h => h.HostId, StringComparer.Ordinal))
        {
            var versions = host.StackVersions.IsDefault ? [] : host.StackVersions;
            if (versions.FirstOrDefault(u => u.Id == r.StackId && u.Version == r.To) is not { } to || versions.FirstOrDefault(u => u.Id == r.StackId && u.Version == r.From) is not { } from
                || to.Packets < options.MinPackets || from.Packets < options.MinPackets)
            {
                continue;
            }
            var (p1, p0) = (Math.Min(1, (double)Harmful(to) / to.Packets), Math.Min(1, (double)Harmful(from) / from.Packets));
            var error = Math.Max(Math.Sqrt((p1 * (1 - p1) / to.Packets) + (p0 * (1 - p0) / from.Packets)), 1e-9);
            var grown = to.Drops.Keys.Where(k => k != NotHarmful)
                .Select(reason => (Reason: reason, Growth: ((double)to.Drops.GetValueOrDefault(reason) / to.Packets) - ((double)from.Drops.GetValueOrDefault(reason) / from.Packets)))
                .OrderByDescending(g => g.Growth).FirstOrDefault();
            var said = F($"{host.HostId} {p1:0.0000} of {to.Packets} packets on {r.To} vs {p0:0.0000} of {from.Packets} on {r.From}")
                + (grown.Reason is { } most && grown.Growth > 0 ? F($" (most grown: {most} +{grown.Growth:0.0000})") : "");
            (((p1 - p0 - options.DropMargin) / error > NormalQuantile(FailConfidence)) ? worse
                : ((p0 + options.DropMargin - p1) / error > NormalQuantile(options.Confidence)) ? fine : undecided).Add(said);
        }
        var measured = worse.Count + undecided.Count + fine.Count;
        var margin = F($"margin {options.DropMargin:0.0000}");
        if (measured == 0)
        {
            return new GateResult("drops", GateVerdict.Passed,
                F($"nothing to compare: no host reached has carried {options.MinPackets} packets on both {r.To} and {r.From}"));
        }
        var needed = Math.Min(2, measured);
        return worse.Count >= needed ? new GateResult("drops", GateVerdict.Failed, $"drops more beyond the {margin} on {string.Join("; ", worse)}")
            : worse.Count > 0 ? new GateResult("drops", GateVerdict.Pending, $"drops more beyond the {margin} on {string.Join("; ", worse)}: {needed} hosts must")
            : undecided.Count > 0 ? new GateResult("drops", GateVerdict.Pending, $"not yet decided ({margin}) on {string.Join("; ", undecided)}")
            : new GateResult("drops", GateVerdict.Passed, $"drops no more ({margin}) on {string.Join("; ", fine)}");
    }

    /// <summary>
    /// The silence gate: fails when two hosts the rollout reached (or every one, if fewer) went silent after it reached
    /// them — registered, renewed or reported since their release and not for <see cref="RolloutOptions.Silence"/> — as an
    /// agent that crashes on the new version does; pending while one has. A host silent before it was reached, or whose
    /// last word this silo has not seen (<paramref name="lastSeen"/> null: its grain activated since), counts for nothing.
    /// </summary>
    public static GateResult Silence(Rollout r, IReadOnlyCollection<(string Host, DateTimeOffset? LastSeen)> lastSeen, DateTimeOffset now, RolloutOptions options)
    {
        var silent = lastSeen
            .Where(h => h.LastSeen is { } seen && r.ReachedAt(h.Host) is { } reached && seen >= reached && now - seen > options.Silence)
            .OrderBy(h => h.Host, StringComparer.Ordinal)
            .Select(h => F($"{h.Host} (silent {(now - h.LastSeen!.Value).TotalSeconds:0} s)")).ToList();
        var needed = Math.Min(2, lastSeen.Count);
        return silent.Count > 0 && silent.Count >= needed
            ? new GateResult("silence", GateVerdict.Failed, $"hosts went silent after {r.To} reached them: {string.Join(", ", silent)}")
            : silent.Count > 0
                ? new GateResult("silence", GateVerdict.Pending, $"{string.Join(", ", silent)} went silent after {r.To} reached it: {needed} hosts must")
                : new GateResult("silence", GateVerdict.Passed, F($"every one of {lastSeen.Count} hosts reached spoke within {options.Silence.TotalSeconds:0} s"));
    }

    /// <summary>
    /// The cpu gate: on each reached host that timed enough calls into both versions (<see cref="RolloutOptions.MinCallsTimed"/>
    /// each, the agent timing one call in 64), the new version's mean time per call against the previous one's — on the
    /// same host, so its processor is no factor. Fails when two hosts (or every one, if fewer) measure the new version
    /// slower than <see cref="RolloutOptions.CpuRatio"/> times the previous, is pending while fewer do, and passes
    /// otherwise (with nothing to compare when no host timed both: the utility gate still judges). The two versions ran
    /// at different times under the host's load of those times, so the ratio is wide and no finer test is claimed.
    /// </summary>
    public static GateResult Cpu(Rollout r, IEnumerable<HostInfo> reached, RolloutOptions options)
    {
        var measured = new List<(string Host, double To, double From)>();
        foreach (var host in reached)
        {
            var versions = host.StackVersions.IsDefault ? [] : host.StackVersions;
            if (versions.FirstOrDefault(u => u.Id == r.StackId && u.Version == r.To) is { } to && versions.FirstOrDefault(u => u.Id == r.StackId && u.Version == r.From) is { } from
                && to.CallsTimed >= options.MinCallsTimed && from.CallsTimed >= options.MinCallsTimed && to.CallNanoseconds >= 0 && from.CallNanoseconds > 0)
            {
                measured.Add((host.HostId, (double)to.CallNanoseconds / to.CallsTimed, (double)from.CallNanoseconds / from.CallsTimed));
            }
        }
        if (measured.Count == 0)
        {
            return new GateResult("cpu", GateVerdict.Passed, F($"nothing to compare: no host reached has timed {options.MinCallsTimed} calls into both {r.To} and {r.From}"));
        }
        string Said((string Host, double To, double From) m) => F($"{m.Host} {m.To / 1000:0.00} µs a call on {r.To} vs {m.From / 1000:0.00} on {r.From}");
        var slower = measured.Where(m => m.To > options.CpuRatio * m.From).OrderBy(m => m.Host, StringComparer.Ordinal).ToList();
        var needed = Math.Min(2, measured.Count);
        return slower.Count >= needed
            ? new GateResult("cpu", GateVerdict.Failed, F($"slower than {options.CpuRatio:0.0}x on ") + string.Join(", ", slower.Select(Said)))
            : slower.Count > 0
                ? new GateResult("cpu", GateVerdict.Pending, F($"slower than {options.CpuRatio:0.0}x on ") + string.Join(", ", slower.Select(Said)) + $": {needed} hosts must be")
                : new GateResult("cpu", GateVerdict.Passed, F($"within {options.CpuRatio:0.0}x on ") + string.Join(", ", measured.OrderBy(m => m.Host, StringComparer.Ordinal).Select(Said)));
    }

    /// <summary>The quarantine gate: <paramref name="reached"/> are the hosts of the rings reached, with what each reported.</summary>
    public static GateResult Quarantine(Rollout r, IEnumerable<HostInfo> reached)
    {
        var hosts = reached.ToList();
        var quarantined = hosts.SelectMany(h => (h.StackVersions.IsDefault ? [] : h.StackVersions)
            .Where(u => u.Id == r.StackId && u.Version == r.To && u.Quarantined is not null).Select(u => $"{h.HostId} ({u.Quarantined})").Take(1)).ToList();
        var running = hosts.Count(h => !h.StackVersions.IsDefault && h.StackVersions.Any(u => u.Id == r.StackId && u.Version == r.To && u.Quarantined is null));
        var needed = Math.Min(2, hosts.Count);
        return quarantined.Count > 0 && quarantined.Count >= needed
            ? new GateResult("quarantine", GateVerdict.Failed, $"{r.StackId} {r.To} quarantined on {string.Join(", ", quarantined)}")
            : quarantined.Count > 0
                ? new GateResult("quarantine", GateVerdict.Pending, $"{r.StackId} {r.To} quarantined on {string.Join(", ", quarantined)}: {needed} hosts must say so")
                : new GateResult("quarantine", GateVerdict.Passed, $"no quarantine of {r.To}; {running} of {hosts.Count} hosts reached run it");
    }

    /// <summary>How long before a rollout's start the previous version's outcomes count: its bake, at most 10 minutes.</summary>
    public static TimeSpan LookBack(Rollout r) => r.Bake < TimeSpan.FromMinutes(10) ? r.Bake : TimeSpan.FromMinutes(10);

    /// <summary>
    /// Student's t quantile with <paramref name="freedom"/> degrees of freedom, from the normal's by the Cornish–Fisher
    /// expansion (within 1 % of the tables from 4 degrees of freedom on, and below them under that: t(0.99, 4) 3.72 for
    /// 3.75, t(0.99, 2) 6.46 for 6.96).
    /// </summary>
    public static double StudentQuantile(double p, int freedom)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(freedom, 1);
        var z = NormalQuantile(p);
        var (z3, z5, z7, n) = (z * z * z, Math.Pow(z, 5), Math.Pow(z, 7), (double)freedom);
        return z + ((z3 + z) / (4 * n)) + (((5 * z5) + (16 * z3) + (3 * z)) / (96 * n * n)) + (((3 * z7) + (19 * z5) + (17 * z3) - (15 * z)) / (384 * n * n * n));
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
