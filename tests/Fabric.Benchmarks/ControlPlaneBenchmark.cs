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
/// One silo on this machine and simulated agents as in-process clients: hosts × peers paths (101 × 100 = 10,100 by
/// default), 10 VMs per host, every host reporting its path samples in one batch per second at its own phase of the
/// second, as independent agents do. Each second a fixed number of paths (101 by default) flips: a clean one turns
/// lossy (5 %) or a lossy one that has been so for at least 10 s turns clean again, so a run of any length keeps
/// deciding. The latency measured is from the report that carries the change to the agent's acknowledgement of the
/// desired-state version that moves a VM's binding on that path to the stack the change calls for (a loss-tolerant one,
/// or std-ipv4 back), for every VM of the host (10 per path). The selector runs with its usual 10 % margin but no
/// sustain time, so the figure is the machinery's, not the hysteresis'. Agents and silo share the process (and its 2
/// cores): CPU and memory are the whole process's. The run is preceded by <see cref="WarmupSeconds"/> of the same load,
/// printed apart; the garbage collector's pauses, by generation, are printed with the rest.
/// </summary>
internal static class ControlPlaneBenchmark
{
    private const int VmsPerHost = 10;

    /// <summary>How long a path stays lossy before it may turn clean again.</summary>
    private static readonly TimeSpan LossyFor = TimeSpan.FromSeconds(10);

    private static readonly ImmutableArray<StackInfo> Catalog =
    [
        new("std-ipv4", "1.0.0", "ipv4", 16, 0, 0, 0, false, "default"),
        new("fec", "1.0.0", "ipv4", 24, 0.25, 4, 0.05, false, "low latency on lossy paths"),
        new("arq-lowlat", "1.0.0", "ipv4", 28, 0.02, 2, 0.1, false, "low latency under loss"),
        new("arq-bulk", "1.0.0", "ipv4", 28, 0.03, 10, 0.1, false, "bulk on long lossy paths"),
        new("secure", "1.0.0", "ipv4", 40, 0, 0, 0, true, "sensitive tenants"),
    ];

    /// <summary>
    /// Bulk VMs between std-ipv4 and fec: fec wins at 5 % loss, and its parity (a quarter of a clean path) sends the VM
    /// back when the path is clean again. (With the ARQ stacks allowed, a VM stays on one at 2–3 % overhead, inside the
    /// 10 % margin, and a path that turns lossy again asks for no switch.)
    /// </summary>
    private static readonly Policy BulkVm = new("bulk", "standard", "ipv4", ["std-ipv4", "fec"], [], null, 0);

    /// <summary>A change reported and not yet acknowledged: when, and whether it made the path lossy.</summary>
    private readonly record struct Sent(long At, bool Lossy, bool Measured);

    /// <summary>
    /// Seconds of the same load before anything is counted: the first seconds after a thousand hosts registered and every
    /// VM decided every path carry that start's backlog (its garbage, each path's first renotification within
    /// <c>HostGrain.RenotifyEvery</c>, 15 s); their figures are printed apart.
    /// </summary>
    private const int WarmupSeconds = 15;

    /// <summary>Change to acknowledgement, ms: of paths that turned lossy, and of paths that turned clean again.</summary>
    private sealed record Latencies(ConcurrentBag<double> Lossy, ConcurrentBag<double> Clean, ConcurrentBag<double> Warmup);

    private sealed class SimulatedAgent(IHostGrain host, ConcurrentDictionary<(string Vm, string Remote), Sent> sentAt, Latencies latencies) : IAgentObserver
    {
        public async Task DesiredStateChangedAsync(DesiredStateChange change)
        {
            await host.AcknowledgeAsync(change.Version);
            var now = Stopwatch.GetTimestamp();
            foreach (var binding in change.Upserts)
            {
                var key = (binding.VmId, binding.RemoteHost);
                if (sentAt.TryGetValue(key, out var sent) && sent.Lossy == (binding.Stack != "std-ipv4") && sentAt.TryRemove(KeyValuePair.Create(key, sent)))
                {
                    (!sent.Measured ? latencies.Warmup : sent.Lossy ? latencies.Lossy : latencies.Clean).Add(Stopwatch.GetElapsedTime(sent.At, now).TotalMilliseconds);
                }
            }
        }
    }

