using System.Text.Json.Nodes;
using Fabric.Agent.Api;
using Fabric.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Registration.Tests;

/// <summary>
/// fabric-cni against real network namespaces, the reference host-local IPAM plugin (Debian's containernetworking-plugins)
/// and a real agent switching the host ends with AF_PACKET. Needs root.
/// </summary>
public sealed class CniPrivilegedTests : IDisposable
{
    private const string CniPath = "/usr/lib/cni";
    private readonly TestNetwork _network = new();
    private readonly string _folder = Directory.CreateTempSubdirectory("fabric-cni-").FullName;
    private Fabric.Agent.Agent? _agent;
    private LocalApiServer? _server;

    private string Socket => Path.Combine(_folder, "agent.sock");

    private void StartAgent()
    {
        var config = new Fabric.Agent.AgentConfig("host-x", new Fabric.Agent.UnderlayConfig("127.0.0.1", null, Port: 0), [StackPlugins.PathOf(StackPlugins.StdIPv4)], Socket,
            StateDirectory: Path.Combine(_folder, "agent-state"));
        _agent = new Fabric.Agent.Agent(config, NullLogger.Instance);
        _agent.Start();
        _server = new LocalApiServer(_agent, Socket);
    }

    private string Config(string subnet = "10.77.0.0/24", JsonObject? extra = null)
    {
        var config = new JsonObject
        {
            ["cniVersion"] = "1.1.0",
            ["name"] = "fabnet",
            ["type"] = "fabric",
            ["vni"] = 7,
            ["agentSocket"] = Socket,
            ["stateDir"] = Path.Combine(_folder, "state"),
            ["dataDir"] = Path.Combine(_folder, "attachments"),
            ["ipam"] = new JsonObject { ["type"] = "host-local", ["subnet"] = subnet, ["dataDir"] = Path.Combine(_folder, "ipam") },
        };
        foreach (var (key, value) in extra ?? [])
        {
            config[key] = value?.DeepClone();
        }
        return config.ToJsonString();
    }

    private static Dictionary<string, string> Env(string container, string? ns, string ifName = "eth0") => new()
    {
        ["CNI_CONTAINERID"] = container,
        ["CNI_NETNS"] = ns is null ? "" : $"/run/netns/{ns}",
        ["CNI_IFNAME"] = ifName,
        ["CNI_PATH"] = CniPath,
    };

    private string[] Allocations() => Directory.Exists(Path.Combine(_folder, "ipam", "fabnet"))
        ? [.. Directory.GetFiles(Path.Combine(_folder, "ipam", "fabnet")).Select(Path.GetFileName).Where(f => f!.Contains('.', StringComparison.Ordinal) && !f.StartsWith("last_reserved", StringComparison.Ordinal))!]
        : [];

    [Fact]
    public void TwoContainers_AddedThroughTheAgent_PingEachOther_ThenCheckDelAndGcCleanUp()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        StartAgent();
        var ns1 = _network.AddNamespace("c1");
        var ns2 = _network.AddNamespace("c2");
        var add1 = CniTests.Cni("ADD", Config(), Env("c1", ns1));
        Assert.True(add1.Code == 0, add1.Output?.ToJsonString());
        var add2 = CniTests.Cni("ADD", Config(), Env("c2", ns2));
        Assert.True(add2.Code == 0, add2.Output?.ToJsonString());

        var result = add2.Output!;
        Assert.Equal("1.1.0", result["cniVersion"]!.GetValue<string>());
        var interfaces = result["interfaces"]!.AsArray();
        Assert.Equal(2, interfaces.Count);
        Assert.Equal($"/run/netns/{ns2}", interfaces[1]!["sandbox"]!.GetValue<string>());
        var address = result["ips"]![0]!["address"]!.GetValue<string>();
        Assert.Equal(1, result["ips"]![0]!["interface"]!.GetValue<int>());
        Assert.StartsWith("10.77.0.", address, StringComparison.Ordinal);
        Assert.Contains("mtu 1442", TestNetwork.Exec(ns2, "ip", "link", "show", "eth0"), StringComparison.Ordinal);

