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
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UnixEpoch);
        var host = new StackHost(TimeSpan.FromSeconds(2), time);
        host.Register(StackPlugins.PathOf(StackPlugins.SwapTest));
        var stack = host.Acquire("swap-test");
        Assert.Equal(1, host.Entries().Single().Bindings);
        time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(0, host.Collect());
        host.Release(stack.Key);
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(0, host.Collect());
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, host.Collect());
        Assert.False(host.Entries().Single().Loaded);
        GC.KeepAlive(stack);
        // Used again later: loaded again, from the same file.
        Assert.Equal("swap-test", host.Acquire("swap-test").Description.Id);
        Assert.Throws<InvalidOperationException>(() => host.Acquire("nope"));
    }

    /// <summary>
    /// A signed plug-in is loaded from bytes checked against its package's digests, every time: it unloads as cleanly as
    /// one loaded from its file, and when its assembly is replaced on disk while it is unloaded (between two uses), the
    /// next use refuses to load it and names the file instead of running what was put there.
    /// </summary>
    [Fact]
    public void ASignedPlugin_LoadsOnlyItsSignedBytes_AfterEveryIdleUnload()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-stackhost-").FullName;
        try
        {
            var package = Fabric.Repository.StackPackage.Pack(Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.SwapTest))!, "swap-test", "0.1.0", new Fabric.Repository.StackProfile());
            var unpacked = Fabric.Repository.StackPackage.Extract(package, Path.Combine(folder, "swap-test"));
            var host = new StackHost(TimeSpan.Zero);
            host.Register(unpacked.EntryPath, "swap-test", unpacked.Digests);
            for (var i = 0; i < 3; i++)
            {
                Cycle(host);
            }
            Settle(host);
            Assert.Equal(0, host.UnloadingContexts);
            Assert.False(host.Entries().Single().Loaded);

            File.Copy(StackPlugins.PathOf(StackPlugins.StdIPv4), unpacked.EntryPath, overwrite: true);
            var refused = Assert.Throws<StackLoadException>(() => host.Acquire("swap-test"));
            Assert.Contains("Stack 'swap-test@0.1.0' could not be loaded", refused.Message, StringComparison.Ordinal);
            Assert.Contains("does not match the stack's signed package", refused.Message, StringComparison.Ordinal);
            // The disk's fault, not the version's: not to be quarantined.
            Assert.False(refused.VersionsFault);
            Assert.False(host.Entries().Single().Loaded);

            // Unpacked again from the verified package (as the agent's next refresh does), it is usable again.
            Assert.NotNull(Fabric.Repository.StackPackage.Extract(package, Path.Combine(folder, "swap-test")).Repaired);
            Cycle(host);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// A signed version whose package says what its factory declares is registered without running any of its code: the
    /// host describes it from the package, loads it on its first binding (counted), and a package that says something else
    /// than its factory then declares (a publisher's mistake, signed) is refused at that load as the version's fault, and
    /// its context goes away.
    /// </summary>
    [Fact]
    public void ASignedVersion_IsNotLoadedUntilABindingTakesIt_AndOneDeclaringOtherwiseIsQuarantinedThen()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-stackhost-").FullName;
        try
        {
            var host = new StackHost(TimeSpan.Zero);
            (string Path, IReadOnlyDictionary<string, string> Digests, StackDescription Declared) Unpacked(string version)
            {
                var package = Fabric.Repository.StackPackage.Pack(Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.SwapTest))!, "swap-test", version, new Fabric.Repository.StackProfile());
                var unpacked = Fabric.Repository.StackPackage.Extract(package, Path.Combine(folder, version));
                return (unpacked.EntryPath, unpacked.Digests, Assert.IsType<Fabric.Repository.StackDeclaration>(unpacked.Declares).ToDescription());
            }
            var first = Unpacked("0.1.0");
            var (_, key) = host.Register(first.Path, "swap-test", first.Digests, "0.1.0", first.Declared);
            var entry = host.Entries().Single();
            Assert.Equal(("swap-test@0.1.0", false, 0), (key, entry.Loaded, entry.Loads));
            Assert.Equal(first.Declared, host.Describe("swap-test"));

            // Whoever can write the state folder alters the deps file before the first load: the load fails, and the fault
            // is the disk's (the next refresh unpacks the package again), never the version's — not to be quarantined.
            var deps = Directory.EnumerateFiles(Path.GetDirectoryName(first.Path)!, "*.deps.json").Single();
            var signedDeps = File.ReadAllBytes(deps);
            File.WriteAllText(deps, "{ not json");
            var disk = Assert.Throws<StackLoadException>(() => host.Acquire("swap-test"));
            Assert.False(disk.VersionsFault, disk.Message);
            File.WriteAllBytes(deps, signedDeps);

            Cycle(host);
            Settle(host);
            // Two loads: the one the altered file failed, and the good one.
            Assert.Equal((false, 2), (host.Entries().Single().Loaded, host.Entries().Single().Loads));

            // 0.2.0's package says it carries 16 more bytes a packet than its factory declares.
            var second = Unpacked("0.2.0");
            host.Register(second.Path, "swap-test", second.Digests, "0.2.0", second.Declared with { MaxExpansionBytes = second.Declared.MaxExpansionBytes + 16 });
            Assert.Equal(0, host.Entries().Single(e => e.Version == "0.2.0").Loads);
            var refused = Assert.Throws<StackLoadException>(() => host.Acquire("swap-test"));
            Assert.Contains("Stack 'swap-test@0.2.0' could not be loaded", refused.Message, StringComparison.Ordinal);
            Assert.Contains("not what it was registered as", refused.Message, StringComparison.Ordinal);
            Assert.True(refused.VersionsFault);
            Assert.Equal(1, host.Entries().Single(e => e.Version == "0.2.0").Loads);
            // The switch quarantines it (ASignedVersionThatDeclaresOtherwiseThanItsPackage_…); then 0.1.0 is the id's version.
            host.Quarantine(refused.Key, refused.Message);
            Assert.Equal("swap-test@0.1.0", host.Resolve("swap-test"));
            Cycle(host);
            Settle(host);
            Assert.Equal(0, host.UnloadingContexts);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Cycle(StackHost host)
    {
        var stack = host.Acquire("swap-test");
        using (var instance = stack.Factory.Create(new StackContext("a", "b", new Dictionary<string, string>(), new NoTelemetry())))
        {
            Assert.NotNull(instance.GetStats());
        }
        host.Release(stack.Key);
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
