using System.Collections.Frozen;
using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Fabric.Silo.Security;

/// <summary>
/// The fleet authority's certificate revocation list (X.509 CRL, PEM or DER; <c>deploy/pki/fabric-pki revoke</c> writes
/// one): the serial numbers of certificates the authority withdrew before they expire — a stolen operator laptop, a host
/// whose key leaked. Read only when its signature verifies under the authority's key, so no one without that key can add
/// or remove an entry; a list past its next update still applies (a stale list revokes less than a fresh one, never more).
/// </summary>
public sealed class RevocationList
{
    private const string EcdsaWithSha256 = "1.2.840.10045.4.3.2";
    private const string EcdsaWithSha384 = "1.2.840.10045.4.3.3";
    private const string RsaWithSha256 = "1.2.840.113549.1.1.11";

    private RevocationList(FrozenSet<string> serials, DateTimeOffset thisUpdate, DateTimeOffset? nextUpdate)
    {
        Serials = serials;
        ThisUpdate = thisUpdate;
        NextUpdate = nextUpdate;
    }

    /// <summary>The revoked serial numbers (<see cref="SerialOf(string)"/>'s form).</summary>
    public FrozenSet<string> Serials { get; }

    public DateTimeOffset ThisUpdate { get; }

    public DateTimeOffset? NextUpdate { get; }

    /// <summary>A serial number as the list keeps it: hexadecimal, upper case, without leading zeros.</summary>
    public static string SerialOf(string hex)
    {
        var trimmed = hex.Replace(":", "", StringComparison.Ordinal).ToUpperInvariant().TrimStart('0');
        return trimmed.Length == 0 ? "0" : trimmed;
    }

    /// <summary>Reads and verifies a list; throws <see cref="InvalidDataException"/> saying what is wrong.</summary>
    public static RevocationList Parse(ReadOnlySpan<byte> data, X509Certificate2 authority)
    {
        byte[] der;
        var text = System.Text.Encoding.ASCII.GetString(data);
        try
        {
            if (text.Contains("-----BEGIN X509 CRL-----", StringComparison.Ordinal))
            {
                // A file caught while it is being copied in has no end line yet: PemEncoding.Find throws ArgumentException.
                var fields = PemEncoding.Find(text);
                if (text[fields.Label] != "X509 CRL")
                {
                    throw new InvalidDataException($"a PEM block '{text[fields.Label]}' where an X509 CRL was expected");
                }
                der = Convert.FromBase64String(text[fields.Base64Data]);
            }
            else
            {
                der = data.ToArray();
            }
            var list = new AsnReader(der, AsnEncodingRules.DER).ReadSequence();
            var tbs = list.ReadEncodedValue();
            var algorithm = list.ReadSequence().ReadObjectIdentifier();
            var signature = list.ReadBitString(out _);
            if (!Verifies(authority, algorithm, tbs.Span, signature))
            {
                throw new InvalidDataException($"its signature does not verify under the fleet's authority ({authority.Subject})");
            }
            var body = new AsnReader(tbs, AsnEncodingRules.DER).ReadSequence();
            if (body.PeekTag() == Asn1Tag.Integer)
            {
                body.ReadInteger();
            }
            body.ReadSequence();
            body.ReadEncodedValue();
            var thisUpdate = ReadTime(body);
            DateTimeOffset? nextUpdate = body.HasData && IsTime(body.PeekTag()) ? ReadTime(body) : null;
            var serials = new HashSet<string>(StringComparer.Ordinal);
            if (body.HasData && body.PeekTag() == Asn1Tag.Sequence)
            {
                var revoked = body.ReadSequence();
                while (revoked.HasData)
                {
                    var entry = revoked.ReadSequence();
                    serials.Add(SerialOf(Convert.ToHexString(entry.ReadIntegerBytes().Span)));
                }
            }
            return new RevocationList(serials.ToFrozenSet(StringComparer.Ordinal), thisUpdate, nextUpdate);
        }
        catch (Exception e) when (e is AsnContentException or CryptographicException or FormatException or ArgumentException)
        {
            throw new InvalidDataException($"not an X.509 CRL: {e.Message}", e);
        }
    }

    private static bool Verifies(X509Certificate2 authority, string algorithm, ReadOnlySpan<byte> tbs, byte[] signature)
    {
        if (algorithm is EcdsaWithSha256 or EcdsaWithSha384 && authority.GetECDsaPublicKey() is { } ecdsa)
        {
            using (ecdsa)
            {
                return ecdsa.VerifyData(tbs, signature, algorithm == EcdsaWithSha256 ? HashAlgorithmName.SHA256 : HashAlgorithmName.SHA384, DSASignatureFormat.Rfc3279DerSequence);
            }
        }
        if (algorithm == RsaWithSha256 && authority.GetRSAPublicKey() is { } rsa)
        {
            using (rsa)
            {
                return rsa.VerifyData(tbs, signature, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
            }
        }
        throw new InvalidDataException($"signature algorithm {algorithm} is not one the authority's key signs with (ECDSA with SHA-256/384, RSA with SHA-256)");
    }

    private static bool IsTime(Asn1Tag tag) => tag == Asn1Tag.UtcTime || tag == Asn1Tag.GeneralizedTime;

    private static DateTimeOffset ReadTime(AsnReader reader) =>
        reader.PeekTag() == Asn1Tag.UtcTime ? reader.ReadUtcTime() : reader.ReadGeneralizedTime();
}
