namespace Fabric.Repository;

/// <summary>
/// The agent's side of the trust metadata, in the style of The Update Framework. It starts from a root it was given
/// (pinned), follows root rotations (each new root signed by the previous root's threshold and its own), then checks
/// timestamp → snapshot → targets: signatures and thresholds, expiry (freeze attacks), versions that never go back
/// (rollback), and that each file is the version the one above names (mix-and-match). What it trusted is persisted in
/// its state folder, so rollback and freeze are caught across restarts. Packages are accepted only when their length
/// and SHA-256 match the trusted targets.
/// </summary>
public sealed class TrustClient
{
    /// <summary>The most a root.json may take (a few keys and signatures take a few KiB).</summary>
    public const int MaxRootBytes = 512 * 1024;

    /// <summary>The most a timestamp.json may take (it names one file).</summary>
    public const int MaxTimestampBytes = 64 * 1024;

    /// <summary>The most a snapshot.json or targets.json may be signed as (the file above names its exact length).</summary>
    public const int MaxMetadataBytes = 16 * 1024 * 1024;

    /// <summary>The most a stack package may be signed as; a publisher refuses a larger one.</summary>
    public const int MaxPackageBytes = 64 * 1024 * 1024;

    private readonly IRepositoryStore _store;
    private readonly string _stateDirectory;
    private readonly Func<DateTimeOffset> _now;

    public TrustClient(IRepositoryStore store, string stateDirectory, string pinnedRootFile, Func<DateTimeOffset>? clock = null)
    {
        _store = store;
        _stateDirectory = stateDirectory;
        _now = clock ?? (() => DateTimeOffset.UtcNow);
        Directory.CreateDirectory(stateDirectory);
        if (!File.Exists(StatePath(Publisher.Root)))
        {
            if (!File.Exists(pinnedRootFile))
            {
                throw new TrustException($"No trusted root: '{pinnedRootFile}' does not exist and the state folder has none.");
            }
            var pinned = File.ReadAllBytes(pinnedRootFile);
            var root = SignedFile.ReadUnverified<RootMetadata>(pinned, pinnedRootFile, "root");
            // A pinned root is trusted because it was given, but it must still be consistently self-signed.
            SignedFile.Verify<RootMetadata>(pinned, pinnedRootFile, "root", root, "root");
            AtomicFile.Write(StatePath(Publisher.Root), pinned);
        }
    }

    /// <summary>The targets verified by the last <see cref="Refresh"/>.</summary>
    public TargetsMetadata? Targets { get; private set; }

    /// <summary>Runs the whole verification; throws <see cref="TrustException"/> naming the file and the check that failed.</summary>
    public TargetsMetadata Refresh()
    {
        var root = UpdateRoot();
        var now = _now();
        CheckExpiry(root.Expires, Publisher.Root, now);

        var timestampFile = Fetch(Publisher.Timestamp);
        var timestamp = SignedFile.Verify<TimestampMetadata>(timestampFile, Publisher.Timestamp, "timestamp", root, "timestamp");
        CheckNotOlder(timestamp.Version, Publisher.Timestamp);
        CheckExpiry(timestamp.Expires, Publisher.Timestamp, now);
        var snapshotRef = timestamp.Meta.GetValueOrDefault(Publisher.Snapshot) ?? throw new TrustException("timestamp.json names no snapshot.json.");

        var snapshotFile = FetchNamed(Publisher.Snapshot, "snapshot", snapshotRef, Publisher.Timestamp);
        var snapshot = SignedFile.Verify<SnapshotMetadata>(snapshotFile, Publisher.Snapshot, "snapshot", root, "snapshot");
        if (snapshot.Version != snapshotRef.Version)
        {
            throw new TrustException($"snapshot.json is version {snapshot.Version}; timestamp.json names version {snapshotRef.Version} (mix-and-match).");
        }
        CheckNotOlder(snapshot.Version, Publisher.Snapshot);
        CheckExpiry(snapshot.Expires, Publisher.Snapshot, now);
        var targetsRef = snapshot.Meta.GetValueOrDefault(Publisher.Targets) ?? throw new TrustException("snapshot.json names no targets.json.");

        var targetsFile = FetchNamed(Publisher.Targets, "targets", targetsRef, Publisher.Snapshot);
        var targets = SignedFile.Verify<TargetsMetadata>(targetsFile, Publisher.Targets, "targets", root, "targets");
        if (targets.Version != targetsRef.Version)
        {
            throw new TrustException($"targets.json is version {targets.Version}; snapshot.json names version {targetsRef.Version} (mix-and-match: old targets with a newer snapshot).");
        }
        CheckNotOlder(targets.Version, Publisher.Targets);
        CheckExpiry(targets.Expires, Publisher.Targets, now);

        AtomicFile.Write(StatePath(Publisher.Timestamp), timestampFile);
        AtomicFile.Write(StatePath(Publisher.Snapshot), snapshotFile);
        AtomicFile.Write(StatePath(Publisher.Targets), targetsFile);
        Targets = targets;
        return targets;
    }

