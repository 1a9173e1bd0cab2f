using Fabric.Agent;
using Fabric.Repository;
using Fabric.Testing;
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
        Assert.Equal(["std-ipv4", "swap-test"], agent.Switch.StackHost.Registered.Order(StringComparer.Ordinal));
        var response = agent.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("peer", "127.0.0.1", null, "swap-test", 9)));
        Assert.True(response.Ok, response.Error);
        Assert.Equal("swap-test", agent.Switch.Paths["peer"].TransmitStack);
        // Unpacked once, by digest, under the state folder.
        Assert.Equal(2, Directory.GetDirectories(Path.Combine(repo.Folder, "agent-state", "stacks")).Length);
    }

    [Fact]
    public void ATamperedPackage_StopsTheAgentNamingIt_AndNothingIsUnpacked()
    {
        using var repo = new TestRepository();
        var info = repo.Publish(TestRepository.Package(StackPlugins.SwapTest, "swap-test", "0.1.0"));
        var path = Path.Combine(repo.Store.Root, Publisher.PackagePath(info.Sha256));
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x40;
        File.WriteAllBytes(path, bytes);
        using var agent = new Fabric.Agent.Agent(Config(repo), NullLogger.Instance);
        var e = Assert.Throws<TrustException>(agent.Start);
        Assert.Contains("swap-test/0.1.0 does not match its signed length and SHA-256", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(repo.Folder, "agent-state", "stacks")));
    }

    private static AgentConfig Config(TestRepository repo) =>
        new("host-x", new UnderlayConfig("127.0.0.1", null, Port: 0), [], "unused",
            Repository: new RepositoryConfig(repo.Store.Root, repo.PinnedRoot, Path.Combine(repo.Folder, "agent-state")));
}
