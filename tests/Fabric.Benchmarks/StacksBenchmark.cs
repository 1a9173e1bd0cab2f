using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Fabric.Testing;

namespace Fabric.Benchmarks;

/// <summary>
/// Every stack across the same emulated link, in one run: two fabric-agent processes (the VMs' kernel TCP is CUBIC, per
/// connection) joined by fabric-linkem; per link setting and stack, the path is swapped hitlessly to the stack, then
/// iperf3 measures TCP goodput, sockperf a 64-byte request/response RTT p50/p99 over TCP (so a loss costs what it costs an
/// RPC: a retransmission), and the agents' counters the
/// underlay bytes per delivered byte. Writes CSV. The quick grid holds the cells the stacks' goals name; --full runs RTT
/// {2, 30, 120} ms × loss {0, 0.5, 2, 5} % × rate {20, 200} Mbit/s. Needs root.
/// </summary>
internal static partial class StacksBenchmark
{
    private static readonly string[] Stacks = ["std-ipv4", "fec", "arq-lowlat", "arq-bulk", "secure"];

    private sealed record Cell(double RttMs, double LossPercent, int RateMbit);

    private sealed record Row(Cell Cell, string Stack, double GoodputMbit, double P50Us, double P99Us, double Overhead);

    public static int Run(bool full, int seconds, string csv)
    {
        if (!Privileged.IsRoot)
        {
            Console.Error.WriteLine($"stacks benchmark: {Privileged.SkipReason}");
            return 2;
        }
        Cell[] cells = full
            ? [.. from rtt in new[] { 2.0, 30, 120 } from loss in new[] { 0, 0.5, 2, 5 } from rate in new[] { 20, 200 } select new Cell(rtt, loss, rate)]
            : [new(2, 0, 200), new(30, 2, 200), new(120, 2, 200)];
        var rows = new List<Row>();
        using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4",
            stackProjects: [StackPlugins.StdIPv4, StackPlugins.StdIPv6, StackPlugins.Fec, StackPlugins.ArqLowLat, StackPlugins.ArqBulk, StackPlugins.Secure],
            settings: new() { ["secure"] = new() { ["key"] = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)) } });
        var (vm1, vm3) = (topology.Vm("vm1"), topology.Vm("vm3"));
        Privileged.Run("ip", "netns", "exec", vm1.Namespace, "ping", "-c", "1", "-W", "2", vm3.IPv4);
        var iperf = Privileged.StartInNamespace(vm3.Namespace, "iperf3", "-s", "-p", "5301");
        var sockperf = Privileged.StartInNamespace(vm3.Namespace, "sockperf", "sr", "--tcp", "-i", vm3.IPv4, "-p", "11111");
        try
        {
            Thread.Sleep(500);
            foreach (var cell in cells)
            {
                topology.Emulator(string.Create(CultureInfo.InvariantCulture,
                    $"set both delay={cell.RttMs / 2}ms loss={cell.LossPercent}% rate={cell.RateMbit}mbit queue={Math.Max(100, (int)(cell.RateMbit * 1e6 / 8 * cell.RttMs / 1000 / 1500))}"));
                foreach (var stack in Stacks)
                {
                    var (code, output) = Swap(topology, stack);
                    if (code != 0)
                    {
                        Console.Error.WriteLine($"swap to {stack}: {output}");
                        return 1;
                    }
                    Thread.Sleep(300);
                    var before = UnderlayBytes(topology);
                    var (goodput, delivered) = Iperf(vm1.Namespace, vm3.IPv4, seconds);
                    var overhead = delivered > 0 ? (UnderlayBytes(topology) - before) / (double)delivered - 1 : double.NaN;
                    var latency = Privileged.TryRun("ip", "netns", "exec", vm1.Namespace, "sockperf", "ping-pong", "--tcp", "-i", vm3.IPv4, "-p", "11111", "-t", "3", "-m", "64", "--full-rtt").Stdout;
                    var row = new Row(cell, stack, goodput, Percentile(latency, "50.000"), Percentile(latency, "99.000"), overhead);
                    rows.Add(row);
                    Console.Error.WriteLine(Line(row));
                }
            }
        }
        finally
        {
            iperf.Kill(entireProcessTree: true);
            sockperf.Kill(entireProcessTree: true);
        }
        var text = new StringBuilder("rtt_ms,loss_percent,rate_mbit,stack,goodput_mbit,rtt_p50_us,rtt_p99_us,overhead\n");
        foreach (var r in rows)
        {
            text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{r.Cell.RttMs},{r.Cell.LossPercent},{r.Cell.RateMbit},{r.Stack},{r.GoodputMbit:0.00},{r.P50Us:0.0},{r.P99Us:0.0},{r.Overhead:0.000}"));
        }
        File.WriteAllText(csv, text.ToString());
        Console.WriteLine();
        foreach (var r in rows)
        {
            Console.WriteLine(Line(r));
        }
        Console.WriteLine($"\nCSV: {csv}");
        Goals(rows);
        return 0;
    }

    private static string Line(Row r) => string.Create(CultureInfo.InvariantCulture,
        $"rtt {r.Cell.RttMs,5} ms loss {r.Cell.LossPercent,4} % {r.Cell.RateMbit,4} Mbit/s  {r.Stack,-11} goodput {r.GoodputMbit,8:0.0} Mbit/s  RTT p50 {r.P50Us / 1000,8:0.00} ms p99 {r.P99Us / 1000,8:0.00} ms  overhead {r.Overhead,6:0.000}");

    private static void Goals(List<Row> rows)
    {
        Row? At(double rtt, double loss, int rate, string stack) => rows.FirstOrDefault(r => r.Cell == new Cell(rtt, loss, rate) && r.Stack == stack);
        if (At(30, 2, 200, "std-ipv4") is { } std30 && At(30, 2, 200, "fec") is { } fec30 && At(30, 2, 200, "arq-lowlat") is { } arq30)
        {
            var best = Math.Min(fec30.P99Us, arq30.P99Us);
            Console.WriteLine($"goal 30 ms / 2 %: p99 request RTT fec {fec30.P99Us / 1000:0.0} ms, arq-lowlat {arq30.P99Us / 1000:0.0} ms vs std-ipv4 {std30.P99Us / 1000:0.0} ms: {(1 - best / std30.P99Us) * 100:0} % lower (goal ≥ 30 %)");
        }
        if (At(120, 2, 200, "std-ipv4") is { } std120 && At(120, 2, 200, "arq-bulk") is { } bulk120)
        {
            Console.WriteLine($"goal 120 ms / 2 %: arq-bulk goodput {bulk120.GoodputMbit:0.0} Mbit/s vs std-ipv4 {std120.GoodputMbit:0.0}: {bulk120.GoodputMbit / Math.Max(std120.GoodputMbit, 0.01):0.0}× (goal ≥ 3×; kcptun not measured yet)");
        }
    }

    private static (int Code, string Output) Swap(OverlayTopology topology, string stack)
    {
        var (code, stdout, stderr) = Privileged.TryRun(Path.Combine(AppContext.BaseDirectory, "fabric-agent"), "swap", topology.SocketA, "host-b", topology.SocketB, "host-a", stack);
        return (code, stdout + stderr);
    }

    private static long UnderlayBytes(OverlayTopology topology) =>
        new[] { "host-a", "host-b" }.Sum(host => topology.Status(host).GetProperty("paths").EnumerateArray().Sum(p => p.GetProperty("sent").GetProperty("bytes").GetInt64()));

    private static (double Mbit, long Bytes) Iperf(string client, string address, int seconds)
    {
        var (code, json, stderr) = Privileged.TryRun("ip", "netns", "exec", client, "iperf3", "-c", address, "-p", "5301", "-C", "cubic",
            "-t", seconds.ToString(CultureInfo.InvariantCulture), "-J");
        if (code != 0)
        {
            Console.Error.WriteLine($"iperf3: {stderr.Trim()} {json[..Math.Min(200, json.Length)]}");
            return (0, 0);
        }
        using var document = JsonDocument.Parse(json);
        var received = document.RootElement.GetProperty("end").GetProperty("sum_received");
        return (received.GetProperty("bits_per_second").GetDouble() / 1e6, (long)received.GetProperty("bytes").GetDouble());
    }

    private static double Percentile(string sockperfOutput, string which)
    {
        var match = Regex.Match(sockperfOutput, $@"percentile {Regex.Escape(which)} =\s+([\d.]+)");
        return match.Success ? double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : double.NaN;
    }
}
