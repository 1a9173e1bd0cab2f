using Fabric.Hal;
using Fabric.Testing;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>Hitless swaps between two real agents on a loopback underlay while frames flow.</summary>
public class SwapTests
{
    [Theory]
    [InlineData("swap-test")]
    // secure's two instances exchange hellos before they carry frames; what is sent meanwhile waits, so nothing is lost.
    [InlineData("secure")]
    public void TwentySwapsUnderTraffic_LoseNothingAndLeaveOnlyTheLastStackBound(string other)
    {
        using var hosts = new TwoHosts(settings: SecureKeys);
        using var stream = new FrameStream(hosts);
        string[] stacks = [other, "std-ipv4"];
        var stackDrops = new Dictionary<string, string>();
        for (var i = 0; i < 20; i++)
        {
            var stack = stacks[i % 2];
            var slot = Prepare(hosts.A, "host-b", stack, null);
            Prepare(hosts.B, "host-a", stack, slot);
            Ok(hosts.A.Handle(new ApiRequest("commit-swap", Id: "host-b", Slot: slot)));
            Ok(hosts.B.Handle(new ApiRequest("commit-swap", Id: "host-a", Slot: slot)));
            Thread.Sleep(20);
            foreach (var (name, agent, peer) in new[] { ("A", hosts.A, "host-b"), ("B", hosts.B, "host-a") })
            {
                foreach (var (s, st) in agent.Switch.Paths[peer].StackStats())
                {
                    stackDrops[$"{name}{s}"] = $"{st.Stack}: {string.Join(" ", st.Stats.Drops.Select(d => $"{d.Key} {d.Value}"))}";
                }
            }
        }
        Thread.Sleep(200);
        stream.Stop();
        Assert.True(stream.Sent > 1000, $"only {stream.Sent} frames were sent during the swaps");
        // Nothing lost on the overlay (path sequence), nothing dropped at vm3's port, everything delivered.
        Assert.Equal(0, hosts.B.Switch.Paths["host-a"].SequenceGaps);
        Assert.Equal(0, hosts.B.Switch.Vms["vm3"].Counters.Drops(Fabric.Agent.Switching.DropReason.TransmitFailed));
        string Drops(Agent agent, string peer) => string.Join(", ", Enum.GetValues<Fabric.Agent.Switching.DropReason>()
            .Select(r => (r, n: agent.Switch.Paths[peer].Counters.Drops(r))).Where(x => x.n > 0).Select(x => $"{x.r} {x.n}"))
            + "; stacks: " + string.Join(", ", hosts.A.Switch.Events.Concat(hosts.B.Switch.Events).Where(e => e.Contains("stack ", StringComparison.Ordinal)).TakeLast(5));
        Assert.True(stream.Sent == stream.Received, $"sent {stream.Sent}, received {stream.Received}; drops at A: {Drops(hosts.A, "host-b")}; at B: {Drops(hosts.B, "host-a")}; {string.Join("; ", stackDrops.Where(d => !d.Value.EndsWith(": ", StringComparison.Ordinal)))}");
        Assert.Equal("std-ipv4", hosts.A.Switch.Paths["host-b"].TransmitStack);

        // After the drain time every old slot is closed and swap-test is unbound (then unloaded).
        Eventually.True(() => Bindings(hosts.A, other) == 0 && Bindings(hosts.A, "std-ipv4") == 2 && Bindings(hosts.B, other) == 0,
            TimeSpan.FromSeconds(5), "draining old slots", () => string.Join(", ", hosts.A.Switch.StackHost.Entries()));
    }

    [Fact]
    public async Task APrepareThatRacesThePeersOpen_AdoptsTheSlotTheOpenFilled()
    {
        // Creating an instance on host-b takes 500 ms. B's prepare starts creating its instance; meanwhile A's first
        // frame through the slot makes B report it unknown, A asks B to open it, and B's underlay thread creates an
        // instance too. Whichever is ready first fills the slot and the other adopts it (same stack): the prepare must
        // not fail with "slot in use" (seen in CI with secure, whose hello makes the peer's open arrive early), and in
        // the end one instance is counted.
        using var hosts = new TwoHosts(settings: new() { ["faulty"] = new() { ["slowStartAt"] = "host-b" } });
        var slot = Prepare(hosts.A, "host-b", "faulty", null);
        Ok(hosts.A.Handle(new ApiRequest("commit-swap", Id: "host-b", Slot: slot)));
        var prepare = Task.Run(() => Prepare(hosts.B, "host-a", "faulty", slot), TestContext.Current.CancellationToken);
        Thread.Sleep(100);
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(slot, await prepare);
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains($"does not have slot {slot} (faulty@0.0.1)", StringComparison.Ordinal));
        Ok(hosts.B.Handle(new ApiRequest("commit-swap", Id: "host-a", Slot: slot)));
        // The peer's open may still be creating its instance, which it then lets go.
        Eventually.True(() => Bindings(hosts.B, "faulty") == 1, TimeSpan.FromSeconds(5), "one instance counted", () => $"{Bindings(hosts.B, "faulty")} counted");
        Assert.Equal("faulty", hosts.B.Switch.Paths["host-a"].TransmitStack);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        var back = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200);
        hosts.Vm("vm3").Transmit(back);
        Assert.Equal(back, hosts.Expect("vm1"));
    }

    [Fact]
    public void AFailedPrepare_LeavesTheOldBindingTransmitting()
    {
        using var hosts = new TwoHosts();
        var refused = hosts.A.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: "no-such-stack"));
        Assert.False(refused.Ok);
        Assert.Contains("'no-such-stack' is not available", refused.Error, StringComparison.Ordinal);
        var ipv6 = hosts.A.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: "std-ipv6"));
        Assert.Contains("another underlay family", ipv6.Error, StringComparison.Ordinal);
        var taken = hosts.A.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: "swap-test", Slot: 0));
        Assert.Contains("slot 0 is in use", taken.Error, StringComparison.Ordinal);
        Assert.False(hosts.A.Handle(new ApiRequest("commit-swap", Id: "host-b", Slot: 9)).Ok);

        var slot = Prepare(hosts.A, "host-b", "swap-test", null);
        Ok(hosts.A.Handle(new ApiRequest("abort-swap", Id: "host-b", Slot: slot)));
        Assert.Equal("std-ipv4", hosts.A.Switch.Paths["host-b"].TransmitStack);
        Assert.Equal(0, Bindings(hosts.A, "swap-test"));
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 100);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
    }

    private static int Prepare(Agent agent, string peer, string stack, int? slot)
    {
        var response = agent.Handle(new ApiRequest("prepare-swap", Id: peer, Stack: stack, Slot: slot));
        Ok(response);
        return (int)response.Result!.GetType().GetProperty("Slot")!.GetValue(response.Result)!;
    }

    private static int Bindings(Agent agent, string stack) =>
        agent.Switch.StackHost.Entries().SingleOrDefault(e => e.Id == stack)?.Bindings ?? 0;
}
