using System.Net;
using Fabric.Agent;
using Fabric.Agent.ControlPlane;
using Fabric.Hal;
using Fabric.Registration;
using Fabric.Silo.Security;
using Fabric.Testing;
using Fabric.Wire;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Silo.Tests;

/// <summary>Runs alone: its timing (reports, renewals, a silo restart) must not compete with the clusters of other tests.</summary>
[CollectionDefinition(nameof(AgentLinkTests), DisableParallelization = true)]
public sealed class AgentLinkCollection;

/// <summary>
/// Real agents (real UDP underlay on loopback, VM ports in memory) linked to a real silo (Orleans over TCP on loopback,
/// memory storage): registration, placement, telemetry from real probes, decisions applied hitlessly on both ends and
/// acknowledged, fail-static while the silo is gone, reconvergence without swaps when it returns, and an agent that
/// restarts recovering its bindings from the control plane.
/// </summary>
[Collection(nameof(AgentLinkTests))]
public sealed class AgentLinkTests
{
    private static readonly MacAddress Mac1 = new(0x02_00_00_00_01_01);
    private static readonly MacAddress Mac2 = new(0x02_00_00_00_01_02);
    private static readonly MacAddress Mac3 = new(0x02_00_00_00_01_03);

    /// <summary>swap-test stands in for a loss-tolerant stack here: the selector reads only the profile.</summary>
    private static readonly StackInfo SwapTest = new("swap-test", "0.1.0", "ipv4", 16, 0.25, 1, 0.1, false, "test stack");

    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task AgentsRegisterReportAndObey_StayStaticWithoutTheSilo_AndRecoverAfterEitherRestarts()
    {
        var cancel = TestContext.Current.CancellationToken;
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var state = Directory.CreateTempSubdirectory("fabric-link-").FullName;
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
        await using var hosts = new LinkedHosts(gatewayPort, Path.Combine(state, "a"));
        try
        {
            // vm1 comes through the hook API with a policy pinning swap-test; vm3 is attached directly (default policy).
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Pin: "swap-test", Vni: 100), "metadata", "libvirt"))));

            // Registered, inventory and stacks known, VMs placed, the path measured by real probes.
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IHostGrain>("host-a").GetInfoAsync())?.LoadedStacks.Contains("swap-test") == true
                && (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement?.HostId == "host-a"
                && (await silo.Grains.GetGrain<IVmGrain>("vm3").GetAsync()).Placement?.HostId == "host-b"
                && await silo.Grains.GetGrain<IHostGrain>("host-a").GetPathAsync("host-b") is { RttMs: > 0 and < 100, Loss: 0 },
                Wait, "registration, placement, telemetry", async () => $"info {await silo.Grains.GetGrain<IHostGrain>("host-a").GetInfoAsync()}; "
                    + $"path {await silo.Grains.GetGrain<IHostGrain>("host-a").GetPathAsync("host-b")}; link {hosts.LinkA.Status}");
            var info = (await silo.Grains.GetGrain<IHostGrain>("host-a").GetInfoAsync())!;
            Assert.Contains(info.Nics, n => n.Name == "lo");

            // The pinned VM is bound to swap-test on host-a, in host-a's slot range, which host-b opened for it.
            await Eventually.TrueAsync(async () => Bound(hosts.A, "vm1/0", "host-b") == "swap-test" && hosts.LinkA.Status.Acknowledged == hosts.LinkA.Status.Version
                && await silo.Grains.GetGrain<IHostGrain>("host-a").GetAcknowledgedAsync() == (await silo.Grains.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync()).Version,
                Wait, "the pinned VM bound and acknowledged", () => Task.FromResult($"{hosts.LinkA.Status}; bindings {Describe(hosts.A)}"));
            var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1/0"].Slot;
            Assert.InRange(slot, 1, 127);
            Assert.Equal("swap-test", hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stack);
            var view = await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync();
            Assert.Contains(view.Log, d => d.Stack == "swap-test" && d.Changed && d.Reason.Length > 0);

            // Traffic from vm1 goes through that slot; vm3's (unbound) through the path's default.
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");
            Assert.True(hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stats.FramesDelivered >= 1);
            // The host says which version carries it, and the outcomes name that version.
            var hostA = silo.Grains.GetGrain<IHostGrain>("host-a");
            await Eventually.TrueAsync(async () => (await hostA.GetInfoAsync())?.StackVersions.Any(u => u.Id == "swap-test" && u.Version == "0.1.0" && u.VmPaths >= 1) == true
                && (await hostA.GetOutcomesAsync()).Any(o => o.Stack == "swap-test" && o.StackVersion == "0.1.0"),
                Wait, "the version in use reported", async () => $"{string.Join(", ", (await hostA.GetInfoAsync())?.StackVersions ?? [])}");
            // An operator's hold on swap-test for host-a reaches its agent at its next registration, and its release too.
            var catalog = silo.Grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
            Assert.Null(await catalog.HoldVersionAsync(new VersionHold("swap-test", "0.1.0", ["host-a"], "operator 'test'", "hold for the test", DateTimeOffset.UtcNow)));
            Eventually.True(() => hosts.A.Switch.StackHost.Holds.GetValueOrDefault("swap-test") == "0.1.0" && hosts.B.Switch.StackHost.Holds.Count == 0,
                Wait, "the hold reached host-a only", () => $"a: {string.Join(", ", hosts.A.Switch.StackHost.Holds)}; b: {string.Join(", ", hosts.B.Switch.StackHost.Holds)}");
            Assert.Null(await catalog.HoldVersionAsync(new VersionHold("swap-test", "", [], "operator 'test'", "done", DateTimeOffset.UtcNow)));
            Eventually.True(() => hosts.A.Switch.StackHost.Holds.Count == 0, Wait, "the hold released", () => string.Join(", ", hosts.A.Switch.StackHost.Holds));

            // An operator's policy on vm3 moves host-b's side too.
            var result = await silo.Grains.GetGrain<IVmGrain>("vm3").SetPolicyAsync(new Policy("general", "standard", "ipv4", [], [], "swap-test", 0));
            Assert.True(result.Accepted, string.Join("; ", result.Errors));
            Eventually.True(() => Bound(hosts.B, "vm3", "host-a") == "swap-test", Wait, "vm3 bound on host-b", () => Describe(hosts.B));
            var backSlot = hosts.B.Switch.Paths["host-a"].VmBindings()["vm3"].Slot;
            Assert.InRange(backSlot, 128, 254);

            // Idempotent: once host-a has nothing left to do, the same binding again is no new version and no swap.
            await Eventually.TrueAsync(() => hosts.LinkA.ConvergedAsync(cancel), Wait, "host-a converged", () => Task.FromResult($"{hosts.LinkA.Status}"));
            var swaps = hosts.LinkA.Status.Swaps;
            var version = (await silo.Grains.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync()).Version;
            Assert.Equal(version, await silo.Grains.GetGrain<IHostGrain>("host-a").BindAsync([new Binding("vm1", "host-b", "swap-test", Role: PairRole.Leads)]));
            Assert.True(await hosts.LinkA.ConvergedAsync(cancel));
            Assert.Equal(swaps, hosts.LinkA.Status.Swaps);

            // The silo goes away: forwarding continues on the bound stacks; a VM registered meanwhile gets its policy's default.
            await silo.DisposeAsync();
            Eventually.True(() => !hosts.LinkA.Status.Connected && !hosts.LinkB.Status.Connected, Wait, "links see the silo gone", () => $"{hosts.LinkA.Status}");
            var delivered = hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stats.FramesDelivered;
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");
            Assert.Equal(delivered + 1, hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stats.FramesDelivered);
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm2", "vm-two",
                [new VmInterface("ethernet", Mac2.ToString(), "tap-vm2", Vni: 100, IPv4: ["10.0.0.2"])], new VmPolicy(Pin: "swap-test", Vni: 100), "metadata", "libvirt"))));
            Eventually.True(() => Bound(hosts.A, "vm2/0", "host-b") == "swap-test", Wait, "vm2 gets its default stack without the silo", () => Describe(hosts.A));
            swaps = hosts.LinkA.Status.Swaps;

            // The silo returns with nothing in memory: the agents register and place their VMs with what they run; the
            // VMs adopt it, and nothing is swapped.
            silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
            await Eventually.TrueAsync(async () => hosts.LinkA.Status.Connected
                && (await silo.Grains.GetGrain<IVmGrain>("vm2").GetAsync()).Stacks.GetValueOrDefault("host-b") == "swap-test"
                && (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Stacks.GetValueOrDefault("host-b") == "swap-test"
                && hosts.LinkA.Status.Acknowledged == hosts.LinkA.Status.Version,
                TimeSpan.FromSeconds(40), "reconverged after the silo restart", async () => $"{hosts.LinkA.Status}; {Describe(hosts.A)}; "
                    + $"vm1 {string.Join(",", (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Stacks)}; vm2 {string.Join(",", (await silo.Grains.GetGrain<IVmGrain>("vm2").GetAsync()).Stacks)}");
            // Adopted, not swapped: nothing was, and with nothing left to plan nothing will be for this desired state.
            await Eventually.TrueAsync(() => hosts.LinkA.ConvergedAsync(cancel), Wait, "host-a converged after the restart", () => Task.FromResult($"{hosts.LinkA.Status}"));
            Assert.Equal(swaps, hosts.LinkA.Status.Swaps);
            Assert.Equal("swap-test", Bound(hosts.A, "vm1/0", "host-b"));

            // host-a's agent restarts (same state folder): its registrations come back and its bindings come from the control plane.
            await hosts.RestartA();
            Eventually.True(() => Bound(hosts.A, "vm1/0", "host-b") == "swap-test" && Bound(hosts.A, "vm2/0", "host-b") == "swap-test",
                TimeSpan.FromSeconds(40), "bindings recovered after an agent restart", () => $"{hosts.LinkA.Status}; {Describe(hosts.A)}");
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");
        }
        finally
        {
            await silo.DisposeAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>
    /// The agent's anti-entropy for bindings: a VM placed on its host that the host grain binds to no stack on a path (its
    /// decision lost with a silo, or with a VM grain the grain directory deactivated before its bind went out: the fleet
    /// test's CI run left a confidential VM unbound for 90 s that way) is placed again by its agent, and its grain offers
    /// its stacks again. Here the host grain is made to forget the VM's binding while the VM grain keeps its decision.
    /// </summary>
    [Fact]
    public async Task AVmItsHostGrainHoldsNoBindingFor_IsPlacedAgainByItsAgent_AndBoundAgain()
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var state = Directory.CreateTempSubdirectory("fabric-link-").FullName;
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
        await using var hosts = new LinkedHosts(gatewayPort, Path.Combine(state, "a"));
        try
        {
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Pin: "swap-test", Vni: 100), "metadata", "libvirt"))));
            var hostA = silo.Grains.GetGrain<IHostGrain>("host-a");
            async Task<string?> HeldAsync() => (await hostA.GetDesiredStateAsync()).Bindings.FirstOrDefault(b => b.VmId == "vm1" && b.RemoteHost == "host-b")?.Stack;
            async Task<string> SeenAsync() => $"host grain holds {await HeldAsync()}; the VM grain has {(await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Stacks.GetValueOrDefault("host-b")}; {Describe(hosts.A)}";
            await Eventually.TrueAsync(async () => await HeldAsync() == "swap-test" && Bound(hosts.A, "vm1/0", "host-b") == "swap-test", Wait, "vm1 bound", SeenAsync);

            await hostA.UnbindVmAsync("vm1");
            Assert.Null(await HeldAsync());
            Assert.Equal("swap-test", (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Stacks.GetValueOrDefault("host-b"));
            await Eventually.TrueAsync(async () => await HeldAsync() == "swap-test" && Bound(hosts.A, "vm1/0", "host-b") == "swap-test",
                TimeSpan.FromSeconds(30), "vm1 bound again after its agent placed it again", SeenAsync);
        }
        finally
        {
            await silo.DisposeAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>
    /// A VM whose tap comes up after its binding came (placed at registration, its decision pushed, the port attached a
    /// moment later: the fleet test's CI run left a confidential VM unbound for 90 s that way, the desired state applied
    /// and acknowledged while the VM had no port) is bound at its agent's next pass, without a new change from the control plane.
    /// </summary>
    [Fact]
    public async Task AVmWhosePortAttachesAfterItsBindingCame_IsBoundWithoutANewChange()
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var state = Directory.CreateTempSubdirectory("fabric-link-").FullName;
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
        await using var hosts = new LinkedHosts(gatewayPort, Path.Combine(state, "a"));
        try
        {
            lock (hosts.Absent)
            {
                hosts.Absent.Add("tap-vm1");
            }
            var registration = new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Pin: "swap-test", Vni: 100), "metadata", "libvirt"));
            Ok(hosts.A.Handle(registration));
            var hostA = silo.Grains.GetGrain<IHostGrain>("host-a");
            DesiredState? desired = null;
            await Eventually.TrueAsync(async () => (desired = await hostA.GetDesiredStateAsync()).Bindings.Any(b => b.VmId == "vm1" && b.RemoteHost == "host-b" && b.Stack == "swap-test"),
                Wait, "vm1's binding in its host grain", async () => Desired(await hostA.GetDesiredStateAsync()));
            await Eventually.TrueAsync(() => Task.FromResult(hosts.LinkA.Status.Acknowledged >= desired!.Version), Wait, "host-a acknowledged it",
                () => Task.FromResult(hosts.LinkA.Status.ToString()));
            Assert.DoesNotContain(hosts.A.Switch.Vms.Keys, port => port == "vm1/0");

            lock (hosts.Absent)
            {
                hosts.Absent.Remove("tap-vm1");
            }
            // The hook's call again (libvirt's "started"): the tap is there now.
            Ok(hosts.A.Handle(registration));
            Assert.Contains(hosts.A.Switch.Vms.Keys, port => port == "vm1/0");
            var version = (await hostA.GetDesiredStateAsync()).Version;
            await Eventually.TrueAsync(async () => Bound(hosts.A, "vm1/0", "host-b") == "swap-test", Wait, "vm1 bound once its port attached",
                async () => $"{Desired(await hostA.GetDesiredStateAsync())}; {Describe(hosts.A)}");
            Assert.Equal(version, (await hostA.GetDesiredStateAsync()).Version);
        }
        finally
        {
            await silo.DisposeAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    [Fact]
    public async Task AgentsThatNameNoPeerRouteOrKey_AreProgrammedByTheControlPlane_AndCarrySecureTrafficUnderDerivedKeys()
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var state = Directory.CreateTempSubdirectory("fabric-programmed-").FullName;
        // Over the authenticated channel: TLS, and every call with the agent's own certificate's identity.
        using var authority = DevelopmentAuthority.Create("Fabric test authority");
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort, authority);
        await using var hosts = new LinkedHosts(gatewayPort, Path.Combine(state, "a"), Path.Combine(state, "b"), programmed: true, authority: authority);
        try
        {
            Assert.Empty(hosts.A.Switch.Paths);
            // vm1 registers on host-a through the hook API, confidential; vm3 is host-b's (in its config), same network.
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Security: "confidential", Vni: 100), "metadata", "libvirt"))));

            // Each host learns the other (address, port, public key) and the other's VM (MAC, addresses) from the control
            // plane, derives the pair's keys, and vm1 is bound to secure under them.
            Eventually.True(() => hosts.A.Switch.Paths.ContainsKey("host-b") && hosts.B.Switch.Paths.ContainsKey("host-a") && Bound(hosts.A, "vm1/0", "host-b") == "secure",
                Wait, "peers, routes and the secure binding programmed", () => $"{hosts.LinkA.Status}; {hosts.LinkB.Status}; {Describe(hosts.A)}; {Describe(hosts.B)}");
            var overlayA = hosts.A.Switch.Paths["host-b"].Spec.OverlayKey;
            Assert.NotNull(overlayA);
            Assert.Equal(overlayA, hosts.B.Switch.Paths["host-a"].Spec.OverlayKey);
            Assert.Equal(hosts.A.Switch.Paths["host-b"].Spec.SettingsOf("secure")["key"], hosts.B.Switch.Paths["host-a"].Spec.SettingsOf("secure")["key"]);
            Assert.Equal(hosts.LinkB.PublicKey, (await silo.Grains.GetGrain<IHostGrain>("host-b").GetInfoAsync())?.PublicKey);

            // Frames flow both ways, vm1's through secure (vm3's route to vm1 came from the control plane too).
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");
            hosts.Send("vm3", Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
            hosts.Expect("vm1");
            var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1/0"].Slot;
            Assert.True(hosts.B.Switch.Paths["host-a"].StackStats()[slot].Stats.FramesDelivered >= 1);

            // The control plane loses vm1's placement without the agent hearing of it (as a failed write would): the agent
            // sees vm1 missing from its host's desired state at its next registration and places it again.
            await silo.Grains.GetGrain<IVmGrain>("vm1").RemoveAsync("host-a");
            Assert.Null((await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement);
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement?.HostId == "host-a"
                && (await silo.Grains.GetGrain<IHostGrain>("host-b").GetDesiredStateAsync()).Routes.Any(r => r.VmId == "vm1"),
                Wait, "a lost placement restored", async () => $"{hosts.LinkA.Status}; vm1 on {(await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement?.HostId}");
            Eventually.True(() => hosts.B.Switch.Paths.ContainsKey("host-a") && Bound(hosts.A, "vm1/0", "host-b") == "secure", Wait, "vm1 bound to secure again",
                () => $"{Describe(hosts.A)}; {Describe(hosts.B)}");
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");

            // The private key stays on the host (0600); no path key appears in the agent's status or the silo's view.
            var keyFile = Path.Combine(state, "a", HostKey.FileName);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyFile));
            var status = System.Text.Json.JsonSerializer.Serialize(hosts.A.Status());
            var secureKey = hosts.A.Switch.Paths["host-b"].Spec.SettingsOf("secure")["key"];
            Assert.DoesNotContain(Convert.ToHexString(overlayA), status, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain(secureKey, status, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain(secureKey, System.Text.Json.JsonSerializer.Serialize(await silo.Grains.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync()), StringComparison.OrdinalIgnoreCase);

            // The silo restarts with nothing in memory: the agents keep their paths and routes (fail-static, and no
            // withdrawal while the control plane learns the fleet again), traffic flows throughout, and the control plane
            // ends up programming the same again.
            var gone = 0;
            using var watching = new CancellationTokenSource();
            var watcher = Task.Run(async () =>
            {
                while (!watching.IsCancellationRequested)
                {
                    gone += hosts.A.Switch.Paths.ContainsKey("host-b") && hosts.B.Switch.Paths.ContainsKey("host-a") ? 0 : 1;
                    await Task.Delay(10, CancellationToken.None);
                }
            }, TestContext.Current.CancellationToken);
            await silo.DisposeAsync();
            // A silo stopped in this process can go on answering its clients' open connections for a while: the new one
            // starts once both agents have seen the old one gone, as after a real restart (else they kept talking to it).
            Eventually.True(() => !hosts.LinkA.Status.Connected && !hosts.LinkB.Status.Connected, Wait, "links see the silo gone", () => $"{hosts.LinkA.Status}");
            silo = await LocalSilo.StartAsync(siloPort, gatewayPort, authority);
            await Eventually.TrueAsync(async () => hosts.LinkA.Status.Connected && hosts.LinkB.Status.Connected
                && (await silo.Grains.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync()).Routes.Any(r => r.HostId == "host-b")
                && (await silo.Grains.GetGrain<IHostGrain>("host-b").GetDesiredStateAsync()).Routes.Any(r => r.HostId == "host-a"),
                TimeSpan.FromSeconds(40), "reprogrammed after the silo restart", async () => $"{hosts.LinkA.Status}; {hosts.LinkB.Status}; "
                    + $"host-a's routes [{string.Join(", ", (await silo.Grains.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync()).Routes.Select(r => r.VmId + "@" + r.HostId))}], "
                    + $"host-b's [{string.Join(", ", (await silo.Grains.GetGrain<IHostGrain>("host-b").GetDesiredStateAsync()).Routes.Select(r => r.VmId + "@" + r.HostId))}], "
                    + $"network 100 [{string.Join(", ", (await silo.Grains.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(100)).GetAsync()).Routes.Select(r => r.VmId + "@" + r.HostId))}], "
                    + $"vm1 on {(await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement?.HostId}, vm3 on {(await silo.Grains.GetGrain<IVmGrain>("vm3").GetAsync()).Placement?.HostId}, "
                    + $"registered here: host-a {await silo.Grains.GetGrain<IHostGrain>("host-a").GetInfoAsync() is not null}, host-b {await silo.Grains.GetGrain<IHostGrain>("host-b").GetInfoAsync() is not null}");
            await watching.CancelAsync();
            await watcher;
            Assert.True(gone == 0, $"a path was missing in {gone} samples during the silo restart");
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");

            // vm1 leaves host-a: host-b withdraws its route and, sharing no network with host-a any more, the whole path.
            Ok(hosts.A.Handle(new ApiRequest("deregister-vm", Id: "vm1")));
            await Eventually.TrueAsync(() => Task.FromResult(!hosts.B.Switch.Paths.ContainsKey("host-a") && !hosts.A.Switch.Paths.ContainsKey("host-b")), Wait, "the peers withdrawn",
                async () => $"{hosts.LinkA.Status}; {hosts.LinkB.Status}; {Describe(hosts.A)}; {Describe(hosts.B)}; desired a {Desired(await silo.Grains.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync())}; "
                    + $"desired b {Desired(await silo.Grains.GetGrain<IHostGrain>("host-b").GetDesiredStateAsync())}; "
                    + $"network 100 [{string.Join(", ", (await silo.Grains.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(100)).GetAsync()).Routes.Select(r => r.VmId + "@" + r.HostId))}], "
                    + $"vm1 on {(await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement?.HostId}");
        }
        finally
        {
            await silo.DisposeAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>
    /// A host key rotated while a confidential VM streams through secure under keys the pair derived: the new public key
    /// reaches the peer through the control plane, both paths take the pair's new keys in place (no path replaced, no
    /// frame lost), and after the overlap the previous key is gone from the host and from both paths, and the VM's secure
    /// slot is renewed (a fresh instance, so a session under the new path key), still losing nothing. A new key that names
    /// no previous one (the host lost its key) is no rotation: the peer makes a new path instead.
    /// </summary>
    [Fact]
    public async Task AHostKeyRotatedDuringASecureStream_LosesNoFrame_ReplacesNoPath_AndAfterTheOverlapThePreviousKeyRetiresAndTheSecureSlotIsRenewed()
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var state = Directory.CreateTempSubdirectory("fabric-rotation-").FullName;
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
        await using var hosts = new LinkedHosts(gatewayPort, Path.Combine(state, "a"), Path.Combine(state, "b"), programmed: true, keyOverlapSeconds: 10);
        try
        {
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Security: "confidential", Vni: 100), "metadata", "libvirt"))));
            Eventually.True(() => hosts.B.Switch.Paths.ContainsKey("host-a") && Bound(hosts.A, "vm1/0", "host-b") == "secure", Wait, "vm1 bound to secure under derived keys",
                () => $"{hosts.LinkA.Status}; {hosts.LinkB.Status}; {Describe(hosts.A)}; {Describe(hosts.B)}");
            var (pathA, pathB) = (hosts.A.Switch.Paths["host-b"], hosts.B.Switch.Paths["host-a"]);
            var replaced = (hosts.A.Switch.PathsReplaced, hosts.B.Switch.PathsReplaced);
            var oldKey = hosts.LinkA.PublicKey;
            var oldSlot = pathA.VmBindings()["vm1/0"].Slot;

            using var pump = new FramePump(hosts, "vm1", "vm3", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            await Task.Delay(500, TestContext.Current.CancellationToken);
            await hosts.LinkA.RotateKeyAsync(TestContext.Current.CancellationToken);
            Assert.NotEqual(oldKey, hosts.LinkA.PublicKey);
            Assert.True(File.Exists(Path.Combine(state, "a", HostKey.PreviousFileName)));

            // The control plane hands host-b the new key; both ends hold both keys, and host-a seals under its new one
            // once host-b showed it holds it.
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IHostGrain>("host-a").GetInfoAsync())?.PublicKey == hosts.LinkA.PublicKey
                && pathB.KeyState == (2, true) && pathA.KeyState == (2, true),
                Wait, "both paths on the pair's new key", () => Task.FromResult($"host-a {pathA.KeyState}, host-b {pathB.KeyState}; {hosts.LinkA.Status}; {hosts.LinkB.Status}"));
            hosts.Send("vm3", Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
            hosts.Expect("vm1");

            // The overlap (10 s here) ends: the previous key is forgotten, its file too, and each path holds one key; vm1
            // moves to a fresh secure instance (another slot), whose session derives from the new path key.
            Eventually.True(() => pathA.KeyState == (1, true) && pathB.KeyState == (1, true) && !File.Exists(Path.Combine(state, "a", HostKey.PreviousFileName))
                && pathA.VmBindings()["vm1/0"] is ("secure", var slot) && slot != oldSlot,
                TimeSpan.FromSeconds(30), "the previous key retired and vm1's secure slot renewed", () => $"host-a {pathA.KeyState}, host-b {pathB.KeyState}; {Describe(hosts.A)}; events {string.Join(" | ", hosts.A.Switch.Events)}");
            await Task.Delay(500, TestContext.Current.CancellationToken);
            var (sent, received) = pump.Stop();
            Assert.True(sent > 1000, $"only {sent} frames were sent");
            Assert.Equal(sent, received);
            Assert.Same(pathA, hosts.A.Switch.Paths["host-b"]);
            Assert.Same(pathB, hosts.B.Switch.Paths["host-a"]);
            Assert.Equal(replaced, (hosts.A.Switch.PathsReplaced, hosts.B.Switch.PathsReplaced));
            Assert.Equal("secure", Bound(hosts.A, "vm1/0", "host-b"));
            TestContext.Current.SendDiagnosticMessage($"rotation: {sent} frames sent and received through secure, no path replaced");

            // A new key that names no previous one is no rotation (host-a lost its key, as a re-enrolled host's would be):
            // host-b does not take it in place but makes a new path, under which the old key verifies nothing.
            File.Delete(Path.Combine(state, "a", HostKey.FileName));
            await hosts.RestartA();
            Eventually.True(() => hosts.B.Switch.Paths.TryGetValue("host-a", out var fresh) && !ReferenceEquals(fresh, pathB) && fresh.KeyState == (1, true)
                && Bound(hosts.A, "vm1/0", "host-b") == "secure", Wait, "a new path for host-a's new key",
                () => $"{hosts.LinkA.Status}; {hosts.LinkB.Status}; {Describe(hosts.A)}; {Describe(hosts.B)}");
            hosts.Send("vm3", Frames.Udp(Mac3, Mac1, "10.0.0.3", "10.0.0.1", 200));
            hosts.Expect("vm1");
        }
        finally
        {
            await silo.DisposeAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>
    /// A stack version rolled out through the control plane to real agents: installed on both hosts before the catalog
    /// published it, it carries nothing (the catalog releases the version it knows); published, the rollout's canary (both
    /// hosts here) is released it, and vm1's binding moves to it on both ends; an operator's roll back brings the binding
    /// back. Frames flow from vm1 to vm3 all along, and none is lost.
    /// </summary>
    [Fact]
    public async Task ARolloutThroughTheControlPlane_MovesRealBindingsToTheReleasedVersion_AndARollBackBringsThemBack_LosingNoFrame()
    {
        await WithLinkedHostsAsync(async (silo, hosts) =>
        {
            var catalog = silo.Grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
            const string source = "the rollout test's repository";
            Assert.Empty(await catalog.SyncAsync([SwapTest with { PublishedVersions = ["0.1.0"] }], 1, source));
            foreach (var agent in new[] { hosts.A, hosts.B })
            {
                agent.Switch.RegisterStack(StackPlugins.PathOf(StackPlugins.SwapTest), "swap-test", signedVersion: "0.2.0");
            }
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Pin: "swap-test", Vni: 100), "metadata", "libvirt"))));
            string? KeyOnA() => hosts.A.Switch.Paths.TryGetValue("host-b", out var path) && path.VmBindingKeys().TryGetValue("vm1/0", out var b) ? b.Stack : null;
            Eventually.True(() => KeyOnA() == "swap-test@0.1.0" && hosts.A.Switch.StackHost.Releases.GetValueOrDefault("swap-test") == "0.1.0"
                    && hosts.B.Switch.StackHost.Releases.GetValueOrDefault("swap-test") == "0.1.0",
                Wait, "vm1 bound to the released 0.1.0 though both ends have 0.2.0", () => $"{KeyOnA()}; releases a {string.Join(",", hosts.A.Switch.StackHost.Releases)}; "
                    + $"b {string.Join(",", hosts.B.Switch.StackHost.Releases)}; events a {string.Join(" | ", hosts.A.Switch.Events.TakeLast(12))}");

            using var pump = new FramePump(hosts, "vm1", "vm3", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            Assert.Empty(await catalog.SyncAsync([SwapTest with { Version = "0.2.0", PublishedVersions = ["0.2.0", "0.1.0"] }], 2, source));
            Assert.Equal(("0.1.0", "0.2.0"), (await catalog.ListRolloutsAsync()).Single(r => r.StackId == "swap-test") is var started ? (started.From, started.To) : default);
            Eventually.True(() => KeyOnA() == "swap-test@0.2.0", TimeSpan.FromSeconds(40), "vm1 moved to 0.2.0 once the canary was released it",
                () => $"{KeyOnA()}; releases a {string.Join(",", hosts.A.Switch.StackHost.Releases)} b {string.Join(",", hosts.B.Switch.StackHost.Releases)}");
            var slot = hosts.A.Switch.Paths["host-b"].VmBindingKeys()["vm1/0"].Slot;
            Assert.Equal("0.2.0", hosts.B.Switch.Paths["host-a"].StackStats()[slot].Version);
            var canary = (await catalog.ListRolloutsAsync()).Single(r => r.StackId == "swap-test").Rings[0];
            Assert.Equal(["host-a", "host-b"], canary.Hosts.Order(StringComparer.Ordinal));

            var rolledBackAt = System.Diagnostics.Stopwatch.StartNew();
            Assert.Null(await catalog.StepRolloutAsync("swap-test", "rollback", "operator 'test'", "the test rolls it back"));
            Eventually.True(() => KeyOnA() == "swap-test@0.1.0", TimeSpan.FromSeconds(40), "vm1 back on 0.1.0 after the roll back",
                () => $"{KeyOnA()}; releases a {string.Join(",", hosts.A.Switch.StackHost.Releases)}");
            var movedBack = rolledBackAt.Elapsed;
            Assert.Equal("0.1.0", hosts.B.Switch.StackHost.Releases["swap-test"]);
            var (sent, received) = pump.Stop();
            Assert.True(sent > 500, $"only {sent} frames were sent");
            Assert.Equal(sent, received);
            Assert.Equal(0, hosts.B.Switch.Paths["host-a"].SequenceGaps);
            // host-b's registrations count both versions' packets for the drops gate (0.2.0's slot closed: what it counted then goes on counting).
            async Task<string> Counted() => string.Join(", ", ((await silo.Grains.GetGrain<IHostGrain>("host-b").GetInfoAsync())?.StackVersions ?? [])
                .Select(u => $"{u.Id}@{u.Version} {u.Packets} packets, {u.Drops.Values.Sum()} dropped"));
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IHostGrain>("host-b").GetInfoAsync())?.StackVersions is { IsDefault: false } versions
                    && versions.Any(u => u.Id == "swap-test" && u.Version == "0.2.0" && u.Packets > 0) && versions.Any(u => u.Id == "swap-test" && u.Version == "0.1.0" && u.Packets > 0),
                TimeSpan.FromSeconds(60), "host-b's registration counting both versions' packets (asked every 30 s)", Counted);
            TestContext.Current.TestOutputHelper?.WriteLine($"roll back to vm1's binding moved: {movedBack.TotalSeconds:0.0} s (registrations every 5 s); frames {sent} sent, {received} received; "
                + $"host-b counted {await Counted()}");
        });
    }

    /// <summary>
    /// A version that throws on a share of packets, rolled out to real agents: faulty 0.0.2 is released to the canary
    /// (both hosts), a frame its receive throws on and one its transmit throws on make each host quarantine it, their
    /// registrations say so, the quarantine gate fails and the rollout comes back by itself — 0.0.2 marked bad with both
    /// hosts' reasons, 0.0.1 released again — while vm1's traffic goes on.
    /// </summary>
    [Fact]
    public async Task AVersionThatThrowsOnTheCanary_IsQuarantinedThere_AndTheRolloutComesBackByItself()
    {
        await WithLinkedHostsAsync(async (silo, hosts) =>
        {
            var catalog = silo.Grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
            const string source = "the faulty rollout's repository";
            var faulty = new StackInfo("faulty", "0.0.1", "ipv4", 0, 0, 0, 0, false, "a stack that throws on marked frames") { PublishedVersions = ["0.0.1"] };
            Assert.Empty(await catalog.SyncAsync([faulty], 1, source));
            foreach (var agent in new[] { hosts.A, hosts.B })
            {
                agent.Switch.RegisterStack(StackPlugins.PathOf(StackPlugins.Faulty), "faulty", signedVersion: "0.0.1");
                agent.Switch.RegisterStack(StackPlugins.PathOf(StackPlugins.Faulty), "faulty", signedVersion: "0.0.2");
            }
            Ok(hosts.A.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("vm1", "vm-one",
                [new VmInterface("ethernet", Mac1.ToString(), "tap-vm1", Vni: 100, IPv4: ["10.0.0.1"])], new VmPolicy(Pin: "faulty", Vni: 100), "metadata", "libvirt"))));
            string? KeyOnA() => hosts.A.Switch.Paths.TryGetValue("host-b", out var path) && path.VmBindingKeys().TryGetValue("vm1/0", out var b) ? b.Stack : null;
            Eventually.True(() => KeyOnA() == "faulty@0.0.1", Wait, "vm1 bound to faulty 0.0.1", () => $"{KeyOnA()}");

            Assert.Empty(await catalog.SyncAsync([faulty with { Version = "0.0.2", PublishedVersions = ["0.0.2", "0.0.1"] }], 2, source));
            Eventually.True(() => KeyOnA() == "faulty@0.0.2", TimeSpan.FromSeconds(40), "vm1 on the canary's faulty 0.0.2", () => $"{KeyOnA()}");

            // One frame 0.0.2 throws on when host-b receives it, one it throws on when host-a sends it.
            hosts.Send("vm1", Frames.Marked(Mac1, Mac3, "RXFAULT"));
            hosts.Send("vm1", Frames.Marked(Mac1, Mac3, "TXFAULT"));
            Eventually.True(() => hosts.A.Switch.StackHost.IsQuarantined("faulty@0.0.2") && hosts.B.Switch.StackHost.IsQuarantined("faulty@0.0.2"), Wait,
                "faulty 0.0.2 quarantined on both hosts", () => $"a {string.Join(",", hosts.A.Switch.StackHost.Quarantined)}; b {string.Join(",", hosts.B.Switch.StackHost.Quarantined)}");
            await Eventually.TrueAsync(async () => (await catalog.ListRolloutsAsync()).Single(r => r.StackId == "faulty").Status == RolloutStatus.RolledBack,
                TimeSpan.FromSeconds(40), "the rollout rolled back by its quarantine gate",
                async () => string.Join("; ", (await catalog.ListRolloutsAsync()).Single(r => r.StackId == "faulty").Gates.Select(g => $"{g.Gate} {g.Verdict}: {g.Evidence}")));
            var bad = Assert.Single(await catalog.ListBadAsync(), b => b.StackId == "faulty");
            Assert.Equal(("0.0.2", "the rollout's gates"), (bad.Version, bad.By));
            Assert.Contains("quarantine: faulty 0.0.2 quarantined on host-a (", bad.Evidence, StringComparison.Ordinal);
            Assert.Contains("host-b (", bad.Evidence, StringComparison.Ordinal);
            Eventually.True(() => hosts.A.Switch.StackHost.Releases.GetValueOrDefault("faulty") == "0.0.1" && hosts.B.Switch.StackHost.Releases.GetValueOrDefault("faulty") == "0.0.1",
                Wait, "0.0.1 released again to both hosts", () => $"a {string.Join(",", hosts.A.Switch.StackHost.Releases)}");
            // vm1's traffic went on through the path's fallback, and goes on.
            hosts.Send("vm1", Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200));
            hosts.Expect("vm3");
        });
    }

    /// <summary>Sends one frame from a VM every millisecond and counts what reaches another, until stopped.</summary>
    private sealed class FramePump : IDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly Thread _sender;
        private readonly Thread _sink;
        private int _sent;
        private int _received;
        private Exception? _failure;

        public FramePump(LinkedHosts hosts, string from, string to, byte[] frame)
        {
            _sender = new Thread(() =>
            {
                try
                {
                    while (!_stop.IsCancellationRequested)
                    {
                        hosts.Send(from, frame);
                        Interlocked.Increment(ref _sent);
                        Thread.Sleep(1);
                    }
                }
                catch (Exception e)
                {
                    _failure = e;
                }
            });
            _sink = new Thread(() =>
            {
                // Until the sender stopped and nothing more arrived for a second.
                var lastAt = DateTime.UtcNow;
                while (!_stop.IsCancellationRequested || DateTime.UtcNow - lastAt < TimeSpan.FromSeconds(1))
                {
                    if (hosts.TryReceive(to, TimeSpan.FromMilliseconds(100)))
                    {
                        Interlocked.Increment(ref _received);
                        lastAt = DateTime.UtcNow;
                    }
                }
            });
            _sender.Start();
            _sink.Start();
        }

        public (int Sent, int Received) Stop()
        {
            _stop.Cancel();
            _sender.Join();
            _sink.Join();
            return _failure is null ? (_sent, _received) : throw new InvalidOperationException("the pump's sender failed", _failure);
        }

        public void Dispose()
        {
            if (!_stop.IsCancellationRequested)
            {
                Stop();
            }
            _stop.Dispose();
        }
    }

    private static string? Bound(Agent.Agent agent, string port, string remote) =>
        agent.Switch.Paths.TryGetValue(remote, out var path) && path.VmBindings().TryGetValue(port, out var binding) ? binding.Stack : null;

    private static string Desired(DesiredState d) =>
        $"v{d.Version & 0xffffffff} vms [{string.Join(",", d.Vms)}] bindings [{string.Join(",", d.Bindings.Select(b => $"{b.VmId}>{b.RemoteHost}={b.Stack}"))}] routes [{string.Join(",", d.Routes.Select(r => r.VmId + "@" + r.HostId))}] peers [{string.Join(",", d.Peers.Select(p => p.HostId))}]";

    private static string Describe(Agent.Agent agent) => string.Join("; ", agent.Switch.Paths.Select(p =>
        $"{p.Key}: [{string.Join(", ", p.Value.VmBindings().Select(b => $"{b.Key}={b.Value.Stack}@{b.Value.Slot}"))}]"));

    private static void Ok(ApiResponse response) => Assert.True(response.Ok, response.Error);

    /// <summary>A silo in this process and two agents linked to it (host-a, host-b, their state in a temporary folder) for
    /// <paramref name="test"/>; the silo stopped and the folder deleted after it, the agents last.</summary>
    private static async Task WithLinkedHostsAsync(Func<LocalSilo, LinkedHosts, Task> test)
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var state = Directory.CreateTempSubdirectory("fabric-link-").FullName;
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
        await using var hosts = new LinkedHosts(gatewayPort, Path.Combine(state, "a"), Path.Combine(state, "b"));
        try
        {
            await test(silo, hosts);
        }
        finally
        {
            await silo.DisposeAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>One silo in this process: localhost clustering on the given ports, memory storage, the catalog published.</summary>
    private sealed class LocalSilo : IAsyncDisposable
    {
        private readonly IHost _host;
        private bool _disposed;

        private LocalSilo(IHost host) => _host = host;

        public IClusterClient Grains => _host.Services.GetRequiredService<IClusterClient>();

        /// <summary>A silo on loopback, with the catalog the tests use; with <paramref name="authority"/>: TLS and caller identity, the silo's certificate from it.</summary>
        public static async Task<LocalSilo> StartAsync(int siloPort, int gatewayPort, DevelopmentAuthority? authority = null)
        {
            var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
            builder.Logging.ClearProviders();
            builder.UseOrleans(silo =>
            {
                silo.UseLocalhostClustering(siloPort, gatewayPort, serviceId: "fabric", clusterId: "fabric")
                    .AddMemoryGrainStorage(Storage.Name)
                    .AddFabricControlPlane(ClusterFixture.Selector, rollouts: new Fabric.Silo.Rollouts.RolloutOptions(TimeSpan.FromMinutes(10), TimeSpan.FromSeconds(1)));
                if (authority is not null)
                {
                    silo.UseControlPlaneSecurity(authority.Issue(CallerRole.Silo, "silo-1"));
                }
            });
            // A graceful stop that runs out of time leaves a silo half-stopped, still answering the connections it had:
            // the tests' restarts wait for it to finish (what the silo says when it is slow is in the failure's text).
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromMinutes(2));
            var host = builder.Build();
            await host.StartAsync();
            var silo = new LocalSilo(host);
            foreach (var stack in new[] { Catalogs.StdIPv4, Catalogs.StdIPv6, SwapTest, Catalogs.Secure })
            {
                await silo.Grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
            }
            return silo;
        }

        public async ValueTask DisposeAsync()
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            var stopping = System.Diagnostics.Stopwatch.StartNew();
            await _host.StopAsync();
            _host.Dispose();
            TestContext.Current.SendDiagnosticMessage($"silo stopped in {stopping.Elapsed.TotalSeconds:F1} s");
        }
    }

    [Fact]
    public async Task AVmThatMigrates_IsForwardedToItsNewHost_KeepsItsPolicy_AndNoHostForwardsToTheOldOne()
    {
        var cancel = TestContext.Current.CancellationToken;
        var (silo, hosts, authority) = await SecuredFleetAsync();
        using var _ = authority;
        await using var fleet = hosts;
        try
        {
            fleet.Register("host-a", "vm1", Mac1, "10.0.0.1");
            fleet.Register("host-b", "vm3", Mac3, "10.0.0.3", pin: "swap-test");
            Eventually.True(() => RouteOf(fleet["host-a"], Mac3) == "host-b" && RouteOf(fleet["host-b"], Mac1) == "host-a", Wait, "routes programmed",
                () => fleet.Describe());
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IVmGrain>("vm3").GetAsync()).Log.Length > 0, Wait, "vm3's first decision",
                () => Task.FromResult(fleet.Describe()));

            // vm1 sends to vm3 all along (1,000 frames a second); each frame is received wherever vm3 runs.
            var received = 0;
            using var stop = new CancellationTokenSource();
            var sender = Task.Run(() =>
            {
                var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 200);
                while (!stop.IsCancellationRequested)
                {
                    fleet.Send("vm1", frame);
                    Thread.Sleep(1);
                }
            }, cancel);
            var receiver = Task.Run(() =>
            {
                while (!stop.IsCancellationRequested)
                {
                    received += fleet.Drain("vm3", TimeSpan.FromMilliseconds(20));
                }
            }, cancel);
            Eventually.True(() => Volatile.Read(ref received) > 50, Wait, "frames reach vm3 on host-b", () => fleet.Describe());

            // Migration as libvirt does it: the destination starts the VM (its hook registers it), then the source stops it.
            // The destination's placement is a claim while the source still has the VM: no host takes a live VM's traffic
            // by saying it runs there; the move happens when the source lets it go.
            fleet.Register("host-c", "vm3", Mac3, "10.0.0.3", pin: "swap-test");
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IVmGrain>("vm3").GetAsync()).Claim?.HostId == "host-c", Wait, "host-c's claim on vm3",
                () => Task.FromResult(fleet.Describe()));
            Assert.Equal("host-b", RouteOf(fleet["host-a"], Mac3));
            var moving = System.Diagnostics.Stopwatch.StartNew();
            Ok(fleet["host-b"].Handle(new ApiRequest("deregister-vm", Id: "vm3")));
            Eventually.True(() => RouteOf(fleet["host-a"], Mac3) == "host-c", Wait, "host-a forwards vm3's frames to host-c", () => fleet.Describe());
            var rerouted = moving.Elapsed;
            var before = Volatile.Read(ref received);
            Eventually.True(() => Volatile.Read(ref received) > before + 50, Wait, "frames reach vm3 on host-c", () => fleet.Describe());
            TestContext.Current.SendDiagnosticMessage($"host-a forwarded to vm3's new host {rerouted.TotalMilliseconds:F0} ms after the source deregistered it");

            // host-b has no VM left: nobody keeps a path to it, and it keeps none.
            Eventually.True(() => !fleet["host-a"].Switch.Paths.ContainsKey("host-b") && fleet["host-b"].Switch.Paths.Count == 0, Wait, "the old host withdrawn", () => fleet.Describe());
            // The VM kept its policy and history, and its stack choice holds on its new host.
            var view = await silo.Grains.GetGrain<IVmGrain>("vm3").GetAsync();
            Assert.Equal("host-c", view.Placement?.HostId);
            Assert.Equal("swap-test", view.Policy.Pin);
            Eventually.True(() => Bound(fleet["host-c"], "vm3/0", "host-a") == "swap-test", Wait, "vm3 bound on host-c", () => fleet.Describe());
            await stop.CancelAsync();
            await Task.WhenAll(sender, receiver);

            // host-b, alive, claims vm1, which runs on host-a: the claim is recorded and changes nothing while host-a has it.
            fleet.Register("host-b", "vm1", Mac1, "10.0.0.1");
            await Eventually.TrueAsync(async () => (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Claim?.HostId == "host-b", Wait, "host-b's claim on vm1",
                () => Task.FromResult(fleet.Describe()));
            Assert.Equal("host-a", (await silo.Grains.GetGrain<IVmGrain>("vm1").GetAsync()).Placement?.HostId);
            Assert.Equal("host-a", RouteOf(fleet["host-c"], Mac1));
        }
        finally
        {
            await silo.DisposeAsync();
        }
    }

    [Fact]
    public async Task ARemovedHost_IsDroppedByEveryHostThatSharedANetwork_AndRefusedByTheControlPlane_UntilReadmitted()
    {
        var (silo, hosts, authority) = await SecuredFleetAsync();
        using var _ = authority;
        await using var fleet = hosts;
        try
        {
            fleet.Register("host-a", "vm1", Mac1, "10.0.0.1");
            fleet.Register("host-b", "vm2", Mac2, "10.0.0.2");
            fleet.Register("host-c", "vm3", Mac3, "10.0.0.3");
            Eventually.True(() => RouteOf(fleet["host-a"], Mac3) == "host-c" && RouteOf(fleet["host-b"], Mac3) == "host-c" && RouteOf(fleet["host-c"], Mac1) == "host-a",
                Wait, "routes programmed", () => fleet.Describe());

            // An operator removes host-c (a decommissioned host, or one whose key is suspected).
            await silo.Grains.GetGrain<IFleetGrain>(IFleetGrain.Key).RemoveHostAsync("host-c");
            Eventually.True(() => RouteOf(fleet["host-a"], Mac3) is null && RouteOf(fleet["host-b"], Mac3) is null
                && !fleet["host-a"].Switch.Paths.ContainsKey("host-c") && !fleet["host-b"].Switch.Paths.ContainsKey("host-c"),
                Wait, "every host that shared a network with host-c drops it", () => fleet.Describe());
            Eventually.True(() => fleet.LinkOf("host-c").Status.LastError?.Contains("removed from the fleet", StringComparison.Ordinal) == true, Wait,
                "host-c's agent refused", () => $"{fleet.LinkOf("host-c").Status}");
            Assert.Null((await silo.Grains.GetGrain<IVmGrain>("vm3").GetAsync()).Placement);
            var view = await silo.Grains.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync();
            Assert.Contains("host-c", view.Removed);
            Assert.DoesNotContain("host-c", view.Hosts);
            // It stays out: its agent keeps trying, and nothing of it comes back.
            await Task.Delay(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken);
            Assert.Null(RouteOf(fleet["host-a"], Mac3));

            // Readmitted, its agent registers and places its VM again: the routes come back.
            await silo.Grains.GetGrain<IFleetGrain>(IFleetGrain.Key).ReadmitHostAsync("host-c");
            Eventually.True(() => RouteOf(fleet["host-a"], Mac3) == "host-c" && fleet.LinkOf("host-c").Status.Connected, TimeSpan.FromSeconds(30),
                "host-c back in the fleet", () => $"{fleet.LinkOf("host-c").Status}; {fleet.Describe()}");
        }
        finally
        {
            await silo.DisposeAsync();
        }
    }

    /// <summary>A silo with the control channel's security and three programmed agents (host-a, host-b, host-c), certificates of one authority.</summary>
    private static async Task<(LocalSilo Silo, ProgrammedHosts Fleet, DevelopmentAuthority Authority)> SecuredFleetAsync()
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var authority = DevelopmentAuthority.Create("Fabric test authority");
        var silo = await LocalSilo.StartAsync(siloPort, gatewayPort, authority);
        return (silo, new ProgrammedHosts(gatewayPort, authority, "host-a", "host-b", "host-c"), authority);
    }

    private static string? RouteOf(Agent.Agent agent, MacAddress mac) => agent.Switch.Table.FindByMac(100, mac)?.RemoteHost;

    /// <summary>Agents whose configurations name no peer, route or key (each with a state folder for its host key), linked to one silo.</summary>
    private sealed class ProgrammedHosts : IAsyncDisposable
    {
        private readonly Dictionary<string, ChannelPort> _vmEnds = [];
        private readonly List<(Agent.Agent Agent, ControlPlaneLink Link)> _hosts = [];
        private readonly string _state = Directory.CreateTempSubdirectory("fabric-fleet-").FullName;

        /// <summary>Agents named <paramref name="ids"/>, each with its certificate from <paramref name="authority"/> (the silo must trust it).</summary>
        public ProgrammedHosts(int gatewayPort, DevelopmentAuthority authority, params string[] ids)
        {
            string[] stacks = [StackPlugins.PathOf(StackPlugins.StdIPv4), StackPlugins.PathOf(StackPlugins.StdIPv6), StackPlugins.PathOf(StackPlugins.SwapTest)];
            foreach (var id in ids)
            {
                var control = Credentials.Secured(new ControlPlaneConfig([$"127.0.0.1:{gatewayPort}"], ReportMilliseconds: 250), authority, Path.Combine(_state, "pki"), id);
                var agent = new Agent.Agent(new AgentConfig(id, new UnderlayConfig("127.0.0.1", null, 0), stacks, "unused", DrainMilliseconds: 200,
                    StateDirectory: Path.Combine(_state, id), ControlPlane: control), NullLogger.Instance, device => Open(id, device));
                agent.Start();
                var link = new ControlPlaneLink(agent, control, NullLogger.Instance);
                link.Start();
                _hosts.Add((agent, link));
            }
        }

        public Agent.Agent this[string id] => _hosts.Single(h => h.Agent.Config.HostId == id).Agent;

        public ControlPlaneLink LinkOf(string id) => _hosts.Single(h => h.Agent.Config.HostId == id).Link;

        public void Register(string host, string vm, MacAddress mac, string ipv4, string? pin = null) =>
            Ok(this[host].Handle(new ApiRequest("register-vm", Registration: new VmRegistration(vm, vm,
                [new VmInterface("ethernet", mac.ToString(), "tap-" + vm, Vni: 100, IPv4: [ipv4])], new VmPolicy(Pin: pin, Vni: 100), "metadata", "libvirt"))));

        public void Send(string vm, byte[] frame)
        {
            ChannelPort end;
            lock (_vmEnds)
            {
                end = _vmEnds.Where(e => e.Key.EndsWith("/tap-" + vm, StringComparison.Ordinal)).Select(e => e.Value).First();
            }
            end.Transmit(frame);
        }

        /// <summary>Frames that reached the VM on any host within <paramref name="wait"/>.</summary>
        public int Drain(string vm, TimeSpan wait)
        {
            List<ChannelPort> ends;
            lock (_vmEnds)
            {
                ends = [.. _vmEnds.Where(e => e.Key.EndsWith("/tap-" + vm, StringComparison.Ordinal)).Select(e => e.Value)];
            }
            var buffer = new byte[2048];
            var count = 0;
            foreach (var end in ends)
            {
                while (end.Receive(buffer, out _, count == 0 ? wait / ends.Count : TimeSpan.Zero) == PortResult.Ok)
                {
                    count++;
                }
            }
            return count;
        }

        public string Describe() => string.Join(" | ", _hosts.Select(h => $"{h.Agent.Config.HostId} {h.Link.Status}: {Describe(h.Agent)}; routes "
            + string.Join(",", h.Agent.Switch.Table.Endpoints.Where(e => e.RemoteHost is not null).Select(e => $"{e.Mac}->{e.RemoteHost}"))));

        private static string Desired(DesiredState d) =>
        $"v{d.Version & 0xffffffff} vms [{string.Join(",", d.Vms)}] bindings [{string.Join(",", d.Bindings.Select(b => $"{b.VmId}>{b.RemoteHost}={b.Stack}"))}] routes [{string.Join(",", d.Routes.Select(r => r.VmId + "@" + r.HostId))}] peers [{string.Join(",", d.Peers.Select(p => p.HostId))}]";

    private static string Describe(Agent.Agent agent) => AgentLinkTests.Describe(agent);

        private IFramePort Open(string host, string device)
        {
            var (agentEnd, vmEnd) = ChannelPort.CreatePair(device, device + "-vm");
            lock (_vmEnds)
            {
                _vmEnds[$"{host}/{device}"] = vmEnd;
            }
            return agentEnd;
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var (agent, link) in _hosts)
            {
                await link.DisposeAsync();
                agent.Dispose();
            }
            Directory.Delete(_state, recursive: true);
        }
    }

    [Fact]
    public async Task AnAgentGivenAnotherClustersId_SaysSoInItsStatus()
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        await using var silo = await LocalSilo.StartAsync(siloPort, gatewayPort);
        var control = new ControlPlaneConfig([$"127.0.0.1:{gatewayPort}"], ClusterId: "fabric-staging", ReportMilliseconds: 250);
        var config = new AgentConfig("host-a", new UnderlayConfig("127.0.0.1", null, 0), [StackPlugins.PathOf(StackPlugins.StdIPv4)], "unused", ControlPlane: control);
        using var agent = new Agent.Agent(config, NullLogger.Instance, device => ChannelPort.CreatePair(device, device + "-vm").Item1);
        agent.Start();
        await using var link = new ControlPlaneLink(agent, control, NullLogger.Instance);
        link.Start();
        // The gateway closes the connection of another cluster's client; whether the client read the gateway's preamble
        // first (and so knows why) varies from one attempt to the next, and the link tries again each period.
        string? said = null;
        await Eventually.TrueAsync(() => Task.FromResult((said = link.Status.LastError)?.Contains("Unexpected cluster id \"fabric\", expected \"fabric-staging\"", StringComparison.Ordinal) == true),
            Wait, "the link says why it fails", () => Task.FromResult($"{link.Status}"));
        Assert.False(link.Status.Connected);
        Assert.Contains("set controlPlane.clusterId (now \"fabric-staging\") to the silos' cluster id", said);
        Assert.Null(await silo.Grains.GetGrain<IHostGrain>("host-a").GetInfoAsync());
    }

    /// <summary>host-a and host-b: real agents on loopback UDP (fixed ports, so a restarted agent is found again), each with its link.</summary>
    private sealed class LinkedHosts : IAsyncDisposable
    {
        private readonly Dictionary<string, ChannelPort> _vmEnds = [];
        private readonly AgentConfig _configA;
        private readonly int _gatewayPort;

        /// <param name="gatewayPort">The silo's gateway.</param>
        /// <param name="stateA">host-a's state folder (host-b's is <paramref name="stateB"/>, or none).</param>
        /// <param name="stateB">host-b's state folder.</param>
        /// <param name="programmed">The configurations name no peer, route or key: the control plane programs them all.</param>
        /// <param name="authority">With it, each agent's certificate comes from it (the silo must trust it).</param>
        /// <param name="keyOverlapSeconds">How long a rotated host key still verifies.</param>
        public LinkedHosts(int gatewayPort, string stateA, string? stateB = null, bool programmed = false, DevelopmentAuthority? authority = null, int keyOverlapSeconds = 600)
        {
            _gatewayPort = gatewayPort;
            string[] stacks = [StackPlugins.PathOf(StackPlugins.StdIPv4), StackPlugins.PathOf(StackPlugins.StdIPv6), StackPlugins.PathOf(StackPlugins.SwapTest),
                StackPlugins.PathOf(StackPlugins.Secure)];
            var (portA, portB) = (FreeUdpPort(), FreeUdpPort());
            var control = new ControlPlaneConfig([$"127.0.0.1:{gatewayPort}"], ReportMilliseconds: 250, KeyOverlapSeconds: keyOverlapSeconds);
            var pki = Path.Combine(stateA, "..", "pki-" + Path.GetFileName(stateA));
            var controlB = Credentials.Secured(control, authority, pki, "host-b");
            control = Credentials.Secured(control, authority, pki, "host-a");
            _configA = new AgentConfig("host-a", new UnderlayConfig("127.0.0.1", null, portA), stacks, "unused", DrainMilliseconds: 200, StateDirectory: stateA,
                RemoteHosts: programmed ? null : [new RemoteHostConfig("host-b", "127.0.0.1", null, "std-ipv4", portB)],
                Routes: programmed ? null : [new RouteConfig(100, Mac3.ToString(), "host-b", ["10.0.0.3"])], ControlPlane: control);
            var configB = new AgentConfig("host-b", new UnderlayConfig("127.0.0.1", null, portB), stacks, "unused", DrainMilliseconds: 200, StateDirectory: stateB,
                RemoteHosts: programmed ? null : [new RemoteHostConfig("host-a", "127.0.0.1", null, "std-ipv4", portA)],
                Vms: [new VmConfig("vm3", "tap-vm3", 100, Mac3.ToString(), ["10.0.0.3"])],
                Routes: programmed ? null : [new RouteConfig(100, Mac1.ToString(), "host-a", ["10.0.0.1"]), new RouteConfig(100, Mac2.ToString(), "host-a", ["10.0.0.2"])],
                ControlPlane: controlB);
            A = new Agent.Agent(_configA, NullLogger.Instance, Open);
            A.Start();
            B = new Agent.Agent(configB, NullLogger.Instance, Open);
            B.Start();
            LinkA = new ControlPlaneLink(A, control, NullLogger.Instance);
            LinkB = new ControlPlaneLink(B, controlB, NullLogger.Instance);
            LinkA.Start();
            LinkB.Start();
        }

        public Agent.Agent A { get; private set; }
        public Agent.Agent B { get; }
        public ControlPlaneLink LinkA { get; private set; }
        public ControlPlaneLink LinkB { get; }

        public async Task RestartA()
        {
            await LinkA.DisposeAsync();
            A.Dispose();
            A = new Agent.Agent(_configA, NullLogger.Instance, Open);
            A.Start();
            LinkA = new ControlPlaneLink(A, _configA.ControlPlane!, NullLogger.Instance);
            LinkA.Start();
        }

        public void Send(string vm, byte[] frame) => Assert.Equal(PortResult.Ok, _vmEnds["tap-" + vm].Transmit(frame));

        /// <summary>Whether a frame reached <paramref name="vm"/> within <paramref name="timeout"/> (taking it).</summary>
        public bool TryReceive(string vm, TimeSpan timeout)
        {
            var buffer = new byte[2048];
            return _vmEnds["tap-" + vm].Receive(buffer, out _, timeout) == PortResult.Ok;
        }

        public void Expect(string vm)
        {
            var buffer = new byte[2048];
            Assert.Equal(PortResult.Ok, _vmEnds["tap-" + vm].Receive(buffer, out _, TimeSpan.FromSeconds(5)));
        }

        /// <summary>Devices that do not exist yet: a registration naming one waits for it (its vNIC stays pending).</summary>
        public HashSet<string> Absent { get; } = [];

        private IFramePort Open(string device)
        {
            lock (Absent)
            {
                if (Absent.Contains(device))
                {
                    throw new IOException($"no device {device} yet");
                }
            }
            var (agentEnd, vmEnd) = ChannelPort.CreatePair(device, device + "-vm");
            lock (_vmEnds)
            {
                _vmEnds[device] = vmEnd;
            }
            return agentEnd;
        }

        private static int FreeUdpPort()
        {
            using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
            socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            return ((IPEndPoint)socket.LocalEndPoint!).Port;
        }

        public async ValueTask DisposeAsync()
        {
            await LinkA.DisposeAsync();
            await LinkB.DisposeAsync();
            A.Dispose();
            B.Dispose();
            _ = _gatewayPort;
        }
    }
}
