using System.Collections.Immutable;

namespace Fabric.Silo.Selection;

/// <summary>When a path last explored, and on what conditions.</summary>
public sealed record Explored(DateTimeOffset At, PathConditions Conditions);

/// <summary>
/// A stack a path left by a switch of its own or a pin — or by an exploration (a guided one too), when the VM's
/// outcomes said what it got there, so the return is judged on what the VM got on both — when, on what conditions, and
/// what it scored
/// then, running (on conditions it made): observed (what the VM got on it, <see cref="OutcomeWindow"/>) or predicted; and
/// its version then ("": not known), so a version published since is not judged on what an older one gave.
/// </summary>
public sealed record Left(string Stack, DateTimeOffset At, PathConditions Conditions, double Score, double Uncertainty = 0, string Source = "", string Version = "")
{
    /// <summary>What a path remembers after <paramref name="decision"/>: <paramref name="left"/>, and the stack it switched
    /// away from (replacing what it remembered of that stack; <paramref name="version"/>: its version), as the decision
    /// scored it — or, where a pin moved the VM off it (so it was no candidate), as <paramref name="observed"/> says the VM
    /// got on it. A stack that left the candidates otherwise (withdrawn, no longer run by the host, no longer admitted)
    /// is not remembered by what it gave.</summary>
    public static IReadOnlyList<Left> After(IReadOnlyList<Left>? left, Decision decision, Observed? observed = null, string version = "")
    {
        if (!decision.Changed || decision.Previous is not { Length: > 0 } previous || decision.Stack.Length == 0
            || (decision.Exploration && decision.Candidates.FirstOrDefault(c => c.Stack == previous)?.Source != "observed"))
        {
            return left ?? [];
        }
        var entry = decision.Candidates.FirstOrDefault(c => c.Stack == previous) is { } ran
            ? new Left(previous, decision.At, decision.Conditions, ran.Score, ran.Uncertainty, ran.Source, version)
            : observed is { } o && o.Stack == previous && decision.Policy.Pin == decision.Stack
                ? new Left(previous, decision.At, decision.Conditions, o.Score, o.Spread, "observed", version) : null;
        return entry is null ? left ?? [] : [.. (left ?? []).Where(l => l.Stack != previous), entry];
    }
}

/// <summary>A candidate that beats the current stack, and since when (hysteresis memory between decisions).</summary>
/// <param name="Stack">The candidate.</param>
/// <param name="Since">When it started to beat the current stack.</param>
/// <param name="Sustain">How long it must keep winning (null: <see cref="SelectorOptions.SustainFor"/>).</param>
[GenerateSerializer, Immutable, Alias("fabric.pending-switch")]
public sealed record PendingSwitch([property: Id(0)] string Stack, [property: Id(1)] DateTimeOffset Since, [property: Id(2)] TimeSpan? Sustain = null);

