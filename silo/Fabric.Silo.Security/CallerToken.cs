using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace Fabric.Silo.Security;

/// <summary>
/// The identity a grain call carries (Orleans hands a grain neither the TLS peer nor a trustworthy sender: a client writes
/// its own message headers). Form: <c>fabric-caller/1|ROLE|NAME|ISSUED|EXPIRES~CERTIFICATE~SIGNATURE</c> — the payload, the
/// signer's certificate (DER, base64) and its signature over the payload with the certificate's key (ECDSA or RSA,
/// SHA-256). Only the holder of a certificate's private key can make a token for its name; a silo accepts one only
/// while it is valid and its certificate chains to the fleet's authority.
/// </summary>
public static class CallerToken
{
    /// <summary>How long a token is accepted; holders sign a new one every half of it.</summary>
    public static readonly TimeSpan Lifetime = TimeSpan.FromMinutes(10);

    /// <summary>Clocks of silos and hosts may differ by this much.</summary>
    public static readonly TimeSpan Skew = TimeSpan.FromMinutes(2);

    /// <summary>The request-context key under which calls carry it.</summary>
    public const string ContextKey = "fabric-caller";

    private const string Version = "fabric-caller/1";

    public static string Sign(ControlPlaneCredential credential, DateTimeOffset now)
    {
        var payload = string.Join('|', Version, Name(credential.Caller.Role), credential.Caller.Name,
            now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture), (now + Lifetime).ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture));
        var data = Encoding.UTF8.GetBytes(payload);
        byte[] signature;
        if (credential.Certificate.GetECDsaPrivateKey() is { } ecdsa)
        {
            using (ecdsa)
            {
                signature = ecdsa.SignData(data, HashAlgorithmName.SHA256);
            }
        }
        else if (credential.Certificate.GetRSAPrivateKey() is { } rsa)
        {
            using (rsa)
            {
                signature = rsa.SignData(data, HashAlgorithmName.SHA256, RSASignaturePadding.Pss);
            }
        }
        else
        {
            throw new InvalidOperationException($"certificate '{credential.Certificate.Subject}': only ECDSA and RSA keys can sign caller tokens");
        }
        return $"{payload}~{Convert.ToBase64String(credential.Certificate.RawData)}~{Convert.ToBase64String(signature)}";
    }

    internal static string Name(CallerRole role) => role switch
    {
        CallerRole.Silo => "silo",
        CallerRole.Operator => "operator",
        _ => "agent",
    };

    /// <summary>
    /// The caller a token names, once its signature, certificate and times are checked; throws <see cref="UnauthorizedAccessException"/>
    /// saying what is wrong otherwise.
    /// </summary>
    public static Caller Verify(string token, X509Certificate2 authority, DateTimeOffset now) => Verify(token, authority, now, out _);

    /// <summary>As <see cref="Verify(string, X509Certificate2, DateTimeOffset)"/>, with the time the token stops being accepted.</summary>
    public static Caller Verify(string token, X509Certificate2 authority, DateTimeOffset now, out DateTimeOffset acceptedUntil) =>
        Verify(token, authority, now, out acceptedUntil, static (_, certificate, authority, now) => FleetAuthority.Check(certificate, authority, now));

    /// <summary>As above, with the chain check supplied (a verifier remembers each certificate's verdict).</summary>
    internal static Caller Verify(string token, X509Certificate2 authority, DateTimeOffset now, out DateTimeOffset acceptedUntil,
        Func<string, X509Certificate2, X509Certificate2, DateTimeOffset, string?> checkChain)
    {
        var parts = token.Split('~');
        if (parts.Length != 3)
        {
            throw new UnauthorizedAccessException("caller token: not PAYLOAD~CERTIFICATE~SIGNATURE");
        }
        var fields = parts[0].Split('|');
        if (fields.Length != 5 || fields[0] != Version
            || !long.TryParse(fields[3], NumberStyles.None, CultureInfo.InvariantCulture, out var issued)
            || !long.TryParse(fields[4], NumberStyles.None, CultureInfo.InvariantCulture, out var expires))
        {
            throw new UnauthorizedAccessException($"caller token: payload is not {Version}|ROLE|NAME|ISSUED|EXPIRES");
        }
        if (expires - issued > (long)Lifetime.TotalSeconds || now.ToUnixTimeSeconds() > expires + (long)Skew.TotalSeconds
            || now.ToUnixTimeSeconds() < issued - (long)Skew.TotalSeconds)
        {
            throw new UnauthorizedAccessException($"caller token of '{fields[2]}': expired or not yet valid");
        }
        acceptedUntil = DateTimeOffset.FromUnixTimeSeconds(expires) + Skew;
        X509Certificate2 certificate;
        byte[] signature;
        try
        {
            certificate = X509CertificateLoader.LoadCertificate(Convert.FromBase64String(parts[1]));
            signature = Convert.FromBase64String(parts[2]);
        }
        catch (Exception e) when (e is FormatException or CryptographicException)
        {
            throw new UnauthorizedAccessException($"caller token: {e.Message}", e);
        }
        using (certificate)
        {
            if (checkChain(parts[1], certificate, authority, now) is { } problem)
            {
                throw new UnauthorizedAccessException($"caller token of '{fields[2]}': certificate {problem}");
            }
            Caller caller;
            try
            {
                caller = CertificateIdentity.Read(certificate);
            }
            catch (ArgumentException e)
            {
                throw new UnauthorizedAccessException($"caller token: {e.Message}", e);
            }
            if (Name(caller.Role) != fields[1] || caller.Name != fields[2])
            {
                throw new UnauthorizedAccessException($"caller token: names {fields[1]} '{fields[2]}' but its certificate is {caller}");
            }
            var data = Encoding.UTF8.GetBytes(parts[0]);
            var valid = certificate.GetECDsaPublicKey() is { } ecdsa
                ? Using(ecdsa, k => k.VerifyData(data, signature, HashAlgorithmName.SHA256))
                : certificate.GetRSAPublicKey() is { } rsa && Using(rsa, k => k.VerifyData(data, signature, HashAlgorithmName.SHA256, RSASignaturePadding.Pss));
            if (!valid)
            {
                throw new UnauthorizedAccessException($"caller token of {caller}: the signature does not match");
            }
            return caller;
        }
    }

    private static bool Using<T>(T key, Func<T, bool> check) where T : IDisposable
    {
        using (key)
        {
            return check(key);
        }
    }
}

