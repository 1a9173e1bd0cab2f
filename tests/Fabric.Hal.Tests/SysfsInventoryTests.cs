using Fabric.Hal.Inventory;
using Fabric.Testing;

namespace Fabric.Hal.Tests;

public class SysfsInventoryTests
{
    [Fact]
    public void FakeSriovNic_IsReadWithPfsVfsAndTheirLinks()
    {
        using var sysfs = new FakeSysfs();
        var nics = new SysfsInventory(sysfs.Root).ReadAll().ToDictionary(n => n.Name);
        Assert.Equal(["enp3s0f0", "enp3s0f0v0", "enp3s0f0v1", "enp3s0f1", "lo", "tap0", "veth-a"], nics.Keys.Order(StringComparer.Ordinal));

        var pf = nics["enp3s0f0"];
        Assert.Equal(NicKind.Physical, pf.Kind);
        Assert.Equal("ixgbe", pf.Driver);
        Assert.Equal("0000:03:00.0", pf.PciAddress);
        Assert.Equal(10000, pf.SpeedMbps);
        Assert.Equal("a0:36:9f:00:00:01", pf.Mac.ToString());
        Assert.Equal(new NicCounters(200, 400, 2000, 4000, 2, 4, 0, 0), pf.Counters);
        Assert.NotNull(pf.Sriov);
        Assert.Equal(63, pf.Sriov.TotalVfs);
        Assert.Equal(4, pf.Sriov.NumVfs);
        Assert.Equal(
            [new VfReference(0, "0000:03:10.0", "enp3s0f0v0"), new VfReference(1, "0000:03:10.2", "enp3s0f0v1"),
             new VfReference(2, "0000:03:10.4", null), new VfReference(3, "0000:03:10.6", null)],
            pf.Sriov.Vfs);

        var second = nics["enp3s0f1"];
        Assert.Equal(0, second.Sriov!.NumVfs);
        Assert.Null(second.SpeedMbps);
        Assert.Equal("down", second.OperState);

        var vf = nics["enp3s0f0v1"];
        Assert.Equal(NicKind.VirtualFunction, vf.Kind);
        Assert.Equal("ixgbevf", vf.Driver);
        Assert.Equal(new PhysicalFunctionReference("0000:03:00.0", "enp3s0f0", 1), vf.PhysicalFunction);
        Assert.Null(vf.Sriov);

        Assert.Equal(NicKind.Veth, nics["veth-a"].Kind);
        Assert.Equal(NicKind.Tap, nics["tap0"].Kind);
        Assert.Equal(NicKind.Loopback, nics["lo"].Kind);
        Assert.Null(nics["lo"].Mac);
    }

    [Fact]
    public void NotASysfsRoot_IsRefusedNamingThePath()
    {
        var e = Assert.Throws<DirectoryNotFoundException>(() => new SysfsInventory("/nonexistent-sysfs").ReadAll());
        Assert.Contains("/nonexistent-sysfs", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RealSysfsOfANamespace_ShowsItsVeths()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var net = new TestNetwork();
        var ns = net.AddNamespace("inv");
        net.AddVeth($"{net.Id}a", ns, $"{net.Id}b", ns, mtu: 1400);
        TestNetwork.Exec(ns, "ip", "link", "set", $"{net.Id}a", "address", "02:fa:b0:00:00:01");
        // `ip netns exec` mounts the namespace's own /sys, so the CLI reads the real sysfs of that namespace.
        var cli = Path.Combine(AppContext.BaseDirectory, "fabric-hal");
        var output = TestNetwork.Exec(ns, cli, "inventory");
        var line = output.Split('\n').Single(l => l.StartsWith($"{net.Id}a ", StringComparison.Ordinal));
        Assert.Contains("Veth", line, StringComparison.Ordinal);
        Assert.Contains("mac=02:fa:b0:00:00:01", line, StringComparison.Ordinal);
        Assert.Contains("mtu=1400", line, StringComparison.Ordinal);
        Assert.Contains("state=up", line, StringComparison.Ordinal);
        Assert.Contains(output.Split('\n'), l => l.StartsWith("lo ", StringComparison.Ordinal));
        Assert.DoesNotContain(output.Split('\n'), l => l.StartsWith("eth0 ", StringComparison.Ordinal));
    }
}
