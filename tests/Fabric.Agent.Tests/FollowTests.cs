using Fabric.Agent.Switching;
using Fabric.Testing;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// A conversation between VMs on two hosts rides one stack when one VM leads and the other follows: the follower answers on
/// the slot the leader's frames arrive on, so what the leader gets (a request's answer, a transfer's acknowledgements) is
/// its own choice's doing both ways. Which slot carried a frame is read from the receiving end's per-slot counters.
/// </summary>
public class FollowTests
{
    private static long DeliveredAt(Agent host, string remote, int slot) =>
        host.Switch.Paths[remote].StackStats().TryGetValue(slot, out var s) ? s.Stats.FramesDelivered : 0;

    /// <summary>vm1 on host A leads on swap-test; vm3 on host B follows, bound to <paramref name="followersOwn"/>: their slots.</summary>
    private static async Task<(int Leaders, int Own)> LeaderAndFollower(TwoHosts hosts, string followersOwn)
    {
        var token = TestContext.Current.CancellationToken;
        Assert.True(hosts.A.Switch.SetRole("vm1", VmRole.Leads));
        Assert.True(hosts.B.Switch.SetRole("vm3", VmRole.Follows));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", token));
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", followersOwn, token));
        return (hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot, hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot);
    }

    [Fact]
    public async Task AVmThatFollows_AnswersALeaderOnTheLeadersStack_AndEveryoneElseOnItsOwn()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        var (leaders, own) = await LeaderAndFollower(hosts, "faulty");
        Assert.False(hosts.B.Switch.SetRole("no-such-vm", VmRole.Follows));
        Assert.NotEqual(leaders, own);

        // Before vm1 says anything, vm3's frames to it ride vm3's own binding.
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
        hosts.Expect("vm1");
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", own));