/// <summary>
/// Verifies tokens for a silo, remembering each verified token until it expires (a token is reused for minutes, and a
/// signature check costs far more than a lookup) — one token per certificate, so a holder that signs many tokens only
/// replaces its own — and each certificate's chain verdict until the next minute (its validity is a matter of time).
/// Bounded: past <see cref="Capacity"/> certificates it starts over.
/// </summary>
public sealed class CallerVerifier(X509Certificate2 authority, TimeProvider time, RevokedHosts? revoked = null)
{
    public const int Capacity = 100_000;
    private readonly ConcurrentDictionary<string, (Caller Caller, string Serial, DateTimeOffset Until)> _tokens = new(StringComparer.Ordinal);
    /// <summary>Per certificate with a good chain: its last verified token, and until when the chain verdict holds.</summary>
    private readonly ConcurrentDictionary<string, (string Token, DateTimeOffset Until)> _certificates = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    public X509Certificate2 Authority => authority;

    /// <summary>Tokens remembered now (at most one per certificate).</summary>
    public int Remembered => _tokens.Count;

    /// <summary>Throws <see cref="UnauthorizedAccessException"/> saying why when the token is missing or not good.</summary>
    public Caller Verify(string? token) => Verify(token, out _);

    /// <summary><see cref="Verify(string?)"/>, saying the serial number of the certificate the token was made with.</summary>
    public Caller Verify(string? token, out string serialNumber)
    {
        serialNumber = "";
        if (string.IsNullOrEmpty(token))
        {
            throw new UnauthorizedAccessException("the call carries no caller token: the control plane requires one");
        }
        var now = time.GetUtcNow();
        if (_tokens.TryGetValue(token, out var known) && now < known.Until)
        {
            // A remembered token is checked against the revocation list on every call: a revocation takes effect at once.
            serialNumber = known.Serial;
            return NotRevoked(known.Caller, known.Serial);
        }
        string? certificateKey = null;
        var serial = "";
        var caller = CallerToken.Verify(token, authority, now, out var until, (key, certificate, authority, at) =>
        {
            certificateKey = key;
            serial = certificate.SerialNumber;
            if (_certificates.TryGetValue(key, out var held) && at < held.Until)
            {
                return null;
            }
            var verdict = FleetAuthority.Check(certificate, authority, at);
            if (verdict is null)
            {
                // Only a good verdict is remembered (until the next minute): a bad certificate never takes a place here.
                _certificates[key] = (held.Token ?? "", at + TimeSpan.FromMinutes(1));
            }
            return verdict;
        });
        lock (_gate)
        {
            if (_certificates.Count >= Capacity)
            {
                _certificates.Clear();
                _tokens.Clear();
            }
            var entry = _certificates.GetValueOrDefault(certificateKey!);
            if (entry.Token is { Length: > 0 } previous && previous != token)
            {
                _tokens.TryRemove(previous, out _);
            }
            _certificates[certificateKey!] = (token, entry.Until);
            _tokens[token] = (caller, serial, until);
        }
        serialNumber = serial;
        return NotRevoked(caller, serial);
    }

    private Caller NotRevoked(Caller caller, string serial) => revoked?.IsRevokedCertificate(serial) == true
        ? throw new UnauthorizedAccessException($"the certificate of {caller} (serial {RevocationList.SerialOf(serial)}) was revoked by the fleet's authority")
        : caller;
}
