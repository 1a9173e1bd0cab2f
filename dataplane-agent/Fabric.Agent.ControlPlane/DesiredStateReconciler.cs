using System.Collections.Immutable;
using Fabric.Registration;
using Fabric.Silo;

namespace Fabric.Agent.ControlPlane;

/// <summary>
/// The desired state an agent holds: what the control plane last said of its host, whole or as the deltas since. Immutable;
/// <see cref="Take(DesiredState)"/> and <see cref="Take(DesiredStateChange)"/> return the next one. Deltas applied one
/// after another end where the whole state of their last version ends (<see cref="SameAs"/>).
/// </summary>
public sealed class HeldDesiredState
{
    public static HeldDesiredState None { get; } = new(DesiredStateVersion.None, ImmutableDictionary<string, Binding>.Empty.WithComparers(StringComparer.Ordinal),
        ImmutableDictionary<string, Route>.Empty.WithComparers(StringComparer.Ordinal), ImmutableDictionary<string, Peer>.Empty.WithComparers(StringComparer.Ordinal));

    private HeldDesiredState(DesiredStateVersion version, ImmutableDictionary<string, Binding> bindings, ImmutableDictionary<string, Route> routes, ImmutableDictionary<string, Peer> peers) =>
        (Version, Bindings, Routes, Peers) = (version, bindings, routes, peers);

    public DesiredStateVersion Version { get; }

    /// <summary>The control plane's stack for each (VM, remote host), by <see cref="KeyOf(string, string)"/>.</summary>
    public ImmutableDictionary<string, Binding> Bindings { get; }

    /// <summary>Remote VMs' vNICs, by <see cref="Route.Key"/>.</summary>
    public ImmutableDictionary<string, Route> Routes { get; }

    /// <summary>Remote hosts this host forwards to, by host id.</summary>
    public ImmutableDictionary<string, Peer> Peers { get; }

    public static string KeyOf(string vmId, string remoteHost) => $"{vmId}|{remoteHost}";

    private static string KeyOf(Binding binding) => KeyOf(binding.VmId, binding.RemoteHost);

    /// <summary>The whole state <paramref name="desired"/> when it replaces what is held (<see cref="DesiredStateVersion.Replaces"/>), else this.</summary>
    public HeldDesiredState Take(DesiredState desired)
    {
        var version = new DesiredStateVersion(desired.Version);
        if (!version.Replaces(Version))
        {
            return this;
        }
        return new(version,
            desired.Bindings.ToImmutableDictionary(KeyOf, StringComparer.Ordinal),
            desired.Routes.ToImmutableDictionary(r => r.Key, StringComparer.Ordinal),
            desired.Peers.ToImmutableDictionary(p => p.HostId, StringComparer.Ordinal));
    }

    /// <summary>
    /// The held state with <paramref name="change"/> applied; null when the change does not follow the version held (a
    /// push was missed, or this one is stale): the whole state must be fetched instead.
    /// </summary>
    public HeldDesiredState? Take(DesiredStateChange change)
    {
        if (change.PreviousVersion != Version.Value)
        {
            return null;
        }
        var bindings = Bindings.RemoveRange(change.Removals.Select(KeyOf)).SetItems(change.Upserts.Select(b => KeyValuePair.Create(KeyOf(b), b)));
        var routes = Routes.RemoveRange(change.RouteRemovals.Select(r => r.Key)).SetItems(change.RouteUpserts.Select(r => KeyValuePair.Create(r.Key, r)));
        var peers = Peers.RemoveRange(change.PeerRemovals).SetItems(change.PeerUpserts.Select(p => KeyValuePair.Create(p.HostId, p)));
        return new(new DesiredStateVersion(change.Version), bindings, routes, peers);
    }

    /// <summary>True when both hold the same version, bindings, routes and peers.</summary>
    public bool SameAs(HeldDesiredState other) =>
        Version == other.Version && Same(Bindings, other.Bindings) && Same(Routes, other.Routes) && Same(Peers, other.Peers);