/// <summary>
/// How eager the selector is. A candidate replaces the current stack only when it beats it by <see cref="Margin"/>
/// (relative) and by more than the cost of a swap plus both scores' uncertainty (absolute, at most what the VM has at
/// stake: <see cref="Needed"/>), continuously for
/// <see cref="SustainFor"/> — less when the gain is several times what a switch needs (<see cref="SustainWhen"/>).
/// Exploration tries only candidates scored within <see cref="ExploreWithin"/> of the best, at most once per
/// <see cref="ExploreSpacing"/> on a path, and on conditions it explored before only after
/// <see cref="ExploreSameConditionsSpacing"/>.
/// </summary>
public sealed record SelectorOptions(double Margin = 0.10, TimeSpan? Sustain = null, double SwapCost = 0.01, double ExploreWithin = 0.10)
{
    /// <summary>
    /// The least time between two explorations of one VM's path. A share of decisions alone is no bound: a path decides
    /// on every significant change and again every 15 s, so a 5 % share explored about once a minute in the learning
    /// benchmark — two switches each (there and back), where the goal for a stationary path is one switch an hour.
    /// </summary>
    public TimeSpan ExploreSpacing { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>
    /// The least time between two explorations of one path on conditions that have not changed significantly
    /// (<see cref="PathSmoother.Significant"/>) since the last. What a stationary path teaches the fleet is taught by its
    /// first exploration; each later one is two switches (there and back) where the goal is one switch a path-hour.
    /// </summary>
    public TimeSpan ExploreSameConditionsSpacing { get; init; } = TimeSpan.FromHours(4);

    /// <summary>
    /// How long a stack a path left, on a link that has not changed since (<see cref="PathSmoother.LinkChanged"/>), is
    /// judged on what the VM got there (observed), or on the lower of its predicted score now and then.
    /// A path's conditions are partly its stack's doing (fec's parity fills a slow link's queue, and the prior then reads
    /// the link's loss as congestion std-ipv4 would not meet; on std-ipv4 the queue is gone and the loss is the link's
    /// again), so two stacks can each look better from the other, and a path goes back and forth while its link holds
    /// still; and a stack judged by what the VM gets on it would otherwise always lose to a hopeful prediction for the
    /// others, one after another. Each stack is judged where it ran instead.
    /// </summary>
    public TimeSpan ReturnMemory { get; init; } = TimeSpan.FromHours(1);

    /// <summary>
    /// How long what a VM got on a stack a path left (observed, not predicted) holds, on a link that has not changed: a
    /// prediction hopeful for every stack but the running one sends a path round all of them once each time this runs
    /// out (three switches with four stacks), where the goal is one switch a path-hour.
    /// </summary>
    public TimeSpan ObservedMemory { get; init; } = TimeSpan.FromHours(4);

    /// <summary>
    /// How long a newly chosen stack stays while the VM's outcomes on it are too few to judge it by (the agent's swap,
    /// <see cref="OutcomeWindow.Settle"/>, then <see cref="OutcomeWindow.Fewest"/> outcomes a second apart).
    /// </summary>
    public TimeSpan JudgeWithin { get; init; } = TimeSpan.FromSeconds(8);

    /// <summary>The shortest share of <see cref="SustainFor"/> a gain far beyond what a switch needs waits.</summary>
    public const double QuickestShare = 0.4;

    /// <summary>No switch comes sooner than this (or <see cref="SustainFor"/> when that is shorter): a few seconds of samples.</summary>
    public static readonly TimeSpan ShortestSustain = TimeSpan.FromSeconds(2);

    public TimeSpan SustainFor => Sustain ?? TimeSpan.FromSeconds(5);

    /// <summary>
    /// The gain <paramref name="best"/> must show over <paramref name="current"/> for a switch: the margin (relative), or
    /// the cost of a swap plus the uncertainty of the difference, whichever is more. The two scores' uncertainties are
    /// independent errors, so the difference's is their root sum of squares — but a switch can cost the VM no more than
    /// what it gets now (utility is never below 0), taken at its score plus that score's uncertainty. A VM its stack
    /// serves with next to nothing (std-ipv4 at 2 Mbit/s on a 300 Mbit/s path with bursts of loss) is not held there
    /// because the model's estimate of a better candidate is wide.
    /// <para>A predicted <paramref name="best"/> is taken as at least as uncertain as the prediction for the current
    /// stack turned out to be hopeful here (<paramref name="missed"/>: how far what the VM gets on it falls short of what
    /// was predicted for it, on these conditions). On a link no prediction knows, each stack looked better than the one the
    /// VM was on, was not, and the next looked better again: the learning benchmark's latency VM went fec → arq-bulk →
    /// std-ipv4 in one 25 s phase of bursty loss (predicted 0.42 and 0.37 at ± 0.01, got 0.25 and 0.14), 387 ms p99
    /// where the worst fixed stack gave 241. Only the bar is raised, not how long a switch waits, so a VM its stack
    /// starves still leaves as soon as before.</para>
    /// </summary>
    /// <returns>What a switch needs; what it would need without the cap and without the miss (how long a switch waits is
    /// judged on that: a wider estimate must not switch sooner); and whether the cap set the bar.</returns>
    public (double Needed, double Uncapped, bool Capped) Needed(CandidateScore current, CandidateScore best, double missed = 0)
    {
        var spread = Math.Sqrt(best.Uncertainty * best.Uncertainty + current.Uncertainty * current.Uncertainty);
        var bestUncertainty = Predicted(best) ? Math.Max(best.Uncertainty, missed) : best.Uncertainty;
        var widened = Math.Sqrt(bestUncertainty * bestUncertainty + current.Uncertainty * current.Uncertainty);
        var atStake = Math.Max(current.Score, 0) + current.Uncertainty;
        var margin = current.Score * Margin;
        return (Math.Max(margin, SwapCost + Math.Min(widened, atStake)), Math.Max(margin, SwapCost + spread), atStake < widened && SwapCost + atStake > margin);
    }

    /// <summary>Whether a candidate's score is a prediction (the model's or the prior's), not what a VM got.</summary>
    public static bool Predicted(CandidateScore score) => score.Source is not ("observed" or "ran here");

    /// <summary>
    /// How long a candidate winning by <paramref name="gain"/> where a switch needs <paramref name="needed"/> must keep
    /// winning: the full sustain time at the threshold, shrinking with the ratio down to 40 % of it (and never below
    /// <see cref="ShortestSustain"/>) at 2.5 times the threshold. Noise seldom clears the threshold by that much for
    /// seconds on end, and a VM on a stack that has just stopped serving it (a latency VM on std-ipv4 when loss starts:
    /// every lost request waits out a retransmission timeout) pays for every second.
    /// </summary>
    public TimeSpan SustainWhen(double gain, double needed)
    {
        var scaled = SustainFor * Math.Clamp(needed / Math.Max(gain, 1e-9), QuickestShare, 1);
        var floor = SustainFor < ShortestSustain ? SustainFor : ShortestSustain;
        return scaled > floor ? scaled : floor;
    }
}

/// <summary>
/// select_stack made real. Candidates: published stacks the policy admits and the host supports. Each is scored (the
/// fleet's model where it knows the context, the profile prior elsewhere; the current stack by what the VM gets on it, once
/// its outcomes say; a stack the path left on the same link by what it got there); the best replaces the current stack only when
/// its predicted gain beats the margin, the cost of a swap and the uncertainty of both scores, continuously for the
/// sustain time (no flapping on noise). A current stack that is no longer admitted is replaced at once; otherwise a path
/// without VM traffic keeps its stack. A share of decisions (the policy's, never for a pinned VM, never outside the
/// candidates) explores — only among candidates predicted close to the best, at most once per exploration spacing on a
/// path, and only once the VM's outcomes on its stack on the link as it is are in and the path has held still for
/// seconds — and every decision carries the
/// probability with which its stack was chosen. Pure: time and randomness come in.
/// <para>Guided exploration. A candidate the model predicts above what the VM gets on its stack — by more than the margin
/// and the cost of a swap once what the model's prediction for that stack proved hopeful here is taken off, but not by
/// the uncertainty a switch also needs — is tried where the policy lets the VM explore, only from a steady observation,
/// at most once per exploration spacing and, on a link whose loss, capacity and minimum RTT have not changed, once per
/// four hours. The first judgement of a stack any exploration moved the VM to is against what the VM got on the stack
/// it left (both observed, <see cref="Left"/>), without the margin. Without it the uncertainty held the learning
/// benchmark's latency VM on arq-bulk at 45 ms p99 over the Pantheon path's 3 % random loss for a whole phase, fec
/// predicted best (0.57 ± 0.14 against the 0.50 the VM got), where fec pinned gave 18 ms; a 5 % draw comes about once
/// in seven phases.</para>
/// </summary>
public sealed class StackSelector(IStackScorer scorer, SelectorOptions? options = null)
{
    private readonly SelectorOptions _options = options ?? new SelectorOptions();

