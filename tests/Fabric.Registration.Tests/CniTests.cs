using System.Text.Json.Nodes;
using Fabric.Testing;

namespace Fabric.Registration.Tests;

/// <summary>The real fabric-cni binary, called the way a container runtime calls it.</summary>
public class CniTests
{
    private static string Plugin => Processes.Built("dataplane-agent/Fabric.Cni", "fabric-cni");

    private static string Data(string name) => File.ReadAllText(TestData.PathOf("cni", name));

    internal static (int Code, JsonObject? Output, string Stderr) Cni(string command, string stdin, Dictionary<string, string>? env = null)
    {
        var environment = new Dictionary<string, string> { ["CNI_COMMAND"] = command };
        foreach (var (key, value) in env ?? [])
        {
            environment[key] = value;
        }
        var (code, stdout, stderr) = Processes.Run(Plugin, [], stdin, environment);
        return (code, string.IsNullOrWhiteSpace(stdout) ? null : JsonNode.Parse(stdout)!.AsObject(), stderr);
    }

    /// <summary>What a runtime hands each plugin of a network configuration list: the plugin object plus cniVersion and name.</summary>
    internal static IEnumerable<string> PluginConfigs(string conflist)
    {
        var list = JsonNode.Parse(conflist)!.AsObject();
        foreach (var plugin in list["plugins"]!.AsArray())
        {
            var config = plugin!.DeepClone().AsObject();
            config["cniVersion"] = list["cniVersion"]!.DeepClone();
            config["name"] = list["name"]!.DeepClone();
            config.Remove("capabilities");
            yield return config.ToJsonString();
        }
    }

    [Fact]
    public void Version_AnswersInTheSpecsShape()
    {
        var example = JsonNode.Parse(Data("spec-example-version-result.json"))!.AsObject();
        var (code, output, _) = Cni("VERSION", """{"cniVersion":"0.4.0"}""");
        Assert.Equal(0, code);
        Assert.NotNull(output);
        Assert.Equal(example.Select(p => p.Key), output.Select(p => p.Key));
        Assert.Equal("0.4.0", output["cniVersion"]!.GetValue<string>());
        var supported = output["supportedVersions"]!.AsArray().Select(v => v!.GetValue<string>()).ToList();
        Assert.Subset(example["supportedVersions"]!.AsArray().Select(v => v!.GetValue<string>()).ToHashSet(), supported.ToHashSet());
        Assert.Contains("1.1.0", supported);
    }

    public static TheoryData<string, int, string> TestdataConfigs => new()
    {
        // Valid configurations get past the configuration check and stop at the environment (no CNI_NETNS here): code 4.
        { "plugins-basic-ptp.json", 4, "CNI_CONTAINERID is not set" },
        { "spec-example-add-request-bridge.json", 4, "CNI_CONTAINERID is not set" },
        { "spec-example-add-request-portmap-with-prevResult.json", 4, "CNI_CONTAINERID is not set" },
        { "spec-example-add-request-tuning-with-prevResult.json", 4, "CNI_CONTAINERID is not set" },
        // Refused ones, with the spec's codes.
        { "plugins-l2bridge-sample.conf", 7, "cniVersion is missing" },
        { "plugins-win-bridge-sample-v2.conf", 7, "cniVersion is missing" },
        { "plugins-win-overlay-sample-v2.conf", 1, "incompatible CNI version 0.2.0" },
        { "spec-example-netconf-dbnet.jsonc", 6, "failed to decode the network configuration" },
        { "spec-example-runtimeConfig-fragment-INVALID.json", 6, "failed to decode the network configuration" },
        { "spec-example-error-result.json", 7, "name is missing" },
    };

    [Theory]
    [MemberData(nameof(TestdataConfigs))]
    public void TestdataConfigurations_AreAcceptedOrRefusedWithTheSpecsCodes(string file, int expectedCode, string expectedMessage)
    {
        var (code, output, _) = Cni("ADD", Data(file));
        Assert.Equal(1, code);
        Assert.Equal(expectedCode, output!["code"]!.GetValue<int>());
        Assert.Contains(expectedMessage, output["msg"]!.GetValue<string>(), StringComparison.Ordinal);
        // Every error carries the spec's fields.
        Assert.Equal(["cniVersion", "code", "msg", "details"], output.Select(p => p.Key));
    }

    [Theory]
    [InlineData("plugins-chained-bridge-bandwidth.conflist")]
    [InlineData("plugins-chained-ptp-bandwidth.conflist")]
    [InlineData("plugins-network-chain-test.conflist")]
    public void EveryPluginOfTheTestdataLists_IsAcceptedAsConfiguration(string file)
    {
        foreach (var config in PluginConfigs(Data(file)))
        {
            var (code, output, _) = Cni("ADD", config);
            Assert.Equal(1, code);
            Assert.Equal(4, output!["code"]!.GetValue<int>());
        }
    }

