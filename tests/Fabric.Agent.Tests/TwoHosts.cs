using Fabric.Agent;
using Fabric.Agent.Underlay;
using Fabric.Hal;
using Fabric.Hal.Linux;
using Fabric.Testing;
using Fabric.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Agent.Tests;

/// <summary>
/// Two real agents in this process joined by a real UDP underlay on loopback; their VM ports are in-memory channel
/// ports, or packet sockets on veth pairs in a namespace of the test's (the test holds the VM ends). Host A has vm1 and
/// vm2 (vni 100) and vm4 (vni 200); host B has vm3 (vni 100).
/// </summary>
internal sealed class TwoHosts : IDisposable
{
    public static readonly MacAddress Mac1 = new(0x02_00_00_00_01_01);
    public static readonly MacAddress Mac2 = new(0x02_00_00_00_01_02);
    public static readonly MacAddress Mac3 = new(0x02_00_00_00_01_03);
    public static readonly MacAddress Mac4 = new(0x02_00_00_00_02_04);
    private readonly Dictionary<string, IFramePort> _vmEnds = [];
    private readonly TestNetwork? _network;
    private readonly string? _namespace;
    private int _opened;
    private const int VethPairs = 20;
    private readonly Dictionary<string, string> _agentDevices = [];
    private readonly int? _vmReceiveThreads;

    /// <summary>Per-path settings that give both ends the same key for secure.</summary>
    public static readonly Dictionary<string, Dictionary<string, string>> SecureKeys = new() { ["secure"] = new() { ["key"] = new string('5', 64) } };

    /// <summary>The host pair's overlay key both ends get unless a test says otherwise.</summary>
    public static readonly string OverlayKey = new('6', 64);

