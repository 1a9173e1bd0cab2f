using System.Collections.Immutable;
using System.Diagnostics;
using System.Text.Json;
using Fabric.Repository;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Trainers.FastTree;

namespace Fabric.Silo.Learning;

/// <summary>
/// The fleet's model: predicts a stack's utility (<see cref="Utility"/>) for a workload on a path's conditions. A
/// FastTree regression (Microsoft.ML) over the conditions, the stack and the workload, trained from scratch each time
/// (trees do not update incrementally). Beside the trees it keeps how many training outcomes fell near each context
/// (stack, workload, loss and RTT each binned by factors of two): a prediction from a context the model has seen little
/// of says so, and the selector leaves it to the prior. Prediction is thread-safe (one engine per thread).
/// </summary>
public sealed class UtilityModel : IDisposable
{
    /// <summary>The feature schema; a stored model of another schema version is not loaded.</summary>
    public const int SchemaVersion = 2;

    /// <summary>The default of <see cref="LearningOptions.MinSupport"/>: fewer training outcomes near a context than this,
    /// and the model's prediction there is not trusted.</summary>
    public const int DefaultMinSupport = 30;

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private readonly MLContext _ml;
    private readonly ITransformer _model;
    private readonly ThreadLocal<PredictionEngine<UtilityRow, UtilityPrediction>> _engines;
    private readonly IReadOnlyDictionary<string, int> _support;
    private readonly IReadOnlyDictionary<string, VmEffect> _effects;
    private double _error;

    /// <summary>A VM's own outcomes count as evidence against this many outcomes' worth of the fleet's prediction.</summary>
    public const int EffectShrinkage = 20;

    private UtilityModel(MLContext ml, ITransformer model, IReadOnlyDictionary<string, int> support, IReadOnlyDictionary<string, VmEffect> effects, double error, ModelInfo info)
    {
        _ml = ml;
        _model = model;
        _support = support;
        _effects = effects;
        _error = error;
        Info = info;
        _engines = new ThreadLocal<PredictionEngine<UtilityRow, UtilityPrediction>>(() => _ml.Model.CreatePredictionEngine<UtilityRow, UtilityPrediction>(_model), trackAllValues: true);
    }

    public ModelInfo Info { get; private set; }

    public long Version => Info.Version;

    /// <summary>Trains on <paramref name="training"/>; <paramref name="holdout"/> measures it (error, feature importance).</summary>
    public static UtilityModel Train(IReadOnlyList<LoggedOutcome> training, IReadOnlyList<LoggedOutcome> holdout, long version, DateTimeOffset now, int seed = 1)
    {
        var watch = Stopwatch.StartNew();
        var ml = new MLContext(seed);
        var model = Fit(ml, training, trees: 150);
        var trained = new UtilityModel(ml, model, Support(training), Effects(ml, training), 0, new ModelInfo(version, now, training.Count, watch.Elapsed.TotalSeconds, 0, 0, "", [], holdout.Count));
        trained._error = holdout.Count == 0 ? 0 : trained.MeanAbsoluteError(holdout);
        var importance = holdout.Count == 0 ? ImmutableArray<FeatureImportance>.Empty : Importance(ml, model, holdout);
        trained.Info = trained.Info with { HoldoutError = trained._error, Importance = importance };
        return trained;
    }

    /// <summary>
    /// The version to serve once <paramref name="evaluated"/> — the same recipe trained without the held-back outcomes —
    /// has earned adoption: trained on <paramref name="all"/> outcomes, the newest included (they are the conditions the
    /// fleet sees now), and carrying the evaluated model's held-back error, importance and comparison, since a model
    /// judged on outcomes it trained on would flatter itself.
    /// </summary>
    public static UtilityModel Refit(IReadOnlyList<LoggedOutcome> all, UtilityModel evaluated, int seed = 1)
    {
        var watch = Stopwatch.StartNew();
        var ml = new MLContext(seed);
        var model = Fit(ml, all, trees: 150);
        return new UtilityModel(ml, model, Support(all), Effects(ml, all), evaluated._error,
            evaluated.Info with { Outcomes = all.Count, TrainingSeconds = evaluated.Info.TrainingSeconds + watch.Elapsed.TotalSeconds });
    }

