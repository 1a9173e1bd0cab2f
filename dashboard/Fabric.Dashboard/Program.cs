using System.Net;
using System.Security.Claims;
using Fabric.Dashboard;
using Fabric.Dashboard.Components;
using Fabric.Embedded;
using Fabric.Programs;
using Fabric.Silo;
using Fabric.Silo.Security;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.Mvc;
using MudBlazor.Services;

// fabric-dashboard: the operator UI; with --embedded (the default) the whole system in one process.
if (args is ["users", ..])
{
    return CommandLineConventions.Invoke(DashboardOptions.UsersCommandLine, args);
}
if (CommandLineConventions.Parse(DashboardOptions.Command, args, out var parsed) is { } exit)
{
    return exit;
}
DashboardOptions options;
Users users;
DevelopmentRepository? repository = null;
FleetNetwork? network = null;
string? sourceRoot = null;
string? agentProgram = null;
DevelopmentAuthority? authority = null;
try
{
    options = DashboardOptions.From(parsed);
    EnsureFree(options.Listen);
    if (options.Embedded)
    {
        sourceRoot = options.SourceRoot ?? BuiltInStacks.FindSourceRoot(AppContext.BaseDirectory)
            ?? throw new FormatException("cannot find the Fabric checkout above this program: give --source-root DIR");
        users = Users.EnsureGenerated(Path.Combine(options.DataDirectory, "credentials.txt"), InitialPasswords(options));
        // Keys are kept; the repository and the agents' state are rebuilt from this build at every start.
        var run = Path.Combine(options.DataDirectory, "run");
        if (Directory.Exists(run))
        {
            Directory.Delete(run, recursive: true);
        }
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent?.Name is "Debug" ? "Debug" : "Release";
        repository = DevelopmentRepository.Create(Path.Combine(options.DataDirectory, "keys"), run, sourceRoot, configuration);
        // The embedded fleet's own certificate authority (kept in the data folder): the silo and each agent get theirs from it.
        authority = DevelopmentAuthority.LoadOrCreate(Path.Combine(options.DataDirectory, "authority"));
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
    }
    else
    {
        users = Users.Load(options.UsersFile!);
    }
}
catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException or InvalidOperationException or Fabric.Repository.PackageException
    or Fabric.Repository.TrustException or System.Security.Cryptography.CryptographicException)
{
    Console.Error.WriteLine($"fabric-dashboard: {e.Message}");
    Console.Error.WriteLine("See 'fabric-dashboard --help'.");
    return 2;
}

var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
// MudBlazor's files come from its package folder through the static web assets manifest, in every environment.
builder.WebHost.UseStaticWebAssets();
System.Security.Cryptography.X509Certificates.X509Certificate2? tls = null;
if (options.TlsCertificate is not null)
{
    try
    {
        tls = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPemFile(options.TlsCertificate, options.TlsKey);
    }
    catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or IOException or ArgumentException)
    {
        Console.Error.WriteLine($"fabric-dashboard: --tls-certificate '{options.TlsCertificate}' with --tls-key '{options.TlsKey}': {e.Message}");
        return 2;
    }
}
builder.WebHost.UseKestrel(k => k.Listen(options.Listen, listen =>
{
    if (tls is not null)
    {
        listen.UseHttps(tls);
    }
}));
// Ctrl+C ends within 15 s even when a part does not stop on its own (the fleet's agents and namespaces stop first, the
// silo's graceful shutdown is cut short after that); the default, 30 s, is as long as an operator's patience.
builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(15));
builder.Logging.ClearProviders().AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
builder.Logging.AddFilter("Orleans", LogLevel.Warning)
    // Orleans' watchdog warns once at start of a "participant check" late by the hours since boot: noise for a newcomer.
    .AddFilter("Orleans.Runtime.Watchdog", LogLevel.Error).AddFilter("Microsoft", LogLevel.Warning).AddFilter("Polly", LogLevel.Warning)
    .AddFilter("Fabric.Embedded", LogLevel.Warning).AddFilter("Microsoft.AspNetCore.DataProtection", LogLevel.Error)
    // The catalog sync says the same line every 30 s; what matters (a failure) is a warning.
    .AddFilter("Fabric.Silo.CatalogSync", LogLevel.Warning).AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);

