using System.Globalization;
using Fabric.Testing;

namespace Fabric.EndToEnd.Tests;

[CollectionDefinition(nameof(StacksBenchmarkSmokeTests), DisableParallelization = true)]
public sealed class StacksBenchmarkSmokeCollection;

/// <summary>
/// The stacks' evidence benchmark (bench/stacks.sh) in its smallest form, as CI's smoke test: one lossy cell, std-ipv4
/// and fec, 1 s of iperf3 and 2 s of request/response each. It proves the benchmark still runs end to end and writes what it says; the figures
/// themselves are evidence only from a full run on a quiet machine, so only their presence and sanity are checked.
/// Runs alone: its measurements and the other end-to-end tests' must not compete for the two cores.
/// </summary>
[Collection(nameof(StacksBenchmarkSmokeTests))]
public class StacksBenchmarkSmokeTests
{
    [Fact]
    public void TheSmokeSubset_MeasuresEachStackAcrossTheEmulatedLink_AndWritesCsvAndChart()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        foreach (var tool in new[] { "iperf3", "sockperf" })
        {
            Assert.SkipUnless(Privileged.TryRun("sh", "-c", $"command -v {tool}").Code == 0, $"{tool} is not installed (./fabric test installs it as root)");
        }
        var folder = Directory.CreateTempSubdirectory("fabric-stacks-smoke-").FullName;
        try
        {
            var csv = Path.Combine(folder, "smoke.csv");
            var (code, stdout, stderr) = Processes.Run(Processes.Built("tests/Fabric.Benchmarks", "Fabric.Benchmarks"),
                ["stacks", "1", "--smoke", "--latency-seconds", "2", "--csv", csv], timeout: TimeSpan.FromSeconds(120));
            Assert.True(code == 0, $"exit {code}: {stdout}\n{stderr}");
            var rows = File.ReadAllLines(csv);
            Assert.Equal("cell,rtt_ms,loss_percent,rate_mbit,carrier,goodput_mbit,rtt_p50_us,rtt_p99_us,rtt_samples,overhead", rows[0]);
            Assert.Equal(3, rows.Length);
            foreach (var (row, carrier) in rows.Skip(1).Zip(new[] { "std-ipv4", "fec" }))
            {
                var f = row.Split(',');
                double Number(int i) => double.Parse(f[i], CultureInfo.InvariantCulture);
                Assert.Equal(carrier, f[4]);
                Assert.InRange(Number(5), 0.1, 20);          // goodput through a 20 Mbit/s link
                Assert.InRange(Number(6), 25_000, 2_000_000); // p50 RTT at least the link's 30 ms, minus rounding
                Assert.True(long.Parse(f[8], CultureInfo.InvariantCulture) > 5, row);
                Assert.InRange(Number(9), 0, 5);
            }
            Assert.Contains("goodput", stdout, StringComparison.Ordinal);
            // The chart is drawn in-process (no plotting program to install): a real PNG beside the CSV.
            var chart = File.ReadAllBytes(Path.ChangeExtension(csv, ".png"));
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, chart[..4]);
            Assert.True(chart.Length > 10_000, $"chart of {chart.Length} bytes");
            Assert.Contains($"chart: {Path.ChangeExtension(csv, ".png")}", stdout, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
