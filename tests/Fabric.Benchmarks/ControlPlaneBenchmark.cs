using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using Fabric.Silo;
using Fabric.Silo.Selection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Benchmarks;

/// <summary>
/// One silo on this machine and simulated agents as in-process clients: 101 hosts × 100 peers = 10,100 paths, 10 VMs
/// per host (1,010 VMs), every host reporting its 100 path samples in one batch per second. Each second a fresh 1 % of
/// the paths turns lossy (5 %). Hosts report at their own phase of each second (spread evenly), as independent agents
/// do. The latency measured is from the report that carries the change to the agent's
/// acknowledgement of the desired-state version that moves a VM's binding on that path (every VM of the host, so 10 per
/// path). The selector runs with its usual 10 % margin but no sustain time, so the figure is the machinery's, not the
/// hysteresis'. Agents and silo share the process (and its 2 cores): CPU and memory are the whole process's.
/// </summary>
internal static class ControlPlaneBenchmark
{
    private const int Hosts = 101;
    private const int Peers = 100;
    private const int VmsPerHost = 10;

    private static readonly ImmutableArray<StackInfo> Catalog =
    [
        new("std-ipv4", "1.0.0", "ipv4", 16, 0, 0, 0, false, "default"),
        new("fec", "1.0.0", "ipv4", 24, 0.25, 4, 0.05, false, "low latency on lossy paths"),
        new("arq-lowlat", "1.0.0", "ipv4", 28, 0.02, 2, 0.1, false, "low latency under loss"),
        new("arq-bulk", "1.0.0", "ipv4", 28, 0.03, 10, 0.1, false, "bulk on long lossy paths"),
        new("secure", "1.0.0", "ipv4", 40, 0, 0, 0, true, "sensitive tenants"),
    ];

    private sealed class SimulatedAgent(IHostGrain host, ConcurrentDictionary<(string Vm, string Remote), long> sentAt, ConcurrentBag<double> latencies) : IAgentObserver
    {
        public async Task DesiredStateChangedAsync(DesiredStateChange change)
        {
            await host.AcknowledgeAsync(change.Version);
            var now = Stopwatch.GetTimestamp();
            foreach (var binding in change.Upserts.Where(b => b.Stack != "std-ipv4"))
            {
                if (sentAt.TryRemove((binding.VmId, binding.RemoteHost), out var sent))
                {
                    latencies.Add(Stopwatch.GetElapsedTime(sent, now).TotalMilliseconds);
                }
            }
        }
    }

    /// <summary>What one run measured.</summary>
    public sealed record Result(double SamplesPerSecond, double DecisionP50Ms, double DecisionP99Ms, double CpuCores, double WorkingSetMiB);

    /// <summary>
    /// The run without (warm-up), with, and again without the control channel's security (the silo's caller filters: every call signed as the
    /// silo and verified; the agents here are in the silo's process, so TLS itself is not in this figure), and the ratios.
    /// </summary>
    public static async Task<int> CompareSecurityAsync(int seconds, double changeShare)
    {
        // The first run warms the JIT; the secured run is compared with the plain run after it (both warm).
        Console.WriteLine("--- warm-up, without the control channel's security");
        await RunAsync(seconds, changeShare, secured: false);
        Console.WriteLine("--- with it (caller tokens signed and verified on every grain call)");
        var secured = await RunAsync(seconds, changeShare, secured: true);
        Console.WriteLine("--- without it");
        var plain = await RunAsync(seconds, changeShare, secured: false);
        Console.WriteLine($"security costs: CPU {secured.CpuCores / plain.CpuCores:0.00}x, decision p50 {secured.DecisionP50Ms / plain.DecisionP50Ms:0.00}x, "
            + $"p99 {secured.DecisionP99Ms / plain.DecisionP99Ms:0.00}x, working set {secured.WorkingSetMiB / plain.WorkingSetMiB:0.00}x (same run, same load)");
        return 0;
    }

