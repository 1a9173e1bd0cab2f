namespace Fabric.Hal.Tests;

/// <summary>
/// A fake sysfs tree shaped like a real one: a two-port SR-IOV NIC (ixgbe, PCI 0000:03:00.0 and .1) whose first port
/// has 4 of 63 VFs enabled (two bound to ixgbevf with netdevs, two to vfio with none), a veth, a tap, and loopback.
/// Symlinks point where the kernel's do (class/net/X -> devices/.../net/X, device -> the PCI function).
/// </summary>
internal sealed class FakeSysfs : IDisposable
{
    public FakeSysfs()
    {
        Root = Directory.CreateTempSubdirectory("fabric-sysfs-").FullName;
        var pci = Path.Combine(Root, "devices", "pci0000:00", "0000:00:02.0");
        var drivers = Path.Combine(Root, "bus", "pci", "drivers");
        foreach (var driver in new[] { "ixgbe", "ixgbevf", "vfio-pci" })
        {
            Directory.CreateDirectory(Path.Combine(drivers, driver));
        }
        Physical("enp3s0f0", 2, Path.Combine(pci, "0000:03:00.0"), "ixgbe", "a0:36:9f:00:00:01", 10000, totalVfs: 63, numVfs: 4);
        Physical("enp3s0f1", 3, Path.Combine(pci, "0000:03:00.1"), "ixgbe", "a0:36:9f:00:00:02", null, totalVfs: 63, numVfs: 0, operState: "down");
        for (var i = 0; i < 4; i++)
        {
            var vfPci = Path.Combine(pci, $"0000:03:10.{i * 2}");
            Directory.CreateDirectory(vfPci);
            Link(Path.Combine(Root, "devices", "pci0000:00", "0000:00:02.0", "0000:03:00.0", $"virtfn{i}"), vfPci);
            Link(Path.Combine(vfPci, "physfn"), Path.Combine(pci, "0000:03:00.0"));
            if (i < 2)
            {
                Link(Path.Combine(vfPci, "driver"), Path.Combine(drivers, "ixgbevf"));
                NetDev($"enp3s0f0v{i}", 10 + i, Path.Combine(vfPci, "net"), $"02:00:00:00:10:0{i}", type: 1, speed: "10000");
            }
            else
            {
                Link(Path.Combine(vfPci, "driver"), Path.Combine(drivers, "vfio-pci"));
            }
        }
        NetDev("lo", 1, Path.Combine(Root, "devices", "virtual", "net"), "00:00:00:00:00:00", type: 772, iflink: 1);
        NetDev("veth-a", 20, Path.Combine(Root, "devices", "virtual", "net"), "02:aa:00:00:00:01", type: 1, iflink: 21);
        var tap = NetDev("tap0", 22, Path.Combine(Root, "devices", "virtual", "net"), "02:bb:00:00:00:01", type: 1, iflink: 22);
        File.WriteAllText(Path.Combine(tap, "tun_flags"), "0x1002\n");
    }

    public string Root { get; }

    private void Physical(string name, int ifIndex, string pciDir, string driver, string mac, int? speed, int totalVfs, int numVfs, string operState = "up")
    {
        Directory.CreateDirectory(pciDir);
        Link(Path.Combine(pciDir, "driver"), Path.Combine(Root, "bus", "pci", "drivers", driver));
        File.WriteAllText(Path.Combine(pciDir, "sriov_totalvfs"), $"{totalVfs}\n");
        File.WriteAllText(Path.Combine(pciDir, "sriov_numvfs"), $"{numVfs}\n");
        NetDev(name, ifIndex, Path.Combine(pciDir, "net"), mac, type: 1, speed: speed?.ToString(System.Globalization.CultureInfo.InvariantCulture), operState: operState);
    }

    private string NetDev(string name, int ifIndex, string netDir, string mac, int type, string? speed = null, int? iflink = null, string operState = "up")
    {
        var dir = Path.Combine(netDir, name);
        Directory.CreateDirectory(Path.Combine(dir, "statistics"));
        File.WriteAllText(Path.Combine(dir, "ifindex"), $"{ifIndex}\n");
        File.WriteAllText(Path.Combine(dir, "iflink"), $"{iflink ?? ifIndex}\n");
        File.WriteAllText(Path.Combine(dir, "type"), $"{type}\n");
        File.WriteAllText(Path.Combine(dir, "address"), mac + "\n");
        File.WriteAllText(Path.Combine(dir, "mtu"), "1500\n");
        File.WriteAllText(Path.Combine(dir, "operstate"), operState + "\n");
        File.WriteAllText(Path.Combine(dir, "uevent"), $"INTERFACE={name}\nIFINDEX={ifIndex}\n");
        // A down physical port answers EINVAL on read; an empty file stands for that here.
        File.WriteAllText(Path.Combine(dir, "speed"), speed is null ? "" : speed + "\n");
        foreach (var (counter, value) in new[] { ("rx_packets", 100), ("tx_packets", 200), ("rx_bytes", 1000), ("tx_bytes", 2000), ("rx_dropped", 1), ("tx_dropped", 2), ("rx_errors", 0), ("tx_errors", 0) })
        {
            File.WriteAllText(Path.Combine(dir, "statistics", counter), $"{value * ifIndex}\n");
        }
        var parent = Path.GetDirectoryName(netDir)!;
        if (!parent.EndsWith("virtual", StringComparison.Ordinal))
        {
            Link(Path.Combine(dir, "device"), parent);
        }
        Link(Path.Combine(Root, "class", "net", name), dir);
        return dir;
    }

    private static void Link(string path, string target)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Directory.CreateSymbolicLink(path, Path.GetRelativePath(Path.GetDirectoryName(path)!, target));
    }

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
