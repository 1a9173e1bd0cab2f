using System.Buffers.Binary;
using Fabric.Agent.Stacks;
using Fabric.Testing;
using Fabric.Wire;

namespace Fabric.Stacks.Tests;

/// <summary>The selective-repeat stacks (arq-lowlat, arq-bulk) where a packet cannot get through.</summary>
public class ArqTests
{
    /// <summary>
    /// Every copy of one packet is lost (a link that carries next to nothing for a while, as a UMTS trace did in the
    /// learning benchmark): the sender gives it up after its retransmissions, and the receiver must stop waiting for it.
    /// Before it was told, the receiver held every later frame behind the gap for ever and the path carried nothing more
    /// for the VMs on that stack (seen live: two VMs on arq-lowlat unreachable for minutes, 0 frames delivered).
    /// </summary>
    [Theory]
    [InlineData(StackPlugins.ArqLowLat)]
    [InlineData(StackPlugins.ArqBulk)]
    public void APacketTheSenderGivesUp_IsPassedOverByTheReceiver_AndTheFramesAfterItArrive(string plugin)
    {
        var factory = StackLoader.Load(StackPlugins.PathOf(plugin)).Factory;
        var configuration = new Dictionary<string, string> { ["maxRetransmissions"] = "1" };
        using var a = factory.Create(new StackContext("a", "b", configuration, new StackConformance.NoTelemetry()));
        using var b = factory.Create(new StackContext("b", "a", configuration, new StackConformance.NoTelemetry()));
        var (toA, toB) = (new StackConformance.CapturingUnderlay(), new StackConformance.CapturingUnderlay());
        var vm = new StackConformance.CapturingVm();
        var now = 0L;
        var frames = Enumerable.Range(0, 7).Select(i => StackConformance.Frame(100, (byte)i)).ToList();
        var lost = 0;

        void Exchange(int expected)
        {
            for (var round = 0; round < 400 && vm.Frames.Count < expected; round++)
            {
                now += 10_000_000;
                if (a.NextTimerNanoseconds <= now)
                {
                    a.OnTimer(now, new StackConformance.CapturingVm(), toB);
                }
                if (b.NextTimerNanoseconds <= now)
                {
                    b.OnTimer(now, vm, toA);
                }
                while (toA.Datagrams.Count + toB.Datagrams.Count > 0)
                {
                    var (forA, forB) = (toA.Datagrams.ToList(), toB.Datagrams.ToList());
                    toA.Datagrams.Clear();
                    toB.Datagrams.Clear();
                    foreach (var (header, fields, payload) in forB)
                    {
                        // Every copy of the first data packet (kind 1, sequence 0) is lost on the wire.
                        if (header.PayloadType == FabricPayloadType.Ethernet && fields[0] == 1 && BinaryPrimitives.ReadUInt32BigEndian(fields.AsSpan(1)) == 0)
                        {
                            lost++;
                            continue;
                        }
                        b.Receive(new StackDatagram(header, fields, payload), now, vm, toA);
                    }
                    foreach (var (header, fields, payload) in forA)
                    {
                        a.Receive(new StackDatagram(header, fields, payload), now, new StackConformance.CapturingVm(), toB);
                    }
                }
            }
        }

        foreach (var frame in frames.Take(6))
        {
            a.Transmit(frame, now += 1_000_000, toB);
        }
        Exchange(expected: 5);
        Assert.True(lost >= 2, $"the lost packet was sent {lost} times: its retransmission too");
        Assert.Equal(frames.Skip(1).Take(5), vm.Frames);

        // The path carries on: the next frame arrives at once.
        a.Transmit(frames[6], now += 1_000_000, toB);
        Exchange(expected: 6);
        Assert.Equal(frames.Skip(1), vm.Frames);
        Assert.Equal(6, b.GetStats().FramesDelivered);
    }
}
