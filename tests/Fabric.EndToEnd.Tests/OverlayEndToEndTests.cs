using System.Text.Json;
using Fabric.Hal.Linux;
using Fabric.Testing;
using Fabric.Wire;

namespace Fabric.EndToEnd.Tests;

/// <summary>
/// VM-to-VM traffic through two real fabric-agent processes, a veth underlay and fabric-linkem, with the kernel's own
/// ping and TCP inside the VM namespaces.
/// </summary>
public class OverlayEndToEndTests
{
    private static string Bin => AppContext.BaseDirectory;

    [Theory]
    [InlineData("std-ipv4")]
    [InlineData("std-ipv6")]
    public void VmsPingAcrossHosts_IPv4AndIPv6_BothWays(string stack)
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(Bin, stack);
        foreach (var (from, to) in new[] { ("vm1", "vm3"), ("vm3", "vm1"), ("vm2", "vm3") })
        {
            var v4 = topology.Ping(from, topology.Vm(to).IPv4);
            Assert.True(v4.Code == 0, $"{stack}: ping {from} → {to} {topology.Vm(to).IPv4} failed:\n{v4.Output}");
            var v6 = topology.Ping(from, topology.Vm(to).IPv6);
            Assert.True(v6.Code == 0, $"{stack}: ping {from} → {to} {topology.Vm(to).IPv6} failed:\n{v6.Output}");
        }
        var path = topology.Status("host-a").GetProperty("paths")[0];
        Assert.Equal(stack, path.GetProperty("stack").GetString());
        Assert.True(path.GetProperty("sent").GetProperty("datagrams").GetInt64() >= 12);
    }

    [Fact]
    public void A200MegabyteTransfer_ArrivesWithTheSameSha256()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(Bin, "std-ipv4");
        Assert.Equal(0, topology.Ping("vm1", "10.100.0.3", 1).Code);
        var result = TcpTransfer.Run(topology.Vm("vm1").Namespace, topology.Vm("vm3").Namespace, "10.100.0.3", 200L * 1024 * 1024, TimeSpan.FromMinutes(4));
        Assert.Equal(result.SentSha256, result.ReceivedSha256);
        TestContext.Current.TestOutputHelper?.WriteLine($"200 MiB in {result.Elapsed.TotalSeconds:0.0} s = {result.MegabitsPerSecond:0} Mbit/s");
        // The bytes crossed every offload on the way, and still hash the same: vm1's NIC handed over large segments the
        // agent cut, host-a sent runs of datagrams as one segmented send, and host-b joined runs of segments for vm3.
        var a = topology.Status("host-a");
        var b = topology.Status("host-b");
        var vm1 = a.GetProperty("vms").EnumerateArray().Single(v => v.GetProperty("id").GetString() == "vm1").GetProperty("offloads");
        var vm3 = b.GetProperty("vms").EnumerateArray().Single(v => v.GetProperty("id").GetString() == "vm3").GetProperty("offloads");
        var sends = a.GetProperty("underlay").GetProperty("offloads").EnumerateArray().Sum(o => o.GetProperty("segmentedSends").GetInt64());
        TestContext.Current.TestOutputHelper?.WriteLine($"vm1: {vm1}; vm3: {vm3}; host-a segmented sends: {sends}");
        Assert.True(vm1.GetProperty("largeSegmentsCut").GetInt64() > 0, $"vm1's large segments: {vm1}");
        Assert.True(vm3.GetProperty("joinedSends").GetInt64() > 0, $"vm3's joined sends: {vm3}");
        Assert.True(sends > 0, "host-a sent no segmented run");
    }

    [Fact]
    public void IsolationSpoofingAndLocalSwitching_HoldWithRealTraffic()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(Bin, "std-ipv4");
        Assert.Equal(0, topology.Ping("vm1", "10.100.0.3", 1).Code);

        // vm4 is in network 200: nobody in network 100 answers it, whatever the addresses.
        Assert.NotEqual(0, topology.Ping("vm4", "10.100.0.3", 2).Code);
        Assert.NotEqual(0, topology.Ping("vm4", "10.100.0.1", 2).Code);

        // Same-host traffic never reaches the underlay: 2 × 25 pings and their replies add nothing to what the
        // agents send on the underlay, beyond the VMs' own multicast chatter (IPv6 MLD and router solicitations are flooded).
        var before = topology.UnderlayDatagrams();
        Assert.Equal(0, topology.Ping("vm1", "10.100.0.2", 25, "-i", "0.02").Code);
        Assert.Equal(0, topology.Ping("vm2", "fd00:100::1", 25, "-i", "0.02").Code);
        var crossed = topology.UnderlayDatagrams() - before;
        Assert.True(crossed < 10, $"{crossed} frames crossed the underlay during 100 same-host packets");

        // A frame with vm2's MAC sent from vm1's namespace is dropped and counted on vm1's port.
        var vm1 = topology.Vm("vm1");
        using (var raw = NetworkNamespace.Run(vm1.Namespace, () => AfPacketPort.Open(vm1.Device)))
        {
            var frame = new byte[60];
            MacAddress.TryParse(topology.Vm("vm3").Mac, out var vm3Mac);
            MacAddress.TryParse(topology.Vm("vm2").Mac, out var vm2Mac);
            EthernetWriter.Write(frame, vm3Mac, vm2Mac, EtherTypes.IPv4);
            for (var i = 0; i < 5; i++)
            {
                Assert.Equal(Fabric.Hal.PortResult.Ok, raw.Transmit(frame));
            }
        }
        Eventually.True(() => SpoofDrops(topology) >= 5, TimeSpan.FromSeconds(5), "counting spoofed frames", () => $"{SpoofDrops(topology)} counted");
    }

    [Fact]
    public void MaximumSizeFrames_NeverBlackHole()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(Bin, "std-ipv4");
        // The VMs' MTU is 1500, the path carries 1442: a DF ping of 1500 bytes gets "frag needed" with the path MTU...
        var tooBig = topology.Ping("vm1", "10.100.0.3", 1, "-s", "1472", "-M", "do");
        Assert.Contains("mtu = 1442", tooBig.Output + topology.Ping("vm1", "10.100.0.3", 1, "-s", "1472", "-M", "do").Output, StringComparison.Ordinal);
        // ...a non-DF one is fragmented and answered...
        Assert.Equal(0, topology.Ping("vm1", "10.100.0.3", 2, "-s", "1472", "-M", "dont").Code);
        // ...IPv6 learns the path MTU from Packet Too Big...
        topology.Ping("vm1", "fd00:100::3", 1, "-s", "1452");
        Assert.Equal(0, topology.Ping("vm1", "fd00:100::3", 2, "-s", "1452").Code);
        // ...and TCP with a 1500-byte MTU completes through path MTU discovery.
        var result = TcpTransfer.Run(topology.Vm("vm3").Namespace, topology.Vm("vm1").Namespace, "fd00:100::1", 20L * 1024 * 1024, TimeSpan.FromMinutes(2));
        Assert.Equal(result.SentSha256, result.ReceivedSha256);
    }

    [Fact]
    public void TransferOverADelayedLossyLink_StillCompletesCorrectly()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(Bin, "std-ipv4");
        topology.Emulator("set both delay=15ms loss=1%");
        var ping = topology.Ping("vm1", "10.100.0.3", 5);
        Assert.Contains("time=3", ping.Output, StringComparison.Ordinal);
        var result = TcpTransfer.Run(topology.Vm("vm1").Namespace, topology.Vm("vm3").Namespace, "10.100.0.3", 10L * 1024 * 1024, TimeSpan.FromMinutes(3));
        Assert.Equal(result.SentSha256, result.ReceivedSha256);
        using var stats = JsonDocument.Parse(topology.Emulator("stats"));
        Assert.True(stats.RootElement.GetProperty("a2b").GetProperty("Lost").GetInt64() > 10, "the emulator should have dropped some of the transfer's packets");
    }

    [Fact]
    public void TheLocalApiCli_AttachesAndDetachesVms_MetricsAreServed_AndShutdownIsClean()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        using var topology = new OverlayTopology(Bin, "std-ipv4");
        Assert.Equal(0, topology.Ping("vm2", "10.100.0.3", 1).Code);

        var detach = topology.Ctl("host-a", "detach-vm", "vm2");
        Assert.True(detach.Code == 0, detach.Output);
        Assert.NotEqual(0, topology.Ping("vm2", "10.100.0.3", 2).Code);
        var refused = topology.Ctl("host-a", "attach-vm", "id=vm2", $"device={topology.Vm("vm2").HostDevice}", "vni=100", "mac=not-a-mac");
        Assert.Equal(1, refused.Code);
        Assert.Contains("vm.mac: 'not-a-mac' is not a unicast MAC address", refused.Output, StringComparison.Ordinal);
        var attach = topology.Ctl("host-a", "attach-vm", "id=vm2", $"device={topology.Vm("vm2").HostDevice}", "vni=100", $"mac={topology.Vm("vm2").Mac}",
            "ipv4=10.100.0.2", "ipv6=fd00:100::2");
        Assert.True(attach.Code == 0, attach.Output);
        Assert.Equal(0, topology.Ping("vm2", "10.100.0.3", 2).Code);
        Assert.Contains("\"vm2\"", topology.Ctl("host-a", "status").Output, StringComparison.Ordinal);

        var metrics = topology.Metrics("host-a");
        Assert.Contains("fabric_vm_packets_total{", metrics, StringComparison.Ordinal);
        Assert.Contains("vm=\"vm2\"", metrics, StringComparison.Ordinal);
        Assert.Contains("fabric_path_datagrams_total{", metrics, StringComparison.Ordinal);
        Assert.Contains("fabric_underlay_offloads_total{", metrics, StringComparison.Ordinal);
        Assert.Contains("fabric_vm_offloads_total{", metrics, StringComparison.Ordinal);

        Assert.Equal(0, topology.StopAgent("host-a"));
        Assert.False(File.Exists(topology.SocketA), "the API socket should be removed on shutdown");
    }

    private static long SpoofDrops(OverlayTopology topology)
    {
        foreach (var vm in topology.Status("host-a").GetProperty("vms").EnumerateArray())
        {
            if (vm.GetProperty("id").GetString() == "vm1" && vm.GetProperty("drops").TryGetProperty("SpoofedSource", out var count))
            {
                return count.GetInt64();
            }
        }
        return 0;
    }
}
