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

    private readonly byte[] _mac = new byte[32];
    private readonly TimeProvider _time;
    private readonly string _local;
    private readonly string _remote;
    private readonly ulong _boot;
    private ulong _counter;
    private ulong _peerBoot;
    private ulong _peerCounter;

    /// <summary>The keys held for the pair (one, or up to four while a host key rotates), and which seals.</summary>
    private Entry[] _entries;
    private Entry _seal;

    /// <summary>Whether the peer has shown it holds this host's current key (an authentic datagram under it).</summary>
    private bool _mineConfirmed = true;

    /// <summary>Guards the keys' bytes between <see cref="Rekey"/> (which zeroes the old ones) and <see cref="SecureKeys"/>.</summary>
    private readonly Lock _keys = new();

    /// <summary>An authenticator under the host pair's one overlay key (32 bytes); <see cref="Rekey"/> gives it a ring.</summary>
    public OverlayAuthenticator(ReadOnlySpan<byte> overlayKey, string localHost, string remoteHost, TimeProvider? time = null)
    {
        (_local, _remote) = (localHost, remoteHost);
        _entries = [new Entry(overlayKey, localHost, remoteHost, MineCurrent: true, TheirsNewest: true, Secure: null)];
        _seal = _entries[0];
        _time = time ?? TimeProvider.System;
        // The start millisecond in the high 48 bits (a later boot compares higher), 16 random bits below.
        _boot = ((ulong)_time.GetUtcNow().ToUnixTimeMilliseconds() << 16) | (uint)RandomNumberGenerator.GetInt32(1, 1 << 16);
    }

    /// <summary>
    /// Takes the pair's keys anew while a host key rotates (<see cref="PathKeyRing"/>): every key of the ring verifies,
    /// and this end seals under the key of its own key the peer has shown it holds and the peer's newest — the peer's
    /// newest at once (the peer made it, so it holds it), this host's newest only once an authentic datagram under it
    /// came back (<paramref name="mineRotated"/>: this host's own key just changed, so the peer may not know it yet).
    /// Nothing is lost meanwhile: each end verifies under every key it holds.
    /// </summary>
    public void Rekey(PathKeyRing ring, bool mineRotated)
    {
        var entries = ring.Entries.Select(e => new Entry(e.Keys.Overlay, _local, _remote, e.MineCurrent, e.TheirsNewest, e.Keys.Secure)).ToArray();
        if (entries.Length == 0 || !entries.Any(e => e.MineCurrent && e.TheirsNewest))
        {
            throw new ArgumentException("a key ring holds the key of this host's current key and the peer's newest", nameof(ring));
        }
        lock (_keys)
        {
            foreach (var entry in _entries)
            {
                entry.Dispose();
            }
            _entries = entries;
        }
        if (mineRotated)
        {
            _mineConfirmed = false;
        }
        if (!entries.Any(e => !e.MineCurrent))
        {
            // This host's previous key is gone (retired, or there never was one): the current one seals, come what may.
            _mineConfirmed = true;
        }
        ChooseSeal();
    }

    private void ChooseSeal() => _seal = _entries.First(e => e.MineCurrent == _mineConfirmed && e.TheirsNewest);

    /// <summary>
    /// The secure stack's key for an instance made now, in hex — that of the key this end seals under — and every other key
    /// of the ring (the peer may seal under any of them while the two ends change keys; <c>alternateKeys</c>); null when
    /// this authenticator took no ring.
    /// </summary>
    public (string Key, string[] Alternates)? SecureKeys()
    {
        lock (_keys)
        {
            if (_seal.Secure is not { } key)
            {
                return null;
            }
            return (Convert.ToHexString(key), [.. _entries.Where(e => e.Secure is not null && !ReferenceEquals(e, _seal)).Select(e => Convert.ToHexString(e.Secure!))]);
        }
    }

    /// <summary>How many keys verify now (1; up to 4 while host keys rotate). Diagnostics and tests.</summary>
    public int KeyCount => _entries.Length;

    /// <summary>Whether this end seals under this host's current key (the peer showed it holds it). Diagnostics and tests.</summary>
    public bool SealsWithCurrentKey => _mineConfirmed;

    /// <summary>Writes the tag of <paramref name="datagram"/>[..<paramref name="length"/>] right after it; returns the new length.</summary>
    public int Seal(Span<byte> datagram, int length)
    {
        _seal.Sealer.AppendData(datagram[..length]);
        _seal.Sealer.GetHashAndReset(_mac);
        _mac.AsSpan(0, TagLength).CopyTo(datagram[length..]);
        return length + TagLength;
    }

    /// <summary>
    /// True when the datagram's last 16 bytes are the tag of what precedes them under a key of the pair this end holds
    /// (the one it seals with first). An authentic datagram under this host's current key shows the peer holds it: this
    /// end seals with it from then on.
    /// </summary>
    public bool Verify(ReadOnlySpan<byte> datagram)
    {
        if (datagram.Length < TagLength)
        {
            return false;
        }
        if (Verifies(_seal, datagram))
        {
            return true;
        }
        foreach (var entry in _entries)
        {
            if (!ReferenceEquals(entry, _seal) && Verifies(entry, datagram))
            {
                if (entry.MineCurrent && !_mineConfirmed)
                {
                    _mineConfirmed = true;
                    ChooseSeal();
                }
                return true;
            }
        }
        return false;
    }

    private bool Verifies(Entry entry, ReadOnlySpan<byte> datagram)
    {
        entry.Verifier.AppendData(datagram[..^TagLength]);
        entry.Verifier.GetHashAndReset(_mac);
        return CryptographicOperations.FixedTimeEquals(_mac.AsSpan(0, TagLength), datagram[^TagLength..]);
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

    /// <summary>One key of the pair: an HMAC per direction, and the secure stack's key derived beside it.</summary>
    private sealed class Entry : IDisposable
    {
        public Entry(ReadOnlySpan<byte> overlayKey, string local, string remote, bool MineCurrent, bool TheirsNewest, byte[]? Secure)
        {
            Sealer = Hmac(overlayKey, local, remote);
            Verifier = Hmac(overlayKey, remote, local);
            (this.MineCurrent, this.TheirsNewest) = (MineCurrent, TheirsNewest);
            this.Secure = Secure?.ToArray();
        }

        public IncrementalHash Sealer { get; }
        public IncrementalHash Verifier { get; }
        public bool MineCurrent { get; }
        public bool TheirsNewest { get; }
        public byte[]? Secure { get; }

        public void Dispose()
        {
            Sealer.Dispose();
            Verifier.Dispose();
            if (Secure is not null)
            {
                CryptographicOperations.ZeroMemory(Secure);
            }
        }
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
        foreach (var entry in _entries)
        {
            entry.Dispose();
        }
    }
}
