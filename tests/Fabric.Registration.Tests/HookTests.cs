using System.Text.Json;
using Fabric.Agent;
using Fabric.Agent.Api;
using Fabric.Hal;
using Fabric.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Registration.Tests;

/// <summary>
/// A real agent (in this process, its VM ports on channel ports named like the taps) behind its real local API socket,
/// and the real fabric-hook binary called the way libvirt calls it.
/// </summary>
internal sealed class HookRig : IDisposable
{
    private readonly HashSet<string> _existingDevices = new(StringComparer.Ordinal);
    private LocalApiServer? _server;

    public HookRig()
    {
        Folder = Directory.CreateTempSubdirectory("fabric-hook-").FullName;
        Socket = Path.Combine(Folder, "agent.sock");
    }

    public string Folder { get; }
    public string Socket { get; }
    public string State => Path.Combine(Folder, "state");
    public Fabric.Agent.Agent? Agent { get; private set; }
    public Dictionary<string, ChannelPort> Ports { get; } = new(StringComparer.Ordinal);

    public static string Hook => Processes.Built("dataplane-agent/Fabric.Hooks", "fabric-hook");

    public static string Domain(string name) => File.ReadAllText(name.Contains('/', StringComparison.Ordinal) ? name : TestData.PathOf("libvirt-domain-xml", name));

    public static string Example => File.ReadAllText(Path.Combine(RepositoryRoot.Directory, "deploy", "libvirt", "example-domain.xml"));

    /// <summary>Makes a netdev "exist" for the agent (as libvirt creating the tap would).</summary>
    public void CreateDevice(string device)
    {
        lock (_existingDevices)
        {
            _existingDevices.Add(device);
        }
    }

    public void StartAgent()
    {
        var config = new AgentConfig("host-x", new UnderlayConfig("127.0.0.1", null, Port: 0), [StackPlugins.PathOf(StackPlugins.StdIPv4)], Socket, StateDirectory: State);
        Agent = new Fabric.Agent.Agent(config, NullLogger.Instance, OpenPort);
        Agent.Start();
        _server = new LocalApiServer(Agent, Socket);
    }

    public void StopAgent()
    {
        _server?.Dispose();
        Agent?.Dispose();
        (_server, Agent) = (null, null);
    }

    public (int Code, string Stdout, string Stderr) Qemu(string name, string operation, string xml, string sub = "begin", string? program = null) =>
        Processes.Run(program ?? Hook, program is null ? ["qemu", name, operation, sub, "-"] : [name, operation, sub, "-"], xml, Environment());

    public Dictionary<string, string> Environment(string failOpen = "1") => new()
    {
        ["FABRIC_AGENT_SOCKET"] = Socket,
        ["FABRIC_STATE_DIR"] = State,
        ["FABRIC_HOOK"] = Hook,
        ["FABRIC_HOOK_FAIL_OPEN"] = failOpen,
        // A loaded CI machine can be slower than a hypervisor host; the deadline itself is tested with a silent agent.
        ["FABRIC_HOOK_TIMEOUT_MS"] = "2000",
    };

    public JsonElement Registrations() =>
        JsonDocument.Parse(LocalApiServer.Send(Socket, """{"op":"status"}""")).RootElement.GetProperty("result").GetProperty("registrations");

    public string[] Spooled() => Directory.Exists(Path.Combine(State, "hook-spool")) ? Directory.GetFiles(Path.Combine(State, "hook-spool"), "*.json") : [];

    private ChannelPort OpenPort(string device)
    {
        lock (_existingDevices)
        {
            if (!_existingDevices.Contains(device))
            {
                throw new IOException($"no netdev '{device}'");
            }
        }
        var (vmSide, agentSide) = ChannelPort.CreatePair(device + "-vm", device);
        Ports[device] = vmSide;
        return agentSide;
    }

    public void Dispose()
    {
        StopAgent();
        Directory.Delete(Folder, recursive: true);
    }
}

