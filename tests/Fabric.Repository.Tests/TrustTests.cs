using System.Text;
using Fabric.Stacks.Loading;
using Fabric.Repository;
using Fabric.Testing;

namespace Fabric.Repository.Tests;

/// <summary>A repository in a temporary folder with its keys, a publisher and a fake clock.</summary>
internal sealed class TestRepository : IDisposable
{
    public TestRepository(int rootKeys = 1, int threshold = 1)
    {
        Folder = Directory.CreateTempSubdirectory("fabric-repo-").FullName;
        Store = new LocalFolderStore(Path.Combine(Folder, "repo"));
        RootKeys = [.. Enumerable.Range(0, rootKeys).Select(_ => SigningKey.Generate())];
        Publisher = new Publisher(Store, () => Now);
        Publisher.Initialize(RootKeys, threshold, TargetsKey, SnapshotKey, TimestampKey, TimeSpan.FromDays(365), TimeSpan.FromDays(7));
        PinnedRoot = Path.Combine(Folder, "pinned-root.json");
        File.WriteAllBytes(PinnedRoot, Store.Read(Publisher.Root)!);
    }

    public DateTimeOffset Now { get; set; } = DateTimeOffset.UtcNow;
    public string Folder { get; }
    public LocalFolderStore Store { get; }
    public List<SigningKey> RootKeys { get; }
    public SigningKey TargetsKey { get; } = SigningKey.Generate();
    public SigningKey SnapshotKey { get; } = SigningKey.Generate();
    public SigningKey TimestampKey { get; } = SigningKey.Generate();
    public Publisher Publisher { get; }
    public string PinnedRoot { get; }

    public TrustClient Client(string state = "state") => new(Store, Path.Combine(Folder, state), PinnedRoot, () => Now);

    public TargetInfo Publish(byte[] package) => Publisher.Publish(package, TargetsKey, SnapshotKey, TimestampKey, TimeSpan.FromDays(7));

    /// <summary>What an attacker holding the snapshot and timestamp keys can write: a chain naming these targets as this version.</summary>
    public void Forge(byte[] targetsFile, int targetsVersion)
    {
        var head = Publisher.Head();
        var targetsSha = StackPackage.Sha256(targetsFile);
        Store.Write(Publisher.MetadataPath("targets", targetsSha), targetsFile);
        var snapshotFile = SignedFile.Create(new SnapshotMetadata("snapshot", head.Snapshot.Version + 1, Now.AddDays(1),
            new(StringComparer.Ordinal) { [Publisher.Targets] = new MetaFile(targetsVersion, targetsFile.Length, targetsSha) }), [SnapshotKey]);
        var snapshotSha = StackPackage.Sha256(snapshotFile);
        Store.Write(Publisher.MetadataPath("snapshot", snapshotSha), snapshotFile);
        Store.Write(Publisher.Timestamp, SignedFile.Create(new TimestampMetadata("timestamp", head.Timestamp.Version + 1, Now.AddDays(1),
            new(StringComparer.Ordinal) { [Publisher.Snapshot] = new MetaFile(head.Snapshot.Version + 1, snapshotFile.Length, snapshotSha) }), [TimestampKey]));
    }

    public static byte[] Package(string project, string id, string version) =>
        StackPackage.Pack(Path.GetDirectoryName(StackPlugins.PathOf(project))!, id, version, new StackProfile(Purpose: "test"));

    public void Dispose() => Directory.Delete(Folder, recursive: true);
}

public class PackageTests
{
    [Fact]
    public void Packing_IsDeterministic_AndFindsTheFactory()
    {
        var a = TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0");
        var b = TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0");
        Assert.Equal(StackPackage.Sha256(a), StackPackage.Sha256(b));
        var (manifest, files) = StackPackage.Read(a);
        Assert.Equal("Fabric.Stacks.StdIPv4.dll", manifest.EntryAssembly);
        Assert.Equal("Fabric.Stacks.StdIPv4.StdIPv4Factory", manifest.EntryType);
        Assert.DoesNotContain("Fabric.Wire.dll", files.Keys);
        // What the factory declares, read where it is packed, so hosts need not run it to know.
        Assert.Equal(new StackDeclaration("std-ipv4", "1.0.0", "ipv4", 0, 0, Encrypts: false), manifest.Declares);
        var secure = StackPackage.Read(TestRepository.Package(StackPlugins.Secure, "secure", "1.0.0")).Manifest.Declares!;
        Assert.True(secure.Encrypts && secure.MaxStackFieldBytes > 0 && secure.Family == "ipv4", secure.ToString());
    }

