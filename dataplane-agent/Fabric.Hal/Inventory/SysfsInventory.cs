using System.Collections.Immutable;
using System.Globalization;
using Fabric.Wire;

namespace Fabric.Hal.Inventory;

/// <summary>
/// Reads the NIC inventory from a sysfs tree: the real <c>/sys</c> by default, or a fake tree in tests. Only files are
/// read; nothing is written. A netdev that vanishes while it is being read is left out.
/// </summary>
public sealed class SysfsInventory
{
    private readonly string _root;

    /// <summary>Reads from <paramref name="sysfsRoot"/> (the folder that holds <c>class/net</c>).</summary>
    public SysfsInventory(string sysfsRoot = "/sys") => _root = sysfsRoot;

    /// <summary>Every netdev, sorted by name.</summary>
    public ImmutableArray<NicInfo> ReadAll()
    {
        var netDir = Path.Combine(_root, "class", "net");
        if (!Directory.Exists(netDir))
        {
            throw new DirectoryNotFoundException($"No {netDir}: '{_root}' is not a sysfs root.");
        }
        var builder = ImmutableArray.CreateBuilder<NicInfo>();
        foreach (var path in Directory.EnumerateFileSystemEntries(netDir).Order(StringComparer.Ordinal))
        {
            var nic = TryRead(Path.GetFileName(path));
            if (nic is not null)
            {
                builder.Add(nic);
            }
        }
        return builder.ToImmutable();
    }

