using System.CommandLine;
using System.Net;
using Azure.Data.Tables;
using Fabric.Silo;
using Fabric.Silo.Host;
using Fabric.Silo.Security;
using Fabric.Silo.Selection;
using Orleans.Runtime;
using Fabric.Programs;
using OpenTelemetry.Metrics;

// fabric-silo: one silo of Fabric's control plane.
// GET http://HEALTH_LISTEN/healthz answers 200 with the silo's view once grains answer, 503 otherwise; /livez and /readyz are
// the probes that never touch storage.
var configOption = new Option<string?>("--config")
{
    Description = "the silo's configuration (fields in silo/README.md); without it: localhost clustering, memory storage",
    HelpName = "FILE",
};
var checkOption = new Option<bool>("--check") { Description = "check the configuration and exit: 0 when it is valid, 2 naming every problem" };
var ephemeralOption = new Option<bool>("--ephemeral") { Description = "accept memory storage with a configuration file: every policy and decision is lost when the silo stops" };
if (CommandLineConventions.Parse(new RootCommand("fabric-silo: one silo of Fabric's control plane (Orleans).") { configOption, checkOption, ephemeralOption }, args, out var parsed) is { } exit)
{
    return exit;
}
var configPath = parsed.GetValue(configOption);
SiloConfig config;
try
{
    config = SiloConfig.Load(configPath, parsed.GetValue(ephemeralOption));
}
catch (Exception e) when (e is FormatException or IOException)
{
    Console.Error.WriteLine($"fabric-silo: {e.Message}");
    return 2;
}

ControlPlaneCredential? credential = null;
if (config.Security is { } security)
{
    try
    {
        credential = ControlPlaneCredential.Load(security.Certificate, security.Key, security.Authority);
    }
    catch (FormatException e)
    {
        Console.Error.WriteLine($"fabric-silo: security: {e.Message}");
        return 2;
    }
    if (credential.Caller.Role != CallerRole.Silo)
    {
        Console.Error.WriteLine($"fabric-silo: security.certificate: '{security.Certificate}' is {credential.Caller}'s; a silo needs OU=silo");
        return 2;
    }
    if (security.RevocationList is { } list)
    {
        try
        {
            new RevocationListFile(list, credential.Authority).ReadIfChanged();
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"fabric-silo: security.revocationList: {e.Message}");
            return 2;
        }
    }
}
if (parsed.GetValue(checkOption))
{
    // Everything a start reads before it joins the cluster: the configuration, the silo's certificate and the revocation list.
    Console.WriteLine($"fabric-silo: {configPath ?? "defaults"}: valid{(credential is null ? "" : $", certificate of {credential.Caller}")}");
    return 0;
}

