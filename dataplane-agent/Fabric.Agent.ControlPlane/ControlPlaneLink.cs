using System.Collections.Immutable;
using System.Net;
using Azure.Data.Tables;
using Fabric.Agent.Stacks;
using Fabric.Agent.Switching;
using Fabric.Hal.Inventory;
using Fabric.Registration;
using Fabric.Silo;
using Fabric.Silo.Security;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent.ControlPlane;

/// <summary>What the link is doing, for status and tests.</summary>
/// <param name="Connected">The last exchange with the silo succeeded.</param>
/// <param name="Version">The desired-state version the agent holds.</param>
/// <param name="Acknowledged">The last version the agent applied in full and acknowledged.</param>
/// <param name="Swaps">VM bindings this agent changed (each a hitless swap of one VM's stack on one path).</param>
/// <param name="Pending">Bindings it could not apply yet (retried every report period).</param>
/// <param name="LastError">Why the last exchange failed, if it did.</param>
/// <param name="RevocationList">Why the authority's revocation list (controlPlane.revocationList) could not be used: the last
/// good one stands (null: it could, or there is none).</param>
public sealed record LinkStatus(bool Connected, long Version, long Acknowledged, long Swaps, int Pending, string? LastError, string? RevocationList = null)
{
    /// <summary>When the host's key pair was made (it rotates <c>controlPlane.keyRotationHours</c> after).</summary>
    public DateTimeOffset KeySince { get; init; }

    /// <summary>Whether the previous key pair is still kept (it verifies until the overlap after the new one's registration ends).</summary>
    public bool PreviousKeyKept { get; init; }
}

/// <summary>
/// The agent as an Orleans client (DESIGN §4–5). It registers the host with its HAL inventory and an observer, renews both
/// every few seconds, places the host's VMs, applies desired state through the switch (each binding prepared on both
/// ends, then committed) and acknowledges each version it applied in full, reports path samples and per-VM outcomes once
/// per period, and reconnects by itself. Fail-static: while the silo is unreachable nothing already bound changes, and a
/// VM without a decision gets its policy's default stack locally; when the silo returns, VMs are placed with what they
/// run, so a silo that lost its state adopts it instead of swapping anything.
/// </summary>
public sealed class ControlPlaneLink : IAgentObserver, IAsyncDisposable
{
    private static readonly TimeSpan RegisterEvery = TimeSpan.FromSeconds(5);
    private readonly Agent _agent;
    private readonly ControlPlaneConfig _config;
    private readonly ControlPlaneCredential? _credential;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _apply = new(1, 1);
    private readonly CancellationTokenSource _stop = new();
    private readonly Dictionary<string, VmPlacement> _placed = new(StringComparer.Ordinal);
    private readonly Dictionary<string, double> _lastRtt = new(StringComparer.Ordinal);
    private readonly HashSet<string> _reported = new(StringComparer.Ordinal);
    /// <summary>What the control plane last said of this host (changed under <see cref="_apply"/>).</summary>
    private HeldDesiredState _desired = HeldDesiredState.None;
    private long _pathsReplacedSeen;
    private readonly Dictionary<string, Route> _appliedRoutes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Peer> _appliedPeers = new(StringComparer.Ordinal);

    /// <summary>Remote hosts whose paths this link added (so it may replace and remove them); other paths are the operator's.</summary>
    private readonly HashSet<string> _programmed = new(StringComparer.Ordinal);

    /// <summary>Until when withdrawals wait (set when the control plane starts over), and whether some are waiting.</summary>
    private DateTimeOffset _holdRemovalsUntil;
    private bool _removalsHeld;
    private readonly HostKey _key;
    private IHost? _client;
    private IAgentObserver? _reference;
    private Task? _loop;
    private long _acknowledged = -1;
    private long _epoch = -1;
    private long _swaps;
    private int _pending;
    private bool _connected;
    private string? _lastError;
    private string? _lastLogged;
    private DateTimeOffset _lastLoggedAt;
    private DateTimeOffset _nextRegister;

    /// <summary>The public key the last registration carried (the control plane hands peers that one).</summary>
    private string? _registeredKey;

    /// <summary>When this host's previous key retires (set at a rotation, or at a start that found one kept).</summary>
    private DateTimeOffset _retireOwnAt;

    /// <summary>Peers' previous public keys, kept after they rotated until the time beside each.</summary>
    private readonly Dictionary<string, (string PublicKey, DateTimeOffset Until)> _peerPrevious = new(StringComparer.Ordinal);

    /// <summary>
    /// Public keys that retired (this host's, and peers' once their overlap ended), for this agent's life: a peer handed
    /// one of them again (a stale or restored control plane state) is not taken in place of its newer key.
    /// </summary>
    private readonly HashSet<string> _retiredKeys = new(StringComparer.Ordinal);

    /// <summary>Loads (or makes) the host's key in the agent's state folder: throws naming the file when it is unsafe or unreadable.</summary>
    public ControlPlaneLink(Agent agent, ControlPlaneConfig config, ILogger logger)
    {
        _agent = agent;
        _config = config;
        _logger = logger;
        _key = HostKey.LoadOrCreate(agent.Config.StateDirectory, agent.Time);
        // A previous key kept from a rotation before a restart retires an overlap after this start's first registration
        // (which may be the first to hand the new key out).
        _retireOwnAt = DateTimeOffset.MaxValue;
        if (config.Secured)
        {
            _credential = ControlPlaneCredential.Load(config.Certificate!, config.Key!, config.Authority!);
            if (_credential.Caller != new Caller(CallerRole.Agent, agent.Config.HostId))
            {
                var issued = _credential.Caller;
                _credential.Dispose();
                throw new FormatException($"controlPlane.certificate: '{config.Certificate}' is {issued}'s, not agent '{agent.Config.HostId}'s (OU=agent, CN=the host id)");
            }
        }
    }

    /// <summary>The public half of the host's key, as registered.</summary>
    public string PublicKey => _key.PublicKey;

    /// <summary>How long a rotated key (this host's or a peer's) still verifies and derives after the rotation.</summary>
    private TimeSpan Overlap => TimeSpan.FromSeconds(_config.KeyOverlapSeconds);

    private string HostId => _agent.Config.HostId;

    /// <summary>The version held (read without the lock: the reference is replaced whole).</summary>
    private long HeldVersion => Volatile.Read(ref _desired).Version.Value;

    public LinkStatus Status => new(_connected, HeldVersion, Interlocked.Read(ref _acknowledged), Interlocked.Read(ref _swaps), _pending, _lastError,
        _client?.Services.GetService<RevokedHosts>()?.ListProblem()) { KeySince = _key.Since, PreviousKeyKept = _key.PreviousPublicKey is not null };

    /// <summary>Starts the link in the background; it never blocks or fails the agent.</summary>
    public void Start()
    {
        _agent.VmsChanged += Nudge;
        _loop = Task.Run(() => RunAsync(_stop.Token));
    }

