using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using Fabric.Agent;
using Fabric.Agent.ControlPlane;
using Fabric.Hal;
using Fabric.Registration;
using Fabric.Wire;
using Microsoft.Extensions.Logging;

namespace Fabric.Embedded;

/// <summary>How big the simulated fleet is and how fast its links change.</summary>
public sealed record FleetOptions(int Hosts = 4, int PhaseSeconds = 45, string? TestData = null, int ReportMilliseconds = 1000)
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
    }
}

/// <summary>
/// A simulated VM: what it is for (its role gives its policy's workload and its traffic), where it runs, and how much
/// it sends to the VM of the same role on the next host.
/// </summary>
public sealed record SimulatedVm(string Id, string Name, string HostId, string Role, MacAddress Mac, string IPv4, VmPolicy Policy, int FramesPerSecond, int PayloadBytes);

/// <summary>One simulated host: a real agent (real switch, stacks from the signed repository, UDP underlay on loopback) and its control-plane link.</summary>
public sealed record SimulatedHost(string HostId, Agent.Agent Agent, ControlPlaneLink Link);

/// <summary>
/// The embedded default's fleet, in this process and without root: N hosts, each a real <see cref="Agent.Agent"/>
/// whose VMs are in-memory channel ports registered through the hook API with a policy, connected pairwise by
/// <see cref="EmulatedLink"/>s that follow real traces and change every few tens of seconds, each agent an Orleans
/// client of the silo. Traffic generators make every VM send to its counterpart on the next host, so paths carry
/// traffic, the silo measures them and chooses, and the agents swap stacks under load.
/// </summary>
public sealed class SimulatedFleet : IAsyncDisposable
{
    public const uint Vni = 100;

    /// <summary>Roles of the VMs on each host: name, workload, frames per second, payload bytes (a web tier, a voice call, a backup stream).</summary>
    private static readonly (string Role, string Workload, int Fps, int Bytes)[] Roles =
        [("web", "general", 50, 800), ("voice", "latency", 50, 160), ("backup", "bulk", 200, 1200)];

    private readonly ConcurrentDictionary<string, ChannelPort> _vmEnds = new(StringComparer.Ordinal);
    private readonly List<EmulatedLink> _links = [];
    private readonly List<SimulatedHost> _hosts = [];
    private readonly List<Agent.Agent> _agents = [];
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

