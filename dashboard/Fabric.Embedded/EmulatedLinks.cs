using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
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
    private readonly IPEndPoint _underlayA;
    private readonly IPEndPoint _underlayB;
    private readonly LinkDirection _aToB;
    private readonly LinkDirection _bToA;
    private readonly IReadOnlyList<LinkPhase> _phases;
    private readonly object _gate = new();
    private readonly byte[] _buffer = new byte[65536];
    private EndPoint _any = new IPEndPoint(IPAddress.Any, 0);
    private int _phase;
    private long _phaseEnds;

    public EmulatedLink(string hostA, IPEndPoint underlayA, string hostB, IPEndPoint underlayB, IReadOnlyList<LinkPhase> phases, int firstPhase, double firstPhaseShare, int seed)
    {
        (HostA, HostB, _underlayA, _underlayB, _phases) = (hostA, hostB, underlayA, underlayB, phases);
        _a = Bound();
        _b = Bound();
        _phase = firstPhase % phases.Count;
        var now = Now;
        _aToB = new LinkDirection(phases[_phase].Forward, now, seed);
        _bToA = new LinkDirection(phases[_phase].Reverse, now, seed + 1);
        // The first phase may be cut short, so that links do not all change at the same moment.
        _phaseEnds = now + (long)(phases[_phase].Duration.TotalNanoseconds * Math.Clamp(firstPhaseShare, 0.05, 1));
    }

    private static Socket Bound()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { Blocking = false, ReceiveBufferSize = 4 << 20 };
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return socket;
    }

    private static long Now => (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));

    public string HostA { get; }

    public string HostB { get; }

    /// <summary>Where host A sends for host B (and what it sees B's datagrams come from).</summary>
    public IPEndPoint AddressForA => (IPEndPoint)_a.LocalEndPoint!;

    /// <summary>Where host B sends for host A.</summary>
    public IPEndPoint AddressForB => (IPEndPoint)_b.LocalEndPoint!;

    internal IEnumerable<Socket> Sockets => [_a, _b];

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

    /// <summary>Moves datagrams in and out; returns when something is next due (nanoseconds, <see cref="long.MaxValue"/> when idle).</summary>
    internal long Pump()
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
            Take(_a, _aToB, now);
            Take(_b, _bToA, now);
            Deliver(_aToB, _b, _underlayB, now);
            Deliver(_bToA, _a, _underlayA, now);
            return Math.Min(Math.Min(_aToB.NextEventNanoseconds, _bToA.NextEventNanoseconds), _phaseEnds);
        }
    }

    private void Take(Socket socket, LinkDirection direction, long now)
    {
        while (socket.Available > 0)
        {
            int length;
            try
            {
                length = socket.ReceiveFrom(_buffer, ref _any);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.ConnectionReset)
            {
                return;
            }
            direction.Offer(_buffer.AsSpan(0, length), now);
        }
    }

    private static void Deliver(LinkDirection direction, Socket from, IPEndPoint to, long now)
    {
        while (direction.TryTakeDue(now, out var frame))
        {
            try
            {
                from.SendTo(frame.Span, to);
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

/// <summary>One thread moving datagrams through every emulated link: it waits for a datagram or the next due time.</summary>
public sealed class LinkPump : IDisposable
{
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
        var all = _links.SelectMany(l => l.Sockets).ToList();
        var ready = new List<Socket>(all.Count);
        while (!_stop)
        {
            var next = long.MaxValue;
            foreach (var link in _links)
            {
                next = Math.Min(next, link.Pump());
            }
            var now = (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));
            // At most 1 ms asleep: the emulators' departures are computed when they are pumped.
            var waitMicroseconds = (int)Math.Clamp((next - now) / 1000, 0, 1000);
            if (waitMicroseconds > 0)
            {
                ready.Clear();
                ready.AddRange(all);
                try
                {
                    Socket.Select(ready, null, null, waitMicroseconds);
                }
                catch (ObjectDisposedException)
                {
                    return;
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