        // Container to container through the agent's switch (vni 7): ARP answered from its table, frames over AF_PACKET.
        TestNetwork.Exec(ns1, "ping", "-c", "3", "-i", "0.2", "-W", "2", address.Split('/')[0]);
        Assert.Equal(2, _agent!.Switch.Vms.Count);
        Assert.All(_agent.Switch.Vms.Values, v => Assert.Equal(7u, v.Spec.Vni));
        Assert.True(_agent.Switch.Vms.Values.Sum(v => v.Counters.RxPackets) >= 6);
        // The veths keep their offloads (a container's TCP hands over 64 KiB segments, which the agent cuts), and the
        // bytes still arrive whole; "offloads": false turns them off on both ends of a third container's veth.
        Assert.Contains("tcp-segmentation-offload: on", TestNetwork.Exec(ns1, "ethtool", "-k", "eth0"), StringComparison.Ordinal);
        var transfer = TcpTransfer.Run(ns1, ns2, address.Split('/')[0], 20L * 1024 * 1024, TimeSpan.FromMinutes(2));
        Assert.Equal(transfer.SentSha256, transfer.ReceivedSha256);
        Assert.True(_agent.Switch.Vms.Values.Sum(v => v.LargeSegmentsCut) > 0, "no large segment from a container was cut");
        var ns3 = _network.AddNamespace("c3");
        var add3 = CniTests.Cni("ADD", Config(extra: new JsonObject { ["offloads"] = false }), Env("c3", ns3));
        Assert.True(add3.Code == 0, add3.Output?.ToJsonString());
        Assert.Contains("tcp-segmentation-offload: off", TestNetwork.Exec(ns3, "ethtool", "-k", "eth0"), StringComparison.Ordinal);
        Assert.Contains("tcp-segmentation-offload: off", Privileged.Run("ethtool", "-k", Fabric.Cni.Plugin.HostDevice("c3", "eth0")), StringComparison.Ordinal);
        Assert.Equal(0, CniTests.Cni("DEL", Config(), Env("c3", ns3)).Code);

        var check = CniTests.Cni("CHECK", Config(extra: new JsonObject { ["prevResult"] = result.DeepClone() }), Env("c2", ns2));
        Assert.True(check.Code == 0, check.Output?.ToJsonString());

        Assert.Equal(0, CniTests.Cni("DEL", Config(), Env("c1", ns1)).Code);
        Assert.Single(_agent.Switch.Vms);
        Assert.NotEqual(0, Privileged.TryRun("ip", "link", "show", Fabric.Cni.Plugin.HostDevice("c1", "eth0")).Code);
        Assert.Equal(0, CniTests.Cni("DEL", Config(), Env("c1", ns1)).Code);
        // CHECK notices what was broken behind its back.
        TestNetwork.Exec(ns2, "ip", "addr", "flush", "dev", "eth0");
        var broken = CniTests.Cni("CHECK", Config(extra: new JsonObject { ["prevResult"] = result.DeepClone() }), Env("c2", ns2));
        Assert.Equal(102, broken.Output!["code"]!.GetValue<int>());
        Assert.Contains("lost its address", broken.Output["msg"]!.GetValue<string>(), StringComparison.Ordinal);

