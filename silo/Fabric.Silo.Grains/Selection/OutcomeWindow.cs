namespace Fabric.Silo.Selection;

/// <summary>
/// What a VM got on <paramref name="Stack"/> on one path in the last seconds, from its own outcomes: their mean utility,
/// how far that mean may be from what the stack really gives it (<paramref name="Spread"/>), over how many outcomes
/// and how long, and whether the path held still while the newest of them came (<paramref name="Steady"/>: see
/// <see cref="OutcomeWindow.SteadyFor"/>).
/// </summary>
public sealed record Observed(string Stack, double Score, double Spread, int Count, TimeSpan Over, bool Steady = true);

/// <summary>
/// One path's recent outcomes for one VM (utility per interval, on the stack that carried it and the path's conditions
/// then): those of the last <see cref="Keep"/> before the newest, at most <see cref="MostKept"/>. The selector judges the stack a VM runs by what the VM gets on it
/// (<see cref="Of"/>), not by a prediction: a prediction's uncertainty is widest exactly where the model knows least,
/// and a switch must beat it, so a VM its stack starves (4 Mbit/s of a 119 Mbit/s path, predicted 0.24 ± 0.76) was held
/// there for a whole phase while what it got was in its outcomes every second.
/// </summary>
public sealed class OutcomeWindow
{
    /// <summary>How long outcomes are kept (and the longest an observation spans).</summary>
    public static readonly TimeSpan Keep = TimeSpan.FromSeconds(20);

    /// <summary>Outcomes this soon after a switch are not the new stack's yet (the swap, the VM's TCP finding its rate).</summary>
    public static readonly TimeSpan Settle = TimeSpan.FromSeconds(3);

    /// <summary>
    /// How long a path's conditions must have held for an observation to be <see cref="Observed.Steady"/>: the VM's
    /// outcomes over this time (from the last before it on) all on the stack observed, none on conditions
    /// that moved from the path's now (<see cref="Held"/>). The smoothed conditions show a change of the link over seconds
    /// while the outcomes before it still count (the minimum RTT and the loss move last): the learning benchmark's bulk VM
    /// explored 1.5 s into a phase whose RTT had gone from 8 to 30 ms, on an observation of the phase before, and held
    /// the tried stack there (77 Mbit/s where fec gave 210).
    /// </summary>
    public static readonly TimeSpan SteadyFor = TimeSpan.FromSeconds(5);

    /// <summary>The most outcomes kept (an agent reports one a second per path; a report with more is not believed further).</summary>
    public const int MostKept = 64;

    /// <summary>The fewest outcomes an observation is made of.</summary>
    public const int Fewest = 3;

    /// <summary>The least spread an observation claims: one VM's seconds on one path say nothing finer.</summary>
    public const double LeastSpread = 0.02;

    /// <summary>
    /// How many consecutive outcomes count as one independent one when the spread of their mean is taken: a VM's TCP
    /// rate one second is much like the next second's.
    /// </summary>
    private const int Correlated = 4;

    private readonly Queue<(DateTimeOffset At, string Stack, double Utility, PathConditions Conditions)> _entries = new();

    /// <summary>Adds one outcome (utility 0–1) reported at <paramref name="at"/>; drops what is older than <see cref="Keep"/>.</summary>
    public void Add(DateTimeOffset at, string stack, double utility, PathConditions conditions)
    {
        if (!double.IsFinite(utility))
        {
            return;
        }
        _entries.Enqueue((at, stack, Math.Clamp(utility, 0, 1), conditions));
        while (_entries.Count > MostKept || (_entries.Count > 0 && _entries.Peek().At < at - Keep))
        {
            _entries.Dequeue();
        }
    }

    /// <summary>
    /// What the VM got on <paramref name="stack"/>: its outcomes since <paramref name="since"/> (when the stack's first
    /// outcome on this path came) plus <see cref="Settle"/>, within <see cref="Keep"/> of <paramref name="now"/>, on a link that has not
    /// changed from <paramref name="conditions"/> (<see cref="PathSmoother.LinkChanged"/>); null with fewer than
    /// <see cref="Fewest"/>. Steady when the outcomes of the last <see cref="SteadyFor"/>, and the last one before, are
    /// all on <paramref name="stack"/> and on conditions that <see cref="Held"/> to <paramref name="conditions"/>.
    /// </summary>
    public Observed? Of(string stack, DateTimeOffset since, DateTimeOffset now, PathConditions conditions)
    {
        var from = since + Settle;
        var (n, sum, sumSquares, first) = (0, 0.0, 0.0, now);
        // The entries are in the order they came: the last at or before the cut-off opens the steady span.
        var (opened, steady) = (false, true);
        foreach (var (at, s, utility, c) in _entries)
        {
            var held = s == stack && Held(c, conditions);
            if (at <= now - SteadyFor)
            {
                opened = held;
            }
            else
            {
                steady &= held;
            }
            if (s != stack || at < from || at < now - Keep || PathSmoother.LinkChanged(c, conditions))
            {
                continue;
            }
            (n, sum, sumSquares) = (n + 1, sum + utility, sumSquares + (utility * utility));
            first = at < first ? at : first;
        }
        if (n < Fewest)
        {
            return null;
        }
        var mean = sum / n;
        var std = Math.Sqrt(Math.Max(sumSquares / n - (mean * mean), 0) * n / Math.Max(n - 1, 1));
        var spread = Math.Max(LeastSpread, std / Math.Sqrt(n / (double)Correlated));
        return new Observed(stack, mean, spread, n, now - first, opened && steady);
    }

    /// <summary>
    /// Whether a path's conditions <paramref name="then"/> held to <paramref name="now"/>: the same link
    /// (<see cref="PathSmoother.LinkChanged"/>), traffic then as now, and the smoothed RTT within 20 % or, on a path whose
    /// RTT varied then (a queue's sawtooth under a bulk VM), within twice its standard deviation then.
    /// </summary>
    public static bool Held(PathConditions then, PathConditions now) =>
        !PathSmoother.LinkChanged(then, now) && then.Idle == now.Idle
        && Math.Abs(now.RttMs - then.RttMs) <= Math.Max(0.2 * Math.Max(then.RttMs, 0.5), 2 * then.RttStdMs);
}
