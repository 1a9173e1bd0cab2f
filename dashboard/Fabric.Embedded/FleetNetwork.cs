using System.Diagnostics;
using System.Globalization;
using System.Net;
using Fabric.Hal.Linux;
using Fabric.Programs;

namespace Fabric.Embedded;

/// <summary>
/// The real network of the privileged embedded fleet (<c>--namespaces</c>, root only): a network namespace per host
/// with a veth uplink to the root namespace, and a namespace per VM with a veth into its host's namespace — the agent's
/// VM port, as a libvirt tap or a CNI veth would be:
/// <code>
///  root namespace: this process (silo, dashboard, link emulator)        fbrPIDu1 10.251.1.1 (+ 10.251.0.1, the silo)
///        │ veth                                                         fbrPIDu2 10.251.2.1 …
///  fbrPID-host-1: fabric-agent, uplink0 10.251.1.2 ── tap-web-1 ── veth ── fbrPID-web-1: eth0 10.100.1.1/16
/// </code>
/// Hosts reach each other only through the emulated links in this process (sockets bound on the root-side addresses),
/// and the silo's gateway at <see cref="ControlPlaneAddress"/>. Names carry this process's id, everything is deleted
/// on dispose, and leftovers of a run that was killed (its process gone) are deleted — with any process still in
/// them — when the next one starts.
/// </summary>
public sealed class FleetNetwork : IDisposable
{
    private const string Prefix = "fbr";

    /// <summary>The silo's address as the host namespaces see it (on host 1's root-side veth).</summary>
    public static readonly IPAddress ControlPlaneAddress = IPAddress.Parse("10.251.0.1");

    private readonly List<string> _namespaces = [];
    private readonly int _hosts;
    private int _disposed;

    private FleetNetwork(int hosts)
    {
        _hosts = hosts;
        Id = Prefix + (Environment.ProcessId % 100000).ToString(CultureInfo.InvariantCulture);
    }

    /// <summary>This run's prefix: namespaces are named <c>Id-host-N</c> and <c>Id-VM</c>, root-side veths <c>IduN</c>.</summary>
    public string Id { get; }

    public string HostNamespace(int host) => $"{Id}-host-{host}";

    public string VmNamespace(string vmId) => $"{Id}-{vmId}";

    /// <summary>The host's uplink inside its namespace.</summary>
    public const string Uplink = "uplink0";

    /// <summary>Where the link emulator's socket for host <paramref name="host"/> (1-based) binds: the root side of its veth.</summary>
    public static IPAddress LinkSide(int host) => IPAddress.Parse($"10.251.{host}.1");

    /// <summary>The host's underlay address (its uplink).</summary>
    public static IPAddress Underlay(int host) => IPAddress.Parse($"10.251.{host}.2");

    /// <summary>Why this machine cannot run the fleet on namespaces, or null when it can (a killed run's leftovers are deleted on the way).</summary>
    public static string? Unavailable()
    {
        if (Environment.UserName != "root" && !File.ReadAllText("/proc/self/status").Contains("\nUid:\t0\t", StringComparison.Ordinal))
        {
            return "--namespaces needs root (it makes network namespaces and veth pairs, and the agents open AF_PACKET sockets)";
        }
        if (!Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(d => File.Exists(Path.Combine(d, "ip"))))
        {
            return "--namespaces needs 'ip' (apt-get install --no-install-recommends iproute2)";
        }
        // A killed run's namespaces (and with them its veths and addresses) go first, so they do not count as in use.
        SweepLeftovers();
        var (code, addresses, _) = TryRun("ip", "-4", "-o", "addr", "show");
        if (code == 0 && addresses.Split('\n').FirstOrDefault(l => l.Contains(" 10.251.", StringComparison.Ordinal)) is { } used)
        {
            return $"--namespaces uses 10.251.0.0/16, which this machine already has ({used.Trim()}); is another 'fabric run --namespaces' running?";
        }
        return null;
    }

