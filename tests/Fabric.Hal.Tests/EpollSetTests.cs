using System.Net;
using System.Net.Sockets;
using Fabric.Hal.Linux;

namespace Fabric.Hal.Tests;

/// <summary>The epoll set the switch's receive groups wait on, over UDP sockets on loopback (no privileges needed).</summary>
public class EpollSetTests
{
    [Fact]
    public void ReadableDescriptors_AreReportedByTheirTokens_AgainWhileDataIsLeft_AndNotOnceRemoved()
    {
        using var epoll = new EpollSet();
        using var quiet = Bound();
        using var busy = Bound();
        using var sender = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        epoll.Add((int)quiet.Handle, 7);
        epoll.Add((int)busy.Handle, long.MaxValue - 3);
        var tokens = new long[8];
        Assert.Equal(0, epoll.Wait(tokens, 0));

        sender.SendTo(new byte[10], busy.LocalEndPoint!);
        sender.SendTo(new byte[10], busy.LocalEndPoint!);
        Assert.Equal(1, epoll.Wait(tokens, 1000));
        Assert.Equal(long.MaxValue - 3, tokens[0]);
        // Level-triggered: one datagram read, one left, still reported.
        busy.Receive(new byte[64]);
        Assert.Equal(1, epoll.Wait(tokens, 1000));
        busy.Receive(new byte[64]);
        Assert.Equal(0, epoll.Wait(tokens, 0));

        epoll.Remove((int)busy.Handle);
        sender.SendTo(new byte[10], busy.LocalEndPoint!);
        sender.SendTo(new byte[10], quiet.LocalEndPoint!);
        Assert.Equal(1, epoll.Wait(tokens, 1000));
        Assert.Equal(7, tokens[0]);
    }

    [Fact]
    public void AClosedDescriptor_LeavesTheSet_AndRemovingItIsNoError()
    {
        using var epoll = new EpollSet();
        var socket = Bound();
        var fd = (int)socket.Handle;
        epoll.Add(fd, 1);
        socket.Dispose();
        epoll.Remove(fd);
        epoll.Remove(-1);
        Assert.Equal(0, epoll.Wait(new long[4], 0));
    }

    [Fact]
    public void BadArguments_AreRefusedNamingWhatIsWrong()
    {
        using var epoll = new EpollSet();
        var notADescriptor = Assert.Throws<InvalidOperationException>(() => epoll.Add(1_000_000, 1));
        Assert.Contains("descriptor 1000000", notADescriptor.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => epoll.Wait([], 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => epoll.Wait(new long[EpollSet.MaxEvents + 1], 0));
        epoll.Dispose();
        Assert.Throws<ObjectDisposedException>(() => epoll.Wait(new long[1], 0));
    }

    private static Socket Bound()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return socket;
    }
}
