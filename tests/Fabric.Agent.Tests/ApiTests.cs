using Fabric.Testing;

namespace Fabric.Agent.Tests;

public class ApiTests
{
    [Theory]
    [InlineData("""{"op":"attach-vm","vm":{"id":"vm9","device":"tap9","vni":100,"mac":"zz:00:00:00:00:01"}}""", "vm.mac: 'zz:00:00:00:00:01' is not a unicast MAC address")]
    [InlineData("""{"op":"attach-vm","vm":{"id":"vm9","device":"tap9","vni":16777216,"mac":"02:00:00:00:00:09"}}""", "vm.vni: 16777216 does not fit 24 bits")]
    [InlineData("""{"op":"attach-vm","vm":{"id":"vm1","device":"tap9","vni":100,"mac":"02:00:00:00:00:09"}}""", "VM 'vm1' is already attached")]
    [InlineData("""{"op":"attach-vm","vm":{"id":"vm9","device":"tap9","vni":100,"mac":"02:00:00:00:01:02"}}""", "already belongs to vm2")]
    [InlineData("""{"op":"set-route","route":{"vni":100,"mac":"02:00:00:00:07:07","host":"host-z"}}""", "host 'host-z' is not a known remote host")]
    [InlineData("""{"op":"set-route","route":{"vni":100,"mac":"02:00:00:00:01:01","host":"host-b"}}""", "is local VM 'vm1'")]
    [InlineData("""{"op":"add-host","host":{"id":"host-c","ipv4":"10.0.0.999"}}""", "host.ipv4: '10.0.0.999' is not an IPv4 address")]
    [InlineData("""{"op":"add-host","host":{"id":"host-c","ipv4":"127.0.0.1","stack":"quic"}}""", "stack 'quic' is not loaded")]
    [InlineData("""{"op":"detach-vm","id":"vm77"}""", "no VM 'vm77' is attached")]
    [InlineData("""{"op":"remove-host","id":"host-z"}""", "no remote host 'host-z'")]
    [InlineData("""{"op":"remove-host"}""", "remove-host: id")]
    [InlineData("""{"op":"reboot"}""", "unknown op 'reboot'")]
    [InlineData("""{"op":"attach-vm"}""", "missing its argument")]
    public void BadRequests_AreRefusedNamingTheProblem_AndChangeNothing(string json, string expected)
    {
        using var hosts = new TwoHosts();
        var before = hosts.A.Switch.Table.Endpoints;
        var response = hosts.A.Handle(AgentConfig.Parse<ApiRequest>(json));
        Assert.False(response.Ok);
        Assert.Contains(expected, response.Error, StringComparison.Ordinal);
        Assert.Equal(before, hosts.A.Switch.Table.Endpoints);
        Assert.Equal(3, hosts.A.Switch.Vms.Count);
    }

