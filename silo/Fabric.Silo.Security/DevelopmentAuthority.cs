using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Fabric.Silo.Security;

/// <summary>
/// A certificate authority for the embedded default and the tests: an ECDSA P-256 root that issues silo, operator and
/// agent certificates (OU = role, CN = name). A real fleet's authority is the operator's (deploy/README.md says how to
/// issue its certificates); this one keeps its key in a folder readable only by its owner.
/// </summary>
public sealed class DevelopmentAuthority : IDisposable
{
    private readonly ECDsa _key;

    private DevelopmentAuthority(X509Certificate2 certificate, ECDsa key)
    {
        Certificate = certificate;
        _key = key;
    }

    /// <summary>The authority's certificate (public): what every silo and client trusts.</summary>
    public X509Certificate2 Certificate { get; }

    public static DevelopmentAuthority Create(string name = "Fabric development authority")
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}, O=Fabric", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        return new DevelopmentAuthority(request.CreateSelfSigned(now.AddMinutes(-5), now.AddYears(5)), key);
    }

    /// <summary>The authority kept in <paramref name="folder"/> (authority.pem, authority-key.pem), made there on first use.</summary>
    public static DevelopmentAuthority LoadOrCreate(string folder)
    {
        var (certificatePath, keyPath) = (Path.Combine(folder, "authority.pem"), Path.Combine(folder, "authority-key.pem"));
        if (File.Exists(certificatePath) != File.Exists(keyPath))
        {
            // Half an authority: making a new one would silently orphan every certificate the old one issued.
            throw new FormatException($"{folder}: {(File.Exists(keyPath) ? certificatePath : keyPath)} is missing beside its other half; restore it or remove both");
        }
        if (File.Exists(certificatePath))
        {
            var key = ECDsa.Create();
            key.ImportFromPem(File.ReadAllText(keyPath));
            return new DevelopmentAuthority(X509Certificate2.CreateFromPem(File.ReadAllText(certificatePath)), key);
        }
        var made = Create();
        Directory.CreateDirectory(folder);
        File.SetUnixFileMode(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        WritePrivate(keyPath, made._key.ExportPkcs8PrivateKeyPem());
        File.WriteAllText(certificatePath, made.Certificate.ExportCertificatePem());
        return made;
    }

    /// <summary>A certificate for <paramref name="role"/> <paramref name="name"/>, valid for <paramref name="lifetime"/> (a year by default).</summary>
    public ControlPlaneCredential Issue(CallerRole role, string name, TimeSpan? lifetime = null, DateTimeOffset? notBefore = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var subject = new X500DistinguishedNameBuilder();
        subject.AddCommonName(name);
        subject.AddOrganizationalUnitName(CallerToken.Name(role));
        subject.AddOrganizationName("Fabric");
        var request = new CertificateRequest(subject.Build(), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(name);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(Certificate, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        var from = notBefore ?? DateTimeOffset.UtcNow.AddMinutes(-5);
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using var signed = request.Create(Certificate.SubjectName, X509SignatureGenerator.CreateForECDsa(_key), from, from + (lifetime ?? TimeSpan.FromDays(365)), serial);
        return new ControlPlaneCredential(signed.CopyWithPrivateKey(key), X509CertificateLoader.LoadCertificate(Certificate.RawData), checkValidity: false);
    }

    /// <summary>Issues into <paramref name="folder"/> as NAME.pem and NAME-key.pem (owner-only), with the authority's certificate beside them as authority.pem.</summary>
    public (string Certificate, string Key, string Authority) IssueFiles(string folder, CallerRole role, string name)
    {
        Directory.CreateDirectory(folder);
        using var credential = Issue(role, name);
        var (certificatePath, keyPath, authorityPath) = (Path.Combine(folder, $"{name}.pem"), Path.Combine(folder, $"{name}-key.pem"), Path.Combine(folder, "authority.pem"));
        using (var key = credential.Certificate.GetECDsaPrivateKey()!)
        {
            WritePrivate(keyPath, key.ExportPkcs8PrivateKeyPem());
        }
        File.WriteAllText(certificatePath, credential.Certificate.ExportCertificatePem());
        File.WriteAllText(authorityPath, Certificate.ExportCertificatePem());
        return (certificatePath, keyPath, authorityPath);
    }

    private static void WritePrivate(string path, string text)
    {
        using var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        using var writer = new StreamWriter(stream);
        writer.Write(text);
    }

    public void Dispose()
    {
        Certificate.Dispose();
        _key.Dispose();
    }
}
