using System.Collections.Immutable;

namespace Fabric.Silo.Selection;

/// <summary>A candidate that beats the current stack, and since when (hysteresis memory between decisions).</summary>
[GenerateSerializer, Immutable, Alias("fabric.pending-switch")]
public sealed record PendingSwitch([property: Id(0)] string Stack, [property: Id(1)] DateTimeOffset Since);

/// <summary>How eager the selector is: the margin the best must beat the current by, and for how long.</summary>
public sealed record SelectorOptions(double Margin = 0.10, TimeSpan? Sustain = null)
{
    public TimeSpan SustainFor => Sustain ?? TimeSpan.FromSeconds(1);
}

/// <summary>
/// select_stack made real. Candidates: published stacks the policy admits and the host supports. Each is scored; the
/// best replaces the current stack only when it beats it by <see cref="SelectorOptions.Margin"/> continuously for
/// <see cref="SelectorOptions.SustainFor"/> (no flapping on noise). A current stack that is no longer admitted is replaced
/// at once. A share of decisions (the policy's, never for a pinned VM, never outside the candidates) explores another
/// candidate. Pure: time and randomness come in.
/// </summary>
public sealed class StackSelector(IStackScorer scorer, SelectorOptions? options = null)
{
    private readonly SelectorOptions _options = options ?? new SelectorOptions();

    public SelectorOptions Options => _options;

    public (Decision Decision, PendingSwitch? Pending) Select(string vmId, string remoteHost, Policy policy, PathConditions conditions,
        IReadOnlyCollection<StackInfo> catalog, IReadOnlySet<string> hostStacks, string? current, PendingSwitch? pending, DateTimeOffset now, double random)
    {
        var candidates = PolicyValidator.Eligible(policy, catalog).Where(s => hostStacks.Contains(s.Id)).ToList();
        var scored = candidates.Select(s => (s.Id, Result: scorer.Score(s, conditions, policy)))
            .OrderByDescending(s => s.Result.Score).ThenBy(s => s.Id, StringComparer.Ordinal)
            .Select(s => new CandidateScore(s.Id, Math.Round(s.Result.Score, 4), s.Result.Why)).ToImmutableArray();
        Decision Make(string stack, string reason, bool exploration = false) =>
            new(vmId, remoteHost, current, stack, stack != current, reason, conditions, policy, scored, exploration, now);

        if (scored.Length == 0)
        {
            var why = $"no candidate: the policy admits none of the published stacks this host runs ({string.Join(", ", hostStacks.Order(StringComparer.Ordinal))})";
            return (Make(current ?? "", why), null);
        }
        var best = scored[0];
        var currentScore = scored.FirstOrDefault(s => s.Stack == current);
        if (current is null || currentScore is null)
        {
            return (Make(best.Stack, current is null ? $"first decision: {best.Stack} scores best ({best.Score:0.###})" : $"{current} is no longer allowed or available; {best.Stack} scores best"), null);
        }
        if (policy.Pin is null && policy.ExplorationShare > 0 && scored.Length > 1 && random < policy.ExplorationShare)
        {
            var others = scored.Where(s => s.Stack != current).ToList();
            var pick = others[(int)(random / policy.ExplorationShare * others.Count) % others.Count];
            return (Make(pick.Stack, $"exploration ({policy.ExplorationShare:P0} of decisions may try another allowed stack)", exploration: true), null);
        }
        if (best.Stack == current || best.Score <= currentScore.Score * (1 + _options.Margin))
        {
            return (Make(current, best.Stack == current ? $"{current} scores best" : $"{best.Stack} scores {best.Score:0.###} but does not beat {current} ({currentScore.Score:0.###}) by {_options.Margin:P0}"), null);
        }
        if (pending?.Stack != best.Stack && _options.SustainFor > TimeSpan.Zero)
        {
            return (Make(current, $"{best.Stack} beats {current} by more than {_options.Margin:P0}; switching if it still does after {_options.SustainFor.TotalSeconds:0.#} s"), new PendingSwitch(best.Stack, now));
        }
        if (pending is not null && now - pending.Since < _options.SustainFor)
        {
            return (Make(current, $"{best.Stack} has beaten {current} for {(now - pending.Since).TotalSeconds:0.#} s of the {_options.SustainFor.TotalSeconds:0.#} s required"), pending);
        }
        return (Make(best.Stack, $"{best.Stack} ({best.Score:0.###}) beat {current} ({currentScore.Score:0.###}) by more than {_options.Margin:P0} for {(now - (pending?.Since ?? now)).TotalSeconds:0.#} s"), null);
    }
}
