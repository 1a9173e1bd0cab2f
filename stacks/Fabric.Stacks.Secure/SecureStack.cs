using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Fabric.Wire;

namespace Fabric.Stacks.Secure;

/// <summary>
/// Seals every frame with ChaCha20-Poly1305 (payload type StackEncoded) under keys no other instance ever used.
/// <para>Session: each instance draws a random 16-byte session nonce when it is created. The two ends exchange them in
/// hellos (type StackControl, authenticated with HMAC-SHA256 under a key derived from the path key, the direction bound
/// into the MAC so a hello reflected at its sender does not verify). An end seals only once it holds the peer's nonce and
/// knows the peer holds its own (a hello echoing it, or an authentic packet); until then frames wait in a bounded queue,
/// never in the clear. Keys are derived with HKDF-SHA256 from the path key, both session nonces, the direction and a key
/// epoch, so a restarted agent, a re-opened slot or a swap seals under fresh keys, and a captured stream replayed into a
/// new session does not open. The packet counter never goes back within an instance, so no (key, nonce) pair repeats even
/// if a session were entered twice; and a peer nonce an instance has left is never taken again (an old hello replayed
/// cannot pull it back). A hello with a new peer nonce (the peer restarted) starts a new session at once: the restarted
/// peer's traffic flows again after one exchange.</para>
/// <para>Data: stack fields (12 bytes) are the epoch (32 bits) and the counter (64 bits), together the nonce. The virtual
/// network id from the Fabric header and the fields are authenticated, so a frame cannot be moved to another tenant's
/// network. The receiver keeps a 1024-packet replay window: a tampered packet (AuthenticationFailed), a replay
/// (Duplicate) and one older than the window (OutOfWindow) are dropped and counted. Rekeying without loss: the sender
/// moves to the next epoch after <c>rekeyPackets</c> packets or <c>rekeySeconds</c>, and the receiver keeps the
/// previous epoch's key, so packets in flight still open.</para>
/// <para>Host keys rotating: with <c>alternateKeys</c> (up to three other keys of the pair, comma-separated hex) the two ends
/// may have been given different keys of the pair; a hello that verifies only under an alternate makes the end whose
/// host id sorts second take that key for its hellos and the sessions it starts (the first never moves, so the two never
/// cross). A live session keeps the key it was derived from.</para>
/// </summary>
public sealed class SecureStack : IStack
{
    public const int FieldLength = 12;
    public const int TagLength = 16;
    public const int Window = 1024;

    /// <summary>A hello: kind, flags, the sender's session nonce, the peer nonce it holds (zeros: none), the MAC.</summary>
    public const int HelloLength = 2 + NonceLength + NonceLength + MacLength;
    private const byte KindHello = 1;
    private const byte FlagConfirmed = 1;
    private const int NonceLength = 16;
    private const int MacLength = 16;

    /// <summary>Frames (and bytes) held while the session is being established; beyond them frames are dropped (BufferFull).</summary>
    public const int QueueFrames = 1024;
    public const int QueueBytes = 2 << 20;

    private const long FirstHelloInterval = 100_000_000;
    private const long LastHelloInterval = 2_000_000_000;
    private const long ReplySpacing = 10_000_000;
    private const int LeftPeersKept = 256;

    private readonly StackCounters _counters = new();
    private byte[]? _pathKey;
    private readonly string _local;
    private readonly string _remote;
    private readonly IStackTelemetry _telemetry;
    private readonly long _rekeyPackets;
    private readonly long _rekeyNanoseconds;
    private readonly byte[] _scratch = new byte[65536];
    private readonly byte[] _nonce = new byte[12];
    private readonly byte[] _aad = new byte[4 + FieldLength];

    // Session.
    private byte[]? _helloKey;

    // While host keys rotate: the pair's other keys the peer may seal under instead (alternateKeys: path key and hello key
    // each), and the path key the live session runs under.
    private readonly List<(byte[] Path, byte[] Hello)> _alternates = [];
    private byte[]? _sessionKey;
    private readonly byte[] _mine = new byte[NonceLength];
    private byte[]? _peer;
    private bool _peerHoldsMine;
    private readonly Queue<byte[]> _leftPeers = new();
    private readonly Queue<(byte[] Frame, uint Network)> _waiting = new();
    private int _waitingBytes;
    private long _nextHello;
    private long _helloInterval = FirstHelloInterval;
    private long _lastReply = long.MinValue / 2;
    private long _lastUnconfirmedReply = long.MinValue / 2;
    private readonly byte[] _hello = new byte[HelloLength];
    private readonly byte[] _mac = new byte[32];

