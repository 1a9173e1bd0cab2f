using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Fabric.Agent;
using Fabric.Agent.Api;
using Fabric.Agent.ControlPlane;
using Fabric.Hal;
using Fabric.Registration;
using Fabric.Silo.Security;
using Fabric.Wire;
using Microsoft.Extensions.Logging;

namespace Fabric.Embedded;

/// <summary>
/// How big the simulated fleet is and how fast its links change. With <paramref name="Network"/> (root only) the hosts
/// are <c>fabric-agent</c> processes (<paramref name="AgentProgram"/>) in that network's namespaces and the VMs are
/// namespaces with veths; without it, agents in this process with in-memory VM ports.
/// </summary>
public sealed record FleetOptions(int Hosts = 4, int PhaseSeconds = 45, string? TestData = null, int ReportMilliseconds = 1000,
    FleetNetwork? Network = null, string? AgentProgram = null)
{
    public IEnumerable<string> Validate()
    {
        if (Hosts is < 2 or > 16)
        {
            yield return $"hosts: {Hosts} is outside 2..16";
        }
        if (PhaseSeconds is < 5 or > 3600)
        {
            yield return $"phase seconds: {PhaseSeconds} is outside 5..3600";
        }
        if (Network is not null && (AgentProgram is null || !File.Exists(AgentProgram)))
        {
            yield return $"agent program: '{AgentProgram}' does not exist (build the solution: dotnet build Fabric.sln -c Release)";
        }
    }
}

/// <summary>
/// A simulated VM: what it is for (its role gives its policy's workload and its traffic), where it runs, and how much
/// it sends to the VM of the same role on the next host.
/// </summary>
public sealed record SimulatedVm(string Id, string Name, string HostId, string Role, MacAddress Mac, string IPv4, VmPolicy Policy, int FramesPerSecond, int PayloadBytes)
{
    /// <summary>The host-side device the agent attaches to (a channel port's name, or the veth end in the host's namespace).</summary>
    public string Device => "tap-" + Id;
}

/// <summary>One simulated host and where it runs (in this process, or a fabric-agent process in a namespace).</summary>
public sealed record SimulatedHost(string HostId, string Where);

/// <summary>
/// The embedded default's fleet: N hosts, each a real agent whose VMs are registered through the hook API with a
/// policy, connected pairwise by <see cref="EmulatedLink"/>s that follow real traces and change every few tens of
/// seconds, each agent an Orleans client of the silo. Traffic generators make every VM send to its counterpart on the
/// next host, so paths carry traffic, the silo measures them and chooses, and the agents swap stacks under load.
/// Without root the agents run in this process on loopback UDP with in-memory VM ports; with a
/// <see cref="FleetNetwork"/> they are <c>fabric-agent</c> processes in host namespaces, the VMs namespaces with veths,
/// and the traffic real UDP from the VMs' sockets.
/// </summary>
public sealed class SimulatedFleet : IAsyncDisposable
{
    public const uint Vni = 100;

    /// <summary>How often the simulated VMs send what their rate allows.</summary>
    public static readonly TimeSpan TrafficTick = TimeSpan.FromMilliseconds(20);

    /// <summary>The UDP port the VMs' traffic goes to.</summary>
    public const int TrafficPort = 5004;

    /// <summary>Roles of the VMs on each host: name, workload, frames per second, payload bytes (a web tier, a voice call, a backup stream).</summary>
    private static readonly (string Role, string Workload, int Fps, int Bytes)[] Roles =
        [("web", "general", 50, 800), ("voice", "latency", 50, 160), ("backup", "bulk", 200, 1200)];

    private readonly ConcurrentDictionary<string, VmEnd> _vmEnds = new(StringComparer.Ordinal);
    private readonly List<EmulatedLink> _links = [];
    private readonly List<SimulatedHost> _hosts = [];
    private readonly List<HostRuntime> _runtimes = [];
    private readonly List<SimulatedVm> _vms = [];
    private LinkPump? _pump;
    private Thread? _traffic;
    private volatile bool _stop;

    private SimulatedFleet()
    {
    }

    public IReadOnlyList<SimulatedHost> Hosts => _hosts;

    public IReadOnlyList<SimulatedVm> Vms => _vms;

