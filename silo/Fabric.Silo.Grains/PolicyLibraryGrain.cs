using System.Collections.Immutable;
using Fabric.Silo.Selection;

namespace Fabric.Silo;

/// <summary>The library's persisted state: named policies by name.</summary>
[GenerateSerializer, Alias("fabric.policy-library-state")]
public sealed class PolicyLibraryState
{
    [Id(0)] public Dictionary<string, NamedPolicy> Policies { get; set; } = new(StringComparer.Ordinal);
}

public sealed partial class PolicyLibraryGrain([PersistentState("policies", Storage.Name)] IPersistentState<PolicyLibraryState> state, TimeProvider time)
    : Grain, IPolicyLibraryGrain
{
    /// <summary>Names an operator can type and read in a URL: lower-case letters, digits and dashes, 1–40 long, starting with a letter.</summary>
    [System.Text.RegularExpressions.GeneratedRegex("^[a-z][a-z0-9-]{0,39}$")]
    private static partial System.Text.RegularExpressions.Regex NamePattern();

    public ValueTask<ImmutableArray<NamedPolicy>> ListAsync() =>
        ValueTask.FromResult<ImmutableArray<NamedPolicy>>([.. state.State.Policies.Values.OrderBy(p => p.Name, StringComparer.Ordinal)]);

    public async ValueTask<PolicyResult> SaveAsync(string name, Policy policy)
    {
        var previous = state.State.Policies.GetValueOrDefault(name ?? "");
        var errors = new List<string>();
        if (name is null || !NamePattern().IsMatch(name))
        {
            errors.Add($"name: '{name}' is not a policy name (lower-case letters, digits and dashes, 1 to 40, starting with a letter)");
        }
        // Judged like a VM's policy: against what the repository publishes now.
        errors.AddRange(PolicyValidator.Validate(policy, await GrainFactory.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync()));
        if (errors.Count > 0)
        {
            return new PolicyResult(false, [.. errors], previous?.Version ?? 0);
        }
        if (previous?.Policy == policy)
        {
            return new PolicyResult(true, [], previous.Version);
        }
        var saved = new NamedPolicy(name!, policy, (previous?.Version ?? 0) + 1, time.GetUtcNow());
        state.State.Policies[saved.Name] = saved;
        await state.WriteStateAsync();
        return new PolicyResult(true, [], saved.Version);
    }

    public async ValueTask<bool> DeleteAsync(string name)
    {
        if (!state.State.Policies.Remove(name))
        {
            return false;
        }
        await state.WriteStateAsync();
        return true;
    }

    public async ValueTask<ImmutableArray<PolicyResult>> ApplyAsync(string name, ImmutableArray<string> vmIds)
    {
        if (!state.State.Policies.TryGetValue(name, out var named))
        {
            return [.. vmIds.Select(_ => new PolicyResult(false, [$"name: there is no policy named '{name}'"], 0))];
        }
        // Only VMs the fleet knows: a typo must not create a VM grain with a policy and no host.
        var known = (await GrainFactory.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync()).Vms;
        // Each VM's grain validates and re-evaluates on its own; they run side by side.
        var results = await Task.WhenAll(vmIds.Select(vm => known.ContainsKey(vm)
            ? GrainFactory.GetGrain<IVmGrain>(vm).SetPolicyAsync(named.Policy).AsTask()
            : Task.FromResult(new PolicyResult(false, [$"vm: '{vm}' is not a VM of the fleet"], 0))));
        return [.. results];
    }
}
