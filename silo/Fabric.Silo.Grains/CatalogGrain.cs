using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>Persisted catalog: the newest published version of each stack id, and the stacks the repository withdrew.</summary>
[GenerateSerializer, Alias("fabric.catalog-state")]
public sealed class CatalogState
{
    [Id(0)] public Dictionary<string, StackInfo> Stacks { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The ids the repository's sync published (the only ones a sync withdraws).</summary>
    [Id(1)] public HashSet<string> FromRepository { get; set; } = new(StringComparer.Ordinal);

    [Id(2)] public Dictionary<string, WithdrawnStack> Withdrawn { get; set; } = new(StringComparer.Ordinal);
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

    public async ValueTask<ImmutableArray<string>> SyncAsync(ImmutableArray<StackInfo> published)
    {
        var now = published.ToDictionary(s => s.Id, StringComparer.Ordinal);
        var withdrawn = state.State.FromRepository.Where(id => !now.ContainsKey(id)).Order(StringComparer.Ordinal).ToImmutableArray();
        var changed = withdrawn.Length > 0;
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
            if (!state.State.Stacks.TryGetValue(stack.Id, out var existing) || existing != stack || !state.State.FromRepository.Contains(stack.Id))
            {
                state.State.Stacks[stack.Id] = stack;
                state.State.FromRepository.Add(stack.Id);
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
}

/// <summary>The grain storage provider every Fabric grain persists to (memory by default, Azure Table by configuration).</summary>
public static class Storage
{
    public const string Name = "fabric";
}
