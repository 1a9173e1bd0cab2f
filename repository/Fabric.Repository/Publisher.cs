namespace Fabric.Repository;

/// <summary>
/// Writes a repository: its first root, published packages, root rotations. Packages and the targets and snapshot
/// metadata are content-addressed (named by their SHA-256), so writing them never disturbs a reader; the one mutable file,
/// timestamp.json, is the commit point and is replaced only if it is still the version this publisher started from
/// (a conditional write). Two publishers at once therefore serialize: the loser re-reads the winner's metadata and
/// publishes on top of it, and a reader at any moment sees one complete, consistent set. A refused publish commits
/// nothing.
/// </summary>
public sealed class Publisher(IRepositoryStore store, Func<DateTimeOffset>? clock = null)
{
    public const string Root = "root.json";
    public const string Targets = "targets.json";
    public const string Snapshot = "snapshot.json";
    public const string Timestamp = "timestamp.json";
    private const int CommitAttempts = 32;
    private readonly Func<DateTimeOffset> _now = clock ?? (() => DateTimeOffset.UtcNow);

    public static string VersionedRoot(int version) => $"{version}.root.json";

    public static string PackagePath(string sha256) => $"packages/{sha256}.fspk";

    /// <summary>Where a targets or snapshot file with this SHA-256 lives.</summary>
    public static string MetadataPath(string role, string sha256) => $"metadata/{role}.{sha256}.json";

    /// <summary>Creates root v1 and empty targets, snapshot and timestamp. Refuses when the store already has a root.</summary>
    public void Initialize(IReadOnlyList<SigningKey> rootKeys, int rootThreshold, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan rootExpiry, TimeSpan expiry)
    {
        var root = BuildRoot(1, rootKeys, rootThreshold, targetsKey, snapshotKey, timestampKey, rootExpiry);
        var rootFile = SignedFile.Create(root, rootKeys);
        if (!store.TryWrite(Root, rootFile, ifMatch: null))
        {
            throw new TrustException("The repository already has a root.json; rotate the root instead of initializing again.");
        }
        store.Write(VersionedRoot(1), rootFile);
        var targets = new TargetsMetadata("targets", 1, _now() + expiry, []);
        var timestamp = Chain(targets, targetsKey, snapshotKey, timestampKey, expiry, snapshotVersion: 1, timestampVersion: 1);
        if (!store.TryWrite(Timestamp, timestamp, ifMatch: null))
        {
            throw new TrustException("Another publisher initialized this repository's timestamp.json at the same time.");
        }
    }

    /// <summary>Publishes a package; refuses a second, different package under the same id and version. Publishing the same bytes again changes nothing.</summary>
    public TargetInfo Publish(byte[] package, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry)
    {
        Authorize(("targets", targetsKey), ("snapshot", snapshotKey), ("timestamp", timestampKey));
        if (package.Length > TrustClient.MaxPackageBytes)
        {
            throw new PackageException($"The package is {package.Length:N0} bytes; agents accept at most {TrustClient.MaxPackageBytes:N0}.");
        }
        var (manifest, _) = StackPackage.Read(package);
        var name = $"{manifest.Id}/{manifest.Version}";
        var sha = StackPackage.Sha256(package);
        var info = new TargetInfo(package.Length, sha, manifest.Id, manifest.Version, manifest.Profile);
        var written = false;
        Commit(current =>
        {
            if (current.Targets.TryGetValue(name, out var existing))
            {
                return existing.Sha256 == sha ? null
                    : throw new TrustException($"{name} is already published with another digest ({existing.Sha256}); publish a new version instead.");
            }
            if (!written)
            {
                // Content-addressed: harmless to readers until a committed targets file names it.
                store.Write(PackagePath(sha), package);
                written = true;
            }
            var targets = new SortedDictionary<string, TargetInfo>(current.Targets, StringComparer.Ordinal) { [name] = info };
            return new TargetsMetadata("targets", current.Version + 1, _now() + expiry, targets);
        }, targetsKey, snapshotKey, timestampKey, expiry);
        return info;
    }

