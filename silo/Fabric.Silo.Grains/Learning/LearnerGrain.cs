using System.Collections.Immutable;
using Fabric.Silo.Selection;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo.Learning;

/// <summary>Persisted: the version in service, whether learning is on, the next version number, the last training runs.</summary>
[GenerateSerializer, Alias("fabric.learner-state")]
public sealed class LearnerState
{
    [Id(0)] public ModelInfo? InService { get; set; }
    [Id(1)] public bool LearningEnabled { get; set; } = true;
    [Id(2)] public long NextVersion { get; set; } = 1;
    [Id(3)] public List<TrainingResult> Recent { get; set; } = [];
}

/// <summary>
/// Trains the fleet's utility model from the outcome log — on a schedule and on demand, one training at a time (one
/// activation, calls not interleaved) — and adopts a new version only when its error on held-back recent outcomes (the
/// newest tenth of the log, which that training does not see) is below the error of the version in service, or of the
/// prior when there is none; the version then served is trained again on every outcome, the newest included. An adopted
/// version is stored (models/vN/) before it is announced; every silo's <see cref="ModelRefresher"/> loads it.
/// </summary>
public sealed partial class LearnerGrain(
    [PersistentState("learner", Storage.Name)] IPersistentState<LearnerState> state,
    OutcomeLog log,
    LearningOptions options,
    ProfileScorer prior,
    LearnedScorer scorer,
    TimeProvider time,
    ILogger<LearnerGrain> logger) : Grain, ILearnerGrain
{
    /// <summary>The newest outcomes a training reads at most.</summary>
    public const int MaxTrainingOutcomes = 200_000;

    private const int RecentLength = 20;

    private IGrainTimer? _schedule;

    private readonly TrainingSchedule _budget = new(options.TrainingShare);

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        // Grain state on memory storage is gone after a restart, the store's models are not: take up the version the
        // store says was in service, and never reuse its number.
        if (state.State.InService is null && UtilityModel.ReadInService(log.Store) is { } stored)
        {
            state.State.InService = stored;
            state.State.NextVersion = Math.Max(state.State.NextVersion, stored.Version + 1);
        }
        if (options.TrainEverySeconds > 0)
        {
            var period = TimeSpan.FromSeconds(options.TrainEverySeconds);
            _schedule = this.RegisterGrainTimer(async () =>
            {
                if (_budget.Due(time.GetUtcNow()))
                {
                    await TrainAsync();
                }
            }, period, period);
        }
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _schedule?.Dispose();
        return Task.CompletedTask;
    }

    public ValueTask<LearnerView> GetAsync() => ValueTask.FromResult(new LearnerView(state.State.InService, state.State.LearningEnabled, [.. state.State.Recent]));

    /// <summary>How many of the newest outcomes an evaluation judges, and how many of them it returns.</summary>
    public const int EvaluatedOutcomes = 2000;

    public const int ReturnedOutcomes = 300;

    private LearnerEvaluation? _evaluation;
    private Task<LearnerEvaluation>? _evaluating;

    public async ValueTask<LearnerEvaluation> EvaluateAsync()
    {
        var version = state.State.InService?.Version ?? 0;
        if (_evaluation is { } cached && cached.ModelVersion == version && time.GetUtcNow() - cached.At < TimeSpan.FromSeconds(10))
        {
            return cached;
        }
        // One evaluation at a time however many pages ask (the call interleaves).
        _evaluating ??= EvaluateOnceAsync(version);
        try
        {
            return _evaluation = await _evaluating;
        }
        finally
        {
            _evaluating = null;
        }
    }

    private async Task<LearnerEvaluation> EvaluateOnceAsync(long version)
    {
        var now = time.GetUtcNow();
        if (version == 0)
        {
            return new LearnerEvaluation(now, 0, [], 0, 0, 0, 0);
        }
        var catalog = await GrainFactory.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync();
        return await Task.Run(() =>
        {
            // The version this silo already scores with, or read from the store when its refresher has not caught up.
            var scoring = scorer.Model is { } current && current.Version == version ? current : null;
            using var loaded = scoring is null ? UtilityModel.Load(log.Store, version) : null;
            var model = scoring ?? loaded;
            var outcomes = log.ReadRecentUnderCurrentReward(EvaluatedOutcomes).OrderBy(o => o.At).ToList();
            if (model is null || outcomes.Count == 0)
            {
                return new LearnerEvaluation(now, version, [], 0, 0, 0, 0);
            }
            var judged = outcomes.Select(o =>
            {
                var conditions = o.Features.ToConditions(o.At);
                var predicted = model.Predict(o.Stack, o.Workload, conditions, o.VmId).Utility;
                // Only stacks the model has seen enough of near this context: elsewhere its prediction is a guess.
                var best = catalog.Select(s => model.Predict(s.Id, o.Workload, conditions, o.VmId, measuredOn: o.Stack)).Where(p => p.Support >= options.MinSupport)
                    .Select(p => p.Utility).Append(predicted).Max();
                return (Outcome: new PredictedOutcome(o.At, o.VmId, o.Workload, o.Stack, predicted, o.Utility, o.Exploration), Regret: Math.Max(0, best - predicted));
            }).ToList();
            return new LearnerEvaluation(now, version, [.. judged.TakeLast(ReturnedOutcomes).Select(j => j.Outcome)], judged.Count,
                judged.Count(j => j.Outcome.Exploration) / (double)judged.Count, judged.Average(j => j.Regret),
                judged.Average(j => Math.Abs(j.Outcome.Predicted - j.Outcome.Observed)));
        });
    }

    public async ValueTask SetLearningEnabledAsync(bool enabled)
    {
        state.State.LearningEnabled = enabled;
        await state.WriteStateAsync();
    }

    /// <summary>
    /// A candidate version from <paramref name="ordered"/> (oldest first), trained without the newest tenth and judged on
    /// it — on only those of it after <paramref name="inServiceTrainedAt"/> (when the version in service was trained) when
    /// there are at least 50 (or the whole tenth, if smaller), so that the version in service is not flattered by outcomes
    /// it has seen. Returns the candidate and the outcomes it was judged on, which judge the version in service too.
    /// </summary>
    public static (UtilityModel Candidate, IReadOnlyList<LoggedOutcome> Judged) TrainCandidate(List<LoggedOutcome> ordered, DateTimeOffset? inServiceTrainedAt, long version, DateTimeOffset now)
    {
        IReadOnlyList<LoggedOutcome> holdout = ordered[^Math.Max(1, ordered.Count / 10)..];
        var candidate = UtilityModel.Train(ordered[..^holdout.Count], holdout, version, now);
        if (inServiceTrainedAt is { } trainedAt && holdout.Where(o => o.At > trainedAt).ToList() is var unseen
            && unseen.Count >= Math.Min(50, holdout.Count) && unseen.Count < holdout.Count)
        {
            holdout = unseen;
            try
            {
                candidate.Rejudge(unseen);
            }
            catch
            {
                candidate.Dispose();
                throw;
            }
        }
        return (candidate, holdout);
    }

    public async ValueTask<TrainingResult> TrainAsync()
    {
        var began = time.GetUtcNow();
        var result = await TrainOnceAsync();
        _budget.Took(began, time.GetUtcNow());
        state.State.Recent.Add(result);
        if (state.State.Recent.Count > RecentLength)
        {
            state.State.Recent.RemoveRange(0, state.State.Recent.Count - RecentLength);
        }
        await state.WriteStateAsync();
        LearnerLog.Trained(logger, result.Adopted, result.Reason);
        return result;
    }

    private async Task<TrainingResult> TrainOnceAsync()
    {
        // Reading the log and training are long and CPU-bound: off the grain scheduler's threads.
        var outcomes = await Task.Run(() => log.ReadRecentUnderCurrentReward(MaxTrainingOutcomes));
        if (outcomes.Count < options.MinOutcomes)
        {
            return new TrainingResult(false, $"{outcomes.Count} outcomes logged under the current reward (schema {UtilityModel.SchemaVersion}), training needs {options.MinOutcomes}: the prior decides", null);
        }
        var ordered = outcomes.OrderBy(o => o.At).ToList();
        var version = state.State.NextVersion;
        var now = time.GetUtcNow();
        var inService = state.State.InService;
        var current = inService is null ? null : UtilityModel.Load(log.Store, inService.Version);
        string baseline;
        double baselineError;
        UtilityModel? candidate = null;
        try
        {
            (candidate, var judged) = await Task.Run(() => TrainCandidate(ordered, current is null ? null : inService!.TrainedAt, version, now));
            if (current is not null)
            {
                baseline = $"model v{inService!.Version}";
                baselineError = await Task.Run(() => current.MeanAbsoluteError(judged));
            }
            else
            {
                var catalog = (await GrainFactory.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync()).ToDictionary(s => s.Id, StringComparer.Ordinal);
                baseline = "the prior";
                baselineError = judged.Where(o => catalog.ContainsKey(o.Stack)).Select(o =>
                    Math.Abs(prior.Score(catalog[o.Stack], o.Features.ToConditions(o.At), Policy.Default with { Workload = o.Workload }).Score - o.Utility))
                    .DefaultIfEmpty(double.MaxValue).Average();
            }
        }
        catch
        {
            candidate?.Dispose();
            throw;
        }
        finally
        {
            current?.Dispose();
        }
        candidate.ComparedWith(baseline, baselineError);
        var info = candidate.Info;
        var summary = $"v{version}: error {info.HoldoutError:0.0000} on {info.HoldoutOutcomes} held-back outcomes vs {baselineError:0.0000} for {baseline}; "
            + $"trained on {info.Outcomes} in {info.TrainingSeconds:0.0} s";
        if (info.HoldoutError >= baselineError)
        {
            candidate.Dispose();
            return new TrainingResult(false, $"not adopted: {summary}", info);
        }
        // Judged without the newest tenth, served with it: the version in service has seen the conditions of now.
        var served = await Task.Run(() =>
        {
            using (candidate)
            {
                var refit = UtilityModel.Refit(ordered, candidate);
                refit.Save(log.Store);
                UtilityModel.WriteInService(log.Store, refit.Info);
                return refit;
            }
        });
        info = served.Info;
        served.Dispose();
        state.State.InService = info;
        state.State.NextVersion = version + 1;
        return new TrainingResult(true, $"adopted {summary}, then trained on all {ordered.Count} to serve", info);
    }
}

