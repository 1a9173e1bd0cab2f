using System.Globalization;

namespace Fabric.Testing;

/// <summary>
/// Network namespaces and veth pairs made by one test, named with a unique prefix ("fbt" + process id + counter) and
/// all deleted on dispose, even when the test failed. Leftovers of crashed runs (whose process is gone) are swept
/// when the first instance is made.
/// </summary>
public sealed class TestNetwork : IDisposable
{
    private const string Prefix = "fbt";
    private static int _counter;
    private static int _swept;
    private readonly List<string> _namespaces = [];
    private readonly List<string> _rootLinks = [];

    public TestNetwork()
    {
        if (Interlocked.Exchange(ref _swept, 1) == 0)
        {
            SweepLeftovers();
        }
        Id = $"{Prefix}{Environment.ProcessId % 100000}x{Interlocked.Increment(ref _counter)}";
    }

    /// <summary>This instance's unique prefix (at most 12 characters, so interface names built from it fit 15).</summary>
    public string Id { get; }

    /// <summary>Creates a namespace named Id-<paramref name="suffix"/> with loopback up; returns its name.</summary>
    public string AddNamespace(string suffix)
    {
        var name = $"{Id}-{suffix}";
        Privileged.Run("ip", "netns", "add", name);
        _namespaces.Add(name);
        Exec(name, "ip", "link", "set", "lo", "up");
        return name;
    }

    /// <summary>
    /// Creates a veth pair with ends <paramref name="nameA"/> in <paramref name="nsA"/> and <paramref name="nameB"/> in
    /// <paramref name="nsB"/> (null = the root namespace), both up, with checksum and segmentation offloads off so
    /// frames on the wire are complete and no larger than the MTU (user-space forwarders see exactly what a NIC would),
    /// unless <paramref name="offloads"/>: then they stay on, as on a VM's virtio NIC (for ports that read virtio-net headers).
    /// </summary>
    public void AddVeth(string nameA, string? nsA, string nameB, string? nsB, int mtu = 1500, bool offloads = false)
    {
        Privileged.Run("ip", "link", "add", nameA, "mtu", mtu.ToString(CultureInfo.InvariantCulture), "type", "veth", "peer", "name", nameB,
            "mtu", mtu.ToString(CultureInfo.InvariantCulture));
        _rootLinks.Add(nameA);
        foreach (var (name, ns) in new[] { (nameA, nsA), (nameB, nsB) })
        {
            if (ns is not null)
            {
                Privileged.Run("ip", "link", "set", name, "netns", ns);
            }
            ExecIn(ns, "ip", "link", "set", name, "up");
            if (!offloads)
            {
                DisableOffloads(ns, name);
            }
        }
    }

    /// <summary>Turns off tx checksum, TSO/GSO/GRO on a device (needs ethtool).</summary>
    public static void DisableOffloads(string? ns, string device)
    {
        // Partial checksums and 64 KiB GSO frames would reach AF_PACKET readers unfinished; real NICs never send those.
        var (code, _, stderr) = ns is null
            ? Privileged.TryRun("ethtool", "-K", device, "tx", "off", "tso", "off", "gso", "off", "gro", "off")
            : Privileged.TryRun("ip", "netns", "exec", ns, "ethtool", "-K", device, "tx", "off", "tso", "off", "gso", "off", "gro", "off");
        if (code != 0)
        {
            throw new InvalidOperationException($"ethtool -K {device} failed ({stderr.Trim()}); install ethtool (./fabric test does as root).");
        }
    }

    /// <summary>Adds an address (CIDR) to a device in a namespace.</summary>
    public void AddAddress(string ns, string device, string cidr)
    {
        // IPv6 duplicate address detection would hold the address "tentative" for a second or more: skip it.
        string[] args = cidr.Contains(':', StringComparison.Ordinal) ? ["addr", "add", cidr, "dev", device, "nodad"] : ["addr", "add", cidr, "dev", device];
        Exec(ns, "ip", args);
    }

    /// <summary>Runs a command inside a namespace and returns its output.</summary>
    public static string Exec(string ns, string program, params string[] args) => Privileged.Run("ip", ["netns", "exec", ns, program, .. args]);

    private static string ExecIn(string? ns, string program, params string[] args) => ns is null ? Privileged.Run(program, args) : Exec(ns, program, args);

    public void Dispose()
    {
        foreach (var ns in _namespaces)
        {
            Privileged.TryRun("ip", "netns", "del", ns);
        }
        foreach (var link in _rootLinks)
        {
            // Deleting a namespace deletes the veths in it (and so their peers); a pair left in the root goes here.
            Privileged.TryRun("ip", "link", "del", link);
        }
    }

    private static void SweepLeftovers()
    {
        var (code, stdout, _) = Privileged.TryRun("ip", "netns", "list");
        if (code != 0)
        {
            return;
        }
        foreach (var line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var name = line.Split(' ')[0];
            if (!name.StartsWith(Prefix, StringComparison.Ordinal))
            {
                continue;
            }
            var digits = new string(name[Prefix.Length..].TakeWhile(char.IsDigit).ToArray());
            if (int.TryParse(digits, CultureInfo.InvariantCulture, out var pid) && pid != Environment.ProcessId % 100000 && !Directory.Exists($"/proc/{pid}"))
            {
                Privileged.TryRun("ip", "netns", "del", name);
            }
        }
    }
}
