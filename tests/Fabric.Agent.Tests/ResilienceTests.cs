using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Fabric.Agent.Underlay;
using Fabric.Testing;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// The agent's own threads outlive the faults of what they run: a datagram whose handling throws, a stack that cannot
/// start, a stack whose timer throws in the path monitor. Each costs what it touched, is counted and said, and
/// everything else goes on.
/// </summary>
public class ResilienceTests
{
    [Fact]
    public void AnUnderlayHandlerThatThrows_CostsItsOwnDatagram_NotTheReceiveThread()
    {
        var seen = new ConcurrentQueue<string>();
        var faults = new ConcurrentQueue<Exception>();
        using var underlay = new UdpUnderlay(new IPEndPoint(IPAddress.Loopback, 0), (datagram, _) =>
        {
            var text = Encoding.ASCII.GetString(datagram);
            seen.Enqueue(text == "boom" ? throw new InvalidOperationException("boom") : text);
        }, () => { }, faults.Enqueue);
        using var sender = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        foreach (var text in new[] { "one", "boom", "two", "boom", "three" })
        {
            sender.Send(Encoding.ASCII.GetBytes(text), underlay.Local);
        }
        Eventually.True(() => seen.Count == 3, TimeSpan.FromSeconds(5), "the datagrams after a fault", () => string.Join(",", seen));
        Assert.Equal(["one", "two", "three"], seen);
        Assert.Equal(2, underlay.Faults);
        Assert.All(faults, e => Assert.Equal("boom", e.Message));
    }

    [Fact]
    public void AnUnderlayUnderLoad_FlushesOncePerRunOfFullBatches_AndAtOnceWhenNothingMoreIsQueued()
    {
        // The handler holds the receive thread on the first datagram while the rest queue in the socket: the thread then
        // meets full batches (32 messages) and flushes what they made once, after the short one that ends the run
        // (or after 8 full ones, or 2 ms) — not after each of them.
        using var hold = new ManualResetEventSlim();
        var (handled, flushes) = (0, new ConcurrentQueue<int>());
        using var underlay = new UdpUnderlay(new IPEndPoint(IPAddress.Loopback, 0), (datagram, _) =>
        {
            if (Interlocked.Increment(ref handled) == 1)
            {
                hold.Wait(TimeSpan.FromSeconds(10));
            }
        }, () => flushes.Enqueue(Volatile.Read(ref handled)));
        using var sender = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        void Send(int count)
        {
            for (var i = 0; i < count; i++)
            {
                sender.Send(new byte[100], underlay.Local);
            }
        }
        Send(1);
        Eventually.True(() => Volatile.Read(ref handled) == 1, TimeSpan.FromSeconds(5), "the first datagram taken", () => $"{Volatile.Read(ref handled)} handled");
        Send(64);
        hold.Set();
        // The first batch (one datagram) flushed; then two full batches of 32 and nothing more queued: one flush, at once.
        Eventually.True(() => flushes.Count >= 2, TimeSpan.FromSeconds(5), "the run of full batches flushed", () => string.Join(",", flushes));
        Assert.Equal([1, 65], flushes);
        // 8 full batches in a row flush without waiting for a short one, and the run after them flushes on its own.
        hold.Reset();
        Interlocked.Exchange(ref handled, 0);
        flushes.Clear();
        Send(1);
        Eventually.True(() => Volatile.Read(ref handled) == 1, TimeSpan.FromSeconds(5), "the first datagram of the second run taken", () => $"{Volatile.Read(ref handled)} handled");
        Send(320);
        hold.Set();
        Eventually.True(() => flushes.LastOrDefault() == 321, TimeSpan.FromSeconds(5), "every datagram of the second run flushed", () => string.Join(",", flushes));
        // One flush came within the first 8 full batches (257 datagrams with the held one), so the run did not wait for its end.
        Assert.Contains(flushes, f => f is > 1 and <= 257);
        Assert.Equal(0, underlay.Faults);
    }

