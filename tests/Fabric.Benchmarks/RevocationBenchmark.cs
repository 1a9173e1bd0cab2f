using System.Diagnostics;
using Fabric.Agent;
using Fabric.Hal;
using Fabric.Repository;
using Fabric.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Benchmarks;

/// <summary>
/// How long a withdrawn stack keeps running: a signed repository in a folder, two real agents on a loopback underlay
/// installing from it (reading it every <c>refreshSeconds</c>), their path carried by swap-test. Each round publishes a
/// new swap-test version, starts a fresh pair of agents on it, withdraws it from the signed targets and times until the
/// last of the two agents unloaded it (its load context released, the path on std-ipv4). Half the rounds wait for the
/// agents' own repository read; the other half read it at once after the withdrawal (the baseline: what is left without
/// the refresh period). The drain time is the agents' default, 2 s: a withdrawn version's slots drain for it, then the
/// idle stack waits as long again before it unloads.
/// </summary>
internal static class RevocationBenchmark
{
    private const int RefreshSeconds = 5;
    private const int Rounds = 3;

    public static async Task<int> RunAsync()
    {
        using var repository = new SignedStackRepository();
        repository.Publish(StackPlugins.StdIPv4, "std-ipv4", "1.0.0", new StackProfile(16));
        Console.WriteLine($"Revocation benchmark: two agents reading a signed repository every {RefreshSeconds} s, their path on swap-test, drain 2 s");
        var (periodic, direct) = (new List<double>(), new List<double>());
        for (var round = 0; round < 2 * Rounds; round++)
        {
            var version = $"1.0.{round}";
            repository.Publish(StackPlugins.SwapTest, "swap-test", version, new StackProfile(16));
            var state = Path.Combine(repository.Folder, $"round{round}");
            AgentConfig Config(string host) => new(host, new UnderlayConfig("127.0.0.1", null, Port: 0), [], "unused",
                StateDirectory: Path.Combine(state, host), Repository: new RepositoryConfig(repository.Path, repository.Root, Path.Combine(state, host + "-stacks"), RefreshSeconds));
            using var a = new Agent.Agent(Config("host-a"), NullLogger.Instance, device => ChannelPort.CreatePair(device, device + "-vm").Item1);
            using var b = new Agent.Agent(Config("host-b"), NullLogger.Instance, device => ChannelPort.CreatePair(device, device + "-vm").Item1);
            a.Start();
            b.Start();
            RolloutBenchmark.Check(a.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-b", "127.0.0.1", null, "swap-test", b.Switch.UnderlayEndpoints.IPv4!.Port))));
            RolloutBenchmark.Check(b.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-a", "127.0.0.1", null, "swap-test", a.Switch.UnderlayEndpoints.IPv4!.Port))));
            bool Running(Agent.Agent agent) => agent.Switch.StackHost.Entries().Any(e => e.Id == "swap-test" && e.Loaded);
            await RolloutBenchmark.Until(() => Running(a) && Running(b), TimeSpan.FromSeconds(30), $"swap-test {version} loaded on both agents");

            var waitForRefresh = round % 2 == 0;
            var clock = Stopwatch.StartNew();
            repository.Withdraw("swap-test", version);
            if (!waitForRefresh)
            {
                a.RefreshStacks();
                b.RefreshStacks();
            }
            await RolloutBenchmark.Until(() => !Running(a) && !Running(b), TimeSpan.FromSeconds(RefreshSeconds + 60), $"swap-test {version} unloaded on both agents",
                () => string.Join("; ", new[] { a, b }.SelectMany(x => x.Switch.StackHost.Entries()).Select(e => $"{e.Id}@{e.Version} loaded {e.Loaded} bindings {e.Bindings} withdrawn {e.Withdrawn}")));
            (waitForRefresh ? periodic : direct).Add(clock.Elapsed.TotalSeconds);
        }
        static string Figures(List<double> seconds) => $"{seconds.Average():0.00} s (max {seconds.Max():0.00}) over {seconds.Count} withdrawals";
        Console.WriteLine($"  withdrawal -> last unload, agents' own reads:    {Figures(periodic)}");
        Console.WriteLine($"  baseline, read at once after the withdrawal:     {Figures(direct)}");
        Console.WriteLine($"  bound: refreshSeconds ({RefreshSeconds} s; 60 s by default) + twice the drain (2 s: the slots drain, then the idle stack waits as long) + housekeeping ticks (0.25 s);");
        Console.WriteLine("  each round withdraws just after its agents started, so their first read is a whole period away: the worst case");
        return 0;
    }
}
