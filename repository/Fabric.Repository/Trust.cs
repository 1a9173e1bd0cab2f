using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Fabric.Repository;

/// <summary>A public key in metadata: the scheme and the SubjectPublicKeyInfo in base64.</summary>
public sealed record PublicKeyInfo(string Scheme, string Public)
{
    public const string EcdsaP256 = "ecdsa-p256-sha256";

    /// <summary>The key id: lower-case hex SHA-256 of the SubjectPublicKeyInfo bytes.</summary>
    public string KeyId => Convert.ToHexStringLower(SHA256.HashData(Convert.FromBase64String(Public)));

    public bool Verify(ReadOnlySpan<byte> data, byte[] signature)
    {
        if (Scheme != EcdsaP256)
        {
            return false;
        }
        using var key = ECDsa.Create();
        key.ImportSubjectPublicKeyInfo(Convert.FromBase64String(Public), out _);
        return key.VerifyData(data, signature, HashAlgorithmName.SHA256);
    }
}

/// <summary>Which keys may sign a role, and how many must.</summary>
public sealed record RoleKeys(string[] KeyIds, int Threshold);

public sealed record RootMetadata(string Type, int Version, DateTimeOffset Expires, SortedDictionary<string, PublicKeyInfo> Keys, SortedDictionary<string, RoleKeys> Roles);

/// <summary>One published package: where its bytes are checked against.</summary>
public sealed record TargetInfo(long Length, string Sha256, string Id, string Version, StackProfile Profile);

public sealed record TargetsMetadata(string Type, int Version, DateTimeOffset Expires, SortedDictionary<string, TargetInfo> Targets)
{
    /// <summary>The newest version of each stack id, by target name (what agents load and the catalog offers).</summary>
    public IEnumerable<KeyValuePair<string, TargetInfo>> Newest() => Targets
        .GroupBy(t => t.Value.Id, StringComparer.Ordinal)
        .Select(g => g.OrderByDescending(t => SemanticVersion.TryParse(t.Value.Version, out var v) ? v : default).First());
}

/// <summary>A reference from one metadata file to another: its version and, for the snapshot, length and hash.</summary>
public sealed record MetaFile(int Version, long? Length = null, string? Sha256 = null);

public sealed record SnapshotMetadata(string Type, int Version, DateTimeOffset Expires, SortedDictionary<string, MetaFile> Meta);

public sealed record TimestampMetadata(string Type, int Version, DateTimeOffset Expires, SortedDictionary<string, MetaFile> Meta);

public sealed record SignatureEntry(string KeyId, string Sig);

/// <summary>An ECDSA P-256 signing key.</summary>
public sealed class SigningKey : IDisposable
{
    private readonly ECDsa _key;

    private SigningKey(ECDsa key)
    {
        _key = key;
        Public = new PublicKeyInfo(PublicKeyInfo.EcdsaP256, Convert.ToBase64String(key.ExportSubjectPublicKeyInfo()));
    }

    public PublicKeyInfo Public { get; }

    public string KeyId => Public.KeyId;

    public static SigningKey Generate() => new(ECDsa.Create(ECCurve.NamedCurves.nistP256));

    /// <summary>Reads a PKCS#8 PEM private key; throws naming the file when it is not one.</summary>
    public static SigningKey Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new TrustException($"Key file '{path}' does not exist.");
        }
        var key = ECDsa.Create();
        try
        {
            key.ImportFromPem(File.ReadAllText(path));
        }
        catch (ArgumentException e)
        {
            key.Dispose();
            throw new TrustException($"'{path}' is not a PEM private key: {e.Message}");
        }
        if (key.KeySize != 256)
        {
            key.Dispose();
            throw new TrustException($"'{path}' is not a P-256 key.");
        }
        return new SigningKey(key);
    }

    /// <summary>Writes the private key (mode 0600) and the public key next to it.</summary>
    public void Save(string privatePath)
    {
        File.WriteAllText(privatePath, _key.ExportPkcs8PrivateKeyPem());
        File.SetUnixFileMode(privatePath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        File.WriteAllText(privatePath + ".pub", JsonSerializer.Serialize(Public, StackPackage.Json));
    }

    public SignatureEntry Sign(ReadOnlySpan<byte> data) => new(KeyId, Convert.ToBase64String(_key.SignData(data, HashAlgorithmName.SHA256)));

    public void Dispose() => _key.Dispose();
}