/// <summary>
/// Keeps scheduled trainings within their share of a core (<see cref="LearningOptions.TrainingShare"/>): after a training
/// that took T, the next scheduled one is not due until T / share after the first began.
/// </summary>
public sealed class TrainingSchedule(double share)
{
    private DateTimeOffset _notBefore = DateTimeOffset.MinValue;

    /// <summary>Whether a scheduled training may start now.</summary>
    public bool Due(DateTimeOffset now) => now >= _notBefore;

    /// <summary>A training (scheduled or on demand) ran from <paramref name="began"/> to <paramref name="ended"/>.</summary>
    public void Took(DateTimeOffset began, DateTimeOffset ended)
    {
        if (share is > 0 and < 1)
        {
            _notBefore = began + ((ended - began) / share);
        }
    }
}

internal static partial class LearnerLog
{
    [LoggerMessage(300, LogLevel.Information, "Learner trained: adopted={Adopted}, {Reason}")]
    public static partial void Trained(ILogger logger, bool adopted, string reason);

    [LoggerMessage(301, LogLevel.Warning, "Outcome log: {Reason}")]
    public static partial void LogFailed(ILogger logger, string reason);

    [LoggerMessage(302, LogLevel.Information, "Scoring with model v{Version} (learning {State})")]
    public static partial void Installed(ILogger logger, long version, string state);

    [LoggerMessage(303, LogLevel.Warning, "Model refresh: {Reason}")]
    public static partial void RefreshFailed(ILogger logger, string reason);
}
