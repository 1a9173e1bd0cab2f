using System.Net;
using System.Net.Sockets;

namespace Fabric.Testing;

/// <summary>Loopback TCP ports for servers a test starts.</summary>
public static class LoopbackPorts
{
    private static readonly HashSet<int> Given = [];

    /// <summary>
    /// A port nothing listens on right now (the kernel's choice; another process could take it before use), and never one
    /// this process was given before: the kernel may hand the same port out again once its listener is closed, and a test
    /// that asked for a silo's gateway and its health port got one port for both (a CI run's Redis test).
    /// </summary>
    public static int Free()
    {
        while (true)
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            lock (Given)
            {
                if (Given.Add(port))
                {
                    return port;
                }
            }
        }
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
