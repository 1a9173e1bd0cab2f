using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using Fabric.Silo.Security;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo.Tests;

/// <summary>Runs alone: three silo processes and eleven clients must not compete with other tests' clusters.</summary>
[CollectionDefinition(nameof(ClusterFaultTests), DisableParallelization = true)]
public sealed class ClusterFaultCollection;

/// <summary>
/// Three fabric-silo processes on Azure Table and Blob storage (Azurite, behind a cut-able TCP forwarder), with the
/// control channel's security; ten agents (each an Orleans client with its own host's certificate) carrying 1,000 VMs
/// and reporting their paths every second; an operator reading. A silo killed with -9, a rolling restart of every silo,
/// and the store unreachable for 30 s.
/// </summary>
[Collection(nameof(ClusterFaultTests))]
public sealed class ClusterFaultTests(Azurite azurite)
{
    private const int Hosts = 10;
    private const int VmsPerHost = 100;
    private static string HostId(int i) => $"fh{i:D2}";
    private static string VmId(int h, int v) => $"{HostId(h)}-vm{v:D3}";

    [Fact]
    public async Task ThreeSilos_SurviveAKill9_ARollingRestart_AndTheirStoreGoneFor30Seconds()
    {
        var cancel = TestContext.Current.CancellationToken;
        var folder = Directory.CreateTempSubdirectory("fabric-cluster-").FullName;
        using var authority = DevelopmentAuthority.Create("Fabric test authority");
        using var table = new TcpCut(azurite.TablePort);
        using var blob = new TcpCut(azurite.Port);
        var connection = Azurite.ConnectionStringThrough(blob.Port, table.Port);
        var cluster = "k" + Guid.NewGuid().ToString("N")[..10];
        var ports = Enumerable.Range(0, 3).Select(_ => (Silo: LoopbackPorts.Free(), Gateway: LoopbackPorts.Free(), Health: LoopbackPorts.Free())).ToArray();
        var silos = new SiloProcess?[3];
        var clients = new List<IHost>();
        using var stop = new CancellationTokenSource();
        string Config(int i)
        {
            var (certificate, key, authorityFile) = authority.IssueFiles(Path.Combine(folder, "pki"), CallerRole.Silo, $"silo-{i}");
            var path = Path.Combine(folder, $"silo-{i}.json");
            File.WriteAllText(path, $$"""
                { "clusterId": "{{cluster}}", "clustering": "azure-table", "storage": "azure-table", "advertisedAddress": "127.0.0.1",
                  "siloPort": {{ports[i].Silo}}, "gatewayPort": {{ports[i].Gateway}}, "healthListen": "127.0.0.1:{{ports[i].Health}}", "shutdownSeconds": 20,
                  "learning": { "store": "blob:{{cluster}}-learning" },
                  "security": { "certificate": "{{certificate}}", "key": "{{key}}", "authority": "{{authorityFile}}" } }
                """);
            return path;
        }
        void Start(int i)
        {
            silos[i] = new SiloProcess(Config(i), connection);
        }
        // A silo that exits while starting is started once more, as systemd's Restart=on-failure would (the units in
        // deploy/ say so); what made it exit is reported. A CI run saw one exit once on its way up after the kill -9.
        void WaitReadyRestarting(int i)
        {
            Eventually.True(() => SiloProcessTests.Healthz(ports[i].Health, "/readyz").StartsWith("200", StringComparison.Ordinal) || silos[i]!.HasExited,
                TimeSpan.FromSeconds(90), $"silo {i} ready", () => silos[i]!.Problems());
            if (silos[i]!.HasExited)
            {
                TestContext.Current.SendDiagnosticMessage($"silo {i} exited while starting and is started again: {silos[i]!.Problems()}");
                silos[i]!.Dispose();
                Start(i);
            }
            WaitReady(i);
        }
        void WaitReady(int i)
        {
            Eventually.True(() => SiloProcessTests.Healthz(ports[i].Health, "/readyz").StartsWith("200", StringComparison.Ordinal) || silos[i]!.HasExited,
                TimeSpan.FromSeconds(90), $"silo {i} ready", () => silos[i]!.Problems());
            Assert.False(silos[i]!.HasExited, $"silo {i} exited: {silos[i]!.Problems()}");
        }
        try
        {
            for (var i = 0; i < 3; i++)
            {
                Start(i);
                WaitReady(i);
            }
            var gateways = ports.Select(p => new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, p.Gateway)).ToArray();
            async Task<IClusterClient> ConnectAsync(ControlPlaneCredential credential)
            {
                var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
                builder.Logging.ClearProviders();
                builder.UseOrleansClient(c => c.UseStaticClustering(gateways).UseControlPlaneSecurity(credential)
                    .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (cluster, "fabric"))
                    .Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(10)));
                var host = builder.Build();
                await host.StartAsync(cancel);
                clients.Add(host);
                return host.Services.GetRequiredService<IClusterClient>();
            }
            var op = await ConnectAsync(authority.Issue(CallerRole.Operator, "ops"));
            foreach (var stack in Catalogs.All)
            {
                await op.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
            }

            // Ten agents, 100 VMs each, every host reporting its path to every other each second; lossy paths as the test says.
            var agents = new IClusterClient[Hosts];
            var observers = new IAgentObserver[Hosts];
            for (var h = 0; h < Hosts; h++)
            {
                agents[h] = await ConnectAsync(authority.Issue(CallerRole.Agent, HostId(h)));
                observers[h] = agents[h].CreateObjectReference<IAgentObserver>(new QuietObserver());
                await agents[h].GetGrain<IHostGrain>(HostId(h)).RegisterAsync(new HostInfo(HostId(h), "127.0.0.1", null, 47110, [.. Catalogs.All.Select(s => s.Id)], [], "test"),
                    observers[h]);
            }
            await Parallel.ForEachAsync(Enumerable.Range(0, Hosts), cancel, async (h, _) =>
            {
                for (var v = 0; v < VmsPerHost; v++)
                {
                    await agents[h].GetGrain<IVmGrain>(VmId(h, v)).PlaceAsync(new VmPlacement(HostId(h), "vm", 1, [], Policy.Default with { Workload = "bulk" }));
                }
            });
            var lossyPeer = new int?[Hosts];
            var failures = new ConcurrentQueue<string>();
            long calls = 0;
            // Each call as an agent makes it: retried a few times (the link's loop would retry the next second); what
            // still fails after that is an error the agent sees.
            async Task<T?> WithRetries<T>(string what, Func<Task<T>> call)
            {
                for (var attempt = 1; ; attempt++)
                {
                    try
                    {
                        Interlocked.Increment(ref calls);
                        return await call();
                    }
                    catch (Exception e) when (e is not OperationCanceledException || !stop.IsCancellationRequested)
                    {
                        if (attempt == 5)
                        {
                            failures.Enqueue($"{what}: {e.GetType().Name}: {e.Message}");
                            return default;
                        }
                        await Task.Delay(TimeSpan.FromSeconds(1), CancellationToken.None);
                    }
                }
            }
            var reporters = Enumerable.Range(0, Hosts).Select(h => Task.Run(async () =>
            {
                var host = agents[h].GetGrain<IHostGrain>(HostId(h));
                var tick = 0;
                while (!stop.IsCancellationRequested)
                {
                    var samples = Enumerable.Range(1, Hosts - 1).Select(p => (h + p) % Hosts)
                        .Select(p => new PathSample(HostId(h), HostId(p), 30, 0.5, 1000, lossyPeer[h] == p ? 50 : 0, 100, DateTimeOffset.UtcNow)).ToImmutableArray();
                    await WithRetries($"{HostId(h)} report", async () => { await host.ReportAsync(samples, []); return true; });
                    if (tick++ % 3 == 0)
                    {
                        // As the agent's link does: register again (renewing its observer wherever its grain now lives).
                        await WithRetries($"{HostId(h)} register", async () => await host.RegisterAsync(
                            new HostInfo(HostId(h), "127.0.0.1", null, 47110, [.. Catalogs.All.Select(s => s.Id)], [], "test"), observers[h]));
                    }
                    await Task.Delay(TimeSpan.FromSeconds(1), CancellationToken.None);
                }
            }, CancellationToken.None)).ToList();
            // Every host read at once, each read given 3 s: read one after the other, a read of a host grain the kill left
            // on the dead silo waited out the client's 10-s timeout, and three such made a recovery of a few seconds look
            // like 35 (what the first five runs of this test reported).
            async Task<int[]> Moved(int peerOffset) => await Task.WhenAll(Enumerable.Range(0, Hosts).Select(async h =>
            {
                try
                {
                    var desired = await op.GetGrain<IHostGrain>(HostId(h)).GetDesiredStateAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(3));
                    return desired.Bindings.Count(b => b.RemoteHost == HostId((h + peerOffset) % Hosts) && b.Stack != "std-ipv4");
                }
                catch (Exception e) when (e is TimeoutException or OrleansException)
                {
                    return -1;
                }
            }));
            async Task<bool> SwitchedAwayFromStd(int peerOffset) => (await Moved(peerOffset)).All(n => n == VmsPerHost);
            async Task<string> Describe() => string.Join("; ", await Task.WhenAll(Enumerable.Range(0, Hosts).Select(async h =>
                $"{HostId(h)} {(await op.GetGrain<IHostGrain>(HostId(h)).GetDesiredStateAsync()).Bindings.GroupBy(b => b.Stack).Select(g => $"{g.Key}:{g.Count()}").DefaultIfEmpty("none").Aggregate((a, b) => a + "," + b)}")))
                + $"; failures: {string.Join(" | ", failures.Take(5))}";

            // Steady state: every VM decided on every path; then one path per host turns lossy and all 1,000 VMs move.
            for (var h = 0; h < Hosts; h++)
            {
                lossyPeer[h] = (h + 1) % Hosts;
            }
            await Eventually.TrueAsync(() => SwitchedAwayFromStd(1), TimeSpan.FromSeconds(90), "1,000 VMs moved off std on their lossy path", Describe);

            // kill -9 one silo; a second path per host turns lossy at once: every VM must decide again, wherever its grain now is.
            silos[1]!.Kill();
            var killed = Stopwatch.StartNew();
            for (var h = 0; h < Hosts; h++)
            {
                lossyPeer[h] = (h + 2) % Hosts;
            }
            // A liveness bound, not a goal: the figure is the diagnostic printed below, with how many VMs of each host had
            // moved every 5 s, so a slow run shows where it waited.
            var progress = new List<string>();
            var recovered = TimeSpan.Zero;
            async Task<bool> Recovered()
            {
                var at = killed.Elapsed;
                var moved = await Moved(2);
                if (progress.Count < at.TotalSeconds / 5)
                {
                    // -1: the host's grain did not answer within 3 s.
                    progress.Add($"{at.TotalSeconds:0}s {string.Join(",", moved)}");
                }
                recovered = at;
                return moved.All(n => n == VmsPerHost);
            }
            await Eventually.TrueAsync(Recovered, TimeSpan.FromSeconds(90), "decisions flowing again after kill -9", Describe);
            TestContext.Current.SendDiagnosticMessage($"VMs of each host moved after the kill: {string.Join(" | ", progress)}");
            TestContext.Current.SendDiagnosticMessage($"after kill -9 of one of three silos, all 1,000 VMs had decided on their newly lossy path in {recovered.TotalSeconds:0.0} s");
            // Nothing lost: every VM's placement and policy (persisted in the table store), and a decision on every path.
            // A VM whose grain died with the silo comes back with the decisions its store had; one made just before the
            // kill and not yet stored is made again when its path is told again (at the latest a minute later): the
            // figure is printed, the bound is that minute and a half.
            var views = await Task.WhenAll(Enumerable.Range(0, Hosts * VmsPerHost).Select(i => op.GetGrain<IVmGrain>(VmId(i / VmsPerHost, i % VmsPerHost)).GetAsync().AsTask()));
            Assert.All(views.Select((view, i) => (view, i)), v =>
            {
                Assert.Equal(HostId(v.i / VmsPerHost), v.view.Placement?.HostId);
                Assert.Equal("bulk", v.view.Policy.Workload);
            });
            var undecided = views.Count(view => view.Stacks.Count != Hosts - 1);
            var redecided = Stopwatch.StartNew();
            await Eventually.TrueAsync(async () => (await Task.WhenAll(Enumerable.Range(0, Hosts * VmsPerHost)
                    .Select(i => op.GetGrain<IVmGrain>(VmId(i / VmsPerHost, i % VmsPerHost)).GetAsync().AsTask()))).All(view => view.Stacks.Count == Hosts - 1),
                TimeSpan.FromSeconds(90), "a decision on every path of every VM after the kill", Describe);
            TestContext.Current.SendDiagnosticMessage($"VMs missing a path's decision once the kill was recovered: {undecided} of {Hosts * VmsPerHost}, all decided {redecided.Elapsed.TotalSeconds:0.0} s later");

            // Calls that were waiting on the killed silo may have failed even after their retries (a kill -9 is not
            // hidden from callers); from here on, none may.
            TestContext.Current.SendDiagnosticMessage($"calls failed beyond retries around the kill -9: {failures.Count}");
            failures.Clear();

            // A rolling restart: the killed silo comes back, then each silo in turn is stopped as systemd would and started
            // again, while the agents go on (their calls retried as their links retry).
            Start(1);
            WaitReadyRestarting(1);
            for (var i = 0; i < 3; i++)
            {
                Assert.True(silos[i]!.Stop(TimeSpan.FromSeconds(60)), $"silo {i} did not stop within 60 s");
                silos[i]!.Dispose();
                Start(i);
                WaitReadyRestarting(i);
            }
            Assert.True(failures.IsEmpty, $"agents saw errors beyond their retries during the rolling restart: {string.Join(" | ", failures)}");

            // The store unreachable for 30 s: the silos go on serving what they hold. Every VM and host grain is read once
            // first, so active; a grain that must activate while the store is away cannot read its state, whatever the
            // system. The cluster settles first: a CI run cut the store while a host grain was activating again just
            // after the last silo rejoined (its state read failed after Azure's retries).
            await Task.Delay(TimeSpan.FromSeconds(5), cancel);
            foreach (var h in Enumerable.Range(0, Hosts))
            {
                await Task.WhenAll(Enumerable.Range(0, VmsPerHost).Select(v => op.GetGrain<IVmGrain>(VmId(h, v)).GetAsync().AsTask()));
                await op.GetGrain<IHostGrain>(HostId(h)).GetInfoAsync();
            }
            table.Cut();
            blob.Cut();
            var outage = Stopwatch.StartNew();
            var reads = 0;
            while (outage.Elapsed < TimeSpan.FromSeconds(30))
            {
                var h = reads % Hosts;
                Assert.NotNull(await WithRetries($"operator read during the outage", async () => await op.GetGrain<IVmGrain>(VmId(h, reads % VmsPerHost)).GetAsync()));
                reads++;
                await Task.Delay(TimeSpan.FromMilliseconds(500), cancel);
            }
            table.Restore();
            blob.Restore();
            Assert.True(failures.IsEmpty, $"agents or the operator saw errors beyond their retries while the store was away: {string.Join(" | ", failures)}");
            // And it writes again once it is back.
            await Eventually.TrueAsync(async () => (await op.GetGrain<IVmGrain>(VmId(0, 0)).SetPolicyAsync(Policy.Default with { Workload = "latency" })).Accepted,
                TimeSpan.FromSeconds(60), "a policy written after the store came back", Describe);
            TestContext.Current.SendDiagnosticMessage($"{Interlocked.Read(ref calls)} agent and operator calls, {reads} reads during the 30 s outage, no error beyond retries");
            await stop.CancelAsync();
            await Task.WhenAll(reporters);
        }
        finally
        {
            await stop.CancelAsync();
            foreach (var client in clients)
            {
                try
                {
                    await client.StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None);
                }
                catch (Exception e) when (e is TimeoutException or OperationCanceledException)
                {
                    // Stopping is best effort here.
                }
                client.Dispose();
            }
            foreach (var silo in silos)
            {
                silo?.Dispose();
            }
            Directory.Delete(folder, recursive: true);
        }
    }

    private sealed class QuietObserver : IAgentObserver
    {
        public Task DesiredStateChangedAsync(DesiredStateChange change) => Task.CompletedTask;
    }
}
