using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>Where a rollout is: going out ring by ring, paused by an operator, on every host, or rolled back.</summary>
public enum RolloutStatus
{
    Running,
    Paused,
    Completed,
    RolledBack,
}

/// <summary>What a health gate says of the version going out: not yet known, good enough, or worse (the rollout rolls back).</summary>
public enum GateVerdict
{
    Pending,
    Passed,
    Failed,
}

/// <summary>A step of a rollout, with who or what took it and why (an operator, or the rollout's own gates).</summary>
[GenerateSerializer, Immutable, Alias("fabric.rollout-step")]
public sealed record RolloutStep(
    [property: Id(0)] DateTimeOffset At,
    [property: Id(1)] string By,
    [property: Id(2)] string Action,
    [property: Id(3)] string Why);

/// <summary>One health gate's latest judgement of the version going out, and its evidence (measured against the previous version).</summary>
[GenerateSerializer, Immutable, Alias("fabric.gate-result")]
public sealed record GateResult(
    [property: Id(0)] string Gate,
    [property: Id(1)] GateVerdict Verdict,
    [property: Id(2)] string Evidence);

/// <summary>The hosts one ring of a rollout adds (a ring reached runs the new version, with every ring before it).</summary>
[GenerateSerializer, Immutable, Alias("fabric.rollout-ring")]
public sealed record RolloutRing(
    [property: Id(0)] string Name,
    [property: Id(1)] ImmutableArray<string> Hosts);

/// <summary>
/// A stack version going out to the fleet in rings (<see cref="Rings"/>; the first, the canary, is reached when the
/// rollout starts), each baking for <see cref="Bake"/> while health gates compare what the fleet measures on
/// <see cref="To"/> with <see cref="From"/>. A host in a ring reached runs <see cref="To"/>; every other host — hosts
/// that join later included — stays on <see cref="From"/> until the last ring is reached (<see cref="VersionFor"/>).
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.rollout")]
public sealed record Rollout(
    [property: Id(0)] string StackId,
    [property: Id(1)] string From,
    [property: Id(2)] string To,
    [property: Id(3)] RolloutStatus Status,
    [property: Id(4)] DateTimeOffset Started,
    [property: Id(5)] TimeSpan Bake)
{
    /// <summary>The rings, planned at the first judgement from the hosts that run the stack then (empty until then: no host runs <see cref="To"/>).</summary>
    [Id(6)] public ImmutableArray<RolloutRing> Rings { get; init; } = [];

    /// <summary>The last ring reached (−1: none yet).</summary>
    [Id(7)] public int Ring { get; init; } = -1;

    /// <summary>When the current ring was reached; its bake runs from then, less any time paused.</summary>
    [Id(8)] public DateTimeOffset RingSince { get; init; }

    /// <summary>While paused: how long the current ring had baked when it was paused.</summary>
    [Id(9)] public TimeSpan BakedWhenPaused { get; init; }

    [Id(10)] public ImmutableArray<GateResult> Gates { get; init; } = [];

    [Id(11)] public DateTimeOffset? JudgedAt { get; init; }

    [Id(12)] public ImmutableArray<RolloutStep> Steps { get; init; } = [];

    /// <summary>Whether the rollout still moves (running or paused); a completed or rolled back one is history.</summary>
    public bool Active => Status is RolloutStatus.Running or RolloutStatus.Paused;

    /// <summary>How long the current ring has baked at <paramref name="now"/>.</summary>
    public TimeSpan Baked(DateTimeOffset now) => Ring < 0 ? TimeSpan.Zero : Status == RolloutStatus.Paused ? BakedWhenPaused : now - RingSince;

    /// <summary>
    /// When the ring holding <paramref name="hostId"/> was reached (a host in no ring: when the last one was), or null
    /// while it is not: before then the host ran <see cref="From"/>, after it <see cref="To"/>.
    /// </summary>
    public DateTimeOffset? ReachedAt(string hostId)
    {
        if (Ring < 0 || Rings.IsDefaultOrEmpty)
        {
            return null;
        }
        var ring = Rings.Take(Ring + 1).ToList().FindIndex(r => r.Hosts.Contains(hostId, StringComparer.Ordinal));
        if (ring < 0 && Ring < Rings.Length - 1)
        {
            return null;
        }
        var name = "reach " + Rings[ring < 0 ? Rings.Length - 1 : ring].Name;
        return Steps.LastOrDefault(s => s.Action == name)?.At ?? Started;
    }

    /// <summary>The version <paramref name="hostId"/> is to run while this rollout is what decides it.</summary>
    public string VersionFor(string hostId) => Status switch
    {
        RolloutStatus.Completed => To,
        RolloutStatus.RolledBack => From,
        _ when Ring < 0 => From,
        _ when Ring >= Rings.Length - 1 => To,
        _ => Rings.Take(Ring + 1).Any(r => r.Hosts.Contains(hostId, StringComparer.Ordinal)) ? To : From,
    };
}

/// <summary>A version the control plane judged bad (a rollout's failed gate, or an operator's roll back): never released again, with why.</summary>
[GenerateSerializer, Immutable, Alias("fabric.bad-version")]
public sealed record BadVersion(
    [property: Id(0)] string StackId,
    [property: Id(1)] string Version,
    [property: Id(2)] DateTimeOffset At,
    [property: Id(3)] string By,
    [property: Id(4)] string Evidence);

/// <summary>
/// What a rollout's judge measured (<see cref="IRolloutJudgeGrain"/>): the gates' verdicts, and on the first judgement
/// the ring plan.
/// </summary>
[GenerateSerializer, Immutable, Alias("fabric.rollout-judgement")]
public sealed record RolloutJudgement(
    [property: Id(0)] string StackId,
    [property: Id(1)] string To,
    [property: Id(2)] ImmutableArray<GateResult> Gates,
    [property: Id(3)] ImmutableArray<RolloutRing> Plan);

/// <summary>What a host is to run of each stack the control plane decides for: operators' holds and rollouts' releases.</summary>
[GenerateSerializer, Immutable, Alias("fabric.host-release")]
public sealed record HostRelease(
    [property: Id(0)] ImmutableArray<VersionHold> Holds,
    [property: Id(1)] ImmutableDictionary<string, string> Releases);

/// <summary>Judges one stack's rollout (key: the stack id) from the outcome log and the hosts' reports, off the catalog's turn.</summary>
[Alias("fabric.rollout-judge")]
public interface IRolloutJudgeGrain : IGrainWithStringKey
{
    /// <summary>Measures the gates of <paramref name="rollout"/> and hands the judgement to the catalog (which does not wait for it).</summary>
    [Alias("judge")]
    ValueTask JudgeAsync(Rollout rollout);
}
