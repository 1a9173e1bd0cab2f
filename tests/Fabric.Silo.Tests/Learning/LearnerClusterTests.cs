using Fabric.Repository;
using Fabric.Silo.Learning;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace Fabric.Silo.Tests.Learning;

/// <summary>
/// A real two-silo cluster sharing one learning store: the learner (one activation in the cluster) trains from the
/// outcome log, adopts a version only when it beats what is in service, and both silos score with that version.
/// </summary>
public sealed class LearnerClusterTests : IAsyncLifetime
{
    private readonly string _store = Directory.CreateTempSubdirectory("fabric-learning-cluster-").FullName;
    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync()
    {
        var builder = new InProcessTestClusterBuilder(2);
        builder.ConfigureSilo((_, silo) => silo.AddMemoryGrainStorage(Storage.Name)
            .AddFabricControlPlane(ClusterFixture.Selector, new LearningOptions(_store, TrainEverySeconds: 0, MinOutcomes: 500)));
        _cluster = builder.Build();
        await _cluster.DeployAsync();
        var catalog = _cluster.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        foreach (var stack in Catalogs.All)
        {
            await catalog.PublishAsync(stack);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _cluster.DisposeAsync();
        Directory.Delete(_store, recursive: true);
    }

    private static void Log(IRepositoryStore store, IEnumerable<LoggedOutcome> outcomes)
    {
        var log = new OutcomeLog(store, TimeProvider.System, 7);
        log.Append(outcomes);
        log.Flush();
    }

    [Fact]
    public async Task TheLearner_AdoptsAModelThatBeatsThePrior_BothSilosScoreWithIt_AndAWorseOneIsNotAdopted()
    {
        var learner = _cluster.Client.GetGrain<ILearnerGrain>(ILearnerGrain.Key);
        var store = new LocalFolderStore(_store);
        Assert.Equal(0, (await learner.EvaluateAsync()).ModelVersion);

        Log(store, OutcomeGenerator.Generate(100, seed: 1));
        var tooFew = await learner.TrainAsync();
        Assert.False(tooFew.Adopted);
        Assert.Contains("100 outcomes logged under the current reward (schema ", tooFew.Reason, StringComparison.Ordinal);
        Assert.Contains("training needs 500", tooFew.Reason, StringComparison.Ordinal);
        // Outcomes whose utility another reward computed (an earlier schema, or logged before versions were recorded)
        // are not learned: a model taught two scales at once learns neither.
        Log(store, OutcomeGenerator.Generate(1000, seed: 3).Select(o => o with { RewardVersion = UtilityModel.SchemaVersion - 1 }));
        Log(store, OutcomeGenerator.Generate(1000, seed: 4).Select(o => o with { RewardVersion = null }));
        Assert.Contains("100 outcomes logged under the current reward", (await learner.TrainAsync()).Reason, StringComparison.Ordinal);

        Log(store, OutcomeGenerator.Generate(3000, seed: 2));
        var first = await learner.TrainAsync();
        Assert.True(first.Adopted, first.Reason);
        Assert.Equal("the prior", first.Candidate!.Baseline);
        Assert.True(first.Candidate.HoldoutError < first.Candidate.BaselineError, first.Reason);
        Assert.Equal(1, (await learner.GetAsync()).InService!.Version);

        // Every silo's scorer moves to version 1 on its own (its refresher asks the learner).
        var scorers = _cluster.Silos.Select(s => s.ServiceProvider.GetRequiredService<LearnedScorer>()).ToList();
        await Eventually.TrueAsync(() => Task.FromResult(scorers.All(s => s.Version == 1)), TimeSpan.FromSeconds(20), "both silos score with v1",
            () => Task.FromResult(string.Join(", ", scorers.Select(s => $"v{s.Version}"))));
        var conditions = OutcomeGenerator.Conditions(0.03);
        Assert.Equal(scorers[0].Score(Catalogs.Fec, conditions, Catalogs.Policy("latency")), scorers[1].Score(Catalogs.Fec, conditions, Catalogs.Policy("latency")));
        Assert.Equal("model v1", scorers[0].Score(Catalogs.Fec, conditions, Catalogs.Policy("latency")).Source);

        // The operators' view: the newest outcomes judged by v1. The rule is known (fec 0.6; std-ipv4 0.8 − 15 × loss, the
        // log holding each half the time), so the regret of those choices is known too: at loss L the better stack is worth
        // max(0.6, 0.8 − 15L), and half the outcomes took the worse one. Stacks the log never holds are not counted.
        var evaluation = await learner.EvaluateAsync();
        Assert.Equal(1, evaluation.ModelVersion);
        Assert.Equal(LearnerGrain.EvaluatedOutcomes, evaluation.Evaluated);
        Assert.Equal(LearnerGrain.ReturnedOutcomes, evaluation.Recent.Length);
        Assert.True(evaluation.MeanAbsoluteError < 0.05, $"error {evaluation.MeanAbsoluteError}");
        var newest = OutcomeGenerator.Generate(3000, seed: 2)[^LearnerGrain.EvaluatedOutcomes..];
        var expectedRegret = newest.Average(o => Math.Max(OutcomeGenerator.Rule("fec", o.Features.Loss), OutcomeGenerator.Rule("std-ipv4", o.Features.Loss))
            - OutcomeGenerator.Rule(o.Stack, o.Features.Loss));
        Assert.InRange(evaluation.EstimatedRegret, expectedRegret - 0.03, expectedRegret + 0.03);
        Assert.Equal(0, evaluation.ExplorationShare);
        Assert.All(evaluation.Recent, p => Assert.InRange(p.Predicted - p.Observed, -0.1, 0.1));
        Assert.Equal(evaluation.At, (await learner.EvaluateAsync()).At); // computed at most every 10 s

        // Trained again on the same log, the candidate is no better than v1 on the held-back newest tenth: not adopted.
        var second = await learner.TrainAsync();
        Assert.Equal("model v1", second.Candidate!.Baseline);
        Assert.False(second.Adopted, second.Reason);
        Assert.Equal(1, (await learner.GetAsync()).InService!.Version);

        // Switched off, every silo goes back to the prior; on again, to the model.
        await learner.SetLearningEnabledAsync(false);
        await Eventually.TrueAsync(() => Task.FromResult(scorers.All(s => !s.Enabled)), TimeSpan.FromSeconds(20), "learning off everywhere",
            () => Task.FromResult(string.Join(", ", scorers.Select(s => s.Enabled))));
        Assert.Equal("prior", scorers[1].Score(Catalogs.Fec, conditions, Catalogs.Policy("latency")).Source);
        await learner.SetLearningEnabledAsync(true);
        await Eventually.TrueAsync(() => Task.FromResult(scorers.All(s => s.Enabled)), TimeSpan.FromSeconds(20), "learning on everywhere",
            () => Task.FromResult(string.Join(", ", scorers.Select(s => s.Enabled))));
    }
}