    /// <summary>
    /// Withdraws a stack: every version of <paramref name="id"/> (or only <paramref name="version"/>) leaves the signed
    /// targets, and targets, snapshot and timestamp are signed again. Agents and the catalog stop using it at their next
    /// refresh; the package stays in the store (content-addressed, harmless once no targets file names it). Returns the
    /// target names withdrawn; throws when none matches, so a mistyped id is said, not silently ignored.
    /// </summary>
    public IReadOnlyList<string> Withdraw(string id, string? version, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry)
    {
        Authorize(("targets", targetsKey), ("snapshot", snapshotKey), ("timestamp", timestampKey));
        List<string> withdrawn = [];
        Commit(current =>
        {
            withdrawn = [.. current.Targets.Where(t => t.Value.Id == id && (version is null || t.Value.Version == version)).Select(t => t.Key)];
            if (withdrawn.Count == 0)
            {
                var published = current.Targets.Keys.DefaultIfEmpty("nothing");
                throw new TrustException($"{id}{(version is null ? "" : "/" + version)} is not published (published: {string.Join(", ", published)}); nothing was withdrawn.");
            }
            var targets = new SortedDictionary<string, TargetInfo>(current.Targets.Where(t => !withdrawn.Contains(t.Key)).ToDictionary(), StringComparer.Ordinal);
            return new TargetsMetadata("targets", current.Version + 1, _now() + expiry, targets);
        }, targetsKey, snapshotKey, timestampKey, expiry);
        return withdrawn;
    }

    /// <summary>Re-signs targets, snapshot and timestamp with fresh expiry and new versions (what a refresh service does to prove freshness).</summary>
    public void Refresh(SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry)
    {
        Authorize(("targets", targetsKey), ("snapshot", snapshotKey), ("timestamp", timestampKey));
        Commit(current => current with { Version = current.Version + 1, Expires = _now() + expiry }, targetsKey, snapshotKey, timestampKey, expiry);
    }

    /// <summary>Writes root v(n+1), signed by the current root keys (a threshold of them) and by the new ones.</summary>
    public void RotateRoot(IReadOnlyList<SigningKey> currentRootKeys, IReadOnlyList<SigningKey> newRootKeys, int newThreshold,
        SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan rootExpiry)
    {
        var current = Current<RootMetadata>(Root, "root");
        var root = BuildRoot(current.Version + 1, newRootKeys, newThreshold, targetsKey, snapshotKey, timestampKey, rootExpiry);
        var file = SignedFile.Create(root, currentRootKeys.Concat(newRootKeys).DistinctBy(k => k.KeyId));
        if (!store.TryWrite(VersionedRoot(root.Version), file, ifMatch: null))
        {
            throw new TrustException($"{VersionedRoot(root.Version)} already exists: another rotation happened first; nothing was written.");
        }
        store.Write(Root, file);
    }

    /// <summary>The repository's current metadata as committed (not verified: for listing and publishing, never for trust).</summary>
    public RepositoryHead Head()
    {
        var timestampFile = store.Get(Timestamp) ?? throw new TrustException($"{store.Location} has no {Timestamp}; initialize it first.");
        var timestamp = SignedFile.ReadUnverified<TimestampMetadata>(timestampFile.Bytes, Timestamp, "timestamp");
        var snapshot = SignedFile.ReadUnverified<SnapshotMetadata>(Follow(timestamp.Meta, Snapshot, Timestamp, "snapshot"), Snapshot, "snapshot");
        var targets = SignedFile.ReadUnverified<TargetsMetadata>(Follow(snapshot.Meta, Targets, Snapshot, "targets"), Targets, "targets");
        return new RepositoryHead(timestampFile.ETag, timestamp, snapshot, targets);
    }

    private byte[] Follow(SortedDictionary<string, MetaFile> meta, string name, string from, string role) =>
        meta.GetValueOrDefault(name) is { Sha256: { } sha } ? store.Read(MetadataPath(role, sha)) ?? throw new TrustException($"{name} named by {from} ({sha[..16]}…) is missing from {store.Location}.")
        : throw new TrustException($"{from} does not name {name} by digest.");