    /// <summary>What one run measured.</summary>
    public sealed record Result(double SamplesPerSecond, double DecisionP50Ms, double DecisionP99Ms, double CpuCores, double WorkingSetMiB);

    /// <summary>What a run simulates: the fleet's size and how many paths flip each second.</summary>
    public sealed record Load(int Hosts = 101, int Peers = 100, int ChangesPerSecond = 101)
    {
        public int Paths => Hosts * Peers;
    }

    /// <summary>
    /// The run without (warm-up), with, and again without the control channel's security (the silo's caller filters: every call signed as the
    /// silo and verified; the agents here are in the silo's process, so TLS itself is not in this figure), and the ratios.
    /// </summary>
    public static async Task<int> CompareSecurityAsync(int seconds, Load load)
    {
        // The first run warms the JIT; the secured run is compared with the plain run after it (both warm).
        Console.WriteLine("--- warm-up, without the control channel's security");
        await RunAsync(seconds, load, secured: false);
        Console.WriteLine("--- with it (caller tokens signed and verified on every grain call)");
        var secured = await RunAsync(seconds, load, secured: true);
        Console.WriteLine("--- without it");
        var plain = await RunAsync(seconds, load, secured: false);
        Console.WriteLine($"security costs: CPU {secured.CpuCores / plain.CpuCores:0.00}x, decision p50 {secured.DecisionP50Ms / plain.DecisionP50Ms:0.00}x, "
            + $"p99 {secured.DecisionP99Ms / plain.DecisionP99Ms:0.00}x, working set {secured.WorkingSetMiB / plain.WorkingSetMiB:0.00}x (same run, same load)");
        return 0;
    }

    /// <summary>What survived the newest full (blocking or background) collection: the heap the control plane holds, without
    /// the garbage a server GC lets pile up between collections.</summary>
    private static double LiveMiB()
    {
        var (blocking, background) = (GC.GetGCMemoryInfo(GCKind.FullBlocking), GC.GetGCMemoryInfo(GCKind.Background));
        return (blocking.Index > background.Index ? blocking : background).PromotedBytes / 1048576.0;
    }

    /// <summary>
    /// Each garbage collection of the run as the runtime describes it afterwards (sampled every 50 ms, so two within 50 ms
    /// count as one): what the pauses of the young and middle generations were and how much they kept, which says
    /// whether a pause is the work of the collection or of what survives it.
    /// </summary>
    private sealed class CollectionWatch : IDisposable
    {
        private readonly List<(int Generation, double PauseMs, double PromotedMiB)> _seen = [];
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _sampler;

        public CollectionWatch() => _sampler = Task.Run(async () =>
        {
            var last = GC.GetGCMemoryInfo(GCKind.Any).Index;
            while (!_stop.IsCancellationRequested)
            {
                var info = GC.GetGCMemoryInfo(GCKind.Any);
                if (info.Index != last)
                {
                    last = info.Index;
                    lock (_seen)
                    {
                        _seen.Add((info.Generation, info.PauseDurations[0].TotalMilliseconds + info.PauseDurations[1].TotalMilliseconds, info.PromotedBytes / 1048576.0));
                    }
                }
                await Task.Delay(50);
            }
        });

        public void Dispose()
        {
            _stop.Cancel();
            _sampler.Wait();
        }

        public override string ToString()
        {
            lock (_seen)
            {
                return string.Join("; ", _seen.GroupBy(s => s.Generation).OrderBy(g => g.Key).Select(g =>
                {
                    var pauses = g.Select(s => s.PauseMs).Order().ToArray();
                    return $"gen{g.Key} {g.Count()}: pause p50 {pauses[pauses.Length / 2]:0} ms, max {pauses[^1]:0} ms, kept {g.Average(s => s.PromotedMiB):0} MiB on average";
                }));
            }
        }
    }

