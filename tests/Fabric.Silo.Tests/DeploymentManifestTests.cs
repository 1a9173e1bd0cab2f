using System.Text.Json;
using Fabric.Testing;
using YamlDotNet.RepresentationModel;

namespace Fabric.Silo.Tests;

/// <summary>
/// No Kubernetes cluster runs here, so the manifests in deploy/kubernetes are read (YamlDotNet) and checked against the
/// real programs: the silo's configuration in the ConfigMap is checked by fabric-silo itself (unknown keys are refused),
/// ports and probes against that configuration, the termination grace against the silo's shutdown time, the dashboard's
/// arguments against fabric-dashboard's options.
/// </summary>
public sealed class DeploymentManifestTests
{
    private static readonly string Folder = Path.Combine(RepositoryRoot.Directory, "deploy", "kubernetes");

    private static List<YamlMappingNode> Documents(string file)
    {
        var stream = new YamlStream();
        using (var reader = new StreamReader(Path.Combine(Folder, file)))
        {
            stream.Load(reader);
        }
        return [.. stream.Documents.Select(d => (YamlMappingNode)d.RootNode)];
    }

    private static YamlMappingNode Kind(List<YamlMappingNode> documents, string kind) => documents.Single(d => Scalar(d, "kind") == kind);

    private static YamlNode At(YamlNode node, params string[] path)
    {
        foreach (var step in path)
        {
            node = int.TryParse(step, out var index) ? ((YamlSequenceNode)node).Children[index] : ((YamlMappingNode)node).Children[new YamlScalarNode(step)];
        }
        return node;
    }

    private static string Scalar(YamlNode node, params string[] path) => ((YamlScalarNode)At(node, path)).Value!;

    private static IEnumerable<YamlMappingNode> Items(YamlNode node, params string[] path) => ((YamlSequenceNode)At(node, path)).Children.Cast<YamlMappingNode>();

    [Fact]
    public void TheSilosManifest_MatchesTheSilosConfiguration_PortsProbesAndShutdown()
    {
        var documents = Documents("silo.yaml");
        var json = Scalar(Kind(documents, "ConfigMap"), "data", "silo.json");
        using var config = JsonDocument.Parse(json);
        var root = config.RootElement;

        // fabric-silo --check reads it as a silo would in its pod (the mounted files made where the pod has them, under a
        // folder of this test; the address and connection string as the pod's environment gives them).
        var folder = Directory.CreateTempSubdirectory("fabric-manifest-");
        try
        {
            var relocated = json.Replace("\"/etc/fabric/", $"\"{folder.FullName}/etc/fabric/", StringComparison.Ordinal);
            // The Secret's files as cert-manager writes them: the silo's certificate, its key and the authority's.
            using var authority = Fabric.Silo.Security.DevelopmentAuthority.Create("Fabric test authority");
            var issued = authority.IssueFiles(Path.Combine(folder.FullName, "issued"), Fabric.Silo.Security.CallerRole.Silo, "silo-0");
            var pki = Directory.CreateDirectory(Path.Combine(folder.FullName, "etc/fabric/pki")).FullName;
            File.Copy(issued.Certificate, Path.Combine(pki, "tls.crt"));
            File.Copy(issued.Key, Path.Combine(pki, "tls.key"));
            File.Copy(issued.Authority, Path.Combine(pki, "ca.crt"));
            Directory.CreateDirectory(Path.Combine(folder.FullName, "etc/fabric/trust"));
            File.WriteAllText(Path.Combine(folder.FullName, "etc/fabric/trust/root.json"), "{}");
            var path = Path.Combine(folder.FullName, "silo.json");
            File.WriteAllText(path, relocated);
            var (code, stdout, stderr) = Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"), ["--config", path, "--check"],
                environment: new Dictionary<string, string> { ["FABRIC_TABLE_CONNECTION_STRING"] = "UseDevelopmentStorage=true", ["FABRIC_ADVERTISED_ADDRESS"] = "10.244.1.7" });
            Assert.True(code == 0, $"fabric-silo --check: {stderr}{stdout}");
            Assert.Contains("certificate of silo 'silo-0'", stdout, StringComparison.Ordinal);
            // The same pod without its certificate does not start: its gateway would be open to anyone on the pod network.
            var insecure = System.Text.Json.Nodes.JsonNode.Parse(relocated)!.AsObject();
            insecure.Remove("security");
            File.WriteAllText(path, insecure.ToJsonString());
            Assert.Contains("security: required when advertisedAddress is not loopback", Processes.Run(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo"),
                ["--config", path, "--check"], environment: new Dictionary<string, string>
                {
                    ["FABRIC_TABLE_CONNECTION_STRING"] = "UseDevelopmentStorage=true", ["FABRIC_ADVERTISED_ADDRESS"] = "10.244.1.7",
                }).Stderr, StringComparison.Ordinal);
        }
        finally
        {
            folder.Delete(recursive: true);
        }

