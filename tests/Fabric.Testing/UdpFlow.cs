using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Fabric.Hal.Linux;

namespace Fabric.Testing;

/// <summary>One datagram as received: its sequence number, when it was sent and when it arrived (Stopwatch ticks).</summary>
public readonly record struct UdpArrival(long Sequence, long SentTicks, long ArrivedTicks);

/// <summary>
/// A paced UDP flow from one namespace to another, each datagram carrying its sequence number and send time, so loss,
/// rate and delay are measured by the receiver. Sockets are created inside the namespaces and used from this process.
/// </summary>
public sealed class UdpFlow : IDisposable
{
    private readonly Socket _sender;
    private readonly Socket _receiver;
    private readonly IPEndPoint _target;
    private readonly List<UdpArrival> _arrivals = [];
    private readonly Thread _receiveThread;
    private volatile bool _stopping;

    public UdpFlow(string senderNamespace, string receiverNamespace, string receiverAddress, int port = 47999)
    {
        _target = new IPEndPoint(IPAddress.Parse(receiverAddress), port);
        _receiver = NetworkNamespace.Run(receiverNamespace, () => new Socket(_target.AddressFamily, SocketType.Dgram, ProtocolType.Udp));
        _receiver.ReceiveBufferSize = 8 * 1024 * 1024;
        _receiver.Bind(_target);
        _receiver.ReceiveTimeout = 200;
        _sender = NetworkNamespace.Run(senderNamespace, () => new Socket(_target.AddressFamily, SocketType.Dgram, ProtocolType.Udp));
        _sender.SendBufferSize = 4 * 1024 * 1024;
        _receiveThread = new Thread(ReceiveLoop) { IsBackground = true, Name = "udpflow-rx" };
        _receiveThread.Start();
    }

    /// <summary>Sends <paramref name="count"/> datagrams of <paramref name="payloadBytes"/> at <paramref name="packetsPerSecond"/>; returns the next sequence number.</summary>
    public long Send(long firstSequence, int count, int payloadBytes, double packetsPerSecond)
    {
        var payload = new byte[Math.Max(16, payloadBytes)];
        var start = Stopwatch.GetTimestamp();
        for (var i = 0; i < count; i++)
        {
            // Token-bucket pacing: send what the elapsed time allows, then sleep a millisecond.
            while ((Stopwatch.GetTimestamp() - start) * packetsPerSecond / Stopwatch.Frequency < i)
            {
                Thread.Sleep(1);
            }
            BinaryPrimitives.WriteInt64LittleEndian(payload, firstSequence + i);
            BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(8), Stopwatch.GetTimestamp());
            try
            {
                _sender.SendTo(payload, _target);
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.NoBufferSpaceAvailable)
            {
                // A full local queue is loss before the link; the receiver counts it as missing.
            }
        }
        return firstSequence + count;
    }

    /// <summary>Sends for <paramref name="duration"/> at the given rate; returns the next sequence number.</summary>
    public long SendFor(TimeSpan duration, int payloadBytes, double packetsPerSecond, long firstSequence = 0) =>
        Send(firstSequence, (int)(duration.TotalSeconds * packetsPerSecond), payloadBytes, packetsPerSecond);

    /// <summary>Waits until no datagram has arrived for <paramref name="quiet"/>, then returns what arrived so far.</summary>
    public List<UdpArrival> Drain(TimeSpan quiet)
    {
        var last = -1;
        while (true)
        {
            Thread.Sleep(quiet);
            lock (_arrivals)
            {
                if (_arrivals.Count == last)
                {
                    return [.. _arrivals];
                }
                last = _arrivals.Count;
            }
        }
    }

    /// <summary>Forgets what arrived so far.</summary>
    public void Reset()
    {
        lock (_arrivals)
        {
            _arrivals.Clear();
        }
    }

    private void ReceiveLoop()
    {
        var buffer = new byte[65536];
        while (!_stopping)
        {
            int n;
            try
            {
                n = _receiver.Receive(buffer);
            }
            catch (SocketException)
            {
                continue;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            var now = Stopwatch.GetTimestamp();
            if (n >= 16)
            {
                lock (_arrivals)
                {
                    _arrivals.Add(new UdpArrival(BinaryPrimitives.ReadInt64LittleEndian(buffer), BinaryPrimitives.ReadInt64LittleEndian(buffer.AsSpan(8)), now));
                }
            }
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _receiveThread.Join(TimeSpan.FromSeconds(1));
        _sender.Dispose();
        _receiver.Dispose();
    }
}