    private async Task RunAsync(CancellationToken cancellationToken)
    {
        var period = TimeSpan.FromMilliseconds(_config.ReportMilliseconds);
        var failingSince = (DateTimeOffset?)null;
        while (!cancellationToken.IsCancellationRequested)
        {
            var measurements = _agent.Switch.Measure();
            try
            {
                var grains = await ClientAsync(cancellationToken).ConfigureAwait(false);
                var host = grains.GetGrain<IHostGrain>(HostId);
                if (_config.KeyRotationHours > 0 && _registeredKey == _key.PublicKey && _key.PreviousPublicKey is null
                    && _agent.Time.GetUtcNow() - _key.Since >= TimeSpan.FromHours(_config.KeyRotationHours))
                {
                    await RotateKeyAsync(cancellationToken).ConfigureAwait(false);
                }
                if (_agent.Time.GetUtcNow() >= _nextRegister)
                {
                    await RegisterAsync(grains, host, cancellationToken).ConfigureAwait(false);
                }

                await PlaceAsync(grains, force: false).ConfigureAwait(false);
                // A path replaced meanwhile (a stack stuck on it) starts with no bindings: they are applied again.
                if (_agent.Switch.PathsReplaced != _pathsReplacedSeen && (_key.PreviousPublicKey is not null || _peerPrevious.Count > 0))
                {
                    // A path replaced while keys rotate starts from the pair's current keys alone: it takes the ring again.
                    await _apply.WaitAsync(cancellationToken).ConfigureAwait(false);
                    try
                    {
                        RekeyAll(mineRotated: _key.PreviousPublicKey is not null);
                    }
                    finally
                    {
                        _apply.Release();
                    }
                }
                // Bindings owed too: a VM port that attached after its binding came (a VM placed at registration, its
                // decision pushed, its tap up a moment later: the fleet test's CI run left a confidential VM unbound for
                // 90 s that way) is bound at the next pass, not at the next change the control plane makes.
                if (_pending > 0 || _removalsHeld || _agent.Switch.PathsReplaced != _pathsReplacedSeen || !PlanBindings(Volatile.Read(ref _desired)).IsEmpty)
                {
                    _pathsReplacedSeen = _agent.Switch.PathsReplaced;
                    await ApplyAsync(host, null, cancellationToken).ConfigureAwait(false);
                }
                await ReportAsync(host, measurements).ConfigureAwait(false);
                if (!_connected)
                {
                    Log.Connected(_logger, HostId, HeldVersion);
                }
                (_connected, _lastError, failingSince) = (true, null, null);
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is not OutOfMemoryException)
            {
                var error = Explain(e, _config);
                // Said when the link fails, then when why changes, at most once a minute (a gateway that closes the
                // connection answers one way, then another, from one attempt to the next).
                if (_connected || _lastError is null || (error != _lastLogged && _agent.Time.GetUtcNow() - _lastLoggedAt >= TimeSpan.FromMinutes(1)))
                {
                    Log.Unreachable(_logger, error);
                    (_lastLogged, _lastLoggedAt) = (error, _agent.Time.GetUtcNow());
                }
                (_connected, _lastError, _nextRegister) = (false, error, default);
                failingSince ??= _agent.Time.GetUtcNow();
                if (_agent.Time.GetUtcNow() - failingSince > TimeSpan.FromSeconds(10))
                {
                    // A client that has not recovered by itself is rebuilt: the silo may be back at another address.
                    await DropClientAsync().ConfigureAwait(false);
                    failingSince = _agent.Time.GetUtcNow();
                }
                // Fail-static: VMs that arrived meanwhile get their policy's default stack locally. What fails here is
                // said and tried again next period: the link itself never ends on it.
                try
                {
                    await ApplyAsync(null, null, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception local) when (!cancellationToken.IsCancellationRequested && local is not OutOfMemoryException)
                {
                    Log.Unreachable(_logger, $"applying locally failed too: {local.Message}");
                }
            }
            try
            {
                // Also while the control plane is away: a key whose successor was registered retires on time.
                await RetireKeysAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is not OutOfMemoryException)
            {
                Log.Unreachable(_logger, $"retiring a rotated key failed: {e.Message}");
            }
            try
            {
                await WaitForNextPeriodAsync(period, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>
    /// What went wrong, as an operator can act on it: the exception's message followed by its causes' (Orleans says only
    /// "Unable to connect to any of the 1 available gateways" and keeps why in inner exceptions). A gateway of another
    /// cluster names the setting to change.
    /// </summary>
    internal static string Explain(Exception e, ControlPlaneConfig config)
    {
        var messages = new List<string>();
        for (var cause = e; cause is not null; cause = cause is AggregateException { InnerExceptions.Count: 1 } one ? one.InnerExceptions[0] : cause.InnerException)
        {
            var message = cause.Message.Replace(" See InnerException", "", StringComparison.Ordinal).TrimEnd('.', ' ');
            if (message.Length > 0 && !messages.Contains(message))
            {
                messages.Add(message);
            }
            if (message.StartsWith("Unexpected cluster id ", StringComparison.Ordinal))
            {
                messages.Add($"the gateway belongs to another cluster: set controlPlane.clusterId (now \"{config.ClusterId}\") to the silos' cluster id");
                break;
            }
        }
        return string.Join(": ", messages);
    }

    /// <summary>Set by <see cref="Nudge"/>; taken by the wait that acts on it.</summary>
    private int _nudged;

    /// <summary>Cancels the current wait between reports (null: none under way).</summary>
    private CancellationTokenSource? _wakeUp;

    /// <summary>
    /// The host's VMs changed (<see cref="Agent.VmsChanged"/>): the wait between reports places or removes them now. A
    /// nudge during a pass is kept for the next wait; nudges while one is pending are one.
    /// </summary>
    private void Nudge()
    {
        Interlocked.Exchange(ref _nudged, 1);
        try
        {
            // Asynchronously: the waiting loop's continuation must not run on the caller's thread (an API request).
            _ = Volatile.Read(ref _wakeUp)?.CancelAsync();
        }
        catch (ObjectDisposedException)
        {
            // That wait has ended; the flag is seen by the next.
        }
    }

    /// <summary>
    /// Waits out <paramref name="period"/>; a nudge meanwhile places or removes the host's VMs at once (no report, so
    /// the measurements keep their period) and the wait goes on.
    /// </summary>
    private async Task WaitForNextPeriodAsync(TimeSpan period, CancellationToken cancellationToken)
    {
        var until = _agent.Time.GetUtcNow() + period;
        while (until - _agent.Time.GetUtcNow() is var left && left > TimeSpan.Zero)
        {
            using (var wakeUp = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                Volatile.Write(ref _wakeUp, wakeUp);
                try
                {
                    if (Interlocked.Exchange(ref _nudged, 0) == 0)
                    {
                        await Task.Delay(left, _agent.Time, wakeUp.Token).ConfigureAwait(false);
                        return;
                    }
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    Interlocked.Exchange(ref _nudged, 0);
                }
                finally
                {
                    Volatile.Write(ref _wakeUp, null);
                }
            }
            if (!_connected || _client is null)
            {
                continue;
            }
            try
            {
                await PlaceAsync(_client.Services.GetRequiredService<IClusterClient>(), force: false).ConfigureAwait(false);
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is not OutOfMemoryException)
            {
                // The next pass places them again (its PlaceAsync compares with what was placed).
                Log.Unreachable(_logger, $"placing the host's VMs at once failed: {e.Message}");
            }
        }
    }

    private async Task<IGrainFactory> ClientAsync(CancellationToken cancellationToken)
    {
        if (_client is not null)
        {
            return _client.Services.GetRequiredService<IClusterClient>();
        }
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.UseOrleansClient(client =>
        {
            client.Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (_config.ClusterId, _config.ServiceId));
            client.Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(5));
            if (_config.Clustering == "azure-table")
            {
                var connection = Environment.GetEnvironmentVariable("FABRIC_TABLE_CONNECTION_STRING")
                    ?? throw new InvalidOperationException("controlPlane.clustering azure-table: FABRIC_TABLE_CONNECTION_STRING is not set");
                client.UseAzureStorageClustering(o => o.TableServiceClient = new TableServiceClient(connection));
            }
            else
            {
                client.UseStaticClustering([.. _config.Gateways!.Select(IPEndPoint.Parse)]);
            }
            if (_credential is not null)
            {
                client.UseControlPlaneSecurity(_credential, _config.RevocationList);
            }
            // The link's own loop retries; a start that cannot connect fails at once.
            client.UseConnectionRetryFilter((_, _) => Task.FromResult(false));
        });
        var built = builder.Build();
        try
        {
            await built.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            built.Dispose();
            throw;
        }
        var grains = built.Services.GetRequiredService<IClusterClient>();
        _reference = grains.CreateObjectReference<IAgentObserver>(this);
        _client = built;
        return grains;
    }

    private async Task DropClientAsync()
    {
        if (_client is { } client)
        {
            _client = null;
            try
            {
                await client.StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log.Unreachable(_logger, $"stopping the old client: {e.Message}");
            }
            client.Dispose();
        }
    }

    /// <summary>
    /// Registers (renewing the observer subscription). A new epoch of desired-state versions means the host grain was
    /// activated anew — perhaps on a silo that lost its state — so every VM is placed again, with what it runs, before the
    /// desired state is read and applied.
    /// </summary>
    private async Task RegisterAsync(IGrainFactory grains, IHostGrain host, CancellationToken cancellationToken)
    {
        var info = Info();
        var desired = await host.RegisterAsync(info, _reference!).ConfigureAwait(false);
        _registeredKey = info.PublicKey;
        var epoch = new DesiredStateVersion(desired.Version).Epoch;
        // Read at every registration, so that "at the one before" means the one before.
        var unbound = Unbound(desired);
        if (epoch == _epoch && _agent.Time.GetUtcNow() < _holdRemovalsUntil)
        {
            await PlaceAsync(grains, force: true).ConfigureAwait(false);
        }
        else if (epoch != _epoch)
        {
            if (_epoch >= 0)
            {
                // The control plane started over (perhaps with nothing in memory): routes come back as the other agents
                // place their VMs (each within a registration period), so withdrawals wait a few periods, and this
                // agent places its VMs again at each registration meanwhile (a placement that failed midway while the
                // control plane warmed up is repaired; an unchanged one is cheap).
                _holdRemovalsUntil = _agent.Time.GetUtcNow() + 3 * RegisterEvery;
            }
            await PlaceAsync(grains, force: true).ConfigureAwait(false);
            desired = await host.GetDesiredStateAsync().ConfigureAwait(false);
            _epoch = new DesiredStateVersion(desired.Version).Epoch;
        }
        else if (_placed.Keys.Where(id => !desired.Vms.Contains(id, StringComparer.Ordinal)).ToHashSet(StringComparer.Ordinal) is { Count: > 0 } missing)
        {
            // Anti-entropy: a VM this agent placed that the control plane does not hold here (a placement lost on the way,
            // or still a migration's claim, which placing again leaves as it is) is placed again.
            Log.PlacingAgain(_logger, HostId, string.Join(", ", missing));
            await PlaceAsync(grains, force: false, again: missing).ConfigureAwait(false);
        }
        else if (unbound.Count > 0)
        {
            // A VM placed here that the control plane binds to no stack on one of this host's paths (its decision was
            // lost with a silo, or with a VM grain the grain directory deactivated): placing it again makes its grain
            // offer its stacks again and decide the paths it has none on. A failure is said and tried at a later
            // registration; the rest of this pass (applying, reporting) goes on.
            Log.BindingAgain(_logger, HostId, string.Join(", ", unbound.Order(StringComparer.Ordinal)));
            try
            {
                await PlaceAsync(grains, force: false, again: unbound).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException && !cancellationToken.IsCancellationRequested)
            {
                Log.Unreachable(_logger, $"placing {string.Join(", ", unbound)} again failed: {Explain(e, _config)}");
            }
        }
        if (desired.Version != HeldVersion || _pending > 0)
        {
            await ApplyAsync(host, desired, cancellationToken).ConfigureAwait(false);
        }
        // What the control plane has this host run, read at every registration: each stack's released version (a
        // rollout's, or the newest not judged bad) and the operators' holds over it. A change moves the bindings it concerns.
        var holds = (desired.Holds.IsDefault ? [] : desired.Holds).ToDictionary(h => h.StackId, h => h.Version, StringComparer.Ordinal);
        var releases = desired.Releases ?? ImmutableDictionary<string, string>.Empty;
        var changed = _agent.Switch.StackHost.SetHolds(holds, releases);
        if (changed)
        {
            Log.HoldsChanged(_logger, HostId, holds.Count == 0 ? "none" : string.Join(", ", holds.Select(h => $"{h.Key} at {h.Value}")),
                releases.Count == 0 ? "none" : string.Join(", ", releases.OrderBy(r => r.Key, StringComparer.Ordinal).Select(r => $"{r.Key} {r.Value}")));
        }
        // At every registration, not only when this host's holds changed: a binding stays where it is while its peer does
        // not run the version yet (released to it a registration later, or held there), and moves once it does.
        _agent.ConformBindings(periodic: !changed);
        _nextRegister = _agent.Time.GetUtcNow() + RegisterEvery;
    }

    /// <summary>Per VM without a binding on some path at the last registration: those paths, when it may be placed again
    /// for them, and the wait after that.</summary>
    private Dictionary<string, (string Paths, DateTimeOffset Next, TimeSpan Wait)> _unbound = new(StringComparer.Ordinal);

    /// <summary>The first wait between two placements of a VM for the same unbound paths, doubled each time up to <see cref="UnboundWaitMost"/>.</summary>
    private static readonly TimeSpan UnboundWaitLeast = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan UnboundWaitMost = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The VMs to place again because the control plane (<paramref name="desired"/>) placed them here but binds them to
    /// no stack on a path this host has to one of its peers, as it did at the registration before (a decision on its
    /// way is not hurried). A VM whose unbound paths stay the same is placed again after 10 s, then 20, 40, … up to 5
    /// min: a path may have no stack for good (a confidential VM where no stack the host runs encrypts, a peer never
    /// measured), and each placement costs the control plane a round of calls.
    /// </summary>
    private HashSet<string> Unbound(DesiredState desired)
    {
        var now = _agent.Time.GetUtcNow();
        var bound = desired.Bindings.Select(b => (b.VmId, b.RemoteHost)).ToHashSet();
        var peers = desired.Peers.Select(p => p.HostId).ToHashSet(StringComparer.Ordinal);
        var paths = _agent.Switch.Paths.Keys.Where(peers.Contains).Order(StringComparer.Ordinal).ToList();
        var seen = new Dictionary<string, (string Paths, DateTimeOffset Next, TimeSpan Wait)>(StringComparer.Ordinal);
        var again = new HashSet<string>(StringComparer.Ordinal);
        foreach (var vm in _agent.LocalVms().Where(vm => vm.Ports.Length > 0 && desired.Vms.Contains(vm.Id, StringComparer.Ordinal)))
        {
            var missing = string.Join(",", paths.Where(p => !bound.Contains((vm.Id, p))));
            if (missing.Length == 0)
            {
                continue;
            }
            if (!_unbound.TryGetValue(vm.Id, out var before))
            {
                // First seen: not yet.
                seen[vm.Id] = (missing, now, UnboundWaitLeast);
            }
            else if (before.Paths != missing || now >= before.Next)
            {
                var wait = before.Paths != missing ? UnboundWaitLeast : before.Wait;
                again.Add(vm.Id);
                seen[vm.Id] = (missing, now + wait, wait * 2 < UnboundWaitMost ? wait * 2 : UnboundWaitMost);
            }
            else
            {
                seen[vm.Id] = before;
            }
        }
        _unbound = seen;
        return again;
    }

    private HostInfo Info()
    {
        var s = _agent.Switch;
        ImmutableArray<Silo.NicInfo> nics;
        try
        {
            nics = [.. new SysfsInventory().ReadAll().Select(n => new Silo.NicInfo(n.Name, n.Driver ?? "", n.Mac?.ToString() ?? "", n.Mtu, n.SpeedMbps ?? 0, n.OperState,
                n.Sriov?.TotalVfs ?? 0, n.Sriov?.NumVfs ?? 0, n.PhysicalFunction?.NetDevice ?? n.PhysicalFunction?.PciAddress))];
        }
        catch (IOException)
        {
            nics = [];
        }
        var loaded = s.StackHost.UsableIds.ToImmutableArray();
        var carried = s.Paths.Values.SelectMany(p => p.VmBindingKeys().Values).Where(b => b.Stack is not null)
            .GroupBy(b => b.Stack!, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
        // Usable and quarantined versions (a rollout's gate reads the quarantines), not withdrawn ones.
        var quarantined = s.StackHost.Quarantined;
        var registered = s.StackHost.Registered.Where(k => s.StackHost.IsUsable(k) || quarantined.ContainsKey(k)).ToList();
        // The stacks' figures are asked for every 30 s, not at every registration: asking costs a thread a path.
        if (_counted is null || _agent.Time.GetUtcNow() - _countedAt >= CountEvery)
        {
            (_counted, _countedAt) = (CountedByVersion(s, registered), _agent.Time.GetUtcNow());
        }
        var counted = _counted;
        var versions = registered
            .Select(k => new StackVersionUse(StackKey.IdOf(k), StackKey.VersionOf(k)!, carried.GetValueOrDefault(k))
            {
                Quarantined = quarantined.TryGetValue(k, out var why) ? why[..Math.Min(why.Length, 200)] : null,
                Packets = counted.TryGetValue(k, out var count) ? count.Packets : 0,
                Drops = counted.TryGetValue(k, out count) ? count.Drops.ToImmutableDictionary(StringComparer.Ordinal) : ImmutableDictionary<string, long>.Empty,
                CallNanoseconds = counted.TryGetValue(k, out count) ? count.Nanoseconds : 0,
                CallsTimed = counted.TryGetValue(k, out count) ? count.Timed : 0,
            }).ToImmutableArray();
        return new HostInfo(HostId, s.UnderlayEndpoints.IPv4?.Address.ToString(), s.UnderlayEndpoints.IPv6?.Address.ToString(),
            s.UnderlayEndpoints.IPv4?.Port ?? s.UnderlayEndpoints.IPv6?.Port ?? 0, loaded, nics, typeof(ControlPlaneLink).Assembly.GetName().Version?.ToString() ?? "0")
        {
            PublicKey = _key.PublicKey,
            PreviousPublicKey = _key.PreviousPublicKey,
            StackVersions = versions,
        };
    }

    private static readonly TimeSpan CountEvery = TimeSpan.FromSeconds(30);
    private Dictionary<string, (long Packets, Dictionary<string, long> Drops, long Nanoseconds, long Timed)>? _counted;
    private DateTimeOffset _countedAt;

    /// <summary>
    /// What the slots of each version counted (packets taken, drops by reason; open slots as their instances say now,
    /// closed ones as they said when they closed) and the time a sample of calls into them took, summed per version —
    /// only for stack ids with more than one version registered here (what a rollout's drops and cpu gates compare);
    /// asking every path's stacks costs a thread a path.
    /// </summary>
    private static Dictionary<string, (long Packets, Dictionary<string, long> Drops, long Nanoseconds, long Timed)> CountedByVersion(Switch s, IReadOnlyList<string> registered)
    {
        var compared = registered.GroupBy(StackKey.IdOf, StringComparer.Ordinal).Where(g => g.Count() > 1).Select(g => g.Key).ToHashSet(StringComparer.Ordinal);
        var counted = new Dictionary<string, (long Packets, Dictionary<string, long> Drops, long Nanoseconds, long Timed)>(StringComparer.Ordinal);
        if (compared.Count == 0)
        {
            return counted;
        }
        void Add(string key, long taken, IReadOnlyDictionary<Fabric.Stacks.StackDropReason, long> dropped, long nanoseconds = 0, long timed = 0)
        {
            var (packets, drops, spent, calls) = counted.TryGetValue(key, out var sum) ? sum : (0, new Dictionary<string, long>(StringComparer.Ordinal), 0, 0);
            foreach (var (reason, count) in dropped)
            {
                drops[reason.ToString()] = drops.GetValueOrDefault(reason.ToString()) + count;
            }
            counted[key] = (packets + taken, drops, spent + nanoseconds, calls + timed);
        }
        foreach (var path in s.Paths.Values)
        {
            foreach (var (stack, stats, version) in path.StackStats().Values.Where(v => compared.Contains(v.Stack)))
            {
                Add(StackKey.Of(stack, version), stats.FramesIn + stats.DatagramsIn, stats.Drops);
            }
            foreach (var (key, closed) in path.ClosedStackStats().Where(c => compared.Contains(StackKey.IdOf(c.Key))))
            {
                Add(key, closed.Packets, closed.Drops);
            }
            foreach (var (key, times) in path.StackCallTimes().Where(c => compared.Contains(StackKey.IdOf(c.Key))))
            {
                Add(key, 0, ImmutableDictionary<Fabric.Stacks.StackDropReason, long>.Empty, times.Nanoseconds, times.Samples);
            }
        }
        return counted;
    }

    /// <summary>Places VMs that are new or changed (all with <paramref name="force"/>, and those in <paramref name="again"/>) and removes those that left.</summary>
    private async Task PlaceAsync(IGrainFactory grains, bool force, IReadOnlySet<string>? again = null)
    {
        var vms = _agent.LocalVms();
        foreach (var vm in vms)
        {
            var placement = new VmPlacement(HostId, vm.Name, vm.Vni, [.. vm.Macs], ToPolicy(vm.Policy), Running(vm))
            {
                Vnics = [.. vm.Vnics.Select(v => new Vnic(v.Mac, v.Vni, [.. v.IPv4], [.. v.IPv6]))],
            };
            if (force || again?.Contains(vm.Id) == true || !_placed.TryGetValue(vm.Id, out var placed) || placed != placement)
            {
                await grains.GetGrain<IVmGrain>(vm.Id).PlaceAsync(placement).ConfigureAwait(false);
                _placed[vm.Id] = placement;
            }
        }
        foreach (var gone in _placed.Keys.Except(vms.Select(v => v.Id)).ToList())
        {
            await grains.GetGrain<IVmGrain>(gone).RemoveAsync(HostId).ConfigureAwait(false);
            _placed.Remove(gone);
        }
    }

    private ImmutableDictionary<string, string> Running(LocalVm vm)
    {
        var running = ImmutableDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        if (vm.Ports.Length == 0)
        {
            return running.ToImmutable();
        }
        foreach (var (host, path) in _agent.Switch.Paths)
        {
            if (path.VmBindings().TryGetValue(vm.Ports[0], out var binding) && binding.Stack is { } stack)
            {
                running[host] = stack;
            }
        }
        return running.ToImmutable();
    }

    private static Policy? ToPolicy(VmPolicy? policy) => policy is null ? null
        : new Policy(policy.Workload, policy.Security, policy.Family, [.. policy.Allow ?? []], [.. policy.Deny ?? []], policy.Pin, 0);

    public async Task DesiredStateChangedAsync(DesiredStateChange change)
    {
        if (change.HostId != HostId)
        {
            return;
        }
        IHostGrain? host = _client?.Services.GetRequiredService<IClusterClient>().GetGrain<IHostGrain>(HostId);
        if (change.PreviousVersion != HeldVersion)
        {
            // A push was missed (or this one is stale): the whole state decides.
            if (host is not null && change.Version > HeldVersion)
            {
                await ApplyAsync(host, await host.GetDesiredStateAsync().ConfigureAwait(false), _stop.Token).ConfigureAwait(false);
            }
            return;
        }
        await _apply.WaitAsync(_stop.Token).ConfigureAwait(false);
        try
        {
            if (_desired.Take(change) is not { } next)
            {
                return;
            }
            Volatile.Write(ref _desired, next);
            await ReconcileAndAcknowledgeAsync(host, _stop.Token).ConfigureAwait(false);
        }
        finally
        {
            _apply.Release();
        }
    }

    /// <summary>Applies <paramref name="desired"/> (or what is held, with null) and acknowledges it when every binding took.</summary>
    private async Task ApplyAsync(IHostGrain? host, DesiredState? desired, CancellationToken cancellationToken)
    {
        await _apply.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // A newer version, or any version of a new epoch (a control plane that started over), replaces what is held.
            if (desired is not null)
            {
                Volatile.Write(ref _desired, _desired.Take(desired));
            }
            await ReconcileAndAcknowledgeAsync(host, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _apply.Release();
        }
    }

    private async Task ReconcileAndAcknowledgeAsync(IHostGrain? host, CancellationToken cancellationToken)
    {
        var pending = ReconcileNetwork();
        var desired = _desired;
        var switcher = _agent.Switch;
        var plan = PlanBindings(desired);
        foreach (var (port, mustEncrypt) in plan.Seal)
        {
            switcher.SetSealed(port, mustEncrypt);
        }
        if (!plan.Roles.IsEmpty)
        {
            foreach (var (port, role) in plan.Roles)
            {
                switcher.SetRole(port, (VmRole)role);
            }
            // A VM that now leads on a path's default stack needs that stack in a slot of its own: planned again with its role.
            plan = PlanBindings(desired);
        }
        foreach (var step in plan.Bind)
        {
            var error = await switcher.BindVmAsync(step.Port, step.RemoteHost, step.Stack, cancellationToken).ConfigureAwait(false);
            if (error is null)
            {
                Interlocked.Increment(ref _swaps);
                Log.Bound(_logger, step.VmId, step.Port, step.RemoteHost, step.Stack, desired.Version.Value);
            }
            else
            {
                pending++;
                if (_reported.Add($"{step.Port}|{step.RemoteHost}|{step.Stack}"))
                {
                    Log.NotBound(_logger, step.VmId, step.RemoteHost, step.Stack, error);
                }
            }
        }
        _pending = pending;
        var version = desired.Version.Value;
        if (pending == 0 && host is not null && version >= 0 && version != Interlocked.Read(ref _acknowledged))
        {
            await host.AcknowledgeAsync(version).ConfigureAwait(false);
            Interlocked.Exchange(ref _acknowledged, version);
            _reported.Clear();
        }
    }

    private BindingPlan PlanBindings(HeldDesiredState desired)
    {
        var switcher = _agent.Switch;
        var paths = switcher.Paths;
        return DesiredStateReconciler.PlanBindings(desired, _agent.LocalVms().Select(vm => new ReconciledVm(vm.Id, vm.Policy, vm.Ports)), paths.Keys,
            port => switcher.Vms.TryGetValue(port, out var vm) ? vm.Sealed : null,
            (port, remote) => paths.TryGetValue(remote, out var path) && path.VmBindings().TryGetValue(port, out var now)
                // A VM is not bound as it should be while it leads outside this host's leaders' slots, or sends in one without leading.
                && path.IsOwnLeadersSlot(now.Slot) == (switcher.Vms.TryGetValue(port, out var vm) && vm.Role == VmRole.Leads) ? now.Stack : null,
            DefaultStack,
            port => switcher.Vms.TryGetValue(port, out var vm) ? (PairRole)vm.Role : null);
    }

    private NetworkPlan PlanNetwork()
    {
        var configuredRoutes = (_agent.Config.Routes ?? []).Select(r => Route.KeyOf(r.Vni, Fabric.Wire.MacAddress.TryParse(r.Mac, out var mac) ? mac.ToString() : r.Mac)).ToHashSet(StringComparer.Ordinal);
        return DesiredStateReconciler.PlanNetwork(_desired,
            new ProgrammedNetwork(_appliedRoutes, _appliedPeers, _agent.Switch.Paths.Keys.ToHashSet(StringComparer.Ordinal), _programmed, configuredRoutes),
            holdRemovals: _agent.Time.GetUtcNow() < _holdRemovalsUntil);
    }

    /// <summary>
    /// True when the agent has applied and acknowledged the version it holds and nothing is left to do for it: planning
    /// again against the switch gives an empty plan (so no swap, route or peer change follows until the control plane
    /// says something new). What a test waits for instead of sleeping. Never true while a step is refused for good (a
    /// route whose MAC is local here, a peer without a public key): those stay in the plan, as they are not what the
    /// control plane said.
    /// </summary>
    public async Task<bool> ConvergedAsync(CancellationToken cancellationToken = default)
    {
        await _apply.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return _desired.Version.Value == Interlocked.Read(ref _acknowledged) && _pending == 0 && PlanNetwork() is { IsEmpty: true, RemovalsHeld: false }
                && PlanBindings(_desired).IsEmpty;
        }
        finally
        {
            _apply.Release();
        }
    }

    /// <summary>
    /// Makes the switch's remote hosts and remote VM entries what the control plane says: the ones it programmed go when
    /// the control plane withdraws them, and a host or route of the agent's own configuration is left alone (a host the
    /// configuration or the local API added keeps its address and keys: the embedded fleet, for one, reaches its peers
    /// through link emulators). A peer's path keys are derived here, from this host's private key and the peer's public
    /// key. For a while after the control plane started over (a new epoch), nothing is withdrawn: a silo that lost its
    /// memory learns the fleet again as the other agents place their VMs, and meanwhile traffic keeps flowing. Returns
    /// how many could not be applied yet but may later (retried every report period); what never can (a peer without a
    /// public key, a route for a MAC that is local here) is reported once and does not hold back acknowledgements.
    /// </summary>
    private int ReconcileNetwork()
    {
        var pending = 0;
        var plan = PlanNetwork();
        _removalsHeld = plan.RemovalsHeld;
        foreach (var route in plan.RemoveRoutes)
        {
            // Refused only when the entry is gone already (or the MAC is local now: the VM moved here).
            _agent.Handle(new ApiRequest("remove-route", Route: new RouteConfig(route.Vnic.Vni, route.Vnic.Mac, route.HostId)));
            _appliedRoutes.Remove(route.Key);
        }
        var forgotten = new Dictionary<string, Peer>(StringComparer.Ordinal);
        foreach (var id in plan.ForgetPeers)
        {
            if (_appliedPeers.Remove(id, out var was))
            {
                forgotten[id] = was;
            }
        }
        foreach (var id in plan.RemoveHosts)
        {
            _agent.Handle(new ApiRequest("remove-host", Id: id));
            _programmed.Remove(id);
            Log.PeerRemoved(_logger, id);
        }
        var waiting = new HashSet<string>(StringComparer.Ordinal);
        foreach (var peer in plan.AddPeers)
        {
            if (peer.PublicKey is { } offered && _retiredKeys.Contains(offered))
            {
                // A key that retired (seen here) handed out again: a control plane's stale or restored state, or someone
                // replaying an old registration. The path keeps the keys it has until the peer registers a newer one.
                if (forgotten.TryGetValue(peer.HostId, out var kept))
                {
                    _appliedPeers[peer.HostId] = kept;
                }
                if (_reported.Add($"peer|{peer.HostId}|retired"))
                {
                    Log.PeerRefused(_logger, peer.HostId, "the control plane handed out a public key of it that has retired; its path keeps the newer keys");
                }
                continue;
            }
            if (forgotten.TryGetValue(peer.HostId, out var was) && was.PublicKey is { } old && peer.PublicKey is not null && old != peer.PublicKey
                && peer.PreviousPublicKey == old && was with { PublicKey = peer.PublicKey } == peer && _programmed.Contains(peer.HostId))
            {
                // Only the peer's key changed, and the peer names the key held here as the one it replaced (a rotation):
                // the path takes the pair's keys anew in place, the old key still verifying for an overlap, and nothing
                // on the path is lost. A new key that does not (an agent that lost its state, or was re-enrolled) gets a
                // new path below: its old key verifies nothing from then on.
                _peerPrevious[peer.HostId] = (old, _agent.Time.GetUtcNow() + Overlap);
                _appliedPeers[peer.HostId] = peer;
                if (Rekey(peer.HostId, mineRotated: false))
                {
                    Log.PeerKeyChanged(_logger, peer.HostId);
                    continue;
                }
                _appliedPeers.Remove(peer.HostId);
            }
            var (error, lasting) = AddPeer(peer);
            if (error is null)
            {
                _appliedPeers[peer.HostId] = peer;
                _programmed.Add(peer.HostId);
                if (_key.PreviousPublicKey is not null || _peerPrevious.ContainsKey(peer.HostId))
                {
                    // Added while a key rotates: the path verifies under every key of the pair, as the others do.
                    Rekey(peer.HostId, mineRotated: _key.PreviousPublicKey is not null);
                }
                Log.PeerAdded(_logger, peer.HostId, peer.UnderlayIPv4 ?? peer.UnderlayIPv6 ?? "", peer.UnderlayPort);
                continue;
            }
            if (!lasting)
            {
                pending++;
                waiting.Add(peer.HostId);
            }
            if (_reported.Add($"peer|{peer.HostId}|{error}"))
            {
                Log.PeerRefused(_logger, peer.HostId, error);
            }
        }
        foreach (var route in plan.SetRoutes)
        {
            if (!_agent.Switch.Paths.ContainsKey(route.HostId))
            {
                // Its host comes when it can be added (or its registration reaches this host); until then, nothing to do.
                pending += waiting.Contains(route.HostId) ? 1 : 0;
                continue;
            }
            var response = _agent.Handle(new ApiRequest("set-route", Route: new RouteConfig(route.Vnic.Vni, route.Vnic.Mac, route.HostId, [.. route.Vnic.IPv4], [.. route.Vnic.IPv6], route.Sealed)));
            if (response.Ok)
            {
                _appliedRoutes[route.Key] = route;
            }
            else if (_reported.Add($"route|{route.Key}|{response.Error}"))
            {
                Log.RouteRefused(_logger, route.Key, route.HostId, response.Error ?? "");
            }
        }
        return pending;
    }

    /// <summary>
    /// Rotates this host's key now (on its schedule, <c>controlPlane.keyRotationHours</c>, or when an operator asks): the
    /// new key is registered at once, and every programmed path takes the pair's keys anew in place, sealing under the
    /// previous key until the peer shows it holds the new one, so no frame is lost. The previous key verifies and derives
    /// for <c>controlPlane.keyOverlapSeconds</c> after the new one is registered, then it is forgotten (its file too).
    /// </summary>
    public async Task RotateKeyAsync(CancellationToken cancellationToken = default)
    {
        await _apply.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_key.PreviousPublicKey is not null)
            {
                // Rotating again now would throw away the key some peers may still hold, with no overlap.
                throw new InvalidOperationException(_registeredKey == _key.PublicKey
                    ? "a rotation is under way: the previous key is kept until the overlap ends and every peer holds the new one (controlPlane.keyOverlapSeconds)"
                    : "a rotation is under way: the new key is not registered yet (the control plane is unreachable?)");
            }
            _key.Rotate(_agent.Time.GetUtcNow());
            _retireOwnAt = DateTimeOffset.MaxValue;
            _nextRegister = default;
            Log.KeyRotated(_logger, HostId);
            RekeyAll(mineRotated: true);
        }
        finally
        {
            _apply.Release();
        }
    }

    /// <summary>Retires this host's previous key once the new one was registered an overlap ago, and peers' previous keys an overlap after they changed.</summary>
    private async Task RetireKeysAsync(CancellationToken cancellationToken)
    {
        if (_key.PreviousPublicKey is null && _peerPrevious.Count == 0)
        {
            return;
        }
        await _apply.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var now = _agent.Time.GetUtcNow();
            var registered = _registeredKey == _key.PublicKey;
            if (_key.PreviousPublicKey is not null && _retireOwnAt == DateTimeOffset.MaxValue && registered)
            {
                // The overlap runs from the registration that handed the new key out.
                _retireOwnAt = now + Overlap;
            }
            // Once the overlap is over and every programmed path has heard its peer under the new key; at twice the overlap
            // in any case (a peer out of touch that long is repaired when it hears the control plane again).
            var ownDue = _key.PreviousPublicKey is not null && registered && now >= _retireOwnAt
                && (now >= _retireOwnAt + Overlap || _appliedPeers.Keys.Where(_programmed.Contains).All(id => !_agent.Switch.Paths.TryGetValue(id, out var path) || path.KeyState.SealsWithCurrentKey));
            var peersDue = _peerPrevious.Where(p => now >= p.Value.Until).Select(p => p.Key).ToList();
            foreach (var id in peersDue)
            {
                if (_peerPrevious.Remove(id, out var retired))
                {
                    _retiredKeys.Add(retired.PublicKey);
                }
            }
            if (ownDue)
            {
                _retiredKeys.Add(_key.PreviousPublicKey!);
            }
            var rekeyed = ownDue && _key.RetirePrevious() ? RekeyAll(mineRotated: false) : peersDue.Where(id => Rekey(id, mineRotated: false)).ToList();
            // Secure slots made before the rotation keep session keys derived from the old path key: their VMs move to
            // fresh instances, which derive from the new one — in the background, so a peer that does not answer (each
            // open waits 2 s) holds up neither this loop nor the control plane's changes.
            foreach (var id in rekeyed)
            {
                _ = Task.Run(() => RenewAsync(id), CancellationToken.None);
            }
        }
        finally
        {
            _apply.Release();
        }
    }

