using System.Collections.Immutable;
using System.Security.Cryptography;
using System.Text;

namespace Fabric.Silo.Rollouts;

/// <summary>
/// How stack versions go out: each ring bakes <see cref="Bake"/> before the next is reached, the catalog asks for a
/// judgement every <see cref="JudgeEvery"/>, and the utility gate needs <see cref="MinSamples"/> VM paths with outcomes
/// on each version in comparable contexts, then decides at <see cref="Confidence"/> whether the new version is worse than the previous one by more
/// than <see cref="Margin"/> (on the utility's 0–1 scale). <see cref="OutcomesRead"/> bounds how far back in the
/// outcome log a judgement reads. The drops gate needs <see cref="MinPackets"/> packets on each version and judges
/// whether the new one drops a share of them larger by more than <see cref="DropMargin"/>. The silence gate counts a
/// reached host that said nothing for <see cref="Silence"/>. The cpu gate needs <see cref="MinCallsTimed"/> timed calls
/// of each version on a host and counts the host when the new version's take more than <see cref="CpuRatio"/> times as long.
/// </summary>
public sealed record RolloutOptions(
    TimeSpan Bake,
    TimeSpan JudgeEvery,
    int MinSamples = 8,
    double Margin = 0.02,
    double Confidence = 0.95,
    int OutcomesRead = 50_000,
    double DropMargin = 0.005,
    long MinPackets = 10_000,
    TimeSpan? SilenceAfter = null,
    double CpuRatio = 1.5,
    long MinCallsTimed = 200)
{
    public RolloutOptions() : this(TimeSpan.FromMinutes(10), TimeSpan.FromSeconds(10))
    {
    }

    /// <summary>How long a reached host may say nothing before the silence gate counts it (agents register every 5 s): 30 s unless set.</summary>
    public TimeSpan Silence => SilenceAfter ?? TimeSpan.FromSeconds(30);
}

/// <summary>
/// A rollout's transitions, as pure functions of the rollout, the input and the time (so the state machine is tested
/// under fake time): start, a judgement (plan the rings, roll back on a failed gate, reach the next ring when every gate
/// passed and the ring baked), and operators' pause, resume, promote and roll back. Every transition appends a step
/// saying who or what took it and why. A function that refuses returns the reason and leaves the rollout as it was.
/// </summary>
public static class RolloutMachine
{
    /// <summary>Who takes the steps the gates decide.</summary>
    public const string Gates = "the rollout's gates";

    /// <summary>Steps kept per rollout (the oldest go first; the start is always kept).</summary>
    public const int StepsKept = 64;

    public static Rollout Start(string stackId, string from, string to, DateTimeOffset now, TimeSpan bake, string by, string why) =>
        new Rollout(stackId, from, to, RolloutStatus.Running, now, bake) { Steps = [new RolloutStep(now, by, "start", why)] };