    private static bool Same<T>(ImmutableDictionary<string, T> a, ImmutableDictionary<string, T> b) =>
        a.Count == b.Count && a.All(pair => b.TryGetValue(pair.Key, out var other) && EqualityComparer<T>.Default.Equals(pair.Value, other));
}

/// <summary>What the control plane programmed into the switch so far, and what the switch has: the reconciler's input besides the desired state.</summary>
/// <param name="AppliedRoutes">Routes the link set, by key, as it set them.</param>
/// <param name="AppliedPeers">Peers the link added, by host id, as it added them.</param>
/// <param name="Paths">Remote hosts the switch has a path to (whoever added it).</param>
/// <param name="Programmed">Remote hosts whose paths the link added (it may replace and remove them; the others are the operator's).</param>
/// <param name="ConfiguredRoutes">Route keys of the agent's own configuration, which the control plane does not override.</param>
public sealed record ProgrammedNetwork(
    IReadOnlyDictionary<string, Route> AppliedRoutes,
    IReadOnlyDictionary<string, Peer> AppliedPeers,
    IReadOnlySet<string> Paths,
    IReadOnlySet<string> Programmed,
    IReadOnlySet<string> ConfiguredRoutes);

/// <summary>What to change in the switch's remote hosts and routes, in this order.</summary>
/// <param name="RemoveRoutes">Applied routes the desired state no longer has, or has on another host or unsealed, or that hold an
/// address another route is to take: removed (and set again after, if wanted). A route changed otherwise is only in
/// <paramref name="SetRoutes"/>: set in place.</param>
/// <param name="ForgetPeers">Applied peers to forget: gone from the desired state, changed, or whose path went.</param>
/// <param name="RemoveHosts">Of those, the hosts no longer desired: their paths are removed.</param>
/// <param name="AddPeers">Desired peers to add (or replace) with keys derived for the pair.</param>
/// <param name="SetRoutes">Desired routes to set, once their host's path exists.</param>
/// <param name="RemovalsHeld">Some withdrawals wait (the control plane started over a moment ago).</param>
public sealed record NetworkPlan(
    ImmutableArray<Route> RemoveRoutes,
    ImmutableArray<string> ForgetPeers,
    ImmutableArray<string> RemoveHosts,
    ImmutableArray<Peer> AddPeers,
    ImmutableArray<Route> SetRoutes,
    bool RemovalsHeld)
{
    public bool IsEmpty => RemoveRoutes.IsEmpty && ForgetPeers.IsEmpty && RemoveHosts.IsEmpty && AddPeers.IsEmpty && SetRoutes.IsEmpty;
}

/// <summary>A VM of this host as the reconciler sees it: its switch ports and its registration's policy.</summary>
public sealed record ReconciledVm(string Id, VmPolicy? Policy, IReadOnlyList<string> Ports);

/// <summary>One VM port's stack on one path to set (a hitless swap).</summary>
public sealed record BindStep(string VmId, string Port, string RemoteHost, string Stack);

/// <summary>What to change in the VMs' ports: whether each must be encrypted, whose stack its conversations ride
/// (<see cref="Roles"/>), and their stacks per path.</summary>
public sealed record BindingPlan(ImmutableArray<(string Port, bool MustEncrypt)> Seal, ImmutableArray<BindStep> Bind)
{
    public ImmutableArray<(string Port, PairRole Role)> Roles { get; init; } = [];

    public bool IsEmpty => Seal.IsEmpty && Bind.IsEmpty && Roles.IsEmpty;
}

/// <summary>
/// The agent's reconciliation as pure functions (as OVN's and Cilium's agents split theirs from the datapath): from the
/// held desired state and what the switch has, the changes that make the switch what the control plane says. Applying
/// a plan and planning again gives an empty plan; the same desired state reached by deltas or whole plans the same.
/// </summary>
public static class DesiredStateReconciler
{
    /// <summary>An address as the switch compares it (parsed: <c>FD00::5</c> and <c>fd00::5</c> are one); as written when it does not parse.</summary>
    private static string Canonical(string address) => System.Net.IPAddress.TryParse(address, out var parsed) ? parsed.ToString() : address;

