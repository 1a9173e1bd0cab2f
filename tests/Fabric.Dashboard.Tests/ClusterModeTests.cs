using System.Diagnostics;
using Fabric.Testing;
using Microsoft.Playwright;

namespace Fabric.Dashboard.Tests;

/// <summary>
/// The dashboard as an Orleans client of a separate <c>fabric-silo</c> process (cluster mode), with users from a file:
/// over TLS with an operator's certificate, it signs in and shows the fleet; when the silo goes away the pages say so instead of failing.
/// </summary>
public sealed class ClusterModeTests
{
    [Fact]
    public async Task AgainstARunningSilo_TheDashboardShowsTheFleet_AndSaysWhenTheSiloIsGone()
    {
        Assert.SkipUnless(File.Exists(BrowserFixture.Chromium), $"{BrowserFixture.Chromium} is not installed (./fabric test installs it as root)");
        var folder = Directory.CreateTempSubdirectory("fabric-cluster-dashboard-").FullName;
        var (siloPort, gatewayPort, healthPort) = (LoopbackPorts.Free(), LoopbackPorts.Free(), LoopbackPorts.Free());
        var config = Path.Combine(folder, "silo.json");
        // The control channel as a real fleet runs it: TLS, the silo's and the dashboard's certificates from one authority.
        using var authority = Fabric.Silo.Security.DevelopmentAuthority.Create("Fabric test authority");
        var silocert = authority.IssueFiles(Path.Combine(folder, "pki"), Fabric.Silo.Security.CallerRole.Silo, "silo-1");
        var opcert = authority.IssueFiles(Path.Combine(folder, "pki"), Fabric.Silo.Security.CallerRole.Operator, "dashboard");
        File.WriteAllText(config, $$"""
            { "clusterId": "dash", "serviceId": "dash", "ephemeral": true, "siloPort": {{siloPort}}, "gatewayPort": {{gatewayPort}}, "healthListen": "127.0.0.1:{{healthPort}}",
              "security": { "certificate": "{{silocert.Certificate}}", "key": "{{silocert.Key}}", "authority": "{{silocert.Authority}}" } }
            """);
        // The users file as an operator makes it: passwords given to the command, only their hashes in the file.
        var users = Path.Combine(folder, "users");
        EmbeddedDashboard.SetUser(users, "ops", "correct-horse-battery", "admin");
        EmbeddedDashboard.SetUser(users, "auditor", "staple-battery-horse", "read-only");
        Assert.DoesNotContain("correct-horse-battery", File.ReadAllText(users), StringComparison.Ordinal);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(users));
        var silo = Process.Start(new ProcessStartInfo(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", config]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        await using var dashboard = new EmbeddedDashboard("--gateway", $"127.0.0.1:{gatewayPort}", "--users", users, "--cluster-id", "dash", "--service-id", "dash",
            "--certificate", opcert.Certificate, "--key", opcert.Key, "--authority", opcert.Authority);
        try
        {
            using (var http = new HttpClient())
            {
                await Eventually.TrueAsync(async () => await Healthy(http, healthPort), TimeSpan.FromSeconds(60),
                    "the silo answering", () => Task.FromResult(""));
            }
            await dashboard.InitializeAsync();
            using var playwright = await Playwright.CreateAsync();
            await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = BrowserFixture.Chromium, Headless = true, Args = ["--no-sandbox"] });
            var page = await browser.NewPageAsync();
            await page.GotoAsync(dashboard.Url);
            await page.FillAsync("#username", "ops");
            await page.FillAsync("#password", "correct-horse-battery");
            await page.ClickAsync("#sign-in");
            await page.Locator("text=cluster dash").WaitForAsync(new() { Timeout = 30_000 });
            await Eventually.TrueAsync(async () => await page.Locator("[data-testid=host-count]").InnerTextAsync() == "0", TimeSpan.FromSeconds(30),
                "the empty fleet of a new cluster", async () => await page.InnerTextAsync("body"));

            // An admin removes a host from the fleet and lets it back in, through the dashboard's operator certificate (an
            // operator's right, checked by the silo); a viewer is offered neither. (A click before the page's circuit is up
            // does nothing: it is tried again.)
            await page.GotoAsync(dashboard.Url + "hosts/retired-1");
            await ClickUntilAsync(page, "[data-testid=remove-host]", "[data-testid=host-removed]");
            await ClickUntilAsync(page, "[data-testid=readmit-host]", "[data-testid=remove-host]");
            Assert.Equal(0, await page.Locator("[data-testid=host-removed]").CountAsync());
            var viewer = await (await browser.NewContextAsync()).NewPageAsync();
            await viewer.GotoAsync(dashboard.Url + "login?returnUrl=%2Fhosts%2Fretired-1");
            await viewer.FillAsync("#username", "auditor");
            await viewer.FillAsync("#password", "staple-battery-horse");
            await viewer.ClickAsync("#sign-in");
            await viewer.Locator("[data-testid=role]").WaitForAsync(new() { Timeout = 30_000 });
            Assert.Equal("read-only", (await viewer.InnerTextAsync("[data-testid=role]")).Trim());
            Assert.Equal(0, await viewer.Locator("[data-testid=remove-host]").CountAsync());

            silo.Kill(entireProcessTree: true);
            await silo.WaitForExitAsync(TestContext.Current.CancellationToken);
            await page.GetByText("The control plane does not answer").WaitForAsync(new() { Timeout = 60_000 });
            await page.ScreenshotAsync(new() { Path = Path.Combine(BrowserFixture.Screenshots, "cluster-silo-gone.png"), FullPage = true });
        }
        finally
        {
            if (!silo.HasExited)
            {
                silo.Kill(entireProcessTree: true);
            }
            silo.Dispose();
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Clicks <paramref name="button"/> until <paramref name="then"/> shows (a click before the circuit is up is lost).</summary>
    private static Task ClickUntilAsync(IPage page, string button, string then) => Eventually.TrueAsync(async () =>
    {
        if (await page.Locator(button).CountAsync() > 0)
        {
            await page.ClickAsync(button);
        }
        await page.Locator(then).WaitForAsync(new() { Timeout = 3000 });
        return true;
    }, TimeSpan.FromSeconds(30), $"{then} after {button}", async () => await page.InnerTextAsync("body"));

    /// <summary>Whether the silo's health endpoint answers 200 (connection refused while it starts is "not yet").</summary>
    private static async Task<bool> Healthy(HttpClient http, int port)
    {
        try
        {
            return (await http.GetAsync(new Uri($"http://127.0.0.1:{port}/healthz"), TestContext.Current.CancellationToken)).IsSuccessStatusCode;
        }
        catch (HttpRequestException)
        {
            return false;
        }
    }
}
