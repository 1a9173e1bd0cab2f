using Fabric.Agent;
using Fabric.Agent.Stacks;
using Fabric.Repository;
using Fabric.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Repository.Tests;

/// <summary>An agent whose stacks come only from a signed repository.</summary>
public class AgentRepositoryTests
{
    [Fact]
    public void TheAgentLoadsVerifiedStacks_AndTheirBindingsWork()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.2.0"));
        using var agent = new Fabric.Agent.Agent(Config(repo), NullLogger.Instance);
        agent.Start();
        // Both published versions of swap-test side by side, each as its signed target names it.
        Assert.Equal(["std-ipv4@1.0.0", "swap-test@0.1.0", "swap-test@0.2.0"], agent.Switch.StackHost.Registered);
        var response = agent.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("peer", "127.0.0.1", null, "swap-test", 9)));
        Assert.True(response.Ok, response.Error);
        Assert.Equal("swap-test", agent.Switch.Paths["peer"].TransmitStack);
        Assert.Equal("swap-test@0.2.0", agent.Switch.Paths["peer"].TransmitKey);
        // Unpacked once, by digest, under the state folder.
        Assert.Equal(3, Directory.GetDirectories(Path.Combine(repo.Folder, "agent-state", "stacks")).Length);
    }

    [Fact]
    public void ATamperedPackage_CostsOnlyItself_ItIsNeverUnpacked_AndTheStatusSaysWhy()
    {
        using var repo = new TestRepository();
        var info = repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        var path = Path.Combine(repo.Store.Root, Publisher.PackagePath(info.Sha256));
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x40;
        File.WriteAllBytes(path, bytes);
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        // A package for a newer agent than this one.
        repo.Publish(StackPackage.Pack(Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.Fec))!, "fec", "2.0.0", new StackProfile(Purpose: "test"), minAgentVersion: "9.0.0"));
        using var agent = new Fabric.Agent.Agent(Config(repo), NullLogger.Instance);
        agent.Start();
        // The agent runs what verifies; the tampered package is never unpacked, and the status says why.
        Assert.Equal(["std-ipv4@1.0.0"], agent.Switch.StackHost.Registered);
        Assert.Single(Directory.GetDirectories(Path.Combine(repo.Folder, "agent-state", "stacks")));
        Assert.Contains("does not match its signed length and SHA-256", AgentConfig.Serialize(agent.Status()), StringComparison.Ordinal);
    }

    [Fact]
    public void APackageForANewerAgent_IsRefusedNamingTheVersion()
    {
        using var repo = new TestRepository();
        repo.Publish(StackPackage.Pack(Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.Fec))!, "fec", "2.0.0", new StackProfile(Purpose: "test"), minAgentVersion: "9.0.0"));
        var e = Assert.Throws<PackageException>(() => SignedStacks.Verify(Config(repo).Repository!, NullLogger.Instance));
        Assert.Contains("fec 2.0.0 needs agent 9.0.0 or newer; this agent is " + StackPackage.AgentVersion, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AStackWithdrawnFromTheSignedTargets_IsUnboundRefusedAndUnloaded_AndANewVersionComesBackWithoutARestart()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        using var agent = new Fabric.Agent.Agent(Config(repo) with { DrainMilliseconds = 100 }, NullLogger.Instance);
        agent.Start();
        Assert.True(agent.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("peer", "127.0.0.1", null, "swap-test", 9))).Ok);
        Assert.Equal("swap-test", agent.Switch.Paths["peer"].TransmitStack);

        // A forged withdrawal: targets without swap-test, signed by a key the root does not know (the store and the
        // snapshot and timestamp keys are the attacker's). Nothing changes, and the status says why.
        using var rogue = SigningKey.Generate();
        var timestampPath = Path.Combine(repo.Store.Root, Publisher.Timestamp);
        var genuine = File.ReadAllBytes(timestampPath);
        var head = repo.Publisher.Head();
        var forged = head.Targets with { Version = head.Targets.Version + 1, Targets = new(head.Targets.Targets.Where(t => t.Value.Id != "swap-test").ToDictionary(), StringComparer.Ordinal) };
        repo.Forge(SignedFile.Create(forged, [rogue]), forged.Version);
        agent.RefreshStacks();
        Assert.Equal("swap-test", agent.Switch.Paths["peer"].TransmitStack);
        Assert.Contains("swap-test@0.1.0", agent.Switch.StackHost.Registered);
        Assert.Empty(agent.Switch.StackHost.Withdrawn);
        Assert.Contains("\"lastError\"", AgentConfig.Serialize(agent.Status()), StringComparison.Ordinal);

        // The publisher withdraws it (the forged chain is replaced by a genuine one): the path falls back to std at the
        // next refresh, the stack is refused for new work, and it unloads once drained.
        File.WriteAllBytes(timestampPath, genuine);
        Assert.Equal(["swap-test/0.1.0"], repo.Publisher.Withdraw("swap-test", null, repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(7)));
        agent.RefreshStacks();
        Assert.Equal("std-ipv4", agent.Switch.Paths["peer"].TransmitStack);
        Assert.DoesNotContain("swap-test", agent.Switch.StackHost.UsableIds);
        Assert.Contains("no longer publish it", agent.Switch.StackHost.Withdrawn["swap-test@0.1.0"], StringComparison.Ordinal);
        var refused = agent.Handle(new ApiRequest("prepare-swap", Id: "peer", Stack: "swap-test"));
        Assert.False(refused.Ok);
        Assert.Contains("withdrawn", refused.Error, StringComparison.Ordinal);
        Eventually.True(() => !agent.Switch.StackHost.Entries().Any(e => e.Id == "swap-test"), TimeSpan.FromSeconds(10), "the withdrawn stack unloaded",
            () => string.Join("; ", agent.Switch.StackHost.Entries()) + " | " + string.Join("; ", agent.Switch.Events));
        Eventually.True(() =>
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            return agent.Switch.StackHost.UnloadingContexts == 0;
        }, TimeSpan.FromSeconds(10), "its load context collected", () => $"{agent.Switch.StackHost.UnloadingContexts} context(s) still alive");

        // A new version is published: registered at the next refresh, and usable, without a restart.
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.2.0"));
        agent.RefreshStacks();
        Assert.Contains("swap-test@0.2.0", agent.Switch.StackHost.Registered);
        var prepared = agent.Handle(new ApiRequest("prepare-swap", Id: "peer", Stack: "swap-test"));
        Assert.True(prepared.Ok, prepared.Error);

        // A newer version is registered beside the one running, which is still published: both are usable, the newer
        // one for new work.
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.3.0"));
        agent.RefreshStacks();
        Assert.Equal(["swap-test@0.2.0", "swap-test@0.3.0"], agent.Switch.StackHost.Registered.Where(k => StackKey.IdOf(k) == "swap-test"));
        Assert.Equal("swap-test@0.3.0", agent.Switch.StackHost.Resolve("swap-test"));
        Assert.DoesNotContain(agent.Switch.StackHost.Withdrawn.Keys, k => k != "swap-test@0.1.0");
        // Withdrawing one version withdraws it alone: the other runs on.
        repo.Publisher.Withdraw("swap-test", "0.2.0", repo.TargetsKey, repo.SnapshotKey, repo.TimestampKey, TimeSpan.FromDays(7));
        agent.RefreshStacks();
        Assert.Contains("no longer publish version 0.2.0 (they publish 0.3.0)", agent.Switch.StackHost.Withdrawn["swap-test@0.2.0"], StringComparison.Ordinal);
        Assert.Equal(["swap-test@0.3.0"], agent.Switch.StackHost.Registered.Where(k => StackKey.IdOf(k) == "swap-test"));
        // (The slot prepared above drains and closes like every slot of a withdrawn version.)
        Eventually.True(() => !agent.Switch.StackHost.Entries().Any(e => e.Withdrawn), TimeSpan.FromSeconds(10), "0.2.0 unloaded",
            () => string.Join("; ", agent.Switch.StackHost.Entries()) + " | " + string.Join("; ", agent.Switch.Events));
        Assert.True(agent.Handle(new ApiRequest("prepare-swap", Id: "peer", Stack: "swap-test")).Ok);
    }

    [Fact]
    public void APackageSignedAsOneStack_WhosePlugInDeclaresAnother_IsRefused_AndTheOthersRun()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.StdIPv4, "std-ipv4", "1.0.0"));
        // The swap-test plug-in published under fec's id: loaded as it declares itself, it would be a stack no one signed.
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "fec", "9.0.0"));
        using var agent = new Fabric.Agent.Agent(Config(repo), NullLogger.Instance);
        agent.Start();
        Assert.Equal(["std-ipv4@1.0.0"], agent.Switch.StackHost.Registered);
        agent.RefreshStacks();
        Assert.Equal(["std-ipv4@1.0.0"], agent.Switch.StackHost.Registered);
    }

    /// <summary>
    /// Someone who can write the agent's state folder swaps an unpacked plug-in's assembly for another stack's while the
    /// agent is down. At its next start the agent unpacks the signed package again instead of trusting what it unpacked
    /// before, and runs the signed stack (here the alteration would have registered std-ipv4 code as swap-test).
    /// </summary>
    [Fact]
    public void APlugInAlteredOnDiskBetweenStarts_IsUnpackedAgain_AndTheSignedStackRuns()
    {
        using var repo = new TestRepository();
        repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        string entry;
        using (var first = new Fabric.Agent.Agent(Config(repo), NullLogger.Instance))
        {
            first.Start();
            entry = first.Switch.StackHost.Entries().Single().AssemblyPath;
        }
        File.Copy(StackPlugins.PathOf(StackPlugins.StdIPv4), entry, overwrite: true);
        var logs = new ListLogger();
        using var agent = new Fabric.Agent.Agent(Config(repo), logs);
        agent.Start();
        Assert.Equal(["swap-test@0.1.0"], agent.Switch.StackHost.Registered);
        Assert.Equal("swap-test", agent.Switch.StackHost.Acquire("swap-test").Description.Id);
        Assert.Contains(logs.Lines, l => l.Contains("unpacked again from the verified package", StringComparison.Ordinal) && l.Contains("does not match the signed package", StringComparison.Ordinal));
    }

    /// <summary>Keeps what the agent logs, to see what it said.</summary>
    private sealed class ListLogger : ILogger
    {
        public System.Collections.Concurrent.ConcurrentQueue<string> Lines { get; } = new();

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Lines.Enqueue(formatter(state, exception));
    }

    private static AgentConfig Config(TestRepository repo) =>
        new("host-x", new UnderlayConfig("127.0.0.1", null, Port: 0), [], "unused",
            Repository: new RepositoryConfig(repo.Store.Root, repo.PinnedRoot, Path.Combine(repo.Folder, "agent-state")));
}