    // Sender. The counter never goes back for the instance's life, whatever the session or epoch.
    private uint _epoch;
    private ulong _counter;
    private long _epochPackets;
    private long _epochStarted = long.MinValue;
    private ChaCha20Poly1305? _seal;

    // Receiver.
    private readonly Dictionary<uint, ChaCha20Poly1305> _open = [];
    private uint _highestEpoch;
    private ulong _highest;
    private bool _any;
    private readonly ulong[] _seen = new ulong[Window / 64];

    public SecureStack(StackContext context)
    {
        _local = context.LocalHost;
        _remote = context.RemoteHost;
        _telemetry = context.Telemetry;
        var configuration = context.Configuration;
        _rekeyPackets = Setting(configuration, "rekeyPackets", 1 << 20);
        _rekeyNanoseconds = Math.Min(Setting(configuration, "rekeySeconds", 120), 86_400) * 1_000_000_000;
        if (!configuration.TryGetValue("key", out var hex))
        {
            _telemetry.Event("not-configured", "no 'key' in the stack's configuration: every packet is dropped");
        }
        else if (hex.Length != 64 || !hex.All(Uri.IsHexDigit))
        {
            _telemetry.Event("not-configured", "'key' is not 64 hex digits (32 bytes): every packet is dropped");
        }
        else
        {
            _pathKey = Convert.FromHexString(hex);
            _helloKey = HelloKeyOf(_pathKey);
            RandomNumberGenerator.Fill(_mine);
            if (configuration.TryGetValue("alternateKeys", out var alternates))
            {
                foreach (var alternate in alternates.Split(',', StringSplitOptions.RemoveEmptyEntries).Take(3))
                {
                    if (alternate.Length != 64 || !alternate.All(Uri.IsHexDigit))
                    {
                        _telemetry.Event("not-configured", "an 'alternateKeys' entry is not 64 hex digits (32 bytes): it is not used");
                        continue;
                    }
                    var path = Convert.FromHexString(alternate);
                    _alternates.Add((path, HelloKeyOf(path)));
                }
            }
        }
    }

    private static byte[] HelloKeyOf(byte[] pathKey) => HKDF.DeriveKey(HashAlgorithmName.SHA256, pathKey, 32, salt: [], Encoding.UTF8.GetBytes("fabric secure v2 hello"));

    /// <summary>Whether this end has taken the peer's key (one of its 'alternateKeys') for its hellos and next sessions. Diagnostics and tests.</summary>
    public bool OnAlternateKey { get; private set; }

    /// <summary>The epoch this end seals with now.</summary>
    public uint Epoch => _epoch;

    /// <summary>True once this end seals: it holds the peer's session nonce and knows the peer holds its own.</summary>
    public bool Established => _peer is not null && _peerHoldsMine;

    /// <summary>
    /// The session this end seals and opens under, as the two session nonces in hex (the host that sorts first's first;
    /// the nonces travel in the clear in hellos, so this is no secret); empty while the peer's is unknown. Diagnostics.
    /// </summary>
    public string Session => _peer is null ? "" : string.CompareOrdinal(_local, _remote) < 0
        ? Convert.ToHexString(_mine) + Convert.ToHexString(_peer) : Convert.ToHexString(_peer) + Convert.ToHexString(_mine);

    /// <summary>Frames waiting for the session (diagnostics).</summary>
    public int Waiting => _waiting.Count;

    /// <summary>Hellos are due while this end does not seal yet (the first at once); none after.</summary>
    public long NextTimerNanoseconds => _helloKey is null || Established ? long.MaxValue : _nextHello;

    private static long Setting(IReadOnlyDictionary<string, string> configuration, string key, long fallback) =>
        configuration.TryGetValue(key, out var text) && long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value > 0 ? value : fallback;

    /// <summary>The key of one direction and epoch of this session: both session nonces salt it, the host that sorts first's first.</summary>
    private ChaCha20Poly1305 Derive(string from, string to, uint epoch)
    {
        var info = Encoding.UTF8.GetBytes($"fabric secure v2 {Direction(from, to)} epoch {epoch}");
        byte[] salt = string.CompareOrdinal(_local, _remote) < 0 ? [.. _mine, .. _peer!] : [.. _peer!, .. _mine];
        var key = HKDF.DeriveKey(HashAlgorithmName.SHA256, _sessionKey ?? _pathKey!, 32, salt, info);
        try
        {
            return new ChaCha20Poly1305(key);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }
    }

