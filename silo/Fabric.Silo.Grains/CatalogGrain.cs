using System.Collections.Immutable;

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
}

public sealed class CatalogGrain([PersistentState("catalog", Storage.Name)] IPersistentState<CatalogState> state) : Grain, ICatalogGrain
{
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
            state.State.FromRepository.Remove(id);
        }
        foreach (var stack in published)
        {
            if (!state.State.Stacks.TryGetValue(stack.Id, out var existing) || existing != stack || state.State.FromRepository.GetValueOrDefault(stack.Id) != source)
            {
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
}

/// <summary>The grain storage provider every Fabric grain persists to (memory by default, Azure Table by configuration).</summary>
public static class Storage
{
    public const string Name = "fabric";
}
