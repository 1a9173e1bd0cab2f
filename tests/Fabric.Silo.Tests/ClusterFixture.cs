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

    public async ValueTask InitializeAsync()
    {
        var builder = new InProcessTestClusterBuilder(2);
        builder.ConfigureSilo((_, silo) => silo.AddMemoryGrainStorage(Storage.Name).AddFabricControlPlane(Selector));
        Cluster = builder.Build();
        await Cluster.DeployAsync();
        var catalog = Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        foreach (var stack in Catalogs.All)
        {
            await catalog.PublishAsync(stack);
        }
    }

    public async ValueTask DisposeAsync() => await Cluster.DisposeAsync();
}

[CollectionDefinition(Name)]
public sealed class ClusterCollection : ICollectionFixture<ClusterFixture>
{
    public const string Name = "cluster";
}
