using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using Fabric.Silo;
using Fabric.Silo.Selection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Benchmarks;

/// <summary>
/// Programming the fleet: a 3-silo cluster in this process (localhost clustering, memory storage) and 1,000 simulated
/// agents as observers of one client connected to all three gateways. 10,000 VMs in 100 virtual networks (100 VMs each,
/// on hosts drawn at random, so a host has VMs in about 10 networks and about 1,000 routes). 9,000 VMs are placed to
/// load the fleet; the last 1,000 are placed while the benchmark times, per VM, the span from its placement call until
/// every other host with a VM in its network has been pushed the route, and counts the pushes that carried it (they
/// must follow the network's size, not the fleet's). Then a host's full resync: what an agent that lost its state gets
/// when it registers again (its whole desired state). CPU and memory are the whole process's (silos, client, agents).
/// </summary>
internal static class FleetBenchmark
{
    private const int Hosts = 1000;
    private const int Networks = 100;
    private const int VmsPerNetwork = 100;
    private const int Measured = 1000;

    private sealed class SimulatedAgent(string hostId, ConcurrentDictionary<string, ConcurrentDictionary<string, long>> arrivals) : IAgentObserver
    {
        public string HostId { get; } = hostId;

        public Task DesiredStateChangedAsync(DesiredStateChange change)
        {
            var now = Stopwatch.GetTimestamp();
            foreach (var route in change.RouteUpserts)
            {
                arrivals.GetOrAdd(route.VmId, _ => new ConcurrentDictionary<string, long>(StringComparer.Ordinal)).TryAdd(HostId, now);
            }
            return Task.CompletedTask;
        }
    }

    /// <summary>What one run measured, for the comparison of a plain and a secured cluster.</summary>
    private sealed record Figures(double RouteP50, double RouteP99, double PlacementsPerSecond, double Cpu, double ResyncP50, double ResyncP99);

    /// <param name="compareSecurity">Runs twice in this process, without and with the control channel's security, and prints the ratios.</param>
    public static async Task<int> RunAsync(bool compareSecurity = false)
    {
        if (!compareSecurity)
        {
            await RunOnceAsync(secured: false);
            return 0;
        }
        Console.WriteLine("--- without the control channel's security");
        var plain = await RunOnceAsync(secured: false);
        Console.WriteLine("--- with it: TLS 1.3 between the silos and to the gateways, a caller token on every call, checked by each silo");
        var secured = await RunOnceAsync(secured: true);
        Console.WriteLine($"secured / plain: route p50 {secured.RouteP50 / plain.RouteP50:0.00}x, p99 {secured.RouteP99 / plain.RouteP99:0.00}x; "
            + $"placements/s {secured.PlacementsPerSecond / plain.PlacementsPerSecond:0.00}x; CPU while placing {secured.Cpu / plain.Cpu:0.00}x; "
            + $"resync p50 {secured.ResyncP50 / plain.ResyncP50:0.00}x, p99 {secured.ResyncP99 / plain.ResyncP99:0.00}x "
            + "(the second run also finds the first's JIT and memory: it is favoured if anything)");
        return 0;
    }