    /// <summary>Renews the secure slots on the path to <paramref name="hostId"/> (what fails is said by the switch as an event).</summary>
    private async Task RenewAsync(string hostId)
    {
        try
        {
            await _agent.Switch.RenewEncryptingSlotsAsync(hostId, _stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
            // The link is stopping.
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Log.PeerRefused(_logger, hostId, $"renewing its secure slots after a key rotation failed: {e.Message}");
        }
    }

    /// <summary>Gives every programmed path the pair's keys as held now; returns the hosts whose paths took them.</summary>
    private List<string> RekeyAll(bool mineRotated) => [.. _appliedPeers.Keys.Where(_programmed.Contains).ToList().Where(id => Rekey(id, mineRotated))];

    /// <summary>Gives the path to <paramref name="hostId"/> the pair's keys as held now (under <see cref="_apply"/>); false when it could not.</summary>
    private bool Rekey(string hostId, bool mineRotated)
    {
        if (!_appliedPeers.TryGetValue(hostId, out var peer) || peer.PublicKey is null)
        {
            return false;
        }
        PathKeyRing ring;
        try
        {
            ring = Ring(peer);
        }
        catch (Exception e) when (e is InvalidOperationException or System.Security.Cryptography.CryptographicException)
        {
            Log.PeerRefused(_logger, hostId, e.Message);
            return false;
        }
        try
        {
            return _agent.Switch.RekeyRemoteHost(hostId, ring, mineRotated);
        }
        finally
        {
            foreach (var entry in ring.Entries)
            {
                System.Security.Cryptography.CryptographicOperations.ZeroMemory(entry.Keys.Overlay);
                System.Security.Cryptography.CryptographicOperations.ZeroMemory(entry.Keys.Secure);
            }
        }
    }

    /// <summary>The pair's keys: this host's current and previous key with the peer's newest and previous, as held.</summary>
    private PathKeyRing Ring(Peer peer)
    {
        var entries = new List<PathKeyEntry>();
        var theirs = new List<(string Key, bool Newest)> { (peer.PublicKey!, true) };
        if (_peerPrevious.TryGetValue(peer.HostId, out var previous) && previous.PublicKey != peer.PublicKey)
        {
            theirs.Add((previous.PublicKey, false));
        }
        foreach (var mineCurrent in _key.PreviousPublicKey is null ? [true] : new[] { true, false })
        {
            foreach (var (key, newest) in theirs)
            {
                entries.Add(new PathKeyEntry(_key.Derive(HostId, peer.HostId, key, previous: !mineCurrent), mineCurrent, newest));
            }
        }
        return new PathKeyRing(entries);
    }

    /// <summary>
    /// Adds (or replaces) the path to a peer with keys derived for the pair. Returns null when done, else why not and
    /// whether that lasts (no usable public key, no underlay of the peer's family) or may pass.
    /// </summary>
    private (string? Error, bool Lasting) AddPeer(Peer peer)
    {
        if (peer.PublicKey is null)
        {
            return ("it registered no public key, so no path keys can be derived (give it a remoteHosts entry with keys instead)", true);
        }
        var stack = peer.UnderlayIPv4 is not null && _agent.Switch.UnderlayEndpoints.IPv4 is not null ? "std-ipv4"
            : peer.UnderlayIPv6 is not null && _agent.Switch.UnderlayEndpoints.IPv6 is not null ? "std-ipv6" : null;
        if (stack is null)
        {
            return ("it has no underlay address of a family this host has", true);
        }
        PathKeys keys;
        try
        {
            keys = _key.Derive(HostId, peer.HostId, peer.PublicKey);
        }
        catch (Exception e) when (e is InvalidOperationException or System.Security.Cryptography.CryptographicException)
        {
            return (e.Message, true);
        }
        try
        {
            var settings = new Dictionary<string, Dictionary<string, string>>(StringComparer.Ordinal) { ["secure"] = new() { ["key"] = Convert.ToHexString(keys.Secure) } };
            var response = _agent.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig(peer.HostId, peer.UnderlayIPv4, peer.UnderlayIPv6, stack, peer.UnderlayPort,
                settings, Convert.ToHexString(keys.Overlay))));
            return (response.Error, false);
        }
        finally
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(keys.Overlay);
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(keys.Secure);
        }
    }

    /// <summary>The stack a VM runs before (or without) a decision: its pin, a confidential VM's secure stack, else its family's std stack.</summary>
    private string? DefaultStack(VmPolicy? policy)
    {
        var registered = _agent.Switch.StackHost.Registered;
        var choice = policy?.Pin ?? (policy?.Security == "confidential" ? "secure" : policy?.Family == "ipv6" ? "std-ipv6" : null);
        return choice is not null && registered.Any(key => StackKey.IdOf(key) == choice) ? choice : null;
    }

    private async Task ReportAsync(IHostGrain host, IReadOnlyDictionary<string, Switching.PathMeasurement> measurements)
    {
        var now = _agent.Time.GetUtcNow();
        var samples = ImmutableArray.CreateBuilder<PathSample>();
        var outcomes = ImmutableArray.CreateBuilder<Outcome>();
        var owners = _agent.LocalVms().SelectMany(vm => vm.Ports.Select(port => (port, vm.Id))).ToDictionary(x => x.port, x => x.Id, StringComparer.Ordinal);
        foreach (var (peer, m) in measurements)
        {
            if (m.Interval <= TimeSpan.Zero)
            {
                continue;
            }
            var rtt = double.IsNaN(m.RttP50Ms) ? _lastRtt.GetValueOrDefault(peer, double.NaN) : _lastRtt[peer] = m.RttP50Ms;
            if (double.IsNaN(rtt))
            {
                continue;
            }
            var seconds = m.Interval.TotalSeconds;
            var delivered = m.BytesSent * 8 / seconds / 1e6 * (1 - m.Loss);
            samples.Add(new PathSample(HostId, peer, rtt, m.JitterMs, m.Sent, m.Lost, delivered, now, double.IsFinite(m.CapacityMbps) ? m.CapacityMbps : 0));
            var conditions = new PathConditions(rtt, m.JitterMs, m.Loss, delivered, now);
            var vmBytes = m.Vms.Sum(v => v.Bytes) + m.BorrowedBytes;
            foreach (var vm in m.Vms.Where(v => v.Bytes > 0 || v.Tcp.Flows > 0))
            {
                // Overhead is the path's bytes beyond the VMs' frames, shared by bytes sent. With TCP, what the VM got
                // comes from its own headers (TcpMeter); without, the offered rate, the probes' RTT and the raw loss.
                var overhead = Math.Max(0, (m.BytesSent - vmBytes) * vm.Bytes / Math.Max(vmBytes, 1));
                var tcp = vm.Tcp;
                var vmId = owners.GetValueOrDefault(vm.VmId, vm.VmId);
                outcomes.Add(tcp.Flows == 0
                    ? new Outcome(vmId, peer, StackKey.IdOf(vm.Stack), conditions, vm.Bytes * 8 / seconds / 1e6, m.RttP50Ms, m.RttP99Ms, m.Loss, overhead, m.Interval,
                        StackVersion: StackKey.VersionOf(vm.Stack))
                    : new Outcome(vmId, peer, StackKey.IdOf(vm.Stack), conditions, tcp.AckedBytes * 8 / seconds / 1e6,
                        tcp.RttSamples > 0 ? tcp.RttP50Ms : m.RttP50Ms, tcp.RttSamples > 0 ? tcp.RttP99Ms : m.RttP99Ms,
                        tcp.SentDataBytes > 0 ? Math.Clamp((double)tcp.RetransmittedBytes / tcp.SentDataBytes, 0, 1) : 0, overhead, m.Interval,
                        Passive: true, tcp.RetransmittedBytes, tcp.ResponseP99Ms, tcp.Flows, tcp.Packets, tcp.Shape, tcp.TailP99Ms, StackKey.VersionOf(vm.Stack)));
            }
        }
        await host.ReportAsync(samples.ToImmutable(), outcomes.ToImmutable()).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        _agent.VmsChanged -= Nudge;
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_loop is not null)
        {
            try
            {
                await _loop.ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Stopping: a call cut short by the stop (or timing out on a silo already gone) changes nothing now.
                Log.Unreachable(_logger, $"while stopping: {e.Message}");
            }
        }
        await DropClientAsync().ConfigureAwait(false);
        _stop.Dispose();
        _apply.Dispose();
        _key.Dispose();
        _credential?.Dispose();
    }
}

internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "Control plane: host {HostId} registered, desired-state version {Version}")]
    public static partial void Connected(ILogger logger, string hostId, long version);

    [LoggerMessage(2, LogLevel.Warning, "Control plane unreachable ({Reason}); forwarding continues on the current stacks")]
    public static partial void Unreachable(ILogger logger, string reason);

    [LoggerMessage(3, LogLevel.Information, "VM {VmId} ({Port}) to host {Remote}: {Stack} (desired-state version {Version})")]
    public static partial void Bound(ILogger logger, string vmId, string port, string remote, string stack, long version);

    [LoggerMessage(4, LogLevel.Warning, "VM {VmId} to host {Remote}: cannot bind {Stack} yet: {Error}")]
    public static partial void NotBound(ILogger logger, string vmId, string remote, string stack, string error);

    [LoggerMessage(5, LogLevel.Information, "Control plane: peer {HostId} at {Address} port {Port}, path keys derived")]
    public static partial void PeerAdded(ILogger logger, string hostId, string address, int port);

    [LoggerMessage(6, LogLevel.Information, "Control plane: peer {HostId} withdrawn; its path and routes removed")]
    public static partial void PeerRemoved(ILogger logger, string hostId);

    [LoggerMessage(7, LogLevel.Warning, "Control plane: peer {HostId} not added yet: {Error}")]
    public static partial void PeerRefused(ILogger logger, string hostId, string error);

    [LoggerMessage(8, LogLevel.Warning, "Control plane: route {Route} to host {HostId} not set yet: {Error}")]
    public static partial void RouteRefused(ILogger logger, string route, string hostId, string error);

    [LoggerMessage(9, LogLevel.Information, "Control plane: host {HostId}'s VMs {Vms} are not placed there; placing them again")]
    public static partial void PlacingAgain(ILogger logger, string hostId, string vms);

    [LoggerMessage(13, LogLevel.Information, "Control plane: host {HostId}'s VMs {Vms} have no stack on a path from it; placing them again")]
    public static partial void BindingAgain(ILogger logger, string hostId, string vms);

    [LoggerMessage(10, LogLevel.Information, "Control plane: host {HostId}'s stack version holds are now {Holds}; its releases {Releases}")]
    public static partial void HoldsChanged(ILogger logger, string hostId, string holds, string releases);

    [LoggerMessage(11, LogLevel.Information, "Control plane: host {HostId} rotated its key; the new public key is registered now, the previous one verifies for the overlap")]
    public static partial void KeyRotated(ILogger logger, string hostId);

    [LoggerMessage(12, LogLevel.Information, "Control plane: host {HostId} rotated its key; the path takes the pair's new keys in place")]
    public static partial void PeerKeyChanged(ILogger logger, string hostId);
}
