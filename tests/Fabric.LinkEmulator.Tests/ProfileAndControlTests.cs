using Fabric.Hal;
using Fabric.LinkEmulator;
using Fabric.Testing;

namespace Fabric.LinkEmulator.Tests;

public class ProfileAndControlTests
{
    [Fact]
    public void Settings_ParseWithUnits()
    {
        var profile = LinkProfile.Clean.Apply(["delay=30ms", "jitter=500us", "loss=2.5%", "rate=20mbit", "queue=64", "reorder=on"]);
        Assert.Equal(TimeSpan.FromMilliseconds(30), profile.Delay);
        Assert.Equal(TimeSpan.FromMilliseconds(0.5), profile.Jitter);
        Assert.Equal(0.025, profile.LossRate, 6);
        Assert.Equal(20_000_000, profile.RateBitsPerSecond);
        Assert.Equal(64, profile.QueuePackets);
        Assert.True(profile.AllowReorder);
        Assert.Equal(new GilbertElliott(0.01, 0.3, 0.9, 0.001), LinkProfile.Clean.Apply(["ge=1%,30%,0.9,0.001"]).BurstLoss);
        Assert.Equal(0, profile.Apply(["rate=unlimited"]).RateBitsPerSecond);
    }

    [Theory]
    [InlineData("delay=abc", "delay")]
    [InlineData("delay=5h", "unit 'h'")]
    [InlineData("loss=120%", "outside 0–100%")]
    [InlineData("ge=0.1", "P,R")]
    [InlineData("rate=-1mbit", "rate")]
    [InlineData("queue=0", "queue")]
    [InlineData("speed=1", "Unknown setting 'speed'")]
    [InlineData("delay", "not key=value")]
    [InlineData("trace=/nonexistent/trace", "does not exist")]
    public void BadSettings_AreRefusedNamingTheSetting(string setting, string expected)
    {
        var e = Assert.Throws<FormatException>(() => LinkProfile.Clean.Apply([setting]));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BadTraceLines_AreRefusedWithTheLineNumber()
    {
        Assert.Contains("line 3", Assert.Throws<FormatException>(() => MahimahiTrace.Parse("t", ["1", "5", "4"])).Message, StringComparison.Ordinal);
        Assert.Contains("line 2", Assert.Throws<FormatException>(() => MahimahiTrace.Parse("t", ["1", "x"])).Message, StringComparison.Ordinal);
        Assert.Contains("period would be zero", Assert.Throws<FormatException>(() => MahimahiTrace.Parse("t", ["0", "0"])).Message, StringComparison.Ordinal);
        Assert.Contains("no delivery", Assert.Throws<FormatException>(() => MahimahiTrace.Parse("t", [])).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ControlCommands_ChangeOneDirectionAndNeverHalfApply()
    {
        var (a, b) = ChannelPort.CreatePair();
        using var emulator = new LinkEmulator(a, b, LinkProfile.Clean, LinkProfile.Clean, new ManualClock());
        var path = Path.Combine(Path.GetTempPath(), $"linkem-{Guid.NewGuid():N}.sock");
        using var server = new ControlServer(emulator, path);
        var reply = ControlServer.Send(path, "set a2b delay=40ms loss=3%");
        Assert.StartsWith("ok", reply, StringComparison.Ordinal);
        Assert.Equal(TimeSpan.FromMilliseconds(40), emulator.GetProfile(Direction.AToB).Delay);
        Assert.Equal(TimeSpan.Zero, emulator.GetProfile(Direction.BToA).Delay);

        Assert.StartsWith("error: loss", ControlServer.Send(path, "set both delay=1ms loss=abc"), StringComparison.Ordinal);
        Assert.Equal(TimeSpan.FromMilliseconds(40), emulator.GetProfile(Direction.AToB).Delay);
        Assert.Equal(TimeSpan.Zero, emulator.GetProfile(Direction.BToA).Delay);
        Assert.StartsWith("error: direction 'up'", ControlServer.Send(path, "set up delay=1ms"), StringComparison.Ordinal);
        Assert.StartsWith("error: unknown command", ControlServer.Send(path, "reboot"), StringComparison.Ordinal);
        Assert.Contains("\"Offered\":0", ControlServer.Send(path, "stats"), StringComparison.Ordinal);
    }

    [Fact]
    public void EmulatorOverChannelPorts_UnderASimulatedClock_IsDeterministic()
    {
        var clock = new ManualClock();
        var (hostA, emuA) = ChannelPort.CreatePair("host-a", "emu-a");
        var (emuB, hostB) = ChannelPort.CreatePair("emu-b", "host-b");
        using var emulator = new LinkEmulator(emuA, emuB,
            LinkProfile.Clean with { Delay = TimeSpan.FromMilliseconds(10), RateBitsPerSecond = 8_000_000, LossRate = 0.1 },
            LinkProfile.Clean with { Delay = TimeSpan.FromMilliseconds(2) }, clock, seed: 5);
        for (var i = 0; i < 1000; i++)
        {
            hostA.Transmit(new byte[1000]);
            hostB.Transmit(new byte[100]);
        }
        var buffer = new byte[2048];
        long next;
        var arrivedAtB = new List<long>();
        var arrivedAtA = 0;
        do
        {
            next = emulator.Step();
            while (hostB.Receive(buffer, out _, TimeSpan.Zero) == PortResult.Ok)
            {
                arrivedAtB.Add(clock.NowNanoseconds);
            }
            while (hostA.Receive(buffer, out _, TimeSpan.Zero) == PortResult.Ok)
            {
                arrivedAtA++;
            }
            if (next != long.MaxValue)
            {
                clock.AdvanceNanoseconds(next - clock.NowNanoseconds);
            }
        }
        while (next != long.MaxValue);
        // 1000 B at 8 Mbit/s = 1 ms each; ~10 % lost on the way A→B; B→A is clean.
        Assert.InRange(arrivedAtB.Count, 870, 930);
        Assert.Equal(1000, arrivedAtA);
        Assert.Equal(11_000_000, arrivedAtB[0]);
        var (stats, failures) = emulator.GetStats(Direction.AToB);
        Assert.Equal(1000, stats.Offered);
        Assert.Equal(stats.Offered - stats.Lost, stats.Delivered);
        Assert.Equal(0, failures);
    }
}
