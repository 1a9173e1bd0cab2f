using Fabric.Agent.Switching;

namespace Fabric.Agent.Tests;

public class PathGateTests
{
    /// <summary>
    /// A version's first calls on a path compile its code (a fresh load context's) and take far longer than the rest: the
    /// calls timed leave them out, so a rollout's cpu gate compares what a call costs once warm. One call in 64 is timed.
    /// </summary>
    [Fact]
    public void TheCallsTimed_LeaveOutAVersionsWarmUp_AndSampleOneCallIn64()
    {
        long now = 1;
        var gate = new PathGate("host-b", () => now);
        void Call(string stack, long nanoseconds)
        {
            gate.Calling(0, stack, now);
            now += nanoseconds;
            gate.Returned();
        }

        // Warm-up: 1 ms a call, on fec 1.0.2 (a version new on the path).
        for (var i = 0; i < PathGate.SampleEvery * PathGate.WarmupSamples; i++)
        {
            Call("fec@1.0.2", 1_000_000);
        }
        Assert.Empty(gate.CallTimes());
        for (var i = 0; i < PathGate.SampleEvery * 100; i++)
        {
            Call("fec@1.0.2", 5_000);
        }
        var (nanoseconds, samples) = gate.CallTimes()["fec@1.0.2"];
        Assert.Equal(100, samples);
        Assert.Equal(5_000, nanoseconds / samples);
    }
}