var simulation = new Simulation(options, repository) { Network = network, AgentProgram = agentProgram };
builder.Services.AddSingleton(simulation);
builder.Services.AddSingleton(users);
builder.Services.AddSingleton(_ => new SignInThrottle(TimeProvider.System));
builder.Services.AddSingleton(new ProcessMeter());
if (options.Embedded)
{
    var (siloPort, gatewayPort) = (FreePort(), FreePort());
    // On loopback; with --namespaces where the host namespaces reach it (their uplinks' root side), never on any address.
    var siloAddress = network is null ? IPAddress.Loopback : FleetNetwork.ControlPlaneAddress;
    simulation.Gateway = $"{siloAddress}:{gatewayPort}";
    simulation.Authority = authority;
    builder.UseOrleans(silo => silo
        .UseDevelopmentClustering(new IPEndPoint(siloAddress, siloPort))
        .UseControlPlaneSecurity(authority!.Issue(CallerRole.Silo, "embedded"))
        .ConfigureEndpoints(siloAddress, siloPort, gatewayPort)
        .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (options.ClusterId, options.ServiceId))
        .AddEmbeddedControlPlane(Path.Combine(options.DataDirectory, "learning")));
    builder.Services.AddSingleton(new CatalogSource(repository!.Path, repository.TrustRoot, Path.Combine(options.DataDirectory, "run", "silo"), 30));
    builder.Services.AddHostedService<CatalogSync>();
    builder.Services.AddHostedService<SimulationRunner>();
}
else
{
    var attempts = 0;
    ControlPlaneCredential? credential;
    try
    {
        credential = options.Certificate is null ? null : ControlPlaneCredential.Load(options.Certificate, options.Key!, options.Authority!);
    }
    catch (FormatException e)
    {
        Console.Error.WriteLine($"fabric-dashboard: {e.Message}");
        return 2;
    }
    if (credential is { Caller.Role: not CallerRole.Operator })
    {
        Console.Error.WriteLine($"fabric-dashboard: --certificate '{options.Certificate}' is {credential.Caller}'s; the dashboard needs OU=operator");
        return 2;
    }
    var where = options.Clustering == "azure-table" ? "the membership table" : string.Join(", ", options.Gateways);
    builder.UseOrleansClient(client =>
    {
        if (credential is not null)
        {
            client.UseControlPlaneSecurity(credential);
        }
        if (options.Clustering == "azure-table")
        {
            client.UseAzureStorageClustering(o => o.TableServiceClient = new Azure.Data.Tables.TableServiceClient(Environment.GetEnvironmentVariable("FABRIC_TABLE_CONNECTION_STRING")));
        }
        else
        {
            client.UseStaticClustering([.. options.Gateways]);
        }
        // A silo that is not up yet is waited for (said every 5 attempts), not a reason to exit.
        client.UseConnectionRetryFilter(async (e, cancellationToken) =>
            {
                if (++attempts % 5 == 1)
                {
                    Console.Error.WriteLine($"fabric-dashboard: waiting for the silo at {where}: {e.Message}");
                }
                await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
                return true;
            })
            .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (options.ClusterId, options.ServiceId));
    });
}

builder.Services.AddAuthentication(CookieAuthenticationDefaults.AuthenticationScheme)
    .AddCookie(o =>
    {
        o.LoginPath = "/login";
        o.AccessDeniedPath = "/login";
        o.Cookie.Name = "fabric-dashboard";
        o.Cookie.HttpOnly = true;
        o.Cookie.SameSite = SameSiteMode.Strict;
        o.ExpireTimeSpan = TimeSpan.FromHours(8);
        o.SlidingExpiration = true;
        // Over HTTPS the cookie never travels in clear (there is no plain listener beside it).
        o.Cookie.SecurePolicy = tls is null ? CookieSecurePolicy.SameAsRequest : CookieSecurePolicy.Always;
        // A user removed from the users file, or given another role, is signed out at their next request.
        o.Events.OnValidatePrincipal = async context =>
        {
            var known = context.HttpContext.RequestServices.GetRequiredService<Users>();
            if (context.Principal is not { } principal || !known.StillValid(principal))
            {
                context.RejectPrincipal();
                if (known.Error is null)
                {
                    // Removed, demoted or given another password: the cookie goes. (While the file does not read, nobody
                    // is let in, but cookies are kept for when it is fixed.)
                    await context.HttpContext.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme);
                }
            }
        };
    });
