using Fabric.Silo.Selection;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// Experimental stacks (published for trial): never given to a VM whose policy does not admit them, given to those that
/// do only by exploration and only for the seconds their outcomes take to judge them, never pinned, never carrying a
/// confidential VM unless they encrypt.
/// </summary>
public class ExperimentalStackTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 4, 12, 0, 0, TimeSpan.Zero);
    private readonly StackSelector _selector = new(new ProfileScorer(), new SelectorOptions(0.10, TimeSpan.FromSeconds(2)));

    /// <summary>A trial stack whose profile promises more than any stable one on a lossy path (so only the rules keep it out).</summary>
    private static readonly StackInfo Trial = new("fec-next", "0.9.0", "ipv4", 16, 0.01, 0, 0.2, false, "parity, cheaper", Experimental: true);

    private static readonly StackInfo SecureTrial = new("secure-next", "0.9.0", "ipv4", 32, 0, 0, 0.2, true, "sealed parity", Experimental: true);

    private static readonly List<StackInfo> WithTrials = [.. All, Trial, SecureTrial];

    private static readonly IReadOnlySet<string> Runs = WithTrials.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);

    private (Decision Decision, PendingSwitch? Pending) Select(Policy policy, string? current, double random, PathConditions? path = null,
        DateTimeOffset? now = null, Observed? observed = null, DateTimeOffset? since = null) =>
        _selector.Select("vm1", "host-b", policy, path ?? Path(30, 0.05), WithTrials, Runs, current, null, now ?? T0, random, observed: observed, currentSince: since);

    [Fact]
    public void APolicyThatDoesNotAdmitThem_NeverGetsOne_OverThousandsOfDecisions()
    {
        var random = new Random(5);
        foreach (var policy in new[] { Policy("latency", explore: 0.2), Policy("bulk", explore: 0.2), Policy("general", security: "confidential", explore: 0.2) })
        {
            foreach (var current in new string?[] { null, "std-ipv4", "fec", "secure" })
            {
                for (var i = 0; i < 2000; i++)
                {
                    var (decision, _) = Select(policy, current, random.NextDouble());
                    Assert.DoesNotContain(decision.Candidates, c => c.Stack is "fec-next" or "secure-next");
                    Assert.NotEqual("fec-next", decision.Stack);
                    Assert.NotEqual("secure-next", decision.Stack);
                }
            }
        }
    }

    [Fact]
    public void AnAdmittingPolicy_GetsOneOnlyByExploration_WithinItsShare()
    {
        var random = new Random(7);
        var policy = Policy("latency", explore: 0.1) with { Experimental = true };
        const int Decisions = 20_000;
        var (tried, explored) = (0, 0);
        for (var i = 0; i < Decisions; i++)
        {
            var (decision, _) = Select(policy, "fec", random.NextDouble());
            // Scored with the rest (the prior ranks it first here), but the best is the best stable stack.
            Assert.Contains(decision.Candidates, c => c.Stack == "fec-next");
            explored += decision.Exploration ? 1 : 0;
            if (decision.Stack == "fec-next")
            {
                tried++;
                Assert.True(decision.Exploration, decision.Reason);
                Assert.True(decision.Propensity is > 0 and < 0.1, $"propensity {decision.Propensity}");
            }
        }
        Assert.InRange(explored / (double)Decisions, 0.09, 0.11);
        Assert.True(tried > 0, "an admitting policy's exploration never tried the experimental stack");
        // Its first decision, and one without exploration, is the best stable stack.
        Assert.NotEqual("fec-next", Select(policy, null, 0.01).Decision.Stack);
        Assert.NotEqual("fec-next", Select(policy with { ExplorationShare = 0 }, "std-ipv4", 0.01).Decision.Stack);
    }

    [Fact]
    public void OnTrial_ItStaysUntilTheVmsOutcomesAreIn_ThenThePolicysChoiceReturns()
    {
        var policy = Policy("latency", explore: 0.1) with { Experimental = true };
        var onTrial = Select(policy, "fec-next", 0.99, now: T0.AddSeconds(2), since: T0).Decision;
        Assert.Equal("fec-next", onTrial.Stack);
        Assert.Contains("on trial", onTrial.Reason, StringComparison.Ordinal);

        // Its outcomes are in, however good: back to the best stable stack, and the reason carries what it gave.
        var judged = Select(policy, "fec-next", 0.99, now: T0.AddSeconds(6), since: T0, observed: new Observed("fec-next", 0.97, 0.02, 3, TimeSpan.FromSeconds(2))).Decision;
        Assert.True(judged.Changed);
        Assert.NotEqual("fec-next", judged.Stack);
        Assert.Contains("ran its trial (the VM got 0.97", judged.Reason, StringComparison.Ordinal);

        // No outcomes by the time they should have come (no traffic): back as well.
        Assert.NotEqual("fec-next", Select(policy, "fec-next", 0.99, now: T0.AddSeconds(30), since: T0).Decision.Stack);
    }

    [Fact]
    public void AConfidentialVm_IsTriedOnlyOnAnExperimentalStackThatEncrypts()
    {
        var random = new Random(9);
        var policy = Policy("latency", security: "confidential", explore: 0.2) with { Experimental = true };
        var tried = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < 5000; i++)
        {
            var (decision, _) = Select(policy, "secure", random.NextDouble());
            Assert.Contains(decision.Stack, new[] { "secure", "secure-next" });
            tried.Add(decision.Stack);
        }
        Assert.Contains("secure-next", tried);
    }

    [Fact]
    public void APinnedStackWhoseNewestVersionIsExperimental_GivesWayToTheRestOfThePolicy()
    {
        var catalog = All.Select(s => s.Id == "fec" ? s with { Version = "1.1.0", Experimental = true } : s).ToList();
        var (decision, _) = _selector.Select("vm1", "host-b", Policy("latency", pin: "fec"), Path(30, 0.05), catalog, HostStacks, "fec", null, T0, 0.5);
        Assert.NotEqual("fec", decision.Stack);
        Assert.StartsWith("pinned fec is experimental in 1.1.0, so the rest of the policy decides: ", decision.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void ThePolicyValidator_RefusesAPinOrAnAllowOfAnExperimentalStack_ThePolicyDoesNotAdmit_NamingIt()
    {
        var pinned = PolicyValidator.Validate(Policy("latency", pin: "fec-next") with { Experimental = true }, WithTrials);
        Assert.Contains(pinned, e => e.StartsWith("pin: 'fec-next' 0.9.0 is experimental", StringComparison.Ordinal));

        var allowed = PolicyValidator.Validate(Policy("latency", allow: ["std-ipv4", "fec-next"]), WithTrials);
        Assert.Contains("allow: 'fec-next' 0.9.0 is experimental and the policy does not admit experimental stacks (experimental: true)", allowed);
        Assert.Empty(PolicyValidator.Validate(Policy("latency", allow: ["std-ipv4", "fec-next"]) with { Experimental = true }, WithTrials));

        // Nothing but a trial to run: nothing to run.
        var onlyTrials = PolicyValidator.Validate(Policy("latency", allow: ["fec-next"]) with { Experimental = true }, WithTrials);
        Assert.Contains(onlyTrials, e => e.Contains("leave no published ipv4 stack", StringComparison.Ordinal));
    }

    [Fact]
    public void APolicyAdmittingExperimentalStacks_IsAnotherPolicy_AndSurvivesAWithExpression()
    {
        var admitting = Policy("latency") with { Experimental = true };
        Assert.NotEqual(Policy("latency"), admitting);
        Assert.Equal(admitting, admitting with { Allow = [] });
        Assert.True((admitting with { ExplorationShare = 0.1 }).Experimental);
    }
}