        // GC: c2 is not among the valid attachments any more.
        var gc = CniTests.Cni("GC", Config(extra: new JsonObject { ["cni.dev/valid-attachments"] = new JsonArray() }), new Dictionary<string, string> { ["CNI_PATH"] = CniPath });
        Assert.True(gc.Code == 0, gc.Output?.ToJsonString());
        Assert.Empty(_agent.Switch.Vms);
        Assert.Empty(Allocations());
    }

    [Fact]
    public void AFailedAdd_LeavesNothing_AndDelAfterItAndTwiceSucceeds()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        StartAgent();
        var ns = _network.AddNamespace("c3");
        // A /31 is too small for host-local: its error comes back with its own code and words, in the spec's error shape
        // (the spec's example shows this very error; Debian's host-local 1.1.1 gives it code 999 rather than 7).
        var add = CniTests.Cni("ADD", Config(subnet: "192.168.0.0/31"), Env("c3", ns));
        Assert.Equal(1, add.Code);
        var example = JsonNode.Parse(File.ReadAllText(TestData.PathOf("cni", "spec-example-error-result.json")))!.AsObject();
        var output = add.Output!;
        Assert.Equal(example.Select(p => p.Key), output.Select(p => p.Key));
        Assert.True(output["code"]!.GetValue<int>() is 7 or 999, output.ToJsonString());
        Assert.Contains("ipam host-local:", output["msg"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Contains("too small to allocate from", output.ToJsonString(), StringComparison.Ordinal);
        Assert.NotEqual(0, Privileged.TryRun("ip", "link", "show", Fabric.Cni.Plugin.HostDevice("c3", "eth0")).Code);
        Assert.Equal(0, CniTests.Cni("DEL", Config(subnet: "192.168.0.0/31"), Env("c3", ns)).Code);
        Assert.Equal(0, CniTests.Cni("DEL", Config(subnet: "192.168.0.0/31"), Env("c3", null)).Code);
        Assert.Empty(_agent!.Switch.Vms);
    }

    [Fact]
    public void WithTheAgentDown_AddFailsAsTryAgainLater_AndUndoesTheVethAndTheAddress()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        var ns = _network.AddNamespace("c4");
        var add = CniTests.Cni("ADD", Config(), Env("c4", ns));
        Assert.Equal(11, add.Output!["code"]!.GetValue<int>());
        Assert.NotEqual(0, Privileged.TryRun("ip", "link", "show", Fabric.Cni.Plugin.HostDevice("c4", "eth0")).Code);
        Assert.NotEqual(0, Privileged.TryRun("ip", "netns", "exec", ns, "ip", "link", "show", "eth0").Code);
        Assert.Empty(Allocations());
        Assert.Equal(0, CniTests.Cni("DEL", Config(), Env("c4", ns)).Code);
    }

    [Fact]
    public void AChainedAdd_KeepsThePreviousResult_AndASecondAddOfTheSameInterfaceIsRefused()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        StartAgent();
        var ns = _network.AddNamespace("c5");
        // The spec's tuning request with its prevResult, pointed at this test's agent and folders.
        var request = JsonNode.Parse(File.ReadAllText(TestData.PathOf("cni", "spec-example-add-request-tuning-with-prevResult.json")))!.AsObject();
        request["agentSocket"] = Socket;
        request["dataDir"] = Path.Combine(_folder, "attachments");
        request["stateDir"] = Path.Combine(_folder, "state");
        request["ipam"] = new JsonObject { ["type"] = "host-local", ["subnet"] = "10.78.0.0/24", ["dataDir"] = Path.Combine(_folder, "ipam") };
        var add = CniTests.Cni("ADD", request.ToJsonString(), Env("c5", ns, "net1"));
        Assert.True(add.Code == 0, add.Output?.ToJsonString());
        var interfaces = add.Output!["interfaces"]!.AsArray();
        Assert.Equal(["cni0", "veth3243", "eth0", Fabric.Cni.Plugin.HostDevice("c5", "net1"), "net1"], interfaces.Select(i => i!["name"]!.GetValue<string>()));
        // tuning asked for this MAC through runtimeConfig.mac.
        Assert.Equal("00:11:22:33:44:66", interfaces[4]!["mac"]!.GetValue<string>());
        var ips = add.Output["ips"]!.AsArray();
        Assert.Equal("10.1.0.5/16", ips[0]!["address"]!.GetValue<string>());
        Assert.Equal(4, ips[1]!["interface"]!.GetValue<int>());
        var again = CniTests.Cni("ADD", request.ToJsonString(), Env("c5", ns, "net1"));
        Assert.Equal(100, again.Output!["code"]!.GetValue<int>());
        Assert.Contains("interface net1 already exists", again.Output["msg"]!.GetValue<string>(), StringComparison.Ordinal);
    }

    public void Dispose()
    {
        _server?.Dispose();
        _agent?.Dispose();
        _network.Dispose();
        Directory.Delete(_folder, recursive: true);
    }
}