    /// <summary>Applies a change to the targets on top of the latest commit, retrying when another publisher commits first.</summary>
    private void Commit(Func<TargetsMetadata, TargetsMetadata?> change, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry)
    {
        for (var attempt = 0; attempt < CommitAttempts; attempt++)
        {
            var head = Head();
            if (change(head.Targets) is not { } next)
            {
                return;
            }
            var timestamp = Chain(next, targetsKey, snapshotKey, timestampKey, expiry, head.Snapshot.Version + 1, head.Timestamp.Version + 1);
            if (store.TryWrite(Timestamp, timestamp, head.ETag))
            {
                return;
            }
        }
        throw new TrustException($"timestamp.json changed {CommitAttempts} times in a row while publishing (too many concurrent publishers); nothing of this publish was committed.");
    }

    /// <summary>Writes the content-addressed targets and snapshot files and returns the signed timestamp that commits them.</summary>
    private byte[] Chain(TargetsMetadata targets, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry, int snapshotVersion, int timestampVersion)
    {
        var targetsFile = SignedFile.Create(targets, [targetsKey]);
        var targetsSha = StackPackage.Sha256(targetsFile);
        store.Write(MetadataPath("targets", targetsSha), targetsFile);
        var snapshot = new SnapshotMetadata("snapshot", snapshotVersion, _now() + expiry,
            new(StringComparer.Ordinal) { [Targets] = new MetaFile(targets.Version, targetsFile.Length, targetsSha) });
        var snapshotFile = SignedFile.Create(snapshot, [snapshotKey]);
        var snapshotSha = StackPackage.Sha256(snapshotFile);
        store.Write(MetadataPath("snapshot", snapshotSha), snapshotFile);
        var timestamp = new TimestampMetadata("timestamp", timestampVersion, _now() + expiry,
            new(StringComparer.Ordinal) { [Snapshot] = new MetaFile(snapshot.Version, snapshotFile.Length, snapshotSha) });
        return SignedFile.Create(timestamp, [timestampKey]);
    }

    private RootMetadata BuildRoot(int version, IReadOnlyList<SigningKey> rootKeys, int threshold, SigningKey targets, SigningKey snapshot, SigningKey timestamp, TimeSpan expiry)
    {
        if (threshold < 1 || threshold > rootKeys.Count)
        {
            throw new TrustException($"Root threshold {threshold} must be between 1 and the {rootKeys.Count} root key(s).");
        }
        var keys = new SortedDictionary<string, PublicKeyInfo>(StringComparer.Ordinal);
        foreach (var key in rootKeys.Append(targets).Append(snapshot).Append(timestamp))
        {
            keys[key.KeyId] = key.Public;
        }
        var roles = new SortedDictionary<string, RoleKeys>(StringComparer.Ordinal)
        {
            ["root"] = new([.. rootKeys.Select(k => k.KeyId)], threshold),
            ["targets"] = new([targets.KeyId], 1),
            ["snapshot"] = new([snapshot.KeyId], 1),
            ["timestamp"] = new([timestamp.KeyId], 1),
        };
        return new RootMetadata("root", version, _now() + expiry, keys, roles);
    }

    /// <summary>Refuses, before anything is written, keys the current root does not authorize for their role.</summary>
    private void Authorize(params (string Role, SigningKey Key)[] keys)
    {
        var root = Current<RootMetadata>(Root, "root");
        foreach (var (role, key) in keys)
        {
            if (!root.Roles.TryGetValue(role, out var allowed) || !allowed.KeyIds.Contains(key.KeyId))
            {
                throw new TrustException($"Key {key.KeyId[..16]}… is not a {role} key of root v{root.Version}; nothing was published.");
            }
        }
    }

    private T Current<T>(string name, string type) =>
        SignedFile.ReadUnverified<T>(store.Read(name) ?? throw new TrustException($"{store.Location} has no {name}; initialize it first."), name, type);
}

/// <summary>The committed metadata: the timestamp's tag (what a conditional commit must name) and the chain it points to.</summary>
public sealed record RepositoryHead(string ETag, TimestampMetadata Timestamp, SnapshotMetadata Snapshot, TargetsMetadata Targets);