    private static Dictionary<string, int> Support(IReadOnlyList<LoggedOutcome> outcomes) =>
        outcomes.GroupBy(o => Bin(o.Stack, o.Workload, o.Features.Loss, o.Features.RttMs)).ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);

    /// <summary>Measures the model again on <paramref name="holdout"/> (outcomes it did not train on): its error and importance.</summary>
    public void Rejudge(IReadOnlyList<LoggedOutcome> holdout)
    {
        _error = holdout.Count == 0 ? 0 : MeanAbsoluteError(holdout);
        var importance = holdout.Count > 0 && _model is TransformerChain<RegressionPredictionTransformer<FastTreeRegressionModelParameters>> trained
            ? Importance(_ml, trained, holdout) : Info.Importance;
        Info = Info with { HoldoutError = _error, HoldoutOutcomes = holdout.Count, Importance = importance };
    }

    /// <summary>The same model, described as compared with <paramref name="baseline"/> (error on the same holdout).</summary>
    public UtilityModel ComparedWith(string baseline, double baselineError)
    {
        Info = Info with { Baseline = baseline, BaselineError = baselineError };
        return this;
    }

    /// <summary>
    /// Per-VM effects: how far each VM's own outcomes on a stack landed from what the fleet's trees predict for them, on
    /// lossy (≥ 0.5 %) and on clean paths apart — what the path's features cannot see of a guest (a guest whose TCP shrugs
    /// off random loss gains nothing from fec; one whose TCP takes every loss as congestion gains much). Shrunk towards zero by
    /// <see cref="EffectShrinkage"/>, so a VM with few outcomes is the fleet's average.
    /// </summary>
    /// <remarks>
    /// The residuals are cross-fitted: each half of the training outcomes is judged by trees grown on the other half, since
    /// trees judging the outcomes they were grown on have already absorbed part of each VM's effect (with few VMs, the
    /// trees memorize which loss values were whose).
    /// </remarks>
    private static Dictionary<string, VmEffect> Effects(MLContext ml, IReadOnlyList<LoggedOutcome> training)
    {
        var halves = new[] { training.Where((_, i) => i % 2 == 0).ToList(), training.Where((_, i) => i % 2 == 1).ToList() };
        var residuals = new List<(LoggedOutcome Outcome, double Residual)>(training.Count);
        for (var h = 0; h < 2; h++)
        {
            if (halves[1 - h].Count == 0 || halves[h].Count == 0)
            {
                continue;
            }
            var fold = Fit(ml, halves[1 - h], trees: 60);
            using var engine = ml.Model.CreatePredictionEngine<UtilityRow, UtilityPrediction>(fold);
            residuals.AddRange(halves[h].Select(o => (o, o.Utility - Math.Clamp(engine.Predict(UtilityRow.Of(o)).Score, 0, 1))));
        }
        // Measured against every VM's residual on the same stack and kind of path: what the half-size trees get wrong for
        // everyone is theirs, not the VM's.
        var fleet = residuals.GroupBy(r => EffectKey("", r.Outcome.Stack, r.Outcome.Features.Loss), StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.Average(r => r.Residual), StringComparer.Ordinal);
        return residuals.GroupBy(r => EffectKey(r.Outcome.VmId, r.Outcome.Stack, r.Outcome.Features.Loss), StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => new VmEffect(g.Sum(r => r.Residual - fleet[EffectKey("", r.Outcome.Stack, r.Outcome.Features.Loss)]), g.Count()), StringComparer.Ordinal);
    }

    private static TransformerChain<RegressionPredictionTransformer<FastTreeRegressionModelParameters>> Fit(MLContext ml, IReadOnlyList<LoggedOutcome> outcomes, int trees) =>
        ml.Transforms.Categorical.OneHotEncoding("StackKey", nameof(UtilityRow.Stack))
            .Append(ml.Transforms.Categorical.OneHotEncoding("WorkloadKey", nameof(UtilityRow.Workload)))
            .Append(ml.Transforms.Concatenate("Features", ["StackKey", "WorkloadKey", .. UtilityRow.Numeric]))
            .Append(ml.Regression.Trainers.FastTree(new FastTreeRegressionTrainer.Options
            {
                NumberOfLeaves = 31,
                NumberOfTrees = trees,
                MinimumExampleCountPerLeaf = 10,
                LearningRate = 0.15,
                // One core: the silo keeps serving while it trains.
                NumberOfThreads = 1,
            }))
            .Fit(ml.Data.LoadFromEnumerable(outcomes.Select(UtilityRow.Of)));

    private static string EffectKey(string vmId, string stack, double loss) => $"{vmId}|{stack}|{(loss >= 0.005 ? "lossy" : "clean")}";

    /// <summary>
    /// Predicted utility, how many training outcomes were near this context, how uncertain it is, and — for a VM the
    /// model has outcomes of — the VM's own effect on this stack (already in the utility) and how many outcomes it rests on.
    /// </summary>
    public Prediction Predict(string stack, string workload, PathConditions conditions, string? vmId = null)
    {
        var fleet = Math.Clamp(_engines.Value!.Predict(UtilityRow.Of(stack, workload, OutcomeFeatures.Of(conditions))).Score, 0, 1);
        var support = _support.GetValueOrDefault(Bin(stack, workload, conditions.Loss, conditions.RttMs));
        // The holdout's mean error, widened where the model saw few outcomes.
        var uncertainty = _error * (1 + (3 / Math.Sqrt(Math.Max(support, 1))));
        var effect = vmId is not null ? _effects.GetValueOrDefault(EffectKey(vmId, stack, conditions.Loss)) : null;
        return new Prediction(Math.Clamp(fleet + (effect?.Value ?? 0), 0, 1), support, uncertainty, effect?.Value ?? 0, effect?.Count ?? 0);
    }

    /// <summary>Mean absolute error of the predictions for <paramref name="outcomes"/>, each VM's own effects included (as the selector scores).</summary>
    public double MeanAbsoluteError(IReadOnlyList<LoggedOutcome> outcomes) =>
        outcomes.Count == 0 ? 0 : outcomes.Average(o => Math.Abs(Predict(o.Stack, o.Workload, o.Features.ToConditions(o.At), o.VmId).Utility - o.Utility));

    /// <summary>Writes the version (trees, support, description) under models/vN/ in the learning store.</summary>
    public void Save(IRepositoryStore store)
    {
        using var stream = new MemoryStream();
        _ml.Model.Save(_model, null, stream);
        var prefix = $"models/v{Version}";
        store.Write($"{prefix}/model.zip", stream.ToArray());
        store.Write($"{prefix}/support.json", JsonSerializer.SerializeToUtf8Bytes(_support, Json));
        store.Write($"{prefix}/vm-effects.json", JsonSerializer.SerializeToUtf8Bytes(_effects, Json));
        // The description last: a version whose info.json exists is complete.
        store.Write($"{prefix}/info.json", JsonSerializer.SerializeToUtf8Bytes(new StoredInfo(SchemaVersion, _error, Info), Json));
    }

    /// <summary>Records which version is in service (models/in-service.json), for a learner that lost its state.</summary>
    public static void WriteInService(IRepositoryStore store, ModelInfo info) => store.Write("models/in-service.json", JsonSerializer.SerializeToUtf8Bytes(info, Json));

    /// <summary>The version the store says is in service, or null.</summary>
    public static ModelInfo? ReadInService(IRepositoryStore store) =>
        store.Read("models/in-service.json") is { } bytes ? JsonSerializer.Deserialize<ModelInfo>(bytes, Json) : null;

    /// <summary>Loads version <paramref name="version"/>; null when it is not (completely) stored or of another schema.</summary>
    public static UtilityModel? Load(IRepositoryStore store, long version)
    {
        var prefix = $"models/v{version}";
        if (store.Read($"{prefix}/info.json") is not { } infoBytes || JsonSerializer.Deserialize<StoredInfo>(infoBytes, Json) is not { Schema: SchemaVersion } info)
        {
            return null;
        }
        var ml = new MLContext(1);
        using var stream = new MemoryStream(store.Read($"{prefix}/model.zip") ?? throw new InvalidDataException($"{store.Location}: {prefix}/model.zip is missing"));
        var model = ml.Model.Load(stream, out _);
        var support = JsonSerializer.Deserialize<Dictionary<string, int>>(store.Read($"{prefix}/support.json") ?? "{}"u8.ToArray(), Json)!;
        var effects = JsonSerializer.Deserialize<Dictionary<string, VmEffect>>(store.Read($"{prefix}/vm-effects.json") ?? "{}"u8.ToArray(), Json)!;
        return new UtilityModel(ml, model, support, effects, info.Error, info.Info);
    }

    public void Dispose()
    {
        foreach (var engine in _engines.Values)
        {
            engine.Dispose();
        }
        _engines.Dispose();
    }

    /// <summary>
    /// What "near" means for support: the same stack and workload, loss within a factor of 4 (0; 0.01–0.04 %; …; above
    /// 2.56 %) and RTT within a factor of 4 (below 2 ms; 2–8; 8–32; 32–128; above 128 ms). Coarse on purpose: the trees
    /// interpolate within such a cell, and a path the fleet has never seen still falls into one it has.
    /// </summary>
    private static string Bin(string stack, string workload, double loss, double rttMs) =>
        $"{stack}|{workload}|{(loss < 1e-4 ? 0 : Math.Min(6, 1 + (int)Math.Floor(Math.Log(loss / 1e-4, 4))))}|{Math.Min(4, (int)Math.Floor(Math.Log(Math.Max(rttMs, 0.5) / 0.5, 4)))}";

    /// <summary>Permutation feature importance on (at most 2,000 of) the holdout: one-hot slots summed per feature.</summary>
    private static ImmutableArray<FeatureImportance> Importance(MLContext ml, TransformerChain<RegressionPredictionTransformer<FastTreeRegressionModelParameters>> model, IReadOnlyList<LoggedOutcome> holdout)
    {
        var data = model.Transform(ml.Data.LoadFromEnumerable(holdout.Take(2000).Select(UtilityRow.Of)));
        var pfi = ml.Regression.PermutationFeatureImportance(model.LastTransformer, data, permutationCount: 1);
        VBuffer<ReadOnlyMemory<char>> names = default;
        data.Schema["Features"].GetSlotNames(ref names);
        var slots = names.DenseValues().Select(n => n.ToString()).ToArray();
        return [.. slots.Select((name, i) => (Feature: name.Split('.')[0] switch { "StackKey" => "stack", "WorkloadKey" => "workload", var f => f }, Drop: -pfi[i].RSquared.Mean))
            .GroupBy(x => x.Feature).Select(g => new FeatureImportance(g.Key, Math.Round(g.Sum(x => x.Drop), 4))).OrderByDescending(f => f.Importance)];
    }

    private sealed record StoredInfo(int Schema, double Error, ModelInfo Info);
}