    public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
    {
        _counters.FramesIn++;
        if (_pathKey is null)
        {
            _counters.Drop(StackDropReason.NotConfigured);
            return;
        }
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        if (!Established)
        {
            // Never in the clear and never under a key the peer may not hold: the frame waits for the session.
            if (_waiting.Count >= QueueFrames || _waitingBytes + frame.Length > QueueBytes)
            {
                _counters.Drop(StackDropReason.BufferFull);
            }
            else
            {
                _waiting.Enqueue((frame.ToArray(), underlay.VirtualNetwork));
                _waitingBytes += frame.Length;
            }
            if (nowNanoseconds >= _nextHello)
            {
                SendHello(nowNanoseconds, underlay);
            }
            return;
        }
        Seal(frame, nowNanoseconds, underlay);
    }

    private void Seal(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
    {
        var length = FieldLength + frame.Length + TagLength;
        var buffer = underlay.Begin(length);
        if (buffer.Length < length)
        {
            _counters.Drop(buffer.IsEmpty ? StackDropReason.NoBuffer : StackDropReason.TooLarge);
            return;
        }
        if (_seal is null || _epochPackets >= _rekeyPackets || nowNanoseconds - _epochStarted >= _rekeyNanoseconds)
        {
            if (_seal is not null)
            {
                _seal.Dispose();
                _epoch++;
            }
            _seal = Derive(_local, _remote, _epoch);
            (_epochPackets, _epochStarted) = (0, nowNanoseconds);
        }
        var counter = _counter++;
        _epochPackets++;
        BinaryPrimitives.WriteUInt32BigEndian(buffer, _epoch);
        BinaryPrimitives.WriteUInt64BigEndian(buffer[4..], counter);
        Associated(underlay.VirtualNetwork, buffer[..FieldLength]);
        Nonce(_epoch, counter);
        _seal.Encrypt(_nonce, frame, buffer.Slice(FieldLength, frame.Length), buffer.Slice(FieldLength + frame.Length, TagLength), _aad);
        underlay.Commit(FabricPayloadType.StackEncoded, FieldLength, length);
        _counters.DatagramsOut++;
    }

    private void Nonce(uint epoch, ulong counter)
    {
        BinaryPrimitives.WriteUInt32BigEndian(_nonce, epoch);
        BinaryPrimitives.WriteUInt64BigEndian(_nonce.AsSpan(4), counter);
    }

    private void Associated(uint vni, ReadOnlySpan<byte> fields)
    {
        BinaryPrimitives.WriteUInt32BigEndian(_aad, vni);
        fields.CopyTo(_aad.AsSpan(4));
    }

    public void Receive(in StackDatagram datagram, long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        _counters.DatagramsIn++;
        if (datagram.Header.PayloadType == FabricPayloadType.StackControl)
        {
            OnHello(datagram, nowNanoseconds, underlay);
            return;
        }
        if (datagram.Header.PayloadType != FabricPayloadType.StackEncoded)
        {
            _counters.Drop(StackDropReason.UnexpectedPayloadType);
            return;
        }
        if (datagram.StackFields.Length != FieldLength || datagram.Payload.Length < TagLength + 14)
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        if (_pathKey is null)
        {
            _counters.Drop(StackDropReason.NotConfigured);
            return;
        }
        if (_peer is null)
        {
            // Sealed under a session this instance never took part in (a replay, or a peer that has not heard our hello).
            _counters.Drop(StackDropReason.AuthenticationFailed);
            return;
        }
        var epoch = BinaryPrimitives.ReadUInt32BigEndian(datagram.StackFields);
        var counter = BinaryPrimitives.ReadUInt64BigEndian(datagram.StackFields[4..]);
        if (_any && counter <= _highest)
        {
            if (_highest - counter >= Window)
            {
                _counters.Drop(StackDropReason.OutOfWindow);
                return;
            }
            if (Seen(counter))
            {
                _counters.Drop(StackDropReason.Duplicate);
                return;
            }
        }
        var open = Opener(epoch, out var cached);
        if (open is null)
        {
            _counters.Drop(StackDropReason.AuthenticationFailed);
            return;
        }
        var plain = _scratch.AsSpan(0, datagram.Payload.Length - TagLength);
        Associated(datagram.Header.VirtualNetworkId, datagram.StackFields);
        Nonce(epoch, counter);
        try
        {
            open.Decrypt(_nonce, datagram.Payload[..plain.Length], datagram.Payload[plain.Length..], plain, _aad);
        }
        catch (AuthenticationTagMismatchException)
        {
            if (!cached)
            {
                open.Dispose();
            }
            _counters.Drop(StackDropReason.AuthenticationFailed);
            return;
        }
        if (!cached)
        {
            _open[epoch] = open;
        }
        // Only an authentic packet moves the window and the epoch: forgeries cannot push genuine packets out.
        Mark(counter);
        if (!_peerHoldsMine)
        {
            // The peer sealed under our session: it holds our nonce, so this end may seal too.
            _peerHoldsMine = true;
            Flush(nowNanoseconds, underlay);
        }
        if (epoch > _highestEpoch)
        {
            _highestEpoch = epoch;
            foreach (var old in _open.Keys.Where(e => e + 1 < epoch).ToList())
            {
                _open.Remove(old, out var retired);
                retired?.Dispose();
            }
        }
        vm.Deliver(plain);
        _counters.FramesDelivered++;
    }

    /// <summary>
    /// The key for an epoch within one of the newest seen (the previous one stays for packets in flight). A key not yet
    /// cached (<paramref name="cached"/> false) is cached by the caller only once a packet authenticates under it, so
    /// forged epochs never grow the cache: it holds at most the keys of the newest authentic epoch, the one before it and
    /// one after.
    /// </summary>
    private ChaCha20Poly1305? Opener(uint epoch, out bool cached)
    {
        if (cached = _open.TryGetValue(epoch, out var open))
        {
            return open;
        }
        // A session starts at epoch 0: before its first authentic packet only 0 and 1 are plausible, after it the newest
        // authentic epoch, the one before and the one after. Anything else costs no key derivation.
        if (_any ? (long)epoch + 1 < _highestEpoch || epoch > (long)_highestEpoch + 1 : epoch > 1)
        {
            return null;
        }
        return Derive(_remote, _local, epoch);
    }

    /// <summary>How many epochs' opening keys are cached (diagnostics; bounded whatever arrives).</summary>
    public int CachedKeys => _open.Count;

    private bool Seen(ulong counter) => (_seen[(int)(counter % Window) / 64] & (1UL << (int)(counter % 64))) != 0;

    private void Mark(ulong counter)
    {
        if (!_any || counter > _highest)
        {
            // Slots between the old highest and this one are free again (they now stand for newer counters).
            var from = _any ? _highest + 1 : counter;
            if (counter - from >= Window)
            {
                Array.Clear(_seen);
            }
            else
            {
                for (var c = from; c < counter; c++)
                {
                    _seen[(int)(c % Window) / 64] &= ~(1UL << (int)(c % 64));
                }
            }
            _seen[(int)(counter % Window) / 64] &= ~(1UL << (int)(counter % 64));
            _highest = counter;
            _any = true;
        }
        _seen[(int)(counter % Window) / 64] |= 1UL << (int)(counter % 64);
    }

    public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        if (_helloKey is not null && !Established && nowNanoseconds >= _nextHello)
        {
            SendHello(nowNanoseconds, underlay);
        }
    }

