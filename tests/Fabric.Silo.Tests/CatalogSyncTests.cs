using Fabric.Repository;
using Fabric.Testing;

namespace Fabric.Silo.Tests;

/// <summary>The catalog fed from a signed repository, verified as agents verify it.</summary>
[Collection(ClusterCollection.Name)]
public class CatalogSyncTests(ClusterFixture fixture)
{
    [Fact]
    public async Task PublishedPackages_ReachTheCatalogWithTheirProfiles_AndATamperedRepositoryPublishesNothing()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-catalog-").FullName;
        try
        {
            var store = new LocalFolderStore(System.IO.Path.Combine(folder, "repo"));
            using var root = SigningKey.Generate();
            using var targets = SigningKey.Generate();
            using var snapshot = SigningKey.Generate();
            using var timestamp = SigningKey.Generate();
            var publisher = new Publisher(store);
            publisher.Initialize([root], 1, targets, snapshot, timestamp, TimeSpan.FromDays(365), TimeSpan.FromDays(7));
            var pluginDir = System.IO.Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.SwapTest))!;
            publisher.Publish(StackPackage.Pack(pluginDir, "sync-enc", "1.0.0", new StackProfile(40, 0, 0, 0, "an encrypting test stack", Encrypts: true)), targets, snapshot, timestamp, TimeSpan.FromDays(7));
            publisher.Publish(StackPackage.Pack(pluginDir, "sync-enc", "1.1.0", new StackProfile(36, 0, 0, 0, "newer", Encrypts: true)), targets, snapshot, timestamp, TimeSpan.FromDays(7));
            var pinned = System.IO.Path.Combine(folder, "root.json");
            File.WriteAllBytes(pinned, store.Read(Publisher.Root)!);
            var source = new CatalogSource(store.Root, pinned, System.IO.Path.Combine(folder, "silo-state"));

            var published = await CatalogSync.SyncOnceAsync(source, fixture.Client);
            var stack = Assert.Single(published);
            Assert.Equal(("sync-enc", "1.1.0", 36, true, "ipv4"), (stack.Id, stack.Version, stack.HeaderBytes, stack.Encrypts, stack.Family));
            Assert.Contains(await fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync(), s => s == stack);

            // Metadata signed by a key the root does not know: refused, the catalog keeps what it had.
            using var rogue = SigningKey.Generate();
            var head = publisher.Head();
            var forged = SignedFile.Create(head.Targets with { Version = head.Targets.Version + 1 }, [rogue]);
            store.Write(Publisher.MetadataPath("targets", StackPackage.Sha256(forged)), forged);
            var snap = SignedFile.Create(new SnapshotMetadata("snapshot", head.Snapshot.Version + 1, DateTimeOffset.UtcNow.AddDays(1),
                new(StringComparer.Ordinal) { [Publisher.Targets] = new MetaFile(head.Targets.Version + 1, forged.Length, StackPackage.Sha256(forged)) }), [snapshot]);
            store.Write(Publisher.MetadataPath("snapshot", StackPackage.Sha256(snap)), snap);
            store.Write(Publisher.Timestamp, SignedFile.Create(new TimestampMetadata("timestamp", head.Timestamp.Version + 1, DateTimeOffset.UtcNow.AddDays(1),
                new(StringComparer.Ordinal) { [Publisher.Snapshot] = new MetaFile(head.Snapshot.Version + 1, snap.Length, StackPackage.Sha256(snap)) }), [timestamp]));
            await Assert.ThrowsAsync<TrustException>(() => CatalogSync.SyncOnceAsync(source, fixture.Client));
            Assert.Contains(await fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync(), s => s == stack);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