/// <summary>What the model predicts for a stack in a context (see <see cref="UtilityModel.Predict"/>).</summary>
public readonly record struct Prediction(double Utility, int Support, double Uncertainty, double VmEffect, int VmOutcomes);

/// <summary>A VM's residuals on one stack in one kind of path: their sum and how many.</summary>
public sealed record VmEffect(double Sum, int Count)
{
    public double Value => Sum / (Count + UtilityModel.EffectShrinkage);
}

/// <summary>One training or prediction row (Microsoft.ML reads its public properties by name).</summary>
internal sealed class UtilityRow
{
    public static readonly string[] Numeric =
        [nameof(Rtt), nameof(MinRtt), nameof(RttRatio), nameof(Jitter), nameof(Loss), nameof(LossBurstiness), nameof(Capacity), nameof(RttStd)];

    public string Stack { get; set; } = "";

    public string Workload { get; set; } = "";

    /// <summary>log10 of RTT in ms (RTTs span four decades).</summary>
    public float Rtt { get; set; }

    public float MinRtt { get; set; }

    /// <summary>RTT over the path's minimum: queues.</summary>
    public float RttRatio { get; set; }

    public float Jitter { get; set; }

    public float Loss { get; set; }

    public float LossBurstiness { get; set; }

    /// <summary>log10 of capacity in Mbit/s (0 when unknown).</summary>
    public float Capacity { get; set; }

    public float RttStd { get; set; }

    public float Label { get; set; }

    public static UtilityRow Of(LoggedOutcome o)
    {
        var row = Of(o.Stack, o.Workload, o.Features);
        row.Label = (float)o.Utility;
        return row;
    }

    public static UtilityRow Of(string stack, string workload, OutcomeFeatures f) => new()
    {
        Stack = stack,
        Workload = workload,
        Rtt = (float)Math.Log10(Math.Max(f.RttMs, 0.01)),
        MinRtt = (float)Math.Log10(Math.Max(f.MinRttMs, 0.01)),
        RttRatio = (float)(f.MinRttMs > 0 ? f.RttMs / f.MinRttMs : 1),
        Jitter = (float)f.JitterMs,
        Loss = (float)f.Loss,
        LossBurstiness = (float)f.LossBurstiness,
        Capacity = (float)(f.CapacityMbps > 0 ? Math.Log10(f.CapacityMbps) : 0),
        RttStd = (float)f.RttStdMs,
    };
}

internal sealed class UtilityPrediction
{
    public float Score { get; set; }
}