    /// <summary>Sends this end's hello and schedules the next one (100 ms, doubling to 2 s while no answer comes).</summary>
    private void SendHello(long nowNanoseconds, IUnderlayOutput underlay)
    {
        WriteHello(nowNanoseconds, underlay, _peer, _peerHoldsMine);
        _helloInterval = Math.Min(_helloInterval * 2, LastHelloInterval);
    }

    /// <summary>Writes a hello: our nonce, the peer nonce it answers (<paramref name="echo"/>; none: zeros), whether we hold the peer's confirmation.</summary>
    private void WriteHello(long nowNanoseconds, IUnderlayOutput underlay, ReadOnlySpan<byte> echo, bool confirmed)
    {
        var buffer = underlay.Begin(HelloLength);
        if (buffer.Length < HelloLength)
        {
            _counters.Drop(buffer.IsEmpty ? StackDropReason.NoBuffer : StackDropReason.TooLarge);
            return;
        }
        _hello[0] = KindHello;
        _hello[1] = confirmed ? FlagConfirmed : (byte)0;
        _mine.CopyTo(_hello, 2);
        if (echo.IsEmpty)
        {
            Array.Clear(_hello, 2 + NonceLength, NonceLength);
        }
        else
        {
            echo.CopyTo(_hello.AsSpan(2 + NonceLength));
        }
        Mac(_helloKey!, _local, _remote, _hello.AsSpan(0, HelloLength - MacLength)).CopyTo(_hello.AsSpan(HelloLength - MacLength));
        _hello.CopyTo(buffer);
        underlay.Commit(FabricPayloadType.StackControl, 0, HelloLength);
        _lastReply = nowNanoseconds;
        _nextHello = nowNanoseconds + _helloInterval;
    }

