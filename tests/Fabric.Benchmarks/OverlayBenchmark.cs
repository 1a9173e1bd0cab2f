using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Fabric.Testing;

namespace Fabric.Benchmarks;

/// <summary>
/// The dataplane side by side, in one run: a direct veth between two namespaces (no overlay), Fabric std-ipv4 between
/// VMs on two hosts (two fabric-agent processes, hosts joined by one veth underlay), and a wireguard-go tunnel between
/// the same two host namespaces over the same underlay. TCP throughput (iperf3, 10 s, 1, 4 and 16 streams), UDP 64-byte
/// round trip p50/p99 (sockperf), and the CPU of the forwarding processes. The underlay veth has offloads off, so what
/// crosses it is MTU-sized datagrams (UDP segmentation still saves the sender's stack walks). The VMs' NICs keep their
/// offloads, as virtio NICs do, and Fabric's agents cut and join segments (wireguard-go's TUN device does the same for
/// its hosts); the direct veth is measured both ways. Needs root.
/// </summary>
internal static partial class OverlayBenchmark
{
    private sealed record Figures(string Name, double Tcp1, double Tcp4, double Tcp16, double P50, double P99, double CpuPercent, double ResidentMb);

    /// <summary>One spread of std-ipv4's traffic: <paramref name="Paths"/> VM pairs at once, each with <paramref name="Streams"/> TCP streams.</summary>
    private sealed record Spread(int Paths, int Streams, double Mbit, double CpuPercent, double ResidentMb, int Threads);

    /// <summary>How many VM pairs (a path each way, each its own stack instances) the many-paths figures run at once.</summary>
    private const int ManyPaths = 100;

