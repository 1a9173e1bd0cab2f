using System.Collections.Immutable;
using Microsoft.Extensions.Logging;
using Fabric.Silo.Selection;
using Orleans.Utilities;

namespace Fabric.Silo;

/// <summary>
/// Persisted per host: what the agent said about itself, the VMs placed here, the peers it reports and the epoch of
/// desired-state versions. The bindings themselves are not stored here: each VM persists its own, and an activation
/// rebuilds the host's from its VMs — so a binding is written once, by its VM, however large the host. Acknowledgements
/// are soft state too: they name versions of this activation's epoch.
/// </summary>
[GenerateSerializer, Alias("fabric.host-state")]
public sealed class HostState
{
    [Id(0)] public HostInfo? Info { get; set; }
    [Id(1)] public long Epoch { get; set; }
    [Id(4)] public HashSet<string> Vms { get; set; } = new(StringComparer.Ordinal);
    [Id(5)] public HashSet<string> Peers { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The virtual networks this host has a VM in (their grains hold the routes; an activation reads them back).</summary>
    [Id(6)] public HashSet<uint> Networks { get; set; } = [];

    /// <summary>An operator removed the host from the fleet: it may not register, report or have VMs placed on it.</summary>
    [Id(7)] public bool Removed { get; set; }
}

/// <summary>How long an agent's subscription to its host grain lasts without a registration, renewal or report from that host.</summary>
public sealed record AgentSubscriptionOptions
{
    public TimeSpan Expiry { get; init; } = TimeSpan.FromMinutes(1);
}

public sealed partial class HostGrain : Grain, IHostGrain
{
    private const int OutcomeLimit = 2000;
    private readonly IPersistentState<HostState> _state;
    private readonly ObserverManager<IAgentObserver> _observers;
    private readonly Queue<Outcome> _outcomes = new();
    /// <summary>Per (VM, remote host), its binding: keyed by the pair of strings the binding already holds (a composite
    /// string key was one more string per VM path, a million of them at 100,000 paths).</summary>
    private readonly Dictionary<(string VmId, string RemoteHost), Binding> _bindings = [];
    private readonly Dictionary<string, PathState> _paths = new(StringComparer.Ordinal);

    /// <summary>
    /// A path from this host (key: the remote host): its smoother, its chart history, when its conditions were last told
    /// to this host's VMs, and what each VM last took. The waking lives here, with the samples, not in a grain per path:
    /// at 100,000 paths the path grains were 100,000 activations (about 250 MB) whose only work was to pass a change on
    /// to the same VMs — this host's.
    /// </summary>
    private sealed class PathState(DateTimeOffset notified)
    {
        public PathSmoother Smoother { get; } = new();

        public PathHistory History { get; } = new();

        /// <summary>When the path's conditions were last told to the VMs (spread at random over the period at first).</summary>
        public DateTimeOffset Notified { get; set; } = notified;

        /// <summary>Per VM, the conditions it last took (its call returned) and when: what a repeat need not tell again.</summary>
        public Dictionary<string, (PathConditions Conditions, DateTimeOffset At)> Told { get; } = new(StringComparer.Ordinal);
    }
    private static readonly DateTimeOffset EpochOrigin = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
    private readonly Dictionary<string, Route> _routes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Peer> _peers = new(StringComparer.Ordinal);

    /// <summary>The member hosts of this host's networks as those networks last described them (the source of <see cref="_peers"/>).</summary>
    private readonly Dictionary<string, Peer> _knownPeers = new(StringComparer.Ordinal);
    private static readonly TimeSpan ResyncEvery = TimeSpan.FromMinutes(1);
    private DateTimeOffset _resyncedAt;
    private DateTimeOffset? _lastSeen;

    /// <summary>The most packets (or timed calls) a host may say one stack version counted: 10¹², far beyond any real host's.</summary>
    private const long MaxCount = 1_000_000_000_000;

    /// <summary>
    /// How often each path's conditions are looked at again even without a significant change: a notice to a VM whose silo
    /// just died is lost, and nothing else would wake it while the path stays as it is (a three-silo test found 6 of 1,000
    /// VMs stuck on their old stack after a kill -9). Told again are the VMs whose last notice failed, that took different
    /// conditions, or that have not been told for <see cref="RetellEvery"/>.
    /// </summary>
    public static readonly TimeSpan RenotifyEvery = TimeSpan.FromSeconds(15);