public class HookTests
{
    [Fact]
    public void StartRegistersAndAttachesTheTap_StoppedDeregisters_AndRepeatsChangeNothing()
    {
        using var rig = new HookRig();
        rig.CreateDevice("fab-web1");
        rig.StartAgent();
        var (code, _, stderr) = rig.Qemu("web-1", "prepare", HookRig.Example);
        Assert.True(code == 0, stderr);
        var vm = Assert.Single(rig.Registrations().EnumerateArray());
        Assert.Equal("web-1", vm.GetProperty("name").GetString());
        Assert.Equal("metadata", vm.GetProperty("policySource").GetString());
        Assert.Equal("latency", vm.GetProperty("policy").GetProperty("workload").GetString());
        var nics = vm.GetProperty("interfaces").EnumerateArray().ToList();
        Assert.Equal("attached", nics[0].GetProperty("state").GetString());
        Assert.Equal("not-switched", nics[1].GetProperty("state").GetString());
        Assert.Contains("SR-IOV VF 0000:3b:02.3 is passed through", nics[1].GetProperty("detail").GetString(), StringComparison.Ordinal);
        var port = Assert.Single(rig.Agent!.Switch.Vms.Values);
        Assert.Equal((42u, "52:54:00:42:00:05"), (port.Spec.Vni, port.Spec.Mac.ToString()));

        // start and started bring the same XML again: nothing changes, the port is not re-opened.
        Assert.Equal(0, rig.Qemu("web-1", "start", HookRig.Example).Code);
        Assert.Equal(0, rig.Qemu("web-1", "started", HookRig.Example).Code);
        Assert.Same(port, Assert.Single(rig.Agent.Switch.Vms.Values));

        Assert.Equal(0, rig.Qemu("web-1", "stopped", HookRig.Example, "end").Code);
        Assert.Empty(rig.Registrations().EnumerateArray());
        Assert.Empty(rig.Agent.Switch.Vms);
        Assert.Equal(0, rig.Qemu("web-1", "release", HookRig.Example, "end").Code);
        Assert.Empty(rig.Spooled());
    }

    [Fact]
    public void ATapThatAppearsLater_IsAttachedWhenItExists()
    {
        using var rig = new HookRig();
        rig.StartAgent();
        Assert.Equal(0, rig.Qemu("web-1", "start", HookRig.Example).Code);
        var nic = rig.Registrations()[0].GetProperty("interfaces")[0];
        Assert.Equal("pending", nic.GetProperty("state").GetString());
        Assert.Contains("no netdev 'fab-web1'", nic.GetProperty("detail").GetString(), StringComparison.Ordinal);
        rig.CreateDevice("fab-web1");
        Eventually.True(() => rig.Agent!.Switch.Vms.Count == 1, TimeSpan.FromSeconds(10), "tap appeared → attached by housekeeping",
            () => rig.Registrations().ToString());
    }

    [Fact]
    public void WithTheAgentDown_CallsAreQueuedDurably_AndTheAgentAppliesThemInOrderWhenItStarts()
    {
        using var rig = new HookRig();
        var other = HookRig.Domain("qemuxml2argvdata__net-eth-ifname.xml");
        foreach (var (name, op, xml, sub) in new[] { ("web-1", "start", HookRig.Example, "begin"), ("QEMUGuest1", "start", other, "begin"), ("web-1", "stopped", HookRig.Example, "end"), ("web-1", "start", HookRig.Example, "begin") })
        {
            var (code, _, stderr) = rig.Qemu(name, op, xml, sub);
            Assert.Equal(0, code);
            Assert.Contains("queued in", stderr, StringComparison.Ordinal);
        }
        Assert.Equal(4, rig.Spooled().Length);
        rig.CreateDevice("fab-web1");
        rig.CreateDevice("nic02");
        rig.StartAgent();
        Assert.Empty(rig.Spooled());
        // start, start, stop, start of web-1 in that order leaves both VMs registered and attached.
        Assert.Equal(["QEMUGuest1", "web-1"], rig.Registrations().EnumerateArray().Select(r => r.GetProperty("name").GetString()));
        Assert.Equal(2, rig.Agent!.Switch.Vms.Count);
    }

    [Fact]
    public void ACallQueuedWhileTheAgentRuns_IsAppliedWithoutWaitingForAnotherCall()
    {
        using var rig = new HookRig();
        rig.CreateDevice("fab-web1");
        rig.StartAgent();
        // What a hook that timed out on a busy agent leaves behind.
        new HookSpool(Path.Combine(rig.State, "hook-spool")).Enqueue(new RegistrationRequest("register-vm", DomainXml.Parse(HookRig.Example)).ToJson());
        Eventually.True(() => rig.Agent!.Switch.Vms.Count == 1 && rig.Spooled().Length == 0, TimeSpan.FromSeconds(10), "queued registration applied by the running agent",
            () => $"{rig.Spooled().Length} queued; {rig.Registrations()}");
    }