    private static async Task<Figures> RunOnceAsync(bool secured)
    {
        // The client speaks for 1,000 hosts at once, which no agent's certificate may: it holds a silo's (the silos'
        // authority and token checks, TLS on every connection, as with agents; one client connection instead of 1,000).
        using var authority = secured ? Fabric.Silo.Security.DevelopmentAuthority.Create("fleet benchmark") : null;
        var silos = new List<IHost>();
        var primary = new IPEndPoint(IPAddress.Loopback, 22111);
        for (var i = 0; i < 3; i++)
        {
            var builder = Host.CreateApplicationBuilder();
            builder.Logging.ClearProviders();
            var (siloPort, gatewayPort) = (22111 + i, 32000 + i);
            var name = $"silo-{i}";
            builder.UseOrleans(silo =>
            {
                silo.UseLocalhostClustering(siloPort, gatewayPort, primary, "fabric", "fleet-bench")
                    .AddMemoryGrainStorage(Storage.Name)
                    .AddFabricControlPlane(new SelectorOptions(0.10, TimeSpan.FromSeconds(1)));
                if (authority is not null)
                {
                    Fabric.Silo.Security.SecurityHosting.UseControlPlaneSecurity(silo, authority.Issue(Fabric.Silo.Security.CallerRole.Silo, name));
                }
            });
            var host = builder.Build();
            await host.StartAsync();
            silos.Add(host);
        }
        var clientBuilder = Host.CreateApplicationBuilder();
        clientBuilder.Logging.ClearProviders();
        clientBuilder.UseOrleansClient(client =>
        {
            client.UseLocalhostClustering([32000, 32001, 32002], "fabric", "fleet-bench");
            if (authority is not null)
            {
                Fabric.Silo.Security.SecurityHosting.UseControlPlaneSecurity(client, authority.Issue(Fabric.Silo.Security.CallerRole.Silo, "fleet-client"));
            }
        });
        using var clientHost = clientBuilder.Build();
        await clientHost.StartAsync();
        var grains = clientHost.Services.GetRequiredService<IClusterClient>();
        await grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(new StackInfo("std-ipv4", "1.0.0", "ipv4", 16, 0, 0, 0, false, "default"));

        string HostId(int i) => $"h{i:D4}";
        var arrivals = new ConcurrentDictionary<string, ConcurrentDictionary<string, long>>(StringComparer.Ordinal);
        var agents = Enumerable.Range(0, Hosts).Select(h => new SimulatedAgent(HostId(h), arrivals)).ToList();
        var setup = Stopwatch.StartNew();
        await Parallel.ForEachAsync(agents, new ParallelOptions { MaxDegreeOfParallelism = 32 }, async (agent, _) =>
            await grains.GetGrain<IHostGrain>(agent.HostId).RegisterAsync(new HostInfo(agent.HostId, "10.0.0.1", null, 47110, ["std-ipv4"], [], "bench") { PublicKey = "pk-" + agent.HostId },
                grains.CreateObjectReference<IAgentObserver>(agent)));
        GC.KeepAlive(agents);
        Console.WriteLine($"fleet: 3 silos, {Hosts:N0} hosts registered in {setup.Elapsed.TotalSeconds:0.0} s");
        // Observer subscriptions expire after a minute unless renewed, as agents renew theirs (every 5 s; here every 10 s).
        var references = agents.ToDictionary(a => a.HostId, a => grains.CreateObjectReference<IAgentObserver>(a), StringComparer.Ordinal);
        using var renewing = new CancellationTokenSource();
        var renewal = Task.Run(async () =>
        {
            while (!renewing.IsCancellationRequested)
            {
                await Parallel.ForEachAsync(agents, new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (agent, _) =>
                    await grains.GetGrain<IHostGrain>(agent.HostId).RenewAsync(references[agent.HostId]));
                await Task.Delay(TimeSpan.FromSeconds(10), CancellationToken.None);
            }
        });

        // VM v of network n: on a random host; the last Measured VMs (10 per network) are the ones timed.
        var random = new Random(7);
        var vms = Enumerable.Range(0, Networks).SelectMany(n => Enumerable.Range(0, VmsPerNetwork).Select(v => (Id: $"n{n:D3}-vm{v:D3}", Vni: (uint)(1000 + n), Host: random.Next(Hosts), Index: n * VmsPerNetwork + v)))
            .ToList();
        var load = vms.Where(vm => vm.Index % VmsPerNetwork < VmsPerNetwork - Measured / Networks).ToList();
        var measured = vms.Where(vm => vm.Index % VmsPerNetwork >= VmsPerNetwork - Measured / Networks).OrderBy(_ => random.Next()).ToList();
        VmPlacement Placement((string Id, uint Vni, int Host, int Index) vm)
        {
            var mac = $"52:54:{vm.Index >> 16 & 0xff:x2}:{vm.Index >> 8 & 0xff:x2}:{vm.Index & 0xff:x2}:01";
            return new VmPlacement(HostId(vm.Host), vm.Id, vm.Vni, [mac], null) { Vnics = [new Vnic(mac, vm.Vni, [$"10.{vm.Vni % 250}.{vm.Index >> 8 & 0xff}.{vm.Index & 0xff}"], [])] };
        }
        setup.Restart();
        await Parallel.ForEachAsync(load, new ParallelOptions { MaxDegreeOfParallelism = 32 }, async (vm, _) => await grains.GetGrain<IVmGrain>(vm.Id).PlaceAsync(Placement(vm)));
        var loadTime = setup.Elapsed;
        Console.WriteLine($"load: {load.Count:N0} VMs placed in {loadTime.TotalSeconds:0.0} s ({load.Count / loadTime.TotalSeconds:N0} placements/s, 32 at a time)");
        await Task.Delay(2000);
        arrivals.Clear();

        // Who must hear of each measured VM: every other host with a VM in its network when it is placed.
        var members = vms.GroupBy(vm => vm.Vni).ToDictionary(g => g.Key, g => new HashSet<int>(load.Where(l => l.Vni == g.Key).Select(l => l.Host)));
        var process = Process.GetCurrentProcess();
        var cpuStart = process.TotalProcessorTime;
        var wall = Stopwatch.StartNew();
        var started = new ConcurrentDictionary<string, (long At, HashSet<string> Expected)>(StringComparer.Ordinal);
        await Parallel.ForEachAsync(measured, new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (vm, _) =>
        {
            HashSet<string> expected;
            lock (members)
            {
                expected = members[vm.Vni].Where(h => h != vm.Host).Select(HostId).ToHashSet(StringComparer.Ordinal);
                members[vm.Vni].Add(vm.Host);
            }
            started[vm.Id] = (Stopwatch.GetTimestamp(), expected);
            await grains.GetGrain<IVmGrain>(vm.Id).PlaceAsync(Placement(vm));
        });
        var placing = wall.Elapsed;
        var cpu = (process.TotalProcessorTime - cpuStart).TotalSeconds / placing.TotalSeconds;
        await Task.Delay(3000);
        var latencies = new List<double>();
        var pushes = new List<int>();
        var incomplete = 0;
        foreach (var (vmId, (at, expected)) in started)
        {
            var heard = arrivals.GetValueOrDefault(vmId);
            pushes.Add(heard?.Count ?? 0);
            // A host that placed a VM in the network after this one was placed hears it in its join: not counted late.
            if (heard is null || !expected.All(heard.ContainsKey))
            {
                incomplete++;
                continue;
            }
            latencies.Add(Stopwatch.GetElapsedTime(at, expected.Count == 0 ? at : expected.Max(h => heard[h])).TotalMilliseconds);
        }
        latencies.Sort();
        pushes.Sort();
        double P(List<double> sorted, double q) => sorted.Count == 0 ? double.NaN : sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];
        Console.WriteLine($"registration -> every relevant host has the route: p50 {P(latencies, 0.5):0.0} ms, p99 {P(latencies, 0.99):0.0} ms, max {(latencies.Count == 0 ? double.NaN : latencies[^1]):0.0} ms "
            + $"over {latencies.Count:N0} VMs placed 8 at a time ({incomplete} never complete) (goal p99 <= 1000 ms)");
        Console.WriteLine($"pushes per registration: median {pushes[pushes.Count / 2]}, max {pushes[^1]} (hosts in the VM's network, of {Hosts:N0} in the fleet)");
        Console.WriteLine($"while placing: {measured.Count / placing.TotalSeconds:N0} placements/s, process CPU {cpu * 100:0} % of one core ({cpu / Environment.ProcessorCount * 100:0} % of {Environment.ProcessorCount})");