    /// <summary>
    /// The switch's remote hosts and routes as the desired state says. The hosts and routes the link programmed go when
    /// the control plane withdraws them (unless <paramref name="holdRemovals"/>: the control plane started over and the
    /// fleet is placing its VMs again); a path or route of the agent's own configuration is left alone.
    /// </summary>
    public static NetworkPlan PlanNetwork(HeldDesiredState desired, ProgrammedNetwork actual, bool holdRemovals)
    {
        var held = false;
        var removeRoutes = ImmutableArray.CreateBuilder<Route>();
        var appliedRoutes = new HashSet<string>(actual.AppliedRoutes.Keys, StringComparer.Ordinal);
        foreach (var (key, route) in actual.AppliedRoutes.OrderBy(a => a.Key, StringComparer.Ordinal))
        {
            var wanted = desired.Routes.TryGetValue(key, out var now);
            if (wanted && now == route)
            {
                continue;
            }
            if (holdRemovals && !wanted)
            {
                held = true;
                continue;
            }
            appliedRoutes.Remove(key);
            if (wanted && now!.HostId == route.HostId && (now.Sealed || !route.Sealed))
            {
                // Set again below, which replaces the entry in place: frames to the VM never meet a missing route
                // meanwhile. A route that moves to another host (whose path may not exist yet) or is unsealed (an entry
                // stays sealed until removed) is removed first.
                continue;
            }
            removeRoutes.Add(route);
        }
        // The switch holds each address of a network once: an address that moves from one VM's route to another's (set in
        // place, or new) goes only after the route that holds it was removed — that one first, set again after if wanted.
        var removing = removeRoutes.Select(r => r.Key).ToHashSet(StringComparer.Ordinal);
        var holders = new Dictionary<(uint Vni, string Address), string>();
        foreach (var (key, route) in actual.AppliedRoutes)
        {
            if (!removing.Contains(key))
            {
                foreach (var address in route.Vnic.IPv4.Concat(route.Vnic.IPv6))
                {
                    holders[(route.Vnic.Vni, Canonical(address))] = key;
                }
            }
        }
        foreach (var wanted in desired.Routes.Values.Where(r => !appliedRoutes.Contains(r.Key) && !actual.ConfiguredRoutes.Contains(r.Key)).OrderBy(r => r.Key, StringComparer.Ordinal))
        {
            foreach (var address in wanted.Vnic.IPv4.Concat(wanted.Vnic.IPv6).Select(Canonical))
            {
                // Not when the holder's own desired route keeps the address (two routes claim it: the switch refuses the second).
                if (holders.TryGetValue((wanted.Vnic.Vni, address), out var holder) && holder != wanted.Key
                    && !(desired.Routes.TryGetValue(holder, out var kept) && kept.Vnic.Vni == wanted.Vnic.Vni && kept.Vnic.IPv4.Concat(kept.Vnic.IPv6).Select(Canonical).Contains(address))
                    && removing.Add(holder))
                {
                    removeRoutes.Add(actual.AppliedRoutes[holder]);
                    appliedRoutes.Remove(holder);
                }
            }
        }
        var forget = ImmutableArray.CreateBuilder<string>();
        var removeHosts = ImmutableArray.CreateBuilder<string>();
        var appliedPeers = new HashSet<string>(actual.AppliedPeers.Keys, StringComparer.Ordinal);
        var programmed = new HashSet<string>(actual.Programmed, StringComparer.Ordinal);
        var paths = new HashSet<string>(actual.Paths, StringComparer.Ordinal);
        foreach (var (id, peer) in actual.AppliedPeers.OrderBy(a => a.Key, StringComparer.Ordinal))
        {
            var wanted = desired.Peers.TryGetValue(id, out var now);
            if (wanted && now == peer && actual.Paths.Contains(id))
            {
                continue;
            }
            if (holdRemovals && !wanted)
            {
                held = true;
                continue;
            }
            forget.Add(id);
            appliedPeers.Remove(id);
            if (!wanted)
            {
                // No VM here shares a network with it any more (or it left the fleet): nothing may go there or come from it.
                removeHosts.Add(id);
                programmed.Remove(id);
                paths.Remove(id);
            }
        }
        // A path this link did not add (the configuration's, or one set through the local API) is the operator's: it stands.
        var addPeers = desired.Peers.Values.Where(p => !appliedPeers.Contains(p.HostId) && (!paths.Contains(p.HostId) || programmed.Contains(p.HostId)))
            .OrderBy(p => p.HostId, StringComparer.Ordinal).ToImmutableArray();
        var setRoutes = desired.Routes.Values.Where(r => !appliedRoutes.Contains(r.Key) && !actual.ConfiguredRoutes.Contains(r.Key))
            .OrderBy(r => r.Key, StringComparer.Ordinal).ToImmutableArray();
        return new(removeRoutes.ToImmutable(), forget.ToImmutable(), removeHosts.ToImmutable(), addPeers, setRoutes, held);
    }

