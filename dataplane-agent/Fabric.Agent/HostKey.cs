using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Fabric.Agent;

/// <summary>The keys one host pair derives for its path: the overlay's (probes and control messages) and secure's.</summary>
public sealed record PathKeys(byte[] Overlay, byte[] Secure);

/// <summary>One key of a pair while host keys rotate: from this host's current or previous key, and the peer's newest or previous.</summary>
public sealed record PathKeyEntry(PathKeys Keys, bool MineCurrent, bool TheirsNewest);

/// <summary>
/// The keys a host pair holds while either host's key rotates: every combination of this host's current and previous key
/// with the peer's newest and previous public key (one entry when neither rotated within the overlap). Each end verifies
/// under all of them and seals under one both hold (<see cref="Switching.OverlayAuthenticator.Rekey"/>).
/// </summary>
public sealed record PathKeyRing(IReadOnlyList<PathKeyEntry> Entries);

/// <summary>
/// The host's key agreement key pair (ECDH on P-256, the platform's OpenSSL: the same primitive family the repository
/// already signs with, no extra native library in a process that hosts plug-ins, and points are validated on import).
/// Made on first start and kept in the state folder, readable by root only (0600); the private key never leaves the
/// host. Only the public key goes to the control plane, and each host pair derives its path keys from its own private
/// key and the peer's public key (ECDH, then HKDF-SHA256 over both host ids and both public keys), so the control plane
/// never holds a path secret. Without a state folder the key lives in memory: a new one each start, which the control
/// plane hands to the peers again.
/// </summary>
public sealed class HostKey : IDisposable
{
    public const string FileName = "host-key.pem";

    /// <summary>The key before the last rotation, kept beside the current one until it retires.</summary>
    public const string PreviousFileName = "host-key.previous.pem";

    private static readonly byte[] Salt = "fabric path keys v1"u8.ToArray();
    private ECDiffieHellman _key;
    private ECDiffieHellman? _previous;

    private HostKey(ECDiffieHellman key, string? path, DateTimeOffset since)
    {
        _key = key;
        Path = path;
        PublicKey = PublicKeyOf(key);
        Since = since;
    }

    private static string PublicKeyOf(ECDiffieHellman key) => Convert.ToBase64String(key.ExportSubjectPublicKeyInfo());

    /// <summary>The public key, SubjectPublicKeyInfo in base64 (what <c>HostInfo.PublicKey</c> carries).</summary>
    public string PublicKey { get; private set; }

    /// <summary>When the current key was made (its file's time; the start, for a key in memory).</summary>
    public DateTimeOffset Since { get; private set; }

    /// <summary>The key before the last rotation (public, base64), while it is kept; else null.</summary>
    public string? PreviousPublicKey { get; private set; }

    /// <summary>Where the key is kept; null when it lives in memory only.</summary>
    public string? Path { get; }

