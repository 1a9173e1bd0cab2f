using System.Diagnostics;
using System.Net;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// Redis as the cluster's second provider: two fabric-silo processes with Redis clustering and grain storage on a real
/// redis-server, a real Orleans client of both gateways; one silo killed with -9.
/// </summary>
[Collection(nameof(ClusterFaultTests))]
public sealed class RedisClusterTests : IClassFixture<Redis>
{
    private readonly Redis _redis;

    public RedisClusterTests(Redis redis) => _redis = redis;

    [Fact]
    public async Task TwoSilosOnRedis_ShareTheFleet_AndOneKilledWithMinus9_LosesNoPolicy()
    {
        Assert.SkipWhen(_redis.Unavailable is not null, _redis.Unavailable ?? "");
        var cancel = TestContext.Current.CancellationToken;
        var folder = Directory.CreateTempSubdirectory("fabric-redis-").FullName;
        var cluster = "r" + Guid.NewGuid().ToString("N")[..10];
        var ports = Enumerable.Range(0, 2).Select(_ => (Silo: LoopbackPorts.Free(), Gateway: LoopbackPorts.Free(), Health: LoopbackPorts.Free())).ToArray();
        string Config(int i)
        {
            var path = System.IO.Path.Combine(folder, $"silo-{i}.json");
            File.WriteAllText(path, $$"""
                { "clusterId": "{{cluster}}", "clustering": "redis", "storage": "redis",
                  "siloPort": {{ports[i].Silo}}, "gatewayPort": {{ports[i].Gateway}}, "healthListen": "127.0.0.1:{{ports[i].Health}}", "shutdownSeconds": 10,
                  "learning": { "store": "{{System.IO.Path.Combine(folder, "learning")}}" } }
                """);
            return path;
        }
        var silos = new[] { new SiloProcess(Config(0), null, _redis.ConnectionString), new SiloProcess(Config(1), null, _redis.ConnectionString) };
        var clients = new List<IHost>();
        async Task<IClusterClient> ClientOfAsync(int silo)
        {
            // A client of one silo's gateway: the grains it activates first land there (Orleans places near the caller).
            var builder = Host.CreateApplicationBuilder();
            builder.UseOrleansClient(c => c
                .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (cluster, "fabric"))
                .Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(5))
                .UseStaticClustering([new IPEndPoint(IPAddress.Loopback, ports[silo].Gateway)]));
            var host = builder.Build();
            await host.StartAsync(cancel);
            clients.Add(host);
            return host.Services.GetRequiredService<IClusterClient>();
        }
        try
        {
            for (var i = 0; i < 2; i++)
            {
                var silo = silos[i];
                var health = ports[i].Health;
                Eventually.True(() => SiloProcessTests.Healthz(health).StartsWith("200 ok", StringComparison.Ordinal) || silo.HasExited, TimeSpan.FromSeconds(90), $"silo {i} healthy",
                    () => $"{SiloProcessTests.Healthz(health)}; output: {silo.Problems()}");
                Assert.False(silo.HasExited, silo.Problems());
            }
            var first = await ClientOfAsync(0);
            // Both silos are members of one cluster, as Redis's membership table says.
            await Eventually.TrueAsync(async () => (await first.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Count == 2, TimeSpan.FromSeconds(30),
                "two active silos", async () => string.Join(", ", (await first.GetGrain<IManagementGrain>(0).GetHosts()).Select(h => $"{h.Key} {h.Value}")));
            foreach (var stack in All)
            {
                await first.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
            }
            // Forty VMs' policies, set through silo 0: their state in Redis, their grains on either silo (Orleans places
            // them; a CI run put every one on silo 1). The silo holding the most is the one killed, so the test proves something.
            var vms = Enumerable.Range(0, 40).Select(i => $"redis-vm-{i:D2}").ToList();
            foreach (var vm in vms)
            {
                Assert.True((await first.GetGrain<IVmGrain>(vm).SetPolicyAsync(Policy("bulk", allow: ["std-ipv4", "arq-bulk"]))).Accepted);
            }
            var onSilo = new int[2];
            await Eventually.TrueAsync(async () =>
            {
                var statistics = (await first.GetGrain<IManagementGrain>(0).GetSimpleGrainStatistics()).Where(s => s.GrainType.Contains("VmGrain", StringComparison.Ordinal)).ToList();
                onSilo = [.. Enumerable.Range(0, 2).Select(i => statistics.Where(s => s.SiloAddress.Endpoint.Port == ports[i].Silo).Sum(s => s.ActivationCount))];
                return onSilo.Sum() >= vms.Count;
            }, TimeSpan.FromSeconds(10), "the VM grains counted on their silos", () => Task.FromResult($"{onSilo[0]} on silo 0, {onSilo[1]} on silo 1"));
            var victim = onSilo[0] >= onSilo[1] ? 0 : 1;
            var survivor = 1 - victim;

            // That silo dies without a word: the cluster declares it dead and every VM's policy is read again from Redis on the other.
            var killed = Stopwatch.StartNew();
            Assert.False(silos[survivor].HasExited, $"silo {survivor} exited before the kill: {silos[survivor].Problems()}");
            silos[victim].Kill();
            IClusterClient second;
            try
            {
                second = await ClientOfAsync(survivor);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Said with what the surviving silo printed: a CI run found its gateway refusing connections here.
                throw new InvalidOperationException($"no client of the surviving silo {survivor} (exited: {silos[survivor].HasExited}): {e.Message}; "
                    + $"its output: {silos[survivor].Problems()}", e);
            }
            var lost = vms.ToHashSet();
            await Eventually.TrueAsync(async () =>
            {
                foreach (var vm in lost.ToList())
                {
                    var view = await second.GetGrain<IVmGrain>(vm).GetAsync();
                    Assert.Equal(["std-ipv4", "arq-bulk"], view.Policy.Allow);
                    lost.Remove(vm);
                }
                return lost.Count == 0;
            }, TimeSpan.FromSeconds(60), "every policy served by the surviving silo", () => Task.FromResult($"{lost.Count} not yet: {string.Join(", ", lost.Take(5))}"));
            TestContext.Current.SendDiagnosticMessage($"{onSilo[victim]} of 40 VM grains were on the killed silo {victim}; every policy served again {killed.Elapsed.TotalSeconds:F1} s after the kill");
            await Eventually.TrueAsync(async () => (await second.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Count == 1
                    && SiloProcessTests.Healthz(ports[survivor].Health).StartsWith("200 ok", StringComparison.Ordinal), TimeSpan.FromSeconds(30),
                $"silo {victim} declared dead, silo {survivor} healthy", async () => string.Join(", ", (await second.GetGrain<IManagementGrain>(0).GetHosts()).Select(h => $"{h.Key} {h.Value}")));
        }
        finally
        {
            foreach (var client in clients)
            {
                await client.StopAsync(CancellationToken.None);
                client.Dispose();
            }
            foreach (var silo in silos)
            {
                silo.Dispose();
            }
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void RedisWithoutItsConnectionString_OrAWrongOne_IsRefusedNamingTheVariable()
    {
        var file = System.IO.Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, """{ "clustering": "redis", "storage": "redis", "learning": { "store": "/tmp/fabric-redis-refused" } }""");
            var (code, _, stderr) = Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file]);
            Assert.Equal(2, code);
            Assert.Contains("clustering/storage redis: set FABRIC_REDIS_CONNECTION_STRING", stderr, StringComparison.Ordinal);
            var (code2, _, stderr2) = Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file], environment: new Dictionary<string, string>
            {
                ["FABRIC_REDIS_CONNECTION_STRING"] = "127.0.0.1:6379,nosuchoption=1",
            });
            Assert.Equal(2, code2);
            Assert.Contains("FABRIC_REDIS_CONNECTION_STRING: ", stderr2, StringComparison.Ordinal);
            File.WriteAllText(file, """{ "clustering": "redis" }""");
            Assert.Contains("learning.store: required with redis clustering", Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file]).Stderr,
                StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
    }
}
