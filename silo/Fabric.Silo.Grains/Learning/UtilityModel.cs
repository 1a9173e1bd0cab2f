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
/// FastTree regression (Microsoft.ML) over the conditions, the stack, the workload and the stack the conditions were
/// measured on, trained from scratch each time (trees do not update incrementally).
/// <para>
/// Why the stack the conditions were measured on: a path's conditions are partly the VM's own doing. On std-ipv4 over a
/// 3 % loss link a loss-based TCP collapses, no queue forms and the RTT sits at its floor; on fec the same VM fills the
/// bottleneck and the RTT doubles. The selector always decides on conditions measured on the current stack, so the
/// question it asks is "measured like this on std-ipv4, what would fec get?". A model trained only on each stack's
/// outcomes with that stack's own conditions answers another question, and learned that a VM whose RTT sits at its
/// floor gets little from any stack (version 2 ranked RTT over its minimum first of every feature, and left VMs on
/// std-ipv4 through 9 % burst loss). So every outcome is also learned with the conditions the same VM's path showed on
/// each other stack within <see cref="PairingWindow"/> (their mean; for a latency VM, any latency VM's path from the same
/// host to the same host, see <see cref="SharedPairing"/>): the counterfactual rows a switch or an exploration produces,
/// and that a training run pinning stacks in turn produces for every pair.
/// </para>
/// <para>Beside the trees it keeps how many training outcomes fell near each context (see <see cref="Bin"/>) and how far off
/// the trees are there: a prediction from a context the model has seen little of says so, and the selector leaves it to
/// the prior. Prediction is thread-safe (one engine per thread).
/// </para>
/// </summary>
public sealed class UtilityModel : IDisposable
{
    /// <summary>
    /// The feature schema and the reward's definition; a stored model of another schema version is not loaded. (8: loss
    /// burstiness is the dispersion of the loss counts since the link's loss changed, no longer the per-second loss's
    /// coefficient of variation over a minute; 7: the
    /// capacity feature is what the agents' capacity trains measure, no longer what the stack in use delivered, and a VM
    /// sending without TCP is judged on the share of its own rate it got; 6: a latency outcome is scored from the trailing
    /// window's p99 on a log scale, see <see cref="Learning.Utility"/>; 5 charged a latency outcome's overhead by its share
    /// of the path; a version 4 model learned the old charge.)
    /// </summary>
    public const int SchemaVersion = 8;

    /// <summary>How far apart (either way) an outcome and the conditions on another stack (the same VM's, or see <see cref="SharedPairing"/>) may be to be learned together.</summary>
    public static readonly TimeSpan PairingWindow = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Outcomes this soon after the path's stack changed are not learned as that stack's utility: the VM's TCP is still
    /// recovering from the swap (and from what the previous stack left it), so they say how the change went, not what the
    /// stack gets. They still serve as conditions for the other stacks' rows.
    /// </summary>
    public static readonly TimeSpan SettleAfterSwitch = TimeSpan.FromSeconds(2);

    /// <summary>
    /// The workload whose outcomes are paired with any VM of the same host and path, not only the same VM: a latency VM's
    /// traffic is too light to shape the path, so the conditions the path showed while another of the host's latency VMs
    /// was on another stack are what this VM's would have been there. A fleet has many latency VMs on one path at once,
    /// each on its own stack, where a single VM would have to switch to produce the pair. Bulk and general VMs shape the
    /// path (and share its bottleneck), so theirs stay paired with their own.
    /// </summary>
    public const string SharedPairing = "latency";

    /// <summary>At most this many outcomes of other stacks are paired with one outcome, from at most 8 times as many looked at (a busy path's window holds many).</summary>
    private const int MaxPaired = 64;

    /// <summary>The default of <see cref="LearningOptions.MinSupport"/>: fewer training outcomes near a context than this,
    /// and the model's prediction there is not trusted.</summary>
    public const int DefaultMinSupport = 30;

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private readonly MLContext _ml;
    private readonly ITransformer _model;
    private readonly ThreadLocal<PredictionEngine<UtilityRow, UtilityPrediction>> _engines;
    private readonly IReadOnlyDictionary<string, int> _support;
    private readonly IReadOnlyDictionary<string, VmEffect> _effects;
    private readonly IReadOnlyDictionary<string, double> _binSpreads;
    private readonly double _spread;
    private double _error;

