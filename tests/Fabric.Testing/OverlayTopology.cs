using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Fabric.LinkEmulator;

namespace Fabric.Testing;

/// <summary>A VM of the topology: its namespace, addresses and MAC, and the host it sits on.</summary>
/// <remarks><c>HostDevice</c> is the host-side veth end the agent attaches to; <c>Device</c> the VM-side end (its "eth0").</remarks>
public sealed record TestVm(string Name, string Namespace, string Host, uint Vni, string Mac, string IPv4, string IPv6, string HostDevice, string Device);

/// <summary>
/// A control plane for the topology: a real <c>fabric-silo</c> process (localhost clustering, memory storage) in its own
/// namespace, joined to both hosts by a management bridge that does not cross the emulator, its catalog fed from the
/// signed repository at <paramref name="RepositoryPath"/>, which both agents install their stacks from. With a
/// <paramref name="LearningStore"/> folder the silo logs outcomes there and trains its model every
/// <paramref name="TrainEverySeconds"/> (0: never) once <paramref name="MinOutcomes"/> are logged. With
/// <paramref name="Programmed"/>, the agents' configurations name no remote host, route or key: the control plane
/// programs them. Agents read the repository every <paramref name="AgentRefreshSeconds"/>; a rollout's rings bake
/// <paramref name="RolloutBakeSeconds"/> and its utility gate needs <paramref name="RolloutMinPaths"/> VM paths a version. A
/// rotated host key verifies for <paramref name="KeyOverlapSeconds"/> after its successor's registration.
/// </summary>
public sealed record ControlPlaneSetup(string RepositoryPath, string TrustRoot, int SelectorSustainMilliseconds = 1000,
    string? LearningStore = null, int TrainEverySeconds = 0, int MinOutcomes = 200, int MinSupport = 30, bool Programmed = false,
    int AgentRefreshSeconds = 60, int RolloutBakeSeconds = 600, int RolloutMinPaths = 8, int KeyOverlapSeconds = 600);

/// <summary>
/// Two hosts running real <c>fabric-agent</c> processes, joined by a veth underlay through a real <c>fabric-linkem</c>;
/// two VMs per host, each a namespace with a veth into its host's namespace:
/// <code>
///  vm1 ─┐                                      ┌─ vm3
///       host-a ──veth── [linkem] ──veth── host-b
///  vm2 ─┘  198.18.0.1                198.18.0.2  └─ vm4
/// </code>
/// vm1, vm2, vm3 are in virtual network 100 (10.100.0.1-3, fd00:100::1-3); vm4 is in network 200 (10.100.0.4), so it
/// shares an address range but must reach no one. Up to four more VMs on host-a in network 100 on request (vm5…vm8,
/// 10.100.0.5-8). All of it is deleted on dispose.
/// </summary>
public sealed class OverlayTopology : IDisposable
{
    private readonly TestNetwork _network = new();
    private readonly List<Process> _processes = [];
    private readonly string _workDir;

    /// <summary>The control plane's certificate authority for this topology (the silo's and each agent's certificates come from it).</summary>
    private readonly Fabric.Silo.Security.DevelopmentAuthority _authority = Fabric.Silo.Security.DevelopmentAuthority.Create("Fabric test authority");
    private readonly string _linkemControl;
    private readonly string _binDirectory = "";