    public IReadOnlyList<EmulatedLink> Links => _links;

    /// <summary>
    /// Starts agents, links, registrations and traffic; throws naming what failed, or <see cref="OperationCanceledException"/>
    /// when <paramref name="cancellation"/> stops it first (in both cases having stopped what it started).
    /// </summary>
    public static SimulatedFleet Start(FleetOptions options, DevelopmentRepository repository, string gateway, string stateDirectory, ILoggerFactory loggers,
        DevelopmentAuthority? authority = null, CancellationToken cancellation = default)
    {
        var problems = options.Validate().ToList();
        if (problems.Count > 0)
        {
            throw new ArgumentException("fleet: " + string.Join("; ", problems));
        }
        var fleet = new SimulatedFleet();
        try
        {
            fleet.Build(options, repository, gateway, stateDirectory, loggers, authority, cancellation);
            return fleet;
        }
        catch
        {
            fleet.DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
    }

    private void Build(FleetOptions options, DevelopmentRepository repository, string gateway, string stateDirectory, ILoggerFactory loggers,
        DevelopmentAuthority? authority, CancellationToken cancellation)
    {
        var ids = Enumerable.Range(1, options.Hosts).Select(i => $"host-{i}").ToList();
        var controls = new List<ControlPlaneConfig>();
        for (var h = 0; h < ids.Count; h++)
        {
            cancellation.ThrowIfCancellationRequested();
            var state = Path.Combine(stateDirectory, ids[h]);
            var control = new ControlPlaneConfig([gateway], ReportMilliseconds: options.ReportMilliseconds);
            if (authority is not null)
            {
                // Each host's own certificate (OU=agent, CN=its id), as an operator's authority would issue it.
                var (certificate, key, authorityFile) = authority.IssueFiles(Path.Combine(state, "credentials"), CallerRole.Agent, ids[h]);
                control = control with { Certificate = certificate, Key = key, Authority = authorityFile };
            }
            controls.Add(control);
            var repositoryConfig = new RepositoryConfig(repository.Path, repository.TrustRoot, Path.Combine(state, "stacks"));
            HostRuntime runtime = options.Network is { } network
                ? ProcessHost.Start(network, h + 1, new AgentConfig(ids[h], new UnderlayConfig(FleetNetwork.Underlay(h + 1).ToString(), null), [], Path.Combine(state, "api.sock"),
                    DrainMilliseconds: 500, Repository: repositoryConfig, StateDirectory: state, ControlPlane: control), options.AgentProgram!, cancellation)
                : InProcessHost.Start(new AgentConfig(ids[h], new UnderlayConfig("127.0.0.1", null, 0), [], Path.Combine(state, "api.sock"), DrainMilliseconds: 500,
                    Repository: repositoryConfig, StateDirectory: state, ControlPlane: control), loggers, Open);
            _runtimes.Add(runtime);
            _hosts.Add(new SimulatedHost(ids[h], runtime.Where));
        }

        // A link per pair of hosts, each starting at another phase; the same random keys (secure's, the overlay's) at both ends.
        var phases = LinkScenarios.FromTestData(options.TestData, TimeSpan.FromSeconds(options.PhaseSeconds));
        var pairs = _runtimes.Count * (_runtimes.Count - 1) / 2;
        for (var i = 0; i < _runtimes.Count; i++)
        {
            for (var j = i + 1; j < _runtimes.Count; j++)
            {
                var (a, b) = (_runtimes[i], _runtimes[j]);
                var link = new EmulatedLink(ids[i], new IPEndPoint(a.LinkSide, 0), a.Underlay, ids[j], new IPEndPoint(b.LinkSide, 0), b.Underlay, phases, _links.Count * 3,
                    firstPhaseShare: (double)(_links.Count + 1) / pairs, seed: 17 * (_links.Count + 1));
                _links.Add(link);
                var settings = new Dictionary<string, Dictionary<string, string>>
                {
                    ["secure"] = new() { ["key"] = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)) },
                };
                var overlayKey = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
                Ok(a.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig(ids[j], link.AddressForA.Address.ToString(), null, "std-ipv4", link.AddressForA.Port, settings, overlayKey))), ids[i]);
                Ok(b.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig(ids[i], link.AddressForB.Address.ToString(), null, "std-ipv4", link.AddressForB.Port, settings, overlayKey))), ids[j]);
            }
        }
        _pump = new LinkPump(_links);

        // VMs, registered as the libvirt hook would (with the policy their metadata carries), and routes to them everywhere else.
        for (var h = 0; h < _runtimes.Count; h++)
        {
            for (var r = 0; r < Roles.Length; r++)
            {
                cancellation.ThrowIfCancellationRequested();
                var (role, workload, fps, bytes) = Roles[r];
                var vm = new SimulatedVm($"{role}-{h + 1}", $"{role} on {ids[h]}", ids[h], role, new MacAddress(0x02_00_00_00_00_00UL | ((ulong)(uint)(h + 1) << 8) | (uint)(r + 1)),
                    $"10.100.{h + 1}.{r + 1}", new VmPolicy(workload, Vni: Vni), fps, bytes);
                _vms.Add(vm);
                if (options.Network is { } network)
                {
                    var ns = network.AddVm(h + 1, vm.Id, vm.Mac.ToString(), vm.IPv4, vm.Device);
                    _vmEnds[vm.Device] = SocketVmEnd.Open(ns, vm);
                }
                Ok(_runtimes[h].Handle(new ApiRequest("register-vm", Registration: new VmRegistration(vm.Id, vm.Name,
                    [new VmInterface("ethernet", vm.Mac.ToString(), vm.Device, Vni: Vni, IPv4: [vm.IPv4])], vm.Policy, "metadata", "libvirt"))), ids[h]);
            }
        }
        foreach (var vm in _vms)
        {
            foreach (var host in _runtimes.Where(a => a.Id != vm.HostId))
            {
                Ok(host.Handle(new ApiRequest("set-route", Route: new RouteConfig(Vni, vm.Mac.ToString(), vm.HostId, [vm.IPv4]))), host.Id);
            }
        }
        cancellation.ThrowIfCancellationRequested();
        for (var h = 0; h < _runtimes.Count; h++)
        {
            _runtimes[h].Connect(controls[h], loggers);
        }
        _traffic = new Thread(() => RunTraffic(options.Hosts)) { IsBackground = true, Name = "emb-traffic" };
        _traffic.Start();
    }

    private static void Ok(ApiResponse response, string host)
    {
        if (!response.Ok)
        {
            throw new InvalidOperationException($"{host}: {response.Error}");
        }
    }

    private ChannelPort Open(string device)
    {
        var (agentEnd, vmEnd) = ChannelPort.CreatePair(device, device + "-vm");
        _vmEnds[device] = new ChannelVmEnd(vmEnd);
        return agentEnd;
    }

    /// <summary>Every VM sends UDP to the VM of its role on the next host at its rate; what arrives is drained.</summary>
    private void RunTraffic(int hosts)
    {
        var flows = _vms.Select(vm =>
        {
            var next = _vms.Single(v => v.Role == vm.Role && v.HostId == $"host-{(int.Parse(vm.HostId[5..], System.Globalization.CultureInfo.InvariantCulture) % hosts) + 1}");
            return (Vm: vm, Next: next, Credit: 0.0);
        }).ToArray();
        var last = DateTime.UtcNow;
        while (!_stop)
        {
            // Every 20 ms (a voice call's packet interval): a VM's frames of a tick leave together, as a real NIC's
            // interrupt and segment batching sends them, and every hop after it handles them as a batch. At 5 ms the
            // embedded default spent about a third of a core on thread wake-ups for 1,200 frames a second.
            Thread.Sleep(TrafficTick);
            var now = DateTime.UtcNow;
            var elapsed = Math.Min((now - last).TotalSeconds, 0.1);
            last = now;
            for (var i = 0; i < flows.Length; i++)
            {
                ref var flow = ref flows[i];
                if (!_vmEnds.TryGetValue(flow.Vm.Device, out var end))
                {
                    continue;
                }
                flow.Credit += flow.Vm.FramesPerSecond * elapsed;
                for (; flow.Credit >= 1; flow.Credit--)
                {
                    // A full port or socket buffer drops the datagram, as a VM's NIC would; the agents count what they forward.
                    end.Send(flow.Vm, flow.Next);
                }
                // What arrives is drained so the ports never fill.
                end.Drain();
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop = true;
        _traffic?.Join();
        // In parallel: each agent drains and says goodbye to the silo.
        await Task.WhenAll(_runtimes.Select(r => r.DisposeAsync().AsTask()));
        _pump?.Dispose();
        foreach (var link in _links)
        {
            link.Dispose();
        }
        foreach (var end in _vmEnds.Values)
        {
            end.Dispose();
        }
    }

    /// <summary>Where a host's agent runs, and how the fleet talks to it.</summary>
    private abstract class HostRuntime : IAsyncDisposable
    {
        public abstract string Id { get; }

        public abstract string Where { get; }

        /// <summary>The agent's underlay socket.</summary>
        public abstract IPEndPoint Underlay { get; }

        /// <summary>The address the links' sockets for this host bind to (reachable from the agent).</summary>
        public abstract IPAddress LinkSide { get; }

        /// <summary>One request to the agent's API.</summary>
        public abstract ApiResponse Handle(ApiRequest request);

        /// <summary>Joins the control plane once the host's VMs and routes are set.</summary>
        public virtual void Connect(ControlPlaneConfig control, ILoggerFactory loggers)
        {
        }

        public abstract ValueTask DisposeAsync();
    }

    /// <summary>An <see cref="Agent.Agent"/> in this process, on loopback UDP, with its <see cref="ControlPlaneLink"/>.</summary>
    private sealed class InProcessHost(Agent.Agent agent) : HostRuntime
    {
        private ControlPlaneLink? _link;

        public static InProcessHost Start(AgentConfig config, ILoggerFactory loggers, Func<string, IFramePort> open)
        {
            var agent = new Agent.Agent(config, loggers.CreateLogger($"Fabric.Embedded.{config.HostId}"), open);
            try
            {
                agent.Start();
                return new InProcessHost(agent);
            }
            catch
            {
                agent.Dispose();
                throw;
            }
        }

        public override string Id => agent.Config.HostId;

        public override string Where => "an agent in the embedded default's process (loopback UDP, in-memory VM ports)";

        public override IPEndPoint Underlay => agent.Switch.UnderlayEndpoints.IPv4!;

        public override IPAddress LinkSide => IPAddress.Loopback;

        public override ApiResponse Handle(ApiRequest request) => agent.Handle(request);

        public override void Connect(ControlPlaneConfig control, ILoggerFactory loggers)
        {
            _link = new ControlPlaneLink(agent, control, loggers.CreateLogger($"Fabric.Embedded.{Id}.ControlPlane"));
            _link.Start();
        }

        public override async ValueTask DisposeAsync()
        {
            if (_link is not null)
            {
                await _link.DisposeAsync();
            }
            agent.Dispose();
        }
    }

    /// <summary>A <c>fabric-agent</c> process in the host's namespace, told what to do through its API socket; it joins the silo itself.</summary>
    private sealed class ProcessHost(AgentConfig config, int host, string ns, Process process, string log) : HostRuntime
    {
        public static ProcessHost Start(FleetNetwork network, int host, AgentConfig config, string program, CancellationToken cancellation)
        {
            Directory.CreateDirectory(config.StateDirectory!);
            var path = Path.Combine(config.StateDirectory!, "agent.json");
            File.WriteAllText(path, AgentConfig.Serialize(config));
            var log = Path.Combine(config.StateDirectory!, "agent.log");
            var ns = network.HostNamespace(host);
            var process = FleetNetwork.StartIn(ns, program, log, "run", "--config", path);
            var started = new ProcessHost(config, host, ns, process, log);
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (!File.Exists(config.ApiSocket) && !process.HasExited && DateTime.UtcNow < deadline && !cancellation.IsCancellationRequested)
            {
                Thread.Sleep(50);
            }
            if (!File.Exists(config.ApiSocket) || cancellation.IsCancellationRequested)
            {
                started.DisposeAsync().AsTask().GetAwaiter().GetResult();
                cancellation.ThrowIfCancellationRequested();
                throw new InvalidOperationException($"fabric-agent for {config.HostId} in {ns} did not open {config.ApiSocket} "
                    + $"({(process.HasExited ? $"exited {process.ExitCode}" : "30 s")}); its log: {log}");
            }
            return started;
        }

        public override string Id => config.HostId;

        public override string Where => $"fabric-agent pid {process.Id} in namespace {ns}";

        public override IPEndPoint Underlay => new(FleetNetwork.Underlay(host), config.Underlay.Port);

        public override IPAddress LinkSide => FleetNetwork.LinkSide(host);

        public override ApiResponse Handle(ApiRequest request)
        {
            if (process.HasExited)
            {
                return new ApiResponse(false, Error: $"fabric-agent exited {process.ExitCode}; its log: {log}");
            }
            return AgentConfig.Parse<ApiResponse>(LocalApiServer.Send(config.ApiSocket, AgentConfig.Serialize(request)));
        }

        public override async ValueTask DisposeAsync()
        {
            if (!process.HasExited)
            {
                // SIGTERM: the agent drains and says goodbye to the silo; a stuck one is killed.
                Fabric.Programs.ProgramRunner.TryRun("kill", "-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                try
                {
                    await process.WaitForExitAsync(timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    process.Kill(entireProcessTree: true);
                }
            }
            process.Dispose();
        }
    }

    /// <summary>The VM's side of its port: sends its traffic and drains what arrives.</summary>
    private abstract class VmEnd : IDisposable
    {
        public abstract void Send(SimulatedVm from, SimulatedVm to);

        public abstract void Drain();

        public abstract void Dispose();
    }

    /// <summary>An in-memory port: the VM's UDP datagrams as whole Ethernet frames.</summary>
    private sealed class ChannelVmEnd(ChannelPort port) : VmEnd
    {
        private readonly byte[] _buffer = new byte[2048];
        private byte[]? _frame;

        public override void Send(SimulatedVm from, SimulatedVm to) => port.Transmit(_frame ??= Udp(from, to));

        public override void Drain()
        {
            while (port.Receive(_buffer, out _, TimeSpan.Zero) == PortResult.Ok)
            {
            }
        }

        public override void Dispose() => port.Dispose();

        private static byte[] Udp(SimulatedVm from, SimulatedVm to)
        {
            var frame = new byte[14 + 20 + 8 + from.PayloadBytes];
            var at = EthernetWriter.Write(frame, to.Mac, from.Mac, EtherTypes.IPv4);
            var (source, destination) = (IPv4Address.Parse(from.IPv4), IPv4Address.Parse(to.IPv4));
            at += new IPv4Repr(source, destination, IPProtocols.Udp, 64, 8 + from.PayloadBytes, DontFragment: true).Write(frame.AsSpan(at));
            UdpWriter.Write(frame.AsSpan(at), 40000, TrafficPort, from.PayloadBytes);
            UdpWriter.SetChecksumV4(frame.AsSpan(at), source, destination);
            return frame;
        }
    }

    /// <summary>A UDP socket made inside the VM's namespace: its datagrams leave by the VM's eth0 and its kernel's ARP.</summary>
    private sealed class SocketVmEnd(Socket socket, int payloadBytes) : VmEnd
    {
        private readonly byte[] _buffer = new byte[2048];
        private IPEndPoint? _to;

        public static SocketVmEnd Open(string ns, SimulatedVm vm) => new(Fabric.Hal.Linux.NetworkNamespace.Run(ns, () =>
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { Blocking = false };
            socket.Bind(new IPEndPoint(IPAddress.Parse(vm.IPv4), TrafficPort));
            return socket;
        }), vm.PayloadBytes);

        public override void Send(SimulatedVm from, SimulatedVm to)
        {
            try
            {
                socket.SendTo(_buffer.AsSpan(0, payloadBytes), _to ??= new IPEndPoint(IPAddress.Parse(to.IPv4), TrafficPort));
            }
            catch (SocketException)
            {
                // A full buffer, or an ICMP error from an earlier datagram: this one is lost, as a VM's would be.
            }
        }

        public override void Drain()
        {
            try
            {
                while (socket.Available > 0)
                {
                    socket.Receive(_buffer);
                }
            }
            catch (SocketException)
            {
            }
        }

        public override void Dispose() => socket.Dispose();
    }
}
