using System.Text.Json;
using Fabric.Testing;

namespace Fabric.EndToEnd.Tests;

/// <summary>Hitless swaps between two real agents while the VMs' kernel TCP moves half a gigabyte.</summary>
public class SwapEndToEndTests
{
    [Fact]
    public void TwentySwapsDuringA500MegabyteTransfer_LoseNothing()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4");
        Assert.Equal(0, topology.Ping("vm1", "10.100.0.3", 1).Code);
        var swaps = new List<string>();
        var swapper = new Thread(() =>
        {
            Thread.Sleep(300);
            for (var i = 0; i < 20; i++)
            {
                var stack = i % 2 == 0 ? "swap-test" : "std-ipv4";
                var (code, output) = Swap(topology, stack);
                lock (swaps)
                {
                    swaps.Add($"{code}: {output.Trim()}");
                }
                Thread.Sleep(100);
            }
        }) { IsBackground = true };
        swapper.Start();
        var result = TcpTransfer.Run(topology.Vm("vm1").Namespace, topology.Vm("vm3").Namespace, "10.100.0.3", 500L * 1024 * 1024, TimeSpan.FromMinutes(5));
        swapper.Join(TimeSpan.FromMinutes(1));

        Assert.Equal(result.SentSha256, result.ReceivedSha256);
        Assert.Equal(20, swaps.Count);
        Assert.All(swaps, s => Assert.StartsWith("0: swapped", s, StringComparison.Ordinal));
        foreach (var host in new[] { "host-a", "host-b" })
        {
            var path = topology.Status(host).GetProperty("paths")[0];
            Assert.Equal(0, path.GetProperty("sequenceGaps").GetInt64());
            Assert.Equal("std-ipv4", path.GetProperty("stack").GetString());
        }
        // After the drain time only the last stack is bound (plus the std fallback slot): old slots closed, swap-test unloaded.
        Eventually.True(() => BoundStacks(topology, "host-a") == "std-ipv4:2" && BoundStacks(topology, "host-b") == "std-ipv4:2",
            TimeSpan.FromSeconds(10), "draining the old slots", () => $"a: {BoundStacks(topology, "host-a")}; b: {BoundStacks(topology, "host-b")}");
        Eventually.True(() => !Loaded(topology, "host-a", "swap-test"), TimeSpan.FromSeconds(10), "unloading swap-test", () => "still loaded");
        TestContext.Current.TestOutputHelper?.WriteLine($"500 MiB with 20 swaps: {result.MegabitsPerSecond:0} Mbit/s; {string.Join(" | ", swaps)}");
    }

    private static (int Code, string Output) Swap(OverlayTopology topology, string stack)
    {
        var (code, stdout, stderr) = Privileged.TryRun(Path.Combine(AppContext.BaseDirectory, "fabric-agent"), "swap", topology.SocketA, "host-b", topology.SocketB, "host-a", stack);
        return (code, stdout + stderr);
    }

    private static string BoundStacks(OverlayTopology topology, string host) =>
        string.Join(",", topology.Status(host).GetProperty("stacks").EnumerateArray()
            .Where(s => s.GetProperty("bindings").GetInt32() > 0)
            .Select(s => $"{s.GetProperty("id").GetString()}:{s.GetProperty("bindings").GetInt32()}"));

    private static bool Loaded(OverlayTopology topology, string host, string stack) =>
        topology.Status(host).GetProperty("stacks").EnumerateArray().Any(s => s.GetProperty("id").GetString() == stack && s.GetProperty("loaded").GetBoolean());
}
