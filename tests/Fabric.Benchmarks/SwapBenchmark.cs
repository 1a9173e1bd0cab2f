using System.Diagnostics;
using Fabric.Agent;
using Fabric.Agent.Stacks;
using Fabric.Hal;
using Fabric.Repository;
using Fabric.Testing;
using Fabric.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Benchmarks;

/// <summary>
/// Hitless swaps measured: two real agents over a real UDP underlay on loopback, VMs on in-memory ports, a paced
/// stream of numbered frames from vm1 to vm3, and 100 swaps between std-ipv4 and swap-test. For every swap: the
/// longest gap between deliveries at the receiving VM around the swap, and frames lost; the same figure for quiet
/// windows of the same run is the baseline. Then the cost of bringing a stack in (verify + unpack + load from a
/// signed repository) and of unloading it. No root needed.
/// </summary>
internal static class SwapBenchmark
{
    private static readonly MacAddress Mac1 = new(0x02_00_00_00_01_01);
    private static readonly MacAddress Mac3 = new(0x02_00_00_00_01_03);

    public static int Run(int swaps, double packetsPerSecond)
    {
        var vmEnds = new Dictionary<string, ChannelPort>();
        IFramePort Open(string device)
        {
            var (agentEnd, vmEnd) = ChannelPort.CreatePair(device, device + "-vm", capacity: 65536);
            vmEnds[device] = vmEnd;
            return agentEnd;
        }
        string[] stacks = [StackPlugins.PathOf(StackPlugins.StdIPv4), StackPlugins.PathOf(StackPlugins.SwapTest)];
        using var a = new Fabric.Agent.Agent(new AgentConfig("host-a", new UnderlayConfig("127.0.0.1", null, Port: 0), stacks, "unused", DrainMilliseconds: 200), NullLogger.Instance, Open);
        using var b = new Fabric.Agent.Agent(new AgentConfig("host-b", new UnderlayConfig("127.0.0.1", null, Port: 0), stacks, "unused", DrainMilliseconds: 200), NullLogger.Instance, Open);
        a.Start();
        b.Start();
        Check(a.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-b", "127.0.0.1", null, "std-ipv4", b.Switch.UnderlayEndpoints.IPv4!.Port))));
        Check(b.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-a", "127.0.0.1", null, "std-ipv4", a.Switch.UnderlayEndpoints.IPv4!.Port))));
        Check(a.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm1", "tap1", 100, Mac1.ToString()))));
        Check(b.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm3", "tap3", 100, Mac3.ToString()))));
        Check(a.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac3.ToString(), "host-b"))));
        // The receiving host must know where the sender lives: a path delivers only frames of VMs its table places there.
        Check(b.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac1.ToString(), "host-a"))));

        var capacity = (int)(packetsPerSecond * ((swaps * 0.08) + 3));
        var sentAt = new long[capacity];
        var arrivedAt = new long[capacity];
        var sent = 0;
        using var stop = new CancellationTokenSource();
        var receiver = new Thread(() =>
        {
            var buffer = new byte[2048];
            while (!stop.IsCancellationRequested)
            {
                if (vmEnds["tap3"].Receive(buffer, out _, TimeSpan.FromMilliseconds(20)) == PortResult.Ok)
                {
                    var sequence = BitConverter.ToInt32(buffer, 14);
                    if ((uint)sequence < (uint)capacity)
                    {
                        arrivedAt[sequence] = Stopwatch.GetTimestamp();
                    }
                }
            }
        }) { IsBackground = true, Priority = ThreadPriority.AboveNormal };
        var sender = new Thread(() =>
        {
            var frame = new byte[14 + 500];
            // IEEE's local experimental EtherType: the payload is a frame number, not an IP packet (the switch drops IPv4
            // frames that do not parse, as it must).
            EthernetWriter.Write(frame, Mac3, Mac1, 0x88B5);
            var start = Stopwatch.GetTimestamp();
            while (!stop.IsCancellationRequested && sent < capacity)
            {
                if ((Stopwatch.GetTimestamp() - start) * packetsPerSecond / Stopwatch.Frequency < sent)
                {
                    Thread.SpinWait(50);
                    continue;
                }
                BitConverter.TryWriteBytes(frame.AsSpan(14), sent);
                sentAt[sent] = Stopwatch.GetTimestamp();
                vmEnds["tap1"].Transmit(frame);
                sent++;
            }
        }) { IsBackground = true, Priority = ThreadPriority.AboveNormal };
        receiver.Start();
        sender.Start();
        Thread.Sleep(500);

        var windows = new List<(long Start, long End, bool Swap)>();
        var swapDurations = new List<double>();
        for (var i = 0; i < swaps; i++)
        {
            var quiet = Stopwatch.GetTimestamp();
            Thread.Sleep(20);
            windows.Add((quiet, Stopwatch.GetTimestamp(), false));
            var stack = i % 2 == 0 ? "swap-test" : "std-ipv4";
            var begin = Stopwatch.GetTimestamp();
            var slot = Slot(Check(a.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: stack))));
            Check(b.Handle(new ApiRequest("prepare-swap", Id: "host-a", Stack: stack, Slot: slot)));
            Check(a.Handle(new ApiRequest("commit-swap", Id: "host-b", Slot: slot)));
            Check(b.Handle(new ApiRequest("commit-swap", Id: "host-a", Slot: slot)));
            var committed = Stopwatch.GetTimestamp();
            swapDurations.Add((committed - begin) * 1000.0 / Stopwatch.Frequency);
            Thread.Sleep(20);
            windows.Add((begin, Stopwatch.GetTimestamp(), true));
        }
        Thread.Sleep(200);
        stop.Cancel();
        sender.Join();
        receiver.Join();

        var swapGaps = new List<double>();
        var quietGaps = new List<double>();
        var swapLost = new List<int>();
        foreach (var (from, to, isSwap) in windows)
        {
            var times = new List<long>();
            var lost = 0;
            for (var i = 0; i < sent; i++)
            {
                if (sentAt[i] >= from && sentAt[i] <= to)
                {
                    if (arrivedAt[i] == 0)
                    {
                        lost++;
                    }
                    else
                    {
                        times.Add(arrivedAt[i]);
                    }
                }
            }
            times.Sort();
            var gap = times.Zip(times.Skip(1), (x, y) => (y - x) * 1e6 / Stopwatch.Frequency).DefaultIfEmpty(0).Max();
            (isSwap ? swapGaps : quietGaps).Add(gap);
            if (isSwap)
            {
                swapLost.Add(lost);
            }
        }
        var totalLost = Enumerable.Range(0, sent).Count(i => arrivedAt[i] == 0 && sentAt[i] < windows[^1].End);
        Console.WriteLine($"{swaps} swaps while vm1 sends {packetsPerSecond:0} frames/s to vm3 (two agents, UDP underlay on loopback, in-memory VM ports)");
        Console.WriteLine($"{"",-36} {"p50",10} {"p99",10} {"max",10}");
        Console.WriteLine($"{"longest delivery gap, swap windows",-36} {P(swapGaps, 50),7:0} µs {P(swapGaps, 99),7:0} µs {swapGaps.Max(),7:0} µs");
        Console.WriteLine($"{"longest delivery gap, quiet windows",-36} {P(quietGaps, 50),7:0} µs {P(quietGaps, 99),7:0} µs {quietGaps.Max(),7:0} µs");
        Console.WriteLine($"{"frames lost per swap",-36} {P(swapLost.Select(x => (double)x).ToList(), 50),10:0} {P(swapLost.Select(x => (double)x).ToList(), 99),10:0} {swapLost.Max(),10}");
        Console.WriteLine($"{"prepare+commit on both ends",-36} {P(swapDurations, 50),7:0.00} ms {P(swapDurations, 99),7:0.00} ms {swapDurations.Max(),7:0.00} ms");
        Console.WriteLine($"frames sent {sent}, lost in the whole run {totalLost}; path sequence gaps at the receiver {b.Switch.Paths["host-a"].SequenceGaps}");
        Console.WriteLine($"swap gap max / quiet gap max: {swapGaps.Max() / Math.Max(1, quietGaps.Max()):0.00}×  (Google Snap's published upgrade blackout: 200–250 ms)");
        LoadAndUnload();
        return 0;
    }

    /// <summary>Bringing a stack in from a signed repository (verify, fetch, unpack, load) and unloading it, cold each time.</summary>
    private static void LoadAndUnload()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-swapbench-").FullName;
        try
        {
            using var repository = new SignedStackRepository(folder);
            repository.Publish(StackPlugins.SwapTest, "swap-test", "0.1.0", new StackProfile());
            var (store, pinned) = (repository.Store, repository.Root);
            var loads = new List<double>();
            var unloads = new List<double>();
            for (var i = 0; i < 20; i++)
            {
                var watch = Stopwatch.StartNew();
                var entry = SignedStacks.Install(new RepositoryConfig(store.Root, pinned, Path.Combine(folder, $"state{i}")), NullLogger.Instance).Single();
                var host = new StackHost(TimeSpan.Zero);
                host.Register(entry);
                loads.Add(watch.Elapsed.TotalMilliseconds);
                watch.Restart();
                host.Collect();
                for (var round = 0; round < 50 && host.UnloadingContexts > 0; round++)
                {
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                }
                unloads.Add(watch.Elapsed.TotalMilliseconds);
            }
            Console.WriteLine($"load (verify metadata + fetch + check digest + unpack + load context), cold: p50 {P(loads, 50):0.00} ms, max {loads.Max():0.00} ms");
            Console.WriteLine($"unload (context unloaded and collected): p50 {P(unloads, 50):0.00} ms, max {unloads.Max():0.00} ms");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static int Slot(object? result) => (int)result!.GetType().GetProperty("Slot")!.GetValue(result)!;

    private static double P(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted[Math.Min(sorted.Count - 1, (int)(sorted.Count * p / 100))];
    }

    private static object? Check(ApiResponse response) => response.Ok ? response.Result : throw new InvalidOperationException(response.Error);
}
