using Fabric.Repository;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent.Stacks;

/// <summary>
/// Brings the repository's published stacks to this host: verifies the trust metadata, fetches each target's package
/// (checked against its signed length and SHA-256), keeps it in a cache by digest under the state folder and unpacks it
/// there, so a package is never half-written, never downloaded twice, and survives restarts. When the repository cannot
/// be reached the agent runs on what it last verified, from the cache (fail-static). The newest
/// <see cref="VersionsKept"/> versions of each stack id are installed side by side: the newest for new bindings, the ones
/// before it for peers that have not taken the newest yet and to go back to when it is withdrawn.
/// </summary>
public static class SignedStacks
{
    /// <summary>How many of a stack id's published versions, newest first, a host installs.</summary>
    public const int VersionsKept = 3;

    /// <summary>Returns the entry assembly of every verified stack; throws <see cref="TrustException"/> or <see cref="PackageException"/> naming the cause.</summary>
    public static IReadOnlyList<string> Install(RepositoryConfig config, ILogger logger, Func<string, string?>? environment = null) =>
        [.. Verify(config, logger, environment).Select(s => s.EntryPath)];

    /// <summary>
    /// The stacks the signed targets publish now (the newest <see cref="VersionsKept"/> versions of each id), each fetched, checked and unpacked;
    /// from the cache when the repository cannot be reached (then <see cref="VerifiedStack.Offline"/> says why). Throws
    /// <see cref="TrustException"/> or <see cref="PackageException"/> naming the cause, the first package that fails included.
    /// </summary>
    public static IReadOnlyList<VerifiedStack> Verify(RepositoryConfig config, ILogger logger, Func<string, string?>? environment = null)
    {
        var read = Read(config, logger, environment);
        return read.Failed.Count > 0 ? throw read.Failed[0].Error : read.Stacks;
    }

    /// <summary>
    /// Verifies the targets, then fetches, checks and unpacks each stack on its own: a package that fails is listed in
    /// <see cref="VerifiedTargets.Failed"/> and costs only itself, so what the verified targets say (which stacks and
    /// versions they publish, and so which were withdrawn) is known even when a package cannot be had. Throws
    /// <see cref="TrustException"/> when the targets themselves do not verify.
    /// </summary>
    public static VerifiedTargets Read(RepositoryConfig config, ILogger logger, Func<string, string?>? environment = null)
    {
        var client = new TrustClient(new LazyStore(config.Path, environment), Path.Combine(config.StateDirectory, "trust"), config.TrustRoot);
        TargetsMetadata targets;
        string? offline = null;
        try
        {
            targets = client.Refresh();
        }
        catch (RepositoryUnavailableException e)
        {
            targets = client.LastTrusted() ?? throw new TrustException($"The stack repository cannot be reached and this host has verified nothing before: {e.Message}");
            offline = e.Message;
        }
        var entries = new List<VerifiedStack>();
        var failed = new List<(string, Exception)>();
        var installed = targets.Targets.GroupBy(t => t.Value.Id, StringComparer.Ordinal)
            .SelectMany(g => g.OrderByDescending(t => t.Value.Version, Comparer<string>.Create(StackKey.CompareVersions)).Take(VersionsKept));
        foreach (var (name, info) in installed)
        {
            try
            {
                var package = Cached(config, info) ?? (offline is null
                    ? Cache(config, info, client.FetchPackage(name))
                    : throw new TrustException($"The stack repository cannot be reached and {name} is not in this host's cache ({offline})."));
                var unpacked = StackPackage.Extract(package, Path.Combine(config.StateDirectory, "stacks", info.Sha256));
                if (unpacked.Repaired is { } damage)
                {
                    Log.UnpackedRepaired(logger, name, damage);
                }
                entries.Add(new(info.Id, info.Version, info.Sha256, unpacked.EntryPath, unpacked.Digests, targets.Version, offline) { Declares = unpacked.Declares });
            }
            catch (Exception e) when (e is TrustException or PackageException or RepositoryUnavailableException or IOException or UnauthorizedAccessException)
            {
                failed.Add((name, e is RepositoryUnavailableException ? new TrustException($"{name} could not be fetched: {e.Message}") : e));
            }
        }
        if (offline is not null)
        {
            Log.RepositoryOffline(logger, entries.Count, targets.Version, offline);
        }
        return new VerifiedTargets(targets, entries, failed, offline);
    }

    /// <summary>Verified targets: every target they publish, the newest versions of each id unpacked (newest first), the packages that failed and why, and why the store was not read (null: it was).</summary>
    public sealed record VerifiedTargets(TargetsMetadata Targets, IReadOnlyList<VerifiedStack> Stacks, IReadOnlyList<(string Name, Exception Error)> Failed, string? Offline);

    /// <summary>
    /// One stack the signed targets (version <paramref name="TargetsVersion"/>) publish, unpacked at <paramref name="EntryPath"/>;
    /// <paramref name="Digests"/> are its package's file digests, which every load checks.
    /// </summary>
    public sealed record VerifiedStack(string Id, string Version, string Sha256, string EntryPath, IReadOnlyDictionary<string, string> Digests, int TargetsVersion, string? Offline)
    {
        /// <summary>What its factory declared when it was packed (null: its package does not say, and the host loads it to know).</summary>
        public StackDeclaration? Declares { get; init; }
    }

    private static string CachePath(RepositoryConfig config, TargetInfo info) => Path.Combine(config.StateDirectory, "cache", info.Sha256 + ".fspk");

    /// <summary>The cached package when it is still exactly the signed one (a damaged cache entry is ignored and replaced).</summary>
    private static byte[]? Cached(RepositoryConfig config, TargetInfo info)
    {
        var path = CachePath(config, info);
        if (!File.Exists(path) || info.Length is < 0 or > TrustClient.MaxPackageBytes)
        {
            return null;
        }
        // One open file: its length is checked before anything is read, and what is read is what was checked.
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        if (file.Length != info.Length)
        {
            return null;
        }
        var bytes = new byte[info.Length];
        try
        {
            file.ReadExactly(bytes);
        }
        catch (EndOfStreamException)
        {
            // Cut short while it was read: fetched again.
            return null;
        }
        return StackPackage.Sha256(bytes) == info.Sha256 ? bytes : null;
    }

    private static byte[] Cache(RepositoryConfig config, TargetInfo info, byte[] package)
    {
        AtomicFile.Write(CachePath(config, info), package);
        return package;
    }

    /// <summary>Opens the configured store on first use, so a store that cannot even be opened counts as unreachable.</summary>
    private sealed class LazyStore(string spec, Func<string, string?>? environment) : IRepositoryStore
    {
        private IRepositoryStore? _store;

        private IRepositoryStore Store => _store ??= RepositoryStores.Open(spec, environment);

        public string Location => _store?.Location ?? spec;

        public StoredFile? Get(string name) => Store.Get(name);

        public byte[]? ReadPrefix(string name, int limit) => Store.ReadPrefix(name, limit);

        public void Write(string name, byte[] bytes) => Store.Write(name, bytes);

        public bool TryWrite(string name, byte[] bytes, string? ifMatch) => Store.TryWrite(name, bytes, ifMatch);

        public IEnumerable<string> List(string folder) => Store.List(folder);

        public void Delete(string name) => Store.Delete(name);
    }
}
