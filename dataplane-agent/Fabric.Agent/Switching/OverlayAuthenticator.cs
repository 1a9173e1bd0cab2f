using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Fabric.Agent.Switching;

/// <summary>
/// Authenticates the agents' own datagrams on one path — probes, probe replies and control messages (open, opened,
/// refused, close, unknown) — so that no one who merely sends as a host's underlay address can open or close its slots
/// or steer its measurements. Each direction has its own HMAC-SHA256 key, derived with HKDF from the host pair's overlay
/// key and the two host ids, and the tag (16 bytes, after the payload) covers the Fabric header too. Control messages
/// also carry the sender's boot id and a counter: within one boot only a higher counter is taken, a new boot id is
/// the peer restarting, and a boot id once left is never taken again, so a captured message cannot be replayed to
/// close or reopen a slot later. Probe replies need no counter: a reply counts only for a probe this end has
/// outstanding (<see cref="PathMonitor"/>). Used under the path's gate.
/// </summary>
public sealed class OverlayAuthenticator : IDisposable
{
    public const int TagLength = 16;

    /// <summary>Boot id and counter, appended to a control message before its tag.</summary>
    public const int FreshnessLength = 16;

    private const int LeftBootsKept = 16;

    private readonly IncrementalHash _seal;
    private readonly IncrementalHash _verify;
    private readonly byte[] _mac = new byte[32];
    private readonly ulong _boot;
    private ulong _counter;
    private ulong _peerBoot;
    private ulong _peerCounter;
    private readonly Queue<ulong> _leftBoots = new();

    public OverlayAuthenticator(ReadOnlySpan<byte> overlayKey, string localHost, string remoteHost)
    {
        _seal = Hmac(overlayKey, localHost, remoteHost);
        _verify = Hmac(overlayKey, remoteHost, localHost);
        Span<byte> boot = stackalloc byte[8];
        do
        {
            RandomNumberGenerator.Fill(boot);
            _boot = BinaryPrimitives.ReadUInt64BigEndian(boot);
        }
        while (_boot == 0);
    }

    private static IncrementalHash Hmac(ReadOnlySpan<byte> overlayKey, string from, string to)
    {
        Span<byte> key = stackalloc byte[32];
        HKDF.DeriveKey(HashAlgorithmName.SHA256, overlayKey, key, [], Encoding.UTF8.GetBytes($"fabric overlay v1 {from}->{to}"));
        try
        {
            return IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, key);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }
    }

    /// <summary>Writes the tag of <paramref name="datagram"/>[..<paramref name="length"/>] right after it; returns the new length.</summary>
    public int Seal(Span<byte> datagram, int length)
    {
        _seal.AppendData(datagram[..length]);
        _seal.GetHashAndReset(_mac);
        _mac.AsSpan(0, TagLength).CopyTo(datagram[length..]);
        return length + TagLength;
    }

    /// <summary>True when the datagram's last 16 bytes are the tag of what precedes them, under the peer's key.</summary>
    public bool Verify(ReadOnlySpan<byte> datagram)
    {
        if (datagram.Length < TagLength)
        {
            return false;
        }
        _verify.AppendData(datagram[..^TagLength]);
        _verify.GetHashAndReset(_mac);
        return CryptographicOperations.FixedTimeEquals(_mac.AsSpan(0, TagLength), datagram[^TagLength..]);
    }

    /// <summary>Writes this end's boot id and next counter (16 bytes) for a control message.</summary>
    public void WriteFreshness(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, _boot);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], ++_counter);
    }

    /// <summary>
    /// True (and remembered) when an authentic control message's boot id and counter are newer than any taken before:
    /// a higher counter of the current boot, or a boot id never seen (the peer restarted; the old one is never taken again).
    /// </summary>
    public bool TakeFreshness(ReadOnlySpan<byte> freshness)
    {
        var boot = BinaryPrimitives.ReadUInt64BigEndian(freshness);
        var counter = BinaryPrimitives.ReadUInt64BigEndian(freshness[8..]);
        if (boot == _peerBoot)
        {
            if (counter <= _peerCounter)
            {
                return false;
            }
            _peerCounter = counter;
            return true;
        }
        if (boot == 0 || _leftBoots.Contains(boot))
        {
            return false;
        }
        if (_peerBoot != 0)
        {
            _leftBoots.Enqueue(_peerBoot);
            if (_leftBoots.Count > LeftBootsKept)
            {
                _leftBoots.Dequeue();
            }
        }
        (_peerBoot, _peerCounter) = (boot, counter);
        return true;
    }

    public void Dispose()
    {
        _seal.Dispose();
        _verify.Dispose();
    }
}
