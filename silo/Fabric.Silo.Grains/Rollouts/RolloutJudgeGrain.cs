using System.Collections.Immutable;
using Fabric.Silo.Learning;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo.Rollouts;

/// <summary>
/// Judges a stack's rollout when the catalog asks (every <see cref="RolloutOptions.JudgeEvery"/>): plans the rings from
/// the hosts that run the stack at the first judgement, then measures the gates (<see cref="RolloutGates"/>) — the
/// hosts of the rings reached, as their last registrations reported them, and the outcome log's recent outcomes — and
/// hands the verdicts to the catalog, which alone changes the rollout. Holds no state: any silo's activation judges alike.
/// </summary>
public sealed partial class RolloutJudgeGrain(OutcomeLog log, RolloutOptions options, ILogger<RolloutJudgeGrain> logger) : Grain, IRolloutJudgeGrain
{
    public async ValueTask JudgeAsync(Rollout rollout)
    {
        var fleet = await GrainFactory.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync();
        var hosts = fleet.Hosts.Except(fleet.Removed.IsDefault ? [] : fleet.Removed, StringComparer.Ordinal).ToList();
        var infos = (await Task.WhenAll(hosts.Select(h => GrainFactory.GetGrain<IHostGrain>(h).GetInfoAsync().AsTask()))).OfType<HostInfo>().ToList();
        IReadOnlyList<LoggedOutcome> outcomes;
        var unreadable = false;
        try
        {
            outcomes = await Task.Run(() => log.ReadRecent(options.OutcomesRead));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or Azure.RequestFailedException or System.Text.Json.JsonException)
        {
            // The outcome log is away: the utility gate cannot be measured now, so it stays pending (never passes unseen),
            // and the rings wait for a judgement that can read it (the canary is chosen from it).
            Log.OutcomesUnreadable(logger, rollout.StackId, e.Message);
            outcomes = [];
            unreadable = true;
        }
        var plan = ImmutableArray<RolloutRing>.Empty;
        var planned = rollout;
        if (rollout.Ring < 0 && !unreadable)
        {
            var running = infos.Where(i => !i.StackVersions.IsDefault && i.StackVersions.Any(u => u.Id == rollout.StackId)).Select(i => i.HostId);
            plan = RolloutMachine.Plan(rollout.StackId, rollout.To, running, CarryingPairs(rollout, outcomes, DateTimeOffset.UtcNow));
            planned = rollout with { Rings = plan, Ring = 0 };
        }
        var reached = infos.Where(i => planned.VersionFor(i.HostId) == rollout.To).ToList();
        var lastSeen = await Task.WhenAll(reached.Select(async i => (i.HostId, await GrainFactory.GetGrain<IHostGrain>(i.HostId).GetLastSeenAsync())));
        // Each gate on its own: one that throws (figures it cannot use) is pending with the reason, the others still judge.
        GateResult Measure(string gate, Func<GateResult> measure)
        {
            try
            {
                return measure();
            }
            catch (Exception e) when (e is ArithmeticException or ArgumentException or InvalidOperationException)
            {
                Log.GateNotMeasured(logger, rollout.StackId, gate, e.Message);
                return new GateResult(gate, GateVerdict.Pending, $"not measured: {e.Message}");
            }
        }
        ImmutableArray<GateResult> gates =
        [
            Measure("quarantine", () => RolloutGates.Quarantine(rollout, reached)),
            Measure("silence", () => RolloutGates.Silence(planned, lastSeen, DateTimeOffset.UtcNow, options)),
            Measure("drops", () => RolloutGates.Drops(rollout, reached, options)),
            Measure("cpu", () => RolloutGates.Cpu(rollout, reached, options)),
            Measure("utility", () => RolloutGates.Utility(planned, outcomes, planned.ReachedAt, options)),
        ];
        await GrainFactory.GetGrain<ICatalogGrain>(ICatalogGrain.Key).JudgedAsync(new RolloutJudgement(rollout.StackId, rollout.To, gates, plan));
    }

    /// <summary>
    /// The host pairs whose VM paths carried the stack in the look-back (either host's outcomes on it name the other), where
    /// both hosts' outcomes, on any stack, name each other: an agent writes the remote host of its own outcomes, so one
    /// alone could name any host — and put itself in the canary beside it. An outcome dated ahead of now is not taken.
    /// </summary>
    public static IEnumerable<(string A, string B)> CarryingPairs(Rollout rollout, IEnumerable<LoggedOutcome> outcomes, DateTimeOffset now)
    {
        var since = rollout.Started - RolloutGates.LookBack(rollout);
        var recent = outcomes.Where(o => o.Host is { } host && host != o.RemoteHost && o.At >= since && o.At <= now + TimeSpan.FromMinutes(1)).ToList();
        var talk = recent.Select(o => (A: o.Host!, B: o.RemoteHost)).ToHashSet();
        return recent.Where(o => o.Stack == rollout.StackId)
            .Select(o => string.CompareOrdinal(o.Host, o.RemoteHost) < 0 ? (A: o.Host!, B: o.RemoteHost) : (A: o.RemoteHost, B: o.Host!))
            .Distinct()
            .Where(p => talk.Contains((p.A, p.B)) && talk.Contains((p.B, p.A)));
    }

    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Warning, "Rollout of {StackId}: the outcome log cannot be read ({Reason}); its utility gate stays pending")]
        public static partial void OutcomesUnreadable(ILogger logger, string stackId, string reason);

        [LoggerMessage(2, LogLevel.Warning, "Rollout of {StackId}: the {Gate} gate could not be measured ({Reason}); it stays pending")]
        public static partial void GateNotMeasured(ILogger logger, string stackId, string gate, string reason);
    }
}
