using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using Fabric.Testing;
using Microsoft.Playwright;

namespace Fabric.Dashboard.Tests;

/// <summary>The embedded default served over HTTPS (a certificate of its own for 127.0.0.1), with a browser that trusts it.</summary>
public sealed class SecuredDashboardFixture : BrowserFixture
{
    private readonly string _folder;

    public SecuredDashboardFixture()
        : this(Directory.CreateTempSubdirectory("fabric-tls-").FullName)
    {
    }

    private SecuredDashboardFixture(string folder)
        : base(WithCertificate(folder)) => _folder = folder;

    private static EmbeddedDashboard WithCertificate(string folder)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        File.WriteAllText(Path.Combine(folder, "tls.pem"), certificate.ExportCertificatePem());
        File.WriteAllText(Path.Combine(folder, "tls-key.pem"), key.ExportPkcs8PrivateKeyPem());
        return new EmbeddedDashboard("--phase-seconds", "20", "--tls-certificate", Path.Combine(folder, "tls.pem"), "--tls-key", Path.Combine(folder, "tls-key.pem"));
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_folder, recursive: true);
    }
}

/// <summary>
/// The dashboard's sign-in as an attacker on the network and a careless operator would test it: over HTTPS the session
/// cookie is never sent in clear, the users file holds no password, and a user the operator removes or demotes loses
/// their open pages and their sign-in without a restart.
/// </summary>
public sealed class SecuredDashboardTests(SecuredDashboardFixture fixture) : IClassFixture<SecuredDashboardFixture>
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    private async Task<IPage> SignInAsync(string user, string password, string path = "")
    {
        Assert.SkipWhen(fixture.Browser is null, $"{BrowserFixture.Chromium} is not installed (./fabric test installs it as root)");
        return await BrowserTests.SignInAsync(fixture.Browser!, fixture.Dashboard.Url, user, password, path, anyCertificate: true);
    }

    [Fact]
    public async Task OverHttps_TheSessionCookieIsSecure_AndTheUsersFileHoldsNoPassword()
    {
        // Without a browser the fixture starts no dashboard either.
        Assert.SkipWhen(fixture.Browser is null, $"{BrowserFixture.Chromium} is not installed (./fabric test installs it as root)");
        Assert.StartsWith("https://", fixture.Dashboard.Url, StringComparison.Ordinal);
        // A user of this test's own (the other test removes and demotes the generated ones); the dashboard reads the file
        // again within a second of a change.
        EmbeddedDashboard.SetUser(fixture.Dashboard.UsersFile, "tls-check", "a-password-for-tls", "read-only");
        await Task.Delay(1500, TestContext.Current.CancellationToken);
        var page = await SignInAsync("tls-check", "a-password-for-tls");
        Assert.DoesNotContain("/login", page.Url, StringComparison.Ordinal);
        var cookie = (await page.Context.CookiesAsync()).Single(c => c.Name == "fabric-dashboard");
        Assert.True(cookie.Secure, "the session cookie would be sent over plain HTTP");
        Assert.True(cookie.HttpOnly);

        var file = File.ReadAllText(fixture.Dashboard.UsersFile);
        Assert.DoesNotContain(fixture.Dashboard.Admin.Password, file, StringComparison.Ordinal);
        Assert.DoesNotContain(fixture.Dashboard.Viewer.Password, file, StringComparison.Ordinal);
        Assert.DoesNotContain("a-password-for-tls", file, StringComparison.Ordinal);
        Assert.Contains("pbkdf2-sha256$", file, StringComparison.Ordinal);

        // Plain HTTP on the same port gets nothing.
        using var http = new HttpClient();
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => http.GetAsync(new Uri(fixture.Dashboard.Url.Replace("https://", "http://", StringComparison.Ordinal)), TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task AUserRemovedFromTheFile_OrDemoted_LosesTheirOpenPagesAndSignIn_WithoutARestart()
    {
        var admin = await SignInAsync(fixture.Dashboard.Admin.Name, fixture.Dashboard.Admin.Password, "vms/web-1");
        var viewer = await SignInAsync(fixture.Dashboard.Viewer.Name, fixture.Dashboard.Viewer.Password, "vms/web-1");
        foreach (var page in new[] { admin, viewer })
        {
            await page.WaitForURLAsync(new Regex("/vms/web-1$"));
            await page.Locator("[data-testid=role]").WaitForAsync(new() { Timeout = 30_000 });
        }
        Assert.Equal("admin", (await admin.InnerTextAsync("[data-testid=role]")).Trim());

        // The operator gives admin a new password and the read-only role, and deletes viewer's line with an editor.
        const string NewPassword = "a-new-password-for-admin";
        EmbeddedDashboard.SetUser(fixture.Dashboard.UsersFile, fixture.Dashboard.Admin.Name, NewPassword, "read-only");
        File.WriteAllLines(fixture.Dashboard.UsersFile, File.ReadAllLines(fixture.Dashboard.UsersFile)
            .Where(l => !l.StartsWith(fixture.Dashboard.Viewer.Name + " ", StringComparison.Ordinal)));

        // Both open pages end up at the sign-in, without anyone reloading them.
        foreach (var page in new[] { admin, viewer })
        {
            await Eventually.TrueAsync(() => Task.FromResult(page.Url.Contains("/login", StringComparison.Ordinal)), Wait,
                "an open page of a removed or demoted user signed out", async () => $"{page.Url}: {await page.InnerTextAsync("body")}");
        }
        await BrowserTests.ShotAsync(viewer, "removed-user-signed-out");

        // The old password and the removed user are refused; the new one signs in as read-only.
        var old = await SignInAsync(fixture.Dashboard.Admin.Name, fixture.Dashboard.Admin.Password);
        Assert.Contains("/login", old.Url, StringComparison.Ordinal);
        var removed = await SignInAsync(fixture.Dashboard.Viewer.Name, fixture.Dashboard.Viewer.Password);
        Assert.Contains("/login", removed.Url, StringComparison.Ordinal);
        var demoted = await SignInAsync(fixture.Dashboard.Admin.Name, NewPassword, "vms/web-1");
        await demoted.Locator("[data-testid=role]").WaitForAsync(new() { Timeout = 30_000 });
        Assert.Equal("read-only", (await demoted.InnerTextAsync("[data-testid=role]")).Trim());
    }
}
