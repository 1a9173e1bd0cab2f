using System.Collections.Immutable;
using Fabric.Agent.ControlPlane;
using Fabric.Registration;

namespace Fabric.Silo.Tests;

/// <summary>
/// The agent's desired-state reconciler on its own (no cluster, no switch): versions order as the control plane issues
/// them, deltas end where the whole state ends, and a plan carried out leaves nothing to do — on seeded random histories
/// of a small fleet, and on the cases the link depends on (an operator's path stands, withdrawals wait after the control
/// plane started over).
/// </summary>
public class ReconcilerTests
{
    private static readonly string[] Hosts = ["host-b", "host-c", "host-d", "host-e"];
    private static readonly string[] Vms = ["vm1", "vm2", "vm3"];
    private static readonly string[] Stacks = ["std-ipv4", "fec", "secure"];

    [Fact]
    public void Versions_OrderWithinAnEpoch_AndAnotherEpochReplacesWhateverIsHeld()
    {
        var first = DesiredStateVersion.Start(7);
        Assert.Equal(7, first.Epoch);
        Assert.Equal(7L << 32, first.Value);
        Assert.Equal(first.Value + 1, first.Next.Value);
        Assert.Equal(7, first.Next.Epoch);
        Assert.True(first.Next.Replaces(first));
        Assert.True(first.Replaces(first));
        Assert.False(first.Replaces(first.Next));
        // A control plane that started over (an older or newer epoch) replaces what the agent holds, whatever its counter.
        Assert.True(DesiredStateVersion.Start(6).Replaces(first.Next.Next));
        Assert.True(DesiredStateVersion.Start(8).Replaces(first.Next));
        Assert.True(first.Replaces(DesiredStateVersion.None));
        Assert.Equal(-1, DesiredStateVersion.None.Epoch);
        Assert.Throws<ArgumentOutOfRangeException>(() => DesiredStateVersion.Start(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => DesiredStateVersion.Start(1L << 31));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void DeltasAppliedOneAfterAnother_EndWhereTheWholeStateEnds(int seed)
    {
        var random = new Random(seed);
        var fleet = new Fleet(DesiredStateVersion.Start(40 + seed));
        var held = HeldDesiredState.None.Take(fleet.Whole());
        for (var step = 0; step < 300; step++)
        {
            var change = fleet.Change(random);
            held = held.Take(change) ?? throw new InvalidOperationException($"step {step}: the change from {change.PreviousVersion} did not follow {held.Version}");
            Assert.True(held.SameAs(HeldDesiredState.None.Take(fleet.Whole())), $"step {step}: deltas and the whole state differ");
        }
        // A change that does not follow what is held (a push missed) is not applied: the agent fetches the whole state.
        var skipped = fleet.Change(random);
        var next = fleet.Change(random);
        Assert.Null(held.Take(next));
        Assert.NotNull(held.Take(skipped));
        // A whole state older than the one held changes nothing; one of a new epoch replaces it.
        var old = held.Take(skipped)!;
        Assert.Same(old, old.Take(fleet.Whole() with { Version = held.Version.Value }));
        var restarted = new Fleet(DesiredStateVersion.Start(1));
        Assert.True(old.Take(restarted.Whole()).SameAs(HeldDesiredState.None.Take(restarted.Whole())));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void APlanCarriedOut_LeavesNothingToDo_AndTheSwitchIsWhatTheControlPlaneSays(int seed)
    {
        var random = new Random(seed);
        var fleet = new Fleet(DesiredStateVersion.Start(3));
        var world = new World();
        // The operator's own path (from the agent's configuration) and one configured route: the control plane leaves them.
        world.Paths.Add("host-e");
        var configured = Route.KeyOf(1, Mac("host-e", "vm3"));
        var held = HeldDesiredState.None.Take(fleet.Whole());
        for (var step = 0; step < 200; step++)
        {
            held = held.Take(fleet.Change(random))!;
            if (step % 7 == 0)
            {
                held = held.Take(fleet.Whole());
            }
            var plan = DesiredStateReconciler.PlanNetwork(held, world.Programmed(configured), holdRemovals: false);
            world.CarryOut(plan);
            var again = DesiredStateReconciler.PlanNetwork(held, world.Programmed(configured), holdRemovals: false);
            Assert.True(again.IsEmpty, $"step {step}: a second plan still does {Describe(again)}");
            var expectedPaths = held.Peers.Keys.Append("host-e").ToHashSet(StringComparer.Ordinal);
            Assert.Equal(expectedPaths.Order(StringComparer.Ordinal), world.Paths.Order(StringComparer.Ordinal));
            // Every route the control plane gives is set once its host has a path, except the configuration's own.
            Assert.Equal(held.Routes.Values.Where(r => r.Key != configured && world.Paths.Contains(r.HostId)).Select(r => r.Key).Order(StringComparer.Ordinal),
                world.Routes.Keys.Order(StringComparer.Ordinal));
            Assert.All(world.Routes, r => Assert.Equal(held.Routes[r.Key], r.Value));
            Assert.DoesNotContain("host-e", world.ProgrammedHosts);
            Assert.True(world.Refused == 0, $"step {step}: {world.Refused} route(s) met an address another entry still held");
        }
    }

    [Fact]
    public void AfterTheControlPlaneStartedOver_WithdrawalsWait_ThenGo()
    {
        var fleet = new Fleet(DesiredStateVersion.Start(5));
        var world = new World();
        var held = HeldDesiredState.None.Take(fleet.Whole());
        world.CarryOut(DesiredStateReconciler.PlanNetwork(held, world.Programmed(), holdRemovals: false));
        Assert.NotEmpty(world.Routes);
        // A silo that lost its memory comes back with nothing placed yet.
        var empty = new Fleet(DesiredStateVersion.Start(6), empty: true);
        held = held.Take(empty.Whole());
        var holding = DesiredStateReconciler.PlanNetwork(held, world.Programmed(), holdRemovals: true);
        Assert.True(holding.IsEmpty);
        Assert.True(holding.RemovalsHeld);
        var after = DesiredStateReconciler.PlanNetwork(held, world.Programmed(), holdRemovals: false);
        Assert.False(after.RemovalsHeld);
        world.CarryOut(after);
        Assert.Empty(world.Routes);
        Assert.Empty(world.Paths);
    }

    [Fact]
    public void Bindings_AreTheControlPlanesStacks_ElseThePolicysDefault_AndAConvergedSwitchNeedsNothing()
    {
        var desired = HeldDesiredState.None.Take(new DesiredState("host-a", DesiredStateVersion.Start(1).Value,
            [new Binding("vm1", "host-b", "fec"), new Binding("vm2", "host-b", "secure", Sealed: true), new Binding("vm2", "host-c", "secure", Sealed: true)]));
        var vms = new[]
        {
            new ReconciledVm("vm1", new VmPolicy(), ["vm1/0", "vm1/1"]),
            new ReconciledVm("vm2", new VmPolicy(), ["vm2/0"]),
            new ReconciledVm("vm3", new VmPolicy(Security: "confidential"), ["vm3/0"]),
            new ReconciledVm("vm4", new VmPolicy(), ["vm4/0"]),
        };
        var sealedPorts = new Dictionary<string, bool>(StringComparer.Ordinal) { ["vm1/0"] = false, ["vm1/1"] = false, ["vm2/0"] = false, ["vm3/0"] = false, ["vm4/0"] = false };
        var bound = new Dictionary<(string, string), string>();
        string? Default(VmPolicy? policy) => policy?.Security == "confidential" ? "secure" : null;
        BindingPlan Plan() => DesiredStateReconciler.PlanBindings(desired, vms, ["host-b", "host-c"], p => sealedPorts.TryGetValue(p, out var s) ? s : null,
            (port, remote) => bound.GetValueOrDefault((port, remote)), Default);

        var plan = Plan();
        // vm2 is sealed because its bindings say so; vm3 (no decision yet) because its registration is confidential.
        Assert.Equal(["vm2/0:True", "vm3/0:True"], plan.Seal.Select(s => $"{s.Port}:{s.MustEncrypt}"));
        Assert.Equal(["vm1/0>host-b:fec", "vm1/1>host-b:fec", "vm2/0>host-b:secure", "vm2/0>host-c:secure", "vm3/0>host-b:secure", "vm3/0>host-c:secure"],
            plan.Bind.Select(b => $"{b.Port}>{b.RemoteHost}:{b.Stack}"));
        foreach (var (port, mustEncrypt) in plan.Seal)
        {
            sealedPorts[port] = mustEncrypt;
        }
        foreach (var step in plan.Bind)
        {
            bound[(step.Port, step.RemoteHost)] = step.Stack;
        }
        Assert.True(Plan().IsEmpty);
        // A port that went back to another stack (a path replaced) is bound again; a port the switch does not have is not sealed.
        bound[("vm1/1", "host-b")] = "std-ipv4";
        sealedPorts.Remove("vm2/0");
        Assert.Equal(["vm1/1>host-b:fec"], Plan().Bind.Select(b => $"{b.Port}>{b.RemoteHost}:{b.Stack}"));
        Assert.Empty(Plan().Seal);
    }

    [Fact]
    public void EachPortTakesTheRoleItsBindingsSay_ItsRegistrationsBeforeADecision_AndAConvergedSwitchNeedsNoRole()
    {
        var desired = HeldDesiredState.None.Take(new DesiredState("host-a", DesiredStateVersion.Start(1).Value,
            [new Binding("vm1", "host-b", "fec", Role: PairRole.Leads), new Binding("vm2", "host-b", "std-ipv4", Role: PairRole.Follows)]));
        var vms = new[]
        {
            new ReconciledVm("vm1", new VmPolicy(), ["vm1/0"]),
            new ReconciledVm("vm2", new VmPolicy(), ["vm2/0"]),
            new ReconciledVm("vm3", new VmPolicy(Pin: "fec"), ["vm3/0"]),
            new ReconciledVm("vm4", null, ["vm4/0"]),
        };
        var roles = new Dictionary<string, PairRole>(StringComparer.Ordinal) { ["vm1/0"] = PairRole.Own, ["vm2/0"] = PairRole.Leads, ["vm3/0"] = PairRole.Follows, ["vm4/0"] = PairRole.Leads };
        var bound = new Dictionary<(string, string), string> { [("vm1/0", "host-b")] = "fec", [("vm2/0", "host-b")] = "std-ipv4" };
        BindingPlan Plan() => DesiredStateReconciler.PlanBindings(desired, vms, ["host-b"], _ => false, (port, remote) => bound.GetValueOrDefault((port, remote)),
            _ => null, port => roles.TryGetValue(port, out var role) ? role : null);

        var plan = Plan();
        // vm3 has no decision yet: its registration's policy (a pin) says it leads; vm4 was registered with none, so its
        // conversations ride its own stack, as on a host without a control plane.
        Assert.Equal(["vm1/0:Leads", "vm2/0:Follows", "vm3/0:Leads", "vm4/0:Own"], plan.Roles.Select(r => $"{r.Port}:{r.Role}"));
        Assert.False(plan.IsEmpty);
        foreach (var (port, role) in plan.Roles)
        {
            roles[port] = role;
        }
        Assert.True(Plan().IsEmpty);
        // Without a way to read the switch's roles, none is planned.
        Assert.Empty(DesiredStateReconciler.PlanBindings(desired, vms, ["host-b"], _ => false, (port, remote) => bound.GetValueOrDefault((port, remote)), _ => null).Roles);
    }

    [Theory]
    [InlineData("general", null, PairRole.Follows)]
    [InlineData("general", "fec", PairRole.Leads)]
    [InlineData("latency", null, PairRole.Leads)]
    [InlineData("bulk", null, PairRole.Leads)]
    public void AVmWhosePolicyDeclaresANeed_LeadsItsConversations_OneThatDeclaresNoneFollows(string workload, string? pin, PairRole role) =>
        Assert.Equal(role, VmGrain.RoleOf(Policy.Default with { Workload = workload, Pin = pin }));

    private static string Describe(NetworkPlan plan) =>
        $"remove routes [{string.Join(", ", plan.RemoveRoutes.Select(r => r.Key))}], forget [{string.Join(", ", plan.ForgetPeers)}], remove hosts [{string.Join(", ", plan.RemoveHosts)}], " +
        $"add peers [{string.Join(", ", plan.AddPeers.Select(p => p.HostId))}], set routes [{string.Join(", ", plan.SetRoutes.Select(r => r.Key))}]";

    /// <summary>
    /// A route whose addresses change, or that becomes sealed, is set over the old entry in place: no removal, so frames
    /// to the VM never meet a missing route. One that moves to another host, or is unsealed, is removed first (the switch
    /// keeps an entry sealed until it is removed), and the switch then ends as the desired state says.
    /// </summary>
    [Fact]
    public void ARouteChangedInPlace_IsSetOverTheOld_ButOneMovedOrUnsealedIsRemovedFirst()
    {
        var vnic = new Vnic(Mac("host-b", "vm2"), 1, ["10.0.0.2"], []);
        var route = new Route("vm2", "host-b", vnic);
        var peers = Hosts.Select(h => new Peer(h, "192.0.2.1", null, 47110, null)).ToImmutableArray();
        HeldDesiredState Desired(Route r, long version) => HeldDesiredState.None.Take(new DesiredState("host-a", version, []) { Routes = [r], Peers = peers });
        var world = new World();
        world.CarryOut(DesiredStateReconciler.PlanNetwork(Desired(route, 1), world.Programmed(), holdRemovals: false));
        Assert.Equal(route, world.Routes[route.Key]);

        Route[] inPlace = [route with { Vnic = vnic with { IPv4 = ["10.0.0.22"] } }, route with { Sealed = true }];
        Route[] removedFirst = [route with { HostId = "host-c" }];
        var version = 2L;
        foreach (var changed in inPlace.Concat(removedFirst).Append(route))
        {
            var plan = DesiredStateReconciler.PlanNetwork(Desired(changed, version++), world.Programmed(), holdRemovals: false);
            var unsealed = world.Routes[route.Key].Sealed && !changed.Sealed;
            Assert.Equal(!inPlace.Contains(changed) && (unsealed || changed.HostId != world.Routes[route.Key].HostId), plan.RemoveRoutes.Length == 1);
            Assert.Equal(changed, Assert.Single(plan.SetRoutes));
            world.CarryOut(plan);
            Assert.Equal(changed, world.Routes[route.Key]);
            Assert.True(DesiredStateReconciler.PlanNetwork(Desired(changed, version - 1), world.Programmed(), holdRemovals: false).IsEmpty);
        }
    }

    /// <summary>
    /// An address that moves from one remote VM to another in one change (an IPAM reassigned it; both VMs stay where they
    /// are) leaves the route that holds it first, also when the VM taking it is set first: the switch holds each address
    /// of a network once and refuses a second holder. Two VMs that swap addresses are both removed and set again.
    /// </summary>
    [Fact]
    public void AnAddressThatMovesBetweenVms_LeavesItsHolderFirst_SoTheSwitchNeverSeesItTwice()
    {
        var peers = Hosts.Select(h => new Peer(h, "192.0.2.1", null, 47110, null)).ToImmutableArray();
        static Route At(string vm, string address) => new(vm, "host-b", new Vnic(Mac("host-b", vm), 1, [address], []));
        var version = 1L;
        HeldDesiredState Desired(params Route[] routes) => HeldDesiredState.None.Take(new DesiredState("host-a", version++, []) { Routes = [.. routes], Peers = peers });
        var world = new World();
        world.CarryOut(DesiredStateReconciler.PlanNetwork(Desired(At("vm2", "10.0.0.5"), At("vm3", "10.0.0.6")), world.Programmed(), holdRemovals: false));
        // vm2's route sorts first and takes vm3's address; vm3 gets another. Then the two swap. Then vm3 takes an IPv6
        // address vm2 had, written otherwise (the switch parses addresses: FD00::5 is fd00::5).
        static Route At6(string vm, string address) => new(vm, "host-b", new Vnic(Mac("host-b", vm), 1, [], [address]));
        Route[][] changes = [[At("vm2", "10.0.0.6"), At("vm3", "10.0.0.8")], [At("vm2", "10.0.0.8"), At("vm3", "10.0.0.6")],
            [At6("vm2", "FD00::5"), At6("vm3", "fd00::6")], [At6("vm2", "fd00::7"), At6("vm3", "fd00:0::5")]];
        // The route that must leave first in each change (none when each keeps its own addresses).
        string?[] leavesFirst = ["vm3", "vm3", null, "vm2"];
        for (var i = 0; i < changes.Length; i++)
        {
            var change = changes[i];
            var desired = Desired(change);
            var plan = DesiredStateReconciler.PlanNetwork(desired, world.Programmed(), holdRemovals: false);
            if (leavesFirst[i] is { } holder)
            {
                Assert.Contains(plan.RemoveRoutes, r => r.VmId == holder);
            }
            else
            {
                Assert.Empty(plan.RemoveRoutes);
            }
            world.CarryOut(plan);
            Assert.Equal(0, world.Refused);
            Assert.All(change, r => Assert.Equal(r, world.Routes[r.Key]));
            Assert.True(DesiredStateReconciler.PlanNetwork(desired, world.Programmed(), holdRemovals: false).IsEmpty);
        }
    }

    private static string Mac(string host, string vm) => $"52:54:00:00:{Array.IndexOf(Hosts, host) + 1:x2}:{Array.IndexOf(Vms, vm) + 1:x2}";

    /// <summary>A control plane's view of one host, changed at random as a host grain changes it: VMs come, move, go, change stacks and policies; peers change keys.</summary>
    private sealed class Fleet(DesiredStateVersion start, bool empty = false)
    {
        private readonly Dictionary<string, Binding> _bindings = empty ? [] : new() { ["vm1|host-b"] = new Binding("vm1", "host-b", "std-ipv4") };
        private readonly Dictionary<string, Route> _routes = empty ? [] : Seed();
        private readonly Dictionary<string, Peer> _peers = empty ? [] : new() { ["host-b"] = PeerOf("host-b", "k0"), ["host-c"] = PeerOf("host-c", "k0") };
        private DesiredStateVersion _version = start;

        private static Dictionary<string, Route> Seed()
        {
            var b = new Route("vm2", "host-b", new Vnic(Mac("host-b", "vm2"), 1, ["10.0.0.2"], []));
            var c = new Route("vm3", "host-c", new Vnic(Mac("host-c", "vm3"), 1, ["10.0.0.3"], []));
            return new() { [b.Key] = b, [c.Key] = c };
        }

        private static Peer PeerOf(string host, string key) => new(host, "192.0.2." + (Array.IndexOf(Hosts, host) + 2), null, 47110, key);

        public DesiredState Whole() => new("host-a", _version.Value, [.. _bindings.Values])
        {
            Routes = [.. _routes.Values],
            Peers = [.. _peers.Values],
        };

        public DesiredStateChange Change(Random random)
        {
            var (bindings, routes, peers) = (new Dictionary<string, Binding>(_bindings), new Dictionary<string, Route>(_routes), new Dictionary<string, Peer>(_peers));
            for (var n = random.Next(1, 4); n > 0; n--)
            {
                var host = Hosts[random.Next(Hosts.Length)];
                var vm = Vms[random.Next(Vms.Length)];
                switch (random.Next(6))
                {
                    case 0:
                        _bindings[$"{vm}|{host}"] = new Binding(vm, host, Stacks[random.Next(Stacks.Length)], Sealed: random.Next(4) == 0);
                        break;
                    case 1:
                        _bindings.Remove($"{vm}|{host}");
                        break;
                    case 2:
                        // A remote VM is placed (or moves, or becomes confidential): its host becomes a peer. Its address comes
                        // from a small pool, as an IPAM gives them: one another VM holds moves to this one, and that VM gets a
                        // free one in the same change (each address is one VM's in the desired state, never two).
                        var route = new Route(vm, host, new Vnic(Mac(host, vm), 1, [$"10.0.0.{random.Next(1, 8)}"], []), Sealed: random.Next(3) == 0);
                        foreach (var holder in _routes.Values.Where(r => r.Key != route.Key && r.Vnic.IPv4.Contains(route.Vnic.IPv4[0])).ToList())
                        {
                            var free = Enumerable.Range(1, 30).Select(i => $"10.0.0.{i}")
                                .First(a => a != route.Vnic.IPv4[0] && !_routes.Values.Any(r => r.Key != route.Key && r.Vnic.IPv4.Contains(a)));
                            _routes[holder.Key] = holder with { Vnic = holder.Vnic with { IPv4 = [free] } };
                        }
                        _routes[route.Key] = route;
                        _peers.TryAdd(host, PeerOf(host, "k0"));
                        break;
                    case 3 when _routes.Values.FirstOrDefault(r => r.HostId == host) is { } leaving:
                        _routes.Remove(leaving.Key);
                        break;
                    case 4 when !_routes.Values.Any(r => r.HostId == host):
                        _peers.Remove(host);
                        break;
                    case 5 when _peers.ContainsKey(host):
                        // The peer came back with a new key.
                        _peers[host] = PeerOf(host, "k" + random.Next(1000));
                        break;
                }
            }
            // The change is what differs, as a host grain publishes it.
            var previous = _version;
            _version = _version.Next;
            return new DesiredStateChange("host-a", previous.Value, _version.Value,
                [.. _bindings.Where(b => !bindings.TryGetValue(b.Key, out var was) || was != b.Value).Select(b => b.Value)],
                [.. bindings.Where(b => !_bindings.ContainsKey(b.Key)).Select(b => b.Value)])
            {
                RouteUpserts = [.. _routes.Where(r => !routes.TryGetValue(r.Key, out var was) || was != r.Value).Select(r => r.Value)],
                RouteRemovals = [.. routes.Where(r => !_routes.ContainsKey(r.Key)).Select(r => r.Value)],
                PeerUpserts = [.. _peers.Where(p => !peers.TryGetValue(p.Key, out var was) || was != p.Value).Select(p => p.Value)],
                PeerRemovals = [.. peers.Keys.Where(h => !_peers.ContainsKey(h))],
            };
        }
    }

    /// <summary>The switch and the link's bookkeeping as plain collections, changed only by carrying out plans (as the link does).</summary>
    private sealed class World
    {
        public HashSet<string> Paths { get; } = new(StringComparer.Ordinal);
        public Dictionary<string, Route> Routes { get; } = new(StringComparer.Ordinal);
        public HashSet<string> ProgrammedHosts { get; } = new(StringComparer.Ordinal);

        /// <summary>A route's addresses as the switch compares them (parsed).</summary>
        private static IEnumerable<string> Addresses(Route route) => route.Vnic.IPv4.Concat(route.Vnic.IPv6).Select(a => System.Net.IPAddress.Parse(a).ToString());

        /// <summary>Route sets refused because another entry held one of their addresses.</summary>
        public int Refused { get; private set; }
        private readonly Dictionary<string, Peer> _appliedPeers = new(StringComparer.Ordinal);

        public ProgrammedNetwork Programmed(string? configuredRoute = null) =>
            new(Routes, _appliedPeers, Paths, ProgrammedHosts, configuredRoute is null ? new HashSet<string>() : new HashSet<string>([configuredRoute], StringComparer.Ordinal));

        public void CarryOut(NetworkPlan plan)
        {
            foreach (var route in plan.RemoveRoutes)
            {
                Routes.Remove(route.Key);
            }
            foreach (var id in plan.ForgetPeers)
            {
                _appliedPeers.Remove(id);
            }
            foreach (var id in plan.RemoveHosts)
            {
                Paths.Remove(id);
                ProgrammedHosts.Remove(id);
                foreach (var gone in Routes.Values.Where(r => r.HostId == id).ToList())
                {
                    // As the switch does: a removed host's remote VM entries go with it.
                    Routes.Remove(gone.Key);
                }
            }
            foreach (var peer in plan.AddPeers)
            {
                Paths.Add(peer.HostId);
                ProgrammedHosts.Add(peer.HostId);
                _appliedPeers[peer.HostId] = peer;
            }
            foreach (var route in plan.SetRoutes.Where(r => Paths.Contains(r.HostId)))
            {
                // As the switch does: an address another entry of the network holds is refused (counted here: a plan that
                // orders its steps right never meets one); an entry set over a sealed one stays sealed (only removing it unseals it).
                if (Routes.Values.Any(r => r.Key != route.Key && r.Vnic.Vni == route.Vnic.Vni && Addresses(r).Intersect(Addresses(route)).Any()))
                {
                    Refused++;
                    continue;
                }
                Routes[route.Key] = Routes.TryGetValue(route.Key, out var existing) && existing.Sealed ? route with { Sealed = true } : route;
            }
        }
    }
}
