using Fabric.Repository;

namespace Fabric.Agent.Stacks;

/// <summary>
/// Brings the repository's published stacks to this host: verifies the trust metadata, fetches each target's package
/// (checked against its signed length and SHA-256) and unpacks it under the state folder by digest, so a package is
/// never half-written and an unchanged one is not unpacked twice. Only the newest version of each stack id is used.
/// </summary>
public static class SignedStacks
{
    /// <summary>Returns the entry assembly of every verified stack; throws <see cref="TrustException"/> or <see cref="PackageException"/> naming the cause.</summary>
    public static IReadOnlyList<string> Install(RepositoryConfig config)
    {
        var client = new TrustClient(new LocalFolderStore(config.Path), Path.Combine(config.StateDirectory, "trust"), config.TrustRoot);
        var targets = client.Refresh();
        var newest = targets.Targets
            .GroupBy(t => t.Value.Id, StringComparer.Ordinal)
            .Select(g => g.OrderByDescending(t => SemanticVersion.TryParse(t.Value.Version, out var v) ? v : default).First());
        var entries = new List<string>();
        foreach (var (name, info) in newest)
        {
            var package = client.FetchPackage(name);
            entries.Add(StackPackage.Extract(package, Path.Combine(config.StateDirectory, "stacks", info.Sha256)));
        }
        return entries;
    }
}
