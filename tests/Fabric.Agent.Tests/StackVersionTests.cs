using Fabric.Agent.Stacks;
using Fabric.Testing;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// Two versions of one stack id side by side on real agents over a loopback underlay: bindings of the id take the newest
/// version both ends run, move to a newer one hitlessly once the peer runs it, and go back to the previous one when the
/// newest is quarantined or withdrawn.
/// </summary>
public class StackVersionTests
{
    private static readonly string SwapTest = StackPlugins.PathOf(StackPlugins.SwapTest);

    private static string? KeyOf(Agent agent, string peer, string vm) => agent.Switch.Paths[peer].VmBindingKeys()[vm].Stack;

    /// <summary>Two hosts that run swap-test 0.1.0 and 0.2.0, vm1 bound to the newest.</summary>
    private static async Task<TwoHosts> BothVersionsWithVm1OnTheNewestAsync(CancellationToken ct)
    {
        var hosts = new TwoHosts();
        foreach (var agent in new[] { hosts.A, hosts.B })
        {
            agent.Switch.RegisterStack(SwapTest, "swap-test", signedVersion: "0.2.0");
        }
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", ct));
        Assert.Equal("swap-test@0.2.0", KeyOf(hosts.A, "host-b", "vm1"));
        return hosts;
    }

    [Fact]
    public async Task ANewVersion_RunsBesideTheOld_AndBindingsMoveToItWithoutLosingAFrame_OnceThePeerRunsItToo()
    {
        var ct = TestContext.Current.CancellationToken;
        using var hosts = new TwoHosts();
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.A, "host-b", "vm1"));
        using var stream = new FrameStream(hosts);

        // 0.2.0 arrives at A first: both versions are registered, the newer one is what the id now names.
        hosts.A.Switch.RegisterStack(SwapTest, "swap-test", signedVersion: "0.2.0");
        Assert.Equal(["swap-test@0.1.0", "swap-test@0.2.0"], hosts.A.Switch.StackHost.Registered.Where(k => StackKey.IdOf(k) == "swap-test"));
        Assert.Equal("swap-test@0.2.0", hosts.A.Switch.StackHost.Resolve("swap-test"));
        // B does not run it yet: vm1 stays where it is, and a new binding of the id takes the newest version B has.
        Assert.Equal(0, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.A, "host-b", "vm1"));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm2", "host-b", "swap-test", ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.A, "host-b", "vm2"));

        // B takes 0.2.0: both bindings move, each through a slot B opened with 0.2.0.
        hosts.B.Switch.RegisterStack(SwapTest, "swap-test", signedVersion: "0.2.0");
        // A periodic round does not ask again for what B refused moments ago (vm1's move), only for what it never asked
        // (vm2's); a round for a change asks for everything.
        Assert.Equal(1, await hosts.A.Switch.ConformBindingsAsync(Fabric.Agent.Switching.Switch.ConformRetry, ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.A, "host-b", "vm1"));
        Assert.Equal(1, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
        var (key, slot) = hosts.A.Switch.Paths["host-b"].VmBindingKeys()["vm1"];
        Assert.Equal("swap-test@0.2.0", key);
        Assert.Equal(("swap-test", "0.2.0"), (hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stack, hosts.B.Switch.Paths["host-a"].StackStats()[slot].Version));
        Assert.Equal(0, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
        Thread.Sleep(300);
        stream.Stop();
        Assert.True(stream.Sent > 1000, $"only {stream.Sent} frames were sent");
        Assert.Equal(stream.Sent, stream.Received);
        Assert.Equal(0, hosts.B.Switch.Paths["host-a"].SequenceGaps);

        // The old version drains at both ends and unloads; the new one carries on.
        int BindingsOf(Agent agent, string stackKey) => agent.Switch.StackHost.Entries().SingleOrDefault(e => e.Key == stackKey)?.Bindings ?? 0;
        Eventually.True(() => BindingsOf(hosts.A, "swap-test@0.1.0") == 0 && BindingsOf(hosts.B, "swap-test@0.1.0") == 0
                && !hosts.A.Switch.StackHost.Entries().Single(e => e.Key == "swap-test@0.1.0").Loaded,
            TimeSpan.FromSeconds(10), "0.1.0 released and unloaded", () => string.Join("; ", hosts.A.Switch.StackHost.Entries().Concat(hosts.B.Switch.StackHost.Entries())));
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300));
        Assert.Equal(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300), hosts.Expect("vm3"));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ANewestVersionQuarantinedOrWithdrawn_LeavesThePreviousOneUsable_AndTheIdBindsToIt(bool withdraw)
    {
        var ct = TestContext.Current.CancellationToken;
        using var hosts = await BothVersionsWithVm1OnTheNewestAsync(ct);

        if (withdraw)
        {
            Assert.True(hosts.A.Switch.WithdrawStack("swap-test@0.2.0", "test: withdrawn"));
        }
        else
        {
            hosts.A.Switch.StackHost.Quarantine("swap-test@0.2.0", "test: throws");
            hosts.A.Switch.Housekeeping();
        }
        // Only that version is out: the id still names a usable version, and binding it again takes that one.
        Assert.Equal(["swap-test"], hosts.A.Switch.StackHost.UsableIds.Where(id => id == "swap-test"));
        Assert.Equal(["swap-test@0.1.0"], hosts.A.Switch.StackHost.Candidates("swap-test"));
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.A, "host-b", "vm1"));
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300));
        Assert.Equal(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300), hosts.Expect("vm3"));
        // Asked for by its key, the version that is out is refused, naming it.
        var refused = await hosts.A.Switch.BindVmAsync("vm2", "host-b", "swap-test@0.2.0", ct);
        Assert.Contains(withdraw ? "stack 'swap-test@0.2.0' is withdrawn on this host" : "stack 'swap-test@0.2.0' is quarantined on this host", refused, StringComparison.Ordinal);
        // Nor does an upgrade take a binding back to it.
        Assert.Equal(0, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
    }

    /// <summary>
    /// The control plane holds swap-test at 0.1.0 on host A (a roll back): A's binding on 0.2.0 moves to 0.1.0 without
    /// losing a frame, a peer's request for 0.2.0 is refused naming the hold (a binding of the bare id then takes 0.1.0),
    /// and releasing the hold moves the binding back.
    /// </summary>
    [Fact]
    public async Task AHold_MovesBindingsToTheHeldVersion_ThePeersOtherVersionIsRefused_AndTheReleaseMovesThemBack()
    {
        var ct = TestContext.Current.CancellationToken;
        using var hosts = await BothVersionsWithVm1OnTheNewestAsync(ct);
        using var stream = new FrameStream(hosts);

        var hold = new Dictionary<string, string> { ["swap-test"] = "0.1.0" };
        Assert.True(hosts.A.Switch.StackHost.SetHolds(hold));
        Assert.False(hosts.A.Switch.StackHost.SetHolds(hold));
        Assert.Equal(1, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.A, "host-b", "vm1"));

        var refused = await hosts.B.Switch.BindVmAsync("vm3", "host-a", "swap-test@0.2.0", ct);
        Assert.Contains("stack 'swap-test@0.2.0' is not run on host-a: the control plane holds swap-test at 0.1.0 on this host", refused, StringComparison.Ordinal);
        Assert.Null(await hosts.B.Switch.BindVmAsync("vm3", "host-a", "swap-test", ct));
        Assert.Equal("swap-test@0.1.0", KeyOf(hosts.B, "host-a", "vm3"));
        // Nor does A bind a VM of its own to the version held out.
        Assert.Contains("stack 'swap-test@0.2.0' is not run on this host: the control plane holds swap-test at 0.1.0",
            await hosts.A.Switch.BindVmAsync("vm2", "host-b", "swap-test@0.2.0", ct), StringComparison.Ordinal);

        // A hold is a ceiling: one naming a newer version than this host has holds nothing back, one naming a version
        // between two it has leaves the older (a host released a version it has not installed never runs a newer one).
        Assert.True(hosts.B.Switch.StackHost.SetHolds(new Dictionary<string, string> { ["swap-test"] = "9.9.9" }));
        Assert.Equal(["swap-test@0.2.0", "swap-test@0.1.0"], hosts.B.Switch.StackHost.Candidates("swap-test"));
        Assert.True(hosts.B.Switch.StackHost.SetHolds(new Dictionary<string, string>(), new Dictionary<string, string> { ["swap-test"] = "0.1.5" }));
        Assert.Equal(["swap-test@0.1.0"], hosts.B.Switch.StackHost.Candidates("swap-test"));
        Assert.Contains("the control plane releases swap-test 0.1.5 to this host, not 0.2.0", hosts.B.Switch.StackHost.HeldOut("swap-test@0.2.0"), StringComparison.Ordinal);
        // One below every version the host has takes nothing away.
        Assert.True(hosts.B.Switch.StackHost.SetHolds(new Dictionary<string, string>(), new Dictionary<string, string> { ["swap-test"] = "0.0.1" }));
        Assert.Equal(["swap-test@0.2.0", "swap-test@0.1.0"], hosts.B.Switch.StackHost.Candidates("swap-test"));
        Assert.True(hosts.B.Switch.StackHost.SetHolds(new Dictionary<string, string>()));

        Assert.True(hosts.A.Switch.StackHost.SetHolds(new Dictionary<string, string>()));
        Assert.Equal(1, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
        Assert.Equal("swap-test@0.2.0", KeyOf(hosts.A, "host-b", "vm1"));
        Thread.Sleep(300);
        stream.Stop();
        Assert.True(stream.Sent > 1000, $"only {stream.Sent} frames were sent");
        Assert.Equal(stream.Sent, stream.Received);
    }

    /// <summary>
    /// A VM on arq-lowlat moves to a newer version of it: the old instance's RTT and rate estimates go to the new one,
    /// which says it resumed them, and the VM's frames go on arriving.
    /// </summary>
    [Fact]
    public async Task AVersionChange_HandsWhatTheOldInstanceMeasuredOfThePath_ToTheNewOne()
    {
        var ct = TestContext.Current.CancellationToken;
        var arq = StackPlugins.PathOf(StackPlugins.ArqLowLat);
        using var hosts = new TwoHosts();
        foreach (var agent in new[] { hosts.A, hosts.B })
        {
            agent.Switch.RegisterStack(arq);
        }
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "arq-lowlat", ct));
        for (var i = 0; i < 20; i++)
        {
            // Each frame acknowledged before the next: the sender has RTT samples.
            hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300 + i));
            Assert.Equal(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300 + i), hosts.Expect("vm3"));
            Thread.Sleep(5);
        }
        foreach (var agent in new[] { hosts.A, hosts.B })
        {
            agent.Switch.RegisterStack(arq, "arq-lowlat", signedVersion: "1.0.3");
        }
        Assert.Equal(1, await hosts.A.Switch.ConformBindingsAsync(cancellationToken: ct));
        Assert.Equal("arq-lowlat@1.0.3", KeyOf(hosts.A, "host-b", "vm1"));
        Eventually.True(() => hosts.A.Switch.Events.Any(e => e.Contains("stack arq-lowlat@1.0.3 on the path to host-b: state-resumed: srtt ", StringComparison.Ordinal)),
            TimeSpan.FromSeconds(5), "the new instance resumed the old one's estimates", () => string.Join("\n", hosts.A.Switch.Events));
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 400));
        Assert.Equal(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 400), hosts.Expect("vm3"));
    }

    /// <summary>
    /// A signed version registered from its package's declaration, whose factory declares something else (a publisher's
    /// mistake, signed): the first binding that takes it cannot load it; the switch quarantines it and says so, the
    /// binding is refused with the reason, and the next binding takes the version before it — traffic flows.
    /// </summary>
    [Fact]
    public async Task ASignedVersionThatDeclaresOtherwiseThanItsPackage_IsQuarantinedAtItsFirstBinding_AndThePreviousOneCarries()
    {
        var ct = TestContext.Current.CancellationToken;
        var folder = Directory.CreateTempSubdirectory("fabric-versions-").FullName;
        try
        {
            using var hosts = new TwoHosts();
            // fec: the hosts run no unsigned copy of it (signed and unsigned copies of one id never run side by side).
            foreach (var (version, extra) in new[] { ("1.0.0", 0), ("1.1.0", 16) })
            {
                var package = Fabric.Repository.StackPackage.Pack(Path.GetDirectoryName(StackPlugins.PathOf(StackPlugins.Fec))!, "fec", version, new Fabric.Repository.StackProfile());
                var unpacked = Fabric.Repository.StackPackage.Extract(package, Path.Combine(folder, version));
                var declared = unpacked.Declares!.ToDescription();
                foreach (var agent in new[] { hosts.A, hosts.B })
                {
                    agent.Switch.RegisterStack(unpacked.EntryPath, "fec", unpacked.Digests, version, declared with { MaxExpansionBytes = declared.MaxExpansionBytes + extra });
                }
            }
            Assert.All(hosts.A.Switch.StackHost.Entries().Where(e => e.Id == "fec"), e => Assert.Equal(0, e.Loads));

            var refused = await hosts.A.Switch.BindVmAsync("vm1", "host-b", "fec", ct);
            Assert.Contains("Stack 'fec@1.1.0' could not be loaded", refused, StringComparison.Ordinal);
            Assert.Contains("not what it was registered as", refused, StringComparison.Ordinal);
            Assert.Contains(hosts.A.Switch.Events, e => e.Contains("stack fec@1.1.0 quarantined: Stack 'fec@1.1.0' could not be loaded", StringComparison.Ordinal));
            Assert.True(hosts.A.Switch.StackHost.IsQuarantined("fec@1.1.0"));

            Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "fec", ct));
            Assert.Equal("fec@1.0.0", KeyOf(hosts.A, "host-b", "vm1"));
            hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300));
            Assert.Equal(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300), hosts.Expect("vm3"));
            // host-b never tried 1.1.0: its peer never asked it to open it.
            Assert.Equal(0, hosts.B.Switch.StackHost.Entries().Single(e => e.Key == "fec@1.1.0").Loads);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void TheSameVersionFromAnotherFile_OrAVersionWithTheSeparator_IsRefused_NamingIt()
    {
        var host = new StackHost(TimeSpan.Zero);
        host.Register(SwapTest);
        var other = Assert.Throws<InvalidOperationException>(() => host.Register(StackPlugins.PathOf(StackPlugins.Faulty), signedVersion: "0.1.0", signedId: "swap-test"));
        Assert.Contains("is signed as stack 'swap-test' but its factory declares 'faulty'", other.Message, StringComparison.Ordinal);
        var separator = Assert.Throws<InvalidOperationException>(() => host.Register(SwapTest, signedVersion: "1.0@2"));
        Assert.Contains("version '1.0@2': an id and a version must be non-empty and without '@'", separator.Message, StringComparison.Ordinal);
        Assert.Equal(["swap-test@0.1.0"], host.Registered);

        // An unsigned plug-in never runs beside a signed package of the same id (it would be the id's newest version).
        var folder = Directory.CreateTempSubdirectory("fabric-versions-").FullName;
        try
        {
            var package = Fabric.Repository.StackPackage.Pack(Path.GetDirectoryName(SwapTest)!, "swap-test", "0.3.0", new Fabric.Repository.StackProfile());
            var unpacked = Fabric.Repository.StackPackage.Extract(package, Path.Combine(folder, "swap-test"));
            var signedHost = new StackHost(TimeSpan.Zero);
            signedHost.Register(unpacked.EntryPath, "swap-test", unpacked.Digests, "0.3.0");
            var unsigned = Assert.Throws<InvalidOperationException>(() => signedHost.Register(SwapTest, signedVersion: "9.0.0"));
            Assert.Contains("signed and unsigned copies of one stack never run side by side", unsigned.Message, StringComparison.Ordinal);
            Assert.Equal(["swap-test@0.3.0"], signedHost.Registered);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Theory]
    [InlineData("1.0.10", "1.0.9", 1)]
    [InlineData("1.1.0-rc1", "1.1.0", -1)]
    [InlineData("2.0.0", "2.0.0", 0)]
    [InlineData("not-a-version", "0.0.1", -1)]
    public void VersionsOrder_AsTheRepositoryOrdersThem(string a, string b, int sign) => Assert.Equal(sign, Math.Sign(StackKey.CompareVersions(a, b)));
}
