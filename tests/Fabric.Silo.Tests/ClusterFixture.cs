using Fabric.Silo.Selection;
using Orleans.TestingHost;

namespace Fabric.Silo.Tests;

/// <summary>A real two-silo cluster in this process (memory storage, Fabric's grains), shared by the grain tests.</summary>
public sealed class ClusterFixture : IAsyncLifetime
{
    /// <summary>Short enough for tests to watch a switch happen, long enough to be a real hysteresis.</summary>
    public static readonly SelectorOptions Selector = new(0.10, TimeSpan.FromMilliseconds(400));

    public InProcessTestCluster Cluster { get; private set; } = null!;

    public IClusterClient Client => Cluster.Client;

    public async ValueTask InitializeAsync() => Cluster = await StartAsync(2);

    /// <summary>
    /// Deploys <paramref name="silos"/> silos on memory storage with Fabric's grains (and what <paramref name="services"/>
    /// adds to each silo) and publishes the test catalog: a cluster of a test's own when it changes a silo's services.
    /// </summary>
    public static async Task<InProcessTestCluster> StartAsync(short silos, Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>? services = null)
    {
        var builder = new InProcessTestClusterBuilder(silos);
        builder.ConfigureSilo((_, silo) =>
        {
            services?.Invoke(silo.Services);
            silo.AddMemoryGrainStorage(Storage.Name).AddFabricControlPlane(Selector);
        });
        var cluster = builder.Build();
        await cluster.DeployAsync();
        var catalog = cluster.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        foreach (var stack in Catalogs.All)
        {
            await catalog.PublishAsync(stack);
        }
        return cluster;
    }

    public async ValueTask DisposeAsync() => await Cluster.DisposeAsync();
}

[CollectionDefinition(Name)]
public sealed class ClusterCollection : ICollectionFixture<ClusterFixture>
{
    public const string Name = "cluster";
}