    /// <summary>One netdev by name, or null when there is none.</summary>
    public NicInfo? TryRead(string name)
    {
        var dir = Path.Combine(_root, "class", "net", name);
        if (!Directory.Exists(dir))
        {
            return null;
        }
        try
        {
            var ifIndex = ReadInt(dir, "ifindex") ?? 0;
            var type = ReadInt(dir, "type") ?? 0;
            var macText = ReadText(dir, "address");
            MacAddress? mac = MacAddress.TryParse(macText, out var parsed) && type == 1 ? parsed : null;
            var deviceDir = Path.Combine(dir, "device");
            var hasDevice = Directory.Exists(deviceDir);
            string? pci = null;
            string? driver = null;
            SriovCapability? sriov = null;
            PhysicalFunctionReference? pf = null;
            if (hasDevice)
            {
                var resolved = ResolveLink(deviceDir);
                pci = Path.GetFileName(resolved);
                var driverLink = Path.Combine(deviceDir, "driver");
                driver = Directory.Exists(driverLink) ? Path.GetFileName(ResolveLink(driverLink)) : null;
                sriov = ReadSriov(deviceDir);
                pf = ReadPhysicalFunction(deviceDir, pci);
            }
            var kind = Classify(dir, type, hasDevice, pf is not null, ifIndex);
            driver ??= kind switch
            {
                NicKind.Tap => "tun",
                NicKind.Bridge => "bridge",
                NicKind.Veth => "veth",
                NicKind.Loopback => "loopback",
                _ => ReadUevent(dir, "DEVTYPE"),
            };
            return new NicInfo(name, ifIndex, kind, driver, mac, ReadInt(dir, "mtu") ?? 0, ReadSpeed(dir), ReadText(dir, "operstate") ?? "unknown",
                ReadCounters(dir), pci, sriov, pf);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static NicKind Classify(string dir, int type, bool hasDevice, bool isVf, int ifIndex)
    {
        if (type == 772)
        {
            return NicKind.Loopback;
        }
        if (isVf)
        {
            return NicKind.VirtualFunction;
        }
        if (hasDevice)
        {
            return NicKind.Physical;
        }
        if (File.Exists(Path.Combine(dir, "tun_flags")))
        {
            return NicKind.Tap;
        }
        if (Directory.Exists(Path.Combine(dir, "bridge")))
        {
            return NicKind.Bridge;
        }
        // A veth has no DEVTYPE in its uevent and its iflink names its peer; vlan/macvlan/vxlan carry a DEVTYPE.
        var devType = ReadUevent(dir, "DEVTYPE");
        var iflink = ReadInt(dir, "iflink");
        if (type == 1 && devType is null && iflink is not null && iflink != ifIndex)
        {
            return NicKind.Veth;
        }
        return NicKind.Virtual;
    }

    private static SriovCapability? ReadSriov(string deviceDir)
    {
        var total = ReadInt(deviceDir, "sriov_totalvfs");
        if (total is null or 0)
        {
            return null;
        }
        var vfs = ImmutableArray.CreateBuilder<VfReference>();
        foreach (var link in Directory.EnumerateFileSystemEntries(deviceDir, "virtfn*"))
        {
            if (!int.TryParse(Path.GetFileName(link).AsSpan("virtfn".Length), NumberStyles.None, CultureInfo.InvariantCulture, out var index))
            {
                continue;
            }
            var vfDir = ResolveLink(link);
            vfs.Add(new VfReference(index, Path.GetFileName(vfDir), FirstNetDevice(vfDir)));
        }
        vfs.Sort((a, b) => a.Index.CompareTo(b.Index));
        return new SriovCapability(total.Value, ReadInt(deviceDir, "sriov_numvfs") ?? 0, vfs.ToImmutable());
    }

    private static PhysicalFunctionReference? ReadPhysicalFunction(string deviceDir, string vfPci)
    {
        var physfn = Path.Combine(deviceDir, "physfn");
        if (!Directory.Exists(physfn))
        {
            return null;
        }
        var pfDir = ResolveLink(physfn);
        var index = -1;
        foreach (var link in Directory.EnumerateFileSystemEntries(pfDir, "virtfn*"))
        {
            if (Path.GetFileName(ResolveLink(link)) == vfPci
                && int.TryParse(Path.GetFileName(link).AsSpan("virtfn".Length), NumberStyles.None, CultureInfo.InvariantCulture, out var i))
            {
                index = i;
            }
        }
        return new PhysicalFunctionReference(Path.GetFileName(pfDir), FirstNetDevice(pfDir), index);
    }

    private static string? FirstNetDevice(string pciDir)
    {
        var net = Path.Combine(pciDir, "net");
        return Directory.Exists(net) ? Directory.EnumerateFileSystemEntries(net).Select(Path.GetFileName).Order(StringComparer.Ordinal).FirstOrDefault() : null;
    }

    private static NicCounters ReadCounters(string dir)
    {
        var stats = Path.Combine(dir, "statistics");
        long Read(string name) => ReadLong(stats, name) ?? 0;
        return new NicCounters(Read("rx_packets"), Read("tx_packets"), Read("rx_bytes"), Read("tx_bytes"), Read("rx_dropped"), Read("tx_dropped"),
            Read("rx_errors"), Read("tx_errors"));
    }

    private static long? ReadSpeed(string dir)
    {
        // Reading "speed" fails with EINVAL on devices with no link speed (veth, down links): that is "unknown", not an error.
        try
        {
            var speed = ReadLong(dir, "speed");
            return speed is > 0 ? speed : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The canonical path of <paramref name="path"/> with every symlink on the way resolved, like realpath(3).</summary>
    /// <remarks>sysfs links are relative to the directory that really holds them, which is itself reached through links,
    /// so resolving only the last component against the path as written lands in the wrong place.</remarks>
    private static string ResolveLink(string path)
    {
        var parts = new Stack<string>(Path.GetFullPath(path).Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse());
        var current = "/";
        for (var hops = 0; parts.Count > 0;)
        {
            var part = parts.Pop();
            if (part == ".")
            {
                continue;
            }
            if (part == "..")
            {
                current = Path.GetDirectoryName(current) ?? "/";
                continue;
            }
            var next = Path.Combine(current, part);
            var target = new FileInfo(next).LinkTarget;
            if (target is null)
            {
                current = next;
                continue;
            }
            if (++hops > 40)
            {
                throw new IOException($"Too many levels of symbolic links at {next}.");
            }
            foreach (var piece in target.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse())
            {
                parts.Push(piece);
            }
            if (target.StartsWith('/'))
            {
                current = "/";
            }
        }
        return current;
    }

    private static string? ReadUevent(string dir, string key)
    {
        var text = ReadText(dir, "uevent");
        if (text is null)
        {
            return null;
        }
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith(key + "=", StringComparison.Ordinal))
            {
                return line[(key.Length + 1)..];
            }
        }
        return null;
    }

    private static string? ReadText(string dir, string file)
    {
        var path = Path.Combine(dir, file);
        try
        {
            return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static int? ReadInt(string dir, string file) =>
        int.TryParse(ReadText(dir, file), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : null;

    private static long? ReadLong(string dir, string file)
    {
        var path = Path.Combine(dir, file);
        if (!File.Exists(path))
        {
            return null;
        }
        return long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : null;
    }
}
