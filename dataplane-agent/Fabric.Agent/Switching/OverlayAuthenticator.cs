using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Fabric.Agent.Switching;

/// <summary>
/// Authenticates the agents' own datagrams on one path — probes, probe replies and control messages (open, opened,
/// refused, close, unknown) — so that no one who merely sends as a host's underlay address can open or close its slots
/// or steer its measurements. Each direction has its own HMAC-SHA256 key, derived with HKDF from the host pair's overlay
/// key and the two host ids, and the tag (16 bytes, after the payload) covers the Fabric header too. Control messages
/// also carry the sender's boot id (the wall-clock millisecond its agent started, and random bits), a counter and the
/// time they were sent: a message is taken only if it was sent within the last minute (hosts keep their clocks in step,
/// as a fleet's do), and within one boot only with a higher counter; a boot that started earlier than the one already
/// heard is refused. So a captured message cannot be replayed to close or reopen a slot later, nor an old boot's
/// message displace the live one. Probe replies need no counter: a reply counts only for a probe this end has
/// outstanding (<see cref="PathMonitor"/>). Used under the path's gate.
/// </summary>
public sealed class OverlayAuthenticator : IDisposable
{
    public const int TagLength = 16;

    /// <summary>Boot id, counter and send time, appended to a control message before its tag.</summary>
    public const int FreshnessLength = 24;

    /// <summary>How far a control message's send time may be from this host's clock.</summary>
    public static readonly TimeSpan MaxAge = TimeSpan.FromMinutes(1);

    private readonly IncrementalHash _seal;
    private readonly IncrementalHash _verify;
    private readonly byte[] _mac = new byte[32];
    private readonly TimeProvider _time;
    private readonly ulong _boot;
    private ulong _counter;
    private ulong _peerBoot;
    private ulong _peerCounter;

    public OverlayAuthenticator(ReadOnlySpan<byte> overlayKey, string localHost, string remoteHost, TimeProvider? time = null)
    {
        _seal = Hmac(overlayKey, localHost, remoteHost);
        _verify = Hmac(overlayKey, remoteHost, localHost);
        _time = time ?? TimeProvider.System;
        // The start millisecond in the high 48 bits (a later boot compares higher), 16 random bits below.
        _boot = ((ulong)_time.GetUtcNow().ToUnixTimeMilliseconds() << 16) | (uint)RandomNumberGenerator.GetInt32(1, 1 << 16);
    }

    private static IncrementalHash Hmac(ReadOnlySpan<byte> overlayKey, string from, string to)
    {
        Span<byte> key = stackalloc byte[32];
        HKDF.DeriveKey(HashAlgorithmName.SHA256, overlayKey, key, [], Encoding.UTF8.GetBytes($"fabric overlay v1 {from.Length}:{from}>{to.Length}:{to}"));
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

    /// <summary>Writes this end's boot id, next counter and the time (24 bytes) for a control message.</summary>
    public void WriteFreshness(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, _boot);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], ++_counter);
        BinaryPrimitives.WriteInt64BigEndian(destination[16..], _time.GetUtcNow().ToUnixTimeMilliseconds());
    }

    /// <summary>
    /// True (and remembered) when an authentic control message is fresh: sent within <see cref="MaxAge"/> of now, and
    /// either a higher counter of the boot already heard or a boot that started later than it.
    /// </summary>
    public bool TakeFreshness(ReadOnlySpan<byte> freshness)
    {
        var boot = BinaryPrimitives.ReadUInt64BigEndian(freshness);
        var counter = BinaryPrimitives.ReadUInt64BigEndian(freshness[8..]);
        var sent = BinaryPrimitives.ReadInt64BigEndian(freshness[16..]);
        if (Math.Abs(_time.GetUtcNow().ToUnixTimeMilliseconds() - sent) > MaxAge.TotalMilliseconds)
        {
            return false;
        }
        if (boot == _peerBoot)
        {
            if (counter <= _peerCounter)
            {
                return false;
            }
            _peerCounter = counter;
            return true;
        }
        if (_peerBoot != 0 && boot >> 16 <= _peerBoot >> 16)
        {
            return false;
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