// A page already open (a live circuit) is re-checked against the users file every few seconds too.
builder.Services.AddScoped<Microsoft.AspNetCore.Components.Authorization.AuthenticationStateProvider, UsersRevalidation>();
builder.Services.AddAuthorization();
// Sign-ins survive a restart: the cookie keys live in the data folder (owner-only), not in memory.
var protectionKeys = Directory.CreateDirectory(Path.Combine(options.DataDirectory, "dataprotection"));
File.SetUnixFileMode(protectionKeys.FullName, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
builder.Services.AddDataProtection().PersistKeysToFileSystem(protectionKeys).SetApplicationName("fabric-dashboard");
builder.Services.AddCascadingAuthenticationState();
builder.Services.AddRazorComponents().AddInteractiveServerComponents();
builder.Services.AddMudServices();

var app = builder.Build();
app.UseAuthentication();
app.UseAuthorization();
app.UseAntiforgery();
app.MapStaticAssets();
app.MapRazorComponents<App>().AddInteractiveServerRenderMode();

app.MapPost("/account/login", async (HttpContext http, [FromForm] string? username, [FromForm] string? password, [FromForm] string? returnUrl, Users known,
    SignInThrottle throttle) =>
{
    var back = returnUrl is { Length: > 0 } r && r.StartsWith('/') && !r.StartsWith("//", StringComparison.Ordinal) ? r : "/";
    // The client's own address (behind a reverse proxy this is the proxy's: then the per-name limit is what holds).
    var address = http.Connection.RemoteIpAddress?.ToString() ?? "";
    if (throttle.Locked(username, address) is { } wait)
    {
        return Results.LocalRedirect($"/login?error=locked&minutes={(int)Math.Ceiling(wait.TotalMinutes)}&returnUrl={Uri.EscapeDataString(back)}");
    }
    if (await throttle.HashAsync(() => known.Check(username, password)) is not { } user)
    {
        if (known.Error is { } broken)
        {
            // Fail closed: no one signs in while the file does not read; the operator learns why here.
            app.Logger.LogWarning("Sign-in refused: {Error}", broken);
        }
        throttle.Failed(username, address);
        return Results.LocalRedirect($"/login?error=1&returnUrl={Uri.EscapeDataString(back)}");
    }
    throttle.Succeeded(username);
    var identity = new ClaimsIdentity(known.ClaimsOf(user), CookieAuthenticationDefaults.AuthenticationScheme);
    await http.SignInAsync(CookieAuthenticationDefaults.AuthenticationScheme, new ClaimsPrincipal(identity));
    return Results.LocalRedirect(back);
});
app.MapPost("/account/logout", async (HttpContext http) =>
{
    await http.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme);
    return Results.LocalRedirect("/login");
});

try
{
    await app.StartAsync();
}
catch (OperationCanceledException)
{
    // Ctrl+C before the silo was up: nothing to report, but what --namespaces made goes.
    network?.Dispose();
    return 0;
}
var url = $"{(tls is null ? "http" : "https")}://{(options.Listen.Address.Equals(IPAddress.Any) ? "127.0.0.1" : options.Listen.Address)}:{options.Listen.Port}/";
Console.WriteLine(options.Embedded
    ? $"Fabric is running on its embedded default: {options.Hosts} simulated hosts{(network is null ? "" : $" as fabric-agent processes in network namespaces {network.Id}-*")}, a silo, "
      + $"stacks signed by the development key in {Path.Combine(options.DataDirectory, "keys")}.\n"
      + $"Dashboard: {url}  (sign in as 'admin' for changes or 'viewer' to look; the generated passwords are in {InitialPasswords(options)}; "
      + $"change them with 'fabric-dashboard users set --users {users.Path} NAME ROLE')\nCtrl+C stops it."
    : $"Fabric dashboard: {url}  (cluster {options.ClusterId} through {(options.Clustering == "azure-table" ? "the membership table" : string.Join(", ", options.Gateways))}; users from {users.Path})");
await app.WaitForShutdownAsync();
return 0;

// Said before anything starts (a silo and a fleet would otherwise run up to the moment the web server fails to bind).
static void EnsureFree(IPEndPoint listen)
{
    try
    {
        var probe = new System.Net.Sockets.TcpListener(listen);
        probe.Start();
        probe.Stop();
    }
    catch (System.Net.Sockets.SocketException e)
    {
        throw new IOException($"cannot listen on {listen}: {e.Message} (is Fabric already running? give another --listen ADDR:PORT)");
    }
}

static string InitialPasswords(DashboardOptions options) => Path.Combine(options.DataDirectory, "initial-passwords.txt");

static int FreePort()
{
    using var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    return ((IPEndPoint)listener.LocalEndpoint).Port;
}
