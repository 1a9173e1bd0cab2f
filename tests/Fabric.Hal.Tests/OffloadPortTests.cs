using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Fabric.Hal.Linux;
using Fabric.Testing;

namespace Fabric.Hal.Tests;

/// <summary>
/// A port with offloads on a veth whose offloads are on, as a VM's NIC: what the VM's kernel leaves undone arrives in the
/// virtio-net header and is finished here into valid packets, and a run of TCP segments sent to the VM reaches it as one.
/// </summary>
public sealed class OffloadPortTests
{
    [Fact]
    public void WhatTheVmsKernelLeavesUndone_IsFinishedIntoValidPackets()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var (vm, host) = (net.AddNamespace("l"), net.AddNamespace("r"));
        net.AddVeth($"{net.Id}a", vm, $"{net.Id}b", host, offloads: true);
        net.AddAddress(vm, $"{net.Id}a", "198.19.9.1/24");
        TestNetwork.Exec(vm, "ip", "neigh", "add", "198.19.9.2", "lladdr", "02:00:00:00:09:02", "dev", $"{net.Id}a");
        using var port = NetworkNamespace.Run(host, () => AfPacketPort.Open($"{net.Id}b", new AfPacketOptions(Offloads: true)));
        Assert.True(port.Capabilities.Offloads);

        // The VM sends 10 datagrams of 1,000 bytes in one call (UDP segmentation): one large segment, or ten frames whose
        // checksums its NIC was to finish.
        var sent = FrameOffloadTests.Payload(10_000, 11);
        NetworkNamespace.Run(vm, () =>
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            socket.SetRawSocketOption(17, 103, BitConverter.GetBytes(1000)); // UDP_SEGMENT
            socket.SendTo(sent, new IPEndPoint(IPAddress.Parse("198.19.9.2"), 9999));
            return 0;
        });
        var received = new List<byte>();
        var undone = 0;
        var batch = new FrameBatch(16, port.Capabilities.MaxFrameLength);
        var output = new byte[65536];
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (received.Count < sent.Length && DateTime.UtcNow < deadline)
        {
            if (port.ReceiveBatch(batch, TimeSpan.FromMilliseconds(200)) != PortResult.Ok)
            {
                continue;
            }
            for (var i = 0; i < batch.Count; i++)
            {
                var frame = batch[i];
                if (frame.Length < 42 || BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) != 0x0800 || frame[23] != 17)
                {
                    continue; // the kernel's own traffic on a fresh link
                }
                var offload = batch.Offload(i);
                undone += offload.IsPlain ? 0 : 1;
                var segments = new List<byte[]>();
                if ((offload.GsoType & ~VirtioNetHeader.GsoEcn) != VirtioNetHeader.GsoNone)
                {
                    var count = FrameOffload.SegmentCount(frame, offload);
                    Assert.True(count > 0, $"a large segment that cannot be cut: {offload}");
                    for (var k = 0; k < count; k++)
                    {
                        segments.Add(output.AsSpan(0, FrameOffload.Segment(frame, offload, k, output)).ToArray());
                    }
                }
                else
                {
                    if (!offload.IsPlain)
                    {
                        Assert.True(FrameOffload.FinishChecksum(frame, offload));
                    }
                    segments.Add(frame.ToArray());
                }
                foreach (var segment in segments)
                {
                    Assert.True(FrameOffloadTests.ChecksumsValid(segment, false, 17), "a datagram's checksums");
                    Assert.Equal(1042, segment.Length);
                    received.AddRange(segment[42..]);
                }
            }
        }
        Assert.Equal(sent, received);
        Assert.True(undone > 0, "every frame came complete: the port read no virtio-net header work");
    }

    /// <summary>
    /// With the device's segmentation off the kernel cuts the joined segment again in software, completing each piece's
    /// checksum from the partial one the join wrote: each arrives valid (checked independently), so the join's
    /// pseudo-header sum is what the kernel expects. With it on, the VM gets the run as one segment.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ARunOfTcpSegmentsToTheVm_ReachesItAsOne_OrCutAgainWithValidChecksums(bool deviceOffloads)
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var (vm, host) = (net.AddNamespace("l"), net.AddNamespace("r"));
        net.AddVeth($"{net.Id}a", vm, $"{net.Id}b", host, offloads: true);
        if (!deviceOffloads)
        {
            TestNetwork.Exec(host, "ethtool", "-K", $"{net.Id}b", "tx", "off", "tso", "off", "gso", "off");
        }
        using var port = NetworkNamespace.Run(host, () => AfPacketPort.Open($"{net.Id}b", new AfPacketOptions(Offloads: true)));
        using var inside = NetworkNamespace.Run(vm, () => AfPacketPort.Open($"{net.Id}a", new AfPacketOptions(MaxFrameLength: 65536)));

        const int Mss = 1400;
        var segments = Enumerable.Range(0, 8).Select(i => FrameOffloadTests.Tcp(false, (uint)(100 + i * Mss), FrameOffloadTests.Payload(i == 7 ? 500 : Mss, i), (byte)(i == 7 ? 0x18 : 0x10), (ushort)i)).ToArray();
        var batch = new FrameBatch(16, 2048);
        foreach (var segment in segments)
        {
            Assert.True(batch.TryAdd(segment));
        }
        Assert.Equal(8, port.TransmitBatch(batch));
        Assert.Equal((1, 8), (port.JoinedSends, port.JoinedFrames));

        var buffer = new byte[70_000];
        var headers = 14 + 20 + 32;
        var frames = new List<byte[]>();
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (frames.Sum(f => f.Length - headers) < 7 * Mss + 500 && DateTime.UtcNow < deadline)
        {
            if (inside.Receive(buffer, out var length, TimeSpan.FromMilliseconds(200)) != PortResult.Ok)
            {
                continue;
            }
            var frame = buffer.AsSpan(0, length);
            if (length >= 54 && BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) == 0x0800 && frame[23] == 6)
            {
                frames.Add(frame.ToArray());
            }
        }
        Assert.Equal(segments.SelectMany(s => s.Skip(headers)), frames.SelectMany(f => f.Skip(headers)));
        Assert.All(frames, f => Assert.Equal(f.Length - 14, BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(16))));
        Assert.Equal(0x18, frames[^1][34 + 13]);
        if (deviceOffloads)
        {
            Assert.Single(frames);
        }
        else
        {
            Assert.Equal(8, frames.Count);
            Assert.All(frames, f => Assert.True(FrameOffloadTests.ChecksumsValid(f, false, 6), "a segment cut again by the kernel has a valid checksum"));
        }
    }
}