    public SelectorOptions Options => _options;

    /// <summary>Chooses the stack for <paramref name="vmId"/>'s path to <paramref name="remoteHost"/> (see the class summary).</summary>
    /// <param name="vmId">The VM.</param>
    /// <param name="remoteHost">The path's far end.</param>
    /// <param name="policy">The VM's policy.</param>
    /// <param name="conditions">The path's smoothed conditions, measured on <paramref name="current"/>.</param>
    /// <param name="catalog">The published stacks.</param>
    /// <param name="hostStacks">The stacks the VM's host runs.</param>
    /// <param name="current">The stack the path runs now (null: none yet).</param>
    /// <param name="pending">The switch pending from earlier decisions, if any.</param>
    /// <param name="now">The time of the decision.</param>
    /// <param name="random">A uniform draw in [0, 1) (exploration).</param>
    /// <param name="lastExplored">When this path last explored and on what conditions (null: never, or not known): none again
    /// within <see cref="SelectorOptions.ExploreSpacing"/>, nor on the same conditions within <see cref="SelectorOptions.ExploreSameConditionsSpacing"/>.</param>
    /// <param name="left">The stacks the path left, and what they scored there (null: not known): each, on an unchanged
    /// link, is judged on that (<see cref="SelectorOptions.ReturnMemory"/>).</param>
    /// <param name="observed">What the VM got on <paramref name="current"/> in the last seconds (null: not enough outcomes
    /// yet): the current stack is judged on it, not on a prediction.</param>
    /// <param name="currentSince">When <paramref name="current"/> was chosen (null: the path reports no VM outcomes; a
    /// time long ago where they come and it is not known, or where none has come yet and the first may still be on its
    /// way: not held for it): until it has been judged on what the VM gets (<see cref="SelectorOptions.JudgeWithin"/>), it stays; and it
    /// explores only while <paramref name="observed"/> says what the VM gets on it on the link as it is.</param>
    public (Decision Decision, PendingSwitch? Pending) Select(string vmId, string remoteHost, Policy policy, PathConditions conditions,
        IReadOnlyCollection<StackInfo> catalog, IReadOnlySet<string> hostStacks, string? current, PendingSwitch? pending, DateTimeOffset now, double random,
        Explored? lastExplored = null, IReadOnlyList<Left>? left = null, Observed? observed = null, DateTimeOffset? currentSince = null)
    {
        // A pinned stack that is no longer published (withdrawn) or that this host does not run: the VM is not left on a
        // stack no host may run; it gets the best of what the rest of its policy admits, without exploring (the operator
        // pinned it), and every reason says why.
        // So is a pinned stack whose newest version was published experimental (a pin is never experimental).
        var lostPin = policy.Pin is { } pin && (!catalog.Any(s => s.Id == pin) || !hostStacks.Contains(pin) || catalog.Any(s => s.Id == pin && s.Experimental)) ? pin : null;
        var choosing = lostPin is null ? policy : policy with { Pin = null, ExplorationShare = 0 };
        var pinNote = lostPin is null ? "" : $"pinned {lostPin} is {(catalog.FirstOrDefault(s => s.Id == lostPin) is not { } lost ? "not published (withdrawn)" : lost.Experimental ? $"experimental in {lost.Version}" : "not run by this host")}, so the rest of the policy decides: ";
        var candidates = PolicyValidator.Eligible(choosing, catalog).Where(s => hostStacks.Contains(s.Id)).ToList();
        var results = candidates.Select(s => (s.Id, Result: scorer.Score(s, conditions, policy, vmId, current))).ToList();
        // Where a model scores some candidates and the prior others, the prior's guesses count as uncertain as the scorer
        // says they are there (StackScore.BesideModel).
        var mixed = results.Any(r => r.Result.Source != "prior");
        var scored = results.Select(r => mixed && r.Result.Source == "prior" && r.Result.BesideModel > r.Result.Uncertainty
                ? r with { Result = r.Result with { Uncertainty = r.Result.BesideModel } } : r)
            .Select(s => Share(Judged(new CandidateScore(s.Id, Math.Round(s.Result.Score, 4), s.Result.Why, Math.Round(s.Result.Uncertainty, 4), s.Result.Source))))
            .OrderByDescending(s => s.Score).ThenBy(s => s.Stack, StringComparer.Ordinal).ToImmutableArray();
        // The current stack by what the VM gets on it; a stack the path left on this link by what it got (or scored) there.
        CandidateScore Judged(CandidateScore s)
        {
            if (s.Stack == current && observed is { } o && o.Stack == current)
            {
                return s with { Score = Math.Round(o.Score, 4), Uncertainty = Math.Round(o.Spread, 4), Source = "observed",
                    Why = $"what the VM got on it: {o.Score:0.###} ± {o.Spread:0.##} over {o.Count} outcomes in {o.Over.TotalSeconds:0} s ({s.Source} predicted {s.Score:0.###} ± {s.Uncertainty:0.##})" };
            }
            if (s.Stack != current && left?.LastOrDefault(l => l.Stack == s.Stack) is { } l
                && (l.Version.Length == 0 || l.Version == candidates.FirstOrDefault(c => c.Id == s.Stack)?.Version)
                && now - l.At < (l.Source == "observed" ? _options.ObservedMemory : _options.ReturnMemory)
                && !PathSmoother.LinkChanged(l.Conditions, conditions) && (l.Source == "observed" || l.Score < s.Score))
            {
                var uncertainty = l.Source == "observed" ? l.Uncertainty : s.Uncertainty;
                return s with { Score = l.Score, Uncertainty = uncertainty, Source = "ran here",
                    Why = $"left {(now - l.At).TotalSeconds:0} s ago on the same link, where it {(l.Source == "observed" ? "gave the VM" : "scored")} {l.Score:0.###} ± {uncertainty:0.##} ({s.Source} predicts {s.Score:0.###} now)" };
            }
            return s;
        }
        // An experimental stack (only in the candidates of a policy that admits them) is tried, never chosen: the best is
        // the best of the rest.
        var experimental = candidates.Where(c => c.Experimental).Select(c => c.Id).ToHashSet(StringComparer.Ordinal);
        var stable = scored.Where(s => !experimental.Contains(s.Stack)).ToImmutableArray();
        // The candidates exploration may try: close to the best, not the current stack, and only when the policy lets it.
        bool SpacedBy(Func<PathConditions, PathConditions, bool> changed) => lastExplored is not { } explored || (now - explored.At >= _options.ExploreSpacing
            && (changed(explored.Conditions, conditions) || now - explored.At >= _options.ExploreSameConditionsSpacing));
        var spaced = SpacedBy(PathSmoother.Significant);
        // Where the VM's outcomes come (currentSince is given), only once they say what it gets on its stack on the link as
        // it is now: an exploration as the link changes (the learning benchmark's bulk VM tried fec the second a 300 Mbit/s
        // link began bursty loss, where fec gave 11 % of arq-lowlat's goodput, and held it 11 s until judged) costs the VM
        // while it needs the right stack most, and its outcomes would be set against nothing observed on that link.
        // Nor while the path is still moving: the smoothed conditions take seconds to show a change of the link, and the
        // outcomes before it count until they do (OutcomeWindow.SteadyFor).
        var settled = currentSince is null || observed is { } seenHere && seenHere.Stack == current && seenHere.Steady;
        // Nor while a switch to the best is pending: the learning benchmark's latency VM, fec pending over arq-lowlat at 3 %
        // loss, explored arq-bulk and reached fec 10 s later, its phase's p99 45 ms where fec gave 18.
        var near = choosing.Pin is null && choosing.ExplorationShare > 0 && scored.Length > 1 && stable.Length > 0 && spaced && settled
            && pending?.Stack != stable[0].Stack
            ? scored.Where(s => s.Stack != current && s.Score >= stable[0].Score - _options.ExploreWithin).ToList()
            : [];
        double Propensity(string stack, bool explored)
        {
            var share = near.Count > 0 ? policy.ExplorationShare : 0;
            var viaExploration = near.Any(n => n.Stack == stack) ? share / near.Count : 0;
            return Math.Round(explored ? viaExploration : (1 - share) + viaExploration, 4);
        }
        Decision Make(string stack, string reason, bool exploration = false, double? propensity = null) =>
            new(vmId, remoteHost, current, stack, stack != current, Shared<string>.Of(pinNote + reason), conditions, policy, scored, exploration, now, propensity ?? Propensity(stack, exploration));

        if (stable.Length == 0)
        {
            var why = $"no candidate: the policy admits none of the published stacks this host runs ({string.Join(", ", hostStacks.Order(StringComparer.Ordinal))})"
                + (scored.Length > 0 ? $" but experimental ones ({string.Join(", ", scored.Select(s => s.Stack))}), which are only tried" : "");
            return (Make(current ?? "", why), null);
        }
        var best = stable[0];
        var currentScore = scored.FirstOrDefault(s => s.Stack == current);
        if (current is null || currentScore is null)
        {
            return (Make(best.Stack, current is null ? $"first decision: {Describe(best)}" : $"{current} is no longer allowed or available; {Describe(best)}"), null);
        }
        if (experimental.Contains(current))
        {
            // On trial: it stays until the VM's outcomes on it are in (they are its evidence), then the policy's choice
            // returns; the outcomes judge it for later trials and for its promotion, never keep it.
            return observed is null && currentSince is { } trial && now - trial < _options.JudgeWithin
                ? (Make(current, $"experimental {current} is on trial for {(now - trial).TotalSeconds:0.#} s, until the VM's outcomes on it are in (up to {_options.JudgeWithin.TotalSeconds:0} s; {Describe(best)})"), null)
                : (Make(best.Stack, $"experimental {current} ran its trial{(observed is { } o ? $" (the VM got {o.Score:0.###} ± {o.Spread:0.##} on it)" : "")}; "
                    + $"an experimental stack is only tried, so back to the policy's choice: {Describe(best)}"), null);
        }
        if (conditions.Idle)
        {
            // Nothing to carry: a switch would buy nothing and its conditions are the probes' alone (ten a second: the
            // embedded fleet's paths without traffic went std-ipv4 → fec → std-ipv4 on them every 20 to 60 s). Decided
            // again when traffic starts (a significant change).
            return (Make(current, $"no VM traffic on this path: {current} stays until there is ({Describe(best)})"), null);
        }
        if (observed is null && currentSince is { } since && now - since < _options.JudgeWithin)
        {
            // Left now, it would be remembered by a prediction, not by what it gave the VM (and a prediction hopeful
            // for every other stack would send the path round them all, once an hour).
            return (Make(current, $"{current} was chosen {(now - since).TotalSeconds:0.#} s ago and stays until the VM's outcomes on it say what it gets "
                + $"(up to {_options.JudgeWithin.TotalSeconds:0} s; {Describe(best)})"), null);
        }
        var gain = best.Score - currentScore.Score;
        // How far the prediction for the current stack is from what the VM gets on it here (see SelectorOptions.Needed).
        var missed = currentScore.Source == "observed"
            ? Math.Round(Math.Max(0, results.First(r => r.Id == current).Result.Score - currentScore.Score), 4) : 0;
        var (needed, uncapped, capped) = _options.Needed(currentScore, best, missed);
        // A guided exploration (see the class summary). Its gain is counted less what the model's prediction for the
        // current stack proved hopeful here (the candidate's prediction may be as hopeful), and it is spaced as an
        // exploration is, but on unchanged conditions judged by the link (loss, capacity, minimum RTT), not by the smoothed
        // RTT a stack's own queue moves: otherwise each exploration and each return would count as new conditions and
        // open the next.
        var guided = best.Stack != current && gain <= needed && settled && currentSince is not null && choosing.Pin is null && choosing.ExplorationShare > 0
            && currentScore.Source == "observed" && best.Source.StartsWith("model", StringComparison.Ordinal)
            && gain - missed > Math.Max(currentScore.Score * _options.Margin, _options.SwapCost) && SpacedBy(PathSmoother.LinkChanged);
        if (near.Count > 0 && random < policy.ExplorationShare)
        {
            // Where a guided exploration would otherwise go to the best, a draw that picks it chose what the decision
            // would have.
            var pick = near[(int)(random / policy.ExplorationShare * near.Count) % near.Count];
            return (Make(pick.Stack, $"exploration: {pick.Stack} ({pick.Score:0.###}) is within {_options.ExploreWithin:0.##} of the best ({best.Stack} {best.Score:0.###}); "
                + $"{policy.ExplorationShare:P0} of decisions may try such a stack", exploration: true, propensity: guided && pick.Stack == best.Stack ? Propensity(best.Stack, explored: false) : null), null);
        }
        if (guided)
        {
            // Whenever no draw explored: chosen with the probability a decision that does not explore has, plus the draw's
            // share of it.
            return (Make(best.Stack, $"guided exploration: {best.Stack} ({best.Score:0.###} ± {best.Uncertainty:0.##}, {best.Source}) is predicted above what the VM gets on {current} "
                + $"({currentScore.Score:0.###} ± {currentScore.Uncertainty:0.##}) by {gain:0.###}, short of the {needed:0.###} a switch needs for the uncertainty: tried, and judged "
                + $"on what the VM gets (a path tries at most once per {_options.ExploreSpacing.TotalMinutes:0.#} min, on an unchanged link once per {_options.ExploreSameConditionsSpacing.TotalHours:0.#} h)",
                exploration: true, propensity: Propensity(best.Stack, explored: false)), null);
        }
        // The first judgement of a stack an exploration (guided or drawn) moved the VM to, against the stack it left (what
        // the VM got there, not a prediction): the one the VM got more on wins, without the margin (a stack tried that
        // gave 6 % less would otherwise stay until the link changed).
        if (lastExplored is { } explorationAt && currentSince == explorationAt.At && best.Source == "ran here" && gain > 0
            && left?.LastOrDefault(l => l.Stack == best.Stack)?.Source == "observed"
            && now - explorationAt.At <= _options.JudgeWithin + OutcomeWindow.Keep && currentScore.Source == "observed")
        {
            var bar = _options.SwapCost + Math.Sqrt((best.Uncertainty * best.Uncertainty) + (currentScore.Uncertainty * currentScore.Uncertainty));
            if (gain > bar)
            {
                return (Make(best.Stack, $"back to {best.Stack}: the VM got {best.Score:0.###} ± {best.Uncertainty:0.##} on it and gets {currentScore.Score:0.###} ± {currentScore.Uncertainty:0.##} "
                    + $"on {current}, which an exploration moved it to {(now - explorationAt.At).TotalSeconds:0} s ago (more than the {bar:0.###} their spreads and a swap ask)"), null);
            }
        }
        if (best.Stack == current || gain <= needed)
        {
            // A switch pending to the stack that still scores best is kept (its sustain goes on counting) by a decision that
            // could judge the current stack only by a prediction: the seconds after a link changes void the VM's outcomes
            // while the smoothed conditions settle, and the prediction's uncertainty would cancel a switch the outcomes
            // asked for (a bulk VM at 3 % loss on std-ipv4 got 0.016, fec was predicted 0.33 ± 0.23: pending at 3.9 s,
            // cancelled at 6.9 s, switched at 23.3 s of a 25 s phase). The switch itself still needs a decision that clears the bar.
            var kept = best.Stack != current && pending?.Stack == best.Stack && currentScore.Source != "observed" && gain > 0 ? pending : null;
            return (Make(current, best.Stack == current ? $"{current} scores best: {Describe(best)}"
                : $"{best.Stack} ({best.Score:0.###}) does not beat {current} ({currentScore.Score:0.###}) by the {needed:0.###} a switch needs "
                  + $"(margin {_options.Margin:P0}, swap cost {_options.SwapCost:0.##}, uncertainty ±{best.Uncertainty:0.##}/±{currentScore.Uncertainty:0.##}"
                  + $"{(missed > best.Uncertainty && SelectorOptions.Predicted(best) ? $", ±{missed:0.##} for a prediction here: {current}'s was that much above what the VM gets" : "")}"
                  + $"{(capped ? $", at most what {current} may lose: {currentScore.Score:0.###} ± {currentScore.Uncertainty:0.##}" : "")})"
                  + (kept is null ? "" : $"; the switch to {best.Stack} pending since {(now - kept.Since).TotalSeconds:0.#} s ago stays pending until the VM's outcomes judge {current} again")), kept);
        }
        // A current stack judged by what the VM got on it that a candidate beats by far more than a switch needs is left at
        // once when the observation spans the sustain such a gain would wait for: it is those seconds of samples, and a VM
        // its stack has stopped serving (a latency VM on std-ipv4 when loss starts: a retransmission timeout for every
        // lost request) pays for every second of it.
        if (currentScore.Source == "observed" && observed is { } seen && gain * SelectorOptions.QuickestShare >= uncapped
            && seen.Over >= _options.SustainWhen(gain, uncapped))
        {
            return (Make(best.Stack, $"{best.Stack} ({best.Score:0.###} ± {best.Uncertainty:0.##}, {best.Source}) beat {current} ({currentScore.Score:0.###}, what the VM got on it) "
                + $"by {gain:0.###}, at least {1 / SelectorOptions.QuickestShare:0.#} times the {uncapped:0.###} a switch needs: at once"), null);
        }
        // The current stack was being beaten already, by a candidate that still scores above it: the wait goes on from then,
        // for the stack that scores best now (at 9 % bursty loss a bulk VM on std-ipv4 that got 0 saw fec, arq-bulk and
        // arq-lowlat take turns as the best, each restarting the sustain: it left after 15 s of a 25 s phase).
        if (pending is not null && pending.Stack != best.Stack && scored.FirstOrDefault(s => s.Stack == pending.Stack) is { } was && was.Score > currentScore.Score)
        {
            pending = new PendingSwitch(best.Stack, pending.Since);
        }
        // While a candidate is pending, the longest sustain any of its decisions asked for: the smallest gain it showed.
        var sustain = _options.SustainWhen(gain, uncapped);
        if (pending is { Sustain: { } asked } && pending.Stack == best.Stack && asked > sustain)
        {
            sustain = asked;
        }
        if (pending?.Stack != best.Stack && _options.SustainFor > TimeSpan.Zero)
        {
            return (Make(current, $"{best.Stack} beats {current} by {gain:0.###} (needs {needed:0.###}); switching if it still does after {sustain.TotalSeconds:0.#} s"),
                new PendingSwitch(best.Stack, now, sustain));
        }
        if (pending is not null && now - pending.Since < sustain)
        {
            return (Make(current, $"{best.Stack} has beaten {current} for {(now - pending.Since).TotalSeconds:0.#} s of the {sustain.TotalSeconds:0.#} s required"), pending with { Sustain = sustain });
        }
        return (Make(best.Stack, $"{best.Stack} ({best.Score:0.###} ± {best.Uncertainty:0.##}, {best.Source}) beat {current} ({currentScore.Score:0.###}, {currentScore.Source}) "
            + $"by {gain:0.###} > {needed:0.###} for {(now - (pending?.Since ?? now)).TotalSeconds:0.#} s"), null);
    }

    /// <summary>
    /// One instance of a candidate's score and its words for every decision that scored it so (see <see cref="Shared{T}"/>):
    /// a host's VMs on one path are scored alike, and every (VM, path) keeps its last decision.
    /// </summary>
    private static CandidateScore Share(CandidateScore score) => Shared<CandidateScore>.Of(score with { Why = Shared<string>.Of(score.Why) });

    private static string Describe(CandidateScore best) => $"{best.Stack} scores best, {best.Score:0.###} ± {best.Uncertainty:0.##} ({best.Source})";
}