    /// <summary>
    /// A declaration says all a description says: if the contract's description gains a property, this fails until the
    /// declaration carries it too (else every declared version would differ from its factory's and be quarantined).
    /// </summary>
    [Fact]
    public void ADeclaration_CarriesEveryPropertyOfTheDescription()
    {
        Assert.Equal(["Encrypts", "Id", "MaxExpansionBytes", "MaxStackFieldBytes", "UnderlayFamily", "Version"],
            typeof(Fabric.Stacks.StackDescription).GetProperties().Where(p => p.DeclaringType == typeof(Fabric.Stacks.StackDescription) && p.Name != "EqualityContract")
                .Select(p => p.Name).Order(StringComparer.Ordinal));
        foreach (var description in new[]
        {
            new Fabric.Stacks.StackDescription("secure", "2.1.0", System.Net.Sockets.AddressFamily.InterNetworkV6, 40, 16) { Encrypts = true },
            new Fabric.Stacks.StackDescription("std-ipv4", "1.0.0", System.Net.Sockets.AddressFamily.InterNetwork, 0),
        })
        {
            Assert.Equal(description, StackDeclaration.Of(description).ToDescription());
            Assert.Null(StackDeclaration.Of(description).Problem());
        }
        var unspecified = StackDeclaration.Of(new Fabric.Stacks.StackDescription("odd", "1.0.0", System.Net.Sockets.AddressFamily.Unspecified, 0));
        Assert.Contains("underlay family 'Unspecified'", unspecified.Problem(), StringComparison.Ordinal);
    }

    [Fact]
    public void AFolderShippingTheContract_IsRefused()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-plugin-").FullName;
        try
        {
            foreach (var file in Directory.EnumerateFiles(Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.StdIPv4))!))
            {
                File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
            }
            File.Copy(typeof(Fabric.Wire.MacAddress).Assembly.Location, Path.Combine(folder, "Fabric.Wire.dll"));
            var e = Assert.Throws<PackageException>(() => StackPackage.Pack(folder, "std-ipv4", "1.0.0", new StackProfile()));
            Assert.Contains("contains Fabric.Wire.dll", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void BrokenManifests_AreRefusedNamingTheField()
    {
        var package = TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0");
        var text = Encoding.Latin1.GetString(package);
        Assert.Contains("entryType is missing", Assert.Throws<PackageException>(() => StackPackage.Read(Encoding.Latin1.GetBytes(
            text.Replace("\"entryType\":\"Fabric.Stacks.StdIPv4.StdIPv4Factory\"", "\"entryType\":\"" + new string(' ', 36) + "\"", StringComparison.Ordinal)))).Message, StringComparison.Ordinal);
        Assert.Contains("contract version 2 is not supported", Assert.Throws<PackageException>(() => StackPackage.Read(Encoding.Latin1.GetBytes(
            text.Replace("\"contractVersion\":1", "\"contractVersion\":2", StringComparison.Ordinal)))).Message, StringComparison.Ordinal);
        Assert.Contains("declares underlay family 'ipx4'", Assert.Throws<PackageException>(() => StackPackage.Read(Encoding.Latin1.GetBytes(
            text.Replace("\"family\":\"ipv4\",\"maxStackFieldBytes\"", "\"family\":\"ipx4\",\"maxStackFieldBytes\"", StringComparison.Ordinal)))).Message, StringComparison.Ordinal);
        Assert.Contains("bad magic", Assert.Throws<PackageException>(() => StackPackage.Read(new byte[10])).Message, StringComparison.Ordinal);
        Assert.Contains("beyond the end", Assert.Throws<PackageException>(() => StackPackage.Read(package.AsSpan(0, 200))).Message, StringComparison.Ordinal);
    }
}

