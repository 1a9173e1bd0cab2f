using Fabric.Hal.Linux;
using Fabric.Testing;
using Fabric.Wire;

namespace Fabric.Hal.Tests;

/// <summary>Real frames through real Linux interfaces: AF_PACKET on veths and a tap the port creates, in test namespaces.</summary>
public class LinuxPortTests
{
    private const ushort LocalExperimentalEtherType = 0x88B5;

    [Fact]
    public void AfPacketPorts_ExchangeFramesAcrossAVeth_AndNeverSeeTheirOwn()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var (a, b) = PortsAcrossAVeth(net);
        using var portA = a;
        using var portB = b;
        Assert.Equal(1500, a.Capabilities.Mtu);

        var frame = Frame(new MacAddress(0x02_00_00_00_00_0B), new MacAddress(0x02_00_00_00_00_0A), 1, 1514);
        Assert.Equal(PortResult.Ok, a.Transmit(frame));
        var buffer = new byte[2048];
        Assert.Equal(PortResult.Ok, ReceiveSkippingNoise(b, buffer, out var length));
        Assert.Equal(frame, buffer[..length]);
        // PACKET_IGNORE_OUTGOING: the sender does not read back what it sent.
        Assert.NotEqual(PortResult.Ok, ReceiveSkippingNoise(a, buffer, out _, TimeSpan.FromMilliseconds(200)));
    }

    [Fact]
    public void AfPacketBatches_CarryEveryFrameInOrder()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var (a, b) = PortsAcrossAVeth(net);
        using var portA = a;
        using var portB = b;

        const int Count = 500;
        var send = new FrameBatch(50, 2048);
        var received = new List<int>();
        var batch = new FrameBatch(64, 2048);
        for (var sent = 0; sent < Count;)
        {
            send.Clear();
            for (var i = 0; i < send.Capacity; i++)
            {
                send.TryAdd(Frame(new MacAddress(0x02_00_00_00_00_0B), new MacAddress(0x02_00_00_00_00_0A), sent + i, 200));
            }
            Assert.Equal(send.Count, a.TransmitBatch(send));
            sent += send.Count;
            // Drain as we go so the receive buffer never overflows.
            while (b.ReceiveBatch(batch, TimeSpan.FromMilliseconds(20)) == PortResult.Ok)
            {
                for (var i = 0; i < batch.Count; i++)
                {
                    if (IsOurs(batch[i]))
                    {
                        received.Add(BitConverter.ToInt32(batch[i][14..]));
                    }
                }
            }
        }
        Assert.Equal(Enumerable.Range(0, Count), received);
    }

    [Fact]
    public void TapPort_CreatesADeviceWhoseFramesReachAfPacketAndBack()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var ns = net.AddNamespace("tap");
        var name = $"{net.Id}t";
        using var tap = NetworkNamespace.Run(ns, () => TapPort.Create(name));
        Assert.Contains("state", TestNetwork.Exec(ns, "ip", "link", "show", name), StringComparison.Ordinal);
        using var packet = NetworkNamespace.Run(ns, () => AfPacketPort.Open(name));

        // Written to the tap's descriptor = received by its netdev = seen by an AF_PACKET socket on it.
        var toKernel = Frame(new MacAddress(0x02_00_00_00_00_0C), new MacAddress(0x02_00_00_00_00_0D), 7, 300);
        Assert.Equal(PortResult.Ok, tap.Transmit(toKernel));
        var buffer = new byte[2048];
        Assert.Equal(PortResult.Ok, ReceiveSkippingNoise(packet, buffer, out var length));
        Assert.Equal(toKernel, buffer[..length]);

        // Sent on the netdev = readable from the tap's descriptor.
        var fromKernel = Frame(new MacAddress(0x02_00_00_00_00_0D), new MacAddress(0x02_00_00_00_00_0C), 8, 400);
        Assert.Equal(PortResult.Ok, packet.Transmit(fromKernel));
        Assert.Equal(PortResult.Ok, ReceiveSkippingNoise(tap, buffer, out length));
        Assert.Equal(fromKernel, buffer[..length]);

        tap.Dispose();
        Assert.NotEqual(0, Privileged.TryRun("ip", "netns", "exec", ns, "ip", "link", "show", name).Code);
    }

    /// <summary>
    /// A VM's NIC that appears on its host down (it comes up a moment later, as in a migration), or that goes down and up
    /// again: the packet socket reports ENETDOWN once, and the port keeps receiving once the device is up (it was deaf for
    /// good before: the migration test caught a VM that could send nothing after it moved). A device that is gone closes it.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AnAfPacketPort_OpenedOnADownDeviceOrSeeingItGoDown_ReceivesOnceItIsUp_AndClosesWhenItIsGone(bool batched)
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var left = net.AddNamespace("l");
        var right = net.AddNamespace("r");
        net.AddVeth($"{net.Id}a", left, $"{net.Id}b", right);
        TestNetwork.Exec(right, "ip", "link", "set", $"{net.Id}b", "down");
        using var a = NetworkNamespace.Run(left, () => AfPacketPort.Open($"{net.Id}a"));
        using var b = NetworkNamespace.Run(right, () => AfPacketPort.Open($"{net.Id}b"));
        var buffer = new byte[2048];
        var batch = new FrameBatch(8, 2048);
        PortResult Next(out int marker, TimeSpan timeout)
        {
            marker = -1;
            var deadline = DateTime.UtcNow + timeout;
            while (DateTime.UtcNow < deadline)
            {
                var left = deadline - DateTime.UtcNow;
                if (batched)
                {
                    var result = b.ReceiveBatch(batch, left);
                    if (result != PortResult.Ok)
                    {
                        if (result != PortResult.Timeout)
                        {
                            return result;
                        }
                        continue;
                    }
                    for (var i = 0; i < batch.Count; i++)
                    {
                        if (IsOurs(batch[i]))
                        {
                            marker = BitConverter.ToInt32(batch[i][14..]);
                            return PortResult.Ok;
                        }
                    }
                }
                else
                {
                    var result = ReceiveSkippingNoise(b, buffer, out var length, left);
                    if (result == PortResult.Ok)
                    {
                        marker = BitConverter.ToInt32(buffer.AsSpan(14, length - 14));
                    }
                    if (result != PortResult.Timeout)
                    {
                        return result;
                    }
                }
            }
            return PortResult.Timeout;
        }
        var frame = Frame(new MacAddress(0x02_00_00_00_00_0B), new MacAddress(0x02_00_00_00_00_0A), 1, 200);

        // Opened while down: nothing yet, and the port is not closed by it.
        Assert.Equal(PortResult.Timeout, Next(out _, TimeSpan.FromMilliseconds(200)));
        TestNetwork.Exec(right, "ip", "link", "set", $"{net.Id}b", "up");
        Eventually.True(() => a.Transmit(frame) == PortResult.Ok && Next(out var marker, TimeSpan.FromMilliseconds(200)) == PortResult.Ok && marker == 1,
            TimeSpan.FromSeconds(10), "a frame through the port opened down", () => "none received");

        // Down and up again while open.
        TestNetwork.Exec(right, "ip", "link", "set", $"{net.Id}b", "down");
        Assert.Equal(PortResult.Timeout, Next(out _, TimeSpan.FromMilliseconds(200)));
        TestNetwork.Exec(right, "ip", "link", "set", $"{net.Id}b", "up");
        var second = Frame(new MacAddress(0x02_00_00_00_00_0B), new MacAddress(0x02_00_00_00_00_0A), 2, 200);
        Eventually.True(() => a.Transmit(second) == PortResult.Ok && Next(out var marker, TimeSpan.FromMilliseconds(200)) == PortResult.Ok && marker == 2,
            TimeSpan.FromSeconds(10), "a frame after the device came up again", () => "none received");

        // Gone (moved out of the namespace): the port says it is closed.
        TestNetwork.Exec(right, "ip", "link", "set", $"{net.Id}b", "netns", left);
        Assert.Equal(PortResult.Closed, Next(out _, TimeSpan.FromSeconds(2)));
    }

    [Fact]
    public void OpeningAMissingDevice_NamesTheDevice()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        var e = Assert.Throws<InvalidOperationException>(() => AfPacketPort.Open("nosuchdev0"));
        Assert.Contains("no network device named 'nosuchdev0'", e.Message, StringComparison.Ordinal);
        var bad = Assert.Throws<ArgumentException>(() => TapPort.Create("this-name-is-too-long"));
        Assert.Contains("1 to 15 characters", bad.Message, StringComparison.Ordinal);
    }

    /// <summary>Two namespaces joined by a veth, with an AF_PACKET port opened inside each on its end.</summary>
    private static (AfPacketPort A, AfPacketPort B) PortsAcrossAVeth(TestNetwork net)
    {
        var left = net.AddNamespace("l");
        var right = net.AddNamespace("r");
        net.AddVeth($"{net.Id}a", left, $"{net.Id}b", right);
        return (NetworkNamespace.Run(left, () => AfPacketPort.Open($"{net.Id}a")), NetworkNamespace.Run(right, () => AfPacketPort.Open($"{net.Id}b")));
    }

    private static byte[] Frame(MacAddress dst, MacAddress src, int marker, int length)
    {
        var frame = new byte[length];
        EthernetWriter.Write(frame, dst, src, LocalExperimentalEtherType);
        BitConverter.TryWriteBytes(frame.AsSpan(14), marker);
        return frame;
    }

    private static bool IsOurs(ReadOnlySpan<byte> frame) =>
        EthernetFrame.TryCreate(frame, out var eth) && eth.EtherType == LocalExperimentalEtherType;

    /// <summary>Receives the next test frame, skipping the kernel's own traffic on a fresh link (IPv6 router/neighbour solicitations).</summary>
    private static PortResult ReceiveSkippingNoise(IFramePort port, byte[] buffer, out int length, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(5));
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
            {
                length = 0;
                return PortResult.Timeout;
            }
            var result = port.Receive(buffer, out length, left);
            if (result != PortResult.Ok || IsOurs(buffer.AsSpan(0, length)))
            {
                return result;
            }
        }
    }
}
