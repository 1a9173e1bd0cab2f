using System.Runtime.CompilerServices;
using Fabric.Agent.Stacks;
using Fabric.Stacks;
using Fabric.Testing;

namespace Fabric.Agent.Tests;

/// <summary>Runs alone: the memory figure must not count what other tests allocate at the same time.</summary>
[CollectionDefinition(nameof(StackHostTests), DisableParallelization = true)]
public sealed class StackHostCollection;

[Collection(nameof(StackHostTests))]
public class StackHostTests
{
    [Fact]
    public void FiftyLoadBindUnbindUnloadCycles_LeaveNoContextAndNoGrowth()
    {
        var host = new StackHost(TimeSpan.Zero);
        host.Register(StackPlugins.PathOf(StackPlugins.SwapTest));
        Cycle(host);
        Settle(host);
        var baseline = GC.GetTotalMemory(forceFullCollection: true);
        for (var i = 0; i < 50; i++)
        {
            Cycle(host);
        }
        Settle(host);
        Assert.Equal(0, host.UnloadingContexts);
        Assert.False(host.Entries().Single().Loaded);
        var growth = GC.GetTotalMemory(forceFullCollection: true) - baseline;
        Assert.True(growth < 2 * 1024 * 1024, $"managed memory grew by {growth / 1024} KiB over 50 cycles");
    }

    [Fact]
    public void AStackStaysLoadedWhileBound_AndDrainsBeforeUnloading()
    {
        var now = DateTime.UnixEpoch;
        var host = new StackHost(TimeSpan.FromSeconds(2), () => now);
        host.Register(StackPlugins.PathOf(StackPlugins.SwapTest));
        var stack = host.Acquire("swap-test");
        Assert.Equal(1, host.Entries().Single().Bindings);
        now += TimeSpan.FromSeconds(10);
        Assert.Equal(0, host.Collect());
        host.Release("swap-test");
        now += TimeSpan.FromSeconds(1);
        Assert.Equal(0, host.Collect());
        now += TimeSpan.FromSeconds(1);
        Assert.Equal(1, host.Collect());
        Assert.False(host.Entries().Single().Loaded);
        GC.KeepAlive(stack);
        // Used again later: loaded again, from the same file.
        Assert.Equal("swap-test", host.Acquire("swap-test").Description.Id);
        Assert.Throws<InvalidOperationException>(() => host.Acquire("nope"));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Cycle(StackHost host)
    {
        var stack = host.Acquire("swap-test");
        using (var instance = stack.Factory.Create(new StackContext("a", "b", new Dictionary<string, string>(), new NoTelemetry())))
        {
            Assert.NotNull(instance.GetStats());
        }
        host.Release("swap-test");
        host.Collect();
    }

    /// <summary>GC until every unloaded context is gone (an unload completes over a few collections).</summary>
    private static void Settle(StackHost host)
    {
        for (var i = 0; i < 20 && host.UnloadingContexts > 0; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    private sealed class NoTelemetry : IStackTelemetry
    {
        public void Event(string name, string detail)
        {
        }
    }
}
