using System.Buffers.Binary;

namespace Fabric.Agent.Switching;

/// <summary>Op codes of agent control messages (Fabric payload type 5): <c>op, slot[, UTF-8 text]</c>.</summary>
internal static class ControlMessages
{
    public const byte Open = 1;
    public const byte Opened = 2;
    public const byte Refused = 3;
    public const byte Close = 4;
    public const byte Unknown = 5;

    public static byte[] Make(byte op, int slot, string text = "")
    {
        var message = new byte[2 + System.Text.Encoding.UTF8.GetByteCount(text)];
        message[0] = op;
        message[1] = (byte)slot;
        System.Text.Encoding.UTF8.GetBytes(text, message.AsSpan(2));
        return message;
    }

    public static string Text(byte[] message) => message.Length <= 2 ? "" : System.Text.Encoding.UTF8.GetString(message.AsSpan(2));

    /// <summary>
    /// An open request: the stack id and the id of the instance the opener put in the slot (random per opening), so the
    /// peer can tell a repeated request (same instance: keep its own) from a slot opened anew after a restart (new
    /// instance: replace its own, whose state belongs to the opener's old one).
    /// </summary>
    public static byte[] MakeOpen(int slot, string stackId, ulong openId) => Make(Open, slot, $"{stackId} {openId:x16}");

    /// <summary>The stack id and instance id of an open request; the id is 0 when the opener sent none.</summary>
    public static (string StackId, ulong OpenId) ParseOpen(byte[] message)
    {
        var text = Text(message);
        var space = text.IndexOf(' ', StringComparison.Ordinal);
        return space > 0 && ulong.TryParse(text.AsSpan(space + 1), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out var id)
            ? (text[..space], id) : (text, 0);
    }
}

/// <summary>What one VM sent on a path during an interval, through which stack, and what its TCP traffic got (<see cref="TcpMeter"/>).</summary>
public sealed record VmInterval(string VmId, string Stack, long Frames, long Bytes, TcpInterval Tcp);

/// <summary>
/// One measurement interval of a path. <see cref="Sent"/> and <see cref="Lost"/> count this host's datagrams by the
/// peer's reports (path sequence numbers), so they cover all traffic, probes included; RTT percentiles come from the
/// probes answered in the interval (NaN when none was).
/// </summary>
public sealed record PathMeasurement(double RttP50Ms, double RttP99Ms, double JitterMs, long Sent, long Lost, long ProbesSent, long ProbesAnswered,
    long BytesSent, TimeSpan Interval, IReadOnlyList<VmInterval> Vms)
{
    public double Loss => Sent <= 0 ? 0 : Math.Clamp((double)Lost / Sent, 0, 1);
}

/// <summary>
/// A path's measurements: active probes (RTT, jitter) and the peer's receive counts echoed in probe replies (loss of
/// everything this host sent). Used under the path's gate.
/// </summary>
internal sealed class PathMonitor
{
    public const int ProbeLength = 16;
    public const int ReplyLength = 32;
    private readonly List<double> _rtts = [];
    private long _probeNumber;
    private long _probesSent;
    private long _probesAnswered;
    private double _jitter;
    private double _lastRtt = double.NaN;
    private long _peerReceived;
    private long _peerExpected;
    private long _reportedReceived;
    private long _reportedExpected;
    private long _reportedProbes;
    private long _reportedAnswered;
    private long _reportedBytes;
    private long _lastTake = -1;

    public PathMonitor()
    {
        // Numbers start anywhere: a reply to a probe of an earlier run of this agent matches nothing outstanding.
        _probeNumber = _highestAnswered = Random.Shared.NextInt64(1, long.MaxValue / 2);
    }

    /// <summary>The highest probe number answered: a reply counts only for a probe sent since, and only once.</summary>
    private long _highestAnswered;

    public void WriteProbe(Span<byte> buffer, long now)
    {
        BinaryPrimitives.WriteInt64BigEndian(buffer, ++_probeNumber);
        BinaryPrimitives.WriteInt64BigEndian(buffer[8..], now);
        _probesSent++;
    }

    public static void WriteReply(Span<byte> buffer, ReadOnlySpan<byte> probe, long received, long expected)
    {
        probe.CopyTo(buffer);
        BinaryPrimitives.WriteInt64BigEndian(buffer[16..], received);
        BinaryPrimitives.WriteInt64BigEndian(buffer[24..], expected);
    }

    public void OnReply(ReadOnlySpan<byte> reply, long now)
    {
        if (reply.Length != ReplyLength)
        {
            return;
        }
        var number = BinaryPrimitives.ReadInt64BigEndian(reply);
        var sent = BinaryPrimitives.ReadInt64BigEndian(reply[8..]);
        var rtt = (now - sent) / 1e6;
        if (number <= _highestAnswered || number > _probeNumber || rtt < 0 || rtt > 60_000)
        {
            // Not a probe outstanding here: a replay, a duplicate, or a reply overtaken by a later one.
            return;
        }
        _highestAnswered = number;
        _probesAnswered++;
        _rtts.Add(rtt);
        // RFC 3550's interarrival jitter, over round trips.
        if (!double.IsNaN(_lastRtt))
        {
            _jitter += (Math.Abs(rtt - _lastRtt) - _jitter) / 16;
        }
        _lastRtt = rtt;
        // Cumulative counts: a reordered older reply must not move them back.
        _peerReceived = Math.Max(_peerReceived, BinaryPrimitives.ReadInt64BigEndian(reply[16..]));
        _peerExpected = Math.Max(_peerExpected, BinaryPrimitives.ReadInt64BigEndian(reply[24..]));
    }

    /// <summary>At most one "not encrypted" event per second per path.</summary>
    public RateLimit UnencryptedReports { get; } = new(TimeSpan.FromSeconds(1));

    /// <summary>At most one "unknown slot" answer per 100 ms per path: a burst of stray datagrams must not become a burst of replies.</summary>
    public RateLimit UnknownReports { get; } = new(TimeSpan.FromMilliseconds(100));

    public PathMeasurement Take(long now, long bytesSent, List<VmInterval> vms)
    {
        var interval = _lastTake < 0 ? TimeSpan.Zero : TimeSpan.FromTicks((now - _lastTake) / 100);
        _lastTake = now;
        _rtts.Sort();
        var p50 = _rtts.Count == 0 ? double.NaN : _rtts[(_rtts.Count - 1) / 2];
        var p99 = _rtts.Count == 0 ? double.NaN : _rtts[(int)Math.Ceiling(0.99 * _rtts.Count) - 1];
        _rtts.Clear();
        var expected = _peerExpected - _reportedExpected;
        var received = _peerReceived - _reportedReceived;
        var probes = _probesSent - _reportedProbes;
        var answered = _probesAnswered - _reportedAnswered;
        (_reportedExpected, _reportedReceived, _reportedProbes, _reportedAnswered) = (_peerExpected, _peerReceived, _probesSent, _probesAnswered);
        long sent;
        long lost;
        if (expected > 0)
        {
            (sent, lost) = (expected, Math.Max(0, expected - received));
        }
        else
        {
            // No reply brought counts: the probes themselves are the evidence (all lost when none came back).
            (sent, lost) = (probes, probes - answered);
        }
        var bytes = bytesSent - _reportedBytes;
        _reportedBytes = bytesSent;
        return new PathMeasurement(p50, p99, _jitter, sent, lost, probes, answered, bytes, interval, vms);
    }
}