    public static async Task<Result> RunAsync(int seconds, double changeShare = 0.01, bool secured = false)
    {
        var builder = Host.CreateApplicationBuilder();
        // Only a refused call is worth a line here (it would make the secured figures meaningless).
        builder.Logging.ClearProviders().AddSimpleConsole().AddFilter((category, level) => category?.StartsWith("Fabric.Silo.Security", StringComparison.Ordinal) == true
            && level >= LogLevel.Warning);
        using var authority = Fabric.Silo.Security.DevelopmentAuthority.Create("bench authority");
        builder.UseOrleans(silo =>
        {
            silo.UseLocalhostClustering(siloPort: 21111, gatewayPort: 31000)
                .AddMemoryGrainStorage(Storage.Name)
                .AddFabricControlPlane(new SelectorOptions(0.10, TimeSpan.Zero));
            if (secured)
            {
                Fabric.Silo.Security.SecurityHosting.UseControlPlaneSecurity(silo, authority.Issue(Fabric.Silo.Security.CallerRole.Silo, "bench"));
            }
        });
        using var app = builder.Build();
        await app.StartAsync();
        var grains = app.Services.GetRequiredService<IClusterClient>();
        foreach (var stack in Catalog)
        {
            await grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
        }
        string HostId(int i) => $"h{i:D3}";
        var sentAt = new ConcurrentDictionary<(string Vm, string Remote), long>();
        var latencies = new ConcurrentBag<double>();
        var agents = new List<SimulatedAgent>();
        var setup = Stopwatch.StartNew();
        var lossy = new HashSet<(int Host, int Peer)>();
        PathSample Sample(int h, int p) => new(HostId(h), HostId((h + 1 + p) % Hosts), 30, 0.5, 1000, lossy.Contains((h, p)) ? 50 : 0, 100, DateTimeOffset.UtcNow);
        await Parallel.ForEachAsync(Enumerable.Range(0, Hosts), async (h, _) =>
        {
            var host = grains.GetGrain<IHostGrain>(HostId(h));
            var agent = new SimulatedAgent(host, sentAt, latencies);
            lock (agents)
            {
                agents.Add(agent);
            }
            await host.RegisterAsync(new HostInfo(HostId(h), "127.0.0.1", null, 47110, [.. Catalog.Select(s => s.Id)], [], "bench"), grains.CreateObjectReference<IAgentObserver>(agent));
            await host.ReportAsync([.. Enumerable.Range(0, Peers).Select(p => Sample(h, p))], []);
            for (var v = 0; v < VmsPerHost; v++)
            {
                await grains.GetGrain<IVmGrain>($"{HostId(h)}-vm{v}").PlaceAsync(new VmPlacement(HostId(h), "vm", 1, [], null));
            }
        });
        var setupTime = setup.Elapsed;
        Console.WriteLine($"control plane: {Hosts} hosts x {Peers} peers = {Hosts * Peers:N0} paths, {Hosts * VmsPerHost:N0} VMs; setup (register, first reports, place and decide every VM on every path) {setupTime.TotalSeconds:0.0} s");

        var process = Process.GetCurrentProcess();
        var cpuStart = process.TotalProcessorTime;
        var wall = Stopwatch.StartNew();
        var random = new Random(1);
        var clean = Enumerable.Range(0, Hosts).SelectMany(h => Enumerable.Range(0, Peers).Select(p => (h, p))).OrderBy(_ => random.Next()).ToList();
        var samples = 0L;
        var reportTimes = new List<double>();
        var expected = 0;
        for (var tick = 0; tick < seconds; tick++)
        {
            var tickStart = wall.Elapsed;
            var changes = clean.Take((int)(Hosts * Peers * changeShare)).ToList();
            clean.RemoveRange(0, changes.Count);
            expected += changes.Count * VmsPerHost;
            var byHost = changes.ToLookup(c => c.h);
            // Agents report on their own clocks: each host at its own phase of the second, not all at once.
            await Task.WhenAll(Enumerable.Range(0, Hosts).Select(async h =>
            {
                var phase = TimeSpan.FromSeconds(tick + h / (double)Hosts) - wall.Elapsed;
                if (phase > TimeSpan.Zero)
                {
                    await Task.Delay(phase);
                }
                var now = Stopwatch.GetTimestamp();
                foreach (var (_, p) in byHost[h])
                {
                    lock (lossy)
                    {
                        lossy.Add((h, p));
                    }
                    for (var v = 0; v < VmsPerHost; v++)
                    {
                        sentAt[($"{HostId(h)}-vm{v}", HostId((h + 1 + p) % Hosts))] = now;
                    }
                }
                ImmutableArray<PathSample> samples;
                lock (lossy)
                {
                    samples = [.. Enumerable.Range(0, Peers).Select(p => Sample(h, p))];
                }
                var call = Stopwatch.GetTimestamp();
                await grains.GetGrain<IHostGrain>(HostId(h)).ReportAsync(samples, []);
                lock (reportTimes)
                {
                    reportTimes.Add(Stopwatch.GetElapsedTime(call).TotalMilliseconds);
                }
            }));
            samples += Hosts * Peers;
            var left = TimeSpan.FromSeconds(tick + 1) - wall.Elapsed;
            if (left > TimeSpan.Zero)
            {
                await Task.Delay(left);
            }
            else if (wall.Elapsed - tickStart > TimeSpan.FromSeconds(1.1))
            {
                // The last host reports at 0.99 s into the tick; beyond 1.1 s ingestion is falling behind.
                Console.WriteLine($"  tick {tick}: the reports took {(wall.Elapsed - tickStart).TotalMilliseconds:0} ms, longer than the 1 s period");
            }
        }
        // Decisions still in flight when the last tick ends get two more seconds.
        var drain = Stopwatch.StartNew();
        while (!sentAt.IsEmpty && drain.Elapsed < TimeSpan.FromSeconds(2))
        {
            await Task.Delay(50);
        }
        var elapsed = wall.Elapsed;
        var cpu = (process.TotalProcessorTime - cpuStart).TotalSeconds / elapsed.TotalSeconds;
        process.Refresh();
        var sorted = latencies.Order().ToArray();
        double Percentile(double q) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))];
        reportTimes.Sort();
        Console.WriteLine($"ingestion: {samples / elapsed.TotalSeconds:N0} path samples/s sustained over {elapsed.TotalSeconds:0.0} s ({Hosts} batches/s, each host at its own phase of the second); one batch of {Peers} samples p50 {reportTimes[reportTimes.Count / 2]:0.0} ms, p99 {reportTimes[(int)(reportTimes.Count * 0.99)]:0.0} ms");
        Console.WriteLine($"decisions: {sorted.Length:N0} of {expected:N0} expected (VM, path) switches acknowledged; latency change->ack p50 {Percentile(0.5):0.0} ms, p99 {Percentile(0.99):0.0} ms, max {(sorted.Length == 0 ? double.NaN : sorted[^1]):0.0} ms (goal p99 <= 100 ms)");
        Console.WriteLine($"process (silo + {Hosts} simulated agents): CPU {cpu * 100:0} % of one core ({cpu / Environment.ProcessorCount * 100:0} % of {Environment.ProcessorCount}), working set {process.WorkingSet64 / 1048576.0:0} MiB, GC heap {GC.GetTotalMemory(false) / 1048576.0:0} MiB");
        GC.KeepAlive(agents);
        await app.StopAsync();
        return new Result(samples / elapsed.TotalSeconds, Percentile(0.5), Percentile(0.99), cpu, process.WorkingSet64 / 1048576.0);
    }
}
