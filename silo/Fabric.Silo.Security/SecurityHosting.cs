using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Configuration;
using Orleans.Connections.Security;
using Orleans.Hosting;

namespace Fabric.Silo.Security;

/// <summary>Turns the control channel's security on for a silo or a client.</summary>
public static class SecurityHosting
{
    /// <summary>
    /// TLS on every connection with certificates of the fleet's authority required both ways: a silo's port admits only
    /// silos, its gateway silos, operators and agents. Every grain call must carry a caller token the filter accepts.
    /// With <paramref name="revocationList"/> (the authority's CRL file, read now and whenever it changes), a certificate
    /// it revokes is refused at TLS and on every call; a list that does not verify stops the start, naming the file.
    /// </summary>
    public static ISiloBuilder UseControlPlaneSecurity(this ISiloBuilder silo, ControlPlaneCredential credential, string? revocationList = null)
    {
        if (credential.Caller.Role != CallerRole.Silo)
        {
            throw new ArgumentException($"a silo needs a silo's certificate (OU=silo), not {credential.Caller}'s", nameof(credential));
        }
        var revoked = Revocations(credential, revocationList);
        silo.Services.AddSingleton(credential);
        silo.Services.AddSingleton(sp => new CallerVerifier(credential.Authority, sp.GetService<TimeProvider>() ?? TimeProvider.System, revoked));
        silo.Services.AddSingleton(revoked);
        silo.Services.AddHostedService<RevokedHostsRefresher>();
        silo.AddIncomingGrainCallFilter<CallerAuthorizationFilter>();
        silo.Services.AddSingleton<IOutgoingGrainCallFilter>(sp => new CallerTokenFilter(credential, sp.GetService<TimeProvider>() ?? TimeProvider.System));
        var fromSilos = Tls(credential, revoked, refreshOnHandshake: false, CallerRole.Silo);
        var fromClients = Tls(credential, revoked, refreshOnHandshake: false, CallerRole.Silo, CallerRole.Operator, CallerRole.Agent);
        return silo.Configure<SiloConnectionOptions>(o =>
        {
            o.ConfigureSiloInboundConnection(c => c.UseServerTls(fromSilos));
            o.ConfigureSiloOutboundConnection(c => c.UseClientTls(fromSilos));
            o.ConfigureGatewayInboundConnection(c => c.UseServerTls(fromClients));
        });
    }

    /// <summary>
    /// TLS to the gateways (which must present silo certificates of the same authority, and with
    /// <paramref name="revocationList"/> ones it does not revoke: read now and again at a handshake 5 s after the last read)
    /// and a caller token on every call. A list that does not verify throws <see cref="InvalidOperationException"/> naming the file.
    /// </summary>
    public static IClientBuilder UseControlPlaneSecurity(this IClientBuilder client, ControlPlaneCredential credential, string? revocationList = null) =>
        client.UseControlPlaneSecurity(credential, Revocations(credential, revocationList));

    /// <summary>The same with revocations already read (<see cref="Revocations"/>), which the client's services then hold
    /// (<see cref="RevokedHosts.ListProblem"/> says why a newer list could not be used).</summary>
    public static IClientBuilder UseControlPlaneSecurity(this IClientBuilder client, ControlPlaneCredential credential, RevokedHosts revoked)
    {
        client.Services.AddSingleton(revoked);
        client.Services.AddHostedService(_ => new ClientRevocationRefresher(revoked));
        client.Services.AddSingleton(credential);
        client.Services.AddSingleton<IOutgoingGrainCallFilter>(sp => new CallerTokenFilter(credential, sp.GetService<TimeProvider>() ?? TimeProvider.System));
        var toSilos = Tls(credential, revoked, refreshOnHandshake: true, CallerRole.Silo);
        return client.Configure<ClientConnectionOptions>(o => o.ConfigureConnection(c => c.UseClientTls(toSilos)));
    }

    /// <summary>The revocations of <paramref name="revocationList"/> (none without one), read now; throws naming the file when it cannot be used.</summary>
    public static RevokedHosts Revocations(ControlPlaneCredential credential, string? revocationList)
    {
        RevokedHosts revoked;
        try
        {
            revoked = new RevokedHosts { List = revocationList is null ? null : new RevocationListFile(revocationList, credential.Authority) };
            revoked.RefreshCertificates();
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException(e.Message, e);
        }
        return revoked;
    }

    /// <summary>
    /// TLS 1.3 with this credential, accepting a peer only with a certificate of the fleet's authority in one of
    /// <paramref name="roles"/> that <paramref name="revoked"/> does not revoke (read again at the handshake when
    /// <paramref name="refreshOnHandshake"/>: a client has no refresher of its own).
    /// </summary>
    private static TlsOptions Tls(ControlPlaneCredential credential, RevokedHosts revoked, bool refreshOnHandshake, params CallerRole[] roles) => new()
    {
        LocalCertificate = credential.Certificate,
        RemoteCertificateMode = RemoteCertificateMode.RequireCertificate,
        ClientCertificateMode = RemoteCertificateMode.RequireCertificate,
        SslProtocols = System.Security.Authentication.SslProtocols.Tls13,
        // Every connection is kept from its handshake on: a revocation read later closes it.
        OnAuthenticateAsServer = (connection, _) => revoked.Track(connection),
        OnAuthenticateAsClient = (connection, _) => revoked.Track(connection),
        // The authority decides, not the system's roots or the peer's DNS name: peers are named by their certificates.
        RemoteCertificateValidation = (certificate, _, _) =>
        {
            if (refreshOnHandshake)
            {
                revoked.RefreshCertificatesIfDue();
            }
            return FleetAuthority.Check(certificate, credential.Authority, DateTimeOffset.UtcNow) is null
                && TryRole(certificate) is { } role && roles.Contains(role) && !revoked.IsRevokedCertificate(certificate.SerialNumber);
        },
    };

    private static CallerRole? TryRole(System.Security.Cryptography.X509Certificates.X509Certificate2 certificate)
    {
        try
        {
            return CertificateIdentity.Read(certificate).Role;
        }
        catch (ArgumentException)
        {
            return null;
        }
    }
}
