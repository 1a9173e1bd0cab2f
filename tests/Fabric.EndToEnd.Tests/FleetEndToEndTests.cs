using System.Diagnostics;
using System.Text.Json;
using Fabric.Repository;
using Fabric.Testing;

namespace Fabric.EndToEnd.Tests;

/// <summary>
/// The control plane issue's done-when, whole, with real processes: three fabric-silos clustered on redis-server behind
/// TLS, four fabric-agents whose configurations name no peer, route or key, VMs in two virtual networks that share an
/// address range, a confidential VM carried by secure under keys the hosts derived, that VM migrating to another host
/// while its kernel TCP transfer runs, and back again after a silo was killed with -9; fabric-dashboard as the cluster's
/// client all along.
/// </summary>
public class FleetEndToEndTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task FourAgentsNamingNoPeer_ThreeSilos_TwoIsolatedNetworks_SecureBetweenTwo_AndAVmMigratesDuringItsTransfer()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        Assert.SkipWhen(FleetTopology.Unavailable is not null, FleetTopology.Unavailable ?? "");
        using var repository = new SignedStackRepository();
        repository.Publish(StackPlugins.StdIPv4, "std-ipv4", "1.0.0", new StackProfile(16, 0, 0, 0, "default; clean paths"));
        repository.Publish(StackPlugins.Fec, "fec", "1.0.0", new StackProfile(30, 0.25, 5, 0.05, "low latency on lossy paths"));
        repository.Publish(StackPlugins.Secure, "secure", "1.0.0", new StackProfile(40, 0, 0, 0, "sensitive tenants", Encrypts: true));
        using var fleet = new FleetTopology(AppContext.BaseDirectory, repository.Path, repository.Root);
        string[] hosts = ["host-a", "host-b", "host-c", "host-d"];
        Eventually.True(() => hosts.All(fleet.Connected), Wait, "every agent connected to the cluster", fleet.Logs);

        // vm1 starts on host-a through its hook: confidential, in network 100 with vm3 (host-b). vm2 (host-c) and vm4
        // (host-d) are network 200.
        var confidential = new { security = "confidential", vni = 100 };
        Assert.Contains("\"ok\":true", fleet.Register("host-a", "vm1", confidential), StringComparison.Ordinal);
        Eventually.True(() => fleet.Ping("vm1", "10.100.0.3", 1).Code == 0 && fleet.Ping("vm2", "10.100.0.4", 1).Code == 0, Wait,
            "each network's VMs reach each other through programmed routes", () => Describe(fleet, hosts));
        Eventually.True(() => fleet.BoundStack("host-a", "vm1", "host-b") == "secure", Wait, "the confidential VM on secure", () => Describe(fleet, hosts));

        // Each host keeps paths only to the hosts that share one of its networks, and routes only to those networks' VMs.
        Assert.Equal(["host-b"], fleet.Paths("host-a"));
        Assert.Equal(["host-a"], fleet.Paths("host-b"));
        Assert.Equal(["host-d"], fleet.Paths("host-c"));
        Assert.Equal(["host-c"], fleet.Paths("host-d"));
        Assert.Null(fleet.RouteOf("host-a", fleet.Vm("vm4").Mac));
        Assert.Null(fleet.RouteOf("host-c", fleet.Vm("vm3").Mac));
        // Isolated: the same address range, and nothing crosses between the networks.
        Assert.NotEqual(0, fleet.Ping("vm1", "10.100.0.4", 2).Code);
        Assert.NotEqual(0, fleet.Ping("vm2", "10.100.0.3", 2).Code);

        // The dashboard runs against the cluster as a client (fabric-dashboard, nothing embedded) and shows its four hosts.
        fleet.StartDashboard();
        Eventually.True(() => fleet.DashboardHostCount() == 4, Wait, "the dashboard shows the cluster's four hosts", () => $"{fleet.DashboardHostCount()}; {fleet.Logs()}");

        // Two transfers at once, one per network, paced so that they last ~12 s; vm1 migrates from host-a to host-c
        // during its own, as libvirt does it: the destination's hook registers the VM (its NIC is not there yet), the NIC
        // appears on the destination, and the source's hook deregisters it.
        const long bytes = 48L * 1024 * 1024;
        var secured = Task.Run(() => TcpTransfer.Run(fleet.Vm("vm1").Namespace, fleet.Vm("vm3").Namespace, "10.100.0.3", bytes, TimeSpan.FromMinutes(2), 5401, 32),
            TestContext.Current.CancellationToken);
        var plain = Task.Run(() => TcpTransfer.Run(fleet.Vm("vm2").Namespace, fleet.Vm("vm4").Namespace, "10.100.0.4", bytes, TimeSpan.FromMinutes(2), 5402, 32),
            TestContext.Current.CancellationToken);
        await Task.Delay(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken);
        Assert.False(secured.IsCompleted, $"vm1's transfer ended before the migration: {(secured.IsFaulted ? secured.Exception : "completed")}");

        Assert.Contains("\"ok\":true", fleet.Register("host-c", "vm1", confidential), StringComparison.Ordinal);
        Eventually.True(() => ClaimOf(fleet, "vm1") == "host-c", Wait, "host-c's claim on vm1", () => fleet.SiloApi("/api/vms/vm1"));
        // A claim moves nothing while the source has the VM.
        Assert.Equal("host-a", fleet.RouteOf("host-b", fleet.Vm("vm1").Mac));
        fleet.MovePort("vm1", "host-a", "host-c");
        var moving = Stopwatch.StartNew();
        Assert.Contains("\"ok\":true", fleet.Deregister("host-a", "vm1"), StringComparison.Ordinal);
        Eventually.True(() => fleet.RouteOf("host-b", fleet.Vm("vm1").Mac) == "host-c", Wait, "host-b forwards vm1's frames to host-c", () => Describe(fleet, hosts));
        var rerouted = moving.Elapsed;

        TcpTransfer.Result movedResult, plainResult;
        try
        {
            movedResult = await secured;
            plainResult = await plain;
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or TimeoutException or InvalidOperationException)
        {
            throw new InvalidOperationException($"a transfer failed after the migration ({e.Message}): {Describe(fleet, hosts)}", e);
        }
        Assert.Equal(movedResult.SentSha256, movedResult.ReceivedSha256);
        Assert.Equal(plainResult.SentSha256, plainResult.ReceivedSha256);

        // Afterwards: host-a has no VM and no path; host-c carries vm1 to host-b on secure under the pair's derived keys,
        // and vm2 to host-d; host-d learned nothing of network 100.
        Eventually.True(() => fleet.Paths("host-a").Count == 0 && fleet.Paths("host-b").SequenceEqual(["host-c"])
            && fleet.Paths("host-c").SequenceEqual(["host-b", "host-d"]) && fleet.Paths("host-d").SequenceEqual(["host-c"]),
            Wait, "paths follow the VM", () => Describe(fleet, hosts));
        Eventually.True(() => fleet.BoundStack("host-c", "vm1", "host-b") == "secure", Wait, "vm1 on secure from its new host", () => Describe(fleet, hosts));
        Assert.Null(fleet.RouteOf("host-d", fleet.Vm("vm1").Mac));
        Assert.Null(fleet.RouteOf("host-b", fleet.Vm("vm2").Mac));
        using (var view = JsonDocument.Parse(fleet.SiloApi("/api/vms/vm1")))
        {
            Assert.Equal("host-c", view.RootElement.GetProperty("placement").GetProperty("hostId").GetString());
            Assert.Equal("confidential", view.RootElement.GetProperty("policy").GetProperty("security").GetString());
        }
        Assert.Equal(0, fleet.Ping("vm1", "10.100.0.3", 2).Code);
        // Both networks now have a VM on host-c, and still nothing crosses.
        Assert.NotEqual(0, fleet.Ping("vm2", "10.100.0.1", 2).Code);
        Assert.NotEqual(0, fleet.Ping("vm1", "10.100.0.2", 2).Code);

        // A silo dies (kill -9) and vm1 migrates back: the two silos left program the fleet, and the VM keeps its policy.
        fleet.KillSilo(0);
        var killed = Stopwatch.StartNew();
        Assert.Contains("\"ok\":true", fleet.Register("host-a", "vm1", confidential), StringComparison.Ordinal);
        fleet.MovePort("vm1", "host-c", "host-a");
        Eventually.True(() => ClaimOf(fleet, "vm1") == "host-a", Wait, "host-a's claim on vm1 with a silo dead", () => fleet.SiloApi("/api/vms/vm1"));
        Assert.Contains("\"ok\":true", fleet.Deregister("host-c", "vm1"), StringComparison.Ordinal);
        Eventually.True(() => fleet.RouteOf("host-b", fleet.Vm("vm1").Mac) == "host-a" && fleet.Paths("host-c").SequenceEqual(["host-d"])
            && fleet.BoundStack("host-a", "vm1", "host-b") == "secure" && fleet.Ping("vm1", "10.100.0.3", 1).Code == 0,
            TimeSpan.FromSeconds(90), "vm1 back on host-a, on secure, with silo 0 dead", () => Describe(fleet, hosts));
        var back = killed.Elapsed;
        // The dashboard goes on through the gateways left.
        Eventually.True(() => fleet.DashboardHostCount() == 4, Wait, "the dashboard with a silo dead", () => $"{fleet.DashboardHostCount()}; {fleet.Logs()}");

        var report = $"vm1 migrated during its transfer: host-b forwarded to host-c {rerouted.TotalMilliseconds:F0} ms after host-a deregistered it; "
            + $"{movedResult.Bytes / 1048576} MiB arrived whole in {movedResult.Elapsed.TotalSeconds:F1} s (network 200's transfer beside it: {plainResult.Elapsed.TotalSeconds:F1} s); "
            + $"with silo 0 killed, vm1 was back on host-a and reachable on secure {back.TotalSeconds:F1} s after the kill";
        TestContext.Current.SendDiagnosticMessage(report);
        Console.WriteLine(report);
    }

    private static string? ClaimOf(FleetTopology fleet, string vm)
    {
        var json = fleet.SiloApi($"/api/vms/{vm}");
        if (json.Length == 0)
        {
            return null;
        }
        using var view = JsonDocument.Parse(json);
        return view.RootElement.TryGetProperty("claim", out var claim) && claim.ValueKind == JsonValueKind.Object ? claim.GetProperty("hostId").GetString() : null;
    }

    /// <summary>The processes' log tail first, then each host's status and vm1's view: CI shows only the last lines of a failure.</summary>
    private static string Describe(FleetTopology fleet, IEnumerable<string> hosts) =>
        fleet.Logs() + "\n--- seen when the wait ended ---\n" + string.Join("\n", hosts.Select(h => $"{h}: {fleet.Status(h)}"))
        + "\nvm1: " + fleet.SiloApi("/api/vms/vm1");
}
