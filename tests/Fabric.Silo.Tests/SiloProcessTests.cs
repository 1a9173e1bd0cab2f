using System.Diagnostics;
using Azure.Data.Tables;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>The real fabric-silo process with Azure Table clustering and persistence on Azurite, and a real Orleans client.</summary>
public class SiloProcessTests(Azurite azurite)
{
    internal static string Healthz(int port, string path = "/healthz")
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        try
        {
            using var response = http.GetAsync(new Uri($"http://127.0.0.1:{port}{path}")).GetAwaiter().GetResult();
            return $"{(int)response.StatusCode} {response.Content.ReadAsStringAsync().GetAwaiter().GetResult()}";
        }
        catch (HttpRequestException e)
        {
            return e.Message;
        }
        catch (TaskCanceledException e)
        {
            return e.Message;
        }
    }

    [Fact]
    public async Task ASiloOnAzureTables_IsHealthy_ServesClients_AndKeepsPoliciesAcrossARestart()
    {
        var folder = System.IO.Directory.CreateTempSubdirectory("fabric-silo-").FullName;
        var cluster = "c" + Guid.NewGuid().ToString("N")[..10];
        var (siloPort, gatewayPort, healthPort) = (LoopbackPorts.Free(), LoopbackPorts.Free(), LoopbackPorts.Free());
        var config = System.IO.Path.Combine(folder, "silo.json");
        File.WriteAllText(config, $$"""
            // a cluster of one on Azure Table storage
            { "clusterId": "{{cluster}}", "clustering": "azure-table", "storage": "azure-table",
              "siloPort": {{siloPort}}, "gatewayPort": {{gatewayPort}}, "healthListen": "127.0.0.1:{{healthPort}}",
              "learning": { "store": "blob:{{cluster}}-learning" } }
            """);
        try
        {
            var vmId = "proc-vm-1";
            using (var silo = new SiloProcess(config, azurite.ConnectionString))
            {
                Eventually.True(() => Healthz(healthPort).StartsWith("200 ok", StringComparison.Ordinal) || silo.HasExited, TimeSpan.FromSeconds(60), "silo healthy",
                    () => $"{Healthz(healthPort)}; output: {silo.Problems()}");
                Assert.False(silo.HasExited, silo.Problems());
                // The probes the Kubernetes manifest uses (deploy/kubernetes/silo.yaml): storage-free, and the API only from loopback.
                Assert.StartsWith("200 alive", Healthz(healthPort, "/livez"), StringComparison.Ordinal);
                Assert.StartsWith("200 ready", Healthz(healthPort, "/readyz"), StringComparison.Ordinal);
                Assert.StartsWith("200 ", Healthz(healthPort, "/api/vms/nobody"), StringComparison.Ordinal);
                using var client = await ConnectAsync(cluster);
                var grains = client.Services.GetRequiredService<IClusterClient>();
                foreach (var stack in All)
                {
                    await grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
                }
                Assert.True((await grains.GetGrain<IVmGrain>(vmId).SetPolicyAsync(Policy("bulk", allow: ["std-ipv4", "arq-bulk"]))).Accepted);
            }
            // A new silo process, same tables: the catalog and the policy come back from storage.
            using (var silo = new SiloProcess(config, azurite.ConnectionString))
            {
                Eventually.True(() => Healthz(healthPort).StartsWith("200 ok: cluster " + cluster + ", 6 stack(s)", StringComparison.Ordinal) || silo.HasExited, TimeSpan.FromSeconds(90), "restarted silo healthy",
                    () => $"{Healthz(healthPort)}; output: {silo.Problems()}");
                using var client = await ConnectAsync(cluster);
                var view = await client.Services.GetRequiredService<IClusterClient>().GetGrain<IVmGrain>(vmId).GetAsync();
                Assert.Equal("bulk", view.Policy.Workload);
                Assert.Equal(["std-ipv4", "arq-bulk"], view.Policy.Allow);
            }
        }
        finally
        {
            System.IO.Directory.Delete(folder, recursive: true);
        }

        async Task<IHost> ConnectAsync(string clusterId)
        {
            var builder = Host.CreateApplicationBuilder();
            builder.UseOrleansClient(c => c
                .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (clusterId, "fabric"))
                .UseAzureStorageClustering(o => o.TableServiceClient = new TableServiceClient(azurite.ConnectionString)));
            var host = builder.Build();
            await host.StartAsync(TestContext.Current.CancellationToken);
            return host;
        }
    }

    [Fact]
    public void ABadConfig_IsRefusedNamingTheField()
    {
        var file = System.IO.Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, """{ "clustering": "zookeeper", "siloPort": 0, "healthListen": "nowhere", "learning": { "store": "/tmp/x", "minSupport": 0, "minOutcomes": 5, "trainingShare": 0 } }""");
            var (code, _, stderr) = Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file]);
            Assert.Equal(2, code);
            foreach (var expected in new[] { "clustering: 'zookeeper'", "siloPort: 0", "healthListen: 'nowhere'", "learning.minSupport: 0 is outside 1..1000000", "learning.minOutcomes: 5", "learning.trainingShare: 0 is outside (0, 1]" })
            {
                Assert.Contains(expected, stderr, StringComparison.Ordinal);
            }
            // A careless operator's silo on memory storage, which would forget every policy when it stops, does not start
            // unless told so; told, the same file is valid.
            File.WriteAllText(file, """{ "clusterId": "careless" }""");
            var (memoryCode, _, memory) = Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file, "--check"]);
            Assert.Equal(2, memoryCode);
            Assert.Contains("storage: memory forgets every policy, decision and catalog entry when the silo stops", memory, StringComparison.Ordinal);
            Assert.Equal(0, Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file, "--check", "--ephemeral"]).Code);
            File.WriteAllText(file, """{ "clusterId": "careless", "ephemeral": true }""");
            Assert.Equal(0, Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file, "--check"]).Code);
            File.WriteAllText(file, """{ "storage": "azure-table" }""");
            Assert.Contains("set FABRIC_TABLE_CONNECTION_STRING", Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file]).Stderr, StringComparison.Ordinal);
            // A careless operator's silo reachable beyond loopback without TLS and caller identity does not start.
            File.WriteAllText(file, """{ "advertisedAddress": "10.1.2.3" }""");
            Assert.Contains("security: required when advertisedAddress is not loopback", Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file]).Stderr,
                StringComparison.Ordinal);
            File.WriteAllText(file, """{ "security": { "certificate": "/nonexistent/silo.pem", "key": "", "authority": "/nonexistent/ca.pem" } }""");
            var stderr2 = Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", file]).Stderr;
            Assert.Contains("security.certificate: '/nonexistent/silo.pem' does not exist", stderr2, StringComparison.Ordinal);
            Assert.Contains("security.key: required", stderr2, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
    }
}