    [Theory]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","vni":"seven"}""", 2, "vni = \"seven\"")]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","vni":0}""", 2, "vni = 0")]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","mtu":20}""", 2, "mtu = 20")]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","offloads":"no"}""", 2, "offloads = \"no\"")]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","policy":{"workload":"gaming"}}""", 2, "policy.workload: 'gaming'")]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","policy":{"allow":"fec"}}""", 2, "policy.allow = \"fec\"")]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"fabric","ipam":{"type":"../../bin/sh"}}""", 7, "ipam.type must name a plugin")]
    [InlineData("""{"cniVersion":"1.1.0","name":"-bad","type":"fabric"}""", 7, "name '-bad'")]
    [InlineData("""[1,2]""", 6, "failed to decode")]
    public void BadFabricSettings_AreRefusedNamingTheKeyAndValue(string config, int expectedCode, string expected)
    {
        var (code, output, _) = Cni("ADD", config);
        Assert.Equal(1, code);
        Assert.Equal(expectedCode, output!["code"]!.GetValue<int>());
        Assert.Contains(expected, output["msg"]!.GetValue<string>(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("CNI_CONTAINERID", "-leading-dash", "CNI_CONTAINERID '-leading-dash' must start with a letter or digit")]
    [InlineData("CNI_IFNAME", "this-name-is-too-long", "CNI_IFNAME 'this-name-is-too-long' is not a valid interface name")]
    [InlineData("CNI_NETNS", "/run/netns/fabric-no-such-namespace", "CNI_NETNS '/run/netns/fabric-no-such-namespace' does not exist")]
    public void BadEnvironment_IsRefusedWithCode4NamingTheVariable(string variable, string value, string expected)
    {
        var env = new Dictionary<string, string> { ["CNI_CONTAINERID"] = "c1", ["CNI_NETNS"] = "/proc/self/ns/net", ["CNI_IFNAME"] = "eth0", [variable] = value };
        var (code, output, _) = Cni("ADD", """{"cniVersion":"1.1.0","name":"n","type":"fabric"}""", env);
        Assert.Equal(1, code);
        Assert.Equal(4, output!["code"]!.GetValue<int>());
        Assert.Contains(expected, output["msg"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Contains("CNI_COMMAND 'PATCH'", Cni("PATCH", """{"cniVersion":"1.1.0","name":"n","type":"fabric"}""").Output!["msg"]!.GetValue<string>(), StringComparison.Ordinal);
    }

    [Fact]
    public void Status_SaysWhetherTheAgentCanServeAdd()
    {
        using var rig = new HookRig();
        var config = $$"""{"cniVersion":"1.1.0","name":"n","type":"fabric","agentSocket":"{{rig.Socket}}"}""";
        var (code, output, _) = Cni("STATUS", config);
        Assert.Equal(1, code);
        Assert.Equal(50, output!["code"]!.GetValue<int>());
        Assert.Contains("does not exist (is fabric-agent running?)", output["details"]!.GetValue<string>(), StringComparison.Ordinal);
        rig.StartAgent();
        Assert.Equal((0, (JsonObject?)null), (Cni("STATUS", config).Code, Cni("STATUS", config).Output));
    }

    [Fact]
    public void TheShippedExampleNetwork_IsAValidConfiguration_AndInstallsAndUninstalls()
    {
        var deploy = Path.Combine(RepositoryRoot.Directory, "deploy", "cni");
        var config = Assert.Single(PluginConfigs(File.ReadAllText(Path.Combine(deploy, "10-fabric.conflist"))));
        Assert.Equal(4, Cni("ADD", config).Output!["code"]!.GetValue<int>());
        var root = Directory.CreateTempSubdirectory("fabric-cni-root-").FullName;
        try
        {
            var environment = new Dictionary<string, string> { ["FABRIC_ROOT"] = root };
            Assert.Equal(0, Processes.Run(Path.Combine(deploy, "install.sh"), [Plugin], environment: environment).Code);
            Assert.True(File.Exists(Path.Combine(root, "opt/cni/bin/fabric")));
            Assert.True(File.Exists(Path.Combine(root, "etc/cni/net.d/10-fabric.conflist")));
            Assert.Equal(0, Processes.Run(Path.Combine(deploy, "uninstall.sh"), ["--purge"], environment: environment).Code);
            Assert.False(File.Exists(Path.Combine(root, "opt/cni/bin/fabric")));
            Assert.False(File.Exists(Path.Combine(root, "etc/cni/net.d/10-fabric.conflist")));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