    /// <summary>
    /// The rings for a version of <paramref name="stackId"/> over <paramref name="hosts"/> (those that run the stack): a
    /// canary of two hosts (a slot runs one version at both its ends, so one host alone would never carry the new
    /// version), then 10 %, 50 % and 100 % of them, each ring adding at least one host. The canary is a pair of
    /// <paramref name="pairs"/> (host pairs whose VM paths carried the stack lately) when there is one: two hosts that share
    /// no path would carry nothing of the new version, and its gates could never judge it. The order is a hash of the
    /// stack, the version and the host (or pair), so canaries differ between rollouts and the same hosts and pairs give the
    /// same plan (it is made once, at the first judgement, and kept). No host: one ring, all.
    /// </summary>
    public static ImmutableArray<RolloutRing> Plan(string stackId, string to, IEnumerable<string> hosts, IEnumerable<(string A, string B)>? pairs = null)
    {
        static string Hash(string text) => Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
        var known = hosts.ToHashSet(StringComparer.Ordinal);
        var canary = (pairs ?? [])
            .Where(p => p.A != p.B && known.Contains(p.A) && known.Contains(p.B))
            .Select(p => string.CompareOrdinal(p.A, p.B) < 0 ? p : (A: p.B, B: p.A))
            .Distinct()
            .OrderBy(p => Hash($"{stackId}\n{to}\n{p.A}\n{p.B}"), StringComparer.Ordinal).ThenBy(p => $"{p.A}\n{p.B}", StringComparer.Ordinal)
            .Select(p => (string[])[p.A, p.B]).FirstOrDefault() ?? [];
        var ordered = canary.Concat(known.Except(canary)
            .OrderBy(h => Hash($"{stackId}\n{to}\n{h}"), StringComparer.Ordinal)
            .ThenBy(h => h, StringComparer.Ordinal)).ToList();
        var n = ordered.Count;
        if (n == 0)
        {
            return [new RolloutRing("all", [])];
        }
        var rings = ImmutableArray.CreateBuilder<RolloutRing>();
        var reached = 0;
        foreach (var (name, count) in new[] { ("canary", Math.Min(n, 2)), ("10 %", (int)Math.Ceiling(n * 0.1)), ("50 %", (int)Math.Ceiling(n * 0.5)), ("100 %", n) })
        {
            var upTo = Math.Min(n, Math.Max(count, reached + 1));
            if (upTo <= reached)
            {
                continue;
            }
            rings.Add(new RolloutRing(rings.Count == 0 ? name : $"{name} ({upTo} of {n} hosts)", [.. ordered.Skip(reached).Take(upTo - reached)]));
            reached = upTo;
        }
        return rings.ToImmutable();
    }

    /// <summary>
    /// Takes a judgement. The first one with a plan sets the rings and reaches the canary. A failed gate rolls back (also
    /// while paused: a pause stops promotion, never protection) and returns the version's <see cref="BadVersion"/>. A
    /// running rollout whose gates all passed once its ring baked reaches the next ring, or completes. A judgement of
    /// another version, or of a finished rollout, changes nothing.
    /// </summary>
    public static (Rollout Rollout, BadVersion? Bad) Judge(Rollout r, RolloutJudgement judgement, DateTimeOffset now)
    {
        if (!r.Active || judgement.StackId != r.StackId || judgement.To != r.To)
        {
            return (r, null);
        }
        if (r.Ring < 0)
        {
            // A rollout paused before its rings were planned reaches no host until it is resumed.
            if (judgement.Plan.IsDefaultOrEmpty || r.Status != RolloutStatus.Running)
            {
                return (r with { Gates = judgement.Gates, JudgedAt = now }, null);
            }
            r = WithStep(r with { Rings = judgement.Plan, Ring = 0, RingSince = now, BakedWhenPaused = TimeSpan.Zero }, now, Gates,
                "reach " + judgement.Plan[0].Name, $"{r.To} goes to {Hosts(judgement.Plan[0])}");
        }
        r = r with { Gates = judgement.Gates, JudgedAt = now };
        if (judgement.Gates.Where(g => g.Verdict == GateVerdict.Failed).ToList() is { Count: > 0 } failed)
        {
            var evidence = string.Join("; ", failed.Select(g => $"{g.Gate}: {g.Evidence}"));
            return (WithStep(r with { Status = RolloutStatus.RolledBack }, now, Gates, "roll back", evidence),
                new BadVersion(r.StackId, r.To, now, Gates, evidence));
        }
        if (r.Status != RolloutStatus.Running || r.Baked(now) < r.Bake || judgement.Gates.Any(g => g.Verdict != GateVerdict.Passed))
        {
            return (r, null);
        }
        return (Advance(r, now, Gates, $"every gate passed after {r.Baked(now).TotalSeconds:0} s in {r.Rings[r.Ring].Name}: "
            + string.Join("; ", judgement.Gates.Select(g => $"{g.Gate}: {g.Evidence}"))), null);
    }

    public static (Rollout Rollout, string? Refusal) Pause(Rollout r, DateTimeOffset now, string by, string why) =>
        r.Status != RolloutStatus.Running ? (r, $"the rollout of {r.StackId} {r.To} is {Describe(r.Status)}, not running")
        : (WithStep(r with { Status = RolloutStatus.Paused, BakedWhenPaused = r.Baked(now) }, now, by, "pause", why), null);

