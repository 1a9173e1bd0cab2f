using System.Text.Json;
using System.Text.RegularExpressions;
using Fabric.Testing;
using Microsoft.Playwright;

namespace Fabric.Dashboard.Tests;

/// <summary>Runs alone: it starts a second embedded default whose agents are processes, beside the browser tests' one.</summary>
[CollectionDefinition(nameof(NamespaceFleetCollection), DisableParallelization = true)]
public sealed class NamespaceFleetCollection;

/// <summary>
/// The privileged option of the embedded default (<c>--namespaces</c>, root): the same fleet on real network
/// namespaces, veths and <c>fabric-agent</c> processes — the VMs' UDP crosses the emulated links, the agents obey the
/// silo through their uplinks, the dashboard shows the hosts' own NICs — and nothing of it is left after a stop.
/// </summary>
[Collection(nameof(NamespaceFleetCollection))]
public sealed class NamespaceFleetTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Namespaces_RunTheFleetAsAgentProcesses_CarryVmTraffic_ObeyTheSilo_AndAreDeletedOnStop()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        Assert.SkipUnless(File.Exists(BrowserFixture.Chromium), $"{BrowserFixture.Chromium} is not installed (./fabric test installs it as root)");
        await using var dashboard = new EmbeddedDashboard("--namespaces", "--hosts", "2", "--phase-seconds", "20");
        await dashboard.InitializeAsync();
        var id = Regex.Match(dashboard.Output, @"network namespaces (fbr\d+)-\*").Groups[1].Value;
        Assert.False(string.IsNullOrEmpty(id), dashboard.Output);
        string[] Left() => [.. Privileged.Run("ip", "netns", "list").Split('\n').Concat(Privileged.Run("ip", "-o", "link").Split('\n'))
            .Where(l => l.Contains(id, StringComparison.Ordinal))];

        var sockets = new[] { 1, 2 }.Select(h => Path.Combine(dashboard.DataDirectory, "run", "fleet", $"host-{h}", "api.sock")).ToArray();
        JsonElement Status(int host) => JsonDocument.Parse(AgentApi.Send(sockets[host - 1], """{"op":"status"}""")).RootElement.GetProperty("result").Clone();

        // Each host is a fabric-agent process answering on its API socket. web-1 sends UDP from its namespace to web-2: it crosses host-1's agent, the emulated link and host-2's agent
        // into web-2's veth; both agents are connected to the silo through their uplinks and have acknowledged its state.
        await Eventually.TrueAsync(() => Task.FromResult(
                Status(2).GetProperty("vms").EnumerateArray().Single(v => v.GetProperty("id").GetString() == "web-2/0").GetProperty("toVm").GetProperty("packets").GetInt64() > 100
                && new[] { 1, 2 }.All(h => Status(h).GetProperty("controlPlane").GetProperty("connected").GetBoolean())),
            Wait, "web-1's traffic delivered to web-2 and both agents connected", () => Task.FromResult(dashboard.Output));
        // Two host namespaces and six VM namespaces.
        var namespaces = Privileged.Run("ip", "netns", "list").Split('\n').Select(l => l.Split(' ')[0]).Where(n => n.StartsWith(id + "-", StringComparison.Ordinal)).ToList();
        Assert.Equal(8, namespaces.Count);

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = BrowserFixture.Chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await BrowserTests.SignInAsync(browser, dashboard.Url, dashboard.Admin.Name, dashboard.Admin.Password, "vms/web-1");
        var stacks = page.Locator("[data-testid^=path-] [data-testid=stack]");
        await Eventually.TrueAsync(async () => await stacks.CountAsync() == 1, Wait, "web-1's path", async () => await page.InnerTextAsync("body"));

        // The policy goes to the silo in this process; the decision reaches host-1's agent process, which applies it.
        // The page was opened directly (server-rendered first): a click before its circuit is up does nothing, so wait for
        // it, and try again if a click is still lost.
        await BrowserTests.LiveAsync(page);
        await Eventually.TrueAsync(async () =>
        {
            await page.ClickAsync("[data-testid=security-confidential]");
            await page.ClickAsync("[data-testid=save-policy]");
            await page.Locator("[data-testid=policy-accepted]").WaitForAsync(new() { Timeout = 3000 });
            return true;
        }, Wait, "the confidential policy accepted", async () => await page.InnerTextAsync("body"));
        await Eventually.TrueAsync(() => Task.FromResult(Status(1).GetProperty("paths").EnumerateArray().Single().GetProperty("bindings").EnumerateArray()
                .Any(b => b.GetProperty("vm").GetString() == "web-1/0" && b.GetProperty("stack").GetString() == "secure")),
            Wait, "host-1's agent binding web-1 to secure", async () => await page.InnerTextAsync("body"));
        await BrowserTests.ShotAsync(page, "namespaces-vm");

        // The host page shows the agent's own inventory: its uplink and the VMs' veths, in its namespace.
        await page.GotoAsync(dashboard.Url + "hosts/host-1");
        await Eventually.TrueAsync(async () => (await page.InnerTextAsync("body")) is var body && body.Contains("uplink0", StringComparison.Ordinal)
            && body.Contains("tap-web-1", StringComparison.Ordinal) && body.Contains("veth", StringComparison.Ordinal),
            Wait, "host-1's NICs", async () => await page.InnerTextAsync("body"));
        await BrowserTests.ShotAsync(page, "namespaces-host");

        // The overview says where each host runs: which agent process, in which namespace.
        await page.GotoAsync(dashboard.Url);
        await Eventually.TrueAsync(async () => (await page.InnerTextAsync("[data-testid=simulated-hosts]")).Contains($"in namespace {id}-host-2", StringComparison.Ordinal),
            Wait, "where the hosts run", async () => await page.InnerTextAsync("body"));

        // Ctrl+C: the agents stop, every namespace and veth of the run is deleted.
        Assert.Equal(0, await dashboard.StopAsync());
        Assert.Empty(Left());
    }

    [Fact]
    public async Task AKilledRun_LeavesItsNamespacesAndAgents_AndTheNextRunDeletesThem()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        string killedId;
        int[] killedAgents;
        await using (var killed = new EmbeddedDashboard("--namespaces", "--hosts", "2"))
        {
            await killed.InitializeAsync();
            killedId = Regex.Match(killed.Output, @"network namespaces (fbr\d+)-\*").Groups[1].Value;
            await Eventually.TrueAsync(() => Task.FromResult(Privileged.Run("ip", "netns", "list").Split('\n').Count(l => l.StartsWith(killedId + "-", StringComparison.Ordinal)) == 8),
                Wait, "the killed run's namespaces", () => Task.FromResult(killed.Output));
            await Eventually.TrueAsync(() => Task.FromResult(AgentsIn(killedId).Length == 2), Wait, "the killed run's agents", () => Task.FromResult(killed.Output));
            killedAgents = AgentsIn(killedId);
            await killed.KillAloneAsync();
        }
        Assert.Contains(Privileged.Run("ip", "netns", "list").Split('\n'), l => l.StartsWith(killedId + "-", StringComparison.Ordinal));

        await using var next = new EmbeddedDashboard("--namespaces", "--hosts", "2");
        await next.InitializeAsync();
        Assert.DoesNotContain(killedId, Privileged.Run("ip", "netns", "list"), StringComparison.Ordinal);
        Assert.DoesNotContain(killedId, Privileged.Run("ip", "-o", "link"), StringComparison.Ordinal);
        Assert.All(killedAgents, pid => Assert.False(File.Exists($"/proc/{pid}/cmdline") && File.ReadAllText($"/proc/{pid}/cmdline").Length > 0, $"agent {pid} of the killed run still runs"));
        Assert.Equal(0, await next.StopAsync());
    }

    /// <summary>Process ids in a run's host namespaces.</summary>
    private static int[] AgentsIn(string id) => [.. new[] { 1, 2 }
        .SelectMany(h => Privileged.TryRun("ip", "netns", "pids", $"{id}-host-{h}").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        .Select(p => int.Parse(p.Trim(), System.Globalization.CultureInfo.InvariantCulture))];
}