    /// <summary>Makes the host namespaces and uplinks (VMs come with <see cref="AddVm"/>); throws naming the step that failed, having deleted what it made.</summary>
    public static FleetNetwork Create(int hosts)
    {
        SweepLeftovers();
        var network = new FleetNetwork(hosts);
        try
        {
            for (var h = 1; h <= hosts; h++)
            {
                var ns = network.AddNamespace(network.HostNamespace(h));
                var root = $"{network.Id}u{h}";
                Run("ip", "link", "add", root, "type", "veth", "peer", "name", Uplink, "netns", ns);
                Run("ip", "addr", "add", $"{LinkSide(h)}/24", "dev", root);
                if (h == 1)
                {
                    Run("ip", "addr", "add", $"{ControlPlaneAddress}/32", "dev", root);
                }
                Run("ip", "link", "set", root, "up");
                Run("ip", "-n", ns, "addr", "add", $"{Underlay(h)}/24", "dev", Uplink);
                Run("ip", "-n", ns, "link", "set", Uplink, "up");
                Run("ip", "-n", ns, "route", "add", "default", "via", LinkSide(h).ToString());
            }
            return network;
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A VM: its namespace with eth0 (the MAC and address given, a /16 of the overlay), and the host-side end
    /// <paramref name="hostDevice"/> in its host's namespace, both up with their offloads on, as a VM's virtio NIC has them
    /// (the agent's port reads virtio-net headers, finishes checksums and cuts large segments).
    /// </summary>
    public string AddVm(int host, string vmId, string mac, string ipv4, string hostDevice)
    {
        var ns = AddNamespace(VmNamespace(vmId));
        var hostNs = HostNamespace(host);
        Run("ip", "-n", hostNs, "link", "add", hostDevice, "type", "veth", "peer", "name", "eth0", "netns", ns);
        Run("ip", "-n", ns, "link", "set", "eth0", "address", mac);
        Run("ip", "-n", ns, "addr", "add", $"{ipv4}/16", "dev", "eth0");
        foreach (var (space, device) in new[] { (ns, "eth0"), (hostNs, hostDevice) })
        {
            Run("ip", "-n", space, "link", "set", device, "up");
        }
        return ns;
    }

    private string AddNamespace(string name)
    {
        if (name.Length > 40)
        {
            throw new ArgumentException($"namespace name '{name}' is too long");
        }
        Run("ip", "netns", "add", name);
        _namespaces.Add(name);
        Run("ip", "-n", name, "link", "set", "lo", "up");
        return name;
    }

    /// <summary>Starts <paramref name="program"/> inside a namespace, its output appended to <paramref name="log"/>.</summary>
    public static Process StartIn(string ns, string program, string log, params string[] args)
    {
        var writer = new StreamWriter(log, append: true) { AutoFlush = true };
        var process = ProgramRunner.Start("ip", ["netns", "exec", ns, program, .. args]);
        void Write(object? sender, DataReceivedEventArgs e)
        {
            if (e.Data is not null)
            {
                lock (writer)
                {
                    writer.WriteLine(e.Data);
                }
            }
        }
        process.OutputDataReceived += Write;
        process.ErrorDataReceived += Write;
        process.Exited += (_, _) => { lock (writer) { writer.Dispose(); } };
        process.EnableRaisingEvents = true;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }
        // VM namespaces first (their veths go with them), then the hosts (and with each uplink its root-side peer).
        foreach (var ns in Enumerable.Reverse(_namespaces))
        {
            Delete(ns);
        }
        for (var h = 1; h <= _hosts; h++)
        {
            TryRun("ip", "link", "del", $"{Id}u{h}");
        }
    }

    /// <summary>Deletes a namespace after stopping any process still in it (an agent of a run that was killed).</summary>
    private static void Delete(string ns)
    {
        var (_, pids, _) = TryRun("ip", "netns", "pids", ns);
        var killed = pids.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(p => p.Trim()).ToList();
        foreach (var pid in killed)
        {
            TryRun("kill", "-KILL", pid);
        }
        // The namespace (and its veths) lives on until the last process in it is gone.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (killed.Any(Alive) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(20);
        }
        TryRun("ip", "netns", "del", ns);
    }

    private static void SweepLeftovers()
    {
        var (code, stdout, _) = TryRun("ip", "netns", "list");
        if (code != 0)
        {
            return;
        }
        var stale = new HashSet<string>(StringComparer.Ordinal);
        foreach (var line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var name = line.Split(' ')[0];
            var digits = new string(name.Skip(Prefix.Length).TakeWhile(char.IsDigit).ToArray());
            if (name.StartsWith(Prefix, StringComparison.Ordinal) && digits.Length > 0 && name.Length > Prefix.Length + digits.Length && name[Prefix.Length + digits.Length] == '-'
                && int.Parse(digits, CultureInfo.InvariantCulture) is var pid && (pid == Environment.ProcessId % 100000 || !Alive(pid.ToString(CultureInfo.InvariantCulture))))
            {
                Delete(name);
                stale.Add(name[..(Prefix.Length + digits.Length)]);
            }
        }
        // The root-side veth ends go with their namespace; any that did not (a half-made run) go by name.
        var (_, links, _) = TryRun("ip", "-o", "link", "show");
        foreach (var line in links.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var name = line.Split(':', 3) is { Length: 3 } parts ? parts[1].Trim().Split('@')[0] : "";
            if (stale.Any(id => name.StartsWith(id + "u", StringComparison.Ordinal)))
            {
                TryRun("ip", "link", "del", name);
            }
        }
    }

    /// <summary>Whether a process runs (a zombie that nobody has reaped yet does not: it holds no namespace).</summary>
    private static bool Alive(string pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)..].FirstOrDefault() != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static void Run(string program, params string[] args) => ProgramRunner.Run(program, args);

    private static ProgramResult TryRun(string program, params string[] args) => ProgramRunner.TryRun(program, args);
}
