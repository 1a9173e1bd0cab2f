using Fabric.Agent.Switching;
using Fabric.Testing;
using Fabric.Wire;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// A VM whose policy demands encryption is never carried in clear: not when the stack that encrypts it fails, not when
/// none is bound, not when someone asks for a stack that does not encrypt. Its frames are dropped and counted instead,
/// while the other VMs' traffic goes on.
/// </summary>
public class ConfidentialityTests
{
    [Fact]
    public async Task WhenItsEncryptingStackFails_AConfidentialVmIsDropped_NeverMovedToStdInClear()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        Assert.True(hosts.A.Switch.SetSealed("vm1", true));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "faulty-sealed", TestContext.Current.CancellationToken));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "faulty-sealed", TestContext.Current.CancellationToken));
        var fromVm1 = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(fromVm1);
        Assert.Equal(fromVm1, hosts.Expect("vm3"));

        // The stack throws: it is quarantined, and its bindings fall back to std — except vm1's frames, which must stay encrypted.
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXFAULT"));
        Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty-sealed"), TimeSpan.FromSeconds(5), "quarantine", () => "not quarantined");
        var path = hosts.A.Switch.Paths["host-b"];
        var sentBefore = path.Counters.TxPackets;
        for (var i = 0; i < 5; i++)
        {
            hosts.Vm("vm1").Transmit(fromVm1);
        }
        // Each frame is either dropped (counted before it would have been sent) or sent: five drops are all of them.
        Eventually.True(() => path.Counters.Drops(DropReason.NotEncrypted) == 5, TimeSpan.FromSeconds(5), "five frames dropped", () => $"{path.Counters.Drops(DropReason.NotEncrypted)}");
        Assert.Equal(sentBefore, path.Counters.TxPackets);
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("vm1 must be encrypted but its frames would leave through std-ipv4", StringComparison.Ordinal));
        // vm2 did not ask for encryption: it falls back to std and keeps talking.
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        hosts.Vm("vm2").Transmit(fromVm2);
        Assert.Equal(fromVm2, hosts.Expect("vm3"));
        // Binding vm1 to a stack that encrypts carries it again.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        hosts.Vm("vm1").Transmit(fromVm1);
        Assert.Equal(fromVm1, hosts.Expect("vm3"));
    }

    [Fact]
    public async Task AConfidentialVm_WithNoEncryptingBinding_IsDropped_AndABindingThatDoesNotEncryptIsRefused()
    {
        using var hosts = new TwoHosts();
        Assert.True(hosts.A.Switch.SetSealed("vm1", true));
        // No binding of its own: the path's stack (std-ipv4) would carry it in clear.
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
        var path = hosts.A.Switch.Paths["host-b"];
        Eventually.True(() => path.Counters.Drops(DropReason.NotEncrypted) == 1, TimeSpan.FromSeconds(5), "the frame dropped", () => $"{path.Counters.Drops(DropReason.NotEncrypted)}");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        // Whoever asks, a stack that does not encrypt is refused for it, naming why.
        var refused = await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", TestContext.Current.CancellationToken);
        Assert.Equal("VM 'vm1' must be encrypted (its policy is confidential) and stack 'swap-test@0.1.0' does not encrypt", refused);
        Assert.NotNull(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "std-ipv4", TestContext.Current.CancellationToken));
        // Its broadcasts are not flooded in clear either; a neighbour's are.
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, MacAddress.Broadcast, "10.0.0.1", "255.255.255.255", 50, dontFragment: false));
        Eventually.True(() => path.Counters.Drops(DropReason.NotEncrypted) == 2, TimeSpan.FromSeconds(5), "the broadcast dropped", () => $"{path.Counters.Drops(DropReason.NotEncrypted)}");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        // Once its policy no longer demands it, the same frame goes.
        Assert.True(hosts.A.Switch.SetSealed("vm1", false));
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        Assert.False(hosts.A.Switch.SetSealed("no-such-vm", true));
    }

    [Fact]
    public void APathWhoseOwnStackEncrypts_DoesNotFallBackToClear_ForVmsWithoutABindingOfTheirOwn()
    {
        using var hosts = new TwoHosts("faulty-sealed");
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXFAULT"));
        Eventually.True(() => hosts.A.Switch.Paths["host-b"].TransmitStack == "std-ipv4", TimeSpan.FromSeconds(5), "fallback", () => "still on faulty-sealed");
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200));
        var path = hosts.A.Switch.Paths["host-b"];
        Eventually.True(() => path.Counters.Drops(DropReason.NotEncrypted) == 1, TimeSpan.FromSeconds(5), "the frame dropped", () => $"{path.Counters.Drops(DropReason.NotEncrypted)}");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("frames that must stay encrypted are dropped", StringComparison.Ordinal));
    }
    [Fact]
    public async Task AConfidentialVm_TakesFramesFromOtherHostsOnlyAsTheyCrossedEncrypted()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        Assert.True(hosts.B.Switch.SetSealed("vm3", true));
        // vm2 is a standard VM: its frames cross in clear on the path's std-ipv4, where anyone on the underlay could have
        // read or made them up. They do not reach the confidential vm3; its host counts them.
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        for (var i = 0; i < 3; i++)
        {
            hosts.Vm("vm2").Transmit(fromVm2);
        }
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, MacAddress.Broadcast, "10.0.0.2", "255.255.255.255", 50, dontFragment: false));
        // Counted at B as they arrive, so four drops are all of them.
        Eventually.True(() => hosts.B.Switch.UnderlayCounters.Drops(DropReason.NotEncrypted) == 4, TimeSpan.FromSeconds(5), "four frames refused at B",
            () => $"{hosts.B.Switch.UnderlayCounters.Drops(DropReason.NotEncrypted)}");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        // Carried by a stack that encrypts, the same frames arrive.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "secure", TestContext.Current.CancellationToken));
        hosts.Vm("vm2").Transmit(fromVm2);
        Assert.Equal(fromVm2, hosts.Expect("vm3"));
        // A VM whose policy no longer demands it takes clear frames again.
        Assert.True(hosts.B.Switch.SetSealed("vm3", false));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "std-ipv4", TestContext.Current.CancellationToken));
        hosts.Vm("vm2").Transmit(fromVm2);
        Assert.Equal(fromVm2, hosts.Expect("vm3"));
    }
    [Fact]
    public async Task FramesToAConfidentialVm_LeaveItsPeersHostOnlyEncrypted_ThroughTheSlotItsOwnHostOpened()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        // vm1 is confidential: host A seals it, and host B's route to it says so (as the control plane's does).
        Assert.True(hosts.A.Switch.SetSealed("vm1", true));
        Ok(hosts.B.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac1.ToString(), "host-a", ["10.0.0.1"], ["fd00:100::1"], Confidential: true))));
        // vm1 is bound to secure: the slot A opens for it carries vm3's answers too, while vm3's other traffic stays on std.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        var fromVm1 = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(fromVm1);
        Assert.Equal(fromVm1, hosts.Expect("vm3"));
        var toVm1 = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200);
        hosts.Vm("vm3").Transmit(toVm1);
        Assert.Equal(toVm1, hosts.Expect("vm1"));
        var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot;
        Assert.Equal("secure", hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stack);
        Assert.True(hosts.A.Switch.Paths["host-b"].StackStats()[slot].Stats.FramesDelivered >= 1);
        var toVm2 = Frames.Udp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 200);
        hosts.Vm("vm3").Transmit(toVm2);
        Assert.Equal(toVm2, hosts.Expect("vm2"));
        Assert.Equal(0, hosts.B.Switch.Paths["host-a"].Counters.Drops(DropReason.NotEncrypted));
        // An operator's set-route that forgets the VM is confidential does not unseal it.
        Ok(hosts.B.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac1.ToString(), "host-a", ["10.0.0.1"], ["fd00:100::1"]))));
        Assert.True(hosts.B.Switch.Table.FindByMac(100, Mac1)!.Sealed);
    }

    [Fact]
    public void AStandardVmThatSpeaksFirstToAConfidentialOne_HasItsHostOpenASlotThatEncrypts_AndItsBroadcastsReachBoth()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        Assert.True(hosts.A.Switch.SetSealed("vm1", true));
        Ok(hosts.B.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac1.ToString(), "host-a", ["10.0.0.1"], ["fd00:100::1"], Confidential: true))));
        // No slot of B's path to A encrypts (vm1 has sent nothing, nothing is bound): vm3's first frame to vm1 is dropped
        // at B, never sent in clear, and B opens a slot that encrypts; the frames after it arrive.
        var path = hosts.B.Switch.Paths["host-a"];
        var toVm1 = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200);
        hosts.Vm("vm3").Transmit(toVm1);
        Eventually.True(() => path.Counters.Drops(DropReason.NotEncrypted) == 1, TimeSpan.FromSeconds(5), "the first frame dropped", () => $"{path.Counters.Drops(DropReason.NotEncrypted)}");
        // Not handed to the path's std stack (the slot that encrypts, opened meanwhile, sends its own handshake).
        Assert.Equal(0, path.StackStats()[0].Stats.FramesIn);
        Assert.Contains(hosts.B.Switch.Events, e => e.Contains("vm3's frames to a confidential VM on host-a would leave through std-ipv4", StringComparison.Ordinal));
        Eventually.True(() => hosts.B.Switch.Events.Any(e => e.Contains("secure@2.0.0 opened in slot", StringComparison.Ordinal)), TimeSpan.FromSeconds(10), "B opens secure",
            () => string.Join("\n", hosts.B.Switch.Events));
        hosts.Vm("vm3").Transmit(toVm1);
        Assert.Equal(toVm1, hosts.Expect("vm1"));
        Assert.True(hosts.Silent("vm1", TimeSpan.Zero));
        // A broadcast reaches the confidential vm1 (encrypted) and the standard vm2 alike.
        var broadcast = Frames.Udp(Mac3, MacAddress.Broadcast, "10.0.0.3", "255.255.255.255", 50, dontFragment: false);
        hosts.Vm("vm3").Transmit(broadcast);
        Assert.Equal(broadcast, hosts.Expect("vm1"));
        Assert.Equal(broadcast, hosts.Expect("vm2"));
        Assert.Equal(0, hosts.A.Switch.UnderlayCounters.Drops(DropReason.NotEncrypted));

        // vm3's outcomes are its own stack's (std-ipv4): what the borrowed slot carried to vm1 is neither counted nor
        // metered as std's, what std carried to vm2 is.
        hosts.B.Switch.Measure();
        var toVm1Tcp = Frames.Tcp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 100);
        var toVm2Tcp = Frames.Tcp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 100);
        hosts.Vm("vm3").Transmit(toVm1Tcp);
        Assert.Equal(toVm1Tcp, hosts.Expect("vm1"));
        hosts.Vm("vm3").Transmit(toVm2Tcp);
        Assert.Equal(toVm2Tcp, hosts.Expect("vm2"));
        var vm3 = hosts.B.Switch.Measure()["host-a"].Vms.Single(v => v.VmId == "vm3");
        Assert.Equal(("std-ipv4@1.0.0", 1L, 1L), (vm3.Stack, vm3.Frames, vm3.Tcp.Packets));
    }
}
