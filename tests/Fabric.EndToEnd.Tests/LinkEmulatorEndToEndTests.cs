using System.Diagnostics;
using Fabric.Testing;

namespace Fabric.EndToEnd.Tests;

/// <summary>
/// The standalone emulator between two namespaces, measured with real kernel traffic (ping, UDP sockets). Tolerances
/// are the issue's: RTT within 10 %, loss within 1 point over 10,000 packets, rate and trace within 10 %, a parameter
/// change effective within 100 ms. These measure correctness of the emulation, not speed.
/// </summary>
public class LinkEmulatorEndToEndTests
{
    private static string Emulator => Path.Combine(AppContext.BaseDirectory, "fabric-linkem");

    [Fact]
    public void Delay_ShowsUpInPingRoundTrips()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var path = new EmulatedPath(Emulator, "--delay", "20ms");
        path.Ping(1, 0.2);
        var (rtts, sent, received) = path.Ping(30, 0.05);
        Assert.Equal(sent, received);
        var median = rtts.Order().ElementAt(rtts.Count / 2);
        Assert.InRange(median, 40 * 0.9, 40 * 1.1);
        Assert.All(rtts, r => Assert.True(r >= 40, $"an RTT of {r} ms is shorter than the 2 × 20 ms configured"));

        path.Control("set both delay=50ms");
        var (slower, _, _) = path.Ping(10, 0.1, "fd00:fab::2");
        Assert.InRange(slower.Order().ElementAt(slower.Count / 2), 100 * 0.9, 100 * 1.1);
    }

    [Fact]
    public void RandomLoss_Over10000Packets_IsWithinOnePoint()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var path = new EmulatedPath(Emulator);
        path.Ping(2, 0.1);
        using var flow = new UdpFlow(path.NamespaceA, path.NamespaceB, EmulatedPath.AddressB);
        path.Control("set a2b loss=5%");
        flow.Send(0, 10_000, 200, packetsPerSecond: 20_000);
        var arrivals = flow.Drain(TimeSpan.FromMilliseconds(300));
        var loss = 1 - (arrivals.Count / 10_000.0);
        Assert.InRange(loss, 0.04, 0.06);
        Assert.Equal(arrivals.Count, arrivals.Select(a => a.Sequence).Distinct().Count());
    }

    [Fact]
    public void RateLimit_DeliversTheConfiguredRate()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var path = new EmulatedPath(Emulator);
        path.Ping(2, 0.1);
        using var flow = new UdpFlow(path.NamespaceA, path.NamespaceB, EmulatedPath.AddressB);
        path.Control("set a2b rate=20mbit queue=100");
        // 1472-byte payloads make 1514-byte frames; offer 30 Mbit/s so the bottleneck is always busy.
        flow.SendFor(TimeSpan.FromSeconds(3), 1472, packetsPerSecond: 30e6 / (1514 * 8));
        var measured = WireRate(flow.Drain(TimeSpan.FromMilliseconds(300)), 1514);
        Assert.InRange(measured, 20e6 * 0.9, 20e6 * 1.1);
    }

    [Fact]
    public void TraceReplay_DeliversTheTraceAverage()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var path = new EmulatedPath(Emulator);
        path.Ping(2, 0.1);
        using var flow = new UdpFlow(path.NamespaceA, path.NamespaceB, EmulatedPath.AddressB);
        var trace = TestData.PathOf("pantheon", "2017-01-03T21-30-Nepal-to-AWS-India-10-runs_13.38mbps.trace");
        path.Control($"set a2b trace={trace} queue=100");
        flow.SendFor(TimeSpan.FromSeconds(3), 1472, packetsPerSecond: 20e6 / (1514 * 8));
        // One 1500-byte IP packet per delivery opportunity: the trace's rate is counted in IP bytes.
        var measured = WireRate(flow.Drain(TimeSpan.FromMilliseconds(300)), 1500);
        Assert.InRange(measured, 13.38e6 * 0.9, 13.38e6 * 1.1);
    }

    [Fact]
    public void ParameterChangeMidRun_TakesEffectWithin100Ms()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var path = new EmulatedPath(Emulator);
        path.Ping(2, 0.1);
        using var flow = new UdpFlow(path.NamespaceA, path.NamespaceB, EmulatedPath.AddressB);
        long acknowledged = 0;
        var sender = new Thread(() => flow.SendFor(TimeSpan.FromSeconds(2), 100, packetsPerSecond: 1000)) { IsBackground = true };
        sender.Start();
        Thread.Sleep(700);
        path.Control("set a2b loss=100%");
        acknowledged = Stopwatch.GetTimestamp();
        sender.Join();
        var arrivals = flow.Drain(TimeSpan.FromMilliseconds(300));
        Assert.True(arrivals.Count > 300, $"the flow should have been flowing before the change; {arrivals.Count} arrived");
        var lastSentAfterChangeMs = (arrivals.Max(a => a.SentTicks) - acknowledged) * 1000.0 / Stopwatch.Frequency;
        Assert.True(lastSentAfterChangeMs <= 100, $"a datagram sent {lastSentAfterChangeMs:0.0} ms after the change still got through");
    }

    /// <summary>Bits per second between the first and the last arrival, counting <paramref name="bytesPerPacket"/> per datagram.</summary>
    private static double WireRate(List<UdpArrival> arrivals, int bytesPerPacket)
    {
        Assert.True(arrivals.Count > 100, $"only {arrivals.Count} datagrams arrived");
        var seconds = (arrivals[^1].ArrivedTicks - arrivals[0].ArrivedTicks) / (double)Stopwatch.Frequency;
        return (arrivals.Count - 1) * bytesPerPacket * 8 / seconds;
    }
}
