using System.Collections.Immutable;
using Fabric.Silo;

namespace Fabric.Dashboard.Services;

/// <summary>The stacks the control plane's catalog holds, and those the signed targets withdrew.</summary>
public sealed class CatalogService(IGrainFactory grains)
{
    public ValueTask<ImmutableArray<StackInfo>> ListAsync() => Catalog.ListAsync();

    public ValueTask<ImmutableArray<WithdrawnStack>> ListWithdrawnAsync() => Catalog.ListWithdrawnAsync();

    public ValueTask<ImmutableArray<VersionHold>> ListHoldsAsync() => Catalog.ListHoldsAsync();

    public ValueTask<string?> HoldVersionAsync(VersionHold hold) => Catalog.HoldVersionAsync(hold);

    public ValueTask<ImmutableArray<Rollout>> ListRolloutsAsync() => Catalog.ListRolloutsAsync();

    public ValueTask<ImmutableArray<BadVersion>> ListBadAsync() => Catalog.ListBadAsync();

    public ValueTask<string?> StepRolloutAsync(string stackId, string action, string by, string why) => Catalog.StepRolloutAsync(stackId, action, by, why);

    private ICatalogGrain Catalog => grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
}

/// <summary>A VM's policy and the named policies an operator keeps and applies.</summary>
public sealed class PolicyService(IGrainFactory grains)
{
    public ValueTask<PolicyResult> SetVmPolicyAsync(string vmId, Policy policy) => grains.GetGrain<IVmGrain>(vmId).SetPolicyAsync(policy);

    public ValueTask<ImmutableArray<NamedPolicy>> ListNamedAsync() => Library.ListAsync();

    public ValueTask<PolicyResult> SaveNamedAsync(string name, Policy policy) => Library.SaveAsync(name, policy);

    public ValueTask<ImmutableArray<PolicyResult>> ApplyNamedAsync(string name, ImmutableArray<string> vmIds) => Library.ApplyAsync(name, vmIds);

    public ValueTask<bool> DeleteNamedAsync(string name) => Library.DeleteAsync(name);

    private IPolicyLibraryGrain Library => grains.GetGrain<IPolicyLibraryGrain>(IPolicyLibraryGrain.Key);
}

/// <summary>The fleet's learner: its model versions, how they judge against the prior, and the operator's switch.</summary>
public sealed class LearningService(IGrainFactory grains)
{
    public ValueTask<LearnerView> GetAsync() => Learner.GetAsync();

    public ValueTask<LearnerEvaluation> EvaluateAsync() => Learner.EvaluateAsync();

    public ValueTask SetEnabledAsync(bool enabled) => Learner.SetLearningEnabledAsync(enabled);

    private ILearnerGrain Learner => grains.GetGrain<ILearnerGrain>(ILearnerGrain.Key);
}

/// <summary>
/// What the dashboard runs beside: a cluster it is a client of, or the embedded default whose host adds a simulated fleet and
/// a development repository. The pages read these through this, never the simulation itself.
/// </summary>
public interface IDeployment
{
    /// <summary>One line for the app bar ("cluster fabric", "embedded default · 4 simulated hosts").</summary>
    string Title { get; }

    /// <summary>What this process is, over its CPU and memory figures.</summary>
    string ProcessLabel { get; }

    /// <summary>Why a part of the deployment did not start (null when all did).</summary>
    string? Error { get; }

    /// <summary>The simulated hosts and links, when there are.</summary>
    SimulatedFleetView? Fleet { get; }

    /// <summary>The repository this deployment publishes from, when it has its own.</summary>
    RepositoryView? Repository { get; }
}

public sealed record SimulatedFleetView(ImmutableArray<(string HostId, string Where)> Hosts, ImmutableArray<SimulatedLinkView> Links);

/// <summary>A simulated link's phase now and what the emulator dropped on it, both ways together.</summary>
public sealed record SimulatedLinkView(string HostA, string HostB, string Phase, string Source, TimeSpan Remaining, long Lost, long QueueDrops);

public sealed record RepositoryView(string Path, string TrustRoot, string TargetsKeyId, ImmutableArray<(string Id, string Version, long Length, string Sha256)> Published);

/// <summary>
/// The dashboard as a client of a running cluster: nothing simulated, no repository of its own. Its error is why the
/// authority's revocation list it was given could not be used (<paramref name="revocationProblem"/>): the last good one
/// stands, so a certificate revoked since may still be trusted, and an operator must know.
/// </summary>
public sealed class ClusterDeployment(string clusterId, Func<string?>? revocationProblem = null) : IDeployment
{
    public string Title => $"cluster {clusterId}";

    public string ProcessLabel => "This dashboard process";

    public string? Error => revocationProblem?.Invoke();

    public SimulatedFleetView? Fleet => null;

    public RepositoryView? Repository => null;
}