    [Fact]
    public async Task AStackThatFailsToStartAtThePeer_IsRefusedNamingWhy_QuarantinedThere_AndBothAgentsGoOn()
    {
        using var hosts = new TwoHosts(settings: new() { ["faulty"] = new() { ["failToStartAt"] = "host-b" } });
        var error = await hosts.A.Switch.BindVmAsync("vm1", "host-b", "faulty", TestContext.Current.CancellationToken);
        Assert.Contains("host 'host-b' did not open faulty", error, StringComparison.Ordinal);
        Assert.Contains("stack 'faulty@0.0.1' failed to start on the path to 'host-a': InvalidOperationException: faulty stack: asked not to start on host-b", error, StringComparison.Ordinal);
        Assert.True(hosts.B.Switch.StackHost.IsQuarantined("faulty"));
        Assert.Contains(hosts.B.Switch.Events, e => e.Contains("stack faulty@0.0.1 quarantined: stack 'faulty@0.0.1' failed to start", StringComparison.Ordinal));
        // vm1 stays on the path's stack, and B's underlay thread took it in its stride: traffic goes both ways.
        Assert.Equal("std-ipv4", hosts.A.Switch.Paths["host-b"].VmBindings().GetValueOrDefault("vm1").Stack ?? "std-ipv4");
        var there = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(there);
        Assert.Equal(there, hosts.Expect("vm3"));
        var back = Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200);
        hosts.Vm("vm3").Transmit(back);
        Assert.Equal(back, hosts.Expect("vm1"));
        Assert.Equal(0, hosts.B.Switch.UnderlayFaults);
    }

    [Fact]
    public async Task AStackThatFailsToStartHere_IsRefusedNamingWhy_AndQuarantined()
    {
        using var hosts = new TwoHosts(settings: new() { ["faulty"] = new() { ["failToStartAt"] = "host-a" } });
        var error = await hosts.A.Switch.BindVmAsync("vm1", "host-b", "faulty", TestContext.Current.CancellationToken);
        Assert.Equal("stack 'faulty@0.0.1' failed to start on the path to 'host-b': InvalidOperationException: faulty stack: asked not to start on host-a", error);
        Assert.True(hosts.A.Switch.StackHost.IsQuarantined("faulty"));
        Assert.Equal(0, hosts.A.Switch.StackHost.Entries().Single(e => e.Id == "faulty").Bindings);
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
    }

    /// <summary>
    /// A stack that throws when the path monitor asks when its timer is due: a fault of the stack like any other
    /// (quarantined, its path falls back), not of the monitor, which goes on probing this path and every other. (Until
    /// 2026-12-02 it escaped into the monitor's round, which it ended every time, so the paths after it were never probed.)
    /// </summary>
    [Fact]
    public void AStackThrowingWhenItsTimerIsRead_IsQuarantined_AndProbingGoesOn() => QuarantinedForATimerFault("TIMERFAULT", "threw InvalidOperationException");

    /// <summary>
    /// The same fault where only the monitor's planning of its sleep meets it (RemotePath.NextTimer reads every stack's
    /// timer after the round's timers ran). Until 2026-12-02 that read swallowed the throw and left it to the next round's
    /// timer run, which a stack throwing there alone (or only once) never gave: it was never quarantined (a CI run missed
    /// the once-only fault of the test above that way).
    /// </summary>
    [Fact]
    public void AStackThrowingOnlyWhenTheMonitorPlansItsSleep_IsQuarantinedToo() => QuarantinedForATimerFault("NEXTTIMERFAULT", "while the monitor plans its sleep");

    /// <summary>Marks vm1's traffic with <paramref name="marker"/>: the faulty stack is quarantined with an event that says
    /// <paramref name="says"/>, the monitor counts no fault of its own, and probes still go out and come back after it.</summary>
    private static void QuarantinedForATimerFault(string marker, string says)
    {
        using var hosts = new TwoHosts("faulty");
        hosts.Vm("vm1").Transmit(Frames.Marked(Mac1, Mac3, marker));
        Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty"), TimeSpan.FromSeconds(5), "the stack quarantined", () => string.Join("; ", hosts.A.Switch.Events));
        Assert.Contains(hosts.A.Switch.Events, e => e.Contains("stack faulty@0.0.1 quarantined", StringComparison.Ordinal) && e.Contains(says, StringComparison.Ordinal));
        Assert.Equal(0, hosts.A.Switch.MonitorFaults);
        hosts.A.Switch.Measure();
        Eventually.True(() => hosts.A.Switch.Measure().TryGetValue("host-b", out var m) && m.ProbesAnswered > 0, TimeSpan.FromSeconds(5),
            "probes answered after the fault", () => "none");
    }
}
