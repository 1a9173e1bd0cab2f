using System.Collections.Immutable;

namespace Fabric.Silo.Selection;

/// <summary>A candidate that beats the current stack, and since when (hysteresis memory between decisions).</summary>
[GenerateSerializer, Immutable, Alias("fabric.pending-switch")]
public sealed record PendingSwitch([property: Id(0)] string Stack, [property: Id(1)] DateTimeOffset Since);

/// <summary>
/// How eager the selector is. A candidate replaces the current stack only when it beats it by <see cref="Margin"/>
/// (relative) and by more than the cost of a swap plus both scores' uncertainty (absolute), continuously for
/// <see cref="SustainFor"/>. Exploration tries only candidates scored within <see cref="ExploreWithin"/> of the best.
/// </summary>
public sealed record SelectorOptions(double Margin = 0.10, TimeSpan? Sustain = null, double SwapCost = 0.01, double ExploreWithin = 0.10)
{
    public TimeSpan SustainFor => Sustain ?? TimeSpan.FromSeconds(5);
}

/// <summary>
/// select_stack made real. Candidates: published stacks the policy admits and the host supports. Each is scored (the
/// fleet's model where it knows the context, the profile prior elsewhere); the best replaces the current stack only when
/// its predicted gain beats the margin, the cost of a swap and the uncertainty of both scores, continuously for the
/// sustain time (no flapping on noise). A current stack that is no longer admitted is replaced at once. A share of
/// decisions (the policy's, never for a pinned VM, never outside the candidates) explores — only among candidates
/// predicted close to the best — and every decision carries the probability with which its stack was chosen. Pure: time
/// and randomness come in.
/// </summary>
public sealed class StackSelector(IStackScorer scorer, SelectorOptions? options = null)
{
    private readonly SelectorOptions _options = options ?? new SelectorOptions();

    public SelectorOptions Options => _options;

    public (Decision Decision, PendingSwitch? Pending) Select(string vmId, string remoteHost, Policy policy, PathConditions conditions,
        IReadOnlyCollection<StackInfo> catalog, IReadOnlySet<string> hostStacks, string? current, PendingSwitch? pending, DateTimeOffset now, double random)
    {
        var candidates = PolicyValidator.Eligible(policy, catalog).Where(s => hostStacks.Contains(s.Id)).ToList();
        var scored = candidates.Select(s => (s.Id, Result: scorer.Score(s, conditions, policy, vmId)))
            .OrderByDescending(s => s.Result.Score).ThenBy(s => s.Id, StringComparer.Ordinal)
            .Select(s => new CandidateScore(s.Id, Math.Round(s.Result.Score, 4), s.Result.Why, Math.Round(s.Result.Uncertainty, 4), s.Result.Source)).ToImmutableArray();
        // The candidates exploration may try: close to the best, not the current stack, and only when the policy lets it.
        var near = policy.Pin is null && policy.ExplorationShare > 0 && scored.Length > 1
            ? scored.Where(s => s.Stack != current && s.Score >= scored[0].Score - _options.ExploreWithin).ToList()
            : [];
        double Propensity(string stack, bool explored)
        {
            var share = near.Count > 0 ? policy.ExplorationShare : 0;
            var viaExploration = near.Any(n => n.Stack == stack) ? share / near.Count : 0;
            return Math.Round(explored ? viaExploration : (1 - share) + viaExploration, 4);
        }
        Decision Make(string stack, string reason, bool exploration = false) =>
            new(vmId, remoteHost, current, stack, stack != current, reason, conditions, policy, scored, exploration, now, Propensity(stack, exploration));

        if (scored.Length == 0)
        {
            var why = $"no candidate: the policy admits none of the published stacks this host runs ({string.Join(", ", hostStacks.Order(StringComparer.Ordinal))})";
            return (Make(current ?? "", why), null);
        }
        var best = scored[0];
        var currentScore = scored.FirstOrDefault(s => s.Stack == current);
        if (current is null || currentScore is null)
        {
            return (Make(best.Stack, current is null ? $"first decision: {Describe(best)}" : $"{current} is no longer allowed or available; {Describe(best)}"), null);
        }
        if (near.Count > 0 && random < policy.ExplorationShare)
        {
            var pick = near[(int)(random / policy.ExplorationShare * near.Count) % near.Count];
            return (Make(pick.Stack, $"exploration: {pick.Stack} ({pick.Score:0.###}) is within {_options.ExploreWithin:0.##} of the best ({best.Stack} {best.Score:0.###}); "
                + $"{policy.ExplorationShare:P0} of decisions may try such a stack", exploration: true), null);
        }
        var gain = best.Score - currentScore.Score;
        var needed = Math.Max(currentScore.Score * _options.Margin, _options.SwapCost + best.Uncertainty + currentScore.Uncertainty);
        if (best.Stack == current || gain <= needed)
        {
            return (Make(current, best.Stack == current ? $"{current} scores best: {Describe(best)}"
                : $"{best.Stack} ({best.Score:0.###}) does not beat {current} ({currentScore.Score:0.###}) by the {needed:0.###} a switch needs "
                  + $"(margin {_options.Margin:P0}, swap cost {_options.SwapCost:0.##}, uncertainty ±{best.Uncertainty:0.##}/±{currentScore.Uncertainty:0.##})"), null);
        }
        if (pending?.Stack != best.Stack && _options.SustainFor > TimeSpan.Zero)
        {
            return (Make(current, $"{best.Stack} beats {current} by {gain:0.###} (needs {needed:0.###}); switching if it still does after {_options.SustainFor.TotalSeconds:0.#} s"),
                new PendingSwitch(best.Stack, now));
        }
        if (pending is not null && now - pending.Since < _options.SustainFor)
        {
            return (Make(current, $"{best.Stack} has beaten {current} for {(now - pending.Since).TotalSeconds:0.#} s of the {_options.SustainFor.TotalSeconds:0.#} s required"), pending);
        }
        return (Make(best.Stack, $"{best.Stack} ({best.Score:0.###} ± {best.Uncertainty:0.##}, {best.Source}) beat {current} ({currentScore.Score:0.###}, {currentScore.Source}) "
            + $"by {gain:0.###} > {needed:0.###} for {(now - (pending?.Since ?? now)).TotalSeconds:0.#} s"), null);
    }

    private static string Describe(CandidateScore best) => $"{best.Stack} scores best, {best.Score:0.###} ± {best.Uncertainty:0.##} ({best.Source})";
}
