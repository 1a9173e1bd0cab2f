using System.Net;
using System.Security.Claims;
using System.Security.Cryptography.X509Certificates;
using Fabric.Dashboard.Components;
using Fabric.Dashboard.Services;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.Mvc;
using MudBlazor.Services;

namespace Fabric.Dashboard;

/// <summary>
/// The dashboard's web server, whoever hosts it: Kestrel on its listen address (HTTPS with a certificate), cookie sign-in
/// against the users file, the pages and the services they read through. Its host adds how it reaches the control plane
/// (an Orleans client, or the embedded default's own silo) before <see cref="Build"/>.
/// </summary>
public static class DashboardWeb
{
    /// <summary>
    /// A web application builder with everything the dashboard needs but the control plane, whose grains the pages read from
    /// <paramref name="grains"/> — always named by the host: beside a silo, the process also holds the silo's own
    /// <see cref="IGrainFactory"/>, whose calls carry the silo's identity. Throws <see cref="FormatException"/> for an
    /// unreadable certificate.
    /// </summary>
    public static WebApplicationBuilder CreateBuilder(WebOptions options, Users users, IDeployment deployment, Func<IServiceProvider, IGrainFactory> grains)
    {
        X509Certificate2? tls = null;
        if (options.TlsCertificate is not null)
        {
            try
            {
                tls = X509Certificate2.CreateFromPemFile(options.TlsCertificate, options.TlsKey);
            }
            catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or IOException or ArgumentException)
            {
                throw new FormatException($"--tls-certificate '{options.TlsCertificate}' with --tls-key '{options.TlsKey}': {e.Message}");
            }
        }
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        // MudBlazor's files come from its package folder through the static web assets manifest, in every environment.
        builder.WebHost.UseStaticWebAssets();
        builder.WebHost.UseKestrel(k => k.Listen(options.Listen, listen =>
        {
            if (tls is not null)
            {
                listen.UseHttps(tls);
            }
        }));
        // Ctrl+C ends within 15 s even when a part does not stop on its own; the default, 30 s, is as long as an operator's patience.
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(15));
        builder.Logging.ClearProviders().AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.AddFilter("Orleans", LogLevel.Warning)
            // Orleans' watchdog warns once at start of a "participant check" late by the hours since boot: noise for a newcomer.
            .AddFilter("Orleans.Runtime.Watchdog", LogLevel.Error).AddFilter("Microsoft", LogLevel.Warning).AddFilter("Polly", LogLevel.Warning)
            .AddFilter("Microsoft.AspNetCore.DataProtection", LogLevel.Error).AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);

        builder.Services.AddSingleton(deployment);
        builder.Services.AddSingleton(users);
        builder.Services.AddSingleton(_ => new SignInThrottle(TimeProvider.System));
        builder.Services.AddDashboardServices(grains);
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
        return builder;
    }

    /// <summary>The services the pages read the control plane through, over <paramref name="grains"/>, and this process's meter.</summary>
    public static IServiceCollection AddDashboardServices(this IServiceCollection services, Func<IServiceProvider, IGrainFactory> grains)
    {
        return services.AddSingleton(s => new FleetService(grains(s))).AddSingleton(s => new CatalogService(grains(s)))
            .AddSingleton(s => new PolicyService(grains(s))).AddSingleton(s => new LearningService(grains(s))).AddSingleton(new ProcessMeter());
    }

    /// <summary>The application with its pages and sign-in endpoints.</summary>
    public static WebApplication Build(WebApplicationBuilder builder)
    {
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
        return app;
    }

    /// <summary>Said before anything starts (a silo and a fleet would otherwise run up to the moment the web server fails to bind).</summary>
    public static void EnsureFree(IPEndPoint listen)
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
}