    /// <summary>Starts agents, links, registrations and traffic; throws naming what failed (and stops what it started).</summary>
    public static SimulatedFleet Start(FleetOptions options, DevelopmentRepository repository, string gateway, string stateDirectory, ILoggerFactory loggers)
    {
        var problems = options.Validate().ToList();
        if (problems.Count > 0)
        {
            throw new ArgumentException("fleet: " + string.Join("; ", problems));
        }
        var fleet = new SimulatedFleet();
        try
        {
            fleet.Build(options, repository, gateway, stateDirectory, loggers);
            return fleet;
        }
        catch
        {
            fleet.DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
    }

    private void Build(FleetOptions options, DevelopmentRepository repository, string gateway, string stateDirectory, ILoggerFactory loggers)
    {
        var control = new ControlPlaneConfig([gateway], ReportMilliseconds: options.ReportMilliseconds);
        var ids = Enumerable.Range(1, options.Hosts).Select(i => $"host-{i}").ToList();
        var agents = _agents;
        foreach (var id in ids)
        {
            var state = Path.Combine(stateDirectory, id);
            var config = new AgentConfig(id, new UnderlayConfig("127.0.0.1", null, 0), [], Path.Combine(state, "api.sock"), DrainMilliseconds: 500,
                Repository: new RepositoryConfig(repository.Path, repository.TrustRoot, Path.Combine(state, "stacks")), StateDirectory: state, ControlPlane: control);
            var agent = new Agent.Agent(config, loggers.CreateLogger($"Fabric.Embedded.{id}"), Open);
            agents.Add(agent);
            agent.Start();
        }

        // A link per pair of hosts, each starting at another phase; the same random key for secure at both ends.
        var phases = LinkScenarios.FromTestData(options.TestData, TimeSpan.FromSeconds(options.PhaseSeconds));
        var pairs = agents.Count * (agents.Count - 1) / 2;
        for (var i = 0; i < agents.Count; i++)
        {
            for (var j = i + 1; j < agents.Count; j++)
            {
                var (a, b) = (agents[i], agents[j]);
                var link = new EmulatedLink(ids[i], a.Switch.UnderlayEndpoints.IPv4!, ids[j], b.Switch.UnderlayEndpoints.IPv4!, phases, _links.Count * 3,
                    firstPhaseShare: (double)(_links.Count + 1) / pairs, seed: 17 * (_links.Count + 1));
                _links.Add(link);
                var settings = new Dictionary<string, Dictionary<string, string>>
                {
                    ["secure"] = new() { ["key"] = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)) },
                };
                Ok(a.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig(ids[j], "127.0.0.1", null, "std-ipv4", link.AddressForA.Port, settings))), ids[i]);
                Ok(b.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig(ids[i], "127.0.0.1", null, "std-ipv4", link.AddressForB.Port, settings))), ids[j]);
            }
        }
        _pump = new LinkPump(_links);

        // VMs, registered as the libvirt hook would (with the policy their metadata carries), and routes to them everywhere else.
        for (var h = 0; h < agents.Count; h++)
        {
            for (var r = 0; r < Roles.Length; r++)
            {
                var (role, workload, fps, bytes) = Roles[r];
                var vm = new SimulatedVm($"{role}-{h + 1}", $"{role} on {ids[h]}", ids[h], role, new MacAddress(0x02_00_00_00_00_00UL | ((ulong)(uint)(h + 1) << 8) | (uint)(r + 1)),
                    $"10.100.{h + 1}.{r + 1}", new VmPolicy(workload, Vni: Vni), fps, bytes);
                _vms.Add(vm);
                Ok(agents[h].Handle(new ApiRequest("register-vm", Registration: new VmRegistration(vm.Id, vm.Name,
                    [new VmInterface("ethernet", vm.Mac.ToString(), "tap-" + vm.Id, Vni: Vni, IPv4: [vm.IPv4])], vm.Policy, "metadata", "libvirt"))), ids[h]);
            }
        }
        foreach (var vm in _vms)
        {
            foreach (var agent in agents.Where(a => a.Config.HostId != vm.HostId))
            {
                Ok(agent.Handle(new ApiRequest("set-route", Route: new RouteConfig(Vni, vm.Mac.ToString(), vm.HostId, [vm.IPv4]))), agent.Config.HostId);
            }
        }
        foreach (var agent in agents)
        {
            var link = new ControlPlaneLink(agent, control, loggers.CreateLogger($"Fabric.Embedded.{agent.Config.HostId}.ControlPlane"));
            _hosts.Add(new SimulatedHost(agent.Config.HostId, agent, link));
            link.Start();
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
        _vmEnds[device] = vmEnd;
        return agentEnd;
    }

    /// <summary>Every VM sends UDP to the VM of its role on the next host at its rate; what arrives is drained.</summary>
    private void RunTraffic(int hosts)
    {
        var flows = _vms.Select(vm =>
        {
            var next = _vms.Single(v => v.Role == vm.Role && v.HostId == $"host-{(int.Parse(vm.HostId[5..], System.Globalization.CultureInfo.InvariantCulture) % hosts) + 1}");
            return (Vm: vm, Frame: Udp(vm, next), Credit: 0.0);
        }).ToArray();
        var buffer = new byte[2048];
        var last = DateTime.UtcNow;
        while (!_stop)
        {
            Thread.Sleep(5);
            var now = DateTime.UtcNow;
            var elapsed = Math.Min((now - last).TotalSeconds, 0.1);
            last = now;
            for (var i = 0; i < flows.Length; i++)
            {
                ref var flow = ref flows[i];
                if (!_vmEnds.TryGetValue("tap-" + flow.Vm.Id, out var port))
                {
                    continue;
                }
                flow.Credit += flow.Vm.FramesPerSecond * elapsed;
                for (; flow.Credit >= 1; flow.Credit--)
                {
                    // A full port drops the frame, as a VM's NIC would; the agents count what they forward.
                    port.Transmit(flow.Frame);
                }
                // What arrives is drained so the ports never fill.
                while (port.Receive(buffer, out _, TimeSpan.Zero) == PortResult.Ok)
                {
                }
            }
        }
    }

    private static byte[] Udp(SimulatedVm from, SimulatedVm to)
    {
        var frame = new byte[14 + 20 + 8 + from.PayloadBytes];
        var at = EthernetWriter.Write(frame, to.Mac, from.Mac, EtherTypes.IPv4);
        var (source, destination) = (IPv4Address.Parse(from.IPv4), IPv4Address.Parse(to.IPv4));
        at += new IPv4Repr(source, destination, IPProtocols.Udp, 64, 8 + from.PayloadBytes, DontFragment: true).Write(frame.AsSpan(at));
        UdpWriter.Write(frame.AsSpan(at), 40000, 5004, from.PayloadBytes);
        UdpWriter.SetChecksumV4(frame.AsSpan(at), source, destination);
        return frame;
    }

    public async ValueTask DisposeAsync()
    {
        _stop = true;
        _traffic?.Join();
        foreach (var host in _hosts)
        {
            await host.Link.DisposeAsync();
        }
        _pump?.Dispose();
        foreach (var agent in _agents)
        {
            agent.Dispose();
        }
        foreach (var link in _links)
        {
            link.Dispose();
        }
        foreach (var port in _vmEnds.Values)
        {
            port.Dispose();
        }
    }
}
