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
        using var repo = new SignedRepository();
        repo.Publish("sync-enc", "1.0.0", new StackProfile(40, 0, 0, 0, "an encrypting test stack", Encrypts: true));
        repo.Publish("sync-enc", "1.1.0", new StackProfile(36, 0, 0, 0, "newer", Encrypts: true));

        var published = await CatalogSync.SyncOnceAsync(repo.Source, fixture.Client);
        var stack = Assert.Single(published);
        Assert.Equal(("sync-enc", "1.1.0", 36, true, "ipv4"), (stack.Id, stack.Version, stack.HeaderBytes, stack.Encrypts, stack.Family));
        Assert.Contains(await fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync(), s => s == stack);

        // Metadata signed by a key the root does not know: refused, the catalog keeps what it had.
        using var rogue = SigningKey.Generate();
        var (store, head) = (repo.Store, repo.Publisher.Head());
        var forged = SignedFile.Create(head.Targets with { Version = head.Targets.Version + 1 }, [rogue]);
        store.Write(Publisher.MetadataPath("targets", StackPackage.Sha256(forged)), forged);
        var snap = SignedFile.Create(new SnapshotMetadata("snapshot", head.Snapshot.Version + 1, DateTimeOffset.UtcNow.AddDays(1),
            new(StringComparer.Ordinal) { [Publisher.Targets] = new MetaFile(head.Targets.Version + 1, forged.Length, StackPackage.Sha256(forged)) }), [repo.Snapshot]);
        store.Write(Publisher.MetadataPath("snapshot", StackPackage.Sha256(snap)), snap);
        store.Write(Publisher.Timestamp, SignedFile.Create(new TimestampMetadata("timestamp", head.Timestamp.Version + 1, DateTimeOffset.UtcNow.AddDays(1),
            new(StringComparer.Ordinal) { [Publisher.Snapshot] = new MetaFile(head.Snapshot.Version + 1, snap.Length, StackPackage.Sha256(snap)) }), [repo.Timestamp]));
        await Assert.ThrowsAsync<TrustException>(() => CatalogSync.SyncOnceAsync(repo.Source, fixture.Client));
        Assert.Contains(await fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync(), s => s == stack);
    }

    /// <summary>
    /// A version published experimental reaches the catalog marked so (the selector gives it only by exploration, to
    /// policies that admit it); promoting it is publishing a newer version without the mark, signed like any other.
    /// </summary>
    [Fact]
    public async Task AnExperimentalVersion_ReachesTheCatalogMarked_AndASignedStableVersionPromotesIt()
    {
        using var repo = new SignedRepository();
        var id = "trial-" + Guid.NewGuid().ToString("N")[..8];
        repo.Publish(id, "0.1.0", new StackProfile(Purpose: "on trial", Experimental: true));
        var catalog = fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);

        Assert.True(Assert.Single(await CatalogSync.SyncOnceAsync(repo.Source, fixture.Client)).Experimental);
        Assert.True(Assert.Single(await catalog.ListAsync(), s => s.Id == id).Experimental);

        repo.Publish(id, "1.0.0", new StackProfile(Purpose: "promoted"));
        await CatalogSync.SyncOnceAsync(repo.Source, fixture.Client);
        var promoted = Assert.Single(await catalog.ListAsync(), s => s.Id == id);
        Assert.Equal(("1.0.0", false), (promoted.Version, promoted.Experimental));
        // The catalog lists every version the targets publish, newest first (agents run them side by side).
        Assert.Equal(["1.0.0", "0.1.0"], promoted.PublishedVersions);
        // Read again unchanged, the entry is equal to what the catalog holds (nothing rewritten).
        Assert.Equal(promoted, Assert.Single(await CatalogSync.SyncOnceAsync(repo.Source, fixture.Client), s => s.Id == id));
    }

    [Fact]
    public async Task AStackTheSignedTargetsWithdraw_LeavesTheCatalog_AndIsListedWithdrawn_WhileStacksPublishedByHandStay()
    {
        using var repo = new SignedRepository();
        var (gone, stays) = ("wd-" + Guid.NewGuid().ToString("N")[..8], "keep-" + Guid.NewGuid().ToString("N")[..8]);
        repo.Publish(gone, "1.0.0", new StackProfile(Purpose: "to be withdrawn"));
        repo.Publish(stays, "1.0.0", new StackProfile(Purpose: "stays"));
        var catalog = fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);

        Assert.Empty((await CatalogSync.SyncAsync(repo.Source, fixture.Client)).Withdrawn);
        Assert.Contains(await catalog.ListAsync(), s => s.Id == gone);

        repo.Withdraw(gone);
        var (published, withdrawn) = await CatalogSync.SyncAsync(repo.Source, fixture.Client);
        Assert.Equal([gone], withdrawn);
        Assert.Equal([stays], published.Select(s => s.Id));
        var listed = await catalog.ListAsync();
        Assert.DoesNotContain(listed, s => s.Id == gone);
        Assert.Contains(listed, s => s.Id == stays);
        // The fixture's stacks were published by hand, not by a repository: a sync leaves them alone.
        Assert.Contains(listed, s => s.Id == "std-ipv4");
        var record = Assert.Single(await catalog.ListWithdrawnAsync(), w => w.Id == gone);
        Assert.Equal("1.0.0", record.Version);

        // Older targets of the same repository (a lagging silo, or old metadata shown to one) bring nothing back, and
        // another repository's sync withdraws nothing of this one's.
        var source = CatalogSync.SourceOf(repo.Source);
        Assert.Empty(await catalog.SyncAsync([.. published, new StackInfo(gone, "1.0.0", "ipv4", 0, 0, 0, 0, false, "to be withdrawn")], 1, source));
        Assert.DoesNotContain(await catalog.ListAsync(), s => s.Id == gone);
        Assert.Empty(await catalog.SyncAsync([], 1, "another repository"));
        Assert.Contains(await catalog.ListAsync(), s => s.Id == stays);

        // A later sync withdraws nothing more, and a republished id is no longer listed as withdrawn.
        Assert.Empty((await CatalogSync.SyncAsync(repo.Source, fixture.Client)).Withdrawn);
        repo.Publish(gone, "1.0.1", new StackProfile(Purpose: "fixed"));
        await CatalogSync.SyncAsync(repo.Source, fixture.Client);
        Assert.Contains(await catalog.ListAsync(), s => s.Id == gone && s.Version == "1.0.1");
        Assert.DoesNotContain(await catalog.ListWithdrawnAsync(), w => w.Id == gone);
    }

    /// <summary>
    /// An operator holds a stack to one of its signed versions on some hosts (a roll back, a staged start): the catalog
    /// refuses a version the signed targets do not publish and a hold that does not say who and why, and each host's
    /// desired state carries the holds that name it, and only those, until the hold is released.
    /// </summary>
    [Fact]
    public async Task AVersionHold_ChoosesAmongSignedVersions_AndReachesOnlyTheHostsItNames()
    {
        using var repo = new SignedRepository();
        var id = "held-" + Guid.NewGuid().ToString("N")[..8];
        repo.Publish(id, "1.0.0", new StackProfile(Purpose: "old"));
        repo.Publish(id, "1.1.0", new StackProfile(Purpose: "new"));
        await CatalogSync.SyncOnceAsync(repo.Source, fixture.Client);
        var catalog = fixture.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        var (canary, other) = ($"{id}-host-1", $"{id}-host-2");
        var now = DateTimeOffset.UtcNow;

        Assert.Contains($"stack '{id}' 2.0.0 is not published (the signed targets publish 1.1.0, 1.0.0)",
            await catalog.HoldVersionAsync(new VersionHold(id, "2.0.0", [], "operator 'test'", "roll back", now)), StringComparison.Ordinal);
        Assert.Equal("a hold says who sets it and why", await catalog.HoldVersionAsync(new VersionHold(id, "1.0.0", [], "", "", now)));
        Assert.Contains("is not in the catalog", await catalog.HoldVersionAsync(new VersionHold(id + "-x", "1.0.0", [], "operator 'test'", "why", now)), StringComparison.Ordinal);
        Assert.DoesNotContain(await catalog.ListHoldsAsync(), h => h.StackId == id);

        Assert.Null(await catalog.HoldVersionAsync(new VersionHold(id, "1.0.0", [canary], "operator 'test'", "1.1.0 regressed on the canary", now)));
        async Task<VersionHold?> HoldOn(string host) => (await fixture.Client.GetGrain<IHostGrain>(host).GetDesiredStateAsync()).Holds.SingleOrDefault(h => h.StackId == id);
        Assert.Equal(("1.0.0", "1.1.0 regressed on the canary"), (await HoldOn(canary))?.Version is { } v ? (v, (await HoldOn(canary))!.Reason) : default);
        Assert.Null(await HoldOn(other));

        Assert.Null(await catalog.HoldVersionAsync(new VersionHold(id, "", [], "operator 'test'", "fixed", now)));
        Assert.Null(await HoldOn(canary));
        Assert.DoesNotContain(await catalog.ListHoldsAsync(), h => h.StackId == id);
    }
}

/// <summary>A signed repository in a temporary folder (<see cref="SignedStackRepository"/>), and the source a silo's sync reads it from.</summary>
internal sealed class SignedRepository : IDisposable
{
    private readonly SignedStackRepository _repository = new();

    public SignedRepository() => Source = new CatalogSource(_repository.Path, _repository.Root, System.IO.Path.Combine(_repository.Folder, "silo-state"));

    public LocalFolderStore Store => _repository.Store;
    public Publisher Publisher => _repository.Publisher;
    public CatalogSource Source { get; }
    public SigningKey Snapshot => _repository.Snapshot;
    public SigningKey Timestamp => _repository.Timestamp;

    /// <summary>Publishes the swap-test plug-in as <paramref name="id"/> <paramref name="version"/> with <paramref name="profile"/>.</summary>
    public void Publish(string id, string version, StackProfile profile) => _repository.Publish(StackPlugins.SwapTest, id, version, profile);

    public void Withdraw(string id) => _repository.Withdraw(id);

    public void Dispose() => _repository.Dispose();
}