    [Fact]
    public void ASpooledRequestThatNoHookMakes_IsRejected_NotApplied()
    {
        using var rig = new HookRig();
        rig.StartAgent();
        var before = rig.Agent!.Switch.Paths.Count;
        new HookSpool(Path.Combine(rig.State, "hook-spool")).Enqueue("""{"op":"add-host","host":{"id":"evil","ipv4":"127.0.0.1"}}""");
        Eventually.True(() => rig.Spooled().Length == 0, TimeSpan.FromSeconds(10), "the spooled request taken", () => $"{rig.Spooled().Length} queued");
        Assert.Equal(before, rig.Agent.Switch.Paths.Count);
        Assert.False(rig.Agent.Switch.Paths.ContainsKey("evil"));
        Assert.Single(Directory.GetFiles(Path.Combine(rig.State, "hook-spool", "rejected")));
    }

    [Fact]
    public void RegistrationsSurviveAnAgentRestart()
    {
        using var rig = new HookRig();
        rig.CreateDevice("fab-web1");
        rig.StartAgent();
        Assert.Equal(0, rig.Qemu("web-1", "start", HookRig.Example).Code);
        rig.StopAgent();
        rig.StartAgent();
        Assert.Equal("attached", rig.Registrations()[0].GetProperty("interfaces")[0].GetProperty("state").GetString());
        Assert.Single(rig.Agent!.Switch.Vms);
    }

    /// <summary>
    /// A registration file damaged while the agent was down (a full disk, a careless edit, one no longer valid) does not
    /// stop the agent: the others come back, the damaged one is set aside for the operator and said in the log and the
    /// status, and the VM it was comes back when its hook registers it again.
    /// </summary>
    [Fact]
    public void ADamagedRegistrationFile_IsSetAsideAndSaid_AndTheAgentStartsWithTheOthers()
    {
        using var rig = new HookRig();
        rig.CreateDevice("fab-web1");
        rig.StartAgent();
        Assert.Equal(0, rig.Qemu("web-1", "start", HookRig.Example).Code);
        rig.StopAgent();
        var folder = Path.Combine(rig.State, "vms");
        var good = Assert.Single(Directory.GetFiles(folder, "*.json"));
        var text = File.ReadAllText(good);
        File.WriteAllText(Path.Combine(folder, "truncated.json"), text[..(text.Length / 2)]);
        // Valid JSON, but not a valid registration: another VM whose vNIC has a multicast MAC.
        var invalid = System.Text.Json.Nodes.JsonNode.Parse(text)!;
        invalid["id"] = "another-vm";
        invalid["interfaces"]![0]!["mac"] = "01:00:5e:00:00:01";
        File.WriteAllText(Path.Combine(folder, "invalid.json"), invalid.ToJsonString());
        // JSON, but nothing of a registration in it.
        File.WriteAllText(Path.Combine(folder, "empty.json"), "{}");

        rig.StartAgent();
        Assert.Equal("attached", rig.Registrations()[0].GetProperty("interfaces")[0].GetProperty("state").GetString());
        Assert.Single(rig.Agent!.Switch.Vms);
        var status = JsonDocument.Parse(LocalApiServer.Send(rig.Socket, """{"op":"status"}""")).RootElement.GetProperty("result").GetProperty("unreadableRegistrations");
        var files = status.EnumerateArray().Select(u => Path.GetFileName(u.GetProperty("file").GetString()!)).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["empty.json", "invalid.json", "truncated.json"], files);
        Assert.All(status.EnumerateArray(), u => Assert.False(string.IsNullOrWhiteSpace(u.GetProperty("reason").GetString())));
        Assert.True(File.Exists(Path.Combine(folder, "truncated.json.unreadable")));
        Assert.False(File.Exists(Path.Combine(folder, "truncated.json")));

