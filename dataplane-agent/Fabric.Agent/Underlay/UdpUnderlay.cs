using System.Net;
using System.Net.Sockets;

namespace Fabric.Agent.Underlay;

/// <summary>
/// The underlay as a kernel UDP socket: the kernel routes, resolves next hops (ARP/ND through its neighbour table)
/// and completes checksums, so the agent hands it datagrams and receives datagrams with their source. One socket per
/// address family; a receive thread per socket calls the handler.
/// </summary>
public sealed class UdpUnderlay : IDisposable
{
    private readonly Socket _socket;
    private readonly Thread _receiver;
    private readonly UnderlayHandler _handler;
    private volatile bool _stopping;
    private long _sendFailures;

    /// <summary>Called for each datagram received; the span and the address are valid only during the call.</summary>
    public delegate void UnderlayHandler(ReadOnlySpan<byte> datagram, SocketAddress source);

    /// <summary>Binds <paramref name="local"/> and starts receiving. Throws naming the address when it cannot bind.</summary>
    public UdpUnderlay(IPEndPoint local, UnderlayHandler handler)
    {
        _handler = handler;
        _socket = new Socket(local.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        if (local.AddressFamily == AddressFamily.InterNetworkV6)
        {
            _socket.DualMode = false;
        }
        try
        {
            _socket.ReceiveBufferSize = 8 * 1024 * 1024;
            _socket.SendBufferSize = 8 * 1024 * 1024;
            _socket.Bind(local);
        }
        catch (SocketException e)
        {
            _socket.Dispose();
            throw new InvalidOperationException($"Cannot bind the underlay to {local}: {e.Message}.", e);
        }
        Local = (IPEndPoint)_socket.LocalEndPoint!;
        _receiver = new Thread(ReceiveLoop) { IsBackground = true, Name = $"underlay-rx {Local}" };
        _receiver.Start();
    }

    /// <summary>The bound address and port.</summary>
    public IPEndPoint Local { get; }

    public long SendFailures => Interlocked.Read(ref _sendFailures);

    /// <summary>Sends one datagram; false (and counted) when the kernel refuses it.</summary>
    public bool Send(ReadOnlySpan<byte> datagram, SocketAddress destination)
    {
        try
        {
            _socket.SendTo(datagram, SocketFlags.None, destination);
            return true;
        }
        catch (SocketException)
        {
            // ENOBUFS, EMSGSIZE, unreachable: a data-path outcome, counted by the caller.
            Interlocked.Increment(ref _sendFailures);
            return false;
        }
    }

    private void ReceiveLoop()
    {
        var buffer = GC.AllocateUninitializedArray<byte>(65536, pinned: true);
        var source = new SocketAddress(_socket.AddressFamily);
        _socket.ReceiveTimeout = 250;
        while (!_stopping)
        {
            int n;
            try
            {
                n = _socket.ReceiveFrom(buffer, SocketFlags.None, source);
            }
            catch (SocketException)
            {
                continue;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            _handler(buffer.AsSpan(0, n), source);
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _socket.Dispose();
        _receiver.Join(TimeSpan.FromSeconds(2));
    }
}
