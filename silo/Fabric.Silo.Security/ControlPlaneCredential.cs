using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Fabric.Silo.Security;

/// <summary>What a certificate of the fleet's authority says its holder is (its subject's OU).</summary>
public enum CallerRole
{
    /// <summary>A silo of the cluster: trusted with everything, and the only role that may join the cluster.</summary>
    Silo,

    /// <summary>A dashboard (or an operator's tool): reads everything and changes policies, catalog and learning — never acts as a host.</summary>
    Operator,

    /// <summary>A host's agent, whose certificate's CN is its host id: acts only as that host.</summary>
    Agent,
}

/// <summary>Who calls: a role and a name (the host id for an agent).</summary>
public sealed record Caller(CallerRole Role, string Name)
{
    public override string ToString() => $"{Role.ToString().ToLowerInvariant()} '{Name}'";
}

/// <summary>
/// A silo's or client's identity on the control channel: a certificate issued by the fleet's authority (with its private
/// key), and the authority itself, which every peer's certificate must chain to. The same certificate authenticates the
/// TLS connection and signs the caller token each grain call carries.
/// </summary>
public sealed class ControlPlaneCredential : IDisposable
{
    private readonly Lock _gate = new();
    private (string Token, DateTimeOffset Renew)? _token;

    /// <summary>Checks that <paramref name="certificate"/> carries a Fabric role and name and chains to <paramref name="authority"/> now.</summary>
    public ControlPlaneCredential(X509Certificate2 certificate, X509Certificate2 authority)
        : this(certificate, authority, checkValidity: true)
    {
    }

    /// <summary>For the authority that has just issued the certificate (whatever its validity period).</summary>
    internal ControlPlaneCredential(X509Certificate2 certificate, X509Certificate2 authority, bool checkValidity)
    {
        if (!certificate.HasPrivateKey)
        {
            throw new ArgumentException($"certificate '{certificate.Subject}' has no private key", nameof(certificate));
        }
        Certificate = certificate;
        Authority = authority;
        Caller = CertificateIdentity.Read(certificate);
        if (checkValidity && FleetAuthority.Check(certificate, authority, DateTimeOffset.UtcNow) is { } problem)
        {
            throw new ArgumentException($"certificate '{certificate.Subject}': {problem}", nameof(certificate));
        }
    }

    public X509Certificate2 Certificate { get; }

    public X509Certificate2 Authority { get; }

    public Caller Caller { get; }

    /// <summary>Loads PEM files (certificate, its private key, the authority's certificate); throws naming the file that is wrong.</summary>
    public static ControlPlaneCredential Load(string certificatePath, string keyPath, string authorityPath)
    {
        X509Certificate2 certificate;
        X509Certificate2 authority;
        try
        {
            certificate = X509Certificate2.CreateFromPemFile(certificatePath, keyPath);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new FormatException($"certificate '{certificatePath}' with key '{keyPath}': {e.Message}", e);
        }
        try
        {
            authority = X509CertificateLoader.LoadCertificate(Pem.Der(File.ReadAllText(authorityPath), "CERTIFICATE"));
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or FormatException or ArgumentException)
        {
            certificate.Dispose();
            throw new FormatException($"authority certificate '{authorityPath}': {e.Message}", e);
        }
        try
        {
            return new ControlPlaneCredential(certificate, authority);
        }
        catch (ArgumentException e)
        {
            certificate.Dispose();
            authority.Dispose();
            throw new FormatException($"'{certificatePath}': {e.Message}", e);
        }
    }

    /// <summary>The token this holder's calls carry now: signed afresh when half its life has passed.</summary>
    public string Token(DateTimeOffset now)
    {
        lock (_gate)
        {
            if (_token is { } held && now < held.Renew)
            {
                return held.Token;
            }
            var token = CallerToken.Sign(this, now);
            _token = (token, now + CallerToken.Lifetime / 2);
            return token;
        }
    }

    public void Dispose()
    {
        Certificate.Dispose();
        Authority.Dispose();
    }
}

/// <summary>The role and name a certificate of the fleet's authority carries: OU = role, CN = name.</summary>
public static class CertificateIdentity
{
    private const string CommonName = "2.5.4.3";
    private const string OrganizationalUnit = "2.5.4.11";

    /// <summary>Throws <see cref="ArgumentException"/> naming what is missing when the subject carries no Fabric role or name.</summary>
    public static Caller Read(X509Certificate2 certificate)
    {
        string? name = null;
        string? unit = null;
        foreach (var part in certificate.SubjectName.EnumerateRelativeDistinguishedNames())
        {
            var oid = part.GetSingleElementType().Value;
            if (oid == CommonName)
            {
                name = part.GetSingleElementValue();
            }
            else if (oid == OrganizationalUnit)
            {
                unit = part.GetSingleElementValue();
            }
        }
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException($"certificate '{certificate.Subject}' has no CN (the silo's, operator's or host's name)");
        }
        var role = unit switch
        {
            "silo" => CallerRole.Silo,
            "operator" => CallerRole.Operator,
            "agent" => CallerRole.Agent,
            _ => throw new ArgumentException($"certificate '{certificate.Subject}' has OU '{unit}': expected silo, operator or agent"),
        };
        return new Caller(role, name);
    }
}

/// <summary>Checks that a certificate was issued by the fleet's authority (and only it) and is valid at a time.</summary>
public static class FleetAuthority
{
    /// <summary>Null when <paramref name="certificate"/> chains to <paramref name="authority"/> at <paramref name="at"/>; else why not.</summary>
    public static string? Check(X509Certificate2 certificate, X509Certificate2 authority, DateTimeOffset at)
    {
        // Only the authority's own certificates (no intermediates): a stranger's never reaches chain building.
        if (!certificate.IssuerName.RawData.AsSpan().SequenceEqual(authority.SubjectName.RawData))
        {
            return "not issued by the fleet's authority";
        }
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(authority);
        // Never fetch what a certificate points at (its issuer's or revocation URLs): a stranger's certificate must not
        // make the silo open connections. Revocation is not checked (the threat model says what that leaves open).
        chain.ChainPolicy.DisableCertificateDownloads = true;
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationTime = at.UtcDateTime;
        chain.ChainPolicy.VerificationTimeIgnored = false;
        if (chain.Build(certificate) && chain.ChainElements[^1].Certificate.RawDataMemory.Span.SequenceEqual(authority.RawDataMemory.Span))
        {
            return null;
        }
        var status = chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct().ToArray();
        return status.Length == 0 ? "not issued by the fleet's authority" : $"not valid under the fleet's authority: {string.Join("; ", status)}";
    }
}

internal static class Pem
{
    public static byte[] Der(string pem, string label)
    {
        var fields = PemEncoding.Find(pem);
        if (pem[fields.Label] != label)
        {
            throw new FormatException($"expected a PEM '{label}', found '{pem[fields.Label]}'");
        }
        return Convert.FromBase64String(pem[fields.Base64Data]);
    }
}
