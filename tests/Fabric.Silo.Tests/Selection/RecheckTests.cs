using Fabric.Silo.Selection;

namespace Fabric.Silo.Tests.Selection;

/// <summary>When a VM checks a pending switch again (<see cref="VmGrain.RecheckAfter"/>).</summary>
public class RecheckTests
{
    private static readonly DateTimeOffset Since = new(2026, 12, 5, 23, 35, 2, TimeSpan.Zero);

    [Fact]
    public void APendingSwitch_IsRecheckedJustAfterItsSustainEnds()
    {
        var pending = new PendingSwitch("arq-lowlat", Since, TimeSpan.FromSeconds(3.87));
        Assert.Equal(TimeSpan.FromSeconds(3.87) + TimeSpan.FromMilliseconds(20), VmGrain.RecheckAfter(pending, TimeSpan.FromSeconds(5), Since));
        Assert.Equal(TimeSpan.FromMilliseconds(5020), VmGrain.RecheckAfter(pending with { Sustain = null }, TimeSpan.FromSeconds(5), Since));
    }

    [Fact]
    public void ASwitchKeptPendingPastItsSustain_IsRecheckedASecondLater_NotAtOnce()
    {
        // The embedded default's voice-3 towards host-4: the selector kept a switch to arq-lowlat pending until the VM's
        // outcomes judged std-ipv4, and the VM rechecked it at once, 150 times a second, for as long as that took.
        var pending = new PendingSwitch("arq-lowlat", Since, TimeSpan.FromSeconds(3.87));
        foreach (var late in new[] { 3.9, 4.3, 60.0 })
        {
            Assert.Equal(VmGrain.RecheckWhenOver, VmGrain.RecheckAfter(pending, TimeSpan.FromSeconds(5), Since.AddSeconds(late)));
        }
        Assert.Equal(TimeSpan.FromSeconds(1), VmGrain.RecheckWhenOver);
    }
}