    /// <summary>
    /// The uncertainty of a prediction is this many times the mean disagreement near the context between the two
    /// half-trained models (see <see cref="CrossFit"/>): two independent halves differ by σ√2 where each has σ, the model
    /// trained on both has about σ/√2, and a mean absolute difference is about 0.8 of its σ — so 1.25 times the mean
    /// disagreement is about two standard errors of the full model's prediction.
    /// </summary>
    public const double UncertaintyScale = 1.25;

    /// <summary>A VM's own outcomes count as evidence against this many outcomes' worth of the fleet's prediction.</summary>
    public const int EffectShrinkage = 20;

    private UtilityModel(MLContext ml, ITransformer model, IReadOnlyDictionary<string, int> support, Judged judged, double error, ModelInfo info)
    {
        _ml = ml;
        _model = model;
        _support = support;
        _effects = judged.Effects;
        _binSpreads = judged.BinSpreads;
        _spread = judged.Spread;
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
        var examples = Examples(training);
        var model = Fit(ml, examples, trees: 150);
        var trained = new UtilityModel(ml, model, Support(examples), CrossFit(ml, examples), 0, new ModelInfo(version, now, training.Count, watch.Elapsed.TotalSeconds, 0, 0, "", [], holdout.Count));
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
        var examples = Examples(all);
        var model = Fit(ml, examples, trees: 150);
        return new UtilityModel(ml, model, Support(examples), CrossFit(ml, examples), evaluated._error,
            evaluated.Info with { Outcomes = all.Count, TrainingSeconds = evaluated.Info.TrainingSeconds + watch.Elapsed.TotalSeconds });
    }

