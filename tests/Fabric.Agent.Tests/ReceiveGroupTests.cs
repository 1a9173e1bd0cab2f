using Fabric.Agent.Switching;
using Fabric.Hal;
using Fabric.Testing;
using Fabric.Wire;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// VM ports the kernel can wait on together (packet sockets on veths here, taps in a fleet) are received by a group's
/// thread over one epoll set, not a thread per VM: every VM's frames are still switched, a VM leaves the group when it is
/// detached or its device goes away, and the others keep flowing.
/// </summary>
public class ReceiveGroupTests
{
    [Fact]
    public void ManyVmsOnPacketSockets_ShareOneReceiveThread_AndEveryFrameIsSwitched()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var hosts = new TwoHosts(packetSockets: true, vmReceiveThreads: 1);
        const int Extra = 12;
        for (var i = 0; i < Extra; i++)
        {
            Ok(hosts.A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig($"g{i}", $"tap-g{i}", 100, GroupMac(i).ToString(), [$"10.0.1.{i + 1}"]))));
            // Host B takes frames only from VMs its table places on host A.
            Ok(hosts.B.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, GroupMac(i).ToString(), "host-a", [$"10.0.1.{i + 1}"]))));
        }
        var vms = hosts.A.Switch.Vms.Values.ToList();
        Assert.Equal(3 + Extra, vms.Count);
        var thread = Assert.Single(vms.Select(v => v.Receiver).Distinct());
        Assert.Equal("vm-rx group 0", thread!.Name);

        // Every extra VM sends one frame to vm3 on host B and one to vm2 beside it, all at once.
        var toRemote = Enumerable.Range(0, Extra).Select(i => Frames.Udp(GroupMac(i), Mac3, $"10.0.1.{i + 1}", "10.0.0.3", 100 + i)).ToList();
        var toLocal = Enumerable.Range(0, Extra).Select(i => Frames.Udp(GroupMac(i), Mac2, $"10.0.1.{i + 1}", "10.0.0.2", 300 + i)).ToList();
        for (var i = 0; i < Extra; i++)
        {
            Assert.Equal(PortResult.Ok, hosts.Vm($"g{i}").Transmit(toRemote[i]));
            Assert.Equal(PortResult.Ok, hosts.Vm($"g{i}").Transmit(toLocal[i]));
        }
        Assert.Equal(toRemote.Select(Convert.ToHexString).Order(), Collect(hosts, "vm3", Extra).Select(Convert.ToHexString).Order());
        Assert.Equal(toLocal.Select(Convert.ToHexString).Order(), Collect(hosts, "vm2", Extra).Select(Convert.ToHexString).Order());
        Assert.All(vms, vm => Assert.Empty(vm.Counters.DropSnapshot()));
    }

    [Fact]
    public void AVmDetachedWhileItSends_LeavesTheGroup_AndTheOthersKeepFlowing()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var hosts = new TwoHosts(packetSockets: true, vmReceiveThreads: 1);
        var vm1 = hosts.Vm("vm1");
        var flood = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 500);
        using (new Flood(vm1, flood))
        {
            Thread.Sleep(200);
            Ok(hosts.A.Handle(new ApiRequest("detach-vm", Id: "vm1")));
        }
        Assert.False(hosts.A.Switch.Vms.ContainsKey("vm1"));
        // Nothing vm1 sent was switched after it left: the path forgot it and no batch of its brought it back.
        Thread.Sleep(100);
        Assert.DoesNotContain("vm1", hosts.A.Switch.Paths["host-b"].VmBindings().Keys);

        // vm2 still reaches vm3 through the group's thread (vm1's flood may still be arriving there).
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        Assert.Equal(PortResult.Ok, hosts.Vm("vm2").Transmit(fromVm2));
        Assert.True(Arrives(hosts, "vm3", fromVm2), "vm2's frame did not reach vm3 after vm1 left the group");

        // vm1 comes back on a new port (its descriptor may be the one just closed): it joins and is received again.
        Ok(hosts.A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm1", "tap-vm1", 100, Mac1.ToString(), ["10.0.0.1"], ["fd00:100::1"]))));
        Assert.Equal(hosts.A.Switch.Vms["vm2"].Receiver, hosts.A.Switch.Vms["vm1"].Receiver);
        var again = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 222);
        Assert.Equal(PortResult.Ok, hosts.Vm("vm1").Transmit(again));
        Assert.True(Arrives(hosts, "vm3", again), "the re-attached vm1's frame did not reach vm3");
    }

    /// <summary>
    /// A member switching frames to a local VM that is detached under it: the frame has nowhere to go, and the group's
    /// thread (which every member shares) goes on.
    /// </summary>
    [Fact]
    public void ALocalVmDetachedWhileAnotherMemberSendsToIt_CostsTheGroupNothing()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var hosts = new TwoHosts(packetSockets: true, vmReceiveThreads: 1);
        var thread = hosts.A.Switch.Vms["vm1"].Receiver!;
        var vm1 = hosts.Vm("vm1");
        // Unicast to vm2 beside it, and broadcasts (flooded to every VM of the network, vm2 among them).
        var toVm2 = Frames.Udp(Mac1, Mac2, "10.0.0.1", "10.0.0.2", 400);
        var broadcast = Frames.Udp(Mac1, MacAddress.Broadcast, "10.0.0.1", "10.0.0.255", 100);
        using (new Flood(vm1, toVm2, broadcast))
        {
            for (var round = 0; round < 5; round++)
            {
                Thread.Sleep(50);
                Ok(hosts.A.Handle(new ApiRequest("detach-vm", Id: "vm2")));
                Thread.Sleep(20);
                Ok(hosts.A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm2", "tap-vm2", 100, Mac2.ToString(), ["10.0.0.2"], ["fd00:100::2"]))));
            }
        }
        Assert.True(thread.IsAlive, string.Join("; ", hosts.A.Switch.Events));
        Assert.Same(thread, hosts.A.Switch.Vms["vm2"].Receiver);
        Assert.DoesNotContain(hosts.A.Switch.Events, e => e.Contains("failed", StringComparison.Ordinal) || e.Contains("receive group", StringComparison.Ordinal));
        // vm1's broadcasts reached vm3 too (tens of thousands): take them all first.
        var drain = new byte[2048];
        var until = DateTime.UtcNow.AddSeconds(30);
        while (hosts.Vm("vm3").Receive(drain, out _, TimeSpan.FromMilliseconds(300)) == PortResult.Ok)
        {
            Assert.True(DateTime.UtcNow < until, "vm3 still receiving vm1's broadcasts after 30 s");
        }
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 230);
        Assert.Equal(PortResult.Ok, hosts.Vm("vm2").Transmit(fromVm2));
        Assert.True(Arrives(hosts, "vm3", fromVm2), "the re-attached vm2's frame did not reach vm3");
    }

    [Fact]
    public void AVmWhoseDeviceGoesAway_LeavesTheGroup_AndTheOthersKeepFlowing()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var hosts = new TwoHosts(packetSockets: true, vmReceiveThreads: 1);
        var thread = hosts.A.Switch.Vms["vm1"].Receiver!;
        hosts.DeleteVmDevice("vm2");
        // The group's thread reads vm2's port once more, finds it closed and forgets it; it goes on for vm1.
        var fromVm1 = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 210);
        Eventually.True(() =>
        {
            hosts.Vm("vm1").Transmit(fromVm1);
            return Arrives(hosts, "vm3", fromVm1);
        }, TimeSpan.FromSeconds(5), "vm1 reaching vm3 after vm2's device went away", () => string.Join("; ", hosts.A.Switch.Events));
        Assert.Same(thread, hosts.A.Switch.Vms["vm1"].Receiver);
        Assert.True(thread.IsAlive);
    }

    /// <summary>A VM sending the frames it is given over and over on a thread of its own, until disposed.</summary>
    private sealed class Flood : IDisposable
    {
        private readonly Thread _sender;
        private volatile bool _stop;

        public Flood(IFramePort vm, params byte[][] frames)
        {
            _sender = new Thread(() =>
            {
                while (!_stop)
                {
                    foreach (var frame in frames)
                    {
                        vm.Transmit(frame);
                    }
                }
            });
            _sender.Start();
        }

        public void Dispose()
        {
            _stop = true;
            _sender.Join();
        }
    }

    private static MacAddress GroupMac(int i) => new(0x02_00_00_00_05_00UL + (ulong)i);

    /// <summary>The next <paramref name="count"/> frames that reach the VM, each within 5 s.</summary>
    private static List<byte[]> Collect(TwoHosts hosts, string vmId, int count)
    {
        var frames = new List<byte[]>();
        while (frames.Count < count)
        {
            frames.Add(hosts.Expect(vmId));
        }
        return frames;
    }

    /// <summary>Whether <paramref name="frame"/> reaches the VM within 2 s, passing over others that arrive first.</summary>
    private static bool Arrives(TwoHosts hosts, string vmId, byte[] frame)
    {
        var buffer = new byte[2048];
        var until = DateTime.UtcNow.AddSeconds(2);
        while (DateTime.UtcNow < until)
        {
            if (hosts.Vm(vmId).Receive(buffer, out var length, TimeSpan.FromMilliseconds(200)) == PortResult.Ok && buffer.AsSpan(0, length).SequenceEqual(frame))
            {
                return true;
            }
        }
        return false;
    }
}
