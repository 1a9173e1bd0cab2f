using System.Collections.Immutable;
using System.Text.RegularExpressions;

namespace Fabric.Silo.Selection;

/// <summary>Checks a policy against what is published; every problem names its field. Pure: no grain, no I/O.</summary>
public static partial class PolicyValidator
{
    public static readonly ImmutableArray<string> Workloads = ["general", "latency", "bulk"];
    public static readonly ImmutableArray<string> SecurityLevels = ["standard", "confidential"];
    public static readonly ImmutableArray<string> Families = ["ipv4", "ipv6"];
    public const double MaxExplorationShare = 0.2;

    [GeneratedRegex("^[a-z][a-z0-9-]{0,62}$")]
    private static partial Regex StackId();

    public static ImmutableArray<string> Validate(Policy policy, IReadOnlyCollection<StackInfo> catalog)
    {
        var problems = ImmutableArray.CreateBuilder<string>();
        if (!Workloads.Contains(policy.Workload))
        {
            problems.Add($"workload: '{policy.Workload}' is not one of {string.Join(", ", Workloads)}");
        }
        if (!SecurityLevels.Contains(policy.Security))
        {
            problems.Add($"security: '{policy.Security}' is not one of {string.Join(", ", SecurityLevels)}");
        }
        if (!Families.Contains(policy.Family))
        {
            problems.Add($"family: '{policy.Family}' is not one of {string.Join(", ", Families)}");
        }
        if (policy.ExplorationShare is < 0 or > MaxExplorationShare || double.IsNaN(policy.ExplorationShare))
        {
            problems.Add($"explorationShare: {policy.ExplorationShare} is outside 0..{MaxExplorationShare}");
        }
        var published = catalog.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);
        foreach (var (field, ids) in new[] { ("allow", policy.Allow), ("deny", policy.Deny), ("pin", policy.Pin is null ? [] : ImmutableArray.Create(policy.Pin)) })
        {
            foreach (var id in ids)
            {
                if (!StackId().IsMatch(id))
                {
                    problems.Add($"{field}: '{id}' is not a stack id");
                }
                else if (!published.Contains(id))
                {
                    problems.Add($"{field}: no stack '{id}' is published (published: {string.Join(", ", published.Order(StringComparer.Ordinal))})");
                }
            }
        }
        // An experimental stack runs only by exploration: never pinned, and named in allow only by a policy that admits it.
        foreach (var s in catalog.Where(s => s.Experimental))
        {
            if (policy.Pin == s.Id)
            {
                problems.Add($"pin: '{s.Id}' {s.Version} is experimental: it runs only by exploration, never pinned (publish a stable version to pin it)");
            }
            else if (!policy.Experimental && policy.Allow.Contains(s.Id))
            {
                problems.Add($"allow: '{s.Id}' {s.Version} is experimental and the policy does not admit experimental stacks (experimental: true)");
            }
        }
        foreach (var id in policy.Allow.Intersect(policy.Deny, StringComparer.Ordinal))
        {
            problems.Add($"deny: '{id}' is also in allow (contradictory)");
        }
        if (policy.Pin is { } pin)
        {
            if (policy.Deny.Contains(pin))
            {
                problems.Add($"pin: '{pin}' is denied (contradictory)");
            }
            if (policy.Allow.Length > 0 && !policy.Allow.Contains(pin))
            {
                problems.Add($"pin: '{pin}' is not in allow");
            }
        }
        if (problems.Count == 0 && !Eligible(policy, catalog).Any(s => !s.Experimental))
        {
            // Every field is fine on its own, but together they leave nothing to run (an experimental stack is only tried).
            problems.Add(policy.Security == "confidential"
                ? $"security: confidential needs a published {policy.Family} stack that encrypts and the policy allows; there is none (encrypting: {string.Join(", ", catalog.Where(s => s.Encrypts).Select(s => s.Id).DefaultIfEmpty("none"))})"
                : $"allow/deny/pin leave no published {policy.Family} stack to choose from");
        }
        return problems.ToImmutable();
    }

    /// <summary>
    /// The published stacks a policy admits (before the host's support is considered). A standard VM is not encrypted
    /// unless its policy names the encrypting stack (allow or pin) or nothing else is left: encryption costs the host CPU
    /// and the VM goodput (secure moves about 0.4× std-ipv4 on a clean link) and buys a standard VM nothing the selector
    /// can measure, so letting it compete only adds noise to the choice. Experimental stacks only where the policy admits
    /// them (and the selector gives them only by exploration).
    /// </summary>
    public static IReadOnlyList<StackInfo> Eligible(Policy policy, IEnumerable<StackInfo> catalog)
    {
        var admitted = catalog
            .Where(s => s.Family == policy.Family)
            .Where(s => !s.Experimental || policy.Experimental)
            .Where(s => policy.Security != "confidential" || s.Encrypts)
            .Where(s => policy.Allow.Length == 0 || policy.Allow.Contains(s.Id))
            .Where(s => !policy.Deny.Contains(s.Id))
            .Where(s => policy.Pin is null || s.Id == policy.Pin)
            .ToList();
        if (policy.Security == "confidential" || policy.Pin is not null)
        {
            return admitted;
        }
        var plain = admitted.Where(s => !s.Encrypts || policy.Allow.Contains(s.Id)).ToList();
        return plain.Any(s => !s.Experimental) ? plain : admitted;
    }
}