    /// <param name="binDirectory">Where fabric-agent and fabric-linkem are.</param>
    /// <param name="stack">The stack both paths use.</param>
    /// <param name="withEmulator">False joins the hosts with one veth and no emulator (benchmarks of the agents alone).</param>
    /// <param name="controlPlane">With it, a silo runs too and the agents obey it (see <see cref="ControlPlaneSetup"/>).</param>
    /// <param name="stackProjects">Without a control plane: the plug-in projects both agents load (default std-ipv4, std-ipv6, swap-test).</param>
    /// <param name="settings">Per stack id, the configuration both agents give its instances on their path (e.g. secure's key).</param>
    /// <param name="moreVmsOnA">VMs added on host-a in vm1's virtual network beyond the four every topology has: vm5, vm6, … (at most 4).</param>
    /// <param name="pairs">VM pairs added beyond those (at most <see cref="MostPairs"/>), pair i in a virtual network of its
    /// own (1000 + i): pa{i} on host-a (10.101.i.1) and pb{i} on host-b (10.101.i.2), i from 1 — a path each way per pair,
    /// for benchmarks of many paths.</param>
    /// <param name="vmReceiveThreads">Both agents' <c>vmReceiveThreads</c> (null: their default; 0: a receive thread per VM port).</param>
    public OverlayTopology(string binDirectory, string stack, bool withEmulator = true, ControlPlaneSetup? controlPlane = null,
        IReadOnlyList<string>? stackProjects = null, Dictionary<string, Dictionary<string, string>>? settings = null, int moreVmsOnA = 0, int pairs = 0,
        int? vmReceiveThreads = null)
    {
        _vmReceiveThreads = vmReceiveThreads;
        _stackProjects = stackProjects ?? [StackPlugins.StdIPv4, StackPlugins.StdIPv6, StackPlugins.SwapTest];
        _settings = settings;
        try
        {
            ArgumentOutOfRangeException.ThrowIfNegative(moreVmsOnA);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(moreVmsOnA, 4);
            ArgumentOutOfRangeException.ThrowIfNegative(pairs);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(pairs, MostPairs);
            _workDir = Directory.CreateTempSubdirectory("fabric-overlay-").FullName;
            _binDirectory = binDirectory;
            var id = _network.Id;
            HostA = _network.AddNamespace("ha");
            HostB = _network.AddNamespace("hb");
            var middle = withEmulator ? _network.AddNamespace("m") : null;
            if (middle is not null)
            {
                _network.AddVeth($"{id}ua", HostA, $"{id}ma", middle);
                _network.AddVeth($"{id}ub", HostB, $"{id}mb", middle);
            }
            else
            {
                _network.AddVeth($"{id}ua", HostA, $"{id}ub", HostB);
            }
            _network.AddAddress(HostA, $"{id}ua", "198.18.0.1/24");
            _network.AddAddress(HostB, $"{id}ub", "198.18.0.2/24");
            _network.AddAddress(HostA, $"{id}ua", "fd00:fab::1/64");
            _network.AddAddress(HostB, $"{id}ub", "fd00:fab::2/64");
            UplinkA = $"{id}ua";
            UplinkB = $"{id}ub";
            Vms =
            [
                new TestVm("vm1", _network.AddNamespace("v1"), "host-a", 100, "02:fa:00:00:00:01", "10.100.0.1", "fd00:100::1", $"{id}h1", $"{id}e1"),
                new TestVm("vm2", _network.AddNamespace("v2"), "host-a", 100, "02:fa:00:00:00:02", "10.100.0.2", "fd00:100::2", $"{id}h2", $"{id}e2"),
                new TestVm("vm3", _network.AddNamespace("v3"), "host-b", 100, "02:fa:00:00:00:03", "10.100.0.3", "fd00:100::3", $"{id}h3", $"{id}e3"),
                new TestVm("vm4", _network.AddNamespace("v4"), "host-b", 200, "02:fa:00:00:00:04", "10.100.0.4", "fd00:100::4", $"{id}h4", $"{id}e4"),
                .. Enumerable.Range(5, moreVmsOnA).Select(n => new TestVm($"vm{n}", _network.AddNamespace($"v{n}"), "host-a", 100, $"02:fa:00:00:00:0{n}", $"10.100.0.{n}", $"fd00:100::{n}", $"{id}h{n}", $"{id}e{n}")),
                .. Enumerable.Range(1, pairs).SelectMany(i => new[]
                {
                    new TestVm($"pa{i}", _network.AddNamespace($"pa{i}"), "host-a", (uint)(1000 + i), $"02:fb:00:00:0a:{i:x2}", $"10.101.{i}.1", $"fd00:101:{i:x}::1", $"{id}p{i:x2}", $"{id}q{i:x2}"),
                    new TestVm($"pb{i}", _network.AddNamespace($"pb{i}"), "host-b", (uint)(1000 + i), $"02:fb:00:00:0b:{i:x2}", $"10.101.{i}.2", $"fd00:101:{i:x}::2", $"{id}r{i:x2}", $"{id}s{i:x2}"),
                }),
            ];
            foreach (var vm in Vms)
            {
                var inside = vm.Device;
                // A VM's NIC with its offloads on, as a virtio NIC has them: the agents' ports read virtio-net headers.
                _network.AddVeth(inside, vm.Namespace, vm.HostDevice, vm.Host == "host-a" ? HostA : HostB, offloads: true);
                TestNetwork.Exec(vm.Namespace, "ip", "link", "set", inside, "address", vm.Mac);
                _network.AddAddress(vm.Namespace, inside, vm.IPv4 + "/24");
                _network.AddAddress(vm.Namespace, inside, vm.IPv6 + "/64");
            }

            _linkemControl = Path.Combine(_workDir, "linkem.sock");
            if (middle is not null)
            {
                Start(middle, Path.Combine(binDirectory, "fabric-linkem"), "run", "--a", $"{id}ma", "--b", $"{id}mb", "--control", _linkemControl);
                Eventually.True(() => File.Exists(_linkemControl), TimeSpan.FromSeconds(20), "starting fabric-linkem", () => Describe());
            }
            _controlPlane = controlPlane;
            if (controlPlane is not null)
            {
                StartSilo(id, controlPlane);
            }
            (SocketA, var pidA) = StartAgent(binDirectory, "host-a", HostA, "198.18.0.1", "fd00:fab::1", "198.18.0.2", "fd00:fab::2", "host-b", stack);
            (SocketB, var pidB) = StartAgent(binDirectory, "host-b", HostB, "198.18.0.2", "fd00:fab::2", "198.18.0.1", "fd00:fab::1", "host-a", stack);
            AgentPids = (pidA, pidB);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The most VM pairs a topology adds (one byte of their MAC and address; interface names within 15 characters).</summary>
    public const int MostPairs = 200;

    private readonly ControlPlaneSetup? _controlPlane;
    private readonly IReadOnlyList<string> _stackProjects = [];
    private readonly Dictionary<string, Dictionary<string, string>>? _settings;
    private readonly int? _vmReceiveThreads;

    /// <summary>The two agents' overlay key: their probes and control messages are authenticated, as in production.</summary>
    private readonly string _overlayKey = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));