        // The next start does not read them again.
        rig.StopAgent();
        rig.StartAgent();
        Assert.Empty(JsonDocument.Parse(LocalApiServer.Send(rig.Socket, """{"op":"status"}""")).RootElement.GetProperty("result").GetProperty("unreadableRegistrations").EnumerateArray());
        Assert.Single(rig.Agent!.Switch.Vms);
    }

    [Fact]
    public void ASilentAgent_CostsTheHookOnlyItsDeadline_AndTheCallIsQueued()
    {
        using var rig = new HookRig();
        // Something listens on the socket but never answers (a hung agent).
        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        listener.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(rig.Socket));
        listener.Listen(1);
        var environment = rig.Environment();
        environment["FABRIC_HOOK_TIMEOUT_MS"] = "50";
        var (code, _, stderr) = Processes.Run(HookRig.Hook, ["qemu", "web-1", "start", "begin", "-"], HookRig.Example, environment);
        Assert.Equal(0, code);
        Assert.Contains("did not answer within 50 ms", stderr, StringComparison.Ordinal);
        Assert.Single(rig.Spooled());
    }

    [Theory]
    [InlineData("migrate")]
    [InlineData("restore")]
    public void MigrateAndRestore_PassTheXmlThroughUnchanged(string operation)
    {
        using var rig = new HookRig();
        var xml = HookRig.Domain("qemuxml2argvdata__net-vhostuser.xml");
        var (code, stdout, _) = rig.Qemu("QEMUGuest1", operation, xml);
        Assert.Equal(0, code);
        Assert.Equal(xml, stdout);
        Assert.Empty(rig.Spooled());
    }

    [Fact]
    public void ARefusedDomain_ExitsNonZeroWithTheReason_AndTheWrapperLetsAFailOpenStartProceed()
    {
        using var rig = new HookRig();
        rig.StartAgent();
        var bad = HookRig.Domain("qemuxml2argvdata__net-hostdev-fail.xml");
        var (code, _, stderr) = rig.Qemu("QEMUGuest1", "start", bad);
        Assert.Equal(1, code);
        Assert.Contains("domain QEMUGuest1 (start): interface 00:11:22:33:44:55: custom tap device path is not supported", stderr, StringComparison.Ordinal);
        var truncated = HookRig.Example[..300];
        Assert.Contains("malformed or truncated", rig.Qemu("web-1", "start", truncated).Stderr, StringComparison.Ordinal);

        var wrapper = Path.Combine(RepositoryRoot.Directory, "deploy", "libvirt", "qemu");
        var open = Processes.Run(wrapper, ["QEMUGuest1", "start", "begin", "-"], bad, rig.Environment(failOpen: "1"));
        Assert.Equal(0, open.Code);
        Assert.Contains("continuing because FABRIC_HOOK_FAIL_OPEN=1", open.Stderr, StringComparison.Ordinal);
        var closed = Processes.Run(wrapper, ["QEMUGuest1", "start", "begin", "-"], bad, rig.Environment(failOpen: "0"));
        Assert.Equal(1, closed.Code);
        Assert.Contains("custom tap device path is not supported", closed.Stderr, StringComparison.Ordinal);
        Assert.Empty(rig.Registrations().EnumerateArray());
        // A good domain goes through the wrapper like through the binary.
        rig.CreateDevice("fab-web1");
        Assert.Equal(0, Processes.Run(wrapper, ["web-1", "start", "begin", "-"], HookRig.Example, rig.Environment()).Code);
        Assert.Single(rig.Registrations().EnumerateArray());
    }

    [Fact]
    public void InstallAndUninstall_KeepAnOperatorsOwnHook()
    {
        using var rig = new HookRig();
        var install = Path.Combine(RepositoryRoot.Directory, "deploy", "libvirt", "install.sh");
        var uninstall = Path.Combine(RepositoryRoot.Directory, "deploy", "libvirt", "uninstall.sh");
        var root = Path.Combine(rig.Folder, "root");
        var environment = new Dictionary<string, string> { ["FABRIC_ROOT"] = root };
        Assert.Equal(0, Processes.Run(install, [HookRig.Hook], environment: environment).Code);
        Assert.True(File.Exists(Path.Combine(root, "etc/libvirt/hooks/qemu")));
        Assert.True(File.Exists(Path.Combine(root, "usr/local/lib/fabric/fabric-hook")));
        Assert.Contains("FABRIC_HOOK_FAIL_OPEN=1", File.ReadAllText(Path.Combine(root, "etc/fabric/hook.env")), StringComparison.Ordinal);
        Assert.Equal(0, Processes.Run(uninstall, [], environment: environment).Code);
        Assert.False(File.Exists(Path.Combine(root, "etc/libvirt/hooks/qemu")));

        File.WriteAllText(Path.Combine(root, "etc/libvirt/hooks/qemu"), "#!/bin/sh\n# the operator's own hook\n");
        Assert.Equal(0, Processes.Run(install, [HookRig.Hook], environment: environment).Code);
        Assert.Contains("operator's own", File.ReadAllText(Path.Combine(root, "etc/libvirt/hooks/qemu")), StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(root, "etc/libvirt/hooks/qemu.d/fabric")));
        Assert.Equal(0, Processes.Run(uninstall, [], environment: environment).Code);
        Assert.False(File.Exists(Path.Combine(root, "etc/libvirt/hooks/qemu.d/fabric")));
        Assert.True(File.Exists(Path.Combine(root, "etc/libvirt/hooks/qemu")));
        Assert.Equal(2, Processes.Run(install, [Path.Combine(root, "missing")], environment: environment).Code);
    }
}
