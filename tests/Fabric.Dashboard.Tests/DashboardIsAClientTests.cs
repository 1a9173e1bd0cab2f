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

    /// <summary>
    /// Pages and components reach the grains only through the dashboard's services: beside fabric-embedded's silo, an
    /// injected grain factory would be the silo's own, calling as the silo.
    /// </summary>
    [Fact]
    public void NoComponent_TakesTheGrainsDirectly()
    {
        var components = Path.Combine(RepositoryRoot.Directory, "dashboard", "Fabric.Dashboard", "Components");
        var files = Directory.EnumerateFiles(components, "*", SearchOption.AllDirectories).Where(f => f.EndsWith(".razor", StringComparison.Ordinal) || f.EndsWith(".cs", StringComparison.Ordinal)).ToList();
        Assert.True(files.Count > 10, $"only {files.Count} components found under {components}");
        foreach (var file in files)
        {
            var text = File.ReadAllText(file);
            Assert.False(text.Contains("IGrainFactory", StringComparison.Ordinal) || text.Contains("IClusterClient", StringComparison.Ordinal)
                || text.Contains("GetGrain<", StringComparison.Ordinal), $"{file} reaches the grains itself");
        }
    }

    [GeneratedRegex("\"(Fabric\\.[A-Za-z.]+)/")]
    private static partial Regex FabricLibrary();
}
