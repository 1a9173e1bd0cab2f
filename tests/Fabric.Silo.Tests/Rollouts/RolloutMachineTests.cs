using System.Collections.Immutable;
using Fabric.Silo.Learning;
using Fabric.Silo.Rollouts;
using Microsoft.Extensions.Time.Testing;

namespace Fabric.Silo.Tests.Rollouts;

/// <summary>The rollout state machine and its gates under fake time: no cluster, every transition by hand.</summary>
public class RolloutMachineTests
{
    private static readonly TimeSpan Bake = TimeSpan.FromMinutes(10);
    private static readonly string[] Fleet = ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9", "h10"];

    private static readonly ImmutableArray<GateResult> AllPassed =
        [new("quarantine", GateVerdict.Passed, "none"), new("utility", GateVerdict.Passed, "no worse")];

    private static RolloutJudgement Judgement(Rollout r, ImmutableArray<GateResult> gates, bool plan = false) =>
        new(r.StackId, r.To, gates, plan ? RolloutMachine.Plan(r.StackId, r.To, Fleet) : []);

    private static (Rollout Rollout, FakeTimeProvider Time) Planned()
    {
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 12, 5, 3, 0, 0, TimeSpan.Zero));
        var r = RolloutMachine.Start("fec", "1.0.0", "1.0.1", time.GetUtcNow(), Bake, "the catalog", "published");
        Assert.All(Fleet, h => Assert.Equal("1.0.0", r.VersionFor(h)));
        r = RolloutMachine.Judge(r, Judgement(r, [new("utility", GateVerdict.Pending, "no outcomes yet")], plan: true), time.GetUtcNow()).Rollout;
        return (r, time);
    }

    [Fact]
    public void ThePlan_StartsWithACanaryPair_CoversEveryHostOnce_AndIsTheSameOnEverySilo()
    {
        var plan = RolloutMachine.Plan("fec", "1.0.1", Fleet);
        Assert.Equal([2, 1, 2, 5], plan.Select(r => r.Hosts.Length));
        Assert.Equal("canary", plan[0].Name);
        Assert.Equal(Fleet.Order(StringComparer.Ordinal), plan.SelectMany(r => r.Hosts).Order(StringComparer.Ordinal));
        Assert.Equal(plan.SelectMany(r => r.Hosts), RolloutMachine.Plan("fec", "1.0.1", Fleet.Reverse()).SelectMany(r => r.Hosts));
        // Canaries differ between rollouts (not always the same two hosts carry every new version first).
        Assert.True(Enumerable.Range(0, 8).Select(i => string.Join(",", RolloutMachine.Plan("fec", $"1.0.{i}", Fleet)[0].Hosts.Order(StringComparer.Ordinal))).Distinct().Count() > 1);
        Assert.Equal([2], RolloutMachine.Plan("fec", "1.0.1", ["a", "b"]).Select(r => r.Hosts.Length));
        Assert.Equal([2, 1], RolloutMachine.Plan("fec", "1.0.1", ["a", "b", "c"]).Select(r => r.Hosts.Length));
        Assert.Equal("all", Assert.Single(RolloutMachine.Plan("fec", "1.0.1", [])).Name);
    }

    /// <summary>
    /// Two hosts that share no path would carry nothing of the new version (a slot runs one version at both its ends), so
    /// the canary is a pair whose VM paths carry the stack, whichever way the outcomes name it; pairs with a host that
    /// does not run the stack, or a host with itself, are not candidates; with none the canary is any two.
    /// </summary>
    [Fact]
    public void TheCanary_IsAPairOfHostsThatCarryTheStackBetweenThem()
    {
        for (var i = 0; i < 16; i++)
        {
            var plan = RolloutMachine.Plan("fec", $"1.0.{i}", Fleet, [("h7", "h3"), ("h3", "h7"), ("h9", "h11"), ("h5", "h5")]);
            Assert.Equal(["h3", "h7"], plan[0].Hosts);
            Assert.Equal(Fleet.Order(StringComparer.Ordinal), plan.SelectMany(r => r.Hosts).Order(StringComparer.Ordinal));
        }
        var pairs = new[] { ("h1", "h2"), ("h3", "h4"), ("h5", "h6"), ("h7", "h8") };
        var canaries = Enumerable.Range(0, 16).Select(i => string.Join(",", RolloutMachine.Plan("fec", $"1.0.{i}", Fleet, pairs)[0].Hosts)).Distinct().ToList();
        Assert.All(canaries, c => Assert.Contains(c, pairs.Select(p => $"{p.Item1},{p.Item2}")));
        Assert.True(canaries.Count > 1, string.Join(" ", canaries));
        Assert.Equal(RolloutMachine.Plan("fec", "1.0.1", Fleet).SelectMany(r => r.Hosts), RolloutMachine.Plan("fec", "1.0.1", Fleet, [("h9", "h11"), ("h5", "h5")]).SelectMany(r => r.Hosts));
    }

    [Fact]
    public void ARollout_ReachesTheCanaryFirst_WaitsForItsBake_AndReachesEveryRingOnPassingGates()
    {
        var (r, time) = Planned();
        Assert.Equal(0, r.Ring);
        var canary = r.Rings[0].Hosts;
        Assert.All(Fleet, h => Assert.Equal(canary.Contains(h) ? "1.0.1" : "1.0.0", r.VersionFor(h)));
        // A host that joins later is in no ring: it stays on the previous version until the last ring.
        Assert.Equal("1.0.0", r.VersionFor("h11"));
        Assert.Null(r.ReachedAt("h11"));
        Assert.Null(r.ReachedAt(Fleet.First(h => !canary.Contains(h))));

        // Gates pass but the ring has not baked: nothing moves.
        time.Advance(Bake / 2);
        r = RolloutMachine.Judge(r, Judgement(r, AllPassed), time.GetUtcNow()).Rollout;
        Assert.Equal(0, r.Ring);
        // Baked, but a gate still pending: nothing moves either.
        time.Advance(Bake);
        r = RolloutMachine.Judge(r, Judgement(r, [AllPassed[0], new("utility", GateVerdict.Pending, "12 outcomes")]), time.GetUtcNow()).Rollout;
        Assert.Equal(0, r.Ring);
        for (var ring = 1; ring < r.Rings.Length; ring++)
        {
            r = RolloutMachine.Judge(r, Judgement(r, AllPassed), time.GetUtcNow()).Rollout;
            Assert.Equal(ring, r.Ring);
            time.Advance(Bake);
        }
        // The last ring reached: every host runs the new version, hosts that joined since too, and a newer version
        // published now starts from this one.
        Assert.Equal("1.0.1", r.VersionFor("h11"));
        Assert.Equal("1.0.1", RolloutMachine.Baseline(r));
        Assert.Equal(r.Steps[1].At, r.ReachedAt(canary[0]));
        Assert.Equal(r.Steps[^1].At, r.ReachedAt("h11"));
        r = RolloutMachine.Judge(r, Judgement(r, AllPassed), time.GetUtcNow()).Rollout;
        Assert.Equal(RolloutStatus.Completed, r.Status);
        Assert.All(Fleet.Append("h11"), h => Assert.Equal("1.0.1", r.VersionFor(h)));
        Assert.Equal(["start", "reach canary", .. r.Rings.Skip(1).Select(g => "reach " + g.Name), "complete"], r.Steps.Select(s => s.Action));
        Assert.All(r.Steps.Skip(1), s => Assert.Equal(RolloutMachine.Gates, s.By));
        // A finished rollout takes no more judgements.
        Assert.Same(r, RolloutMachine.Judge(r, Judgement(r, [new("quarantine", GateVerdict.Failed, "late")]), time.GetUtcNow()).Rollout);
    }

    [Fact]
    public void AFailedGate_RollsBackWhileARingIsHalfApplied_EveryHostReturnsAndTheVersionIsBadWithTheEvidence()
    {
        var (r, time) = Planned();
        time.Advance(Bake);
        r = RolloutMachine.Judge(r, Judgement(r, AllPassed), time.GetUtcNow()).Rollout;
        Assert.Equal(1, r.Ring);
        time.Advance(TimeSpan.FromSeconds(30));
        var (back, bad) = RolloutMachine.Judge(r, Judgement(r, [new("quarantine", GateVerdict.Failed, "fec 1.0.1 quarantined on h3 (threw)"), AllPassed[1]]),
            time.GetUtcNow());
        Assert.Equal(RolloutStatus.RolledBack, back.Status);
        Assert.All(Fleet, h => Assert.Equal("1.0.0", back.VersionFor(h)));
        Assert.NotNull(bad);
        Assert.Equal(("fec", "1.0.1", RolloutMachine.Gates), (bad.StackId, bad.Version, bad.By));
        Assert.Contains("quarantined on h3", bad.Evidence, StringComparison.Ordinal);
        Assert.Equal(("roll back", bad.Evidence), (back.Steps[^1].Action, back.Steps[^1].Why));
        // A judgement of another version changes nothing.
        Assert.Same(r, RolloutMachine.Judge(r, new RolloutJudgement("fec", "1.0.2", [new("utility", GateVerdict.Failed, "x")], []), time.GetUtcNow()).Rollout);
    }

    [Fact]
    public void APause_StopsTheBakeAndPromotion_NotProtection_AndResumeAndPromoteAreRecordedWithWhoAndWhy()
    {
        var (r, time) = Planned();
        time.Advance(TimeSpan.FromMinutes(4));
        var (paused, refusal) = RolloutMachine.Pause(r, time.GetUtcNow(), "operator 'ana'", "a customer call");
        Assert.Null(refusal);
        Assert.Contains("not running", RolloutMachine.Pause(paused, time.GetUtcNow(), "operator 'ana'", "again").Refusal, StringComparison.Ordinal);
        // Paused for an hour: the bake does not run, passing gates promote nothing.
        time.Advance(TimeSpan.FromHours(1));
        Assert.Equal(TimeSpan.FromMinutes(4), paused.Baked(time.GetUtcNow()));
        Assert.Equal(0, RolloutMachine.Judge(paused, Judgement(paused, AllPassed), time.GetUtcNow()).Rollout.Ring);
        // Resumed: the ring has baked 4 minutes, so 6 more are needed.
        var (resumed, _) = RolloutMachine.Resume(paused, time.GetUtcNow(), "operator 'ana'", "call over");
        Assert.Contains("not paused", RolloutMachine.Resume(resumed, time.GetUtcNow(), "operator 'ana'", "again").Refusal, StringComparison.Ordinal);
        time.Advance(TimeSpan.FromMinutes(5));
        Assert.Equal(0, RolloutMachine.Judge(resumed, Judgement(resumed, AllPassed), time.GetUtcNow()).Rollout.Ring);
        time.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(1, RolloutMachine.Judge(resumed, Judgement(resumed, AllPassed), time.GetUtcNow()).Rollout.Ring);

        // A failed gate rolls back even while paused.
        var (pausedAgain, _) = RolloutMachine.Pause(resumed, time.GetUtcNow(), "operator 'ana'", "look closer");
        Assert.Equal(RolloutStatus.RolledBack, RolloutMachine.Judge(pausedAgain, Judgement(pausedAgain, [new("utility", GateVerdict.Failed, "worse")]), time.GetUtcNow()).Rollout.Status);

        // Promote reaches the next ring at once, paused or not; the last promote completes.
        var (promoted, _) = RolloutMachine.Promote(pausedAgain, time.GetUtcNow(), "operator 'ben'", "the canary is fine, go");
        Assert.Equal((1, RolloutStatus.Paused, TimeSpan.Zero), (promoted.Ring, promoted.Status, promoted.Baked(time.GetUtcNow())));
        while (promoted.Status != RolloutStatus.Completed)
        {
            promoted = RolloutMachine.Promote(promoted, time.GetUtcNow(), "operator 'ben'", "go").Rollout;
        }
        Assert.Contains("is completed", RolloutMachine.Promote(promoted, time.GetUtcNow(), "operator 'ben'", "go").Refusal, StringComparison.Ordinal);
        Assert.Equal(["operator 'ana'", "pause", "a customer call"], [promoted.Steps[2].By, promoted.Steps[2].Action, promoted.Steps[2].Why]);

        // A completed rollout can still be rolled back by hand; the version is then bad, with the operator's reason.
        var (rolledBack, bad, none) = RolloutMachine.RollBack(promoted, time.GetUtcNow(), "operator 'ben'", "tickets from tenants");
        Assert.Null(none);
        Assert.Equal(("operator 'ben'", "tickets from tenants"), (bad!.By, bad.Evidence));
        Assert.All(Fleet, h => Assert.Equal("1.0.0", rolledBack.VersionFor(h)));
        Assert.Contains("already rolled back", RolloutMachine.RollBack(rolledBack, time.GetUtcNow(), "operator 'ben'", "again").Refusal, StringComparison.Ordinal);
    }

    [Fact]
    public void PromotingARolloutWithoutRings_IsRefused_APausedOneReachesNoHost_AndTheStepsStayBounded()
    {
        var time = new FakeTimeProvider();
        var r = RolloutMachine.Start("fec", "1.0.0", "1.0.1", time.GetUtcNow(), Bake, "the catalog", "published");
        var paused = RolloutMachine.Pause(r, time.GetUtcNow(), "operator 'ana'", "not today").Rollout;
        paused = RolloutMachine.Judge(paused, Judgement(paused, AllPassed, plan: true), time.GetUtcNow()).Rollout;
        Assert.Equal(-1, paused.Ring);
        Assert.All(Fleet, h => Assert.Equal("1.0.0", paused.VersionFor(h)));
        // A newer version supersedes it: hosts stay where they are, on the previous version.
        Assert.Equal("1.0.0", RolloutMachine.Baseline(paused));
        Assert.Contains("has no rings yet", RolloutMachine.Promote(r, time.GetUtcNow(), "operator 'ana'", "hurry").Refusal, StringComparison.Ordinal);
        for (var i = 0; i < 200; i++)
        {
            r = RolloutMachine.Pause(r, time.GetUtcNow(), "operator 'ana'", $"pause {i}").Rollout;
            r = RolloutMachine.Resume(r, time.GetUtcNow(), "operator 'ana'", $"resume {i}").Rollout;
        }
        Assert.Equal(RolloutMachine.StepsKept, r.Steps.Length);
        Assert.Equal("start", r.Steps[0].Action);
        Assert.Equal("resume 199", r.Steps[^1].Why);
    }

    /// <summary>
    /// The canary's candidates come from the outcome log, where an agent writes the remote host of its own outcomes: a pair
    /// counts only when both hosts' outcomes name each other (one carrying the stack, the other any stack back), so h7,
    /// compromised, naming h1 to h6 gets itself no place; an outcome dated ahead is not taken.
    /// </summary>
    [Fact]
    public void TheCanaryCandidates_ArePairsBothOfWhoseHostsSayTheyTalk()
    {
        var (r, _) = Planned();
        var at = r.Started;
        LoggedOutcome Said(string host, string remote, string stack, DateTimeOffset when) =>
            Outcome("1.0.0", 0.5, host, $"{host}-vm", 0) with { RemoteHost = remote, Stack = stack, At = when };
        var outcomes = new List<LoggedOutcome>
        {
            // h1 sends on fec to h2; h2's VM answers on std-ipv4.
            Said("h1", "h2", "fec", at), Said("h2", "h1", "std-ipv4", at),
            // h3 and h4 talk, on std-ipv4 only.
            Said("h3", "h4", "std-ipv4", at), Said("h4", "h3", "std-ipv4", at),
            // h5 and h6 on fec both ways, but a day ahead.
            Said("h5", "h6", "fec", at.AddDays(1)), Said("h6", "h5", "fec", at.AddDays(1)),
        };
        outcomes.AddRange(Fleet.Where(h => h != "h7").Select(h => Said("h7", h, "fec", at)));
        Assert.Equal([("h1", "h2")], RolloutJudgeGrain.CarryingPairs(r, outcomes, at));
    }

    private static LoggedOutcome Outcome(string version, double utility, string host, string vm, double loss) =>
        new(new DateTimeOffset(2026, 12, 5, 3, 0, 1, TimeSpan.Zero), vm, "h9", "general", "fec", version, 1, false,
            new OutcomeFeatures(30, 30, 1, loss, 0, 100, 1), 50, 30, 0, 0, utility) { Host = host };

    /// <summary>h1 and h2 run the new version (the canary, reached as the rollout started), h3 and h4 the previous one.</summary>
    private static DateTimeOffset? Reached(string host) => host is "h1" or "h2" ? new DateTimeOffset(2026, 12, 5, 3, 0, 0, TimeSpan.Zero) : null;

    /// <summary>Outcomes of <paramref name="vms"/> VMs on each host that runs <paramref name="version"/> (or on <paramref name="hosts"/>), five seconds each.</summary>
    private static IEnumerable<LoggedOutcome> Outcomes(string version, Func<double> utility, double loss = 0.02, int vms = 6, string[]? hosts = null) =>
        from host in hosts ?? (version == "1.0.1" ? ["h1", "h2"] : ["h3", "h4"])
        from vm in Enumerable.Range(0, vms)
        from second in Enumerable.Range(0, 5)
        select Outcome(version, utility(), host, $"{host}-vm{vm}", loss);

    [Fact]
    public void TheUtilityGate_FailsAWorseVersion_PassesAnEqualOne_AndComparesOnlyComparableConditions()
    {
        var options = new RolloutOptions(Bake, TimeSpan.FromSeconds(10));
        var r = RolloutMachine.Start("fec", "1.0.0", "1.0.1", new DateTimeOffset(2026, 12, 5, 3, 0, 0, TimeSpan.Zero), Bake, "the catalog", "published");
        var random = new Random(7);
        Func<double> Noisy(double mean) => () => Math.Clamp(mean + (random.NextDouble() - 0.5) * 0.2, 0, 1);
        GateResult Judge(IEnumerable<LoggedOutcome> outcomes) => RolloutGates.Utility(r, outcomes.ToList(), Reached, options);

        var failed = Judge(Outcomes("1.0.1", Noisy(0.55)).Concat(Outcomes("1.0.0", Noisy(0.80))));
        Assert.Equal(GateVerdict.Failed, failed.Verdict);
        Assert.Contains("worse beyond the margin", failed.Evidence, StringComparison.Ordinal);
        Assert.Contains("on 1.0.1 (12 VM paths)", failed.Evidence, StringComparison.Ordinal);
        Assert.Equal(GateVerdict.Passed, Judge(Outcomes("1.0.1", Noisy(0.80)).Concat(Outcomes("1.0.0", Noisy(0.80)))).Verdict);

        // Few VM paths: pending, however many seconds each reported.
        var few = Judge(Outcomes("1.0.1", Noisy(0.55), vms: 2).Concat(Outcomes("1.0.0", Noisy(0.80), vms: 2)));
        Assert.Equal(GateVerdict.Pending, few.Verdict);
        Assert.Contains("8 needed on each", few.Evidence, StringComparison.Ordinal);

        // The new version on lossy paths only, the old one on clean paths only: nothing comparable, so no verdict
        // (a naive comparison would blame the version for the path).
        Assert.Equal(GateVerdict.Pending, Judge(Outcomes("1.0.1", Noisy(0.4), loss: 0.08).Concat(Outcomes("1.0.0", Noisy(0.9), loss: 0))).Verdict);
        // Mixed: within each context the versions are equal, though the new one has more of the lossy paths.
        var mixed = Outcomes("1.0.1", Noisy(0.4), loss: 0.08, vms: 10).Concat(Outcomes("1.0.1", Noisy(0.9), loss: 0, vms: 3))
            .Concat(Outcomes("1.0.0", Noisy(0.4), loss: 0.08, vms: 3)).Concat(Outcomes("1.0.0", Noisy(0.9), loss: 0, vms: 10));
        Assert.NotEqual(GateVerdict.Failed, Judge(mixed).Verdict);
        // A context where both versions always score the same (an idle path) does not drown one where the new version is worse.
        var drowned = Outcomes("1.0.1", () => 1, loss: 0, vms: 16).Concat(Outcomes("1.0.0", () => 1, loss: 0, vms: 16))
            .Concat(Outcomes("1.0.1", Noisy(0.4), vms: 8)).Concat(Outcomes("1.0.0", Noisy(0.8), vms: 8));
        Assert.NotEqual(GateVerdict.Passed, Judge(drowned).Verdict);

        // The new version's outcomes before the rollout, the old one's more than a bake before it, outcomes of other
        // stacks, of other versions, of the new version on a host not reached and of the old one on a host since it was
        // reached do not count.
        var worse = Outcomes("1.0.1", Noisy(0.55)).Concat(Outcomes("1.0.0", Noisy(0.80))).ToList();
        var before = worse.Select(o => o with { At = o.StackVersion == "1.0.1" ? r.Started.AddSeconds(-1) : r.Started - Bake - TimeSpan.FromSeconds(1) });
        var other = worse.Select(o => o with { Stack = "arq" }).Concat(worse.Select(o => o with { StackVersion = "0.9.0" }));
        var wrongSide = Outcomes("1.0.1", Noisy(0.1), hosts: ["h3", "h4"]).Concat(Outcomes("1.0.0", Noisy(0.9), hosts: ["h1", "h2"]));
        Assert.Equal(GateVerdict.Pending, Judge(before.Concat(other).Concat(wrongSide)).Verdict);

        // The old version's outcomes within a bake before the start are its baseline (a fleet all in the canary has no other).
        var baseline = Outcomes("1.0.1", Noisy(0.55)).Concat(Outcomes("1.0.0", Noisy(0.80)).Select(o => o with { At = r.Started - Bake / 2 }));
        Assert.Equal(GateVerdict.Failed, Judge(baseline).Verdict);

        // One host's thousand VMs weigh as sixteen.
        var flood = Outcomes("1.0.1", Noisy(0.8), vms: 1000, hosts: ["h1"]).Concat(Outcomes("1.0.1", Noisy(0.8), hosts: ["h2"])).Concat(Outcomes("1.0.0", Noisy(0.8)));
        Assert.Contains($"on 1.0.1 ({RolloutGates.UnitsPerHost + 6} VM paths)", Judge(flood).Evidence, StringComparison.Ordinal);
    }

    [Fact]
    public void TheQuarantineGate_FailsWhenTwoHostsReachedQuarantinedTheNewVersion()
    {
        var r = RolloutMachine.Start("fec", "1.0.0", "1.0.1", DateTimeOffset.UnixEpoch, Bake, "the catalog", "published");
        HostInfo Host(string id, params StackVersionUse[] versions) => new(id, "127.0.0.1", null, 1, ["fec"], [], "test") { StackVersions = [.. versions] };
        var threw = new StackVersionUse("fec", "1.0.1", 0) { Quarantined = "threw InvalidOperationException on 12 of 100 frames" };
        var fine = RolloutGates.Quarantine(r, [Host("h1", new StackVersionUse("fec", "1.0.1", 3)), Host("h2", new StackVersionUse("fec", "1.0.0", 2))]);
        Assert.Equal((GateVerdict.Passed, "no quarantine of 1.0.1; 1 of 2 hosts reached run it"), (fine.Verdict, fine.Evidence));
        // One host's word is not enough where two were reached; two hosts' is.
        var one = RolloutGates.Quarantine(r, [Host("h1", threw), Host("h2", new StackVersionUse("fec", "1.0.1", 3))]);
        Assert.Equal(GateVerdict.Pending, one.Verdict);
        Assert.Contains("2 hosts must say so", one.Evidence, StringComparison.Ordinal);
        var failed = RolloutGates.Quarantine(r, [Host("h1", threw), Host("h2", threw)]);
        Assert.Equal(GateVerdict.Failed, failed.Verdict);
        Assert.Equal("fec 1.0.1 quarantined on h1 (threw InvalidOperationException on 12 of 100 frames), h2 (threw InvalidOperationException on 12 of 100 frames)", failed.Evidence);
        Assert.Equal(GateVerdict.Failed, RolloutGates.Quarantine(r, [Host("h1", threw)]).Verdict);
        // The previous version's quarantine is not the new one's fault.
        Assert.Equal(GateVerdict.Passed, RolloutGates.Quarantine(r, [Host("h1", new StackVersionUse("fec", "1.0.0", 0) { Quarantined = "old" })]).Verdict);
    }

    [Fact]
    public void TheDropsGate_ComparesTheVersionsOnTheSameHost_AndFailsWhenTwoHostsFindTheNewOneDropsMore()
    {
        var r = RolloutMachine.Start("fec", "1.0.0", "1.0.1", DateTimeOffset.UnixEpoch, Bake, "the catalog", "published");
        var options = new RolloutOptions(Bake, TimeSpan.FromSeconds(10));
        StackVersionUse Use(string version, long packets, params (string Reason, long Count)[] drops) =>
            new(r.StackId, version, 1) { Packets = packets, Drops = drops.ToImmutableDictionary(d => d.Reason, d => d.Count, StringComparer.Ordinal) };
        HostInfo Host(string id, StackVersionUse to, StackVersionUse from) => new(id, "127.0.0.1", null, 1, ["fec"], [], "test") { StackVersions = [to, from, Use("0.9.0", 100_000, ("Malformed", 50_000))] };
        var (worseTo, worseFrom) = (Use("1.0.1", 20_000, ("Malformed", 600), ("BufferFull", 20)), Use("1.0.0", 50_000, ("BufferFull", 50)));
        var (sameTo, sameFrom) = (Use("1.0.1", 20_000, ("BufferFull", 20), ("Duplicate", 4_000)), Use("1.0.0", 50_000, ("BufferFull", 50)));

        // 3 % of its packets malformed against 0.1 % full buffers on two hosts: worse beyond the half-point margin, the reason named.
        var worse = RolloutGates.Drops(r, [Host("h1", worseTo, worseFrom), Host("h2", worseTo, worseFrom)], options);
        Assert.Equal(GateVerdict.Failed, worse.Verdict);
        Assert.Contains("h1 0.0310 of 20000 packets on 1.0.1 vs 0.0010 of 50000 on 1.0.0 (most grown: Malformed +0.0300)", worse.Evidence, StringComparison.Ordinal);
        // One host's counters alone (one agent's word, or one plug-in's figures there) roll nothing back.
        var one = RolloutGates.Drops(r, [Host("h1", worseTo, worseFrom), Host("h2", sameTo, sameFrom)], options);
        Assert.Equal(GateVerdict.Pending, one.Verdict);
        Assert.Contains("2 hosts must", one.Evidence, StringComparison.Ordinal);
        // The same share on both hosts: duplicates discarded (a redundant stack's parity for a group already whole, more
        // of them on a cleaner path), other stacks' and other versions' drops count for nothing.
        Assert.Equal(GateVerdict.Passed, RolloutGates.Drops(r, [Host("h1", sameTo, sameFrom), Host("h2", sameTo, sameFrom)], options).Verdict);
        // Within the margin on few packets: not decided.
        var close = RolloutGates.Drops(r, [Host("h1", Use("1.0.1", 12_000, ("BufferFull", 96)), Use("1.0.0", 12_000, ("BufferFull", 24)))], options);
        Assert.Equal(GateVerdict.Pending, close.Verdict);
        Assert.Contains("not yet decided", close.Evidence, StringComparison.Ordinal);
        // Too few packets on either version anywhere: nothing to compare, so the gate stands aside (the utility gate judges).
        var few = RolloutGates.Drops(r, [Host("h1", Use("1.0.1", 1_000, ("Malformed", 900)), Use("1.0.0", 50_000))], options);
        Assert.Equal(GateVerdict.Passed, few.Verdict);
        Assert.Contains("nothing to compare: no host reached has carried 10000 packets", few.Evidence, StringComparison.Ordinal);
    }

    [Fact]
    public void TheSilenceGate_FailsWhenTwoHostsReachedStopSpeakingAfterTheReach_NotBeforeIt()
    {
        var (r, _) = Planned();
        var options = new RolloutOptions(Bake, TimeSpan.FromSeconds(10));
        var reachedAt = r.ReachedAt(r.Rings[0].Hosts[0])!.Value;
        var (a, b) = (r.Rings[0].Hosts[0], r.Rings[0].Hosts[1]);
        var now = reachedAt + TimeSpan.FromMinutes(2);
        GateResult Judge(DateTimeOffset? seenA, DateTimeOffset? seenB) => RolloutGates.Silence(r, [(a, seenA), (b, seenB)], now, options);

        Assert.Equal(GateVerdict.Passed, Judge(now - TimeSpan.FromSeconds(4), now - TimeSpan.FromSeconds(6)).Verdict);
        // One host silent for 90 s since a minute after the reach: one host's death may be its own.
        var one = Judge(reachedAt + TimeSpan.FromSeconds(30), now);
        Assert.Equal(GateVerdict.Pending, one.Verdict);
        Assert.Contains($"{a} (silent 90 s)", one.Evidence, StringComparison.Ordinal);
        // Both: the version's doing, most likely.
        var both = Judge(reachedAt + TimeSpan.FromSeconds(30), reachedAt + TimeSpan.FromSeconds(40));
        Assert.Equal(GateVerdict.Failed, both.Verdict);
        Assert.Equal($"hosts went silent after 1.0.1 reached them: {string.Join(", ", new[] { $"{a} (silent 90 s)", $"{b} (silent 80 s)" }.Order(StringComparer.Ordinal))}", both.Evidence);
        // Silent since before the reach (never got the release), or not seen by this silo since its grain activated: no count.
        Assert.Equal(GateVerdict.Passed, Judge(reachedAt - TimeSpan.FromSeconds(1), null).Verdict);
        // A host not reached is not judged at all.
        Assert.Equal(GateVerdict.Passed, RolloutGates.Silence(r, [(r.Rings[1].Hosts[0], reachedAt)], now, options).Verdict);
    }

    [Fact]
    public void TheCpuGate_ComparesTheVersionsOnTheSameHost_AndFailsWhenTwoHostsFindTheNewOneSlower()
    {
        var r = RolloutMachine.Start("fec", "1.0.0", "1.0.1", DateTimeOffset.UnixEpoch, Bake, "the catalog", "published");
        var options = new RolloutOptions(Bake, TimeSpan.FromSeconds(10));
        // Mean time a call: new and previous version, in µs, over 500 timed calls each.
        HostInfo Host(string id, double to, double from, long timed = 500) => new(id, "127.0.0.1", null, 1, ["fec"], [], "test")
        {
            StackVersions = [new StackVersionUse("fec", "1.0.1", 1) { CallNanoseconds = (long)(to * 1000 * timed), CallsTimed = timed },
                new StackVersionUse("fec", "1.0.0", 1) { CallNanoseconds = (long)(from * 1000 * timed), CallsTimed = timed }],
        };
        // A slow host (4 µs a call on both) and a fast one (1 µs): each compared with itself, both within 1.5x.
        var passed = RolloutGates.Cpu(r, [Host("h1", 4.4, 4), Host("h2", 1.1, 1)], options);
        Assert.Equal(GateVerdict.Passed, passed.Verdict);
        Assert.Equal("within 1.5x on h1 4.40 µs a call on 1.0.1 vs 4.00 on 1.0.0, h2 1.10 µs a call on 1.0.1 vs 1.00 on 1.0.0", passed.Evidence);
        // Twice as slow on one host: pending; on two: failed, with both hosts' figures.
        Assert.Equal(GateVerdict.Pending, RolloutGates.Cpu(r, [Host("h1", 8, 4), Host("h2", 1.1, 1)], options).Verdict);
        var failed = RolloutGates.Cpu(r, [Host("h1", 8, 4), Host("h2", 2, 1)], options);
        Assert.Equal(GateVerdict.Failed, failed.Verdict);
        Assert.Equal("slower than 1.5x on h1 8.00 µs a call on 1.0.1 vs 4.00 on 1.0.0, h2 2.00 µs a call on 1.0.1 vs 1.00 on 1.0.0", failed.Evidence);
        // Too few calls timed on either version: nothing to compare, so the gate stands aside.
        Assert.Equal(GateVerdict.Passed, RolloutGates.Cpu(r, [Host("h1", 8, 4, timed: 100), Host("h2", 2, 1, timed: 100)], options).Verdict);
    }

    [Fact]
    public void TheNormalAndStudentQuantiles_MatchTheTables()
    {
        Assert.Equal(1.6449, RolloutGates.NormalQuantile(0.95), 4);
        Assert.Equal(2.3263, RolloutGates.NormalQuantile(0.99), 4);
        Assert.Equal(0, RolloutGates.NormalQuantile(0.5), 9);
        Assert.Equal(-3.0902, RolloutGates.NormalQuantile(0.001), 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => RolloutGates.NormalQuantile(1));
        // Student's t, as the tables give it (t(0.95, 10) 1.812, t(0.99, 4) 3.747), and the normal's for many paths.
        Assert.Equal(1.81, RolloutGates.StudentQuantile(0.95, 10), 2);
        Assert.Equal(3.7, RolloutGates.StudentQuantile(0.99, 4), 1);
        Assert.Equal(RolloutGates.NormalQuantile(0.99), RolloutGates.StudentQuantile(0.99, 100_000), 3);
    }
}
