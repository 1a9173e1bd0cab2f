using Fabric.Agent.Switching;
using Fabric.Hal;
using Fabric.Testing;
using Fabric.Wire;
using Microsoft.Extensions.Logging;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>A stack that throws or hangs is quarantined; its paths fall back to std; the agent keeps working.</summary>
public class QuarantineTests
{
    /// <summary>
    /// An agent's events are logged at their severity: a quarantine is an error, a path without an overlay key a warning,
    /// a role the control plane gave a VM information (every event was logged as an error, so an agent's start said each
    /// VM's role as one, and an operator's alerting on errors fired on every start).
    /// </summary>
    [Fact]
    public void EventsAreLoggedAtTheirSeverity_AFaultAsAnError_AChangeAskedForAsInformation()
    {
        var logged = new LevelLogger();
        using var hosts = new TwoHosts("faulty", authenticated: false, loggerA: logged);
        Assert.True(hosts.A.Switch.SetRole("vm1", VmRole.Leads));
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXFAULT"));
        Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty"), TimeSpan.FromSeconds(5), "quarantine", () => string.Join("\n", hosts.A.Switch.Events));

        LogLevel LevelOf(string text) => Assert.Single(logged.Lines, l => l.Text.Contains(text, StringComparison.Ordinal)).Level;
        Assert.Equal(LogLevel.Error, LevelOf("stack faulty@0.0.1 quarantined"));
        Assert.Equal(LogLevel.Warning, LevelOf("has no overlay key"));
        Assert.Equal(LogLevel.Information, LevelOf("vm1 leads its conversations"));
    }

    private sealed class LevelLogger : ILogger
    {
        public System.Collections.Concurrent.ConcurrentQueue<(LogLevel Level, string Text)> Lines { get; } = new();

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Lines.Enqueue((logLevel, formatter(state, exception)));
    }

    [Fact]
    public void AStackThrowingInTransmit_IsQuarantinedAndThePathFallsBackToStd()
    {
        using var hosts = new TwoHosts("faulty");
        var normal = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(normal);
        Assert.Equal(normal, hosts.Expect("vm3"));

        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXFAULT"));
        Eventually.True(() => hosts.A.Switch.Paths["host-b"].TransmitStack == "std-ipv4", TimeSpan.FromSeconds(5), "fallback", () => "still on the faulty stack");
        Assert.True(hosts.A.Switch.StackHost.IsQuarantined("faulty"));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("stack faulty@0.0.1 quarantined: transmit on the path to host-b (slot 0) threw InvalidOperationException", StringComparison.Ordinal));