    [Fact]
    public void RotateKey_WithoutAControlPlane_IsRefusedSayingWhereThePathKeysComeFrom()
    {
        using var hosts = new TwoHosts();
        var refused = hosts.A.Handle(new ApiRequest("rotate-key"));
        Assert.False(refused.Ok);
        Assert.Contains("without a control plane", refused.Error, StringComparison.Ordinal);
        Assert.Contains("overlayKey", refused.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void RemovingAHost_TakesItsPathAndItsRoutes_SoNothingGoesThereOrComesFromIt()
    {
        using var hosts = new TwoHosts();
        var stacksBefore = hosts.A.Switch.StackHost.Entries().Single(e => e.Id == "std-ipv4").Bindings;
        Assert.True(hosts.A.Handle(new ApiRequest("remove-host", Id: "host-b")).Ok);
        Assert.False(hosts.A.Switch.Paths.ContainsKey("host-b"));
        Assert.DoesNotContain(hosts.A.Switch.Table.Endpoints, e => e.RemoteHost == "host-b");
        // Its slot 0 and the fallback slot were released.
        Assert.Equal(stacksBefore - 2, hosts.A.Switch.StackHost.Entries().SingleOrDefault(e => e.Id == "std-ipv4")?.Bindings ?? 0);
        // vm3's frames reach host-a but no longer any VM there.
        hosts.Vm("vm3").Transmit(Frames.Udp(TwoHosts.Mac3, TwoHosts.Mac1, "10.0.0.3", "10.0.0.1", 100));
        var buffer = new byte[2048];
        Assert.Equal(Fabric.Hal.PortResult.Timeout, hosts.Vm("vm1").Receive(buffer, out _, TimeSpan.FromMilliseconds(300)));
        Assert.False(hosts.A.Handle(new ApiRequest("remove-host", Id: "host-b")).Ok);
    }

    [Fact]
    public void UnknownFieldsInARequest_AreRefused()
    {
        Assert.Throws<System.Text.Json.JsonException>(() => AgentConfig.Parse<ApiRequest>("""{"op":"status","verbose":true}"""));
    }

    [Fact]
    public void ConfigProblems_AreAllNamed()
    {
        var path = Path.GetTempFileName();
        File.WriteAllText(path, """
            { "hostId": "", "underlay": { "ipv4": "::1", "mtu": 100 }, "stacks": ["/nope.dll"], "apiSocket": "/tmp/x.sock",
              "metricsListen": "0.0.0.0:9464",
              "controlPlane": { "gateways": ["silo:30000"], "clustering": "zookeeper", "reportMilliseconds": 5, "keyOverlapSeconds": 5, "keyRotationHours": 1e300 },
              "vms": [ { "id": "vm1", "device": "this-name-is-too-long", "vni": 1, "mac": "ff:ff:ff:ff:ff:ff" } ] }
            """);
        try
        {
            var e = Assert.Throws<FormatException>(() => AgentConfig.Load(path));
            foreach (var field in new[] { "hostId: required", "underlay.ipv4: '::1'", "underlay.mtu: 100", "stacks[0]", "metricsListen", "vms[0].device", "vms[0].mac",
                "controlPlane.gateways[0]: 'silo:30000'", "controlPlane.clustering: 'zookeeper'", "controlPlane.reportMilliseconds: 5",
                "controlPlane.keyOverlapSeconds: 5 is outside 10..86400", "controlPlane.keyRotationHours: 1E+300 must be 0 (never) or from twice the overlap",
                "controlPlane.certificate: required (with key and authority) unless every gateway is on loopback" })
            {
                Assert.Contains(field, e.Message, StringComparison.Ordinal);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("""{ "gateways": ["10.0.0.1:30000"] }""", "controlPlane.certificate: required (with key and authority) unless every gateway is on loopback")]
    [InlineData("""{ "clustering": "azure-table" }""", "controlPlane.certificate: required (with key and authority) unless every gateway is on loopback")]
    [InlineData("""{ "gateways": ["10.0.0.1:30000"], "certificate": "/nonexistent/host.pem" }""", "controlPlane.certificate: '/nonexistent/host.pem' does not exist")]
    [InlineData("""{ "gateways": ["10.0.0.1:30000"], "certificate": "/nonexistent/host.pem" }""", "controlPlane.key: required with the other two")]
    public void AControlPlaneBeyondLoopback_NeedsTheHostsCertificate(string controlPlane, string expected)
    {
        var path = Path.GetTempFileName();
        File.WriteAllText(path, $$"""{ "hostId": "host-a", "underlay": { "ipv4": "127.0.0.1" }, "stacks": [], "apiSocket": "/tmp/x.sock", "controlPlane": {{controlPlane}} }""");
        try
        {
            Assert.Contains(expected, Assert.Throws<FormatException>(() => AgentConfig.Load(path)).Message, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Detach_ReleasesThePortAndTheTableEntry()
    {
        using var hosts = new TwoHosts();
        TwoHosts.Ok(hosts.A.Handle(new ApiRequest("detach-vm", Id: "vm2")));
        Assert.False(hosts.A.Switch.Vms.ContainsKey("vm2"));
        Assert.Null(hosts.A.Switch.Table.FindByMac(100, TwoHosts.Mac2));
        Assert.Equal(Fabric.Hal.PortResult.Closed, hosts.Vm("vm2").Transmit(new byte[60]));
    }
}
