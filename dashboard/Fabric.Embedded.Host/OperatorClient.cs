using System.Net;
using Fabric.Silo.Security;

namespace Fabric.Embedded.Host;

/// <summary>
/// The embedded default's dashboard reaches its silo as a cluster's dashboard does: an Orleans client at the silo's gateway
/// with an operator certificate from the development authority, so its pages are held to the operator's rule (they read
/// everything and change policies, learning and host membership, never speak for a host), not the silo's. Started after
/// the silo (hosted services start in order) and stopped before it.
/// </summary>
public sealed class OperatorClient(Simulation simulation, ILoggerFactory loggers) : IHostedService, IDisposable
{
    private IHost? _client;

    /// <summary>The grains as the operator calls them; throws until the client has started.</summary>
    public IGrainFactory Grains => _client?.Services.GetRequiredService<IClusterClient>()
        ?? throw new InvalidOperationException("the dashboard's client of the embedded silo has not started");

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        // Its warnings (a gateway lost, a call refused) go where the rest of the process's go, under the same filters.
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(loggers);
        builder.UseOrleansClient(client => client
            .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (simulation.Options.ClusterId, simulation.Options.ServiceId))
            .UseStaticClustering(IPEndPoint.Parse(simulation.Gateway!))
            .UseControlPlaneSecurity(simulation.Authority!.Issue(CallerRole.Operator, "embedded-dashboard")));
        var client = builder.Build();
        try
        {
            await client.StartAsync(cancellationToken);
        }
        catch
        {
            client.Dispose();
            throw;
        }
        _client = client;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_client is { } client)
        {
            await client.StopAsync(cancellationToken);
        }
    }

    public void Dispose() => _client?.Dispose();
}
