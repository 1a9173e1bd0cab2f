using Fabric.Repository;
using Fabric.Silo.Learning;
using Fabric.Silo.Selection;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests.Learning;

public sealed class UtilityModelTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("fabric-model-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Training_LearnsAKnownRule_FromASeededLog_AndSaysWhatMatters()
    {
        using var model = UtilityModel.Train(OutcomeGenerator.Generate(4000, seed: 1), OutcomeGenerator.Generate(400, seed: 2), 1, OutcomeGenerator.T0);

        foreach (var loss in new[] { 0.0, 0.005, 0.03, 0.045 })
        {
            var std = model.Predict("std-ipv4", "latency", OutcomeGenerator.Conditions(loss)).Utility;
            var fec = model.Predict("fec", "latency", OutcomeGenerator.Conditions(loss)).Utility;
            Assert.InRange(std, OutcomeGenerator.Rule("std-ipv4", loss) - 0.05, OutcomeGenerator.Rule("std-ipv4", loss) + 0.05);
            Assert.InRange(fec, 0.55, 0.65);
            Assert.Equal(loss > 0.013, fec > std);
        }
        Assert.True(model.Info.HoldoutError < 0.03, $"holdout error {model.Info.HoldoutError}");
        // Loss and the stack decide; RTT does not (the rule ignores it).
        var importance = model.Info.Importance.ToDictionary(f => f.Feature, f => f.Importance);
        Assert.True(importance["Loss"] > 10 * Math.Abs(importance["Rtt"]), string.Join(", ", model.Info.Importance));
        Assert.True(importance["stack"] > 10 * Math.Abs(importance["Rtt"]), string.Join(", ", model.Info.Importance));
    }

    /// <summary>
    /// A prediction is as sure as the outcomes behind it agree: outcomes that follow the rule closely make a narrow
    /// uncertainty (narrow enough for fec's gain at 4.5 % loss to clear it), noisy ones a wide one, and few outcomes a wider
    /// one than many of the same noise.
    /// </summary>
    [Fact]
    public void ThePredictionIsAsSureAsTheOutcomesAgree()
    {
        using var steady = UtilityModel.Train(OutcomeGenerator.Generate(4000, seed: 1), [], 1, OutcomeGenerator.T0);
        using var noisy = UtilityModel.Train(OutcomeGenerator.Generate(4000, seed: 1, noise: 0.8), [], 2, OutcomeGenerator.T0);
        using var few = UtilityModel.Train(OutcomeGenerator.Generate(300, seed: 1, noise: 0.8), [], 3, OutcomeGenerator.T0);
        var at = OutcomeGenerator.Conditions(0.045);
        double Uncertainty(UtilityModel model, string stack) => model.Predict(stack, "latency", at).Uncertainty;

        var gain = steady.Predict("fec", "latency", at).Utility - steady.Predict("std-ipv4", "latency", at).Utility;
        var both = Math.Sqrt(Math.Pow(Uncertainty(steady, "fec"), 2) + Math.Pow(Uncertainty(steady, "std-ipv4"), 2));
        Assert.True(gain > 0.4 && both < 0.1, $"gain {gain:0.###}, uncertainty of the difference {both:0.###}");
        foreach (var stack in new[] { "fec", "std-ipv4" })
        {
            Assert.True(Uncertainty(noisy, stack) > 3 * Uncertainty(steady, stack), $"{stack}: noisy ±{Uncertainty(noisy, stack):0.###}, steady ±{Uncertainty(steady, stack):0.###}");
            Assert.True(Uncertainty(few, stack) > Uncertainty(noisy, stack), $"{stack}: few ±{Uncertainty(few, stack):0.###}, many ±{Uncertainty(noisy, stack):0.###}");
        }
    }

    /// <summary>
    /// A fleet on steady links, each VM on a path of its own getting the same every second (the embedded fleet on
    /// stationary links): the trees know each VM from its path, so each VM's own effect must add next to nothing. Until
    /// the cross-fitting halves were mixed, nearly every path had all its minutes in one half, each VM's residual was how
    /// far trees that never saw its path missed it, and that was added to its prediction as its effect (0.35 off for one
    /// VM of twelve, and the model lost to the prior there).
    /// </summary>
    [Fact]
    public void VmsOnPathsOfTheirOwn_GetTheirOwnOutcomesPredicted_TheirEffectsAddNextToNothing()
    {
        var vms = Enumerable.Range(0, 12).Select(i => (Vm: $"vm{i}", Host: $"host-{i % 4}", Remote: $"host-{(i + 1) % 4}-{i}",
            Workload: new[] { "bulk", "latency", "general" }[i % 3], Rtt: 0.2 + (i * 9.7), Utility: 0.3 + (0.05 * i)))
            .Select(v => (v.Vm, v.Host, v.Remote, v.Workload, v.Rtt, v.Utility, Features: new OutcomeFeatures(v.Rtt, v.Rtt, 0.1, 0, 0, 100, 0.1))).ToList();
        var outcomes = new List<LoggedOutcome>();
        for (var second = 0; second < 600; second++)
        {
            foreach (var v in vms)
            {
                outcomes.Add(new LoggedOutcome(OutcomeGenerator.T0.AddSeconds(second), v.Vm, v.Remote, v.Workload, "std-ipv4", "1.0.0", 1, false,
                    v.Features, 10, v.Rtt, 0, 0.01, v.Utility) { RewardVersion = UtilityModel.SchemaVersion, Host = v.Host });
            }
        }
        using var model = UtilityModel.Train(outcomes, [], 1, OutcomeGenerator.T0);
        var seen = vms.Select(v => (v.Vm, v.Utility, P: model.Predict("std-ipv4", v.Workload, v.Features.ToConditions(OutcomeGenerator.T0), v.Vm))).ToList();
        var text = string.Join("; ", seen.Select(s => $"{s.Vm} {s.Utility:0.00}: {s.P.Utility:0.000} (effect {s.P.VmEffect:+0.000;-0.000})"));
        Assert.True(seen.All(s => Math.Abs(s.P.Utility - s.Utility) < 0.02 && Math.Abs(s.P.VmEffect) < 0.02), text);
    }

    /// <summary>
    /// Latency VMs of one host on one path, each held on its own stack (as a fleet has them, and as the learning benchmark
    /// trains): what the path showed while the host's other latency VM was on std-ipv4 tells what this VM's fec would get
    /// there. Outcomes of an unknown host, and bulk VMs (which shape the path they share), are paired only with their own.
    /// </summary>
    [Fact]
    public void LatencyVmsOfOneHost_TellEachOtherWhatTheirStacksGetOnTheSamePath_BulkVmsDoNot()
    {
        PathConditions OnStd(double loss) => new(20.5, 1, loss, 50, OutcomeGenerator.T0, 20, 100, 0.5, 2);
        using var paired = UtilityModel.Train(OutcomeGenerator.SideBySide(150, seed: 5, "latency", "host-a"), [], 1, OutcomeGenerator.T0);
        foreach (var loss in new[] { 0.004, 0.03, 0.045 })
        {
            var move = paired.Predict("fec", "latency", OnStd(loss), measuredOn: "std-ipv4");
            Assert.InRange(move.Support, 100, int.MaxValue);
            Assert.InRange(move.Utility, 0.53, 0.67);
            Assert.InRange(paired.Predict("std-ipv4", "latency", OnStd(loss), measuredOn: "std-ipv4").Utility,
                OutcomeGenerator.Rule("std-ipv4", loss) - 0.07, OutcomeGenerator.Rule("std-ipv4", loss) + 0.07);
        }
        // The same log without hosts, and the same log of bulk VMs: fec was never seen after conditions measured on std-ipv4,
        // so what supports it there is only its own outcomes near them (its RTT of 42 ms is in the next bin).
        using var unknownHost = UtilityModel.Train(OutcomeGenerator.SideBySide(150, seed: 5, "latency", host: null), [], 1, OutcomeGenerator.T0);
        Assert.Equal(unknownHost.Predict("fec", "latency", OnStd(0.03), measuredOn: "fec").Support, unknownHost.Predict("fec", "latency", OnStd(0.03), measuredOn: "std-ipv4").Support);
        using var bulk = UtilityModel.Train(OutcomeGenerator.SideBySide(150, seed: 5, "bulk", "host-a"), [], 1, OutcomeGenerator.T0);
        Assert.Equal(bulk.Predict("fec", "bulk", OnStd(0.03), measuredOn: "fec").Support, bulk.Predict("fec", "bulk", OnStd(0.03), measuredOn: "std-ipv4").Support);
        Assert.InRange(paired.Predict("fec", "latency", OnStd(0.03), measuredOn: "std-ipv4").Support - paired.Predict("fec", "latency", OnStd(0.03), measuredOn: "fec").Support, 100, int.MaxValue);
    }

    /// <summary>
    /// The selector decides on conditions measured on the current stack. On std-ipv4 over a lossy path the RTT sits at its
    /// floor, which no fec outcome ever showed: the model must still say what fec would get there, from the outcomes that
    /// followed such conditions on the same path.
    /// </summary>
    [Fact]
    public void ConditionsMeasuredOnTheCurrentStack_TellWhatAnotherStackWouldGet()
    {
        using var model = UtilityModel.Train(OutcomeGenerator.Phases(300, seed: 3), [], 1, OutcomeGenerator.T0);
        PathConditions OnStd(double loss) => new(20.5, 1, loss, 50, OutcomeGenerator.T0, 20, 100, 0.5, 2);
        PathConditions OnFec(double loss) => new(42, 1, loss, 50, OutcomeGenerator.T0, 20, 100, 0.5, 2);
        foreach (var loss in new[] { 0.0, 0.004, 0.03, 0.045 })
        {
            var stay = model.Predict("std-ipv4", "latency", OnStd(loss), measuredOn: "std-ipv4").Utility;
            var move = model.Predict("fec", "latency", OnStd(loss), measuredOn: "std-ipv4").Utility;
            Assert.InRange(move, 0.53, 0.67);
            Assert.InRange(stay, OutcomeGenerator.Rule("std-ipv4", loss) - 0.07, OutcomeGenerator.Rule("std-ipv4", loss) + 0.07);
            // And back: measured on fec, what std-ipv4 would get.
            Assert.InRange(model.Predict("std-ipv4", "latency", OnFec(loss), measuredOn: "fec").Utility,
                OutcomeGenerator.Rule("std-ipv4", loss) - 0.07, OutcomeGenerator.Rule("std-ipv4", loss) + 0.07);
        }
        var scorer = new LearnedScorer(new ProfileScorer(), minSupport: 10);
        scorer.Use(model, enabled: true);
        var selector = new StackSelector(scorer, new SelectorOptions(Sustain: TimeSpan.Zero));
        string Choose(double loss)
        {
            var decision = selector.Select("vm1", "host-b", Catalogs.Policy("latency") with { Allow = ["std-ipv4", "fec"] }, OnStd(loss), All, HostStacks,
                "std-ipv4", null, OutcomeGenerator.T0, 0.99).Decision;
            // The model scored both: fec from the outcomes that followed such conditions on std-ipv4.
            Assert.All(decision.Candidates, c => Assert.Equal("model v1", c.Source));
            return decision.Stack;
        }
        Assert.Equal("fec", Choose(0.03));
        Assert.Equal("std-ipv4", Choose(0.002));
        // Conditions measured on a stack the model never saw them measured on: only fec's own outcomes near them count.
        Assert.Equal(model.Predict("fec", "latency", OnStd(0.03), measuredOn: "fec").Support, model.Predict("fec", "latency", OnStd(0.03), measuredOn: "arq-bulk").Support);
    }

    /// <summary>
    /// The reward charges extra bytes by the share of the path they take. A request/response VM whose stack doubles its
    /// few kilobytes a second (fec's parity for a lone request) loses almost nothing for it, and its p99 decides; a bulk VM
    /// whose extra bytes are 15 % of its goodput near the path's capacity pays about that share, as before.
    /// </summary>
    [Fact]
    public void TheRewardChargesOverhead_ByTheShareOfThePathItTakes()
    {
        var at20 = Utility.LatencyScore(20);
        var requests = Utility.Of("latency", goodputMbps: 0.08, delayP99Ms: 20, residualLoss: 0, overheadRatio: 1.5, capacityMbps: 150);
        Assert.InRange(requests, at20 * 0.999, at20);
        // Ten times the delay costs more than 0.25: the parity's bytes weigh nothing beside it.
        Assert.True(requests > Utility.Of("latency", 0.08, delayP99Ms: 200, 0, overheadRatio: 0, capacityMbps: 150) + 0.25);
        Assert.Equal(at20 * (1 - (0.15 * 140 / 150)), Utility.Of("latency", 140, 20, 0, 0.15, 150), 6);
        Assert.Equal(140 / 150.0, Utility.Of("bulk", 140, 20, 0, 0.15, 150), 6);
        // A path that never showed a capacity, or only the VM's own few kilobytes a second, is charged as one of 10 Mbit/s.
        Assert.InRange(Utility.Of("latency", 0.08, 20, 0, 1.5, capacityMbps: 0), at20 * 0.987, at20);
        Assert.InRange(Utility.Of("latency", 0.08, 20, 0, 1.5, capacityMbps: 0.1), at20 * 0.987, at20);
    }

    /// <summary>
    /// A bulk VM that sends at a set rate without TCP (the embedded fleet's backup VM: 1.9 Mbit/s) is judged on the share
    /// of its own rate it got, not of a 150 Mbit/s path it could never fill; a greedy one still on the path's.
    /// </summary>
    [Fact]
    public void ABulkVmWithAKnownDemand_IsJudgedOnItsOwnRate_AndLossStillCosts()
    {
        Assert.Equal(1.9 / 150, Utility.Of("bulk", 1.9, 20, 0, 0.25, capacityMbps: 150), 6);
        Assert.Equal(1, Utility.Of("bulk", 1.9, 20, 0, 0.25, capacityMbps: 150, demandMbps: 1.9), 6);
        Assert.Equal(0.8, Utility.Of("bulk", 1.9, 20, 0.02, 0.25, capacityMbps: 150, demandMbps: 1.9), 6);
        // A demand above the capacity changes nothing.
        Assert.Equal(140 / 150.0, Utility.Of("bulk", 140, 20, 0, 0.15, 150, demandMbps: 400), 6);
    }

    /// <summary>
    /// A p99 is scored on a log scale: twice the delay costs the same at 5 ms as at 500 (the learning benchmark and a
    /// tenant compare p99s as ratios), from 1 at a millisecond or less to 0 at five seconds; an unknown delay scores 0.
    /// </summary>
    [Fact]
    public void ALatencyScore_FallsByTheSameStepForEveryDoubling()
    {
        Assert.Equal(1, Utility.LatencyScore(0.2));
        Assert.Equal(1, Utility.LatencyScore(1));
        Assert.Equal(0, Utility.LatencyScore(5000));
        Assert.Equal(0, Utility.LatencyScore(60_000));
        Assert.Equal(0, Utility.LatencyScore(double.NaN));
        var step = Utility.LatencyScore(5) - Utility.LatencyScore(10);
        Assert.Equal(Math.Log(2) / Math.Log(5000), step, 9);
        Assert.Equal(step, Utility.LatencyScore(500) - Utility.LatencyScore(1000), 9);
        // The old 1/(1 + p99/10) put 150 and 450 ms within 0.05 of each other; here they are 0.13 apart (ln 3 / ln 5000).
        Assert.True(Utility.LatencyScore(150) - Utility.LatencyScore(450) > 0.12);
    }

    [Fact]
    public void Training_IsDeterministic_ForTheSameLogAndSeed()
    {
        using var a = UtilityModel.Train(OutcomeGenerator.Generate(1000, seed: 5), [], 1, OutcomeGenerator.T0);
        using var b = UtilityModel.Train(OutcomeGenerator.Generate(1000, seed: 5), [], 1, OutcomeGenerator.T0);
        Assert.Equal(a.Predict("std-ipv4", "latency", OutcomeGenerator.Conditions(0.02)), b.Predict("std-ipv4", "latency", OutcomeGenerator.Conditions(0.02)));
    }

    [Fact]
    public void ASavedVersion_LoadsAndPredictsTheSame_AndAnIncompleteOneIsNotLoaded()
    {
        var store = new LocalFolderStore(_folder);
        using var trained = UtilityModel.Train(OutcomeGenerator.Generate(1000, seed: 1), OutcomeGenerator.Generate(100, seed: 2), 7, OutcomeGenerator.T0);
        trained.Save(store);

        using var loaded = UtilityModel.Load(store, 7)!;
        Assert.Equal(7, loaded.Version);
        Assert.Equal(trained.Info.HoldoutError, loaded.Info.HoldoutError);
        foreach (var loss in new[] { 0.0, 0.02, 0.04 })
        {
            Assert.Equal(trained.Predict("fec", "latency", OutcomeGenerator.Conditions(loss)), loaded.Predict("fec", "latency", OutcomeGenerator.Conditions(loss)));
        }
        Assert.Null(UtilityModel.Load(store, 8));
        store.Delete("models/v7/info.json");
        Assert.Null(UtilityModel.Load(store, 7));
    }

    /// <summary>
    /// No stack answers a request sooner than a round trip: where the model predicts a latency VM more than the path's
    /// least RTT allows (here a rule that ignores RTT, as a model that carries a short path's outcomes over to a long one
    /// does), the score is that ceiling and the reason says so; a bulk VM has no such ceiling, a general VM half of it.
    /// </summary>
    [Fact]
    public void AModelsLatencyScore_IsNoHigherThanTheShortestRoundTripAllows()
    {
        using var model = UtilityModel.Train(OutcomeGenerator.Generate(4000, seed: 1), [], 4, OutcomeGenerator.T0);
        var scorer = new LearnedScorer(new ProfileScorer(), minSupport: 10);
        scorer.Use(model, enabled: true);
        var (shortPath, longPath) = (OutcomeGenerator.Conditions(0.03, rtt: 10), OutcomeGenerator.Conditions(0.03, rtt: 90));
        var predicted = model.Predict("fec", "latency", longPath).Utility;
        Assert.InRange(predicted, 0.55, 0.65);

        var onShort = scorer.Score(Fec, shortPath, Policy("latency"));
        Assert.Equal(model.Predict("fec", "latency", shortPath).Utility, onShort.Score, 9);
        Assert.DoesNotContain("at most", onShort.Why, StringComparison.Ordinal);
        // 81 ms is the least round trip of the long path: its p99 scores 0.48 at best.
        var onLong = scorer.Score(Fec, longPath, Policy("latency"));
        Assert.Equal(Utility.LatencyScore(81), onLong.Score, 9);
        Assert.True(onLong.Score < predicted - 0.05, $"{onLong.Score} against {predicted}");
        Assert.EndsWith("; at most 0.48 over the path's 81 ms round trip", onLong.Why, StringComparison.Ordinal);
        Assert.Equal(1, Utility.Ceiling("bulk", longPath));
        Assert.Equal((0.5 * Utility.LatencyScore(81)) + 0.5, Utility.Ceiling("general", longPath), 9);
        // A path whose round trip is not known yet has no ceiling; one whose least RTT is stale above the current RTT
        // is held to the current one.
        Assert.Equal(1, Utility.Ceiling("latency", longPath with { RttMs = double.NaN, MinRttMs = 0 }));
        Assert.Equal(Utility.LatencyScore(60), Utility.Ceiling("latency", longPath with { RttMs = 60 }), 9);
    }

    [Fact]
    public void AContextTheModelHasNotSeen_IsLeftToThePrior_AndTheReasonSaysWhoScored()
    {
        using var model = UtilityModel.Train(OutcomeGenerator.Generate(4000, seed: 1, maxLoss: 0.01), OutcomeGenerator.Generate(200, seed: 2, maxLoss: 0.01), 3, OutcomeGenerator.T0);
        var scorer = new LearnedScorer(new ProfileScorer());
        var policy = Policy("latency");

        var none = scorer.Score(Fec, OutcomeGenerator.Conditions(0.005), policy);
        Assert.Equal("prior", none.Source);
        Assert.StartsWith("prior (no model yet)", none.Why, StringComparison.Ordinal);

        scorer.Use(model, enabled: true);
        var seen = scorer.Score(Fec, OutcomeGenerator.Conditions(0.005), policy);
        Assert.Equal("model v3", seen.Source);
        Assert.Matches(@"^model v3: 0\.\d\d ± 0\.\d\d from [\d,]+ similar outcomes \(prior 0\.\d\d\)(; at most 0\.\d\d over the path's [\d.]+ ms round trip)?$", seen.Why);
        // 20 % loss: far outside what the log covers.
        var unseen = scorer.Score(Fec, OutcomeGenerator.Conditions(0.2), policy);
        Assert.Equal("prior", unseen.Source);
        Assert.Contains("model v3 has 0 similar outcomes", unseen.Why, StringComparison.Ordinal);
        // Beside the model's measured uncertainties, the prior's guess there is taken as uncertain as the model's error on
        // one held-back outcome (the selector applies it when another candidate is model-scored), not the 0.01 it claims
        // when it decides alone.
        Assert.True(model.Info.HoldoutError > ProfileScorer.Uncertainty);
        Assert.Equal(model.Info.HoldoutError, unseen.BesideModel, 9);
        Assert.Equal(ProfileScorer.Uncertainty, unseen.Uncertainty);
        Assert.Equal(0, none.BesideModel);
        // A stack the model never saw: the prior.
        Assert.Equal("prior", scorer.Score(ArqLowLat, OutcomeGenerator.Conditions(0.005), policy).Source);

        scorer.Use(model, enabled: false);
        Assert.StartsWith("prior (learning switched off)", scorer.Score(Fec, OutcomeGenerator.Conditions(0.005), policy).Why, StringComparison.Ordinal);
    }

    [Fact]
    public void Scoring_IsThreadSafe_AndTheSameFromEveryThread()
    {
        using var model = UtilityModel.Train(OutcomeGenerator.Generate(2000, seed: 1), [], 1, OutcomeGenerator.T0);
        var expected = model.Predict("std-ipv4", "latency", OutcomeGenerator.Conditions(0.02)).Utility;
        var results = new System.Collections.Concurrent.ConcurrentBag<double>();
        Parallel.For(0, 2000, new ParallelOptions { MaxDegreeOfParallelism = 8 }, _ => results.Add(model.Predict("std-ipv4", "latency", OutcomeGenerator.Conditions(0.02)).Utility));
        Assert.All(results, r => Assert.Equal(expected, r));
    }

    /// <summary>
    /// A guest whose traffic does not gain from a stack stops being moved to it: five VMs whose TCP collapses under random
    /// loss on std-ipv4 (CUBIC-like: 0.1, fec 0.7) and one whose TCP shrugs it off (BBR-like: std-ipv4 0.9, fec 0.7),
    /// all bulk, on the same lossy paths. The fleet's trees alone would move every VM to fec; each VM's own effect keeps the
    /// BBR-like guest on std-ipv4, and a VM the model has never seen gets the fleet's choice.
    /// </summary>
    [Fact]
    public void PerVmEffects_KeepAGuestThatDoesNotGain_OffTheStackTheFleetPrefers()
    {
        var random = new Random(11);
        var outcomes = new List<LoggedOutcome>();
        string[] vms = ["cubic-1", "cubic-2", "cubic-3", "cubic-4", "cubic-5", "bbr-1"];
        for (var i = 0; i < 2400; i++)
        {
            var vm = vms[i % vms.Length];
            var stack = (i / vms.Length) % 2 == 0 ? "std-ipv4" : "fec";
            var loss = 0.01 + (random.NextDouble() * 0.04);
            var utility = (vm, stack) switch { ("bbr-1", "std-ipv4") => 0.9, (_, "std-ipv4") => 0.1, _ => 0.7 } + ((random.NextDouble() - 0.5) * 0.04);
            outcomes.Add(new LoggedOutcome(OutcomeGenerator.T0.AddSeconds(i), vm, "host-b", "bulk", stack, "1.0.0", 1, false,
                new OutcomeFeatures(20, 18, 1, loss, 0.5, 100, 2), 10, 30, 0, 0.1, utility));
        }
        using var model = UtilityModel.Train(outcomes, [], 1, OutcomeGenerator.T0);
        var lossy = OutcomeGenerator.Conditions(0.03, rtt: 20);
        var fleet = model.Predict("std-ipv4", "bulk", lossy);
        Assert.InRange(fleet.Utility, 0.15, 0.45); // about the fleet's average guest: (5 × 0.1 + 0.9) / 6
        Assert.Equal(0, fleet.VmOutcomes);
        var bbr = model.Predict("std-ipv4", "bulk", lossy, "bbr-1");
        Assert.Equal(200, bbr.VmOutcomes);
        Assert.InRange(bbr.Utility, 0.8, 1.0); // 0.9, shrunk towards the fleet (200 of its own against 20), on trees that overfit a little
        Assert.InRange(model.Predict("fec", "bulk", lossy, "bbr-1").Utility, 0.65, 0.75);
        // A clean path is another context: its effect there is unknown, so it is the fleet's.
        Assert.Equal(0, model.Predict("std-ipv4", "bulk", OutcomeGenerator.Conditions(0), "bbr-1").VmOutcomes);

        var scorer = new LearnedScorer(new ProfileScorer(), minSupport: 10);
        scorer.Use(model, enabled: true);
        var selector = new StackSelector(scorer, new SelectorOptions(Sustain: TimeSpan.Zero));
        string Choose(string vm) => selector.Select(vm, "host-b", Catalogs.Policy("bulk") with { Allow = ["std-ipv4", "fec"] }, lossy, All, HostStacks, null, null,
            OutcomeGenerator.T0, 0.99).Decision.Stack;
        Assert.Equal("std-ipv4", Choose("bbr-1"));
        Assert.Equal("fec", Choose("cubic-3"));
        Assert.Equal("fec", Choose("a-new-vm"));
        var why = scorer.Score(StdIPv4, lossy, Catalogs.Policy("bulk"), "bbr-1").Why;
        Assert.Contains("this VM +0.", why, StringComparison.Ordinal);
        Assert.Contains("from 200 of its own", why, StringComparison.Ordinal);
    }
}
