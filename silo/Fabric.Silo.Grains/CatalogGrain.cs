using System.Collections.Immutable;

namespace Fabric.Silo;

/// <summary>Persisted catalog: the newest published version of each stack id.</summary>
[GenerateSerializer, Alias("fabric.catalog-state")]
public sealed class CatalogState
{
    [Id(0)] public Dictionary<string, StackInfo> Stacks { get; set; } = new(StringComparer.Ordinal);
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
        await state.WriteStateAsync();
    }

    public ValueTask<ImmutableArray<StackInfo>> ListAsync() =>
        ValueTask.FromResult(state.State.Stacks.Values.OrderBy(s => s.Id, StringComparer.Ordinal).ToImmutableArray());
}

/// <summary>The grain storage provider every Fabric grain persists to (memory by default, Azure Table by configuration).</summary>
public static class Storage
{
    public const string Name = "fabric";
}