var builder = WebApplication.CreateSlimBuilder();
builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
// Per-call resilience and per-request web logs say nothing an operator needs at Information.
builder.Logging.AddFilter("Polly", LogLevel.Warning).AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
var health = IPEndPoint.Parse(config.HealthListen);
builder.WebHost.UseKestrel(k => k.Listen(health));
// A leaving silo hands its grains over (Orleans' graceful shutdown) within this time; systemd and Kubernetes wait longer.
builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(config.ShutdownSeconds));
builder.UseOrleans(silo =>
{
    silo.Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (config.ClusterId, config.ServiceId));
    // A dead silo's grains (and so its VMs' decisions) stop until the cluster declares it dead: after missedProbes probes
    // of probeSeconds each fail (6 s by default; Orleans' own 3 × 5 s = 15 s left VMs without decisions too long).
    silo.Configure<Orleans.Configuration.ClusterMembershipOptions>(o => (o.ProbeTimeout, o.NumMissedProbesLimit) = (TimeSpan.FromSeconds(config.ProbeSeconds), config.MissedProbes));
    var connection = Environment.GetEnvironmentVariable(SiloConfig.ConnectionVariable);
    var redis = Environment.GetEnvironmentVariable(SiloConfig.RedisVariable);
    if (config.Clustered)
    {
        if (config.Clustering == "redis")
        {
            silo.UseRedisClustering(o => o.ConfigurationOptions = StackExchange.Redis.ConfigurationOptions.Parse(redis!));
        }
        else
        {
            silo.UseAzureStorageClustering(o => o.TableServiceClient = new TableServiceClient(connection));
        }
        silo.ConfigureEndpoints(config.AdvertisedAddress is null ? IPAddress.Loopback : IPAddress.Parse(config.AdvertisedAddress), config.SiloPort, config.GatewayPort);
    }
    else if (config.AdvertisedAddress is { } advertised)
    {
        // One silo, reachable by agents on other hosts: its gateway on every address, announced as this one. Announced on
        // loopback (where it may run without security) it listens on loopback only.
        var address = IPAddress.Parse(advertised);
        silo.UseDevelopmentClustering(new IPEndPoint(address, config.SiloPort));
        silo.ConfigureEndpoints(address, config.SiloPort, config.GatewayPort, listenOnAnyHostAddress: !IPAddress.IsLoopback(address));
    }
    else
    {
        // Its own ids, or it would name the cluster "dev" and agents configured with the cluster's ids could not join.
        silo.UseLocalhostClustering(config.SiloPort, config.GatewayPort, serviceId: config.ServiceId, clusterId: config.ClusterId);
    }
    if (config.Storage == "azure-table")
    {
        silo.AddAzureTableGrainStorage(Storage.Name, o => o.TableServiceClient = new TableServiceClient(connection));
    }
    else if (config.Storage == "redis")
    {
        silo.AddRedisGrainStorage(Storage.Name, o => o.ConfigurationOptions = StackExchange.Redis.ConfigurationOptions.Parse(redis!));
    }
    else
    {
        silo.AddMemoryGrainStorage(Storage.Name);
    }
    if (credential is not null)
    {
        silo.UseControlPlaneSecurity(credential, config.Security!.RevocationList);
    }
    silo.AddFabricControlPlane(new SelectorOptions(config.SelectorMargin, TimeSpan.FromMilliseconds(config.SelectorSustainMilliseconds)), config.Learning,
        new Fabric.Silo.Rollouts.RolloutOptions { Bake = TimeSpan.FromSeconds(config.RolloutBakeSeconds), MinSamples = config.RolloutMinPaths });
});
if (config.MetricsListen is { } metrics)
{
    var endpoint = IPEndPoint.Parse(metrics);
    builder.Services.AddOpenTelemetry().WithMetrics(m => m
        .AddMeter("Microsoft.Orleans")
        .AddPrometheusHttpListener(o => (o.Host, o.Port) = (endpoint.Address.ToString(), endpoint.Port)));
}
if (config.Repository is { } repository)
{
    builder.Services.AddSingleton(repository);
    builder.Services.AddHostedService<CatalogSync>();
}
var app = builder.Build();
app.MapGet("/healthz", async (IGrainFactory grains, CancellationToken cancellationToken) =>
{
    try
    {
        var stacks = await grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5), cancellationToken);
        return Results.Text($"ok: cluster {config.ClusterId}, {stacks.Length} stack(s) in the catalog\n");
    }
    catch (Exception e) when (e is TimeoutException or OrleansException)
    {
        return Results.Text($"unhealthy: {e.Message}\n", statusCode: 503);
    }
});
// Probes that never touch storage (a storage outage must not get serving silos restarted): alive while the process
// serves HTTP; ready while this silo is Active in the cluster's membership as it last saw it.
app.MapGet("/livez", () => Results.Text("alive\n"));
app.MapGet("/readyz", (IClusterMembershipService membership, ILocalSiloDetails local) =>
    membership.CurrentSnapshot.GetSiloStatus(local.SiloAddress) is var status && status == SiloStatus.Active
        ? Results.Text($"ready: {local.SiloAddress} active\n")
        : Results.Text($"not ready: {local.SiloAddress} {status}\n", statusCode: 503));
// Read-only views for operators and scripts (the dashboard is the full UI): a VM's policy, stacks and decision log with
// every candidate's score and the reason; a host's inventory, desired state and acknowledged version; the rollouts. Only from this
// machine (a connection to loopback): they carry no caller identity, and healthListen may be on every address for probes.
var api = app.MapGroup("/api").AddEndpointFilter(async (context, next) =>
    context.HttpContext.Connection.LocalIpAddress is { } local && IPAddress.IsLoopback(local.IsIPv4MappedToIPv6 ? local.MapToIPv4() : local)
        ? await next(context)
        : Results.Text("the silo's API answers on loopback only\n", statusCode: 403));
api.MapGet("/vms/{id}", async (string id, IGrainFactory grains) => Results.Json(await grains.GetGrain<IVmGrain>(id).GetAsync()));
api.MapGet("/hosts/{id}", async (string id, IGrainFactory grains) =>
{
    var host = grains.GetGrain<IHostGrain>(id);
    return Results.Json(new
    {
        Info = await host.GetInfoAsync(),
        Desired = await host.GetDesiredStateAsync(),
        Acknowledged = await host.GetAcknowledgedAsync(),
        Peers = await host.ListPeersAsync(),
    });
});
// Every stack's rollout (rings, gates with their evidence, steps) and the versions judged bad; statuses and verdicts by name.
var namedEnums = new System.Text.Json.JsonSerializerOptions(System.Text.Json.JsonSerializerDefaults.Web) { Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() } };
api.MapGet("/rollouts", async (IGrainFactory grains) =>
{
    var catalog = grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
    return Results.Json(new { Rollouts = await catalog.ListRolloutsAsync(), Bad = await catalog.ListBadAsync() }, namedEnums);
});
await app.RunAsync();
return 0;
