using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Fabric.Hal.Linux;
using Fabric.LinkEmulator;

namespace Fabric.Embedded;

/// <summary>
/// A link between two simulated hosts' underlays, emulated in this process: each host sends its datagrams for the other
/// to a loopback socket of the link (<see cref="AddressForA"/> is where host A reaches host B), which passes them
/// through the emulator's <see cref="LinkDirection"/> (delay, loss, rate or trace, queue) and sends them on from the
/// socket the other host knows as its peer. So the agents see a real UDP path with real conditions, no root needed.
/// </summary>
public sealed class EmulatedLink : IDisposable
{
    private readonly Socket _a;
    private readonly Socket _b;
    private readonly SocketAddress _underlayA;
    private readonly SocketAddress _underlayB;
    private readonly LinkDirection _aToB;
    private readonly LinkDirection _bToA;
    private readonly IReadOnlyList<LinkPhase> _phases;
    private readonly object _gate = new();
    private int _phase;
    private long _phaseEnds;

    /// <remarks>
    /// <c>bindA</c> is where the socket host A sends to binds (an address host A reaches; port 0 for any), <c>underlayA</c>
    /// host A's underlay socket, where B's datagrams are delivered; the same for B.
    /// </remarks>
    public EmulatedLink(string hostA, IPEndPoint bindA, IPEndPoint underlayA, string hostB, IPEndPoint bindB, IPEndPoint underlayB, IReadOnlyList<LinkPhase> phases,
        int firstPhase, double firstPhaseShare, int seed)
    {
        (HostA, HostB, _underlayA, _underlayB, _phases) = (hostA, hostB, underlayA.Serialize(), underlayB.Serialize(), phases);
        _a = Bound(bindA);
        _b = Bound(bindB);
        _phase = firstPhase % phases.Count;
        var now = Now;
        _aToB = new LinkDirection(phases[_phase].Forward, now, seed);
        _bToA = new LinkDirection(phases[_phase].Reverse, now, seed + 1);
        // The first phase may be cut short, so that links do not all change at the same moment.
        _phaseEnds = now + (long)(phases[_phase].Duration.TotalNanoseconds * Math.Clamp(firstPhaseShare, 0.05, 1));
    }

    private static Socket Bound(IPEndPoint at)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { Blocking = false, ReceiveBufferSize = 4 << 20 };
        socket.Bind(at);
        return socket;
    }

    internal static long Now => (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));

    public string HostA { get; }

    public string HostB { get; }

    /// <summary>Where host A sends for host B (and what it sees B's datagrams come from).</summary>
    public IPEndPoint AddressForA => (IPEndPoint)_a.LocalEndPoint!;

    /// <summary>Where host B sends for host A.</summary>
    public IPEndPoint AddressForB => (IPEndPoint)_b.LocalEndPoint!;

    /// <summary>The conditions now, and when they change.</summary>
    public (LinkPhase Phase, TimeSpan Remaining) Current
    {
        get
        {
            lock (_gate)
            {
                return (_phases[_phase], TimeSpan.FromTicks(Math.Max(0, _phaseEnds - Now) / 100));
            }
        }
    }

    public (LinkStats AToB, LinkStats BToA) Stats
    {
        get
        {
            lock (_gate)
            {
                return (_aToB.Stats, _bToA.Stats);
            }
        }
    }

    /// <summary>The link's two sockets: side A (host A sends here) and side B.</summary>
    internal (Socket A, Socket B) Sockets => (_a, _b);

    /// <summary>Takes every datagram waiting on one side's socket into its direction (without blocking); the pump's next <see cref="Deliver()"/> sees when it is due.</summary>
    internal void Take(bool fromA, byte[] buffer)
    {
        var socket = fromA ? _a : _b;
        lock (_gate)
        {
            var direction = fromA ? _aToB : _bToA;
            // -1: nothing more (or an ICMP error for an earlier datagram, which is not a datagram either).
            for (int length; (length = SocketPoller.TryReceive(socket, buffer)) >= 0;)
            {
                direction.Offer(buffer.AsSpan(0, length), Now);
            }
        }
    }

    /// <summary>
    /// Sends on what is due by <see cref="LinkPump.Slack"/> from now (and moves to the next phase when it is time); returns
    /// when something is next due (nanoseconds).
    /// </summary>
    internal long Deliver()
    {
        lock (_gate)
        {
            var now = Now;
            if (now >= _phaseEnds)
            {
                _phase = (_phase + 1) % _phases.Count;
                _aToB.SetProfile(_phases[_phase].Forward, now);
                _bToA.SetProfile(_phases[_phase].Reverse, now);
                _phaseEnds = now + (long)_phases[_phase].Duration.TotalNanoseconds;
            }
            Deliver(_aToB, _b, _underlayB, now + LinkPump.Slack);
            Deliver(_bToA, _a, _underlayA, now + LinkPump.Slack);
            return Math.Min(Math.Min(_aToB.NextEventNanoseconds, _bToA.NextEventNanoseconds), _phaseEnds);
        }
    }

    private static void Deliver(LinkDirection direction, Socket from, SocketAddress to, long now)
    {
        while (direction.TryTakeDue(now, out var frame))
        {
            try
            {
                from.SendTo(frame.Span, SocketFlags.None, to);
            }
            catch (SocketException)
            {
                // The host is gone or its socket buffer full: the datagram is lost, as on a real link.
            }
            finally
            {
                LinkDirection.Release(frame);
            }
        }
    }

    public void Dispose()
    {
        _a.Dispose();
        _b.Dispose();
    }
}

/// <summary>
/// Moves datagrams through every emulated link on one thread: it waits in ppoll(2) on all the links' sockets until a
/// datagram comes or the next one is due (nanosecond timeout, so departures keep the emulated delays), takes what came
/// from the sockets that have some, and sends on what is due. One system call per wake-up and no polling: the cost
/// follows the traffic, not the number of links.
/// </summary>
public sealed class LinkPump : IDisposable
{
    /// <summary>
    /// How early a datagram may leave: a wake-up sends what falls due within this much of it too, so the frames of a burst
    /// a rate or a trace spaces a few microseconds apart leave in one wake-up, not one each (a wake-up, not a frame, is
    /// what costs on the embedded default: its fleet makes a few thousand a second). A Mahimahi trace is itself
    /// millisecond-grained.
    /// </summary>
    public const long Slack = 250_000;

    private readonly IReadOnlyList<EmulatedLink> _links;
    private readonly Thread _thread;
    private volatile bool _stop;

    public LinkPump(IReadOnlyList<EmulatedLink> links)
    {
        _links = links;
        _thread = new Thread(Run) { IsBackground = true, Name = "emb-links" };
        _thread.Start();
    }

    private void Run()
    {
        var poller = new SocketPoller([.. _links.SelectMany(l => new[] { l.Sockets.A, l.Sockets.B })]);
        var buffer = new byte[65536];
        while (!_stop)
        {
            var next = long.MaxValue;
            foreach (var link in _links)
            {
                next = Math.Min(next, link.Deliver());
            }
            // At most 100 ms asleep, so a stop is seen soon.
            if (!poller.Wait(Math.Clamp(next - EmulatedLink.Now, 0, 100_000_000)))
            {
                continue;
            }
            for (var i = 0; i < _links.Count * 2; i++)
            {
                if (poller.TakeReadable(i))
                {
                    _links[i / 2].Take(i % 2 == 0, buffer);
                }
            }
        }
    }

    public void Dispose()
    {
        _stop = true;
        _thread.Join();
    }
}
