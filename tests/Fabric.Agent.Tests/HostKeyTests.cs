using System.Security.Cryptography;

namespace Fabric.Agent.Tests;

/// <summary>The host's key pair and the path keys a host pair derives from it (what replaces hand-written keys).</summary>
public sealed class HostKeyTests : IDisposable
{
    private readonly string _state = Directory.CreateTempSubdirectory("fabric-hostkey-").FullName;

    public void Dispose() => Directory.Delete(_state, recursive: true);

    [Fact]
    public void BothEndsDeriveTheSameKeys_NoOtherPairDoes_AndPurposesDiffer()
    {
        using var a = HostKey.LoadOrCreate(Path.Combine(_state, "a"));
        using var b = HostKey.LoadOrCreate(Path.Combine(_state, "b"));
        using var c = HostKey.LoadOrCreate(null);
        var ab = a.Derive("host-a", "host-b", b.PublicKey);
        var ba = b.Derive("host-b", "host-a", a.PublicKey);
        Assert.Equal(ab.Overlay, ba.Overlay);
        Assert.Equal(ab.Secure, ba.Secure);
        Assert.NotEqual(ab.Overlay, ab.Secure);
        Assert.Equal(32, ab.Secure.Length);
        // Another pair, or the same pair under other names, gets other keys.
        Assert.NotEqual(ab.Secure, a.Derive("host-a", "host-c", c.PublicKey).Secure);
        Assert.NotEqual(ab.Secure, a.Derive("host-a", "host-x", b.PublicKey).Secure);
        // A host that only knows both public keys (the control plane) cannot compute them: its own key gives others.
        Assert.NotEqual(ab.Secure, c.Derive("host-a", "host-b", b.PublicKey).Secure);
    }

    [Fact]
    public void TheKeyIsMadeOnce_KeptReadableByRootOnly_AndTheSameAfterARestart()
    {
        var folder = Path.Combine(_state, "host");
        string first;
        using (var key = HostKey.LoadOrCreate(folder))
        {
            first = key.PublicKey;
            Assert.Equal(Path.Combine(folder, HostKey.FileName), key.Path);
        }
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(folder, HostKey.FileName)));
        using var again = HostKey.LoadOrCreate(folder);
        Assert.Equal(first, again.PublicKey);
        Assert.DoesNotContain("PRIVATE", again.PublicKey, StringComparison.Ordinal);
    }

    [Fact]
    public void AKeyFileOthersCanRead_OrThatIsNoP256Key_IsRefusedNamingTheFile()
    {
        var folder = Path.Combine(_state, "careless");
        using (HostKey.LoadOrCreate(folder))
        {
        }
        var file = Path.Combine(folder, HostKey.FileName);
        File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
        var open = Assert.Throws<InvalidOperationException>(() => HostKey.LoadOrCreate(folder));
        Assert.Contains(file, open.Message, StringComparison.Ordinal);
        Assert.Contains("must be 0600", open.Message, StringComparison.Ordinal);

        File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        using (var rsa = RSA.Create(2048))
        {
            File.WriteAllText(file, rsa.ExportPkcs8PrivateKeyPem());
        }
        Assert.Contains("not a P-256 private key", Assert.Throws<InvalidOperationException>(() => HostKey.LoadOrCreate(folder)).Message, StringComparison.Ordinal);
        using (var onlyPublic = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256))
        {
            File.WriteAllText(file, onlyPublic.ExportSubjectPublicKeyInfoPem());
        }
        Assert.Contains("not a P-256 private key", Assert.Throws<InvalidOperationException>(() => HostKey.LoadOrCreate(folder)).Message, StringComparison.Ordinal);
        File.WriteAllText(file, "garbage");
        Assert.Contains(file, Assert.Throws<InvalidOperationException>(() => HostKey.LoadOrCreate(folder)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ARotation_KeepsThePreviousKeyBeside_0600_ThroughARestart_UntilItRetires_AndPeersDeriveWithEither()
    {
        var peer = HostKey.LoadOrCreate(null);
        using var _ = peer;
        var key = HostKey.LoadOrCreate(_state);
        var first = key.PublicKey;
        var before = key.Derive("host-a", "host-b", peer.PublicKey);
        key.Rotate(DateTimeOffset.UtcNow);
        Assert.NotEqual(first, key.PublicKey);
        Assert.Equal(first, key.PreviousPublicKey);
        var previousFile = Path.Combine(_state, HostKey.PreviousFileName);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(previousFile));
        Assert.Equal(before.Overlay, key.Derive("host-a", "host-b", peer.PublicKey, previous: true).Overlay);
        Assert.Equal(peer.Derive("host-b", "host-a", key.PublicKey).Overlay, key.Derive("host-a", "host-b", peer.PublicKey).Overlay);
        Assert.NotEqual(before.Overlay, key.Derive("host-a", "host-b", peer.PublicKey).Overlay);
        var current = key.PublicKey;
        key.Dispose();

        using var restarted = HostKey.LoadOrCreate(_state);
        Assert.Equal(current, restarted.PublicKey);
        Assert.Equal(first, restarted.PreviousPublicKey);
        Assert.True(restarted.RetirePrevious());
        Assert.False(File.Exists(previousFile));
        Assert.Null(restarted.PreviousPublicKey);
        Assert.Throws<InvalidOperationException>(() => restarted.Derive("host-a", "host-b", peer.PublicKey, previous: true));
        Assert.False(restarted.RetirePrevious());
        restarted.Rotate(DateTimeOffset.UtcNow);
        restarted.Dispose();

        // The current key deleted to start afresh: the previous one left beside it is no one's any more, and goes too.
        File.Delete(Path.Combine(_state, HostKey.FileName));
        using var afresh = HostKey.LoadOrCreate(_state);
        Assert.Null(afresh.PreviousPublicKey);
        Assert.False(File.Exists(previousFile));
    }

    [Fact]
    public void APeerKeyThatIsNoP256PublicKey_IsRefusedNamingThePeer()
    {
        using var a = HostKey.LoadOrCreate(null);
        Assert.Contains("host evil: its public key is not a P-256 public key", Assert.Throws<InvalidOperationException>(() => a.Derive("host-a", "evil", "not base64!")).Message, StringComparison.Ordinal);
        using var p384 = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP384);
        Assert.Throws<InvalidOperationException>(() => a.Derive("host-a", "evil", Convert.ToBase64String(p384.ExportSubjectPublicKeyInfo())));
        // A point that is not on the curve (the x coordinate of a valid key with y altered) is refused on import.
        using var valid = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
        var spki = valid.ExportSubjectPublicKeyInfo();
        spki[^1] ^= 1;
        Assert.Throws<InvalidOperationException>(() => a.Derive("host-a", "evil", Convert.ToBase64String(spki)));
    }
}
