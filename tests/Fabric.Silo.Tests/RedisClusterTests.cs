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
        IHost? client = null;
        try
        {
            for (var i = 0; i < 2; i++)
            {
                var silo = silos[i];
                var health = ports[i].Health;
                Eventually.True(() => SiloProcessTests.Healthz(health).StartsWith("200 ok", StringComparison.Ordinal) || silo.HasExited, TimeSpan.FromSeconds(90), $"silo {i} healthy",
                    () => $"{SiloProcessTests.Healthz(health)}; output: {string.Join(" | ", silo.Output.Take(30))}");
                Assert.False(silo.HasExited, string.Join("\n", silo.Output));
            }
            var builder = Host.CreateApplicationBuilder();
            builder.UseOrleansClient(c => c
                .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (cluster, "fabric"))
                .Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(5))
                .UseStaticClustering([.. ports.Select(p => new IPEndPoint(IPAddress.Loopback, p.Gateway))]));
            client = builder.Build();
            await client.StartAsync(cancel);
            var grains = client.Services.GetRequiredService<IClusterClient>();

            // Both silos are members of one cluster, as Redis's membership table says.
            await Eventually.TrueAsync(async () => (await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Count == 2, TimeSpan.FromSeconds(30),
                "two active silos", async () => string.Join(", ", (await grains.GetGrain<IManagementGrain>(0).GetHosts()).Select(h => $"{h.Key} {h.Value}")));
            foreach (var stack in All)
            {
                await grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
            }
            // Forty VMs' policies: their grains spread over both silos, their state in Redis.
            var vms = Enumerable.Range(0, 40).Select(i => $"redis-vm-{i:D2}").ToList();
            foreach (var vm in vms)
            {
                Assert.True((await grains.GetGrain<IVmGrain>(vm).SetPolicyAsync(Policy("bulk", allow: ["std-ipv4", "arq-bulk"]))).Accepted);
            }

            // Silo 0 dies without a word: the cluster declares it dead and every VM's policy is read again from Redis on silo 1.
            var killed = Stopwatch.StartNew();
            silos[0].Kill();
            var lost = vms.ToHashSet();
            await Eventually.TrueAsync(async () =>
            {
                foreach (var vm in lost.ToList())
                {
                    var view = await grains.GetGrain<IVmGrain>(vm).GetAsync();
                    Assert.Equal(["std-ipv4", "arq-bulk"], view.Policy.Allow);
                    lost.Remove(vm);
                }
                return lost.Count == 0;
            }, TimeSpan.FromSeconds(60), "every policy served by the surviving silo", () => Task.FromResult($"{lost.Count} not yet: {string.Join(", ", lost.Take(5))}"));
            TestContext.Current.SendDiagnosticMessage($"every VM's policy served again {killed.Elapsed.TotalSeconds:F1} s after silo 0 was killed");
            Assert.StartsWith("200 ok", SiloProcessTests.Healthz(ports[1].Health), StringComparison.Ordinal);
            await Eventually.TrueAsync(async () => (await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Count == 1, TimeSpan.FromSeconds(30),
                "silo 0 declared dead", async () => string.Join(", ", (await grains.GetGrain<IManagementGrain>(0).GetHosts()).Select(h => $"{h.Key} {h.Value}")));
        }
        finally
        {
            if (client is not null)
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
