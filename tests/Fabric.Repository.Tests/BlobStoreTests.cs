using Fabric.Agent;
using Fabric.Agent.Stacks;
using Fabric.Testing;
using Microsoft.Extensions.Logging.Abstractions;

[assembly: AssemblyFixture(typeof(Azurite))]

namespace Fabric.Repository.Tests;

/// <summary>The repository over a real Azurite blob service and over a local folder: the same contract, the same races.</summary>
public class BlobStoreTests(Azurite azurite)
{
    public static TheoryData<string> Stores => ["folder", "blob"];

    private IRepositoryStore Open(string kind, string folder) => kind == "blob"
        ? BlobStore.Connect(azurite.ConnectionString, Azurite.NewContainer())
        : new LocalFolderStore(Path.Combine(folder, "second-repo"));

    [Theory]
    [MemberData(nameof(Stores))]
    public void ConditionalWrites_CreateOnlyAndReplaceOnlyWhatWasRead(string kind)
    {
        var folder = Directory.CreateTempSubdirectory("fabric-store-").FullName;
        try
        {
            var store = Open(kind, folder);
            Assert.Null(store.Get("a/x.json"));
            Assert.True(store.TryWrite("a/x.json", [1], ifMatch: null));
            Assert.False(store.TryWrite("a/x.json", [2], ifMatch: null));
            var first = store.Get("a/x.json")!;
            Assert.Equal([1], first.Bytes);
            Assert.True(store.TryWrite("a/x.json", [3], first.ETag));
            // The tag read before the last write no longer matches: the stale writer loses and nothing changes.
            Assert.False(store.TryWrite("a/x.json", [4], first.ETag));
            Assert.Equal([3], store.Read("a/x.json"));
            store.Write("a/y.json", [5]);
            store.Write("b/z.json", [6]);
            Assert.Equal(["a/x.json", "a/y.json"], store.List("a"));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>A bounded read returns the file when it fits and no more than one byte beyond the limit when it does not.</summary>
    [Theory]
    [MemberData(nameof(Stores))]
    public void APrefixRead_StopsOneByteBeyondItsLimit(string kind)
    {
        var folder = Directory.CreateTempSubdirectory("fabric-store-").FullName;
        try
        {
            var store = Open(kind, folder);
            var content = Enumerable.Range(0, 100).Select(i => (byte)i).ToArray();
            store.Write("p/file", content);
            store.Write("p/empty", []);
            Assert.Equal(content[..11], store.ReadPrefix("p/file", 10)!);
            Assert.Equal(content, store.ReadPrefix("p/file", 100)!);
            Assert.Equal(content, store.ReadPrefix("p/file", 1000)!);
            Assert.Equal([], store.ReadPrefix("p/empty", 10)!);
            Assert.Null(store.ReadPrefix("p/missing", 10));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Theory]
    [MemberData(nameof(Stores))]
    public async Task ConcurrentPublishers_AllLand_AndReadersNeverSeeAnInconsistentSet(string kind)
    {
        using var keys = new TestRepository();
        var store = Open(kind, keys.Folder);
        var publisher = new Publisher(store);
        publisher.Initialize(keys.RootKeys, 1, keys.TargetsKey, keys.SnapshotKey, keys.TimestampKey, TimeSpan.FromDays(365), TimeSpan.FromDays(7));
        var pinned = Path.Combine(keys.Folder, "pinned-blob-root.json");
        File.WriteAllBytes(pinned, store.Read(Publisher.Root)!);
        var packages = Enumerable.Range(1, 6).Select(i => TestRepository.Package(StackPlugins.SwapTest, "swap-test", $"0.{i}.0")).ToList();

        using var stop = new CancellationTokenSource();
        var reader = Task.Run(() =>
        {
            // Verifies the whole chain again and again while the publishers race; any mix would throw here.
            var client = new TrustClient(store, Path.Combine(keys.Folder, "reader"), pinned);
            var seen = new List<int>();
            while (!stop.IsCancellationRequested)
            {
                seen.Add(client.Refresh().Version);
            }
            return seen;
        }, TestContext.Current.CancellationToken);
        using var start = new Barrier(packages.Count);
        var publishers = packages.Select(p => Task.Run(() =>
        {
            start.SignalAndWait(TestContext.Current.CancellationToken);
            new Publisher(store).Publish(p, keys.TargetsKey, keys.SnapshotKey, keys.TimestampKey, TimeSpan.FromDays(7));
        }, TestContext.Current.CancellationToken)).ToArray();
        await Task.WhenAll(publishers);
        await stop.CancelAsync();
        var versions = await reader;

        var head = publisher.Head();
        Assert.Equal(Enumerable.Range(1, 6).Select(i => $"swap-test/0.{i}.0"), head.Targets.Targets.Keys);
        Assert.Equal(1 + packages.Count, head.Targets.Version);
        Assert.NotEmpty(versions);
        Assert.Equal(versions.Order(), versions);
        var client = new TrustClient(store, Path.Combine(keys.Folder, "final"), pinned);
        client.Refresh();
        Assert.All(head.Targets.Targets.Keys, name => client.FetchPackage(name));
    }

    [Fact]
    public void TheAgent_InstallsFromBlobStorage_CachesByDigest_AndKeepsItsStacksWhenStorageIsUnreachable()
    {
        using var keys = new TestRepository();
        var container = Azurite.NewContainer();
        var store = BlobStore.Connect(azurite.ConnectionString, container);
        var publisher = new Publisher(store);
        publisher.Initialize(keys.RootKeys, 1, keys.TargetsKey, keys.SnapshotKey, keys.TimestampKey, TimeSpan.FromDays(365), TimeSpan.FromDays(7));
        publisher.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"), keys.TargetsKey, keys.SnapshotKey, keys.TimestampKey, TimeSpan.FromDays(7));
        publisher.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"), keys.TargetsKey, keys.SnapshotKey, keys.TimestampKey, TimeSpan.FromDays(7));
        var pinned = Path.Combine(keys.Folder, "pinned-blob-root.json");
        File.WriteAllBytes(pinned, store.Read(Publisher.Root)!);
        var config = new RepositoryConfig(RepositoryStores.BlobPrefix + container, pinned, Path.Combine(keys.Folder, "agent-state"));

        var online = SignedStacks.Install(config, NullLogger.Instance, Environment(azurite.ConnectionString));
        Assert.Equal(2, online.Count);
        Assert.Equal(2, Directory.GetFiles(Path.Combine(config.StateDirectory, "cache"), "*.fspk").Length);

        // Storage gone: the same stacks, from the cache, after what this host verified last.
        var offline = SignedStacks.Install(config, NullLogger.Instance, Environment(Azurite.UnreachableConnectionString));
        Assert.Equal(online, offline);
        using var agent = new Fabric.Agent.Agent(new AgentConfig("host-x", new UnderlayConfig("127.0.0.1", null, Port: 0), [.. offline], "unused"), NullLogger.Instance);
        agent.Start();
        Assert.Equal(["std-ipv4", "swap-test"], agent.Switch.StackHost.UsableIds);

        // A host that never verified anything has nothing to fall back on, and says so.
        var fresh = config with { StateDirectory = Path.Combine(keys.Folder, "fresh-state") };
        var e = Assert.Throws<TrustException>(() => SignedStacks.Install(fresh, NullLogger.Instance, Environment(Azurite.UnreachableConnectionString)));
        Assert.Contains("cannot be reached and this host has verified nothing before", e.Message, StringComparison.Ordinal);
        Assert.Contains("could not be reached", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnreachableStorage_IsAClearError_AndAMissingConnectionStringIsNamed()
    {
        var store = BlobStore.Connect(Azurite.UnreachableConnectionString, "stacks");
        var e = Assert.Throws<RepositoryUnavailableException>(() => store.Get(Publisher.Timestamp));
        Assert.Contains("timestamp.json: blob container 'stacks' at http://127.0.0.1:", e.Message, StringComparison.Ordinal);
        Assert.Contains("could not be reached", e.Message, StringComparison.Ordinal);
        Assert.Contains("FABRIC_BLOB_CONNECTION_STRING", Assert.Throws<RepositoryUnavailableException>(() => RepositoryStores.Open("blob:stacks", _ => null)).Message, StringComparison.Ordinal);
        Assert.Contains("lower-case letters", Assert.Throws<RepositoryUnavailableException>(() => RepositoryStores.Open("blob:Stacks_1", _ => "x")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TheCli_WorksAgainstBlobStorage_FromInitToVerify()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-repo-cli-").FullName;
        try
        {
            var cli = Processes.Built("repository/Fabric.Repository.Cli", "fabric-repo");
            var env = new Dictionary<string, string> { [BlobStore.ConnectionVariable] = azurite.ConnectionString };
            var repo = RepositoryStores.BlobPrefix + Azurite.NewContainer();
            string Run(params string[] args)
            {
                var (code, stdout, stderr) = Processes.Run(cli, args, environment: env);
                Assert.True(code == 0, $"fabric-repo {string.Join(' ', args)}: {stderr}");
                return stdout;
            }
            string Key(string name) => Path.Combine(folder, name + ".key");
            foreach (var role in new[] { "root", "targets", "snapshot", "timestamp" })
            {
                Run("keygen", "--out", Key(role));
            }
            var roles = new[] { "--targets-key", Key("targets"), "--snapshot-key", Key("snapshot"), "--timestamp-key", Key("timestamp") };
            var pin = Path.Combine(folder, "pinned-root.json");
            Run(["init", "--repo", repo, "--root-key", Key("root"), .. roles, "--pin-out", pin]);
            Run("pack", "--from", Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.StdIPv4))!, "--id", "std-ipv4", "--version", "1.0.0", "--out", Path.Combine(folder, "std.fspk"));
            Assert.Contains("published std-ipv4 1.0.0", Run(["publish", "--repo", repo, "--package", Path.Combine(folder, "std.fspk"), .. roles]), StringComparison.Ordinal);
            Assert.Contains("std-ipv4/1.0.0", Run("list", "--repo", repo), StringComparison.Ordinal);
            // Published for trial: the signed manifest says so, and the listing shows it.
            Run("pack", "--from", Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.StdIPv4))!, "--id", "trial", "--version", "0.1.0", "--experimental", "yes",
                "--out", Path.Combine(folder, "trial.fspk"));
            Run(["publish", "--repo", repo, "--package", Path.Combine(folder, "trial.fspk"), .. roles]);
            var listed = Run("list", "--repo", repo).Split('\n');
            Assert.Contains("[experimental]", Assert.Single(listed, l => l.StartsWith("trial/0.1.0", StringComparison.Ordinal)), StringComparison.Ordinal);
            Assert.DoesNotContain("[experimental]", Assert.Single(listed, l => l.StartsWith("std-ipv4/1.0.0", StringComparison.Ordinal)), StringComparison.Ordinal);
            Assert.Contains("ok std-ipv4/1.0.0", Run("verify", "--repo", repo, "--root", pin), StringComparison.Ordinal);
            // Without the connection string the CLI says what it needs; with storage gone it says it cannot reach it.
            var missing = Processes.Run(cli, ["list", "--repo", repo]);
            Assert.Equal(1, missing.Code);
            Assert.Contains(BlobStore.ConnectionVariable, missing.Stderr, StringComparison.Ordinal);
            var gone = Processes.Run(cli, ["list", "--repo", repo], environment: new Dictionary<string, string> { [BlobStore.ConnectionVariable] = Azurite.UnreachableConnectionString });
            Assert.Equal(1, gone.Code);
            Assert.Contains("could not be reached", gone.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// A storage endpoint that cuts every blob's body short (a connection dropped mid-transfer, a proxy that gives up, a
    /// hostile endpoint): after the client's retries, a read is the store's clear error naming the file and where, as an
    /// unreachable one is — never a raw I/O exception that escapes what the agent and the CLI handle.
    /// </summary>
    [Fact]
    public async Task ABodyCutShort_IsTheStoresClearError()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        using var stop = new CancellationTokenSource();
        var served = 0;
        var server = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var client = await listener.AcceptTcpClientAsync(stop.Token);
                await CutShortAsync(client);
            }
        }, stop.Token);
        async Task CutShortAsync(System.Net.Sockets.TcpClient client)
        {
            try
            {
                var stream = client.GetStream();
                var request = new List<byte>();
                var one = new byte[1];
                while (!(request.Count >= 4 && request[^4] == '\r' && request[^3] == '\n' && request[^2] == '\r' && request[^1] == '\n')
                    && await stream.ReadAsync(one, stop.Token) == 1)
                {
                    request.Add(one[0]);
                }
                // A thousand bytes promised, ten sent, and the connection closed.
                var head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/octet-stream\r\nETag: \"0x8D\"\r\n"
                    + "Last-Modified: Wed, 02 Dec 2026 00:00:00 GMT\r\nx-ms-blob-type: BlockBlob\r\nx-ms-version: 2026-06-06\r\nAccept-Ranges: bytes\r\n\r\n";
                await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes(head + "0123456789"), stop.Token);
                Interlocked.Increment(ref served);
            }
            catch (IOException)
            {
                // The client gave up on this connection first: the next one is served the same way.
            }
        }
        try
        {
            var elsewhere = Azurite.UnreachableConnectionString;
            var connection = elsewhere.Replace(elsewhere.Split(';').Single(p => p.StartsWith("BlobEndpoint=", StringComparison.Ordinal)),
                $"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1", StringComparison.Ordinal);
            var store = BlobStore.Connect(connection, "stacks");
            foreach (var read in new Func<object?>[] { () => store.Get(Publisher.Timestamp), () => store.ReadPrefix(Publisher.Timestamp, 100) })
            {
                var e = Assert.Throws<RepositoryUnavailableException>(read);
                Assert.Contains("timestamp.json: blob container 'stacks' at http://127.0.0.1:", e.Message, StringComparison.Ordinal);
                Assert.Contains("ended prematurely", e.Message, StringComparison.Ordinal);
            }
            Assert.True(Volatile.Read(ref served) >= 2);
        }
        finally
        {
            await stop.CancelAsync();
            listener.Stop();
            try
            {
                await server;
            }
            catch (Exception e) when (e is OperationCanceledException or System.Net.Sockets.SocketException or ObjectDisposedException)
            {
                // Stopped while it waited for a connection.
            }
        }
    }

    private static Func<string, string?> Environment(string connectionString) => name => name == BlobStore.ConnectionVariable ? connectionString : null;
}
