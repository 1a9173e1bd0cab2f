using Fabric.Testing;
using Orleans.TestingHost;
using static Fabric.Silo.Tests.Catalogs;

[assembly: AssemblyFixture(typeof(Azurite))]

namespace Fabric.Silo.Tests;

/// <summary>A two-silo cluster whose grains persist to Azure Table storage (a real Azurite): one silo stops mid-run.</summary>
public class FailoverTests(Azurite azurite)
{
    [Fact]
    public async Task ASiloStoppedMidRun_LosesNoPolicy_AndDecisionsContinueOnTheOther()
    {
        var builder = new InProcessTestClusterBuilder(2);
        var table = "fabric" + Guid.NewGuid().ToString("N")[..12];
        builder.ConfigureSilo((_, silo) => silo
            .AddAzureTableGrainStorage(Storage.Name, options =>
            {
                options.TableName = table;
                options.TableServiceClient = new Azure.Data.Tables.TableServiceClient(azurite.ConnectionString);
            })
            .AddFabricControlPlane(ClusterFixture.Selector));
        await using var cluster = builder.Build();
        await cluster.DeployAsync(TestContext.Current.CancellationToken);
        var client = cluster.Client;
        foreach (var stack in All)
        {
            await client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
        }
        var (a, b) = ("fo-host-a", "fo-host-b");
        // The client holds observers weakly: keep the agent object alive for the whole test.
        var agent = new RecordingAgent();
        var observer = client.CreateObjectReference<IAgentObserver>(agent);
        await client.GetGrain<IHostGrain>(a).RegisterAsync(new HostInfo(a, "127.0.0.1", null, 47110, [.. HostStacks], [], "test"), observer);
        var host = client.GetGrain<IHostGrain>(a);
        await host.ReportAsync([new PathSample(a, b, 30, 0.5, 1000, 0, 100, DateTimeOffset.UtcNow)], []);
        // Enough VMs that both silos hold some of them.
        var vms = Enumerable.Range(0, 12).Select(i => client.GetGrain<IVmGrain>($"fo-vm-{i}")).ToList();
        foreach (var vm in vms)
        {
            Assert.True((await vm.SetPolicyAsync(Policy("latency", deny: ["secure"]))).Accepted);
            await vm.PlaceAsync(new VmPlacement(a, "vm", 100, ["52:54:00:00:00:01"], null));
        }
        Assert.All(await Task.WhenAll(vms.Select(v => v.GetAsync().AsTask())), v => Assert.Equal("std-ipv4", v.Stacks[b]));

        await cluster.StopSiloAsync(cluster.Silos[1], TestContext.Current.CancellationToken);
        Assert.Single(cluster.Silos);

        // Loss on the path: every VM, wherever it lived, must still decide — with its policy intact.
        for (var i = 0; i < 100; i++)
        {
            await host.ReportAsync([new PathSample(a, b, 30, 0.5, 1000, 30, 100, DateTimeOffset.UtcNow)], []);
            var views = await Task.WhenAll(vms.Select(v => v.GetAsync().AsTask()));
            // A VM shows its new stack as soon as it decided; its host has it once the VM's bind call returns.
            if (views.All(v => v.Stacks.GetValueOrDefault(b) is { } s && s != "std-ipv4")
                && (await host.GetDesiredStateAsync()).Bindings.Count(x => x.Stack != "std-ipv4") == vms.Count)
            {
                break;
            }
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        var after = await Task.WhenAll(vms.Select(v => v.GetAsync().AsTask()));
        Assert.All(after, v =>
        {
            Assert.Equal("latency", v.Policy.Workload);
            Assert.Equal(["secure"], v.Policy.Deny);
            Assert.NotEqual("std-ipv4", v.Stacks[b]);
            Assert.NotEqual("secure", v.Stacks[b]);
        });
        Assert.Equal(vms.Count, (await host.GetDesiredStateAsync()).Bindings.Count(x => x.Stack != "std-ipv4"));
        GC.KeepAlive(agent);
    }
}
