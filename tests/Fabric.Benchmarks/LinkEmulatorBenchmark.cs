using System.Diagnostics;
using System.Globalization;
using Fabric.Testing;

namespace Fabric.Benchmarks;

/// <summary>
/// Configured against measured for every knob of fabric-linkem, with real kernel traffic between namespaces, plus the
/// emulator's own added latency (against a direct veth measured in the same run) and its forwarding rate. Needs root.
/// </summary>
internal static class LinkEmulatorBenchmark
{
    private static string Emulator => Path.Combine(AppContext.BaseDirectory, "fabric-linkem");

    public static int Run()
    {
        if (!Privileged.IsRoot)
        {
            Console.Error.WriteLine($"linkem benchmark: {Privileged.SkipReason}");
            return 2;
        }
        Console.WriteLine("knob                  configured            measured              note");
        using (var path = new EmulatedPath(Emulator))
        {
            path.Ping(3, 0.1);
            foreach (var ms in new[] { 5, 20, 50 })
            {
                path.Control($"set both delay={ms}ms jitter=0ms");
                var (rtts, _, _) = path.Ping(40, 0.05);
                Row("delay (one way)", $"{ms} ms", $"{Median(rtts) / 2:0.00} ms", $"RTT median {Median(rtts):0.00} ms over {rtts.Count}");
            }
            path.Control("set both delay=20ms jitter=5ms");
            var (jittered, _, _) = path.Ping(200, 0.02);
            Row("jitter", "20±5 ms one way", $"RTT p1..p99 {Percentile(jittered, 1):0.0}..{Percentile(jittered, 99):0.0} ms", "expected RTT within 30..50 ms, order kept");
            path.Control("set both delay=0ms jitter=0ms");

            using var flow = new UdpFlow(path.NamespaceA, path.NamespaceB, EmulatedPath.AddressB);
            foreach (var loss in new[] { 1, 5, 10 })
            {
                path.Control($"set a2b loss={loss}%");
                flow.Reset();
                flow.Send(0, 10_000, 200, 20_000);
                var got = flow.Drain(TimeSpan.FromMilliseconds(300)).Count;
                Row("random loss", $"{loss} %", $"{(1 - (got / 10_000.0)) * 100:0.00} %", "10,000 UDP datagrams");
            }
            path.Control("set a2b ge=1%,25%");
            flow.Reset();
            flow.Send(0, 20_000, 200, 20_000);
            var (geLoss, meanBurst) = LossAndBursts(flow.Drain(TimeSpan.FromMilliseconds(300)), 20_000);
            Row("Gilbert-Elliott", "p=1% r=25%: 3.85 %, bursts 4.0", $"{geLoss * 100:0.00} %, bursts {meanBurst:0.00}", "20,000 datagrams; mean run of consecutive losses");
            path.Control("set a2b ge=off loss=0%");

            foreach (var mbit in new[] { 10, 50, 200 })
            {
                path.Control($"set a2b rate={mbit}mbit queue=200");
                flow.Reset();
                flow.SendFor(TimeSpan.FromSeconds(2), 1472, mbit * 1.5e6 / (1514 * 8));
                Row("rate", $"{mbit} Mbit/s", $"{WireRate(flow.Drain(TimeSpan.FromMilliseconds(300)), 1514) / 1e6:0.00} Mbit/s", "1514-byte frames offered at 1.5×");
            }
            path.Control("set a2b rate=10mbit queue=20");
            flow.Reset();
            flow.SendFor(TimeSpan.FromSeconds(2), 1472, 2 * 10e6 / (1514 * 8));
            var queued = flow.Drain(TimeSpan.FromMilliseconds(300));
            var maxDelay = queued.Max(a => (a.ArrivedTicks - a.SentTicks) * 1000.0 / Stopwatch.Frequency);
            Row("drop-tail queue", "20 pkts at 10 Mbit/s", $"max delay {maxDelay:0.0} ms", $"expected ≈ 20 × 1.21 ms = 24.2 ms; delivered {queued.Count} of {2 * 10e6 / (1514 * 8) * 2:0}");
            path.Control("set a2b rate=unlimited queue=1000");

            foreach (var trace in new[] { "pantheon/2017-01-03T21-30-Nepal-to-AWS-India-10-runs_13.38mbps.trace", "pantheon/2016-12-30T21-38-China-ppp0-to-AWS-Korea-10-runs_6.25mbps.trace" })
            {
                var file = TestData.PathOf(trace.Split('/'));
                var parsed = Fabric.LinkEmulator.MahimahiTrace.Load(file);
                path.Control($"set a2b trace={file} queue=200");
                flow.Reset();
                flow.SendFor(TimeSpan.FromSeconds(3), 1472, parsed.AverageBitsPerSecond * 1.5 / (1500 * 8));
                Row("trace replay", $"{parsed.AverageBitsPerSecond / 1e6:0.00} Mbit/s", $"{WireRate(flow.Drain(TimeSpan.FromMilliseconds(300)), 1500) / 1e6:0.00} Mbit/s", Path.GetFileName(file)[..24] + "…");
            }
            path.Control("set a2b trace=off");

            path.Control("set both delay=0ms");
            var (viaEmulator, _, _) = path.Ping(300, 0.01);
            var direct = DirectVethRtt();
            Row("added latency", "0 ms", $"{(Median(viaEmulator) - Median(direct)) * 1000:0} µs RTT", $"emulator p50 {Median(viaEmulator) * 1000:0} µs vs direct veth p50 {Median(direct) * 1000:0} µs (same run)");

            flow.Reset();
            var cpuBefore = CpuSeconds(path.EmulatorPid);
            var sw = Stopwatch.StartNew();
            flow.Send(0, 300_000, 18, 1e9);
            var sent = sw.Elapsed.TotalSeconds;
            var flood = flow.Drain(TimeSpan.FromMilliseconds(300));
            var cpu = CpuSeconds(path.EmulatorPid) - cpuBefore;
            var seconds = (flood[^1].ArrivedTicks - flood[0].ArrivedTicks) / (double)Stopwatch.Frequency;
            Row("forwarding rate", "unlimited", $"{flood.Count / seconds / 1000:0} kpps", $"60-byte frames; sender offered {300_000 / sent / 1000:0} kpps; {flood.Count} of 300000 delivered; emulator CPU {cpu / seconds * 100:0} % of a core");
        }
        return 0;
    }

