using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Fabric.Wire;

namespace Fabric.Stacks.Secure;

/// <summary>
/// Seals every frame with ChaCha20-Poly1305 (payload type StackEncoded). Each direction has its own keys, derived with
/// HKDF-SHA256 from the path key in the configuration, the two host ids and a key epoch, so the two ends never share a
/// nonce. Stack fields (12 bytes): epoch (32 bits) and a packet counter (64 bits) that never repeats in a direction;
/// together they are the nonce. The virtual network id from the Fabric header and the fields are authenticated, so a
/// frame cannot be moved to another tenant's network. The receiver keeps a 1024-packet replay window: a tampered packet
/// (AuthenticationFailed), a replay (Duplicate) and one older than the window (OutOfWindow) are dropped and counted.
/// Rekeying without loss: the sender moves to the next epoch after <c>rekeyPackets</c> packets or <c>rekeySeconds</c>,
/// and the receiver keeps the previous epoch's key, so packets in flight still open.
/// </summary>
public sealed class SecureStack : IStack
{
    public const int FieldLength = 12;
    public const int TagLength = 16;
    public const int Window = 1024;

    private readonly StackCounters _counters = new();
    private readonly byte[]? _pathKey;
    private readonly string _local;
    private readonly string _remote;
    private readonly IStackTelemetry _telemetry;
    private readonly long _rekeyPackets;
    private readonly long _rekeyNanoseconds;
    private readonly byte[] _scratch = new byte[65536];
    private readonly byte[] _nonce = new byte[12];
    private readonly byte[] _aad = new byte[4 + FieldLength];

    // Sender.
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
        _rekeyNanoseconds = Setting(configuration, "rekeySeconds", 120) * 1_000_000_000;
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
        }
    }

    /// <summary>The epoch this end seals with now.</summary>
    public uint Epoch => _epoch;

    public long NextTimerNanoseconds => long.MaxValue;

    private static long Setting(IReadOnlyDictionary<string, string> configuration, string key, long fallback) =>
        configuration.TryGetValue(key, out var text) && long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value > 0 ? value : fallback;

    private ChaCha20Poly1305 Derive(string from, string to, uint epoch)
    {
        var info = Encoding.UTF8.GetBytes($"fabric secure v1 {from}->{to} epoch {epoch}");
        var key = HKDF.DeriveKey(HashAlgorithmName.SHA256, _pathKey!, 32, salt: [], info);
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
    /// forged epochs — before the first genuine packet any epoch is plausible — never grow the cache: it holds at most the
    /// keys of the newest authentic epoch, the one before it and one after.
    /// </summary>
    private ChaCha20Poly1305? Opener(uint epoch, out bool cached)
    {
        if (cached = _open.TryGetValue(epoch, out var open))
        {
            return open;
        }
        if (_any && ((long)epoch + 1 < _highestEpoch || epoch > (long)_highestEpoch + 1))
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
    }

    public StackStats GetStats() => _counters.Snapshot();

    public StackState ExportState() => StackState.Empty("secure");

    public void ApplyPolicy(StackPolicy policy)
    {
    }

    public void Dispose()
    {
        _seal?.Dispose();
        foreach (var open in _open.Values)
        {
            open.Dispose();
        }
        _open.Clear();
        if (_pathKey is not null)
        {
            CryptographicOperations.ZeroMemory(_pathKey);
        }
    }
}