/// <summary>Signed metadata files: the exact bytes of "signed" are what the signatures cover.</summary>
public static class SignedFile
{
    /// <summary>Serializes <paramref name="signed"/> once and signs those bytes with every key.</summary>
    public static byte[] Create<T>(T signed, IEnumerable<SigningKey> keys)
    {
        var body = JsonSerializer.SerializeToUtf8Bytes(signed, StackPackage.Json);
        return Envelope(body, keys.Select(k => k.Sign(body)));
    }

    /// <summary>Adds signatures to an existing file (for thresholds above one), keeping the signed bytes.</summary>
    public static byte[] AddSignatures(byte[] file, IEnumerable<SigningKey> keys)
    {
        var (body, existing) = Split(file, "file");
        var added = keys.Select(k => k.Sign(body)).Where(s => existing.All(e => e.KeyId != s.KeyId));
        return Envelope(body, existing.Concat(added));
    }

    /// <summary>Parses and verifies a file against a role: at least the threshold of distinct authorized keys must have signed.</summary>
    public static T Verify<T>(byte[] file, string name, string expectedType, RootMetadata root, string role)
    {
        var (body, signatures) = Split(file, name);
        if (!root.Roles.TryGetValue(role, out var roleKeys))
        {
            throw new TrustException($"{name}: the trusted root defines no '{role}' role.");
        }
        if (roleKeys.Threshold < 1)
        {
            // A threshold of 0 would let unsigned metadata through.
            throw new TrustException($"{name}: the trusted root's '{role}' role has threshold {roleKeys.Threshold}; at least 1 is required.");
        }
        var valid = new HashSet<string>(StringComparer.Ordinal);
        foreach (var signature in signatures)
        {
            // A key counts only under its own id (the hash of its public key): one key listed under two ids is one signer.
            if (roleKeys.KeyIds.Contains(signature.KeyId) && root.Keys.TryGetValue(signature.KeyId, out var key) && key.KeyId == signature.KeyId
                && TryVerify(key, body, signature))
            {
                valid.Add(signature.KeyId);
            }
        }
        if (valid.Count < roleKeys.Threshold)
        {
            var unknown = signatures.Count(s => !roleKeys.KeyIds.Contains(s.KeyId));
            throw new TrustException($"{name}: {valid.Count} valid signature(s) from {role} keys, {roleKeys.Threshold} required"
                + (unknown > 0 ? $" ({unknown} by keys the root does not trust for {role})" : "") + ".");
        }
        return Parse<T>(body, name, expectedType);
    }

    /// <summary>Parses the signed part without checking signatures (for the publisher's own files).</summary>
    public static T ReadUnverified<T>(byte[] file, string name, string expectedType) => Parse<T>(Split(file, name).Body, name, expectedType);

    private static bool TryVerify(PublicKeyInfo key, byte[] body, SignatureEntry signature)
    {
        try
        {
            return key.Verify(body, Convert.FromBase64String(signature.Sig));
        }
        catch (FormatException)
        {
            return false;
        }
    }

    private static T Parse<T>(byte[] body, string name, string expectedType)
    {
        try
        {
            var value = JsonSerializer.Deserialize<T>(body, StackPackage.Json) ?? throw new TrustException($"{name}: empty.");
            var type = (string?)typeof(T).GetProperty("Type")?.GetValue(value);
            return type == expectedType ? value : throw new TrustException($"{name}: type '{type}' where '{expectedType}' was expected.");
        }
        catch (JsonException e)
        {
            throw new TrustException($"{name}: {e.Message}");
        }
    }

    private static (byte[] Body, List<SignatureEntry> Signatures) Split(byte[] file, string name)
    {
        try
        {
            using var document = JsonDocument.Parse(file);
            var body = Encoding.UTF8.GetBytes(document.RootElement.GetProperty("signed").GetRawText());
            var signatures = document.RootElement.GetProperty("signatures").Deserialize<List<SignatureEntry>>(StackPackage.Json) ?? [];
            return (body, signatures);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new TrustException($"{name}: not a signed metadata file ({e.Message}).");
        }
    }

    private static byte[] Envelope(byte[] body, IEnumerable<SignatureEntry> signatures)
    {
        using var output = new MemoryStream();
        output.Write("{\"signed\":"u8);
        output.Write(body);
        output.Write(",\"signatures\":"u8);
        output.Write(JsonSerializer.SerializeToUtf8Bytes(signatures.ToList(), StackPackage.Json));
        output.Write("}"u8);
        return output.ToArray();
    }
}

/// <summary>Trust metadata or a package failed verification; the message names the file and the check.</summary>
public sealed class TrustException(string message) : Exception(message);