    /// <summary>How long a VM that took the path's conditions goes without being told them again.</summary>
    public static readonly TimeSpan RetellEvery = TimeSpan.FromMinutes(1);
    private DesiredStateVersion _version;
    private long _acknowledged;

    /// <summary>The observer the agent last registered or renewed: what a report keeps subscribed (not one from an earlier connection).</summary>
    private IAgentObserver? _observer;

    /// <summary>Whether the credentials <see cref="_observer"/> was subscribed with have been withdrawn since (null: a silo without the channel's security).</summary>
    private Func<bool>? _observerRevoked;

    private void Subscribe(IAgentObserver observer)
    {
        _observerRevoked = CallerContext.Revoked;
        if (_observer is { } previous && !previous.Equals(observer))
        {
            // The agent reconnected (a new client makes a new observer): pushes to the old one would only wait to fail.
            _observers.Unsubscribe(previous);
        }
        _observer = observer;
        _observers.Subscribe(observer, observer);
    }

    public HostGrain([PersistentState("host", Storage.Name)] IPersistentState<HostState> state, ILogger<HostGrain> logger, AgentSubscriptionOptions subscriptions)
    {
        _state = state;
        _logger = logger;
        // An agent renews well within this, and every report renews it too; a vanished agent stops being notified after it.
        _observers = new ObserverManager<IAgentObserver>(subscriptions.Expiry, logger);
    }

    private readonly ILogger<HostGrain> _logger;

    private static (string, string) Key(Binding b) => (b.VmId, b.RemoteHost);

    /// <summary>The host's id, made once (each GetPrimaryKeyString makes a new string; it was called for every sample).</summary>
    private string HostId => _hostId ??= this.GetPrimaryKeyString();

    private string? _hostId;

    private DesiredState Desired => new(HostId, _version.Value,
        [.. _bindings.Values.OrderBy(b => b.VmId, StringComparer.Ordinal).ThenBy(b => b.RemoteHost, StringComparer.Ordinal)])
    {
        Routes = [.. _routes.Values.OrderBy(r => r.Key, StringComparer.Ordinal)],
        Peers = [.. _peers.Values.OrderBy(p => p.HostId, StringComparer.Ordinal)],
        Vms = [.. _state.State.Vms.Order(StringComparer.Ordinal)],
    };

    /// <summary>The epoch after <paramref name="stored"/>: at least the seconds since 2026; a stored one out of range (damaged) starts over from those.</summary>
    private static long NextEpoch(long stored)
    {
        var seconds = (long)(DateTimeOffset.UtcNow - EpochOrigin).TotalSeconds;
        var next = Math.Max(stored + 1, seconds);
        return next is >= 0 and <= int.MaxValue ? next : seconds;
    }

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        // A new epoch of versions per activation (DesiredStateVersion) keeps them growing across restarts without a
        // write per change. The epoch is at least the seconds since 2026, so it grows even where storage forgot it (a
        // silo on memory storage restarted): agents tell a new control plane from the old one by it.
        _state.State.Epoch = NextEpoch(_state.State.Epoch);
        await _state.WriteStateAsync(cancellationToken);
        _version = DesiredStateVersion.Start(_state.State.Epoch);
        // A fresh activation (its silo died, or it was idle) counts as seen now: its host gets the full silence before
        // another may take its VMs.
        _lastSeen = DateTimeOffset.UtcNow;
        var views = await Task.WhenAll(_state.State.Vms.Select(vm => GrainFactory.GetGrain<IVmGrain>(vm).GetAsync().AsTask()));
        foreach (var view in views.Where(v => v.Placement?.HostId == this.GetPrimaryKeyString()))
        {
            foreach (var (remote, stack) in view.Stacks)
            {
                var binding = new Binding(view.VmId, remote, stack, view.Policy.Security == "confidential", VmGrain.RoleOf(view.Policy));
                _bindings[Key(binding)] = binding;
            }
        }
        // Routes and peers are soft state too, read back from this host's networks (which hold the peers' addresses and
        // keys: an activation must not call other host grains, which may be activating and calling back).
        await ResyncAsync(publish: false);
    }