    /// <summary>
    /// Each VM's ports as the desired state says: encrypted as its bindings say (else as its registration's policy), and
    /// on every path the control plane's stack for it, or before a decision (a new VM, the silo away) its policy's default
    /// (null: none, it stays as it is).
    /// </summary>
    /// <param name="desired">What the control plane said.</param>
    /// <param name="vms">This host's VMs.</param>
    /// <param name="paths">The remote hosts the switch has a path to.</param>
    /// <param name="sealedNow">Whether a port must be encrypted now (null: the switch has no such port).</param>
    /// <param name="boundNow">The stack a port runs on a path now (port, remote host), or null.</param>
    /// <param name="defaultStack">The stack a VM of this policy runs before a decision, or null.</param>
    /// <param name="roleNow">Whose stack a port's conversations ride now (null: the switch has no such port, or roles are not planned).</param>
    public static BindingPlan PlanBindings(HeldDesiredState desired, IEnumerable<ReconciledVm> vms, IEnumerable<string> paths,
        Func<string, bool?> sealedNow, Func<string, string, string?> boundNow, Func<VmPolicy?, string?> defaultStack,
        Func<string, PairRole?>? roleNow = null)
    {
        var seal = ImmutableArray.CreateBuilder<(string, bool)>();
        var roles = ImmutableArray.CreateBuilder<(string, PairRole)>();
        var bind = ImmutableArray.CreateBuilder<BindStep>();
        var remotes = paths.Order(StringComparer.Ordinal).ToList();
        var byVm = desired.Bindings.Values.ToLookup(b => b.VmId, StringComparer.Ordinal);
        foreach (var vm in vms)
        {
            var bindings = byVm[vm.Id].ToList();
            var mustEncrypt = bindings.Count > 0 ? bindings.Any(b => b.Sealed) : vm.Policy?.Security == "confidential";
            // Before a decision (no binding yet: a new VM, the silo away) as its registration's policy says, so that the binding
            // it gets then is the one the control plane's decision will keep (no swap between slots when the silo returns);
            // a VM registered with no policy rides its own stack, as on a host without a control plane.
            var role = bindings.Count == 0 ? (vm.Policy is { } registered ? PairRoles.Of(registered.Workload, registered.Pin) : PairRole.Own)
                : bindings.Any(b => b.Role == PairRole.Leads) ? PairRole.Leads : bindings.Any(b => b.Role == PairRole.Follows) ? PairRole.Follows : PairRole.Own;
            foreach (var port in vm.Ports)
            {
                if (sealedNow(port) is { } now && now != mustEncrypt)
                {
                    seal.Add((port, mustEncrypt));
                }
                if (roleNow?.Invoke(port) is { } roleThere && roleThere != role)
                {
                    roles.Add((port, role));
                }
            }
            foreach (var remote in remotes)
            {
                var stack = desired.Bindings.TryGetValue(HeldDesiredState.KeyOf(vm.Id, remote), out var binding) ? binding.Stack : defaultStack(vm.Policy);
                if (stack is null)
                {
                    continue;
                }
                foreach (var port in vm.Ports.Where(port => boundNow(port, remote) != stack))
                {
                    bind.Add(new BindStep(vm.Id, port, remote, stack));
                }
            }
        }
        return new(seal.ToImmutable(), bind.ToImmutable()) { Roles = roles.ToImmutable() };
    }
}
