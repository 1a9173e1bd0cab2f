using Fabric.Dashboard;
using Fabric.Dashboard.Services;
using Fabric.Programs;
using Fabric.Silo.Security;

// fabric-dashboard: the operator UI of a running cluster, an Orleans client of its silos. (The embedded default, with its
// own silo and simulated fleet, is fabric-embedded, which hosts this same UI.)
if (args is ["users", ..])
{
    return CommandLineConventions.Invoke(DashboardOptions.UsersCommandLine, args);
}
if (CommandLineConventions.Parse(DashboardOptions.Command, args, out var parsed) is { } exit)
{
    return exit;
}
DashboardOptions options;
WebApplicationBuilder builder;
ControlPlaneCredential? credential;
RevokedHosts? revocations = null;
try
{
    options = DashboardOptions.From(parsed);
    DashboardWeb.EnsureFree(options.Web.Listen);
    credential = options.Certificate is null ? null : ControlPlaneCredential.Load(options.Certificate, options.Key!, options.Authority!);
    if (credential is { Caller.Role: not CallerRole.Operator })
    {
        throw new FormatException($"--certificate '{options.Certificate}' is {credential.Caller}'s; the dashboard needs OU=operator");
    }
    try
    {
        revocations = credential is null ? null : SecurityHosting.Revocations(credential, options.RevocationList);
    }
    catch (InvalidOperationException e)
    {
        throw new FormatException($"--revocation-list: {e.Message}", e);
    }
    var held = revocations;
    builder = DashboardWeb.CreateBuilder(options.Web, Users.Load(options.UsersFile), new ClusterDeployment(options.ClusterId, () => held?.ListProblem()),
        services => services.GetRequiredService<IClusterClient>());
}
catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"fabric-dashboard: {e.Message}");
    Console.Error.WriteLine("See 'fabric-dashboard --help'.");
    return 2;
}

var attempts = 0;
var where = options.Clustering == "azure-table" ? "the membership table" : string.Join(", ", options.Gateways);
builder.UseOrleansClient(client =>
{
    if (credential is not null)
    {
        client.UseControlPlaneSecurity(credential, revocations!);
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

var app = DashboardWeb.Build(builder);
try
{
    await app.StartAsync();
}
catch (OperationCanceledException)
{
    // Ctrl+C before the cluster answered: nothing to report.
    return 0;
}
Console.WriteLine($"Fabric dashboard: {options.Web.Url}  (cluster {options.ClusterId} through {where}; users from {options.UsersFile})");
await app.WaitForShutdownAsync();
return 0;