    /// <param name="stack">The paths' stack.</param>
    /// <param name="settings">Per stack id, the configuration both ends give its instances (e.g. secure's key).</param>
    /// <param name="authenticated">Whether the two ends share an overlay key (authenticated probes and control messages).</param>
    /// <param name="peerSlotIdleSeconds">How long host A keeps a slot host B opened that receives nothing.</param>
    /// <param name="inMemory">The two agents share an <see cref="InMemoryWire"/> (<see cref="Wire"/>) instead of UDP sockets on loopback.</param>
    /// <param name="time">Both hosts' clock (a fake one moves only when the test says: hosts keep their clocks in step, as a
    /// fleet's do, or their control messages would be refused as stale); null: the system's.</param>
    /// <param name="loggerA">What host A's agent logs to (null: nowhere).</param>
    /// <param name="packetSockets">Each VM port is a packet socket on one end of a veth pair, the VM's end a packet socket
    /// on the other (ports the kernel can wait on together: the switch receives them in groups), instead of a channel.</param>
    /// <param name="vmReceiveThreads">Both agents' <see cref="AgentConfig.VmReceiveThreads"/> (null: the default).</param>
    public TwoHosts(string stack = "std-ipv4", Dictionary<string, Dictionary<string, string>>? settings = null, bool authenticated = true, int peerSlotIdleSeconds = 600,
        bool inMemory = false, TimeProvider? time = null, Microsoft.Extensions.Logging.ILogger? loggerA = null, bool packetSockets = false, int? vmReceiveThreads = null)
    {
        _vmReceiveThreads = vmReceiveThreads;
        if (packetSockets)
        {
            _network = new TestNetwork();
            _namespace = _network.AddNamespace("vms");
            // No IPv6 on the veths: the kernel's own solicitations would be frames the VMs never sent.
            TestNetwork.Exec(_namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            // Every pair made now, in one command: the agents open ports under their API lock, and a program started there
            // (whose output is read on the thread pool) would wait behind their timers, which wait for that lock.
            var batch = Path.Combine(Path.GetTempPath(), $"{_network.Id}-veths");
            File.WriteAllLines(batch, Enumerable.Range(0, VethPairs).SelectMany(n => new[]
            {
                $"link add {_network.Id}a{n} type veth peer name {_network.Id}v{n}",
                $"link set {_network.Id}a{n} up",
                $"link set {_network.Id}v{n} up",
            }));
            try
            {
                Privileged.Run("ip", "-n", _namespace, "-batch", batch);
            }
            finally
            {
                File.Delete(batch);
            }
        }
        Wire = inMemory ? new InMemoryWire() : null;
        _overlayKey = authenticated ? OverlayKey : null;
        string[] stacks = [StackPlugins.PathOf(StackPlugins.StdIPv4), StackPlugins.PathOf(StackPlugins.StdIPv6), StackPlugins.PathOf(StackPlugins.SwapTest),
            StackPlugins.PathOf(StackPlugins.Faulty), StackPlugins.PathOf(StackPlugins.FaultySealed), StackPlugins.PathOf(StackPlugins.Secure)];
        (_stacks, _stack, _settings, _time) = (stacks, stack, settings, time);
        A = new Agent(new AgentConfig("host-a", new UnderlayConfig("127.0.0.1", "::1", Port: 0), stacks, "unused", DrainMilliseconds: 100,
            PeerSlotIdleSeconds: peerSlotIdleSeconds, VmReceiveThreads: vmReceiveThreads), loggerA ?? NullLogger.Instance, Open, Wire?.Factory, time);
        A.Start();
        B = StartB(0);
        Ok(A.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-b", "127.0.0.1", "::1", stack, PortOf(B, stack), settings, _overlayKey))));
        Ok(A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm1", "tap-vm1", 100, Mac1.ToString(), ["10.0.0.1"], ["fd00:100::1"]))));
        Ok(A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm2", "tap-vm2", 100, Mac2.ToString(), ["10.0.0.2"], ["fd00:100::2"]))));
        Ok(A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm4", "tap-vm4", 200, Mac4.ToString(), ["10.0.0.4"], []))));
        Ok(A.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac3.ToString(), "host-b", ["10.0.0.3"], ["fd00:100::3"]))));
    }

    private readonly string[] _stacks;
    private readonly string _stack;
    private readonly Dictionary<string, Dictionary<string, string>>? _settings;
    private readonly string? _overlayKey;
    private readonly TimeProvider? _time;

    /// <summary>Starts host B (on the given underlay port; 0: any) with its VM and routes, as its agent does on every start.</summary>
    private Agent StartB(int port)
    {
        var b = new Agent(new AgentConfig("host-b", new UnderlayConfig("127.0.0.1", "::1", Port: port), _stacks, "unused", DrainMilliseconds: 100, VmReceiveThreads: _vmReceiveThreads), NullLogger.Instance, Open, Wire?.Factory, _time);
        b.Start();
        Ok(b.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-a", "127.0.0.1", "::1", _stack, PortOf(A, _stack), _settings, _overlayKey))));
        Ok(b.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm3", "tap-vm3", 100, Mac3.ToString(), ["10.0.0.3"], ["fd00:100::3"]))));
        Ok(b.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac1.ToString(), "host-a", ["10.0.0.1"], ["fd00:100::1"]))));
        Ok(b.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, Mac2.ToString(), "host-a", ["10.0.0.2"], ["fd00:100::2"]))));
        return b;
    }

    /// <summary>Host B's agent stops and starts again on the same IPv4 underlay port, knowing nothing of what it had opened.</summary>
    public void RestartB()
    {
        var port = B.Switch.UnderlayEndpoints.IPv4!.Port;
        B.Dispose();
        B = StartB(port);
    }

    /// <summary>The wire between the two agents when they run in memory (null: UDP on loopback).</summary>
    public InMemoryWire? Wire { get; }

    public Agent A { get; }
    public Agent B { get; private set; }

    /// <summary>The VM side of a VM's port: what the VM sends and receives.</summary>
    public IFramePort Vm(string vmId) => _vmEnds["tap-" + vmId];

    private IFramePort Open(string device)
    {
        if (_network is not null)
        {
            var n = _opened++;
            Assert.True(n < VethPairs, $"TwoHosts made {VethPairs} veth pairs; a test asked for more");
            var (agentSide, vmSide) = ($"{_network.Id}a{n}", $"{_network.Id}v{n}");
            _agentDevices[device] = agentSide;
            if (_vmEnds.Remove(device, out var old))
            {
                old.Dispose();
            }
            _vmEnds[device] = NetworkNamespace.Run(_namespace!, () => AfPacketPort.Open(vmSide));
            return NetworkNamespace.Run(_namespace!, () => AfPacketPort.Open(agentSide));
        }
        var (agentEnd, vmEnd) = ChannelPort.CreatePair(device, device + "-vm");
        _vmEnds[device] = vmEnd;
        return agentEnd;
    }

    /// <summary>Deletes the veth pair under a VM's port (packet sockets only), as when its netdev goes away.</summary>
    public void DeleteVmDevice(string vmId) => TestNetwork.Exec(_namespace!, "ip", "link", "del", _agentDevices["tap-" + vmId]);

    private static int PortOf(Agent agent, string stack) =>
        stack == "std-ipv6" ? agent.Switch.UnderlayEndpoints.IPv6!.Port : agent.Switch.UnderlayEndpoints.IPv4!.Port;

    public static void Ok(ApiResponse response) => Assert.True(response.Ok, response.Error);

    /// <summary>Waits up to 5 s for a frame at a VM; fails naming the VM.</summary>
    public byte[] Expect(string vmId)
    {
        var buffer = new byte[70000];
        var result = Vm(vmId).Receive(buffer, out var length, TimeSpan.FromSeconds(5));
        Assert.True(result == PortResult.Ok, $"no frame reached {vmId} within 5 s ({result})");
        return buffer[..length];
    }

    /// <summary>True when nothing reaches the VM within <paramref name="wait"/>.</summary>
    public bool Silent(string vmId, TimeSpan wait) => Vm(vmId).Receive(new byte[70000], out _, wait) == PortResult.Timeout;

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        foreach (var end in _vmEnds.Values)
        {
            end.Dispose();
        }
        _network?.Dispose();
    }
}
