using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Fabric.Embedded;
using Fabric.Testing;

namespace Fabric.Dashboard.Tests;

/// <summary>The embedded fleet's links: real loopback UDP through the link emulator, each way with its own conditions, changing phase on time.</summary>
public sealed class EmulatedLinkTests
{
    [Fact]
    public void Datagrams_CrossEachWay_WithTheirDelay_ThenThePhaseChanges_AndItsLossApplies()
    {
        using var hostA = Udp();
        using var hostB = Udp();
        LinkPhase[] phases =
        [
            new("slow", "test", ["delay=30ms"], ["delay=5ms"], TimeSpan.FromSeconds(2)),
            new("cut", "test", ["loss=100%"], ["loss=100%"], TimeSpan.FromHours(1)),
        ];
        using var link = new EmulatedLink("a", new IPEndPoint(IPAddress.Loopback, 0), (IPEndPoint)hostA.LocalEndPoint!,
            "b", new IPEndPoint(IPAddress.Loopback, 0), (IPEndPoint)hostB.LocalEndPoint!, phases, firstPhase: 0, firstPhaseShare: 1, seed: 1);
        using var pump = new LinkPump([link]);

        // A → B: every datagram arrives, from the link's B side, and none before the 30 ms the phase says.
        var sent = Stopwatch.StartNew();
        for (var i = 0; i < 20; i++)
        {
            hostA.SendTo([(byte)i], link.AddressForA);
        }
        var (payloads, first) = Receive(hostB, 20, link.AddressForB, sent);
        Assert.Equal(Enumerable.Range(0, 20).Select(i => (byte)i), payloads.Order());
        Assert.True(first >= TimeSpan.FromMilliseconds(30), $"the first datagram arrived after {first.TotalMilliseconds:0.0} ms, before the link's 30 ms delay");

        // B → A, with the reverse direction's own delay.
        sent.Restart();
        for (var i = 0; i < 5; i++)
        {
            hostB.SendTo([(byte)(100 + i)], link.AddressForB);
        }
        (payloads, first) = Receive(hostA, 5, link.AddressForA, sent);
        Assert.Equal(Enumerable.Range(100, 5).Select(i => (byte)i), payloads.Order());
        Assert.True(first >= TimeSpan.FromMilliseconds(5), $"the first datagram arrived after {first.TotalMilliseconds:0.0} ms, before the reverse's 5 ms delay");
        var (ab, ba) = link.Stats;
        Assert.Equal((20, 20, 0L), (ab.Offered, ab.Delivered, ab.Lost));
        Assert.Equal((5, 5, 0L), (ba.Offered, ba.Delivered, ba.Lost));

        // After 2 s the link moves to its next phase on its own, and what it says now applies.
        Eventually.True(() => link.Current.Phase.Name == "cut", TimeSpan.FromSeconds(10), "the link's second phase", () => link.Current.Phase.Name);
        for (var i = 0; i < 10; i++)
        {
            hostA.SendTo([(byte)i], link.AddressForA);
        }
        Eventually.True(() => link.Stats.AToB.Lost == 10, TimeSpan.FromSeconds(10), "ten datagrams lost", () => link.Stats.AToB.ToString());
        Assert.Equal(0, hostB.Available);
        Assert.Equal(20, link.Stats.AToB.Delivered);
    }

    private static Socket Udp()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveTimeout = 10_000 };
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return socket;
    }

    private static (List<byte> Payloads, TimeSpan First) Receive(Socket socket, int count, IPEndPoint expectedSender, Stopwatch since)
    {
        var payloads = new List<byte>();
        var first = TimeSpan.Zero;
        var buffer = new byte[16];
        EndPoint from = new IPEndPoint(IPAddress.Any, 0);
        while (payloads.Count < count)
        {
            var length = socket.ReceiveFrom(buffer, ref from);
            if (payloads.Count == 0)
            {
                first = since.Elapsed;
            }
            Assert.Equal(expectedSender, from);
            Assert.Equal(1, length);
            payloads.Add(buffer[0]);
        }
        return (payloads, first);
    }
}