        // vm1 asks, vm3 answers: on vm1's swap-test slot, three times over.
        for (var i = 0; i < 3; i++)
        {
            hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");
            var answer = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 300);
            hosts.Vm("vm3").Transmit(answer);
            Assert.Equal(answer, hosts.Expect("vm1"));
        }
        Assert.Equal(3, DeliveredAt(hosts.A, "host-b", leaders));
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", own));

        // vm2 leads nothing (its role is its own) and has not spoken: vm3's frames to it stay on vm3's own binding.
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 200));
        hosts.Expect("vm2");
        Assert.Equal(2, DeliveredAt(hosts.A, "host-b", own));
        Assert.Equal(3, DeliveredAt(hosts.A, "host-b", leaders));

        // A VM whose role is its own never follows, however the leader's frames came.
        Assert.True(hosts.B.Switch.SetRole("vm3", VmRole.Own));
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
        hosts.Expect("vm3");
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
        hosts.Expect("vm1");
        Assert.Equal(3, DeliveredAt(hosts.A, "host-b", own));
        Assert.Equal(3, DeliveredAt(hosts.A, "host-b", leaders));
    }

    [Fact]
    public async Task AFollowerThatMustBeEncrypted_NeverAnswersOnALeadersStackThatDoesNot()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        var (leaders, own) = await LeaderAndFollower(hosts, "secure");
        // B hears vm1 on swap-test, which does not encrypt; then vm3's policy becomes confidential.
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
        hosts.Expect("vm3");
        Assert.True(hosts.B.Switch.SetSealed("vm3", true));
        var answer = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 300);
        hosts.Vm("vm3").Transmit(answer);
        Assert.Equal(answer, hosts.Expect("vm1"));
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", own));
        Assert.Equal(0, DeliveredAt(hosts.A, "host-b", leaders));
    }

    [Fact]
    public async Task AFollowerOnAStackThatEncrypts_NeverAnswersALeaderOnOneThatDoesNot()
    {
        // The path's own stack is secure: vm3, with no binding of its own, sends encrypted, and a leader that chose a clear
        // stack (or an underlay attacker forging the leader's frames on one) does not move its answers into the clear.
        using var hosts = new TwoHosts("secure", settings: SecureKeys);
        var token = TestContext.Current.CancellationToken;
        Assert.True(hosts.A.Switch.SetRole("vm1", VmRole.Leads));
        Assert.True(hosts.B.Switch.SetRole("vm3", VmRole.Follows));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", token));
        var leaders = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot;
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
        hosts.Expect("vm3");
        var answer = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 300);
        hosts.Vm("vm3").Transmit(answer);
        Assert.Equal(answer, hosts.Expect("vm1"));
        Assert.Equal(0, DeliveredAt(hosts.A, "host-b", leaders));
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", hosts.B.Switch.Paths["host-a"].TransmitSlot));
    }

    [Fact]
    public async Task ALeaderMovedToTheFallbackSlotByAQuarantine_IsBoundAgainInASlotOfItsOwn()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        var token = TestContext.Current.CancellationToken;
        Assert.True(hosts.A.Switch.SetRole("vm1", VmRole.Leads));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "faulty", token));
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXFAULT"));
        var path = hosts.A.Switch.Paths["host-b"];
        Eventually.True(() => path.VmBindings()["vm1"].Slot == RemotePath.FallbackSlot, TimeSpan.FromSeconds(5), "vm1 on the fallback slot",
            () => $"{path.VmBindings()["vm1"]}");
        // The fallback's stack is what the control plane wants: for a leader that is not yet bound as it must be.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "std-ipv4", token));
        var (stack, slot) = path.VmBindings()["vm1"];
        Assert.Equal("std-ipv4", stack);
        Assert.True(path.IsOwnLeadersSlot(slot), $"vm1 in slot {slot}");
    }

    [Fact]
    public async Task AVmThatLeadsOnThePathsDefaultStack_GetsASlotOfItsOwn_SoThatItsFollowersSeeItsChoice()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        var token = TestContext.Current.CancellationToken;
        Assert.True(hosts.B.Switch.SetRole("vm3", VmRole.Follows));
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", "faulty", token));
        var own = hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot;

        // vm2 on the path's own std-ipv4 without leading: through the slot both ends share, which no follower takes for a choice.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "std-ipv4", token));
        Assert.False(hosts.A.Switch.Paths["host-b"].IsOwnSlot(hosts.A.Switch.Paths["host-b"].VmBindings()["vm2"].Slot));
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200));
        hosts.Expect("vm3");
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 200));
        hosts.Expect("vm2");
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", own));

        // Leading, the same choice gets std-ipv4 in a slot of A's own, and vm3 answers there.
        Assert.True(hosts.A.Switch.SetRole("vm2", VmRole.Leads));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "std-ipv4", token));
        var (stack, slot) = hosts.A.Switch.Paths["host-b"].VmBindings()["vm2"];
        Assert.Equal("std-ipv4", stack);
        Assert.True(hosts.A.Switch.Paths["host-b"].IsOwnLeadersSlot(slot), $"vm2 in slot {slot}");
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200));
        hosts.Expect("vm3");
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 200));
        hosts.Expect("vm2");
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", slot));
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", own));
        // Binding it again to what it has changes nothing.
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "std-ipv4", token));
        Assert.Equal(slot, hosts.A.Switch.Paths["host-b"].VmBindings()["vm2"].Slot);
    }

    [Fact]
    public async Task AFollower_AnswersOnItsOwnAgain_OnceTheLeaderWasSilentForTheWindow_AndTwoFollowersEachSendOnTheirOwn()
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        var token = TestContext.Current.CancellationToken;
        Assert.True(hosts.A.Switch.SetRole("vm1", VmRole.Leads));
        Assert.True(hosts.A.Switch.SetRole("vm2", VmRole.Follows));
        Assert.True(hosts.B.Switch.SetRole("vm3", VmRole.Follows));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", token));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "swap-test", token));
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", "faulty", token));
        var (ofVm1, ofVm2) = (hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot, hosts.A.Switch.Paths["host-b"].VmBindings()["vm2"].Slot);
        var ofVm3 = hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot;
        // The leader and the follower on one stack are in two slots: the leader's in A's leaders' half.
        Assert.NotEqual(ofVm1, ofVm2);
        Assert.True(hosts.A.Switch.Paths["host-b"].IsOwnLeadersSlot(ofVm1));
        Assert.False(hosts.A.Switch.Paths["host-b"].IsOwnLeadersSlot(ofVm2));

        // Two followers (vm2 and vm3): neither takes the other's slot for a choice, each sends on its own.
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200));
        hosts.Expect("vm3");
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 200));
        hosts.Expect("vm2");
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200));
        hosts.Expect("vm3");
        Assert.Equal(2, DeliveredAt(hosts.B, "host-a", ofVm2));
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", ofVm3));

        // The leader speaks: vm3 answers on its slot; the leader then says nothing for longer than the window, and vm3's
        // next frame to it rides vm3's own binding.
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
        hosts.Expect("vm3");
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
        hosts.Expect("vm1");
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", ofVm1));
        await Task.Delay(RemotePath.FollowWindow + TimeSpan.FromMilliseconds(300), token);
        hosts.Vm("vm3").Transmit(Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
        hosts.Expect("vm1");
        Assert.Equal(1, DeliveredAt(hosts.A, "host-b", ofVm1));
        Assert.Equal(2, DeliveredAt(hosts.A, "host-b", ofVm3));
    }
}