    /// <summary>
    /// Reads the routes and peers of this host's networks again and makes the held ones the same, publishing what
    /// differed (with <paramref name="publish"/>): the repair for a delta lost on the way (a failed call, a crash).
    /// </summary>
    private async Task ResyncAsync(bool publish)
    {
        _resyncedAt = DateTimeOffset.UtcNow;
        var views = await Task.WhenAll(_state.State.Networks.Select(vni => GrainFactory.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(vni)).GetAsync().AsTask()));
        var routes = views.SelectMany(v => v.Routes).Where(r => r.HostId != HostId).GroupBy(r => r.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.First(), StringComparer.Ordinal);
        foreach (var peer in views.SelectMany(v => v.Hosts))
        {
            _knownPeers[peer.HostId] = peer;
        }
        var removals = _routes.Values.Where(r => !routes.ContainsKey(r.Key)).ToImmutableArray();
        var upserts = routes.Values.Where(r => !(_routes.TryGetValue(r.Key, out var held) && held == r)).ToImmutableArray();
        _routes.Clear();
        foreach (var (key, route) in routes)
        {
            _routes[key] = route;
        }
        var (peerUpserts, peerRemovals) = RefreshPeers();
        if (publish && upserts.Length + removals.Length + peerUpserts.Length + peerRemovals.Length > 0)
        {
            Publish(new DesiredStateChange(HostId, _version.Value, _version.Next.Value, [], [])
            {
                RouteUpserts = upserts, RouteRemovals = removals, PeerUpserts = peerUpserts, PeerRemovals = peerRemovals,
            });
        }
    }

    /// <summary>Makes the peers the hosts the routes name, as their networks last described them; returns what changed.</summary>
    private (ImmutableArray<Peer> Upserts, ImmutableArray<string> Removals) RefreshPeers()
    {
        var needed = _routes.Values.Select(r => r.HostId).ToHashSet(StringComparer.Ordinal);
        var removals = _peers.Keys.Where(p => !needed.Contains(p)).ToImmutableArray();
        foreach (var gone in removals)
        {
            _peers.Remove(gone);
        }
        var upserts = ImmutableArray.CreateBuilder<Peer>();
        // A host not registered yet (no address) comes as a peer when it registers: its networks tell this host.
        foreach (var id in needed)
        {
            if (_knownPeers.TryGetValue(id, out var peer) && (peer.UnderlayIPv4 ?? peer.UnderlayIPv6) is not null && _peers.GetValueOrDefault(id) != peer)
            {
                _peers[id] = peer;
                upserts.Add(peer);
            }
        }
        foreach (var id in _knownPeers.Keys.Where(id => !needed.Contains(id)).ToList())
        {
            _knownPeers.Remove(id);
        }
        return (upserts.ToImmutable(), removals);
    }

    public async ValueTask NetworkChangedAsync(uint vni, bool member, ImmutableArray<Route> upserts, ImmutableArray<Route> removals, ImmutableArray<Peer> peers)
    {
        if (member ? _state.State.Networks.Add(vni) : _state.State.Networks.Remove(vni))
        {
            try
            {
                await _state.WriteStateAsync();
            }
            catch
            {
                // Not stored, so not held: the network's retry (or repair) finds the change still to make.
                _ = member ? _state.State.Networks.Remove(vni) : _state.State.Networks.Add(vni);
                throw;
            }
        }
        foreach (var peer in peers)
        {
            _knownPeers[peer.HostId] = peer;
        }
        var routeRemovals = ImmutableArray.CreateBuilder<Route>();
        foreach (var removal in removals)
        {
            // Only the route as it was: a removal that crossed the VM's move to yet another host must not drop the new one.
            if (_routes.TryGetValue(removal.Key, out var held) && held.VmId == removal.VmId && held.HostId == removal.HostId)
            {
                _routes.Remove(removal.Key);
                routeRemovals.Add(removal);
            }
        }
        var routeUpserts = upserts.Where(r => r.HostId != HostId && !(_routes.TryGetValue(r.Key, out var held) && held == r)).ToImmutableArray();
        foreach (var route in routeUpserts)
        {
            _routes[route.Key] = route;
        }
        var (peerUpserts, peerRemovals) = RefreshPeers();
        if (routeUpserts.Length + routeRemovals.Count + peerUpserts.Length + peerRemovals.Length > 0)
        {
            Publish(new DesiredStateChange(HostId, _version.Value, _version.Next.Value, [], [])
            {
                RouteUpserts = routeUpserts, RouteRemovals = routeRemovals.ToImmutable(), PeerUpserts = peerUpserts, PeerRemovals = peerRemovals,
            });
        }
    }

    public ValueTask PeerChangedAsync(Peer peer)
    {
        _knownPeers[peer.HostId] = peer;
        var (upserts, removals) = RefreshPeers();
        if (upserts.Length + removals.Length > 0)
        {
            Publish(new DesiredStateChange(HostId, _version.Value, _version.Next.Value, [], []) { PeerUpserts = upserts, PeerRemovals = removals });
        }
        return ValueTask.CompletedTask;
    }

    public async ValueTask<DesiredState> RegisterAsync(HostInfo info, IAgentObserver observer)
    {
        if (info.HostId != this.GetPrimaryKeyString())
        {
            throw new ArgumentException($"host id '{info.HostId}' registered on host grain '{this.GetPrimaryKeyString()}'", nameof(info));
        }
        RefuseIfRemoved();
        Subscribe(observer);
        _lastSeen = DateTimeOffset.UtcNow;
        // What an agent reports of its versions is bounded (a compromised agent could send anything) and kept in memory only.
        _stackVersions = info.StackVersions.IsDefault ? [] : [.. info.StackVersions.Where(u => u.Id.Length <= 64 && u.Version.Length <= 64).Take(64)
            .Select(u => u with
            {
                VmPaths = Math.Clamp(u.VmPaths, 0, 1_000_000),
                Quarantined = u.Quarantined?[..Math.Min(u.Quarantined.Length, 200)],
                // Counters a rollout's gates compare: no negative, no sum that overflows, no drop beyond the packets.
                Packets = Math.Clamp(u.Packets, 0, MaxCount),
                Drops = (u.Drops ?? ImmutableDictionary<string, long>.Empty).Where(d => d.Key.Length is > 0 and <= 32).Take(16)
                    .ToImmutableDictionary(d => d.Key, d => Math.Clamp(d.Value, 0, Math.Clamp(u.Packets, 0, MaxCount)), StringComparer.Ordinal),
                CallNanoseconds = Math.Clamp(u.CallNanoseconds, 0, MaxCount * 1_000_000),
                CallsTimed = Math.Clamp(u.CallsTimed, 0, MaxCount),
            })];
        info = info with { StackVersions = [] };
        if (DateTimeOffset.UtcNow - _resyncedAt > ResyncEvery)
        {
            await ResyncAsync(publish: true);
        }
        if (_state.State.Info != info)
        {
            var moved = _state.State.Info is not { } old || Peer.Of(old) != Peer.Of(info);
            _state.State.Info = info;
            await _state.WriteStateAsync();
            await GrainFactory.GetGrain<IFleetGrain>(IFleetGrain.Key).HostSeenAsync(info.HostId);
            if (moved)
            {
                // New addresses or a new key (the agent restarted without its key, or rotated it): every host that
                // forwards here hears of it through the networks they share (one-way: those networks may be calling here).
                foreach (var vni in _state.State.Networks)
                {
                    await GrainFactory.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(vni)).HostChangedAsync(Peer.Of(info));
                }
            }
        }
        return await WithReleaseAsync(Desired);
    }

    /// <summary>The desired state with what the catalog has this host run: the version holds that cover it and each stack's released version.</summary>
    private async ValueTask<DesiredState> WithReleaseAsync(DesiredState desired)
    {
        var release = await GrainFactory.GetGrain<ICatalogGrain>(ICatalogGrain.Key).GetHostReleaseAsync(HostId);
        return desired with { Holds = release.Holds, Releases = release.Releases };
    }

    public ValueTask RenewAsync(IAgentObserver observer)
    {
        Subscribe(observer);
        _lastSeen = DateTimeOffset.UtcNow;
        return ValueTask.CompletedTask;
    }

    public ValueTask<DateTimeOffset?> GetLastSeenAsync() => ValueTask.FromResult(_lastSeen);

    private void RefuseIfRemoved()
    {
        if (_state.State.Removed)
        {
            throw new InvalidOperationException($"host '{this.GetPrimaryKeyString()}' was removed from the fleet");
        }
    }

    public ValueTask<bool> IsRemovedAsync() => ValueTask.FromResult(_state.State.Removed);

    public async ValueTask ReadmitAsync()
    {
        if (_state.State.Removed)
        {
            _state.State.Removed = false;
            await _state.WriteStateAsync();
        }
    }

    public async ValueTask ForgetAsync()
    {
        // The host was removed from the fleet: it is marked so (refused from now on, persisted before its VMs are removed,
        // so a registration racing the removal cannot place them again), nothing else of it is kept, and a new epoch starts,
        // so an agent readmitted later places its VMs again instead of trusting what this grain knew.
        _bindings.Clear();
        _routes.Clear();
        _peers.Clear();
        _knownPeers.Clear();
        _lastSeen = null;
        _observers.Clear();
        _observer = null;
        _state.State = new HostState
        {
            Epoch = NextEpoch(_state.State.Epoch),
            Removed = true,
            // What it still has until the fleet grain removes them (which calls back here).
            Vms = _state.State.Vms,
        };
        await _state.WriteStateAsync();
        (_version, _acknowledged) = (DesiredStateVersion.Start(_state.State.Epoch), 0);
    }

    public ValueTask<long> BindAsync(ImmutableArray<Binding> bindings)
    {
        var changed = bindings.Where(b => !(_bindings.TryGetValue(Key(b), out var existing) && existing == b)).ToImmutableArray();
        foreach (var binding in changed)
        {
            _bindings[Key(binding)] = binding;
        }
        return ValueTask.FromResult(changed.Length == 0 ? _version.Value : Publish(changed, []));
    }

    public ValueTask<long> UnbindVmAsync(string vmId)
    {
        var removed = _bindings.Where(b => b.Value.VmId == vmId).ToList();
        removed.ForEach(b => _bindings.Remove(b.Key));
        return ValueTask.FromResult(removed.Count == 0 ? _version.Value : Publish([], [.. removed.Select(b => b.Value)]));
    }

    private long Publish(ImmutableArray<Binding> upserts, ImmutableArray<Binding> removals) =>
        Publish(new DesiredStateChange(HostId, _version.Value, _version.Next.Value, upserts, removals));

    private long Publish(DesiredStateChange change)
    {
        _version = new(change.Version);
        if (_observerRevoked?.Invoke() == true)
        {
            // The agent's certificate was revoked (or its host removed) after it subscribed: its open connection, which
            // can no longer call, hears nothing more either — not its peers' addresses and keys, nor its VMs' routes.
            Log.RevokedObserverDropped(_logger, HostId);
            _observers.Clear();
            _observer = null;
            _observerRevoked = null;
            return change.Version;
        }
        // Not awaited: a slow or vanished agent must not hold up the VMs deciding for this host. It reconciles by
        // version whenever it hears (a push, its renewal, or re-registering after a restart), so a lost push costs time,
        // never consistency. Observers that fail are dropped by the manager.
        _ = _observers.Notify(o => o.DesiredStateChangedAsync(change));
        return change.Version;
    }

    public ValueTask AcknowledgeAsync(long version)
    {
        if (version > _acknowledged && version <= _version.Value)
        {
            _acknowledged = version;
        }
        return ValueTask.CompletedTask;
    }

    public async ValueTask ReportAsync(ImmutableArray<PathSample> paths, ImmutableArray<Outcome> outcomes)
    {
        RefuseIfRemoved();
        _lastSeen = DateTimeOffset.UtcNow;
        // A host that reports is alive: its subscriptions stay. Without this, an agent that reported every second but
        // renewed only by registering lost every push a minute after it registered (the control-plane benchmark's
        // simulated agents acknowledged 56 % of their switches over 120 s, all of them in the first minute).
        if (_observer is { } current)
        {
            _observers.Subscribe(current, current);
        }
        var newPeer = false;
        foreach (var sample in paths)
        {
            if (sample.FromHost != HostId)
            {
                throw new ArgumentException($"host '{HostId}' reported a sample of path {sample.FromHost}->{sample.ToHost}", nameof(paths));
            }
            newPeer |= _state.State.Peers.Add(sample.ToHost);
            var now = DateTimeOffset.UtcNow;
            if (!_paths.TryGetValue(sample.ToHost, out var path))
            {
                _paths[sample.ToHost] = path = new PathState(now - RenotifyEvery * Random.Shared.NextDouble());
            }
            var changed = path.Smoother.Add(sample);
            path.History.Add(path.Smoother.Now!.Value);
            if (changed || now - path.Notified > RenotifyEvery)
            {
                // On a significant change (and now and then without, in case a notice was lost): the VMs are woken.
                path.Notified = now;
                Tell(sample.ToHost, path, path.Smoother.Current!, repeat: !changed, now);
            }
        }
        // Only this host's VMs: a host cannot write another host's VMs' outcomes into the learner's log.
        outcomes = outcomes.RemoveAll(o => !_state.State.Vms.Contains(o.VmId));
        foreach (var outcome in outcomes)
        {
            _outcomes.Enqueue(outcome);
        }
        // Each VM joins its outcomes with the decisions that chose the stacks, and logs them for the learner; the
        // conditions are the path's smoothed ones, as the selector sees them.
        foreach (var group in outcomes.GroupBy(o => o.VmId, StringComparer.Ordinal))
        {
            var joined = group.Select(o => _paths.TryGetValue(o.RemoteHost, out var path) && path.Smoother.Current is { } smoothed ? o with { Conditions = smoothed } : o)
                .ToImmutableArray();
            _ = GrainFactory.GetGrain<IVmGrain>(group.Key).ReportOutcomesAsync(HostId, joined).AsTask();
        }
        while (_outcomes.Count > OutcomeLimit)
        {
            _outcomes.Dequeue();
        }
        if (newPeer)
        {
            await _state.WriteStateAsync();
        }
    }

    /// <summary>
    /// Tells this host's VMs a path's conditions. A change reaches every VM; a repeat (<paramref name="repeat"/>) reaches a VM
    /// only when it is news to it, when its last notice failed, or after <see cref="RetellEvery"/> (at 100,000 paths the
    /// repeats were 67,000 VM calls a second).
    /// </summary>
    private void Tell(string peer, PathState path, PathConditions conditions, bool repeat, DateTimeOffset now)
    {
        foreach (var vm in _state.State.Vms)
        {
            var known = path.Told.TryGetValue(vm, out var told);
            var news = !known || PathSmoother.Significant(told.Conditions, conditions);
            if (repeat && !news && now - told.At < RetellEvery)
            {
                continue;
            }
            // Not awaited: a slow VM never holds up the others, nor this host's telemetry. A repeat that is no news leaves
            // what the VM took as it was (the VM ignores conditions close to those it decided on, and drift must not hide
            // the next change).
            _ = TellAsync(vm, peer, path, news || !repeat ? conditions : told.Conditions, conditions, now);
        }
    }

    /// <summary>A two-way call, so that a VM that failed to hear (its silo died, or it failed) is told again at the next look.</summary>
    private async Task TellAsync(string vm, string peer, PathState path, PathConditions taken, PathConditions conditions, DateTimeOffset at)
    {
        try
        {
            await GrainFactory.GetGrain<IVmGrain>(vm).PathChangedAsync(peer, conditions);
            if (_state.State.Vms.Contains(vm))
            {
                path.Told[vm] = (taken, at);
            }
        }
        catch (Exception)
        {
            // The VM says its own faults.
            path.Told.Remove(vm);
        }
    }

    public ValueTask<DesiredState> GetDesiredStateAsync() => WithReleaseAsync(Desired);

    public ValueTask<long> GetAcknowledgedAsync() => ValueTask.FromResult(_acknowledged);

    // The stored info with the stack versions of the latest registration (those change with every binding and are not written).
    public ValueTask<HostInfo?> GetInfoAsync() => ValueTask.FromResult(_state.State.Info is { } info && _stackVersions is { } versions ? info with { StackVersions = versions } : _state.State.Info);

    private ImmutableArray<StackVersionUse>? _stackVersions;

    public ValueTask<ImmutableArray<Outcome>> GetOutcomesAsync() => ValueTask.FromResult(_outcomes.ToImmutableArray());

    public async ValueTask AddVmAsync(string vmId)
    {
        RefuseIfRemoved();
        if (_state.State.Vms.Add(vmId))
        {
            await _state.WriteStateAsync();
        }
    }

    public async ValueTask RemoveVmAsync(string vmId)
    {
        foreach (var path in _paths.Values)
        {
            path.Told.Remove(vmId);
        }
        if (_state.State.Vms.Remove(vmId))
        {
            await _state.WriteStateAsync();
        }
    }

    public ValueTask<ImmutableArray<string>> ListVmsAsync() => ValueTask.FromResult(_state.State.Vms.Order(StringComparer.Ordinal).ToImmutableArray());

    public ValueTask<PathConditions?> GetPathAsync(string peer) => ValueTask.FromResult(_paths.GetValueOrDefault(peer)?.Smoother.Current);

    public ValueTask<ImmutableArray<PathConditions>> GetPathHistoryAsync(string peer) =>
        ValueTask.FromResult(_paths.TryGetValue(peer, out var path) ? path.History.ToImmutableArray() : []);

    public ValueTask<ImmutableArray<string>> ListPeersAsync() => ValueTask.FromResult(_state.State.Peers.Order(StringComparer.Ordinal).ToImmutableArray());

    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Warning, "Host {HostId}: the credentials its agent subscribed with were revoked; its connection is told nothing more")]
        public static partial void RevokedObserverDropped(ILogger logger, string hostId);
    }
}
