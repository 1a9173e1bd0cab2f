using System.Text.RegularExpressions;
using Fabric.Testing;

namespace Fabric.Dashboard.Tests;

/// <summary>
/// fabric-dashboard is a client of the cluster: what it ships holds the grain contracts and the control channel's security,
/// never the grains, an agent, the repository or the simulated fleet (those are fabric-embedded's), so a dashboard deployed
/// beside a cluster cannot host a silo or a fleet of its own.
/// </summary>
public sealed partial class DashboardIsAClientTests
{
    [Fact]
    public void FabricDashboard_ShipsTheGrainContracts_AndNothingOfTheSiloOrTheFleet()
    {
        var deps = File.ReadAllText(Processes.Built("dashboard/Fabric.Dashboard", "fabric-dashboard.deps.json"));
        var fabric = FabricLibrary().Matches(deps).Select(m => m.Groups[1].Value).Distinct().Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(["Fabric.Programs", "Fabric.Silo.Abstractions", "Fabric.Silo.Security"], fabric);
        Assert.DoesNotContain("Microsoft.Orleans.Server/", deps, StringComparison.Ordinal);
        // The embedded default's host is where they are: the check above would pass on a file that lists nothing.
        var embedded = File.ReadAllText(Processes.Built("dashboard/Fabric.Embedded.Host", "fabric-embedded.deps.json"));
        foreach (var part in new[] { "Fabric.Silo.Grains", "Fabric.Embedded", "Fabric.Agent", "Fabric.Repository", "fabric-dashboard" })
        {
            Assert.Contains($"\"{part}/", embedded, StringComparison.Ordinal);
        }
    }

    [GeneratedRegex("\"(Fabric\\.[A-Za-z.]+)/")]
    private static partial Regex FabricLibrary();
}