    /// <summary>A direction between two host ids that no other pair of ids spells the same way (each is length-prefixed).</summary>
    private static string Direction(string from, string to) => $"{from.Length}:{from}>{to.Length}:{to}|";

    /// <summary>The hello MAC: HMAC-SHA256 under the hello key over the direction and the body, cut to 16 bytes.</summary>
    private ReadOnlySpan<byte> Mac(byte[] helloKey, string from, string to, ReadOnlySpan<byte> body)
    {
        var direction = Encoding.UTF8.GetBytes(Direction(from, to));
        using var hmac = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, helloKey);
        hmac.AppendData(direction);
        hmac.AppendData(body);
        hmac.GetHashAndReset(_mac);
        return _mac.AsSpan(0, MacLength);
    }

    /// <summary>
    /// A hello from the peer. A new peer nonce starts a new session when this end has none yet, or when the hello echoes
    /// our nonce (proof the sender is live now); otherwise it is only answered, and the live session stays. Starting a
    /// session forgets the old one (its nonce is never taken again, for the last 256). An echo of our nonce confirms the
    /// session; this end answers while either side still lacks something (a hello that changes nothing, such as a
    /// replay, is answered at most once per 10 ms).
    /// </summary>
    private void OnHello(in StackDatagram datagram, long nowNanoseconds, IUnderlayOutput underlay)
    {
        var hello = datagram.Payload;
        if (datagram.StackFields.Length != 0 || hello.Length != HelloLength || hello[0] != KindHello)
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        if (_helloKey is null)
        {
            _counters.Drop(StackDropReason.NotConfigured);
            return;
        }
        if (!CryptographicOperations.FixedTimeEquals(Mac(_helloKey, _remote, _local, hello[..^MacLength]), hello[^MacLength..]))
        {
            // While host keys rotate the two ends may have been given different keys of the pair, each knowing the other's
            // among its alternates. The end whose host id sorts second takes the other's (for its hellos and the sessions it
            // starts from now on; a live session keeps its own); the first keeps its own, so they never cross.
            var taken = -1;
            for (var i = 0; i < _alternates.Count && taken < 0 && string.CompareOrdinal(_local, _remote) > 0; i++)
            {
                if (CryptographicOperations.FixedTimeEquals(Mac(_alternates[i].Hello, _remote, _local, hello[..^MacLength]), hello[^MacLength..]))
                {
                    taken = i;
                }
            }
            if (taken < 0)
            {
                _counters.Drop(StackDropReason.AuthenticationFailed);
                return;
            }
            var other = _alternates[taken];
            _alternates[taken] = (_pathKey!, _helloKey!);
            (_pathKey, _helloKey) = other;
            OnAlternateKey = true;
            _telemetry.Event("peer-key", "the peer's hello came under the pair's other key (a host key is rotating): taken for hellos and new sessions");
        }
        var theirs = hello.Slice(2, NonceLength);
        var echoed = hello.Slice(2 + NonceLength, NonceLength);
        var peerConfirmed = (hello[1] & FlagConfirmed) != 0;
        foreach (var left in _leftPeers)
        {
            if (theirs.SequenceEqual(left))
            {
                // A hello of a session this instance has left: a replay.
                _counters.Drop(StackDropReason.Duplicate);
                return;
            }
        }
        var echoesMine = echoed.SequenceEqual(_mine);
        var changed = false;
        if (_peer is null || !theirs.SequenceEqual(_peer))
        {
            if (_peer is not null && !echoesMine)
            {
                // Another nonce than the live session's, from a sender that has not heard ours: a restarted peer, or an
                // old hello replayed. The live session stays; our answer echoes the nonce, so a genuine new peer confirms
                // it with its next hello and a replay goes no further (whoever sent it cannot echo our nonce).
                if (nowNanoseconds - _lastUnconfirmedReply >= ReplySpacing)
                {
                    WriteHello(nowNanoseconds, underlay, theirs, confirmed: false);
                    _lastUnconfirmedReply = nowNanoseconds;
                }
                return;
            }
            changed = true;
            if (_peer is not null)
            {
                _leftPeers.Enqueue(_peer);
                if (_leftPeers.Count > LeftPeersKept)
                {
                    _leftPeers.Dequeue();
                }
                _telemetry.Event("new-session", "the peer's session changed (it restarted or re-opened the slot): keys are derived afresh");
            }
            StartSession(theirs.ToArray());
        }
        if (echoesMine && !_peerHoldsMine)
        {
            _peerHoldsMine = changed = true;
        }
        if ((!echoesMine || !peerConfirmed) && (changed || nowNanoseconds - _lastReply >= ReplySpacing))
        {
            WriteHello(nowNanoseconds, underlay, _peer, _peerHoldsMine);
        }
        Flush(nowNanoseconds, underlay);
    }

    /// <summary>Takes <paramref name="peer"/> as the peer's session: new keys in both directions, an empty replay window.</summary>
    private void StartSession(byte[] peer)
    {
        _peer = peer;
        _sessionKey = _pathKey;
        _peerHoldsMine = false;
        _seal?.Dispose();
        _seal = null;
        _epoch = 0;
        foreach (var open in _open.Values)
        {
            open.Dispose();
        }
        _open.Clear();
        (_highestEpoch, _highest, _any) = (0, 0, false);
        Array.Clear(_seen);
        (_nextHello, _helloInterval) = (0, FirstHelloInterval);
    }

    /// <summary>Seals the frames that waited for the session, once it is established.</summary>
    private void Flush(long nowNanoseconds, IUnderlayOutput underlay)
    {
        if (!Established || _waiting.Count == 0)
        {
            return;
        }
        var network = underlay.VirtualNetwork;
        while (_waiting.TryDequeue(out var waiting))
        {
            _waitingBytes -= waiting.Frame.Length;
            underlay.VirtualNetwork = waiting.Network;
            Seal(waiting.Frame, nowNanoseconds, underlay);
        }
        underlay.VirtualNetwork = network;
    }

    /// <summary>Establishes a session with <paramref name="peer"/> in memory and carries one frame each way (the plug-in's warm-up).</summary>
    internal void Warm(SecureStack peer)
    {
        var (toPeer, toMe) = (new Loopback(), new Loopback());
        OnTimer(0, toMe, toPeer);
        peer.OnTimer(0, toPeer, toMe);
        for (var round = 0; round < 8 && toPeer.Count + toMe.Count > 0; round++)
        {
            toPeer.DeliverTo(peer, toMe);
            toMe.DeliverTo(this, toPeer);
        }
        var frame = new byte[64];
        Transmit(frame, 0, toPeer);
        peer.Transmit(frame, 0, toMe);
        toPeer.DeliverTo(peer, toMe);
        toMe.DeliverTo(this, toPeer);
    }

    /// <summary>An in-memory wire for <see cref="Warm"/>: what one end sends, handed to the other.</summary>
    private sealed class Loopback : IUnderlayOutput, IVmOutput
    {
        private readonly byte[] _buffer = new byte[2048];
        private readonly List<(FabricPayloadType Type, byte[] Fields, byte[] Payload)> _sent = [];

        public uint VirtualNetwork { get; set; } = 1;

        public int Count => _sent.Count;

        public Span<byte> Begin(int maxLength) => maxLength <= _buffer.Length ? _buffer.AsSpan(0, maxLength) : [];

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length) =>
            _sent.Add((payloadType, _buffer[..stackFieldLength], _buffer[stackFieldLength..length]));

        public void Deliver(ReadOnlySpan<byte> frame)
        {
        }

        public void DeliverTo(SecureStack stack, Loopback replies)
        {
            var sent = _sent.ToList();
            _sent.Clear();
            foreach (var (type, fields, payload) in sent)
            {
                stack.Receive(new StackDatagram(new FabricHeaderRepr(0, type, VirtualNetwork, 0, 0, (byte)fields.Length), fields, payload), 0, replies, replies);
            }
        }
    }

    public StackStats GetStats() => _counters.Snapshot();

    public StackState ExportState() => StackState.Empty("secure");

    public void ApplyPolicy(StackPolicy policy)
    {
    }

    public void Dispose()
    {
        _seal?.Dispose();
        _waiting.Clear();
        if (_helloKey is not null)
        {
            CryptographicOperations.ZeroMemory(_helloKey);
        }
        foreach (var open in _open.Values)
        {
            open.Dispose();
        }
        _open.Clear();
        foreach (var key in _alternates.SelectMany(a => new[] { a.Path, a.Hello }).Append(_pathKey).Append(_sessionKey))
        {
            if (key is not null)
            {
                CryptographicOperations.ZeroMemory(key);
            }
        }
    }
}