    public static int Run(int seconds)
    {
        if (!Privileged.IsRoot)
        {
            Console.Error.WriteLine($"overlay benchmark: {Privileged.SkipReason}");
            return 2;
        }
        var results = new List<Figures>();
        using (var net = new TestNetwork())
        {
            var (a, b) = DirectPair(net, offloads: false);
            results.Add(Measure("direct veth", a, b, DirectServer, [], seconds));
        }
        using (var net = new TestNetwork())
        {
            var (a, b) = DirectPair(net, offloads: true);
            results.Add(Measure("direct, offloads", a, b, DirectServer, [], seconds));
        }
        using (var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4", withEmulator: false))
        {
            var vm1 = topology.Vm("vm1");
            var vm3 = topology.Vm("vm3");
            Privileged.Run("ip", "netns", "exec", vm1.Namespace, "ping", "-c", "1", "-W", "2", vm3.IPv4);
            results.Add(Measure("fabric std-ipv4", vm1.Namespace, vm3.Namespace, vm3.IPv4, [topology.AgentPids.A, topology.AgentPids.B], seconds));

            var wgA = Tunnels.StartWireGuard(topology, topology.HostA, "wgfa", "10.200.0.1", out var keyA);
            var wgB = Tunnels.StartWireGuard(topology, topology.HostB, "wgfb", "10.200.0.2", out var keyB);
            Tunnels.Peer(topology.HostA, "wgfa", keyB, "10.200.0.2/32", "198.18.0.2:51820");
            Tunnels.Peer(topology.HostB, "wgfb", keyA, "10.200.0.1/32", "198.18.0.1:51820");
            Privileged.Run("ip", "netns", "exec", topology.HostA, "ping", "-c", "1", "-W", "3", "10.200.0.2");
            results.Add(Measure("wireguard-go", topology.HostA, topology.HostB, "10.200.0.2", [wgA, wgB], seconds));
        }

        Console.WriteLine();
        Console.WriteLine($"{"path",-16} {"TCP 1 stream",14} {"TCP 4 streams",14} {"TCP 16 streams",15} {"UDP RTT p50",12} {"UDP RTT p99",12} {"forwarder CPU",14}");
        foreach (var r in results)
        {
            Console.WriteLine($"{r.Name,-16} {r.Tcp1,9:0} Mb/s {r.Tcp4,9:0} Mb/s {r.Tcp16,10:0} Mb/s {r.P50,9:0.0} µs {r.P99,9:0.0} µs {r.CpuPercent,10:0} %");
        }
        var fabric = results.Single(r => r.Name.StartsWith("fabric", StringComparison.Ordinal));
        var wg = results.Single(r => r.Name == "wireguard-go");
        var direct = results.Single(r => r.Name == "direct veth");
        var offloaded = results.Single(r => r.Name == "direct, offloads");
        Console.WriteLine();
        Console.WriteLine($"fabric / wireguard-go: TCP×1 {fabric.Tcp1 / wg.Tcp1:0.00}×, TCP×4 {fabric.Tcp4 / wg.Tcp4:0.00}×, TCP×16 {fabric.Tcp16 / wg.Tcp16:0.00}×, "
            + $"added RTT p50 {fabric.P50 - direct.P50:0.0} µs vs {wg.P50 - direct.P50:0.0} µs ({(fabric.P50 - direct.P50) / (wg.P50 - direct.P50):0.00}×), "
            + $"CPU per Mbit/s {fabric.CpuPercent / fabric.Tcp1:0.000} vs {wg.CpuPercent / wg.Tcp1:0.000} %");
        Console.WriteLine($"fabric / bare veth: TCP×1 {fabric.Tcp1 / direct.Tcp1:0%} of it without offloads, {fabric.Tcp1 / offloaded.Tcp1:0%} of it with them");
        Console.WriteLine("goal: TCP×1 ≥ 4× wireguard-go, added p50 RTT ≤ 0.5× wireguard-go's; moonshot: ≥ 50 % of bare veth.");

        var (baseline, spreads, threadPerVm) = MeasurePaths(seconds);
        Console.WriteLine();
        Console.WriteLine($"fabric std-ipv4 with {ManyPaths} VM pairs on the two hosts (each pair a virtual network of its own), iperf3 on some of them at once:");
        Console.WriteLine($"{"paths × streams",-16} {"TCP goodput",14} {"agents' CPU",12} {"CPU per Mbit/s",15} {"agents' resident",17} {"agents' threads",16}");
        foreach (var r in spreads)
        {
            Console.WriteLine($"{$"{r.Paths} × {r.Streams}",-16} {r.Mbit,9:0} Mb/s {r.CpuPercent,10:0} % {r.CpuPercent / r.Mbit,13:0.000} % {r.ResidentMb,14:0} MB {r.Threads,16}");
        }
        var one = spreads[0];
        var many = spreads[^1];
        Console.WriteLine($"from 1 path to {many.Paths}: goodput {many.Mbit / one.Mbit:0.00}×, CPU per Mbit/s {many.CpuPercent / many.Mbit / (one.CpuPercent / one.Mbit):0.00}× "
            + $"(16 streams on one path: {spreads[1].CpuPercent / spreads[1].Mbit / (one.CpuPercent / one.Mbit):0.00}×); the agents' resident memory with {ManyPaths * 2 + 4} VMs "
            + $"{many.ResidentMb:0} MB against {fabric.ResidentMb:0} MB with 4");
        Console.WriteLine($"the same machine without an overlay (a direct veth with offloads, {baseline.Count} iperf3 clients and servers at once): {baseline.Mbit:0} Mb/s, "
            + $"so fabric's {many.Paths} paths reach {many.Mbit / baseline.Mbit:0%} of it (1 path: {one.Mbit / offloaded.Tcp1:0%} of the direct veth's 1 stream)");
        Console.WriteLine($"the same with a receive thread per VM port (vmReceiveThreads 0) instead of {Math.Clamp(Environment.ProcessorCount / 2, 1, 8)} receive group(s):");
        foreach (var r in threadPerVm)
        {
            var grouped = spreads.Single(g => g.Paths == r.Paths && g.Streams == r.Streams);
            Console.WriteLine($"{$"{r.Paths} × {r.Streams}",-16} {r.Mbit,9:0} Mb/s {r.CpuPercent,10:0} % {r.CpuPercent / r.Mbit,13:0.000} % {r.ResidentMb,14:0} MB {r.Threads,16}"
                + $"   groups: {grouped.Mbit / r.Mbit:0.00}× the goodput, {grouped.CpuPercent / grouped.Mbit / (r.CpuPercent / r.Mbit):0.00}× the CPU per Mbit/s");
        }
        return 0;
    }

    /// <summary>
    /// std-ipv4 between <see cref="ManyPaths"/> VM pairs (a topology of its own): one path with one stream and with 16, then
    /// 16 and all the paths with one stream each, iperf3 on every path at once; the agents' CPU over the run, their
    /// resident memory and threads at its end. And as many iperf3 clients and servers at once between two namespaces on a
    /// direct veth with offloads: what the machine itself gives that many flows (the processes alone cost CPU).
    /// </summary>
    private static ((int Count, double Mbit) Baseline, List<Spread> Spreads, List<Spread> ThreadPerVm) MeasurePaths(int seconds)
    {
        Console.Error.WriteLine($"measuring {ManyPaths} flows on a direct veth…");
        var logs = Directory.CreateTempSubdirectory("fabric-paths-");
        try
        {
            double direct;
            using (var net = new TestNetwork())
            {
                var (a, b) = DirectPair(net, offloads: true);
                var flows = Enumerable.Range(0, ManyPaths).Select(i => new Flow($"direct {i}", a, b, DirectServer, 5301 + i)).ToList();
                direct = AtOnce(flows, 1, seconds, logs.FullName, []).Mbit;
            }
            Console.Error.WriteLine($"measuring {ManyPaths} paths…");
            var spreads = Spreads(null, [(1, 1), (1, 16), (16, 1), (ManyPaths, 1)]);
            // The same agents as before the receive groups: a thread per VM port, measured in the same run.
            Console.Error.WriteLine($"measuring {ManyPaths} paths with a receive thread per VM…");
            return ((ManyPaths, direct), spreads, Spreads(0, [(16, 1), (ManyPaths, 1)]));

            List<Spread> Spreads(int? vmReceiveThreads, (int Paths, int Streams)[] spreads)
            {
                using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4", withEmulator: false, pairs: ManyPaths, vmReceiveThreads: vmReceiveThreads);
                var pairs = Enumerable.Range(1, ManyPaths).Select(i => new Flow($"pa{i}", topology.Vm($"pa{i}").Namespace, topology.Vm($"pb{i}").Namespace, topology.Vm($"pb{i}").IPv4, 5301)).ToList();
                // Every pair's path is up (its neighbour found through the agents' tables) before any clock starts.
                Parallel.ForEach(pairs, new ParallelOptions { MaxDegreeOfParallelism = 8 },
                    p => Privileged.Run("ip", "netns", "exec", p.Client, "ping", "-c", "1", "-W", "3", p.Address));
                return [.. spreads.Select(s => AtOnce(pairs.Take(s.Paths).ToList(), s.Streams, seconds, logs.FullName, [topology.AgentPids.A, topology.AgentPids.B]))];
            }
        }
        finally
        {
            logs.Delete(recursive: true);
        }
    }

    /// <summary>The server's end of <see cref="DirectPair"/>.</summary>
    private const string DirectServer = "198.19.0.2";

    /// <summary>Two namespaces joined by a veth, no overlay (198.19.0.1 and <see cref="DirectServer"/>): the client's and the server's.</summary>
    private static (string Client, string Server) DirectPair(TestNetwork net, bool offloads)
    {
        var a = net.AddNamespace("da");
        var b = net.AddNamespace("db");
        net.AddVeth($"{net.Id}a", a, $"{net.Id}b", b, offloads: offloads);
        net.AddAddress(a, $"{net.Id}a", "198.19.0.1/24");
        net.AddAddress(b, $"{net.Id}b", DirectServer + "/24");
        return (a, b);
    }

    /// <summary>One iperf3 flow: its client's namespace, its server's namespace, address and port.</summary>
    private sealed record Flow(string Name, string Client, string Server, string Address, int Port);

    /// <summary>
    /// iperf3 on every flow at once (a server each, started for it), <paramref name="streams"/> streams each: their goodput
    /// summed, and the CPU of <paramref name="pids"/> over the run, their resident memory and threads at its end.
    /// </summary>
    private static Spread AtOnce(IReadOnlyList<Flow> flows, int streams, int seconds, string logs, int[] pids)
    {
        var serving = new List<Process>();
        // Every server started is stopped too, also when a later one fails to start.
        using var servers = new ServerSet(serving);
        foreach (var f in flows)
        {
            serving.Add(Privileged.StartInNamespace(f.Server, "iperf3", "-s", "-1", "-p", f.Port.ToString(CultureInfo.InvariantCulture)));
        }
        Thread.Sleep(1000);
        var cpuBefore = pids.Sum(CpuSeconds);
        var watch = Stopwatch.StartNew();
        var clients = new List<(Process Process, string Log, string Flow)>();
        var started = new List<Process>();
        // Every client started is stopped, however this ends: none outlives its namespace.
        using (new ServerSet(started))
        {
            foreach (var (f, i) in flows.Select((f, i) => (f, i)))
            {
                var log = Path.Combine(logs, $"{flows.Count}x{streams}-{i}-{Guid.NewGuid():N}.json");
                started.Add(Privileged.StartInNamespace(f.Client, "iperf3", "-c", f.Address, "-p", f.Port.ToString(CultureInfo.InvariantCulture), "-t", seconds.ToString(CultureInfo.InvariantCulture),
                    "-P", streams.ToString(CultureInfo.InvariantCulture), "-J", "--logfile", log));
                clients.Add((started[^1], log, f.Name));
            }
            foreach (var c in clients)
            {
                if (!c.Process.WaitForExit(TimeSpan.FromSeconds(seconds + 60)))
                {
                    throw new TimeoutException($"iperf3 on {c.Flow} did not finish within {seconds + 60} s");
                }
            }
        }
        var cpu = (pids.Sum(CpuSeconds) - cpuBefore) / watch.Elapsed.TotalSeconds * 100;
        var mbit = clients.Sum(c =>
        {
            using var document = JsonDocument.Parse(File.ReadAllText(c.Log));
            // A run that failed part-way may still print a sum: its error is what counts.
            return !document.RootElement.TryGetProperty("error", out var error) && document.RootElement.TryGetProperty("end", out var end)
                && end.TryGetProperty("sum_received", out var received)
                ? received.GetProperty("bits_per_second").GetDouble() / 1e6
                : throw new InvalidOperationException($"iperf3 on {c.Flow}: {(error.ValueKind == JsonValueKind.String ? error.GetString() : "no result")}");
        });
        return new Spread(flows.Count, streams, mbit, cpu, pids.Sum(p => Status(p, "VmRSS:")) / 1024.0, (int)pids.Sum(p => Status(p, "Threads:")));
    }

    /// <summary>A number from /proc/PID/status (kB for memory).</summary>
    private static long Status(int pid, string field) =>
        long.Parse(File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith(field, StringComparison.Ordinal))[field.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);

    private static Figures Measure(string name, string client, string server, string address, int[] pids, int seconds)
    {
        Console.Error.WriteLine($"measuring {name}…");
        var iperf = Start(server, "iperf3", "-s", "-p", "5301");
        var sockperf = Start(server, "sockperf", "sr", "-i", address, "-p", "11111");
        try
        {
            Thread.Sleep(500);
            var cpuBefore = pids.Sum(CpuSeconds);
            var watch = Stopwatch.StartNew();
            var tcp1 = Iperf(client, address, 1, seconds);
            var cpu = pids.Length == 0 ? 0 : (pids.Sum(CpuSeconds) - cpuBefore) / watch.Elapsed.TotalSeconds * 100;
            var tcp4 = Iperf(client, address, 4, seconds);
            var tcp16 = Iperf(client, address, 16, seconds);
            var output = Privileged.Run("ip", "netns", "exec", client, "sockperf", "ping-pong", "-i", address, "-p", "11111", "-t", "5", "-m", "64", "--full-rtt");
            return new Figures(name, tcp1, tcp4, tcp16, Percentile(output, "50.000"), Percentile(output, "99.000"), cpu, pids.Sum(p => Status(p, "VmRSS:")) / 1024.0);
        }
        finally
        {
            Stop(iperf);
            Stop(sockperf);
        }
    }

    private static double Iperf(string client, string address, int streams, int seconds)
    {
        var json = Privileged.Run("ip", "netns", "exec", client, "iperf3", "-c", address, "-p", "5301", "-t", seconds.ToString(CultureInfo.InvariantCulture),
            "-P", streams.ToString(CultureInfo.InvariantCulture), "-J");
        using var document = JsonDocument.Parse(json);
        return document.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble() / 1e6;
    }

    private static double Percentile(string sockperfOutput, string which)
    {
        var match = Regex.Match(sockperfOutput, $@"percentile {Regex.Escape(which)} =\s+([\d.]+)");
        return match.Success ? double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : double.NaN;
    }

    private static Process Start(string ns, string program, params string[] args) => Privileged.StartInNamespace(ns, program, args);

    private static void Stop(Process process)
    {
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(3000);
        }
        process.Dispose();
    }

    internal static double CpuSeconds(int pid)
    {
        var fields = File.ReadAllText($"/proc/{pid}/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // utime and stime are fields 14 and 15 of /proc/PID/stat; after the command name they are at indices 11 and 12.
        return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
    }
}