        // A host that lost its state registers again and gets its whole desired state.
        var resync = new List<double>();
        var routes = new List<int>();
        foreach (var agent in agents.Take(50))
        {
            var watch = Stopwatch.StartNew();
            var state = await grains.GetGrain<IHostGrain>(agent.HostId).RegisterAsync(new HostInfo(agent.HostId, "10.0.0.1", null, 47110, ["std-ipv4"], [], "bench") { PublicKey = "pk-" + agent.HostId },
                references[agent.HostId]);
            resync.Add(watch.Elapsed.TotalMilliseconds);
            routes.Add(state.Routes.Length);
        }
        resync.Sort();
        routes.Sort();
        Console.WriteLine($"full resync of a host (register, whole desired state): p50 {P(resync, 0.5):0.0} ms, p99 {P(resync, 0.99):0.0} ms for a median of {routes[routes.Count / 2]:N0} routes (goal <= 2000 ms for 1,000 routes)");
        process.Refresh();
        Console.WriteLine($"process (3 silos + client + {Hosts:N0} simulated agents): working set {process.WorkingSet64 / 1048576.0:0} MiB, GC heap {GC.GetTotalMemory(false) / 1048576.0:0} MiB");
        await renewing.CancelAsync();
        await renewal;
        await clientHost.StopAsync();
        foreach (var silo in Enumerable.Reverse(silos))
        {
            await silo.StopAsync();
            silo.Dispose();
        }
        return new Figures(P(latencies, 0.5), P(latencies, 0.99), measured.Count / placing.TotalSeconds, cpu, P(resync, 0.5), P(resync, 0.99));
    }
}
