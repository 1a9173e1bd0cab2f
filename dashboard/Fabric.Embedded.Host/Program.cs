using System.Net;
using Fabric.Dashboard;
using Fabric.Embedded;
using Fabric.Embedded.Host;
using Fabric.Programs;
using Fabric.Silo;
using Fabric.Silo.Security;

// fabric-embedded: Fabric on its embedded default in one process (silo, signed repository, simulated fleet, dashboard).
if (CommandLineConventions.Parse(EmbeddedOptions.Command, args, out var parsed) is { } exit)
{
    return exit;
}
EmbeddedOptions options;
Simulation simulation;
WebApplicationBuilder builder;
try
{
    options = EmbeddedOptions.From(parsed);
    DashboardWeb.EnsureFree(options.Web.Listen);
    var data = options.Web.DataDirectory;
    var sourceRoot = options.SourceRoot ?? BuiltInStacks.FindSourceRoot(AppContext.BaseDirectory)
        ?? throw new FormatException("cannot find the Fabric checkout above this program: give --source-root DIR");
    var users = Users.EnsureGenerated(Path.Combine(data, "credentials.txt"), InitialPasswords(options));
    // Keys are kept; the repository and the agents' state are rebuilt from this build at every start.
    var run = Path.Combine(data, "run");
    if (Directory.Exists(run))
    {
        Directory.Delete(run, recursive: true);
    }
    var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent?.Name is "Debug" ? "Debug" : "Release";
    var repository = DevelopmentRepository.Create(Path.Combine(data, "keys"), run, sourceRoot, configuration);
    // The embedded fleet's own certificate authority (kept in the data folder): the silo, each agent and the pages' client
    // get theirs from it. Read before anything is made that would need undoing.
    var authority = DevelopmentAuthority.LoadOrCreate(Path.Combine(data, "authority"));
    FleetNetwork? network = null;
    string? agentProgram = null;
    if (options.Namespaces)
    {
        agentProgram = Path.Combine(sourceRoot, "dataplane-agent", "Fabric.Agent.Host", "bin", configuration, "net10.0", "fabric-agent");
        if (FleetNetwork.Unavailable() is { } why)
        {
            throw new FormatException(why);
        }
        if (!File.Exists(agentProgram))
        {
            throw new FormatException($"--namespaces runs {agentProgram}, which is not built (dotnet build Fabric.sln -c {configuration})");
        }
        // Made before the silo starts: its gateway listens on the hosts' side of their uplinks.
        network = FleetNetwork.Create(options.Hosts);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => network.Dispose();
    }
    simulation = new Simulation(options, repository)
    {
        Network = network,
        AgentProgram = agentProgram,
        Authority = authority,
    };
    // The pages call the silo through the operator's client, as any cluster's dashboard does (never as the silo itself).
    builder = DashboardWeb.CreateBuilder(options.Web, users, simulation, services => services.GetRequiredService<OperatorClient>().Grains);
}
catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException or InvalidOperationException or Fabric.Repository.PackageException
    or Fabric.Repository.TrustException or System.Security.Cryptography.CryptographicException)
{
    Console.Error.WriteLine($"fabric-embedded: {e.Message}");
    Console.Error.WriteLine("See 'fabric-embedded --help'.");
    return 2;
}

builder.Logging.AddFilter("Fabric.Embedded", LogLevel.Warning)
    // The catalog sync says the same line every 30 s; what matters (a failure) is a warning.
    .AddFilter("Fabric.Silo.CatalogSync", LogLevel.Warning);
builder.Services.AddSingleton(simulation);
var (siloPort, gatewayPort) = (FreePort(), FreePort());
// On loopback; with --namespaces where the host namespaces reach it (their uplinks' root side), never on any address.
var siloAddress = simulation.Network is null ? IPAddress.Loopback : FleetNetwork.ControlPlaneAddress;
simulation.Gateway = $"{siloAddress}:{gatewayPort}";
builder.UseOrleans(silo => silo
    .UseDevelopmentClustering(new IPEndPoint(siloAddress, siloPort))
    .UseControlPlaneSecurity(simulation.Authority!.Issue(CallerRole.Silo, "embedded"))
    .ConfigureEndpoints(siloAddress, siloPort, gatewayPort)
    .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (options.ClusterId, options.ServiceId))
    .AddEmbeddedControlPlane(Path.Combine(options.Web.DataDirectory, "learning")));
builder.Services.AddSingleton(new CatalogSource(simulation.DevelopmentRepository.Path, simulation.DevelopmentRepository.TrustRoot,
    Path.Combine(options.Web.DataDirectory, "run", "silo"), 30));
builder.Services.AddHostedService<CatalogSync>();
builder.Services.AddSingleton<OperatorClient>();
builder.Services.AddHostedService(services => services.GetRequiredService<OperatorClient>());
builder.Services.AddHostedService<SimulationRunner>();

var app = DashboardWeb.Build(builder);
try
{
    await app.StartAsync();
}
catch (OperationCanceledException)
{
    // Ctrl+C before the silo was up: nothing to report, but what --namespaces made goes.
    simulation.Network?.Dispose();
    return 0;
}
catch (Exception e) when (e is not OutOfMemoryException)
{
    // A part that did not start (the silo's ports, the pages' client refused by the silo): said in one line, and what did
    // start is stopped.
    Console.Error.WriteLine($"fabric-embedded: did not start: {e.Message}");
    await app.StopAsync(CancellationToken.None);
    simulation.Network?.Dispose();
    return 1;
}
Console.WriteLine($"Fabric is running on its embedded default: {options.Hosts} simulated hosts"
    + $"{(simulation.Network is null ? "" : $" as fabric-agent processes in network namespaces {simulation.Network.Id}-*")}, a silo, "
    + $"stacks signed by the development key in {Path.Combine(options.Web.DataDirectory, "keys")}.\n"
    + $"Dashboard: {options.Web.Url}  (sign in as 'admin' for changes or 'viewer' to look; the generated passwords are in {InitialPasswords(options)}; "
    + $"change them with 'fabric-dashboard users set --users {Path.Combine(options.Web.DataDirectory, "credentials.txt")} NAME ROLE')\nCtrl+C stops it.");
await app.WaitForShutdownAsync();
return 0;

static string InitialPasswords(EmbeddedOptions options) => Path.Combine(options.Web.DataDirectory, "initial-passwords.txt");

static int FreePort()
{
    using var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    return ((IPEndPoint)listener.LocalEndpoint).Port;
}
