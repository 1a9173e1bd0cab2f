namespace Fabric.Repository;

/// <summary>
/// Writes a repository: its first root, published packages, root rotations. Every publish writes the package first
/// (content-addressed), then targets, snapshot and timestamp, so a client reading at any moment sees either the old
/// consistent set or the new one; a refused publish writes nothing.
/// </summary>
public sealed class Publisher(IRepositoryStore store, Func<DateTimeOffset>? clock = null)
{
    public const string Root = "root.json";
    public const string Targets = "targets.json";
    public const string Snapshot = "snapshot.json";
    public const string Timestamp = "timestamp.json";
    private readonly Func<DateTimeOffset> _now = clock ?? (() => DateTimeOffset.UtcNow);

    public static string VersionedRoot(int version) => $"{version}.root.json";

    public static string PackagePath(string sha256) => $"packages/{sha256}.fspk";

    /// <summary>Creates root v1 and empty targets, snapshot and timestamp. Refuses when the store already has a root.</summary>
    public void Initialize(IReadOnlyList<SigningKey> rootKeys, int rootThreshold, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan rootExpiry, TimeSpan expiry)
    {
        if (store.Read(Root) is not null)
        {
            throw new TrustException("The repository already has a root.json; rotate the root instead of initializing again.");
        }
        var root = BuildRoot(1, rootKeys, rootThreshold, targetsKey, snapshotKey, timestampKey, rootExpiry);
        var rootFile = SignedFile.Create(root, rootKeys);
        var targets = new TargetsMetadata("targets", 1, _now() + expiry, []);
        WriteChain(SignedFile.Create(targets, [targetsKey]), 1, snapshotKey, timestampKey, expiry, previousSnapshot: 0, previousTimestamp: 0);
        store.Write(VersionedRoot(1), rootFile);
        store.Write(Root, rootFile);
    }

    /// <summary>Publishes a package; refuses a second, different package under the same id and version.</summary>
    public TargetInfo Publish(byte[] package, SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry)
    {
        Authorize(("targets", targetsKey), ("snapshot", snapshotKey), ("timestamp", timestampKey));
        var (manifest, _) = StackPackage.Read(package);
        var name = $"{manifest.Id}/{manifest.Version}";
        var sha = StackPackage.Sha256(package);
        var current = Current<TargetsMetadata>(Targets, "targets");
        if (current.Targets.TryGetValue(name, out var existing) && existing.Sha256 != sha)
        {
            throw new TrustException($"{name} is already published with another digest ({existing.Sha256}); publish a new version instead.");
        }
        var info = new TargetInfo(package.Length, sha, manifest.Id, manifest.Version, manifest.Profile);
        var targets = new SortedDictionary<string, TargetInfo>(current.Targets, StringComparer.Ordinal) { [name] = info };
        var next = new TargetsMetadata("targets", current.Version + 1, _now() + expiry, targets);
        store.Write(PackagePath(sha), package);
        var snapshot = Current<SnapshotMetadata>(Snapshot, "snapshot");
        var timestamp = Current<TimestampMetadata>(Timestamp, "timestamp");
        WriteChain(SignedFile.Create(next, [targetsKey]), next.Version, snapshotKey, timestampKey, expiry, snapshot.Version, timestamp.Version);
        return info;
    }

    /// <summary>Re-signs targets, snapshot and timestamp with fresh expiry and new versions (what a refresh service does to prove freshness).</summary>
    public void Refresh(SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry)
    {
        Authorize(("targets", targetsKey), ("snapshot", snapshotKey), ("timestamp", timestampKey));
        var current = Current<TargetsMetadata>(Targets, "targets");
        var snapshot = Current<SnapshotMetadata>(Snapshot, "snapshot");
        var timestamp = Current<TimestampMetadata>(Timestamp, "timestamp");
        var next = current with { Version = current.Version + 1, Expires = _now() + expiry };
        WriteChain(SignedFile.Create(next, [targetsKey]), next.Version, snapshotKey, timestampKey, expiry, snapshot.Version, timestamp.Version);
    }

    /// <summary>Writes root v(n+1), signed by the current root keys (a threshold of them) and by the new ones.</summary>
    public void RotateRoot(IReadOnlyList<SigningKey> currentRootKeys, IReadOnlyList<SigningKey> newRootKeys, int newThreshold,
        SigningKey targetsKey, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan rootExpiry)
    {
        var current = Current<RootMetadata>(Root, "root");
        var root = BuildRoot(current.Version + 1, newRootKeys, newThreshold, targetsKey, snapshotKey, timestampKey, rootExpiry);
        var file = SignedFile.Create(root, currentRootKeys.Concat(newRootKeys).DistinctBy(k => k.KeyId));
        store.Write(VersionedRoot(root.Version), file);
        store.Write(Root, file);
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

    private void WriteChain(byte[] targetsFile, int targetsVersion, SigningKey snapshotKey, SigningKey timestampKey, TimeSpan expiry, int previousSnapshot, int previousTimestamp)
    {
        var snapshot = new SnapshotMetadata("snapshot", previousSnapshot + 1, _now() + expiry,
            new(StringComparer.Ordinal) { [Targets] = new MetaFile(targetsVersion) });
        var snapshotFile = SignedFile.Create(snapshot, [snapshotKey]);
        var timestamp = new TimestampMetadata("timestamp", previousTimestamp + 1, _now() + expiry,
            new(StringComparer.Ordinal) { [Snapshot] = new MetaFile(snapshot.Version, snapshotFile.Length, StackPackage.Sha256(snapshotFile)) });
        store.Write(Targets, targetsFile);
        store.Write(Snapshot, snapshotFile);
        store.Write(Timestamp, SignedFile.Create(timestamp, [timestampKey]));
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
        SignedFile.ReadUnverified<T>(store.Read(name) ?? throw new TrustException($"The repository has no {name}; initialize it first."), name, type);
}
