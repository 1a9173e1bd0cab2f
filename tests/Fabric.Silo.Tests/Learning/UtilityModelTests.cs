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
        Assert.Matches(@"^model v3: 0\.\d\d ± 0\.\d\d from [\d,]+ similar outcomes \(prior 0\.\d\d\)$", seen.Why);
        // 20 % loss: far outside what the log covers.
        var unseen = scorer.Score(Fec, OutcomeGenerator.Conditions(0.2), policy);
        Assert.Equal("prior", unseen.Source);
        Assert.Contains("model v3 has 0 similar outcomes", unseen.Why, StringComparison.Ordinal);
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
}
