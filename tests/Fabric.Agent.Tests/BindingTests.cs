using Fabric.Agent.Switching;
using Fabric.Stacks;
using Fabric.Testing;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>Bindings per (VM, remote host) between two real agents on a loopback underlay: the peer opens the slot before the VM uses it.</summary>
public class BindingTests
{
    [Fact]
    public async Task AVmBoundToSecure_IsSealedOnItsOwn_WhileItsNeighbourStaysOnThePathStack()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        var bindings = hosts.A.Switch.Paths["host-b"].VmBindings();
        var slot = bindings["vm1"].Slot;
        Assert.InRange(slot, 1, 127);
        // The peer opened the same slot with the same stack before vm1's first frame went through it.
        Assert.Equal("secure", hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stack);

        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300));
        Assert.Equal(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300), hosts.Expect("vm3"));
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 300));
        hosts.Expect("vm3");
        var atB = hosts.B.Switch.Paths["host-a"].StackStats();
        Assert.Equal(1, atB[slot].Stats.FramesDelivered);
        Assert.Equal(1, atB[0].Stats.FramesDelivered);

        // Idempotent: binding again changes nothing; back to the path's stack, the slot drains and closes at both ends.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        Assert.Equal(slot, hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot);
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "std-ipv4", TestContext.Current.CancellationToken));
        Eventually.True(() => !hosts.A.Switch.Paths["host-b"].StackStats().ContainsKey(slot) && !hosts.B.Switch.Paths["host-a"].StackStats().ContainsKey(slot),
            TimeSpan.FromSeconds(5), "drained slot closed at both ends", () => string.Join(",", hosts.B.Switch.Paths["host-a"].StackStats().Keys));
    }

    [Fact]
    public async Task APeerThatCannotOpenTheStack_LeavesTheVmWhereItWas_NamingWhy()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        hosts.B.Switch.StackHost.Quarantine("secure", "test");
        var error = await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken);
        Assert.Contains("host 'host-b' did not open secure", error, StringComparison.Ordinal);
        Assert.Contains("quarantined on host-b", error, StringComparison.Ordinal);
        Assert.Equal("std-ipv4", hosts.A.Switch.Paths["host-b"].VmBindings().GetValueOrDefault("vm1").Stack ?? "std-ipv4");
        Assert.Equal([0, RemotePath.FallbackSlot], hosts.A.Switch.Paths["host-b"].StackStats().Keys.Order());
        Assert.Contains("is not available", await hosts.A.Switch.BindVmAsync("vm1", "host-b", "no-such-stack", TestContext.Current.CancellationToken), StringComparison.Ordinal);
        Assert.Contains("no path to host", await hosts.A.Switch.BindVmAsync("vm1", "host-z", "secure", TestContext.Current.CancellationToken), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ARestartedPeer_OpensTheSecureSlotAgain_UnderANewSession_AndTheVmsTrafficFlowsAgain()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot;

        // B's agent restarts and knows nothing of the slot: A's sealed frames reach it, it asks A to open the slot again,
        // the two instances exchange hellos, and vm1's frames arrive again, sealed under keys derived afresh.
        hosts.RestartB();
        var restarted = System.Diagnostics.Stopwatch.StartNew();
        var arrived = false;
        while (!arrived && restarted.Elapsed < TimeSpan.FromSeconds(10))
        {
            hosts.Vm("vm1").Transmit(frame);
            arrived = hosts.Vm("vm3").Receive(new byte[70000], out _, TimeSpan.FromMilliseconds(20)) == Fabric.Hal.PortResult.Ok;
        }
        Assert.True(arrived, "vm1's traffic never reached vm3 after host-b restarted");
        TestContext.Current.SendDiagnosticMessage($"vm1's secure traffic flowed again {restarted.Elapsed.TotalMilliseconds:0} ms after host-b restarted");
        Assert.Equal("secure", hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stack);
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("new-session", StringComparison.Ordinal));
    }

    [Fact]
    public async Task APeerThatOpensItsSlotAnew_GetsAFreshInstanceHere_NotTheOneItsOldSelfUsed()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", "swap-test", TestContext.Current.CancellationToken));
        var slot = hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot;
        var frame = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200);
        for (var i = 0; i < 3; i++)
        {
            hosts.Vm("vm3").Transmit(frame);
            hosts.Expect("vm1");
        }
        Assert.Equal(3, hosts.A.Switch.Paths["host-b"].StackStats()[slot].Stats.FramesDelivered);
        // After a restart B opens the same slot with a new instance, and A replaces the one it held for the old.
        hosts.RestartB();
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", "swap-test", TestContext.Current.CancellationToken));
        Assert.Equal(slot, hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot);
        hosts.Vm("vm3").Transmit(frame);
        hosts.Expect("vm1");
        Assert.Equal(1, hosts.A.Switch.Paths["host-b"].StackStats()[slot].Stats.FramesDelivered);
    }

    /// <summary>
    /// A slot the peer opened is memory and a stack instance held here for it: one that receives nothing for the idle time
    /// (the peer's VM fell silent, or the peer went away without a close) is closed, and when the peer sends on it again,
    /// this end asks it to open the slot anew and traffic resumes.
    /// </summary>
    [Fact]
    public async Task ASlotThePeerOpened_ThatFallsSilent_IsClosedHere_AndOpenedAgainWhenThePeerSends()
    {
        // The hosts run on a fake clock with the configured idle time of 10 minutes: housekeeping and the slot's idle time
        // move only when the test moves the clock, so the expiry is shown without waiting for it, and to the second.
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        using var hosts = new TwoHosts(inMemory: true, time: time);
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", "swap-test", TestContext.Current.CancellationToken));
        var slot = hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot;
        var frame = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200);
        hosts.Vm("vm3").Transmit(frame);
        hosts.Expect("vm1");
        var pathAtA = hosts.A.Switch.Paths["host-b"];
        Assert.Equal("swap-test", pathAtA.StackStats()[slot].Stack);

        // Ten minutes less a second without a datagram: it stays. Housekeeping runs on the agents' clock (every 250 ms of it).
        time.Advance(TimeSpan.FromSeconds(599));
        Assert.True(pathAtA.StackStats().ContainsKey(slot));
        // Past ten minutes: host A closes it and says so.
        time.Advance(TimeSpan.FromSeconds(2));
        Assert.False(pathAtA.StackStats().ContainsKey(slot));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains($"slot {slot} on the path to host-b (swap-test@0.1.0), opened by the peer, received nothing for 600 s: closed", StringComparison.Ordinal));

        // vm3 speaks again: its first frame finds no slot at A, which asks B to open it again; then the frames flow through it.
        hosts.Vm("vm3").Transmit(frame);
        Eventually.True(() => pathAtA.StackStats().ContainsKey(slot), TimeSpan.FromSeconds(10), "host B opened the slot at A again",
            () => string.Join("; ", hosts.A.Switch.Events));
        hosts.Vm("vm3").Transmit(frame);
        hosts.Expect("vm1");
        Assert.Equal("swap-test", pathAtA.StackStats()[slot].Stack);
        Assert.True(pathAtA.StackStats()[slot].Stats.FramesDelivered >= 1);
    }

    [Fact]
    public async Task ASecureSlotWithoutAKey_DropsAndSaysSo()
    {
        using var hosts = new TwoHosts();
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 100));
        var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot;
        // Dropped by the stack itself (counted), so it went nowhere.
        Eventually.True(() => hosts.A.Switch.Paths["host-b"].StackStats().TryGetValue(slot, out var secure) && secure.Stats.Drops.GetValueOrDefault(StackDropReason.NotConfigured) == 1, TimeSpan.FromSeconds(5),
            "the frame dropped by secure", () => "not yet");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("stack secure@2.0.0 on the path to host-b: not-configured", StringComparison.Ordinal));
    }
}