    /// <summary>
    /// How many training outcomes fall in each bin (<see cref="Bin"/>: the stack, the workload, loss and RTT within
    /// a factor of 4, and the stack the conditions were measured on). Each outcome counts once per stack it was measured
    /// on: for a stack's own conditions, its own outcomes; for another's, the outcomes that followed such conditions there.
    /// A prediction's support adds both (see <see cref="Predict"/>).
    /// </summary>
    private static Dictionary<string, int> Support(IReadOnlyList<Example> examples)
    {
        var support = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var e in examples)
        {
            support[e.Bin] = support.GetValueOrDefault(e.Bin) + 1;
        }
        return support;
    }

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
    /// What cross-fitting says: each VM's own effects, how far apart the two half-trained models are near each context
    /// (with enough rows there), and over all rows.
    /// </summary>
    private sealed record Judged(IReadOnlyDictionary<string, VmEffect> Effects, IReadOnlyDictionary<string, double> BinSpreads, double Spread);

    /// <summary>A bin needs this many training rows for its own spread; with fewer, the spread over all rows stands for it.</summary>
    private const int BinSpreadRows = 5;

    /// <summary>
    /// Judges every training row (see <see cref="Examples"/>) by trees grown on the other half of the outcomes, and from
    /// those residuals derives:
    /// <list type="bullet">
    /// <item>Per-VM effects: how far each VM's own outcomes on a stack landed from what the fleet's trees predict for them,
    /// on lossy (≥ 0.5 %) and on clean paths apart — what the path's features cannot see of a guest (a guest whose TCP
    /// shrugs off random loss gains nothing from fec; one whose TCP takes every loss as congestion gains much). Shrunk
    /// towards zero by <see cref="EffectShrinkage"/>, so a VM with few outcomes is the fleet's average.</item>
    /// <item>How far apart the two halves' trees predict each training row, averaged per support bin: how much the
    /// prediction there depends on which outcomes the trees happened to see — what a decision must be sure of, since it
    /// compares mean utilities. Local, since on a long path every latency utility is small and so are the differences.
    /// (Version 3 took each outcome's own error over the square root of the outcomes in its bin; a second of one VM's
    /// goodput swings with every swap and TCP recovery, so that error was large, and it ignored that trees pool
    /// neighbouring bins: it forbade switches the trees agreed on, such as arq-bulk over std-ipv4 at 3 % loss.)</item>
    /// </list>
    /// </summary>
    /// <remarks>
    /// Cross-fitted, since trees judging the outcomes they were grown on have already absorbed part of each VM's effect
    /// (with few VMs, the trees memorize which loss values were whose) and look more certain than they are.
    /// </remarks>
    private static Judged CrossFit(MLContext ml, IReadOnlyList<Example> training)
    {
        // Halves of whole minutes of a path: neighbouring seconds of one path are nearly the same outcome, and in opposite
        // halves each would vouch for the other.
        var halves = new[] { training.Where(e => e.Half == 0).ToList(), training.Where(e => e.Half == 1).ToList() };
        var residuals = new List<(Example Example, double Residual)>(training.Count);
        var binSpreads = new Dictionary<string, double>(StringComparer.Ordinal);
        var spread = 0.0;
        if (halves[0].Count > 0 && halves[1].Count > 0)
        {
            // Each half's trees, grown on the other half.
            var folds = new[] { Fit(ml, halves[1], trees: 60), Fit(ml, halves[0], trees: 60) };
            using var engine0 = ml.Model.CreatePredictionEngine<UtilityRow, UtilityPrediction>(folds[0]);
            using var engine1 = ml.Model.CreatePredictionEngine<UtilityRow, UtilityPrediction>(folds[1]);
            var differences = new List<(string Bin, double Difference)>(training.Count);
            foreach (var e in training)
            {
                var row = e.Row();
                var (p0, p1) = (Math.Clamp(engine0.Predict(row).Score, 0, 1), Math.Clamp(engine1.Predict(row).Score, 0, 1));
                residuals.Add((e, e.Utility - (e.Half == 0 ? p0 : p1)));
                differences.Add((e.Bin, Math.Abs(p0 - p1)));
            }
            binSpreads = differences.GroupBy(d => d.Bin, StringComparer.Ordinal).Where(g => g.Count() >= BinSpreadRows)
                .ToDictionary(g => g.Key, g => g.Average(d => d.Difference), StringComparer.Ordinal);
            spread = differences.Average(d => d.Difference);
        }
        // A VM's effect, measured against the residual of every VM of its workload on the same stack and kind of path:
        // what the half-size trees get wrong for everyone is theirs, not the VM's, and a workload's is the trees' to learn
        // (measured against VMs of every workload, the one latency VM of a learning benchmark run carried +0.2 on
        // std-ipv4 at 7 % loss: how latency outcomes differ from bulk ones, not what that VM does). From the VMs' own
        // outcomes with their own conditions only.
        var own = residuals.Where(r => r.Example.MeasuredOn == r.Example.Stack).ToList();
        var fleet = own.GroupBy(r => EffectKey("", r.Example.Workload, r.Example.Stack, r.Example.Features.Loss), StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.Average(r => r.Residual), StringComparer.Ordinal);
        var effects = own.GroupBy(r => EffectKey(r.Example.VmId, r.Example.Workload, r.Example.Stack, r.Example.Features.Loss), StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => new VmEffect(g.Sum(r => r.Residual - fleet[EffectKey("", r.Example.Workload, r.Example.Stack, r.Example.Features.Loss)]), g.Count()), StringComparer.Ordinal);
        return new Judged(effects, binSpreads, spread);
    }

    private static TransformerChain<RegressionPredictionTransformer<FastTreeRegressionModelParameters>> Fit(MLContext ml, IReadOnlyList<Example> examples, int trees) =>
        ml.Transforms.Categorical.OneHotEncoding("StackKey", nameof(UtilityRow.Stack))
            .Append(ml.Transforms.Categorical.OneHotEncoding("WorkloadKey", nameof(UtilityRow.Workload)))
            .Append(ml.Transforms.Categorical.OneHotEncoding("MeasuredOnKey", nameof(UtilityRow.MeasuredOn)))
            .Append(ml.Transforms.Concatenate("Features", ["StackKey", "WorkloadKey", "MeasuredOnKey", .. UtilityRow.Numeric]))
            .Append(ml.Regression.Trainers.FastTree(new FastTreeRegressionTrainer.Options
            {
                NumberOfLeaves = 31,
                NumberOfTrees = trees,
                MinimumExampleCountPerLeaf = 10,
                LearningRate = 0.15,
                // One core: the silo keeps serving while it trains.
                NumberOfThreads = 1,
            }))
            .Fit(ml.Data.LoadFromEnumerable(examples.Select(e => e.Row()).ToList()));

    /// <summary>
    /// One training row: an outcome's VM, stack, workload and utility, with conditions measured on <paramref name="MeasuredOn"/>;
    /// <paramref name="Half"/> is the cross-fitting half of the outcome's path-minute.
    /// </summary>
    private sealed record Example(string VmId, string Stack, string Workload, string MeasuredOn, OutcomeFeatures Features, double Utility, int Half)
    {
        public UtilityRow Row() => UtilityRow.Of(Stack, Workload, Features, MeasuredOn, Utility);

        public string Bin { get; } = UtilityModel.Bin(Stack, Workload, Features.Loss, Features.RttMs, MeasuredOn);
    }

    /// <summary>
    /// What the model learns from: each outcome with its own conditions, and again with the mean conditions the same VM's
    /// path to the same host (a latency VM: any latency VM's of its host, see <see cref="SharedPairing"/>) showed on each
    /// other stack within <see cref="PairingWindow"/>, nearest in time first (see the class remarks).
    /// </summary>
    private static List<Example> Examples(IReadOnlyList<LoggedOutcome> outcomes)
    {
        var examples = new List<Example>(outcomes.Count);
        var others = new Dictionary<string, List<OutcomeFeatures>>(StringComparer.Ordinal);
        // Latency VMs' traffic is too light to shape the path: what one host's path showed while any of its latency VMs was
        // on another stack is what this VM would have seen there (see SharedPairing).
        var shared = outcomes.Where(SharesPath).GroupBy(o => (o.Host, o.RemoteHost)).ToDictionary(g => g.Key, g => g.OrderBy(o => o.At).ToList());
        foreach (var path in outcomes.GroupBy(o => (o.VmId, o.RemoteHost)))
        {
            var ordered = path.OrderBy(o => o.At).ToList();
            var changedAt = DateTimeOffset.MinValue;
            for (var i = 0; i < ordered.Count; i++)
            {
                var o = ordered[i];
                if (i > 0 && ordered[i - 1].Stack != o.Stack)
                {
                    // A swap under the VM's traffic (its previous outcome a few seconds old), not a path that was idle between.
                    changedAt = o.At - ordered[i - 1].At <= TimeSpan.FromSeconds(5) ? o.At : DateTimeOffset.MinValue;
                }
                if (o.At - changedAt < SettleAfterSwitch)
                {
                    continue;
                }
                // Latency VMs of one host share their path's conditions and are paired with each other: one minute of that
                // path goes to one half whole, or each half would vouch for the other.
                var half = HalfOf(SharesPath(o) ? o.Host! : o.VmId, o.RemoteHost, o.At.ToUnixTimeSeconds() / 60);
                examples.Add(new Example(o.VmId, o.Stack, o.Workload, o.Stack, o.Features, o.Utility, half));
                foreach (var list in others.Values)
                {
                    list.Clear();
                }
                var pool = SharesPath(o) ? shared[(o.Host, o.RemoteHost)] : ordered;
                // Nearest in time first, either side, until MaxPaired are taken: where many VMs share a path, the cap keeps
                // the conditions around the outcome, not the window's oldest.
                var after = FirstAtOrAfter(pool, o.At);
                var before = after - 1;
                for (var (looked, taken) = (0, 0); looked < 8 * MaxPaired && taken < MaxPaired; looked++)
                {
                    var earlier = before >= 0 && pool[before].At >= o.At - PairingWindow ? pool[before] : null;
                    var later = after < pool.Count && pool[after].At <= o.At + PairingWindow ? pool[after] : null;
                    if (earlier is null && later is null)
                    {
                        break;
                    }
                    var takeEarlier = later is null || (earlier is not null && o.At - earlier.At < later.At - o.At);
                    var next = takeEarlier ? earlier! : later!;
                    (before, after) = takeEarlier ? (before - 1, after) : (before, after + 1);
                    if (next.Stack != o.Stack)
                    {
                        (others.TryGetValue(next.Stack, out var list) ? list : others[next.Stack] = []).Add(next.Features);
                        taken++;
                    }
                }
                foreach (var (measuredOn, features) in others)
                {
                    if (features.Count > 0)
                    {
                        examples.Add(new Example(o.VmId, o.Stack, o.Workload, measuredOn, OutcomeFeatures.Mean(features), o.Utility, half));
                    }
                }
            }
        }
        return examples;
    }

    /// <summary>Whether <paramref name="o"/> is paired with its host's VMs on its path, not only its own (see <see cref="SharedPairing"/>).</summary>
    private static bool SharesPath(LoggedOutcome o) => o is { Host: not null, Workload: SharedPairing };

    /// <summary>The first index of <paramref name="byTime"/> (ordered by time) at or after <paramref name="at"/>; its count if none.</summary>
    private static int FirstAtOrAfter(List<LoggedOutcome> byTime, DateTimeOffset at)
    {
        var (low, high) = (0, byTime.Count);
        while (low < high)
        {
            var middle = (low + high) / 2;
            (low, high) = byTime[middle].At < at ? (middle + 1, high) : (low, middle);
        }
        return low;
    }

    /// <summary>
    /// The cross-fitting half of one minute of one path (a VM's, or a host's): FNV-1a, the same in every process (string
    /// hashes are not), then mixed so that every input bit moves the bit taken. Until 2026-12-07 bit 15 of the FNV-1a
    /// hash was taken unmixed: consecutive minutes differ only in the last character, whose few changed bits the last
    /// multiplication carries above bit 15 but seldom into it, so nearly every path had all its minutes in one half. Each
    /// VM's residuals were then those of trees that had never seen its path, and its "effect" was how far such trees
    /// missed it: on the stationary embedded fleet the trees alone predicted every VM within 0.004, with the effects up to
    /// 0.35 off, and the uncertainty (the halves' disagreement) was as wide.
    /// </summary>
    private static int HalfOf(string from, string remoteHost, long minute)
    {
        var hash = 2166136261u;
        foreach (var c in $"{from}|{remoteHost}|{minute}")
        {
            hash = (hash ^ c) * 16777619u;
        }
        // MurmurHash3's finalizer: each output bit depends on every input bit.
        hash ^= hash >> 16;
        hash *= 0x85ebca6bu;
        hash ^= hash >> 13;
        hash *= 0xc2b2ae35u;
        hash ^= hash >> 16;
        return (int)(hash & 1);
    }

    private static string EffectKey(string vmId, string workload, string stack, double loss) => $"{vmId}|{workload}|{stack}|{(loss >= 0.005 ? "lossy" : "clean")}";

    /// <summary>
    /// Predicted utility, how many training outcomes were near this context, how uncertain it is, and — for a VM the
    /// model has outcomes of — the VM's own effect on this stack (already in the utility) and how many outcomes it rests on.
    /// </summary>
    /// <param name="stack">The candidate.</param>
    /// <param name="workload">The VM's workload.</param>
    /// <param name="conditions">The path's smoothed conditions.</param>
    /// <param name="vmId">The VM (its own effects count); null for any VM.</param>
    /// <param name="measuredOn">The stack the conditions were measured on (the VM's current one); null: <paramref name="stack"/> itself.</param>
    public Prediction Predict(string stack, string workload, PathConditions conditions, string? vmId = null, string? measuredOn = null)
    {
        var fleet = Math.Clamp(_engines.Value!.Predict(UtilityRow.Of(stack, workload, OutcomeFeatures.Of(conditions), measuredOn ?? stack)).Score, 0, 1);
        // Support: the candidate's outcomes that followed such conditions on the stack they were measured on, and its own
        // outcomes under such conditions (which say the same where a path's conditions do not depend on the stack), in the
        // context's bin and its neighbours (SupportReach).
        var bin = Bin(stack, workload, conditions.Loss, conditions.RttMs, measuredOn ?? stack);
        var own = Bin(stack, workload, conditions.Loss, conditions.RttMs, stack);
        var support = 0;
        var (lossBin, rttBin) = (LossBin(conditions.Loss), RttBin(conditions.RttMs));
        for (var l = lossBin - SupportReach; l <= lossBin + SupportReach; l++)
        {
            for (var r = rttBin - SupportReach; r <= rttBin + SupportReach; r++)
            {
                support += _support.GetValueOrDefault(BinKey(stack, workload, l, r, measuredOn ?? stack))
                    + ((measuredOn ?? stack) == stack ? 0 : _support.GetValueOrDefault(BinKey(stack, workload, l, r, stack)));
            }
        }
        // How far apart the half-trained models are near this context (measured on the current stack, else on the
        // candidate's own), over all training rows elsewhere: about two standard errors of this prediction.
        var spread = _binSpreads.TryGetValue(bin, out var near) ? near : _binSpreads.GetValueOrDefault(own, _spread);
        var uncertainty = UncertaintyScale * spread;
        var effect = vmId is not null ? _effects.GetValueOrDefault(EffectKey(vmId, workload, stack, conditions.Loss)) : null;
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
        store.Write($"{prefix}/bin-spreads.json", JsonSerializer.SerializeToUtf8Bytes(new StoredSpreads(_spread, _binSpreads), Json));
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
        var spreads = JsonSerializer.Deserialize<StoredSpreads>(store.Read($"{prefix}/bin-spreads.json") ?? throw new InvalidDataException($"{store.Location}: {prefix}/bin-spreads.json is missing"), Json)!;
        return new UtilityModel(ml, model, support, new Judged(effects, spreads.Bins, spreads.All), info.Error, info.Info);
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
    /// The bins support is kept in: the same stack, workload and stack the conditions were measured on, loss within a factor of 4 (0; 0.01–0.04 %; …; 2.56–10.24 %;
    /// above) and RTT within a factor of 4 (below 2 ms; 2–8; 8–32; 32–128; above 128 ms). "Near" is a bin and its
    /// neighbours (<see cref="SupportReach"/>). Coarse on purpose: the trees interpolate between such cells, and a path the
    /// fleet has never seen still falls near one it has.
    /// </summary>
    private static string Bin(string stack, string workload, double loss, double rttMs, string measuredOn) =>
        BinKey(stack, workload, LossBin(loss), RttBin(rttMs), measuredOn);

    private static string BinKey(string stack, string workload, int lossBin, int rttBin, string measuredOn) => $"{stack}|{measuredOn}|{workload}|{lossBin}|{rttBin}";

    private static int LossBin(double loss) => loss < 1e-4 ? 0 : Math.Min(6, 1 + (int)Math.Floor(Math.Log(loss / 1e-4, 4)));

    private static int RttBin(double rttMs) => Math.Min(4, (int)Math.Floor(Math.Log(Math.Max(rttMs, 0.5) / 0.5, 4)));

    /// <summary>
    /// How many bins either way in loss and in RTT a prediction's support counts (see <see cref="Predict"/>). With none
    /// (until 2026-12-07) a path between the training's conditions was the prior's: replayed offline on three learning
    /// benchmark runs' evaluation cells, conditions the model never trained on (`learning-replay`), the stack chosen
    /// gave the VM 0.875 of the best stack's utility on average, 0.896 with the neighbouring bins (0.888 with those in
    /// loss alone; the model everywhere: 0.896; the prior alone: 0.840).
    /// </summary>
    public const int SupportReach = 1;

    /// <summary>Permutation feature importance on (at most 2,000 of) the holdout: one-hot slots summed per feature.</summary>
    private static ImmutableArray<FeatureImportance> Importance(MLContext ml, TransformerChain<RegressionPredictionTransformer<FastTreeRegressionModelParameters>> model, IReadOnlyList<LoggedOutcome> holdout)
    {
        var data = model.Transform(ml.Data.LoadFromEnumerable(holdout.Take(2000).Select(UtilityRow.Of)));
        var pfi = ml.Regression.PermutationFeatureImportance(model.LastTransformer, data, permutationCount: 1);
        VBuffer<ReadOnlyMemory<char>> names = default;
        data.Schema["Features"].GetSlotNames(ref names);
        var slots = names.DenseValues().Select(n => n.ToString()).ToArray();
        return [.. slots.Select((name, i) => (Feature: name.Split('.')[0] switch { "StackKey" => "stack", "WorkloadKey" => "workload", "MeasuredOnKey" => "measured on", var f => f }, Drop: -pfi[i].RSquared.Mean))
            .GroupBy(x => x.Feature).Select(g => new FeatureImportance(g.Key, Math.Round(g.Sum(x => x.Drop), 4))).OrderByDescending(f => f.Importance)];
    }

    private sealed record StoredInfo(int Schema, double Error, ModelInfo Info);

    private sealed record StoredSpreads(double All, IReadOnlyDictionary<string, double> Bins);
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

    /// <summary>The stack the path's conditions were measured on.</summary>
    public string MeasuredOn { get; set; } = "";

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

    public static UtilityRow Of(LoggedOutcome o) => Of(o.Stack, o.Workload, o.Features, o.Stack, o.Utility);

    public static UtilityRow Of(string stack, string workload, OutcomeFeatures f, string measuredOn, double label = 0) => new()
    {
        Label = (float)label,
        Stack = stack,
        Workload = workload,
        MeasuredOn = measuredOn,
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