public class TrustTests
{
    [Fact]
    public void PublishedPackages_VerifyExtractAndLoad()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        var client = repo.Client();
        var targets = client.Refresh();
        Assert.Equal(["std-ipv4/1.0.0", "swap-test/0.1.0"], targets.Targets.Keys);
        var bytes = client.FetchPackage("swap-test/0.1.0");
        var unpacked = StackPackage.Extract(bytes, Path.Combine(repo.Folder, "cache", StackPackage.Sha256(bytes)));
        var loaded = StackLoader.Load(unpacked.EntryPath, unpacked.Digests);
        Assert.Equal("swap-test", loaded.Description.Id);
        Assert.Null(unpacked.Repaired);
    }

    /// <summary>
    /// An attacker (or a failing disk) that can change the agent's state folder replaces an unpacked plug-in's assembly
    /// with another stack's after it was verified. Loading it with its package's digests refuses the changed bytes, naming
    /// the file; unpacking it again (what every start and repository refresh does) finds the change and restores the
    /// signed files; a file slipped in beside them is found too.
    /// </summary>
    [Fact]
    public void AnUnpackedPluginChangedOnDisk_IsNotLoaded_AndIsUnpackedAgainFromTheVerifiedPackage()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        var client = repo.Client();
        client.Refresh();
        var bytes = client.FetchPackage("swap-test/0.1.0");
        var folder = Path.Combine(repo.Folder, "unpacked", StackPackage.Sha256(bytes));
        var unpacked = StackPackage.Extract(bytes, folder);

        // Another (genuine, but not this package's) plug-in assembly under the signed file's name.
        File.Copy(StackPlugins.PathOf(StackPlugins.StdIPv4), unpacked.EntryPath, overwrite: true);
        var refused = Assert.Throws<InvalidDataException>(() => StackLoader.Load(unpacked.EntryPath, unpacked.Digests));
        Assert.Contains($"'{unpacked.EntryPath}' does not match the stack's signed package", refused.Message, StringComparison.Ordinal);
        // Without the digests (a plug-in configured by path) the same file loads as what it is: the check is what refused it.
        Assert.Equal("std-ipv4", StackLoader.Load(unpacked.EntryPath).Description.Id);

        var again = StackPackage.Extract(bytes, folder);
        Assert.Equal($"'{Path.GetFileName(unpacked.EntryPath)}' does not match the signed package", again.Repaired);
        Assert.Equal("swap-test", StackLoader.Load(again.EntryPath, again.Digests).Description.Id);
        Assert.Null(StackPackage.Extract(bytes, folder).Repaired);

        File.WriteAllBytes(Path.Combine(folder, "Extra.dll"), [1, 2, 3]);
        Assert.Equal("'Extra.dll' is not in the signed package", StackPackage.Extract(bytes, folder).Repaired);
        Assert.False(File.Exists(Path.Combine(folder, "Extra.dll")));
        File.Delete(again.EntryPath);
        Assert.Equal($"'{Path.GetFileName(again.EntryPath)}' is missing", StackPackage.Extract(bytes, folder).Repaired);
        Assert.Equal("swap-test", StackLoader.Load(again.EntryPath, again.Digests).Description.Id);
    }

    /// <summary>
    /// A compromised store serves files of a gigabyte (sparse here, so the disk does not fill) where the agent expects a
    /// package, a timestamp.json and the next root.json. The client fetches no more than its limit and one byte of any,
    /// refuses each naming the file and the limit, and allocates far less than the file's size doing so.
    /// </summary>
    [Fact]
    public void EndlessFilesFromTheStore_AreRefusedWithoutBeingReadWhole()
    {
        using var repo = new TestRepository();
        var info = repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        var client = repo.Client();
        client.Refresh();
        void Refused(string file, Action read, string expected)
        {
            using (var huge = new FileStream(Path.Combine(repo.Store.Root, file), FileMode.Create))
            {
                huge.SetLength(1L << 30);
            }
            var before = GC.GetAllocatedBytesForCurrentThread();
            var refused = Assert.Throws<TrustException>(read);
            var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.Contains(expected, refused.Message, StringComparison.Ordinal);
            Assert.True(allocated < 16 << 20, $"{file}: {allocated:N0} bytes allocated to refuse a 1 GiB file");
        }

        Refused(Publisher.PackagePath(info.Sha256), () => client.FetchPackage("std-ipv4/1.0.0"), "is larger than the signed length of std-ipv4/1.0.0");
        Refused(Publisher.Timestamp, () => client.Refresh(), $"{Publisher.Timestamp} in {repo.Store.Location} is larger than a timestamp's limit (65,536 bytes)");
        Refused(Publisher.VersionedRoot(2), () => client.Refresh(), $"{Publisher.VersionedRoot(2)} in {repo.Store.Location} is larger than a root's limit");
        Assert.Contains("agents accept at most", Assert.Throws<PackageException>(() =>
            repo.Publish(new byte[TrustClient.MaxPackageBytes + 1])).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ATamperedPackageByte_IsRefused()
    {
        using var repo = new TestRepository();
        var info = repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        var path = Path.Combine(repo.Store.Root, Publisher.PackagePath(info.Sha256));
        var bytes = File.ReadAllBytes(path);
        bytes[bytes.Length / 2] ^= 1;
        File.WriteAllBytes(path, bytes);
        var client = repo.Client();
        client.Refresh();
        Assert.Contains("tampered", Assert.Throws<TrustException>(() => client.FetchPackage("std-ipv4/1.0.0")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TargetsSignedByAnUnknownKey_AreRefused()
    {
        using var repo = new TestRepository();
        using var rogue = SigningKey.Generate();
        // The publisher refuses a key the root does not know, and commits nothing...
        var before = repo.Store.Read(Publisher.Timestamp);
        Assert.Contains("is not a targets key", Assert.Throws<TrustException>(() =>
            repo.Publisher.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "6.6.6"), rogue, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(1))).Message,
            StringComparison.Ordinal);
        Assert.Equal(before, repo.Store.Read(Publisher.Timestamp));
        // ...so an attacker writes the files directly: targets signed by the rogue key, chained by a stolen snapshot/timestamp key.
        var targets = repo.Publisher.Head().Targets;
        repo.Forge(SignedFile.Create(targets with { Version = targets.Version + 1 }, [rogue]), targets.Version + 1);
        var e = Assert.Throws<TrustException>(() => repo.Client().Refresh());
        Assert.Contains("targets.json: 0 valid signature(s)", e.Message, StringComparison.Ordinal);
        Assert.Contains("by keys the root does not trust", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void FewerRootSignaturesThanTheThreshold_AreRefused()
    {
        using var repo = new TestRepository(rootKeys: 3, threshold: 2);
        var client = repo.Client();
        client.Refresh();
        using var newRoot = SigningKey.Generate();
        // Signed by only one of the three current root keys (threshold 2) plus the new key.
        repo.Publisher.RotateRoot([repo.RootKeys[0]], [newRoot], 1, repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(365));
        var e = Assert.Throws<TrustException>(() => client.Refresh());
        Assert.Contains("2.root.json: 1 valid signature(s) from root keys, 2 required", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RootRotation_SignedByTheOldThreshold_IsFollowed()
    {
        using var repo = new TestRepository(rootKeys: 3, threshold: 2);
        var client = repo.Client();
        client.Refresh();
        using var newRoot = SigningKey.Generate();
        repo.Publisher.RotateRoot([repo.RootKeys[0], repo.RootKeys[2]], [newRoot], 1, repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(365));
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        Assert.Single(client.Refresh().Targets);
        // The next rotation needs the new root key: the old ones alone no longer count.
        repo.Publisher.RotateRoot([repo.RootKeys[0], repo.RootKeys[1]], [repo.RootKeys[0]], 1, repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(365));
        Assert.Contains("3.root.json: 0 valid signature(s)", Assert.Throws<TrustException>(() => client.Refresh()).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ExpiredMetadata_IsRefusedAsAFreeze()
    {
        using var repo = new TestRepository();
        repo.Now += TimeSpan.FromDays(8);
        Assert.Contains("timestamp.json expired", Assert.Throws<TrustException>(() => repo.Client().Refresh()).Message, StringComparison.Ordinal);
        repo.Publisher.Refresh(repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(7));
        Assert.Empty(repo.Client().Refresh().Targets);
    }

    [Fact]
    public void AVersionRollback_IsCaught_AcrossRestarts()
    {
        using var repo = new TestRepository();
        var old = Snapshot(repo);
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        repo.Client().Refresh();
        Restore(repo, old);
        // A new client over the same state folder: what the agent trusted before its restart.
        var e = Assert.Throws<TrustException>(() => repo.Client().Refresh());
        Assert.Contains("rollback", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OldTargetsInPlaceOfTheNamedOnes_AreCaughtAsMixed()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        var oldTargets = repo.Store.Read(Publisher.MetadataPath("targets", repo.Publisher.Head().Snapshot.Meta[Publisher.Targets].Sha256!))!;
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        repo.Store.Write(Publisher.MetadataPath("targets", repo.Publisher.Head().Snapshot.Meta[Publisher.Targets].Sha256!), oldTargets);
        var e = Assert.Throws<TrustException>(() => repo.Client().Refresh());
        Assert.Contains("targets.json does not match the length and SHA-256 that snapshot.json names (tampered or mixed)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ASnapshotNamingAnOlderTargetsVersion_IsCaughtAsMixAndMatch()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        var head = repo.Publisher.Head();
        var targetsFile = repo.Store.Read(Publisher.MetadataPath("targets", head.Snapshot.Meta[Publisher.Targets].Sha256!))!;
        // The real targets file, but a snapshot that claims it is a later version.
        repo.Forge(targetsFile, head.Targets.Version + 1);
        Assert.Contains("mix-and-match", Assert.Throws<TrustException>(() => repo.Client().Refresh()).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RepublishingAVersionWithOtherBytes_IsRefusedAndWritesNothing()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        var before = Snapshot(repo);
        var other = TestRepository.Package(StackPlugins.SwapTest, "std-ipv4", "1.0.0");
        Assert.Contains("already published with another digest", Assert.Throws<TrustException>(() => repo.Publish(other)).Message, StringComparison.Ordinal);
        Assert.Equal(before.Keys, Snapshot(repo).Keys);
        Assert.All(before, f => Assert.Equal(f.Value, repo.Store.Read(f.Key)));
    }

    [Fact]
    public void OneKeyListedUnderTwoIds_CountsOnce_AndAThresholdOfZeroIsRefused()
    {
        using var key = SigningKey.Generate();
        var metadata = new TargetsMetadata("targets", 1, DateTimeOffset.UtcNow.AddDays(1), new(StringComparer.Ordinal));
        var file = SignedFile.Create(metadata, [key]);
        // The same signature again under a second id that the root maps to the same key (the signed bytes untouched).
        var text = System.Text.Encoding.UTF8.GetString(file);
        var list = text.LastIndexOf("\"signatures\":[", StringComparison.Ordinal) + "\"signatures\":[".Length;
        var entry = text[list..^2];
        var doubled = System.Text.Encoding.UTF8.GetBytes(text[..list] + entry + "," + entry.Replace(key.KeyId, "twin-" + key.KeyId[..8], StringComparison.Ordinal) + "]}");
        RootMetadata Root(string[] ids, int threshold) => new("root", 1, DateTimeOffset.UtcNow.AddDays(1),
            new(StringComparer.Ordinal) { [key.KeyId] = key.Public, ["twin-" + key.KeyId[..8]] = key.Public },
            new(StringComparer.Ordinal) { ["targets"] = new(ids, threshold) });

        var e = Assert.Throws<TrustException>(() => SignedFile.Verify<TargetsMetadata>(doubled, "targets.json", "targets", Root([key.KeyId, "twin-" + key.KeyId[..8]], 2), "targets"));
        Assert.Contains("1 valid signature(s) from targets keys, 2 required", e.Message, StringComparison.Ordinal);
        Assert.Equal(1, SignedFile.Verify<TargetsMetadata>(doubled, "targets.json", "targets", Root([key.KeyId], 1), "targets").Version);

        var unsigned = System.Text.Encoding.UTF8.GetBytes(text[..list] + "]}");
        e = Assert.Throws<TrustException>(() => SignedFile.Verify<TargetsMetadata>(unsigned, "targets.json", "targets", Root([key.KeyId], 0), "targets"));
        Assert.Contains("threshold 0; at least 1 is required", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Withdrawing_RemovesOneVersionOrEvery_FromWhatClientsVerify_AndAMistypedIdWritesNothing()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.2.0"));
        var client = repo.Client();
        Assert.Equal("0.2.0", client.Refresh().Newest().Single(t => t.Value.Id == "swap-test").Value.Version);

        // The bad version only: clients fall back to the one before it.
        Assert.Equal(["swap-test/0.2.0"], repo.Publisher.Withdraw("swap-test", "0.2.0", repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(7)));
        Assert.Equal("0.1.0", client.Refresh().Newest().Single(t => t.Value.Id == "swap-test").Value.Version);

        var before = Snapshot(repo);
        var e = Assert.Throws<TrustException>(() => repo.Publisher.Withdraw("swap-tset", null, repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(7)));
        Assert.Contains("swap-tset is not published (published: std-ipv4/1.0.0, swap-test/0.1.0)", e.Message, StringComparison.Ordinal);
        Assert.Equal(before.Keys, Snapshot(repo).Keys);

        // Every version: the id is gone from the verified targets.
        Assert.Equal(["swap-test/0.1.0"], repo.Publisher.Withdraw("swap-test", null, repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(7)));
        Assert.Equal(["std-ipv4/1.0.0"], client.Refresh().Targets.Keys);
    }

    private static Dictionary<string, byte[]> Snapshot(TestRepository repo) =>
        Directory.EnumerateFiles(repo.Store.Root, "*", SearchOption.AllDirectories).ToDictionary(f => Path.GetRelativePath(repo.Store.Root, f), File.ReadAllBytes);

    private static void Restore(TestRepository repo, Dictionary<string, byte[]> files)
    {
        foreach (var (name, bytes) in files)
        {
            repo.Store.Write(name, bytes);
        }
    }
}