        // Traffic goes on through the fallback slot, which the peer always has open.
        hosts.Vm("vm1").Transmit(normal);
        Assert.Equal(normal, hosts.Expect("vm3"));
        // The other direction still flows, and local switching never noticed.
        var back = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 300);
        hosts.Vm("vm3").Transmit(back);
        Assert.Equal(back, hosts.Expect("vm1"));
        var local = Frames.Udp(Mac1, Mac2, "10.0.0.1", "10.0.0.2", 100);
        hosts.Vm("vm1").Transmit(local);
        Assert.Equal(local, hosts.Expect("vm2"));
        // No new binding of the quarantined stack is allowed.
        var refused = hosts.A.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: "faulty"));
        Assert.Contains("'faulty@0.0.1' is quarantined", refused.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void AStackThrowingInReceive_IsRetiredAndCounted()
    {
        using var hosts = new TwoHosts("faulty");
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "RXFAULT"));
        Eventually.True(() => hosts.B.Switch.Paths["host-a"].TransmitStack == "std-ipv4", TimeSpan.FromSeconds(5), "fallback on B", () => "still on the faulty stack");
        Assert.True(hosts.B.Switch.StackHost.IsQuarantined("faulty"));
        // The datagram was handled (its fault counted): it reached no VM.
        Assert.Equal(1, hosts.B.Switch.Paths["host-a"].Counters.Drops(DropReason.StackFault));
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        // B moved its own transmissions to std; A's std fallback slot decodes them.
        Assert.Equal("std-ipv4", hosts.B.Switch.Paths["host-a"].TransmitStack);
        var back = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 300);
        hosts.Vm("vm3").Transmit(back);
        Assert.Equal(back, hosts.Expect("vm1"));
    }

    [Fact]
    public void AHungStack_IsNoticedByTheWatchdog_WhileTheAgentKeepsWorking()
    {
        using var hosts = new TwoHosts("faulty");
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXHANG"));
        Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty"), TimeSpan.FromSeconds(5), "hang watchdog", () => string.Join("; ", hosts.A.Switch.Events));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("hung in a call on the path to host-b", StringComparison.Ordinal));
        // While vm1's thread is stuck in the stack, vm2's traffic and the API are served, without waiting for the stuck call.
        hosts.Vm("vm2").Transmit(Frames.Udp(Mac2, Mac1, "10.0.0.2", "10.0.0.1", 100));
        Assert.NotEmpty(hosts.Expect("vm1"));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var status = hosts.A.Handle(new ApiRequest("status"));
        // Serialized as the API socket would: the status is built lazily, so this is when the counters are read.
        Assert.Contains("\"host-b\"", AgentConfig.Serialize(status), StringComparison.Ordinal);
        // The stuck call has more than 3 s to go: a status that waited for it would take that long.
        Assert.True(watch.ElapsedMilliseconds < 2000, $"status took {watch.ElapsedMilliseconds} ms while a stack was stuck");
        // The call returns in the end (this stack sleeps five seconds) and the frame goes out.
        Assert.Equal(PortResult.Ok, hosts.Vm("vm3").Receive(new byte[2048], out _, TimeSpan.FromSeconds(10)));
    }

    /// <summary>
    /// With packet sockets, vm1's and vm2's ports share one receive thread (a group): the stuck call holds vm2's frames too
    /// until the watchdog gives the group a new thread.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AStackStuckForeverInTransmit_CostsOnlyTheFrameItHolds_TheVmGetsANewThread_AndItsHostAFreshPath(bool packetSockets)
    {
        Assert.SkipWhen(packetSockets && !Privileged.IsRoot, Privileged.SkipReason);
        using var hosts = new TwoHosts("faulty", packetSockets: packetSockets, vmReceiveThreads: 1);
        Assert.Equal(packetSockets, hosts.A.Switch.Vms["vm1"].Receiver == hosts.A.Switch.Vms["vm2"].Receiver);
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        hosts.Vm("vm2").Transmit(fromVm2);
        Assert.Equal(fromVm2, hosts.Expect("vm3"));
        var stuck = hosts.A.Switch.Paths["host-b"];

        // vm1's thread goes into the stack and never comes back: it holds the path's gate for ever.
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TXSTUCK"));
        Eventually.True(() => hosts.A.Switch.Paths.TryGetValue("host-b", out var path) && path != stuck, TimeSpan.FromSeconds(10), "host-b's path replaced", () => string.Join("; ", hosts.A.Switch.Events));
        Assert.True(hosts.A.Switch.StackHost.IsQuarantined("faulty"));
        Assert.Equal("std-ipv4", hosts.A.Switch.Paths["host-b"].TransmitStack);
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("the path to host-b was replaced by a fresh one on std-ipv4", StringComparison.Ordinal));
        Assert.Equal(1, hosts.A.Switch.PathsReplaced);

        // vm2's frames to host-b flow again through the fresh path (host-b takes its new slots as after a restart), and
        // host-b's reach vm2 through it.
        Vm2ReachesVm3AfterTheReplacement(hosts);
        var back = Frames.Udp(Mac3, Mac2, "10.0.0.3", "10.0.0.2", 300);
        Eventually.True(() =>
        {
            hosts.Vm("vm3").Transmit(back);
            return hosts.Vm("vm2").Receive(new byte[2048], out _, TimeSpan.FromMilliseconds(200)) == PortResult.Ok;
        }, TimeSpan.FromSeconds(10), "vm3 reaching vm2", () => string.Join("; ", hosts.B.Switch.Events));
        // Local switching and the API never waited on the stuck call.
        var local = Frames.Udp(Mac2, Mac1, "10.0.0.2", "10.0.0.1", 100);
        hosts.Vm("vm2").Transmit(local);
        Assert.Equal(local, hosts.Expect("vm1"));
        Assert.True(hosts.A.Handle(new ApiRequest("status")).Ok);

        // vm1 itself, whose thread the stack still holds, sends again through a new thread: to a local VM and to host-b.
        Eventually.True(() => hosts.A.Switch.Vms["vm1"].ReceiverReplacements == 1, TimeSpan.FromSeconds(10), "vm1's receive thread replaced",
            () => string.Join("; ", hosts.A.Switch.Events));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("the receive thread of vm1 was stuck in a call for over 1000 ms: a new one took its place (1 so far)", StringComparison.Ordinal));
        var fromVm1 = Frames.Udp(Mac1, Mac2, "10.0.0.1", "10.0.0.2", 120);
        hosts.Vm("vm1").Transmit(fromVm1);
        Assert.Equal(fromVm1, hosts.Expect("vm2"));
        var toVm3 = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 130);
        var buffer = new byte[2048];
        Eventually.True(() =>
        {
            hosts.Vm("vm1").Transmit(toVm3);
            // vm2's repeats from before may still be arriving: only vm1's own frame counts.
            while (hosts.Vm("vm3").Receive(buffer, out var length, TimeSpan.FromMilliseconds(200)) == PortResult.Ok)
            {
                if (buffer.AsSpan(0, length).SequenceEqual(toVm3))
                {
                    return true;
                }
            }
            return false;
        }, TimeSpan.FromSeconds(10), "vm1 reaching vm3 through the fresh path", () => string.Join("; ", hosts.A.Switch.Events));
    }

    [Fact]
    public void AStackStuckForeverInReceive_CostsNoOtherTraffic_TheUnderlayGetsANewReceiveThread()
    {
        using var hosts = new TwoHosts("faulty");
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        hosts.Vm("vm2").Transmit(fromVm2);
        Assert.Equal(fromVm2, hosts.Expect("vm3"));

        // Host-b's underlay receive thread, which every path of host-b shares, goes into the stack and never returns.
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "RXSTUCK"));
        Eventually.True(() => hosts.B.Switch.Events.Any(e => e.Contains("the underlay receive thread on", StringComparison.Ordinal)), TimeSpan.FromSeconds(10),
            "host-b's receive thread replaced", () => string.Join("; ", hosts.B.Switch.Events));
        // The path's watchdog may see the stuck call a round after the underlay's does.
        Eventually.True(() => hosts.B.Switch.StackHost.IsQuarantined("faulty"), TimeSpan.FromSeconds(5), "the stuck stack quarantined",
            () => string.Join("; ", hosts.B.Switch.Events));

        // Host-b receives again: vm2's frames reach vm3 (through host-b's fresh path, read by the new receive thread).
        Eventually.True(() =>
        {
            hosts.Vm("vm2").Transmit(fromVm2);
            return hosts.Vm("vm3").Receive(new byte[2048], out _, TimeSpan.FromMilliseconds(200)) == PortResult.Ok;
        }, TimeSpan.FromSeconds(10), "vm2 reaching vm3 after the receive thread was replaced",
            () => string.Join("; ", hosts.A.Switch.Events) + " | " + string.Join("; ", hosts.B.Switch.Events));
    }

    /// <summary>
    /// A stack whose timer never returns holds the path monitor, which runs every path's timers and probes. The watchdog
    /// replaces the path and gives the monitor a successor: the fresh path is probed again and traffic flows.
    /// </summary>
    [Fact]
    public void AStackStuckForeverInATimer_CostsOnlyItsPath_TheMonitorGetsANewThread()
    {
        using var hosts = new TwoHosts("faulty");
        var stuck = hosts.A.Switch.Paths["host-b"];
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, "TIMERSTUCK"));
        Eventually.True(() => hosts.A.Switch.MonitorReplacements > 0 && hosts.A.Switch.Paths.TryGetValue("host-b", out var path) && path != stuck, TimeSpan.FromSeconds(10),
            "the monitor and host-b's path replaced", () => string.Join("; ", hosts.A.Switch.Events));
        Assert.True(hosts.A.Switch.StackHost.IsQuarantined("faulty"));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("the path monitor was stuck for over 1000 ms: a new one took its place", StringComparison.Ordinal));

        // The new monitor probes the fresh path (every 100 ms), and host-b answers.
        hosts.A.Switch.Measure();
        Eventually.True(() => hosts.A.Switch.Measure().TryGetValue("host-b", out var m) && m.ProbesAnswered > 0, TimeSpan.FromSeconds(5),
            "probes answered on the fresh path", () => string.Join("; ", hosts.A.Switch.Events));
        Vm2ReachesVm3AfterTheReplacement(hosts);
    }

    /// <summary>
    /// A stack whose GetStats never returns: status and metrics ask the stacks on a thread of their own and answer without
    /// them after 1 s, and the stuck call marks the path, which the watchdog replaces.
    /// </summary>
    [Fact]
    public void AStackStuckForeverInGetStats_StallsNeitherStatusNorTheApi_AndItsPathIsReplaced()
    {
        using var hosts = new TwoHosts("faulty");
        var stuck = hosts.A.Switch.Paths["host-b"];
        var marked = Frames.Marked(Mac1, Mac3, "STATSSTUCK");
        hosts.Vm("vm1").Transmit(marked);
        Assert.Equal(marked, hosts.Expect("vm3"));
        for (var i = 0; i < 3; i++)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            Assert.Contains("\"host-b\"", AgentConfig.Serialize(hosts.A.Handle(new ApiRequest("status"))), StringComparison.Ordinal);
            // The stuck call never returns: a status that waited for it would never come back.
            Assert.True(watch.ElapsedMilliseconds < 5000, $"status took {watch.ElapsedMilliseconds} ms while GetStats was stuck");
        }
        Eventually.True(() => hosts.A.Switch.Paths.TryGetValue("host-b", out var path) && path != stuck, TimeSpan.FromSeconds(10), "host-b's path replaced",
            () => string.Join("; ", hosts.A.Switch.Events));
        Assert.True(hosts.A.Switch.StackHost.IsQuarantined("faulty"));
    }

    /// <summary>
    /// A stack whose Dispose never returns: its slot, closed after a swap away from it, is disposed on a pool thread, so
    /// neither the path's gate nor housekeeping waits on it, and the path keeps carrying traffic.
    /// </summary>
    [Fact]
    public void AStackStuckForeverInDispose_HoldsNeitherThePathNorHousekeeping()
    {
        using var hosts = new TwoHosts("faulty");
        var marked = Frames.Marked(Mac1, Mac3, "DISPOSESTUCK");
        hosts.Vm("vm1").Transmit(marked);
        Assert.Equal(marked, hosts.Expect("vm3"));
        string Slots() => string.Join(", ", hosts.A.Switch.Paths["host-b"].StackStats().Select(s => $"{s.Key} {s.Value.Stack}"));
        Swap(hosts, "std-ipv4");
        // The faulty slot drains (100 ms) and housekeeping closes it: its instance's Dispose never returns. (The stats
        // answer at all: a path whose gate were held would answer with none.)
        Eventually.True(() => hosts.A.Switch.Paths["host-b"].StackStats() is { Count: > 0 } stats && stats.Values.All(s => s.Stack != "faulty"),
            TimeSpan.FromSeconds(10), "the faulty slot closed", Slots);
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        for (var i = 0; i < 5; i++)
        {
            hosts.Vm("vm2").Transmit(fromVm2);
            Assert.Equal(fromVm2, hosts.Expect("vm3"));
        }
        Assert.Equal(0, hosts.A.Switch.Paths["host-b"].Counters.Drops(DropReason.PathStuck));
        // The hung Dispose is noticed: every instance of the stack would hold a thread when it closes, so none is made again.
        Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty"), TimeSpan.FromSeconds(20), "faulty quarantined",
            () => string.Join("; ", hosts.A.Switch.Events));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("stack faulty@0.0.1 quarantined: an instance's Dispose has not returned for over 5 s", StringComparison.Ordinal));
        // Housekeeping goes on: a slot swapped away from now drains and is closed too.
        Swap(hosts, "swap-test");
        Swap(hosts, "std-ipv4");
        Eventually.True(() => hosts.A.Switch.Paths["host-b"].StackStats() is { Count: > 0 } stats && stats.Values.All(s => s.Stack != "swap-test"),
            TimeSpan.FromSeconds(10), "the swap-test slot closed", Slots);
    }

    /// <summary>Swaps the path between host A and host B to <paramref name="stack"/> at both ends.</summary>
    private static void Swap(TwoHosts hosts, string stack)
    {
        var prepared = hosts.A.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: stack));
        Assert.True(prepared.Ok, prepared.Error);
        var slot = (int)prepared.Result!.GetType().GetProperty("Slot")!.GetValue(prepared.Result)!;
        var peer = hosts.B.Handle(new ApiRequest("prepare-swap", Id: "host-a", Stack: stack, Slot: slot));
        Assert.True(peer.Ok, peer.Error);
        Assert.True(hosts.A.Handle(new ApiRequest("commit-swap", Id: "host-b", Slot: slot)).Ok);
        Assert.True(hosts.B.Handle(new ApiRequest("commit-swap", Id: "host-a", Slot: slot)).Ok);
    }

    /// <summary>
    /// A new instance that never returns from the first read of its timer (asked before it goes into its slot): the
    /// watchdog names the stack that is stuck, not the slot's previous one or none, quarantines it and replaces the path.
    /// </summary>
    [Fact]
    public void ANewInstanceStuckInItsFirstTimerRead_IsNamedAndQuarantined_AndItsPathReplaced()
    {
        using var hosts = new TwoHosts(settings: new() { ["faulty"] = new() { ["stuckArmAt"] = "host-a" } });
        var stuck = hosts.A.Switch.Paths["host-b"];
        // On a thread of its own: the call never returns (through the switch, not the API, whose gate it would hold).
        _ = Task.Run(() => hosts.A.Switch.PrepareSwap("host-b", "faulty"), TestContext.Current.CancellationToken);
        Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty") && hosts.A.Switch.Paths.TryGetValue("host-b", out var path) && path != stuck,
            TimeSpan.FromSeconds(10), "faulty quarantined and host-b's path replaced", () => string.Join("; ", hosts.A.Switch.Events));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("stack faulty@0.0.1 quarantined: hung in a call on the path to host-b", StringComparison.Ordinal));
        Assert.False(hosts.A.Switch.StackHost.IsQuarantined("std-ipv4"));
        Vm2ReachesVm3AfterTheReplacement(hosts);
    }

    /// <summary>
    /// A stack whose factory never returns on host A: the binding that asked for it fails after 2 s naming it, the stack
    /// is quarantined (it would hang every path), and the API and traffic go on.
    /// </summary>
    [Fact]
    public void AStackWhoseFactoryNeverReturns_FailsTheBindingInSeconds_AndIsQuarantined()
    {
        using var hosts = new TwoHosts(settings: new() { ["faulty"] = new() { ["stuckStartAt"] = "host-a" } });
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var refused = hosts.A.Handle(new ApiRequest("prepare-swap", Id: "host-b", Stack: "faulty"));
        Assert.False(refused.Ok);
        Assert.Contains("did not create an instance within 2 s", refused.Error, StringComparison.Ordinal);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), $"the binding took {watch.Elapsed}");
        Assert.True(hosts.A.Switch.StackHost.IsQuarantined("faulty"));
        Assert.True(hosts.A.Handle(new ApiRequest("status")).Ok);
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        hosts.Vm("vm2").Transmit(fromVm2);
        Assert.Equal(fromVm2, hosts.Expect("vm3"));
    }

    /// <summary>Waits for vm2's frames to reach vm3 again through host-b's fresh path (host-b takes its new slots as after a restart).</summary>
    private static void Vm2ReachesVm3AfterTheReplacement(TwoHosts hosts)
    {
        var fromVm2 = Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 200);
        Eventually.True(() =>
        {
            hosts.Vm("vm2").Transmit(fromVm2);
            return hosts.Vm("vm3").Receive(new byte[2048], out _, TimeSpan.FromMilliseconds(200)) == PortResult.Ok;
        }, TimeSpan.FromSeconds(10), "vm2 reaching vm3 after the replacement", () => string.Join("; ", hosts.A.Switch.Events));
    }
}