    /// <summary>
    /// Loads the host's key from <paramref name="stateDirectory"/>, or makes one and writes it there (0600); a previous key
    /// kept from a rotation is loaded too. Refuses a key file that others can read or that is not a P-256 private key,
    /// naming the file and what is wrong.
    /// </summary>
    public static HostKey LoadOrCreate(string? stateDirectory, TimeProvider? time = null)
    {
        var now = (time ?? TimeProvider.System).GetUtcNow();
        if (stateDirectory is null)
        {
            return new HostKey(ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256), null, now);
        }
        var path = System.IO.Path.Combine(stateDirectory, FileName);
        if (File.Exists(path))
        {
            var loaded = new HostKey(Load(path), path, File.GetLastWriteTimeUtc(path));
            var previous = System.IO.Path.Combine(stateDirectory, PreviousFileName);
            if (File.Exists(previous))
            {
                loaded._previous = Load(previous);
                loaded.PreviousPublicKey = PublicKeyOf(loaded._previous);
            }
            return loaded;
        }
        Directory.CreateDirectory(stateDirectory);
        // A previous key without a current one (the current was deleted to start afresh) is no longer anyone's: gone too.
        File.Delete(System.IO.Path.Combine(stateDirectory, PreviousFileName));
        var created = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
        Write(path, created, replace: false);
        return new HostKey(created, path, now);
    }

    private static ECDiffieHellman Load(string path)
    {
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(path) & (UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.OtherRead | UnixFileMode.OtherWrite)) != 0)
        {
            throw new InvalidOperationException($"host key {path}: others can read or write it (mode {Convert.ToString((int)File.GetUnixFileMode(path), 8)}); "
                + "it must be 0600 (chmod 600, or delete it and the agent makes a new key)");
        }
        var key = ECDiffieHellman.Create();
        try
        {
            key.ImportFromPem(File.ReadAllText(path));
            // ExportParameters(true) fails for a public key alone.
            if (key.ExportParameters(true).Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
            {
                throw new CryptographicException("not a P-256 key");
            }
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            key.Dispose();
            throw new InvalidOperationException($"host key {path}: not a P-256 private key in PEM ({e.Message}); delete it and the agent makes a new key");
        }
        return key;
    }

    /// <summary>
    /// Writes <paramref name="key"/> to <paramref name="path"/> as a new file of mode 0600 (a leftover or a planted link at
    /// the temporary name is removed, never written through), on disk before it takes the name: a crash leaves the old
    /// file or the whole new one.
    /// </summary>
    private static void Write(string path, ECDiffieHellman key, bool replace = true)
    {
        var temporary = path + ".new";
        File.Delete(temporary);
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        using (var file = new FileStream(temporary, options))
        {
            file.Write(Encoding.ASCII.GetBytes(key.ExportPkcs8PrivateKeyPem()));
            file.Flush(flushToDisk: true);
        }
        // A first key never replaces a file that appeared meanwhile; a rotation replaces the current key's.
        File.Move(temporary, path, overwrite: replace);
    }

    /// <summary>
    /// Makes a new key; the current one becomes the previous (written first, so a crash between the two writes loses
    /// no key a peer may still use), replacing any previous one. Peers derive with the new key once the control plane
    /// hands it to them; until the previous key retires (<see cref="RetirePrevious"/>) both verify.
    /// </summary>
    public void Rotate(DateTimeOffset now)
    {
        var next = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
        if (Path is not null)
        {
            Write(System.IO.Path.Combine(System.IO.Path.GetDirectoryName(Path)!, PreviousFileName), _key);
            Write(Path, next);
        }
        _previous?.Dispose();
        (_previous, PreviousPublicKey) = (_key, PublicKey);
        (_key, PublicKey, Since) = (next, PublicKeyOf(next), now);
    }

    /// <summary>Forgets the previous key (its file too): no path key derived from it can be made again. False when there was none.</summary>
    public bool RetirePrevious()
    {
        if (_previous is null)
        {
            return false;
        }
        if (Path is not null)
        {
            File.Delete(System.IO.Path.Combine(System.IO.Path.GetDirectoryName(Path)!, PreviousFileName));
        }
        _previous.Dispose();
        (_previous, PreviousPublicKey) = (null, null);
        return true;
    }

    /// <summary>
    /// The path keys of this host and <paramref name="peerHost"/>: both ends compute the same ones (with
    /// <paramref name="previous"/>, from this host's previous key). Throws naming the peer when its public key is not a
    /// valid P-256 public key.
    /// </summary>
    public PathKeys Derive(string localHost, string peerHost, string peerPublicKey, bool previous = false)
    {
        var mine = previous ? _previous ?? throw new InvalidOperationException("this host keeps no previous key") : _key;
        var minePublic = previous ? PreviousPublicKey! : PublicKey;
        using var peer = ECDiffieHellman.Create();
        try
        {
            peer.ImportSubjectPublicKeyInfo(Convert.FromBase64String(peerPublicKey), out _);
            if (peer.ExportParameters(false).Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
            {
                throw new CryptographicException("not a P-256 key");
            }
        }
        catch (Exception e) when (e is CryptographicException or FormatException)
        {
            throw new InvalidOperationException($"host {peerHost}: its public key is not a P-256 public key ({e.Message})");
        }
        var shared = mine.DeriveRawSecretAgreement(peer.PublicKey);
        try
        {
            // Both ends order the pair the same way, so each derives the same keys; the public keys bind them to this pair.
            var (first, second) = string.CompareOrdinal(localHost, peerHost) < 0 ? ((localHost, minePublic), (peerHost, peerPublicKey)) : ((peerHost, peerPublicKey), (localHost, minePublic));
            return new PathKeys(Expand(shared, "overlay", first, second), Expand(shared, "secure", first, second));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(shared);
        }
    }

    private static byte[] Expand(byte[] shared, string purpose, (string Host, string Key) first, (string Host, string Key) second)
    {
        var info = new List<byte>();
        foreach (var part in new[] { purpose, first.Host, second.Host, first.Key, second.Key })
        {
            var bytes = Encoding.UTF8.GetBytes(part);
            var length = new byte[4];
            BinaryPrimitives.WriteInt32BigEndian(length, bytes.Length);
            info.AddRange(length);
            info.AddRange(bytes);
        }
        return HKDF.DeriveKey(HashAlgorithmName.SHA256, shared, 32, Salt, [.. info]);
    }

    public void Dispose()
    {
        _key.Dispose();
        _previous?.Dispose();
    }
}
