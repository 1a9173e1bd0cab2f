using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Fabric.Hal.Linux;
using Fabric.Silo.Security;

namespace Fabric.Testing;

/// <summary>
/// A fleet as the control plane issue's done-when describes it: three real <c>fabric-silo</c> processes clustered on a real
/// redis-server (membership and grain state), with the control channel's TLS and per-call identities; four real
/// <c>fabric-agent</c> processes whose configurations name no remote host, route or key, each in its own namespace; VMs
/// as namespaces with a veth into their host's. One bridge joins the hosts and the silos (underlay and management):
/// <code>
///   silos 198.19.0.254:30000-30002 (+ redis on the silos' loopback)
///        │ bridge
///   host-a .1 ── vm1 (network 100, confidential)      host-b .2 ── vm3 (network 100)
///   host-c .3 ── vm2 (network 200)                    host-d .4 ── vm4 (network 200)
/// </code>
/// Every VM has an address in 10.100.0.0/24 (vm N at .N), so the two networks share a range and must still reach nothing
/// of each other. vm1 is registered through host-a's hook API by the test (<see cref="Register"/>), the others come from
/// their hosts' configurations. All of it is deleted on dispose.
/// </summary>
public sealed class FleetTopology : IDisposable
{
    public const string SiloAddress = "198.19.0.254";
    public const int Silos = 3;
    private const int RedisPort = 6379;

    private readonly TestNetwork _network = new();
    private readonly List<Process> _processes = [];
    private readonly Process?[] _silos = new Process?[Silos];
    private readonly DevelopmentAuthority _authority = DevelopmentAuthority.Create("Fabric fleet test authority");
    private readonly string _workDir = Directory.CreateTempSubdirectory("fabric-fleet-").FullName;
    private readonly string _binDirectory;
    private readonly string _repository;
    private readonly string _trustRoot;
    private readonly string _cluster = "f" + Guid.NewGuid().ToString("N")[..10];
    private readonly Dictionary<string, (string Namespace, string Socket, Process Process)> _agents = [];
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _logs = new();

