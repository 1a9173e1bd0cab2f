using System.Net;
using System.Net.Sockets;

namespace Fabric.Testing;

/// <summary>Loopback TCP ports for servers a test starts.</summary>
public static class LoopbackPorts
{
    /// <summary>A port nothing listens on right now (the kernel's choice; another process could take it before use).</summary>
    public static int Free()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Whether something accepts TCP connections on the loopback port now (a server a test started is up).</summary>
    public static bool Listening(int port)
    {
        try
        {
            using var client = new TcpClient();
            client.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