    /// <summary>The silo's namespace (with a control plane).</summary>
    public string SiloNamespace { get; private set; } = "";

    /// <summary>The silo's address on the management bridge; its gateway listens on port 30000.</summary>
    public const string SiloAddress = "198.19.0.254";

    /// <summary>The last lines the silo and the agents printed (with a control plane), for failure messages.</summary>
    public string Logs() => string.Join("\n", _logs);

    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _logs = new();

    private void Keep(string source, string line)
    {
        _logs.Enqueue($"[{source}] {line}");
        while (_logs.Count > 300)
        {
            _logs.TryDequeue(out _);
        }
    }

    private void StartSilo(string id, ControlPlaneSetup setup)
    {
        SiloNamespace = _network.AddNamespace("c");
        TestNetwork.Exec(SiloNamespace, "ip", "link", "add", $"{id}br", "type", "bridge");
        TestNetwork.Exec(SiloNamespace, "ip", "link", "set", $"{id}br", "up");
        _network.AddVeth($"{id}ca", HostA, $"{id}sa", SiloNamespace);
        _network.AddVeth($"{id}cb", HostB, $"{id}sb", SiloNamespace);
        TestNetwork.Exec(SiloNamespace, "ip", "link", "set", $"{id}sa", "master", $"{id}br");
        TestNetwork.Exec(SiloNamespace, "ip", "link", "set", $"{id}sb", "master", $"{id}br");
        _network.AddAddress(SiloNamespace, $"{id}br", SiloAddress + "/24");
        _network.AddAddress(HostA, $"{id}ca", "198.19.0.1/24");
        _network.AddAddress(HostB, $"{id}cb", "198.19.0.2/24");
        var (certificate, key, authority) = _authority.IssueFiles(Path.Combine(_workDir, "pki"), Fabric.Silo.Security.CallerRole.Silo, "silo");
        var config = new
        {
            // One silo for the test's lifetime: memory storage, said explicitly.
            ephemeral = true,
            advertisedAddress = SiloAddress,
            security = new { certificate, key, authority },
            selectorSustainMilliseconds = setup.SelectorSustainMilliseconds,
            repository = new { path = setup.RepositoryPath, trustRoot = setup.TrustRoot, stateDirectory = Path.Combine(_workDir, "silo-state"), refreshSeconds = 5 },
            learning = setup.LearningStore is null ? null : new { store = setup.LearningStore, trainEverySeconds = setup.TrainEverySeconds, minOutcomes = setup.MinOutcomes, minSupport = setup.MinSupport },
            rolloutBakeSeconds = setup.RolloutBakeSeconds,
            rolloutMinPaths = setup.RolloutMinPaths,
        };
        var path = Path.Combine(_workDir, "silo.json");
        File.WriteAllText(path, JsonSerializer.Serialize(config, new JsonSerializerOptions { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull }));
        var silo = Privileged.StartInNamespace(SiloNamespace, Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), line => Keep("silo", line), "--config", path);
        _processes.Add(silo);
        Eventually.True(() => silo.HasExited || SiloApi("/healthz").Contains("catalog", StringComparison.Ordinal) && !SiloApi("/healthz").Contains(" 0 stack", StringComparison.Ordinal),
            TimeSpan.FromSeconds(60), "starting fabric-silo with its catalog", Logs);
        if (silo.HasExited)
        {
            throw new InvalidOperationException($"fabric-silo exited {silo.ExitCode}: {Logs()}");
        }
    }

    /// <summary>GET on the silo's HTTP endpoint (127.0.0.1:8081 in its namespace); empty when it does not answer.</summary>
    public string SiloApi(string path)
    {
        try
        {
            return HttpGet(SiloNamespace, new Uri("http://127.0.0.1:8081" + path));
        }
        catch (Exception e) when (e is System.Net.Http.HttpRequestException or TaskCanceledException)
        {
            return "";
        }
    }

    /// <summary>An HTTP GET from inside a namespace (the socket is made there, so loopback is that namespace's).</summary>
    internal static string HttpGet(string ns, Uri uri)
    {
        using var handler = new System.Net.Http.SocketsHttpHandler
        {
            ConnectCallback = async (context, token) =>
            {
                var socket = Fabric.Hal.Linux.NetworkNamespace.Run(ns, () => new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp));
                await socket.ConnectAsync(context.DnsEndPoint, token).ConfigureAwait(false);
                return new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
            },
        };
        using var client = new System.Net.Http.HttpClient(handler) { Timeout = TimeSpan.FromSeconds(10) };
        return client.GetStringAsync(uri).GetAwaiter().GetResult();
    }

    public string HostA { get; } = "";
    public string HostB { get; } = "";
    public string UplinkA { get; } = "";
    public string UplinkB { get; } = "";
    public IReadOnlyList<TestVm> Vms { get; } = [];
    public string SocketA { get; } = "";
    public string SocketB { get; } = "";

    /// <summary>Process ids of the two agents (host-a, host-b), for CPU accounting.</summary>
    public (int A, int B) AgentPids { get; }

    /// <summary>The bystander's namespace (<see cref="AddBystander"/>), empty until it runs.</summary>
    public string HostC { get; private set; } = "";

    /// <summary>The bystander's API socket, empty until it runs.</summary>
    public string SocketC { get; private set; } = "";

    private int _pidC;

    /// <summary>A host's agent: its namespace, API socket and process id; throws for a host this topology has no agent of.</summary>
    private (string Namespace, string Socket, int Pid) Of(string host) => host switch
    {
        "host-a" => (HostA, SocketA, AgentPids.A),
        "host-b" => (HostB, SocketB, AgentPids.B),
        "host-c" when SocketC.Length > 0 => (HostC, SocketC, _pidC),
        _ => throw new ArgumentException($"no agent '{host}' in this topology", nameof(host)),
    };

    /// <summary>
    /// Starts a third agent, host-c, with no VM and no path: it registers with the silo and installs every signed stack as
    /// the others do, and shares no VM path with them — a host of the fleet that a rollout's canary must not be. Needs the
    /// control plane; joined to the silo's bridge at 198.19.0.3, which is its underlay address too.
    /// </summary>
    public void AddBystander()
    {
        if (_controlPlane is null || SocketC.Length > 0)
        {
            throw new InvalidOperationException("A bystander host needs the control plane, and there is one at most.");
        }
        var id = _network.Id;
        HostC = _network.AddNamespace("hc");
        _network.AddVeth($"{id}cc", HostC, $"{id}sc", SiloNamespace);
        TestNetwork.Exec(SiloNamespace, "ip", "link", "set", $"{id}sc", "master", $"{id}br");
        _network.AddAddress(HostC, $"{id}cc", "198.19.0.3/24");
        (SocketC, _pidC) = StartAgent(_binDirectory, "host-c", HostC, "198.19.0.3", null, null, null, null, "std-ipv4");
    }

    /// <summary>Runs `fabric-agent ctl` against a host's agent, as an operator would; returns its exit code and output.</summary>
    public (int Code, string Output) Ctl(string host, params string[] args)
    {
        var (code, stdout, stderr) = Privileged.TryRun(Path.Combine(_binDirectory, "fabric-agent"), ["ctl", Of(host).Socket, .. args]);
        return (code, stdout + stderr);
    }

    /// <summary>Fetches a host's Prometheus endpoint (127.0.0.1:9464 inside the host's namespace).</summary>
    public string Metrics(string host) => HttpGet(Of(host).Namespace, new Uri("http://127.0.0.1:9464/metrics"));

    /// <summary>Stops a host's agent with SIGTERM; returns its exit code, or null when it did not stop within 10 s.</summary>
    public int? StopAgent(string host)
    {
        var process = _processes.Single(p => p.Id == Of(host).Pid);
        Privileged.TryRun("kill", "-TERM", process.Id.ToString(CultureInfo.InvariantCulture));
        return process.WaitForExit(10_000) ? process.ExitCode : null;
    }

    /// <summary>Starts a process inside a namespace; it is stopped on dispose.</summary>
    public Process StartIn(string ns, string program, params string[] args) => Start(ns, program, args);

    public TestVm Vm(string name) => Vms.Single(v => v.Name == name);

    /// <summary>Sends a command to the emulator on the underlay.</summary>
    public string Emulator(string command)
    {
        var reply = ControlServer.Send(_linkemControl, command);
        return reply.StartsWith("ok", StringComparison.Ordinal) ? reply[3..] : throw new InvalidOperationException($"fabric-linkem: {reply}");
    }

    /// <summary>
    /// Datagrams the two agents' stacks sent on the underlay (from their status), leaving out the agents' own probes and
    /// control messages, which the emulator also carries.
    /// </summary>
    public long UnderlayDatagrams()
    {
        long total = 0;
        foreach (var host in new[] { "host-a", "host-b" })
        {
            var (code, output) = Ctl(host, "status");
            if (code != 0)
            {
                throw new InvalidOperationException($"status of {host}: {output}");
            }
            using var status = JsonDocument.Parse(output);
            foreach (var path in status.RootElement.GetProperty("paths").EnumerateArray())
            {
                total += path.GetProperty("sent").GetProperty("datagrams").GetInt64();
            }
        }
        return total;
    }

    /// <summary>The agent's status (its local API), parsed.</summary>
    public JsonElement Status(string host)
    {
        var reply = Fabric.Testing.AgentApi.Send(Of(host).Socket, """{"op":"status"}""");
        using var document = JsonDocument.Parse(reply);
        return document.RootElement.GetProperty("result").Clone();
    }

    /// <summary>
    /// The stack a host's agent carries a VM's traffic to a remote host on: the VM's binding (its id, or a port of it such
    /// as "vm2/0"), else the path's stack; null when the host has no path to the remote.
    /// </summary>
    public string? BoundStack(string host, string vm, string remote) => BoundStackIn(Status(host), vm, remote);

    /// <summary><see cref="BoundStack"/> read from an agent's status.</summary>
    internal static string? BoundStackIn(JsonElement status, string vm, string remote)
    {
        foreach (var path in status.GetProperty("paths").EnumerateArray().Where(p => p.GetProperty("host").GetString() == remote))
        {
            foreach (var binding in path.GetProperty("bindings").EnumerateArray()
                .Where(b => b.GetProperty("vm").GetString() is { } id && (id == vm || id.StartsWith(vm + "/", StringComparison.Ordinal))))
            {
                return binding.GetProperty("stack").GetString();
            }
            return path.GetProperty("stack").GetString();
        }
        return null;
    }

    /// <summary>Pings from one VM to an address; returns ping's exit code and output. <paramref name="extra"/> may override the 0.2 s interval.</summary>
    public (int Code, string Output) Ping(string fromVm, string address, int count = 3, params string[] extra)
    {
        string[] interval = extra.Contains("-i") ? [] : ["-i", "0.2"];
        var (code, stdout, stderr) = Privileged.TryRun("ip", ["netns", "exec", Vm(fromVm).Namespace, "ping", "-n", "-c", count.ToString(CultureInfo.InvariantCulture), "-W", "2", .. interval, .. extra, address]);
        return (code, stdout + stderr);
    }

    /// <summary>What the processes printed, for failure messages.</summary>
    public string Describe() => string.Join("\n", _processes.Select(p => $"[{p.StartInfo.ArgumentList.Skip(3).FirstOrDefault()}] exited={p.HasExited}"));

    /// <summary>Certificate, key and authority files for an operator's client of this topology's silo (what the dashboard holds).</summary>
    public (string Certificate, string Key, string Authority) OperatorCredential(string name) =>
        _authority.IssueFiles(Path.Combine(_workDir, "pki"), Fabric.Silo.Security.CallerRole.Operator, name);

    /// <summary>An agent's control-plane section: the silo's gateway and the host's own certificate.</summary>
    private object ControlPlaneOf(string hostId)
    {
        var (certificate, key, authority) = _authority.IssueFiles(Path.Combine(_workDir, "pki"), Fabric.Silo.Security.CallerRole.Agent, hostId);
        return new { gateways = new[] { SiloAddress + ":30000" }, certificate, key, authority, keyOverlapSeconds = _controlPlane?.KeyOverlapSeconds ?? 600 };
    }

    /// <summary>Starts one agent; <paramref name="peer"/> is the one remote host its configuration names (null: none, a bystander's).</summary>
    private (string Socket, int Pid) StartAgent(string bin, string hostId, string ns, string v4, string? v6, string? peerV4, string? peerV6, string? peer, string stack)
    {
        var socket = Path.Combine(_workDir, hostId + ".sock");
        var vms = Vms.Where(v => v.Host == hostId).Select(v => new { id = v.Name, device = v.HostDevice, vni = v.Vni, mac = v.Mac, ipv4 = new[] { v.IPv4 }, ipv6 = new[] { v.IPv6 } });
        var routes = Vms.Where(v => v.Host != hostId && peer is not null).Select(v => new { vni = v.Vni, mac = v.Mac, host = peer, ipv4 = new[] { v.IPv4 }, ipv6 = new[] { v.IPv6 } });
        var state = Path.Combine(_workDir, hostId + "-state");
        object config = _controlPlane is { Programmed: true } programmed
            ? new
            {
                hostId,
                underlay = new { ipv4 = v4, ipv6 = v6 },
                stacks = Array.Empty<string>(),
                repository = new { path = programmed.RepositoryPath, trustRoot = programmed.TrustRoot, stateDirectory = state, refreshSeconds = programmed.AgentRefreshSeconds },
                stateDirectory = state,
                controlPlane = ControlPlaneOf(hostId),
                apiSocket = socket,
                metricsListen = "127.0.0.1:9464",
                vmReceiveThreads = _vmReceiveThreads,
                vms,
            }
            : _controlPlane is { } cp
            ? new
            {
                hostId,
                underlay = new { ipv4 = v4, ipv6 = v6 },
                // Every stack from the signed repository, as in production.
                stacks = Array.Empty<string>(),
                repository = new { path = cp.RepositoryPath, trustRoot = cp.TrustRoot, stateDirectory = state, refreshSeconds = cp.AgentRefreshSeconds },
                stateDirectory = state,
                controlPlane = ControlPlaneOf(hostId),
                apiSocket = socket,
                metricsListen = "127.0.0.1:9464",
                vmReceiveThreads = _vmReceiveThreads,
                remoteHosts = peer is null ? [] : new[] { new { id = peer, ipv4 = peerV4, ipv6 = peerV6, stack, settings = _settings, overlayKey = _overlayKey } },
                vms,
                routes,
            }
            : new
            {
                hostId,
                underlay = new { ipv4 = v4, ipv6 = v6 },
                stacks = _stackProjects.Select(StackPlugins.PathOf).ToArray(),
                apiSocket = socket,
                metricsListen = "127.0.0.1:9464",
                vmReceiveThreads = _vmReceiveThreads,
                remoteHosts = new[] { new { id = peer, ipv4 = peerV4, ipv6 = peerV6, stack, settings = _settings, overlayKey = _overlayKey } },
                vms,
                routes,
            };
        var path = Path.Combine(_workDir, hostId + ".json");
        File.WriteAllText(path, JsonSerializer.Serialize(config));
        var process = Privileged.StartInNamespace(ns, Path.Combine(bin, "fabric-agent"), line => Keep(hostId, line), "run", "--config", path);
        _processes.Add(process);
        Eventually.True(() => process.HasExited || File.Exists(socket), TimeSpan.FromSeconds(30), $"starting fabric-agent {hostId}", () => $"exited={process.HasExited}");
        if (process.HasExited)
        {
            throw new InvalidOperationException($"fabric-agent {hostId} exited {process.ExitCode}");
        }
        return (socket, process.Id);
    }

    private Process Start(string ns, string program, params string[] args)
    {
        var process = Privileged.StartInNamespace(ns, program, args);
        _processes.Add(process);
        return process;
    }

    public void Dispose()
    {
        foreach (var process in _processes)
        {
            if (!process.HasExited)
            {
                Privileged.TryRun("kill", "-TERM", process.Id.ToString(CultureInfo.InvariantCulture));
                if (!process.WaitForExit(5000))
                {
                    process.Kill(entireProcessTree: true);
                }
            }
            process.Dispose();
        }
        _network.Dispose();
        _authority.Dispose();
        if (_workDir is not null && Directory.Exists(_workDir))
        {
            Directory.Delete(_workDir, recursive: true);
        }
    }
}

/// <summary>Talks to an agent's local API socket.</summary>
public static class AgentApi
{
    public static string Send(string socketPath, string requestJson) => Fabric.Hal.Linux.UnixLineServer.Send(socketPath, requestJson) ?? "";
}