    /// <summary>Why this machine cannot run it (null: it can): no redis-server.</summary>
    public static string? Unavailable =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, "redis-server")))
            ? null : "redis-server is not installed (./fabric test installs it as root)";

    /// <param name="binDirectory">Where fabric-agent is.</param>
    /// <param name="repositoryPath">The signed stack repository the silos' catalog and the agents read.</param>
    /// <param name="trustRoot">Its pinned root.json.</param>
    public FleetTopology(string binDirectory, string repositoryPath, string trustRoot)
    {
        (_binDirectory, _repository, _trustRoot) = (binDirectory, repositoryPath, trustRoot);
        try
        {
            var id = _network.Id;
            SiloNamespace = _network.AddNamespace("c");
            TestNetwork.Exec(SiloNamespace, "ip", "link", "add", $"{id}br", "type", "bridge");
            TestNetwork.Exec(SiloNamespace, "ip", "link", "set", $"{id}br", "up");
            _network.AddAddress(SiloNamespace, $"{id}br", SiloAddress + "/24");
            Vms =
            [
                new TestVm("vm1", _network.AddNamespace("v1"), "host-a", 100, "02:fb:00:00:00:01", "10.100.0.1", "fd00:100::1", $"{id}h1", $"{id}e1"),
                new TestVm("vm3", _network.AddNamespace("v3"), "host-b", 100, "02:fb:00:00:00:03", "10.100.0.3", "fd00:100::3", $"{id}h3", $"{id}e3"),
                new TestVm("vm2", _network.AddNamespace("v2"), "host-c", 200, "02:fb:00:00:00:02", "10.100.0.2", "fd00:100::2", $"{id}h2", $"{id}e2"),
                new TestVm("vm4", _network.AddNamespace("v4"), "host-d", 200, "02:fb:00:00:00:04", "10.100.0.4", "fd00:100::4", $"{id}h4", $"{id}e4"),
            ];
            var hosts = new[] { "host-a", "host-b", "host-c", "host-d" };
            var namespaces = new Dictionary<string, string>();
            for (var i = 0; i < hosts.Length; i++)
            {
                var ns = _network.AddNamespace("h" + hosts[i][^1]);
                namespaces[hosts[i]] = ns;
                _network.AddVeth($"{id}u{hosts[i][^1]}", ns, $"{id}s{hosts[i][^1]}", SiloNamespace);
                TestNetwork.Exec(SiloNamespace, "ip", "link", "set", $"{id}s{hosts[i][^1]}", "master", $"{id}br");
                _network.AddAddress(ns, $"{id}u{hosts[i][^1]}", $"198.19.0.{i + 1}/24");
            }
            foreach (var vm in Vms)
            {
                // A VM's NIC with its offloads on, as a virtio NIC has them: the agents' ports read virtio-net headers.
                _network.AddVeth(vm.Device, vm.Namespace, vm.HostDevice, namespaces[vm.Host], offloads: true);
                TestNetwork.Exec(vm.Namespace, "ip", "link", "set", vm.Device, "address", vm.Mac);
                _network.AddAddress(vm.Namespace, vm.Device, vm.IPv4 + "/24");
            }

            StartRedis();
            for (var i = 0; i < Silos; i++)
            {
                StartSilo(i);
            }
            for (var i = 0; i < Silos; i++)
            {
                var silo = i;
                Eventually.True(() => _silos[silo]!.HasExited || SiloApi(silo, "/readyz").Length > 0, TimeSpan.FromSeconds(90), $"silo {silo} ready", Logs);
                if (_silos[silo]!.HasExited)
                {
                    throw new InvalidOperationException($"fabric-silo {silo} exited {_silos[silo]!.ExitCode}: {Logs()}");
                }
            }
            Eventually.True(() => SiloApi(0, "/healthz").Contains("catalog", StringComparison.Ordinal) && !SiloApi(0, "/healthz").Contains(" 0 stack", StringComparison.Ordinal),
                TimeSpan.FromSeconds(60), "the cluster's catalog read from the repository", Logs);
            for (var i = 0; i < hosts.Length; i++)
            {
                StartAgent(hosts[i], namespaces[hosts[i]], $"198.19.0.{i + 1}");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string SiloNamespace { get; }

    public IReadOnlyList<TestVm> Vms { get; }

    public TestVm Vm(string name) => Vms.Single(v => v.Name == name);

    /// <summary>A host's namespace.</summary>
    public string HostNamespace(string host) => _agents[host].Namespace;

    /// <summary>The last lines the silos and the agents printed, for failure messages.</summary>
    public string Logs() => string.Join("\n", _logs);

    private void Keep(string source, string line)
    {
        _logs.Enqueue($"[{source}] {line}");
        while (_logs.Count > 400)
        {
            _logs.TryDequeue(out _);
        }
    }

    private void StartRedis()
    {
        var redis = Privileged.StartInNamespace(SiloNamespace, "redis-server", line => Keep("redis", line),
            "--bind", "127.0.0.1", "--port", RedisPort.ToString(CultureInfo.InvariantCulture), "--save", "", "--appendonly", "no", "--daemonize", "no");
        _processes.Add(redis);
        Eventually.True(() => redis.HasExited || Listening(SiloNamespace, RedisPort), TimeSpan.FromSeconds(20), "redis-server listening", Logs);
        if (redis.HasExited)
        {
            throw new InvalidOperationException($"redis-server exited {redis.ExitCode}: {Logs()}");
        }
    }

    private static bool Listening(string ns, int port)
    {
        using var socket = NetworkNamespace.Run(ns, () => new Socket(SocketType.Stream, ProtocolType.Tcp));
        try
        {
            socket.Connect(new IPEndPoint(IPAddress.Loopback, port));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private void StartSilo(int i)
    {
        var (certificate, key, authority) = _authority.IssueFiles(Path.Combine(_workDir, "pki"), CallerRole.Silo, $"silo-{i}");
        var config = new
        {
            clusterId = _cluster,
            clustering = "redis",
            storage = "redis",
            advertisedAddress = SiloAddress,
            siloPort = 11111 + i,
            gatewayPort = 30000 + i,
            healthListen = $"127.0.0.1:{8081 + i}",
            shutdownSeconds = 10,
            security = new { certificate, key, authority },
            selectorSustainMilliseconds = 1000,
            repository = new { path = _repository, trustRoot = _trustRoot, stateDirectory = Path.Combine(_workDir, $"silo-{i}-state"), refreshSeconds = 5 },
            learning = new { store = Path.Combine(_workDir, "learning") },
        };
        var path = Path.Combine(_workDir, $"silo-{i}.json");
        File.WriteAllText(path, JsonSerializer.Serialize(config));
        var silo = Privileged.StartInNamespace(SiloNamespace, "env", line => Keep($"silo-{i}", line),
            $"FABRIC_REDIS_CONNECTION_STRING=127.0.0.1:{RedisPort}", Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), "--config", path);
        _processes.Add(silo);
        _silos[i] = silo;
    }

    /// <summary>GET on silo <paramref name="silo"/>'s HTTP endpoint (in the silos' namespace); empty when it does not answer.</summary>
    public string SiloApi(int silo, string path)
    {
        try
        {
            return OverlayTopology.HttpGet(SiloNamespace, new Uri($"http://127.0.0.1:{8081 + silo}{path}"));
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return "";
        }
    }

    /// <summary>GET on the first silo that answers (a silo may be down).</summary>
    public string SiloApi(string path) =>
        Enumerable.Range(0, Silos).Where(i => _silos[i] is { HasExited: false }).Select(i => SiloApi(i, path)).FirstOrDefault(r => r.Length > 0) ?? "";

    private void StartAgent(string hostId, string ns, string underlay)
    {
        var socket = Path.Combine(_workDir, hostId + ".sock");
        var state = Path.Combine(_workDir, hostId + "-state");
        var (certificate, key, authority) = _authority.IssueFiles(Path.Combine(_workDir, "pki"), CallerRole.Agent, hostId);
        var config = new
        {
            hostId,
            underlay = new { ipv4 = underlay },
            stacks = Array.Empty<string>(),
            repository = new { path = _repository, trustRoot = _trustRoot, stateDirectory = state, refreshSeconds = 60 },
            stateDirectory = state,
            controlPlane = new
            {
                gateways = Enumerable.Range(0, Silos).Select(i => $"{SiloAddress}:{30000 + i}").ToArray(),
                clusterId = _cluster,
                certificate, key, authority,
            },
            apiSocket = socket,
            metricsListen = "127.0.0.1:9464",
            // vm1 is not in its host's configuration: it comes and goes through the hook API (Register, Deregister).
            vms = Vms.Where(v => v.Host == hostId && v.Name != "vm1").Select(v => new { id = v.Name, device = v.HostDevice, vni = v.Vni, mac = v.Mac, ipv4 = new[] { v.IPv4 } }),
        };
        var path = Path.Combine(_workDir, hostId + ".json");
        File.WriteAllText(path, JsonSerializer.Serialize(config));
        var process = Privileged.StartInNamespace(ns, Path.Combine(_binDirectory, "fabric-agent"), line => Keep(hostId, line), "run", "--config", path);
        _processes.Add(process);
        _agents[hostId] = (ns, socket, process);
        Eventually.True(() => process.HasExited || File.Exists(socket), TimeSpan.FromSeconds(30), $"starting fabric-agent {hostId}", Logs);
        if (process.HasExited)
        {
            throw new InvalidOperationException($"fabric-agent {hostId} exited {process.ExitCode}: {Logs()}");
        }
    }

    /// <summary>
    /// Registers a VM on a host as its hypervisor hook does (its port need not exist yet: the agent attaches it when it
    /// appears); returns the agent's reply.
    /// </summary>
    public string Register(string host, string vm, object policy)
    {
        var v = Vm(vm);
        return Api(host, new
        {
            op = "register-vm",
            registration = new
            {
                id = v.Name, name = v.Name, policySource = "metadata", origin = "libvirt",
                interfaces = new[] { new { type = "ethernet", mac = v.Mac, device = v.HostDevice, vni = v.Vni, ipv4 = new[] { v.IPv4 } } },
                policy,
            },
        });
    }

    /// <summary>Deregisters a VM from a host as its hook does when the VM stops there; returns the agent's reply.</summary>
    public string Deregister(string host, string vm) => Api(host, new { op = "deregister-vm", id = vm });

    /// <summary>Sends one request to a host's agent API; returns the reply.</summary>
    public string Api(string host, object request) => AgentApi.Send(_agents[host].Socket, JsonSerializer.Serialize(request));

    /// <summary>The agent's status (its local API), parsed.</summary>
    public JsonElement Status(string host)
    {
        using var document = JsonDocument.Parse(Api(host, new { op = "status" }));
        return document.RootElement.GetProperty("result").Clone();
    }

    /// <summary>Whether a host's agent is connected to the control plane.</summary>
    public bool Connected(string host) =>
        Status(host).TryGetProperty("controlPlane", out var link) && link.ValueKind == JsonValueKind.Object && link.GetProperty("connected").GetBoolean();

    /// <summary>The remote hosts a host keeps a path to.</summary>
    public IReadOnlyList<string> Paths(string host) =>
        Status(host).GetProperty("paths").EnumerateArray().Select(p => p.GetProperty("host").GetString()!).Order(StringComparer.Ordinal).ToList();

    /// <summary>The host a host's agent forwards frames for <paramref name="mac"/> to (null: no route).</summary>
    public string? RouteOf(string host, string mac) =>
        Status(host).GetProperty("routes").EnumerateArray().Where(r => string.Equals(r.GetProperty("mac").GetString(), mac, StringComparison.OrdinalIgnoreCase))
            .Select(r => r.GetProperty("host").GetString()).FirstOrDefault();

    /// <summary>The stack a host carries a VM's traffic to a remote host on (its binding, else the path's); null: no path.</summary>
    public string? BoundStack(string host, string vm, string remote) => OverlayTopology.BoundStackIn(Status(host), vm, remote);

    /// <summary>Pings from one VM to an address (0.2 s apart, 2 s to answer); returns ping's exit code and output.</summary>
    public (int Code, string Output) Ping(string fromVm, string address, int count = 2)
    {
        var (code, stdout, stderr) = Privileged.TryRun("ip", "netns", "exec", Vm(fromVm).Namespace, "ping", "-n", "-c", count.ToString(CultureInfo.InvariantCulture),
            "-W", "2", "-i", "0.2", address);
        return (code, stdout + stderr);
    }

    /// <summary>
    /// Moves a VM's port (the host end of its veth) from its host's namespace into <paramref name="to"/>'s, as a VM's
    /// NIC appears on the host it migrates to; the VM's own namespace, addresses and connections stay as they are.
    /// </summary>
    public void MovePort(string vm, string from, string to)
    {
        var device = Vm(vm).HostDevice;
        TestNetwork.Exec(HostNamespace(from), "ip", "link", "set", device, "netns", HostNamespace(to));
        TestNetwork.Exec(HostNamespace(to), "ip", "link", "set", device, "up");
    }

    private const int DashboardPort = 5090;
    private HttpClient? _dashboard;

    /// <summary>
    /// Starts <c>fabric-dashboard</c> as a client of the cluster (all three gateways, an operator's certificate, a users
    /// file with one admin) in the silos' namespace, and signs in to it over HTTP as a browser's form does (antiforgery
    /// token and cookie). Nothing of the embedded default runs: no silo, simulated fleet or repository of its own.
    /// </summary>
    public void StartDashboard()
    {
        var users = Path.Combine(_workDir, "dashboard-users");
        var set = Processes.Run(Processes.Built("dashboard/Fabric.Dashboard", "fabric-dashboard"), ["users", "set", "--users", users, "ops", "admin"], stdin: "fleet-test-password\n");
        if (set.Code != 0)
        {
            throw new InvalidOperationException($"fabric-dashboard users set: {set.Stderr}");
        }
        var (certificate, key, authority) = _authority.IssueFiles(Path.Combine(_workDir, "pki"), CallerRole.Operator, "dashboard");
        string[] gateways = [.. Enumerable.Range(0, Silos).SelectMany(i => new[] { "--gateway", $"{SiloAddress}:{30000 + i}" })];
        var dashboard = Privileged.StartInNamespace(SiloNamespace, Processes.Built("dashboard/Fabric.Dashboard", "fabric-dashboard"), line => Keep("dashboard", line),
            [.. gateways, "--cluster-id", _cluster, "--users", users, "--certificate", certificate, "--key", key, "--authority", authority,
                "--listen", $"127.0.0.1:{DashboardPort}", "--data", Path.Combine(_workDir, "dashboard-data")]);
        _processes.Add(dashboard);
        Eventually.True(() => dashboard.HasExited || Listening(SiloNamespace, DashboardPort), TimeSpan.FromSeconds(60), "fabric-dashboard listening", Logs);
        if (dashboard.HasExited)
        {
            throw new InvalidOperationException($"fabric-dashboard exited {dashboard.ExitCode}: {Logs()}");
        }
        _dashboard = new HttpClient(new SocketsHttpHandler
        {
            UseCookies = true,
            CookieContainer = new System.Net.CookieContainer(),
            ConnectCallback = async (context, token) =>
            {
                var socket = NetworkNamespace.Run(SiloNamespace, () => new Socket(SocketType.Stream, ProtocolType.Tcp));
                await socket.ConnectAsync(context.DnsEndPoint, token).ConfigureAwait(false);
                return new NetworkStream(socket, ownsSocket: true);
            },
        })
        { BaseAddress = new Uri($"http://127.0.0.1:{DashboardPort}/"), Timeout = TimeSpan.FromSeconds(20) };
        var login = _dashboard.GetStringAsync("login").GetAwaiter().GetResult();
        var token = System.Text.RegularExpressions.Regex.Match(login, "name=\"__RequestVerificationToken\"[^>]*value=\"([^\"]+)\"");
        if (!token.Success)
        {
            throw new InvalidOperationException($"the dashboard's sign-in page has no antiforgery token: {login[..Math.Min(login.Length, 2000)]}");
        }
        using var form = new FormUrlEncodedContent(new Dictionary<string, string>
        {
            ["__RequestVerificationToken"] = token.Groups[1].Value, ["returnUrl"] = "/", ["username"] = "ops", ["password"] = "fleet-test-password",
        });
        using var signedIn = _dashboard.PostAsync("account/login", form).GetAwaiter().GetResult();
        if (!signedIn.IsSuccessStatusCode || signedIn.RequestMessage?.RequestUri?.AbsolutePath == "/login")
        {
            throw new InvalidOperationException($"signing in to the dashboard failed: {(int)signedIn.StatusCode} at {signedIn.RequestMessage?.RequestUri}");
        }
    }

    /// <summary>
    /// The hosts the signed-in dashboard's fleet page counts, as the server renders it (it reads the cluster before it
    /// answers); null when the page does not say (the cluster did not answer it).
    /// </summary>
    public int? DashboardHostCount()
    {
        var page = _dashboard?.GetStringAsync("").GetAwaiter().GetResult() ?? throw new InvalidOperationException("StartDashboard first");
        var count = System.Text.RegularExpressions.Regex.Match(page, "data-testid=\"host-count\"[^>]*>(\\d+)<");
        return count.Success ? int.Parse(count.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }

    /// <summary>kill -9 of silo <paramref name="silo"/>: no goodbye to the cluster.</summary>
    public void KillSilo(int silo)
    {
        _silos[silo]!.Kill();
        _silos[silo]!.WaitForExit(10_000);
        // In the log tail a failure shows, so that what followed can be read against it.
        Keep("test", $"{DateTime.UtcNow:HH:mm:ss.fff} silo-{silo} killed (-9)");
    }

    public void Dispose()
    {
        _dashboard?.Dispose();
        foreach (var process in Enumerable.Reverse(_processes))
        {
            if (!process.HasExited)
            {
                Privileged.TryRun("kill", "-TERM", process.Id.ToString(CultureInfo.InvariantCulture));
                if (!process.WaitForExit(10_000))
                {
                    process.Kill(entireProcessTree: true);
                }
            }
            process.Dispose();
        }
        _network.Dispose();
        _authority.Dispose();
        if (Directory.Exists(_workDir))
        {
            Directory.Delete(_workDir, recursive: true);
        }
    }
}