    public static async Task<Result> RunAsync(int seconds, Load load, bool secured = false)
    {
        var (hosts, peers) = (load.Hosts, load.Peers);
        var builder = Host.CreateApplicationBuilder();
        // Only a refused call is worth a line here (it would make the secured figures meaningless).
        builder.Logging.ClearProviders().AddSimpleConsole().AddFilter((category, level) => category?.StartsWith("Fabric.Silo.Security", StringComparison.Ordinal) == true
            && level >= LogLevel.Warning);
        using var authority = Fabric.Silo.Security.DevelopmentAuthority.Create("bench authority");
        builder.UseOrleans(silo =>
        {
            silo.UseLocalhostClustering(siloPort: 21111, gatewayPort: 31000)
                // State in the process as a one-silo control plane keeps it (the embedded default's store), not Orleans'
                // memory storage: that held a serialized copy of every VM's decision log (170 MB at 100,100 paths) in the
                // silo's own process, which a silo on a durable store (Azure Table, Redis) keeps outside it.
                .AddProcessGrainStorage()
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
        string HostId(int i) => $"h{i:D4}";
        var sentAt = new ConcurrentDictionary<(string Vm, string Remote), Sent>();
        var latencies = new Latencies([], [], []);
        var agents = new List<SimulatedAgent>();
        var setup = Stopwatch.StartNew();
        var lossy = new HashSet<(int Host, int Peer)>();
        PathSample Sample(int h, int p) => new(HostId(h), HostId((h + 1 + p) % hosts), 30, 0.5, 1000, lossy.Contains((h, p)) ? 50 : 0, 100, DateTimeOffset.UtcNow);
        await Parallel.ForEachAsync(Enumerable.Range(0, hosts), async (h, _) =>
        {
            var host = grains.GetGrain<IHostGrain>(HostId(h));
            var agent = new SimulatedAgent(host, sentAt, latencies);
            lock (agents)
            {
                agents.Add(agent);
            }
            await host.RegisterAsync(new HostInfo(HostId(h), "127.0.0.1", null, 47110, [.. Catalog.Select(s => s.Id)], [], "bench"), grains.CreateObjectReference<IAgentObserver>(agent));
            await host.ReportAsync([.. Enumerable.Range(0, peers).Select(p => Sample(h, p))], []);
            for (var v = 0; v < VmsPerHost; v++)
            {
                await grains.GetGrain<IVmGrain>($"{HostId(h)}-vm{v}").PlaceAsync(new VmPlacement(HostId(h), "vm", 1, [], BulkVm));
            }
        });
        var setupTime = setup.Elapsed;
        Console.WriteLine($"control plane: {hosts:N0} hosts x {peers} peers = {load.Paths:N0} paths, {hosts * VmsPerHost:N0} VMs, {load.ChangesPerSecond} paths flipping a second; "
            + $"setup (register, first reports, place and decide every VM on every path) {setupTime.TotalSeconds:0.0} s");

        var process = Process.GetCurrentProcess();
        var cpuStart = TimeSpan.Zero;
        var (pausedStart, gen0Start, gen1Start, gen2Start) = (TimeSpan.Zero, 0, 0, 0);
        var wall = Stopwatch.StartNew();
        var measuredFrom = TimeSpan.Zero;
        var slowestWarmupTick = 0.0;
        CollectionWatch? collections = null;
        var random = new Random(1);
        // Clean paths in a random order, each turning lossy in turn; a path that turns clean again goes to the back.
        var clean = new Queue<(int h, int p)>(Enumerable.Range(0, hosts).SelectMany(h => Enumerable.Range(0, peers).Select(p => (h, p))).OrderBy(_ => random.Next()));
        var lossySince = new Queue<((int h, int p) Path, int Tick)>();
        var samples = 0L;
        var reportTimes = new List<double>();
        var (expected, expectedClean) = (0, 0);
        for (var tick = 0; tick < WarmupSeconds + seconds; tick++)
        {
            var tickStart = wall.Elapsed;
            var measured = tick >= WarmupSeconds;
            if (tick == WarmupSeconds)
            {
                (measuredFrom, cpuStart) = (tickStart, process.TotalProcessorTime);
                (pausedStart, gen0Start, gen1Start, gen2Start) = (GC.GetTotalPauseDuration(), GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2));
                collections = new CollectionWatch();
            }
            var healed = new List<(int h, int p)>();
            while (healed.Count < load.ChangesPerSecond / 2 && lossySince.TryPeek(out var oldest) && tick - oldest.Tick >= LossyFor.TotalSeconds)
            {
                healed.Add(lossySince.Dequeue().Path);
            }
            var broken = new List<(int h, int p)>();
            while (healed.Count + broken.Count < load.ChangesPerSecond && clean.TryDequeue(out var path))
            {
                broken.Add(path);
                lossySince.Enqueue((path, tick));
            }
            healed.ForEach(clean.Enqueue);
            if (measured)
            {
                expected += (healed.Count + broken.Count) * VmsPerHost;
                expectedClean += healed.Count * VmsPerHost;
            }
            var byHost = broken.Select(c => (c.h, c.p, Lossy: true)).Concat(healed.Select(c => (c.h, c.p, Lossy: false))).ToLookup(c => c.h);
            // Agents report on their own clocks: each host at its own phase of the second, not all at once.
            await Task.WhenAll(Enumerable.Range(0, hosts).Select(async h =>
            {
                var phase = TimeSpan.FromSeconds(tick + h / (double)hosts) - wall.Elapsed;
                if (phase > TimeSpan.Zero)
                {
                    await Task.Delay(phase);
                }
                var now = Stopwatch.GetTimestamp();
                ImmutableArray<PathSample> batch;
                lock (lossy)
                {
                    foreach (var (_, p, turnsLossy) in byHost[h])
                    {
                        _ = turnsLossy ? lossy.Add((h, p)) : lossy.Remove((h, p));
                        for (var v = 0; v < VmsPerHost; v++)
                        {
                            sentAt[($"{HostId(h)}-vm{v}", HostId((h + 1 + p) % hosts))] = new Sent(now, turnsLossy, measured);
                        }
                    }
                    batch = [.. Enumerable.Range(0, peers).Select(p => Sample(h, p))];
                }
                var call = Stopwatch.GetTimestamp();
                await grains.GetGrain<IHostGrain>(HostId(h)).ReportAsync(batch, []);
                if (measured)
                {
                    lock (reportTimes)
                    {
                        reportTimes.Add(Stopwatch.GetElapsedTime(call).TotalMilliseconds);
                    }
                }
            }));
            samples += measured ? load.Paths : 0;
            if (measured && (tick + 1 - WarmupSeconds) % 60 == 0)
            {
                process.Refresh();
                Console.WriteLine($"  {tick + 1 - WarmupSeconds} s: {latencies.Lossy.Count + latencies.Clean.Count:N0} of {expected:N0} switches acknowledged, working set {process.WorkingSet64 / 1048576.0:0} MiB, GC heap {GC.GetTotalMemory(false) / 1048576.0:0} MiB (live {LiveMiB():0} MiB)");
            }
            var left = TimeSpan.FromSeconds(tick + 1) - wall.Elapsed;
            if (left > TimeSpan.Zero)
            {
                await Task.Delay(left);
            }
            else if (!measured)
            {
                slowestWarmupTick = Math.Max(slowestWarmupTick, (wall.Elapsed - tickStart).TotalMilliseconds);
            }
            else if (wall.Elapsed - tickStart > TimeSpan.FromSeconds(1.1))
            {
                // The last host reports at 0.99 s into the tick; beyond 1.1 s ingestion is falling behind.
                Console.WriteLine($"  tick {tick - WarmupSeconds}: the reports took {(wall.Elapsed - tickStart).TotalMilliseconds:0} ms, longer than the 1 s period");
            }
        }
        // Decisions still in flight when the last tick ends get two more seconds. A path turning clean is decided on only
        // once its smoothed loss has come down (an EWMA of weight 0.3: about 10 s from 5 %): those of the last 15 s are
        // counted as in flight, not as lost.
        var drain = Stopwatch.StartNew();
        while (sentAt.Values.Any(s => s.Lossy) && drain.Elapsed < TimeSpan.FromSeconds(2))
        {
            await Task.Delay(50);
        }
        var elapsed = wall.Elapsed - measuredFrom;
        collections!.Dispose();
        var cpu = (process.TotalProcessorTime - cpuStart).TotalSeconds / elapsed.TotalSeconds;
        var (paused, gen2) = (GC.GetTotalPauseDuration() - pausedStart, GC.CollectionCount(2) - gen2Start);
        var (gen1, gen0) = (GC.CollectionCount(1) - gen1Start - gen2, GC.CollectionCount(0) - gen0Start - (GC.CollectionCount(1) - gen1Start));
        process.Refresh();
        static double[] Sorted(ConcurrentBag<double> bag) => [.. bag.Order()];
        static double Percentile(double[] sorted, double q) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))];
        static string Figures(double[] sorted) => $"p50 {Percentile(sorted, 0.5):0.0} ms, p99 {Percentile(sorted, 0.99):0.0} ms, max {(sorted.Length == 0 ? double.NaN : sorted[^1]):0.0} ms";
        var (toLossy, toClean, warmup) = (Sorted(latencies.Lossy), Sorted(latencies.Clean), Sorted(latencies.Warmup));
        reportTimes.Sort();
        var end = Stopwatch.GetTimestamp();
        // A lossy change not acknowledged when its path turned clean again is gone from sentAt: count by what was acknowledged.
        var lostLossy = expected - expectedClean - toLossy.Length;
        // Of the measured changes that made a path clean again and are not yet acknowledged: past 15 s, or still smoothing.
        var unacknowledgedClean = sentAt.Values.Where(s => s.Measured && !s.Lossy).ToList();
        var lostClean = unacknowledgedClean.Count(s => Stopwatch.GetElapsedTime(s.At, end) > TimeSpan.FromSeconds(15));
        var p99 = Percentile(toLossy, 0.99);
        Console.WriteLine($"warm-up ({WarmupSeconds} s of the same load, not counted below): slowest tick {slowestWarmupTick:0} ms, change->ack of its changes {Figures(warmup)}");
        Console.WriteLine($"ingestion: {samples / elapsed.TotalSeconds:N0} path samples/s sustained over {elapsed.TotalSeconds:0.0} s ({hosts:N0} batches/s, each host at its own phase of the second); one batch of {peers} samples p50 {reportTimes[reportTimes.Count / 2]:0.0} ms, p99 {reportTimes[(int)(reportTimes.Count * 0.99)]:0.0} ms");
        Console.WriteLine($"decisions, path turned lossy: {toLossy.Length:N0} of {expected - expectedClean:N0} (VM, path) switches acknowledged, {lostLossy:N0} never; change->ack {Figures(toLossy)} "
            + $"(goal p99 <= 100 ms with none lost: {(p99 <= 100 && lostLossy == 0 ? "met" : "not met")})");
        Console.WriteLine($"decisions, path clean again: {toClean.Length:N0} of {expectedClean:N0} acknowledged, {lostClean:N0} not within 15 s, {unacknowledgedClean.Count - lostClean:N0} still smoothing at the end; "
            + $"change->ack {Figures(toClean)} (the loss's smoothing included)");
        Console.WriteLine($"process (silo + {hosts:N0} simulated agents): CPU {cpu * 100:0} % of one core ({cpu / Environment.ProcessorCount * 100:0} % of {Environment.ProcessorCount}), working set {process.WorkingSet64 / 1048576.0:0} MiB, "
            + $"GC heap {GC.GetTotalMemory(false) / 1048576.0:0} MiB (live after the last full collection {LiveMiB():0} MiB), GC paused {paused.TotalSeconds:0.0} s ({paused / elapsed:P1} of the run; {gen0:N0} young, {gen1:N0} middle and {gen2} full collections, {paused.TotalMilliseconds / Math.Max(1, gen0 + gen1 + gen2):0} ms on average); per path {process.WorkingSet64 / 1024.0 / load.Paths:0.0} KiB, {cpu * 1000 / load.Paths * 1000:0.0} ms of CPU per 1,000 paths a second");
        Console.WriteLine($"collections seen: {collections}");
        // Once every figure above is taken: what the silo and the agents hold, without any garbage.
        var live = GC.GetTotalMemory(forceFullCollection: true);
        Console.WriteLine($"live heap after a full collection at the end: {live / 1048576.0:0} MiB ({live / 1024.0 / load.Paths:0.0} KiB per path)");
        GC.KeepAlive(agents);
        await app.StopAsync();
        return new Result(samples / elapsed.TotalSeconds, Percentile(toLossy, 0.5), p99, cpu, process.WorkingSet64 / 1048576.0);
    }
}
