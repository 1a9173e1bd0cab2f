using System.Collections.Immutable;
using Fabric.Repository;
using Fabric.Silo.Rollouts;

namespace Fabric.Silo;

/// <summary>Persisted catalog: the newest published version of each stack id, and the stacks the repository withdrew.</summary>
[GenerateSerializer, Alias("fabric.catalog-state")]
public sealed class CatalogState
{
    [Id(0)] public Dictionary<string, StackInfo> Stacks { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The ids a repository's sync published, and which repository (the only ones a sync of it withdraws).</summary>
    [Id(1)] public Dictionary<string, string> FromRepository { get; set; } = new(StringComparer.Ordinal);

    [Id(2)] public Dictionary<string, WithdrawnStack> Withdrawn { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Per repository, the version of the newest signed targets a sync brought.</summary>
    [Id(3)] public Dictionary<string, int> TargetsVersions { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Operators' version holds, by stack id.</summary>
    [Id(4)] public Dictionary<string, VersionHold> Holds { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Each stack's latest rollout, by stack id.</summary>
    [Id(5)] public Dictionary<string, Rollout> Rollouts { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Versions judged bad, by key (<c>id@version</c>).</summary>
    [Id(6)] public Dictionary<string, BadVersion> Bad { get; set; } = new(StringComparer.Ordinal);
}

public sealed class CatalogGrain([PersistentState("catalog", Storage.Name)] IPersistentState<CatalogState> state, RolloutOptions rollouts, TimeProvider time)
    : Grain, ICatalogGrain
{
    /// <summary>Bad versions kept per stack (its oldest are forgotten first).</summary>
    public const int BadKept = 32;

    private readonly Dictionary<string, DateTimeOffset> _judgeAsked = new(StringComparer.Ordinal);

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        // Rollouts move on the catalog's own clock: after a silo failure the catalog activates again at the next host's
        // registration, and its timer asks the judges again.
        this.RegisterGrainTimer(AskJudgesAsync, new GrainTimerCreationOptions(rollouts.JudgeEvery, rollouts.JudgeEvery) { Interleave = false });
        return Task.CompletedTask;
    }

    private Task AskJudgesAsync(CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        foreach (var rollout in state.State.Rollouts.Values.Where(r => r.Active))
        {
            if (now - _judgeAsked.GetValueOrDefault(rollout.StackId, DateTimeOffset.MinValue) >= rollouts.JudgeEvery * 0.9)
            {
                _judgeAsked[rollout.StackId] = now;
                // Not awaited: the judge calls back, and a judgement lost to a failing silo is asked for again next tick.
                _ = GrainFactory.GetGrain<IRolloutJudgeGrain>(rollout.StackId).JudgeAsync(rollout).AsTask().ContinueWith(
                    t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            }
        }
        return Task.CompletedTask;
    }

    public async ValueTask PublishAsync(StackInfo stack)
    {
        if (state.State.Stacks.TryGetValue(stack.Id, out var existing) && existing == stack)
        {
            return;
        }
        state.State.Stacks[stack.Id] = stack;
        state.State.FromRepository.Remove(stack.Id);
        state.State.Withdrawn.Remove(stack.Id);
        await state.WriteStateAsync();
    }

    public async ValueTask<ImmutableArray<string>> SyncAsync(ImmutableArray<StackInfo> published, int targetsVersion, string source)
    {
        var seen = state.State.TargetsVersions.GetValueOrDefault(source);
        if (targetsVersion < seen)
        {
            return [];
        }
        var changed = targetsVersion != seen;
        state.State.TargetsVersions[source] = targetsVersion;
        var now = published.ToDictionary(s => s.Id, StringComparer.Ordinal);
        var withdrawn = state.State.FromRepository.Where(f => f.Value == source && !now.ContainsKey(f.Key)).Select(f => f.Key).Order(StringComparer.Ordinal).ToImmutableArray();
        changed |= withdrawn.Length > 0;
        foreach (var id in withdrawn)
        {
            if (state.State.Stacks.Remove(id, out var last))
            {
                state.State.Withdrawn[id] = new WithdrawnStack(id, last.Version, DateTimeOffset.UtcNow);
            }
            if (state.State.Rollouts.TryGetValue(id, out var rolling) && rolling.Active)
            {
                state.State.Rollouts[id] = RolloutMachine.End(rolling, time.GetUtcNow(), "the signed repository withdrew the stack");
            }
            state.State.FromRepository.Remove(id);
        }
        foreach (var stack in published)
        {
            if (!state.State.Stacks.TryGetValue(stack.Id, out var existing) || existing != stack || state.State.FromRepository.GetValueOrDefault(stack.Id) != source)
            {
                StartRolloutIfNewer(existing, stack);
                state.State.Stacks[stack.Id] = stack;
                state.State.FromRepository[stack.Id] = source;
                state.State.Withdrawn.Remove(stack.Id);
                changed = true;
            }
        }
        if (changed)
        {
            await state.WriteStateAsync();
        }
        return withdrawn;
    }

    public ValueTask<ImmutableArray<WithdrawnStack>> ListWithdrawnAsync() =>
        ValueTask.FromResult(state.State.Withdrawn.Values.OrderBy(s => s.Id, StringComparer.Ordinal).ToImmutableArray());

    public ValueTask<ImmutableArray<StackInfo>> ListAsync() =>
        ValueTask.FromResult(state.State.Stacks.Values.OrderBy(s => s.Id, StringComparer.Ordinal).ToImmutableArray());

    public async ValueTask<string?> HoldVersionAsync(VersionHold hold)
    {
        hold = hold with { By = AsVerified(hold.By) };
        if (string.IsNullOrWhiteSpace(hold.Reason) || string.IsNullOrWhiteSpace(hold.By))
        {
            return "a hold says who sets it and why";
        }
        if (hold.Version.Length == 0)
        {
            if (state.State.Holds.Remove(hold.StackId))
            {
                await state.WriteStateAsync();
            }
            return null;
        }
        if (!state.State.Stacks.TryGetValue(hold.StackId, out var stack))
        {
            return $"stack '{hold.StackId}' is not in the catalog";
        }
        var published = stack.PublishedVersions.IsDefaultOrEmpty ? [stack.Version] : stack.PublishedVersions;
        if (!published.Contains(hold.Version, StringComparer.Ordinal))
        {
            return $"stack '{hold.StackId}' {hold.Version} is not published (the signed targets publish {string.Join(", ", published)}): a hold chooses among signed versions";
        }
        state.State.Holds[hold.StackId] = hold with { Hosts = hold.Hosts.IsDefault ? [] : hold.Hosts };
        await state.WriteStateAsync();
        return null;
    }

    public ValueTask<ImmutableArray<VersionHold>> ListHoldsAsync() =>
        ValueTask.FromResult(state.State.Holds.Values.OrderBy(h => h.StackId, StringComparer.Ordinal).ToImmutableArray());

    public ValueTask<HostRelease> GetHostReleaseAsync(string hostId)
    {
        var releases = ImmutableDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        foreach (var stack in state.State.Stacks.Values)
        {
            if (Released(stack, hostId) is { } version)
            {
                releases[stack.Id] = version;
            }
        }
        return ValueTask.FromResult(new HostRelease([.. state.State.Holds.Values.Where(h => h.Covers(hostId)).OrderBy(h => h.StackId, StringComparer.Ordinal)],
            releases.ToImmutable()));
    }

    public ValueTask<ImmutableArray<Rollout>> ListRolloutsAsync() =>
        ValueTask.FromResult(state.State.Rollouts.Values.OrderBy(r => r.StackId, StringComparer.Ordinal).ToImmutableArray());

    public ValueTask<ImmutableArray<BadVersion>> ListBadAsync() =>
        ValueTask.FromResult(state.State.Bad.Values.OrderByDescending(b => b.At).ToImmutableArray());

    public async ValueTask<string?> StepRolloutAsync(string stackId, string action, string by, string why)
    {
        by = AsVerified(by);
        if (string.IsNullOrWhiteSpace(by) || string.IsNullOrWhiteSpace(why))
        {
            return "a rollout step says who takes it and why";
        }
        if (!state.State.Rollouts.TryGetValue(stackId, out var rollout))
        {
            return $"stack '{stackId}' has no rollout";
        }
        var now = time.GetUtcNow();
        BadVersion? bad = null;
        string? refusal;
        switch (action)
        {
            case "pause":
                (rollout, refusal) = RolloutMachine.Pause(rollout, now, by, why);
                break;
            case "resume":
                (rollout, refusal) = RolloutMachine.Resume(rollout, now, by, why);
                break;
            case "promote":
                (rollout, refusal) = RolloutMachine.Promote(rollout, now, by, why);
                break;
            case "rollback":
                (rollout, bad, refusal) = RolloutMachine.RollBack(rollout, now, by, why);
                break;
            default:
                return $"'{action}' is not a rollout step (pause, resume, promote or rollback)";
        }
        if (refusal is not null)
        {
            return refusal;
        }
        await SaveAsync(rollout, bad);
        return null;
    }

    public async ValueTask JudgedAsync(RolloutJudgement judgement)
    {
        if (!state.State.Rollouts.TryGetValue(judgement.StackId, out var rollout))
        {
            return;
        }
        var (next, bad) = RolloutMachine.Judge(rollout, judgement, time.GetUtcNow());
        if (next.Status != rollout.Status || next.Ring != rollout.Ring || next.Steps.Length != rollout.Steps.Length || bad is not null)
        {
            await SaveAsync(next, bad);
        }
        else
        {
            // Only the gates' latest measurements changed: kept in memory (shown, and written with the next step), not
            // written every judgement.
            state.State.Rollouts[next.StackId] = next;
        }
    }

    private async Task SaveAsync(Rollout rollout, BadVersion? bad)
    {
        state.State.Rollouts[rollout.StackId] = rollout;
        if (bad is not null)
        {
            state.State.Bad[StackKeyOf(bad.StackId, bad.Version)] = bad;
            var ofStack = state.State.Bad.Values.Where(b => b.StackId == bad.StackId).OrderBy(b => b.At).ToList();
            foreach (var old in ofStack.Take(Math.Max(0, ofStack.Count - BadKept)))
            {
                state.State.Bad.Remove(StackKeyOf(old.StackId, old.Version));
            }
        }
        await state.WriteStateAsync();
    }

    /// <summary>Who takes a step: where the control channel is secured, the verified operator, and for whom it says it acts
    /// (a dashboard's signed-in admin); else what the call says.</summary>
    private static string AsVerified(string by) => CallerContext.Operator is not { } verified ? by
        : string.IsNullOrWhiteSpace(by) || by == $"operator '{verified}'" ? $"operator '{verified}'" : $"{by} via operator '{verified}'";

    /// <summary>
    /// A newer version of a stack the catalog already published starts a rollout from the version hosts run now (an
    /// active rollout's previous version, which it supersedes): no host runs it before the rollout's canary ring. A
    /// stack seen for the first time, or whose previous version is no longer published, has nothing to roll back to and
    /// is released at once. Called before the catalog takes <paramref name="stack"/>.
    /// </summary>
    private void StartRolloutIfNewer(StackInfo? existing, StackInfo stack)
    {
        if (existing is null || state.State.Bad.ContainsKey(StackKeyOf(stack.Id, stack.Version)))
        {
            return;
        }
        var current = state.State.Rollouts.GetValueOrDefault(stack.Id);
        var from = current is { Active: true } ? RolloutMachine.Baseline(current) : Released(existing, hostId: null) ?? existing.Version;
        if (stack.Version == from || (current is { Active: true } && current.To == stack.Version)
            || SemanticVersion.Compare(stack.Version, from) <= 0
            || !(stack.PublishedVersions.IsDefaultOrEmpty ? [stack.Version] : stack.PublishedVersions).Contains(from, StringComparer.Ordinal))
        {
            return;
        }
        var now = time.GetUtcNow();
        if (current is { Active: true })
        {
            state.State.Rollouts[stack.Id] = RolloutMachine.Supersede(current, now, stack.Version);
        }
        state.State.Rollouts[stack.Id] = RolloutMachine.Start(stack.Id, from, stack.Version, now, rollouts.Bake, "the catalog",
            $"the signed repository published {stack.Id} {stack.Version}; hosts run {from}");
    }

    /// <summary>
    /// The version of <paramref name="stack"/> that <paramref name="hostId"/> (null: a host in no ring) is to run: its
    /// rollout's, while that version is still published and not bad, else the newest published version not judged bad.
    /// </summary>
    private string? Released(StackInfo stack, string? hostId)
    {
        var published = stack.PublishedVersions.IsDefaultOrEmpty ? [stack.Version] : stack.PublishedVersions;
        if (state.State.Rollouts.TryGetValue(stack.Id, out var rollout)
            && rollout.VersionFor(hostId ?? "") is var version
            && published.Contains(version, StringComparer.Ordinal) && !state.State.Bad.ContainsKey(StackKeyOf(stack.Id, version)))
        {
            return version;
        }
        return published.Where(v => !state.State.Bad.ContainsKey(StackKeyOf(stack.Id, v)))
            .OrderByDescending(v => v, Comparer<string>.Create(SemanticVersion.Compare)).FirstOrDefault();
    }

    private static string StackKeyOf(string id, string version) => $"{id}@{version}";
}

/// <summary>The grain storage provider every Fabric grain persists to (memory by default, Azure Table by configuration).</summary>
public static class Storage
{
    public const string Name = "fabric";
}