    /// <summary>Downloads a verified target's package and checks its length and digest; throws when they differ.</summary>
    public byte[] FetchPackage(string targetName)
    {
        var targets = Targets ?? throw new TrustException("Refresh the trust metadata before fetching packages.");
        var info = targets.Targets.GetValueOrDefault(targetName) ?? throw new TrustException($"'{targetName}' is not a published target.");
        if (info.Length is < 0 or > MaxPackageBytes)
        {
            throw new TrustException($"{targetName} is signed as {info.Length:N0} bytes; a package may have at most {MaxPackageBytes:N0}.");
        }
        var bytes = ReadAtMost(Publisher.PackagePath(info.Sha256), (int)info.Length, $"the signed length of {targetName}")
            ?? throw new TrustException($"Package of {targetName} ({info.Sha256}) is missing from the repository.");
        if (bytes.Length != info.Length || StackPackage.Sha256(bytes) != info.Sha256)
        {
            throw new TrustException($"Package of {targetName} does not match its signed length and SHA-256 (tampered).");
        }
        return bytes;
    }

    private RootMetadata UpdateRoot()
    {
        var trustedFile = File.ReadAllBytes(StatePath(Publisher.Root));
        var trusted = SignedFile.ReadUnverified<RootMetadata>(trustedFile, "trusted root.json", "root");
        while (ReadAtMost(Publisher.VersionedRoot(trusted.Version + 1), MaxRootBytes, "a root's limit") is { } nextFile)
        {
            var name = Publisher.VersionedRoot(trusted.Version + 1);
            // A new root must satisfy the old root's threshold (continuity) and its own (it is what it claims).
            SignedFile.Verify<RootMetadata>(nextFile, name, "root", trusted, "root");
            var next = SignedFile.Verify<RootMetadata>(nextFile, name, "root", SignedFile.ReadUnverified<RootMetadata>(nextFile, name, "root"), "root");
            if (next.Version != trusted.Version + 1)
            {
                throw new TrustException($"{name} says version {next.Version}.");
            }
            AtomicFile.Write(StatePath(Publisher.Root), nextFile);
            trusted = next;
        }
        return trusted;
    }

    private byte[] Fetch(string name) => ReadAtMost(name, MaxTimestampBytes, "a timestamp's limit") ?? throw new TrustException($"{_store.Location} has no {name} (not initialized).");

    /// <summary>
    /// Reads a file known to be at most <paramref name="limit"/> bytes, fetching no more than one byte beyond it: a store
    /// that serves a larger file (a compromised store filling the agent's memory, or endless data) is refused, naming the
    /// file and the limit (<paramref name="limitName"/>). Null when the file does not exist.
    /// </summary>
    private byte[]? ReadAtMost(string name, int limit, string limitName)
    {
        var bytes = _store.ReadPrefix(name, limit);
        return bytes is { Length: var length } && length > limit
            ? throw new TrustException($"{name} in {_store.Location} is larger than {limitName} ({limit:N0} bytes); it was not read further.")
            : bytes;
    }

    /// <summary>Fetches a content-addressed metadata file and checks it is exactly the one the file above names.</summary>
    private byte[] FetchNamed(string name, string role, MetaFile reference, string namedBy)
    {
        if (reference.Sha256 is not { } sha || reference.Length is not { } length)
        {
            throw new TrustException($"{namedBy} names {name} without its length and SHA-256.");
        }
        if (length is < 0 or > MaxMetadataBytes)
        {
            throw new TrustException($"{namedBy} names {name} as {length:N0} bytes; metadata may have at most {MaxMetadataBytes:N0}.");
        }
        var bytes = ReadAtMost(Publisher.MetadataPath(role, sha), (int)length, $"the length {namedBy} names")
            ?? throw new TrustException($"{name} named by {namedBy} ({sha[..16]}…) is missing from {_store.Location}.");
        if (bytes.Length != length || StackPackage.Sha256(bytes) != sha)
        {
            throw new TrustException($"{name} does not match the length and SHA-256 that {namedBy} names (tampered or mixed).");
        }
        return bytes;
    }

    /// <summary>
    /// The targets this agent verified last (persisted by <see cref="Refresh"/>), for running on cached stacks while the
    /// repository cannot be reached; null when it never verified any.
    /// </summary>
    public TargetsMetadata? LastTrusted()
    {
        var path = StatePath(Publisher.Targets);
        return File.Exists(path) ? SignedFile.ReadUnverified<TargetsMetadata>(File.ReadAllBytes(path), "trusted targets.json", "targets") : null;
    }

    private void CheckNotOlder(int version, string name)
    {
        var path = StatePath(name);
        if (!File.Exists(path))
        {
            return;
        }
        var previous = name switch
        {
            Publisher.Timestamp => SignedFile.ReadUnverified<TimestampMetadata>(File.ReadAllBytes(path), name, "timestamp").Version,
            Publisher.Snapshot => SignedFile.ReadUnverified<SnapshotMetadata>(File.ReadAllBytes(path), name, "snapshot").Version,
            _ => SignedFile.ReadUnverified<TargetsMetadata>(File.ReadAllBytes(path), name, "targets").Version,
        };
        if (version < previous)
        {
            throw new TrustException($"{name} is version {version}, older than the version {previous} already trusted (rollback).");
        }
    }

    private static void CheckExpiry(DateTimeOffset expires, string name, DateTimeOffset now)
    {
        if (expires <= now)
        {
            throw new TrustException($"{name} expired at {expires:u} (freeze: the repository stopped being refreshed).");
        }
    }

    private string StatePath(string name) => Path.Combine(_stateDirectory, name);
}
