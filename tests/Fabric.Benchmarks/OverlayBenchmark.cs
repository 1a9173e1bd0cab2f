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
    private sealed record Figures(string Name, double Tcp1, double Tcp4, double Tcp16, double P50, double P99, double CpuPercent);

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
            var a = net.AddNamespace("da");
            var b = net.AddNamespace("db");
            net.AddVeth($"{net.Id}a", a, $"{net.Id}b", b);
            net.AddAddress(a, $"{net.Id}a", "198.19.0.1/24");
            net.AddAddress(b, $"{net.Id}b", "198.19.0.2/24");
            results.Add(Measure("direct veth", a, b, "198.19.0.2", [], seconds));
        }
        using (var net = new TestNetwork())
        {
            var a = net.AddNamespace("da");
            var b = net.AddNamespace("db");
            net.AddVeth($"{net.Id}a", a, $"{net.Id}b", b, offloads: true);
            net.AddAddress(a, $"{net.Id}a", "198.19.0.1/24");
            net.AddAddress(b, $"{net.Id}b", "198.19.0.2/24");
            results.Add(Measure("direct, offloads", a, b, "198.19.0.2", [], seconds));
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
        return 0;
    }

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
            return new Figures(name, tcp1, tcp4, tcp16, Percentile(output, "50.000"), Percentile(output, "99.000"), cpu);
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