    public static (Rollout Rollout, string? Refusal) Resume(Rollout r, DateTimeOffset now, string by, string why) =>
        r.Status != RolloutStatus.Paused ? (r, $"the rollout of {r.StackId} {r.To} is {Describe(r.Status)}, not paused")
        : (WithStep(r with { Status = RolloutStatus.Running, RingSince = now - r.BakedWhenPaused, BakedWhenPaused = TimeSpan.Zero }, now, by, "resume", why), null);

    /// <summary>Reaches the next ring now (a paused rollout stays paused there, its bake starting over).</summary>
    public static (Rollout Rollout, string? Refusal) Promote(Rollout r, DateTimeOffset now, string by, string why) =>
        !r.Active ? (r, $"the rollout of {r.StackId} {r.To} is {Describe(r.Status)}")
        : r.Ring < 0 ? (r, $"the rollout of {r.StackId} {r.To} has no rings yet (its first judgement plans them within seconds)")
        : (Advance(r, now, by, why), null);

    /// <summary>Rolls the version back by hand (running, paused or completed): every host returns to <see cref="Rollout.From"/>.</summary>
    public static (Rollout Rollout, BadVersion? Bad, string? Refusal) RollBack(Rollout r, DateTimeOffset now, string by, string why) =>
        r.Status == RolloutStatus.RolledBack ? (r, null, $"the rollout of {r.StackId} {r.To} is already rolled back")
        : (WithStep(r with { Status = RolloutStatus.RolledBack }, now, by, "roll back", why), new BadVersion(r.StackId, r.To, now, by, why), null);

    /// <summary>
    /// The version hosts run while a newer one replaces <paramref name="r"/>: its new version once its last ring was
    /// reached (every host runs it; going back to the old one for the new rollout would move the whole fleet twice), else
    /// its previous one.
    /// </summary>
    public static string Baseline(Rollout r) => r.Status == RolloutStatus.Completed || (r.Active && r.Ring >= 0 && r.Ring >= r.Rings.Length - 1) ? r.To : r.From;

    /// <summary>A newer version replaces an active rollout: it ends, and its hosts follow the new rollout.</summary>
    public static Rollout Supersede(Rollout r, DateTimeOffset now, string newer) => End(r, now, $"{newer} was published while {r.To} went out");

    /// <summary>Ends an active rollout that no gate or operator ended (superseded, or its stack withdrawn), saying why.</summary>
    public static Rollout End(Rollout r, DateTimeOffset now, string why) =>
        WithStep(r with { Status = RolloutStatus.RolledBack }, now, "the catalog", "end", why);

    private static Rollout Advance(Rollout r, DateTimeOffset now, string by, string why)
    {
        if (r.Ring >= r.Rings.Length - 1)
        {
            return WithStep(r with { Status = RolloutStatus.Completed }, now, by, "complete", why);
        }
        var next = r.Ring + 1;
        return WithStep(r with { Ring = next, RingSince = now, BakedWhenPaused = TimeSpan.Zero }, now, by, "reach " + r.Rings[next].Name,
            $"{why} ({r.To} goes to {Hosts(r.Rings[next])})");
    }

    private static Rollout WithStep(Rollout r, DateTimeOffset now, string by, string action, string why)
    {
        var steps = r.Steps.Add(new RolloutStep(now, by, action, why));
        return r with { Steps = steps.Length <= StepsKept ? steps : [steps[0], .. steps.Skip(steps.Length - StepsKept + 1)] };
    }

    /// <summary>A ring's hosts for a step's text: at most eight named (the rollout's rings list them all).</summary>
    private static string Hosts(RolloutRing ring) => ring.Hosts.IsDefaultOrEmpty ? "every host"
        : ring.Hosts.Length <= 8 ? string.Join(", ", ring.Hosts) : $"{string.Join(", ", ring.Hosts.Take(8))} and {ring.Hosts.Length - 8} more";

    private static string Describe(RolloutStatus status) => status switch
    {
        RolloutStatus.RolledBack => "rolled back",
        _ => status.ToString().ToLowerInvariant(),
    };
}