        var deployment = Kind(documents, "Deployment");
        Assert.Equal("0", Scalar(deployment, "spec", "strategy", "rollingUpdate", "maxUnavailable"));
        Assert.True(int.Parse(Scalar(deployment, "spec", "replicas")) >= 3);
        var pod = (YamlMappingNode)At(deployment, "spec", "template", "spec");
        var container = Items(pod, "containers").Single();
        var ports = Items(container, "ports").ToDictionary(p => Scalar(p, "name"), p => int.Parse(Scalar(p, "containerPort")));
        Assert.Equal(root.GetProperty("siloPort").GetInt32(), ports["silo"]);
        Assert.Equal(root.GetProperty("gatewayPort").GetInt32(), ports["gateway"]);
        var health = System.Net.IPEndPoint.Parse(root.GetProperty("healthListen").GetString()!);
        Assert.Equal(health.Port, ports["health"]);
        Assert.Equal(System.Net.IPAddress.Any, health.Address);
        // The probes: the silo's storage-free endpoints, on the health port (SiloProcessTests shows they answer).
        foreach (var (probe, endpoint) in new[] { ("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez") })
        {
            Assert.Equal(endpoint, Scalar(container, probe, "httpGet", "path"));
            Assert.Equal("health", Scalar(container, probe, "httpGet", "port"));
        }
        Assert.True(int.Parse(Scalar(pod, "terminationGracePeriodSeconds")) > root.GetProperty("shutdownSeconds").GetInt32(),
            "the grace period must outlast the silo's graceful shutdown");
        var environment = Items(container, "env").Select(e => Scalar(e, "name")).ToHashSet();
        Assert.Contains("FABRIC_ADVERTISED_ADDRESS", environment);
        Assert.Contains("FABRIC_TABLE_CONNECTION_STRING", environment);
        Assert.Contains("FABRIC_BLOB_CONNECTION_STRING", environment);
        Assert.Equal("status.podIP", Scalar(Items(container, "env").Single(e => Scalar(e, "name") == "FABRIC_ADVERTISED_ADDRESS"), "valueFrom", "fieldRef", "fieldPath"));
        // Every file the configuration names is mounted.
        var mounts = Items(container, "volumeMounts").Select(m => Scalar(m, "mountPath")).ToList();
        foreach (var file in new[] { root.GetProperty("security").GetProperty("certificate").GetString()!, root.GetProperty("security").GetProperty("key").GetString()!,
            root.GetProperty("repository").GetProperty("trustRoot").GetString()! })
        {
            Assert.Contains(mounts, m => file.StartsWith(m + "/", StringComparison.Ordinal));
        }

        var budget = Kind(documents, "PodDisruptionBudget");
        Assert.Equal(Scalar(deployment, "spec", "selector", "matchLabels", "app.kubernetes.io/name"), Scalar(budget, "spec", "selector", "matchLabels", "app.kubernetes.io/name"));
        Assert.Equal("gateway", Scalar(Items(Kind(documents, "Service"), "spec", "ports").Single(), "targetPort"));
    }

    [Fact]
    public void TheDashboardsArguments_AreOptionsFabricDashboardHas_AndItsAgentsRunWithTwoCapabilities()
    {
        var deployment = Kind(Documents("dashboard.yaml"), "Deployment");
        Assert.Equal("0", Scalar(deployment, "spec", "strategy", "rollingUpdate", "maxUnavailable"));
        var container = Items(deployment, "spec", "template", "spec", "containers").Single();
        var help = Processes.Run(Processes.Built("dashboard/Fabric.Dashboard", "fabric-dashboard"), ["--help"]).Stdout;
        var arguments = ((YamlSequenceNode)At(container, "args")).Children.Select(a => ((YamlScalarNode)a).Value!).ToList();
        foreach (var argument in arguments)
        {
            Assert.Contains(argument.Split('=')[0], help, StringComparison.Ordinal);
        }
        Assert.Contains("--clustering=azure-table", arguments);
        Assert.Contains(arguments, a => a.StartsWith("--certificate=", StringComparison.Ordinal));

        var agents = Kind(Documents("agent.yaml"), "DaemonSet");
        var pod = At(agents, "spec", "template", "spec");
        Assert.Equal("true", Scalar(pod, "hostNetwork"));
        var agent = Items(pod, "containers").Single();
        Assert.Equal(["NET_ADMIN", "NET_RAW"], ((YamlSequenceNode)At(agent, "securityContext", "capabilities", "add")).Children.Select(c => ((YamlScalarNode)c).Value).Order());
        // No storage account key on a hypervisor (it could rewrite grain state and membership): a read-only SAS for stacks only.
        Assert.DoesNotContain(Items(agent, "env"), e => Scalar(e, "name") == "FABRIC_TABLE_CONNECTION_STRING");
        // The same two as the systemd unit.
        Assert.Contains("AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN", File.ReadAllText(Path.Combine(RepositoryRoot.Directory, "deploy", "systemd", "fabric-agent.service")),
            StringComparison.Ordinal);
    }
}