    private static List<double> DirectVethRtt()
    {
        using var net = new TestNetwork();
        var a = net.AddNamespace("da");
        var b = net.AddNamespace("db");
        net.AddVeth($"{net.Id}a", a, $"{net.Id}b", b);
        net.AddAddress(a, $"{net.Id}a", "198.19.0.1/24");
        net.AddAddress(b, $"{net.Id}b", "198.19.0.2/24");
        var output = TestNetwork.Exec(a, "ping", "-n", "-c", "300", "-i", "0.01", "198.19.0.2");
        return System.Text.RegularExpressions.Regex.Matches(output, @"time=([\d.]+) ms").Select(m => double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();
    }

    private static double CpuSeconds(int pid)
    {
        var fields = File.ReadAllText($"/proc/{pid}/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the command name: indices 11 and 12 here.
        return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
    }

    private static (double Loss, double MeanBurst) LossAndBursts(List<UdpArrival> arrivals, int sent)
    {
        var got = arrivals.Select(a => a.Sequence).ToHashSet();
        var bursts = new List<int>();
        var run = 0;
        for (var i = 0; i < sent; i++)
        {
            if (!got.Contains(i))
            {
                run++;
            }
            else if (run > 0)
            {
                bursts.Add(run);
                run = 0;
            }
        }
        return (1 - (got.Count / (double)sent), bursts.Count == 0 ? 0 : bursts.Average());
    }

    private static double WireRate(List<UdpArrival> arrivals, int bytesPerPacket)
    {
        var seconds = (arrivals[^1].ArrivedTicks - arrivals[0].ArrivedTicks) / (double)Stopwatch.Frequency;
        return (arrivals.Count - 1) * bytesPerPacket * 8 / seconds;
    }

    private static double Median(List<double> values) => Percentile(values, 50);

    private static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted[Math.Min(sorted.Count - 1, (int)(sorted.Count * p / 100))];
    }

    private static void Row(string knob, string configured, string measured, string note) =>
        Console.WriteLine($"{knob,-21} {configured,-21} {measured,-21} {note}");
}
