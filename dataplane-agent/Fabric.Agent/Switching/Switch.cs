using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Net;
using System.Net.Sockets;
using Fabric.Agent.Stacks;
using Fabric.Agent.Underlay;
using Fabric.Hal;
using Fabric.Hal.Linux;
using Fabric.Wire;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent.Switching;

/// <summary>Settings of the switch.</summary>
/// <param name="HostId">This host's id.</param>
/// <param name="UnderlayMtu">The uplink's MTU: the largest outer IP packet.</param>
public sealed record SwitchOptions(string HostId, int UnderlayMtu = 1500)
{
    /// <summary>How long a replaced stack instance keeps receiving, and an unused stack stays loaded.</summary>
    public TimeSpan Drain { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>How long a slot the peer opened may receive nothing before it is closed here (the peer opens it again when it sends).</summary>
    public TimeSpan PeerSlotIdle { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>Makes the underlay for each local address; null: kernel UDP sockets (<see cref="UdpUnderlay"/>).</summary>
    public UnderlayFactory? Underlay { get; init; }
}

/// <summary>
/// The VMs' switch on one host. Frames from a VM are checked (valid Ethernet, its own source MAC), ARP and neighbour
/// solicitations are answered from the forwarding table, same-host traffic is switched locally, traffic for remote
/// VMs goes through the path's stack to the underlay, broadcasts are replicated within the virtual network. Frames
/// from the underlay reach only local VMs of the virtual network in the Fabric header. Every drop is counted by reason.
/// </summary>
public sealed class Switch : IDisposable
{
    private const int InnerEthernet = 14;
    private const int UdpAndFabric = 8 + FabricHeader.Length;
    private const long HangThresholdNanoseconds = 1_000_000_000;
    private readonly SwitchOptions _options;
    private readonly Func<long> _clock;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<string, VmPort> _vms = new();
    private readonly ConcurrentDictionary<string, RemotePath> _paths = new();
    private readonly ConcurrentDictionary<UdpPeer, RemotePath> _pathsByAddress = new();

    /// <summary>Paths replaced while a stack was stuck in a call on them: never released (their gate is held), disposed at the end if they come free.</summary>
    private readonly ConcurrentDictionary<RemotePath, bool> _abandoned = new();
    private long _pathsReplaced;
    private readonly ConcurrentDictionary<(RemotePath, string), bool> _saidNoFallback = new();
    private readonly StackHost _stackHost;
    private readonly object _tableWriter = new();
    private readonly TrafficCounters _underlayCounters = new();
    private readonly ConcurrentQueue<string> _events = new();
    private readonly ConcurrentDictionary<RemotePath, bool> _hung = new();
    private readonly ConcurrentDictionary<string, int> _innerMtuByStack = new(StringComparer.Ordinal);
    private volatile ForwardingTable _table = ForwardingTable.Empty;
    private IUnderlay? _underlay4;
    private IUnderlay? _underlay6;

    public Switch(SwitchOptions options, Func<long> clock, ILogger logger)
    {
        _options = options;
        _clock = clock;
        _logger = logger;
        _stackHost = new StackHost(options.Drain);
    }

    public string HostId => _options.HostId;

    public ForwardingTable Table => _table;

    public IReadOnlyDictionary<string, VmPort> Vms => _vms;

    public IReadOnlyDictionary<string, RemotePath> Paths => _paths;

    /// <summary>How many times a host's path was replaced by a new one (its VM bindings then start again: whoever applies bindings applies them anew).</summary>
    public long PathsReplaced => Interlocked.Read(ref _pathsReplaced);

    /// <summary>The loaded and registered stacks with their bindings.</summary>
    public StackHost StackHost => _stackHost;

    /// <summary>Datagrams from unknown peers and other underlay-level drops.</summary>
    public TrafficCounters UnderlayCounters => _underlayCounters;

    /// <summary>The bound underlay endpoints.</summary>
    public (IPEndPoint? IPv4, IPEndPoint? IPv6) UnderlayEndpoints => (_underlay4?.Local, _underlay6?.Local);

    /// <summary>Makes a stack plug-in available to paths by its id.</summary>
    public void RegisterStack(string assemblyPath, string? signedId = null, IReadOnlyDictionary<string, string>? digests = null)
    {
        var description = _stackHost.Register(assemblyPath, signedId, digests);
        // A stack id registered again (a newer version, after the withdrawn one unloaded) may have another overhead.
        _innerMtuByStack.TryRemove(description.Id, out _);
        Log.StackLoaded(_logger, description.Id, description.Version, assemblyPath);
    }

    private UnderlayFactory MakeUnderlay => _options.Underlay ?? ((local, handler, afterBatch, fault) => new UdpUnderlay(local, handler, afterBatch, fault));

    /// <summary>Binds the underlay sockets (either may be null).</summary>
    public void StartUnderlay(IPEndPoint? ipv4, IPEndPoint? ipv6)
    {
        if (ipv4 is not null)
        {
            _underlay4 = MakeUnderlay(ipv4, OnDatagram, Flush, UnderlayFault);
            Log.UnderlayListening(_logger, _underlay4.Local.ToString());
        }
        if (ipv6 is not null)
        {
            _underlay6 = MakeUnderlay(ipv6, OnDatagram, Flush, UnderlayFault);
            Log.UnderlayListening(_logger, _underlay6.Local.ToString());
        }
        StartMonitor();
    }

    /// <summary>Starts a path monitor thread; one started before it (stuck in a stack's call) ends when that call returns.</summary>
    private void StartMonitor()
    {
        var generation = Interlocked.Increment(ref _monitorGeneration);
        Volatile.Write(ref _monitorBeat, _clock());
        _monitor = new Thread(() => MonitorLoop(generation)) { IsBackground = true, Name = "path-monitor" };
        _monitor.Start();
    }

    /// <summary>Which monitor thread is the current one: an older one that comes back from a stuck call ends.</summary>
    private int _monitorGeneration;

    /// <summary>When the current monitor last began a round (its heartbeat; it sleeps at most 100 ms between rounds).</summary>
    private long _monitorBeat;

    /// <summary>How long the monitor may go without beginning a round before the watchdog gives it a successor.</summary>
    private const long MonitorStuckNanoseconds = 1_000_000_000;

    private long _monitorReplacements;

    /// <summary>Path monitor threads replaced because a stack held one in a call that did not return.</summary>
    public long MonitorReplacements => Interlocked.Read(ref _monitorReplacements);

    private readonly StackDisposer _disposer = new();

    /// <summary>
    /// How long an instance's Dispose may run before its stack is quarantined. Longer than a call on the data path may
    /// take (1 s): a Dispose only holds a pool thread, and a plug-in may flush or join a worker there; a busy machine
    /// must not cost a healthy stack its place.
    /// </summary>
    private static readonly TimeSpan DisposeHangLimit = TimeSpan.FromSeconds(5);

    /// <summary>Exceptions stack instances threw from Dispose (each disposed on a pool thread once out of its slot).</summary>
    public long DisposeFaults => _disposer.Faults;

    /// <summary>Attaches a VM's port and starts switching its frames. Throws when the VM id or its (VNI, MAC) is taken.</summary>
    public VmPort AttachVm(VmSpec spec, IFramePort port)
    {
        var vm = new VmPort(spec, port);
        lock (_tableWriter)
        {
            if (_vms.ContainsKey(spec.VmId))
            {
                throw new InvalidOperationException($"VM '{spec.VmId}' is already attached.");
            }
            if (_table.FindByMac(spec.Vni, spec.Mac) is { } existing)
            {
                throw new InvalidOperationException($"MAC {spec.Mac} in vni {spec.Vni} already belongs to {existing.LocalVm ?? "remote host " + existing.RemoteHost}.");
            }
            _vms[spec.VmId] = vm;
            _table = _table.With(new Endpoint(spec.Vni, spec.Mac, spec.VmId, null, spec.IPv4, spec.IPv6));
        }
        vm.Receiver = new Thread(() => ReceiveFromVm(vm)) { IsBackground = true, Name = $"vm-rx {spec.VmId}" };
        vm.Receiver.Start();
        Log.VmAttached(_logger, spec.VmId, spec.Device, spec.Vni, spec.Mac.ToString());
        return vm;
    }

    /// <summary>Stops switching a VM's frames, releases its port and removes it from the table; false when unknown.</summary>
    public bool DetachVm(string vmId)
    {
        VmPort? vm;
        lock (_tableWriter)
        {
            if (!_vms.TryRemove(vmId, out vm))
            {
                return false;
            }
            _table = _table.Without(vm.Spec.Vni, vm.Spec.Mac);
        }
        vm.Stopping = true;
        vm.Receiver?.Join(TimeSpan.FromSeconds(2));
        vm.Port.Dispose();
        vm.Dispose();
        var drainUntil = DrainDeadline();
        foreach (var path in _paths.Values)
        {
            try
            {
                path.ForgetVm(vmId, drainUntil);
            }
            catch (PathStuckException)
            {
                // That path is being replaced; the fresh one never knew the VM.
            }
        }
        Log.VmDetached(_logger, vmId);
        return true;
    }

    /// <summary>Adds or replaces a remote VM entry (<paramref name="sealedVm"/>: it is confidential, frames to it leave
    /// only encrypted). Throws when the MAC is a local VM's.</summary>
    public void SetRemoteEndpoint(uint vni, MacAddress mac, string remoteHost, ImmutableArray<IPv4Address> ipv4, ImmutableArray<IPv6Address> ipv6, bool sealedVm = false)
    {
        lock (_tableWriter)
        {
            var existing = _table.FindByMac(vni, mac);
            if (existing is { LocalVm: { } local })
            {
                throw new InvalidOperationException($"MAC {mac} in vni {vni} is local VM '{local}'; a remote entry cannot replace it.");
            }
            // A confidential VM's entry stays sealed until it is removed: a set-route that forgets to say so (an operator's,
            // by hand) does not send its frames in clear. The control plane unseals by removing the entry and setting it anew.
            _table = _table.With(new Endpoint(vni, mac, null, remoteHost, ipv4, ipv6, sealedVm || existing?.Sealed == true));
        }
    }

    /// <summary>Removes a remote VM entry; false when there was none.</summary>
    public bool RemoveRemoteEndpoint(uint vni, MacAddress mac)
    {
        lock (_tableWriter)
        {
            if (_table.FindByMac(vni, mac) is not { RemoteHost: not null })
            {
                return false;
            }
            _table = _table.Without(vni, mac);
            return true;
        }
    }

    /// <summary>
    /// Removes a remote host: its path (every slot closed, its stacks released) and the remote VM entries that point to
    /// it, so nothing forwards there and nothing from it is delivered. False when there was no such host.
    /// </summary>
    public bool RemoveRemoteHost(string hostId)
    {
        if (!_paths.TryRemove(hostId, out var path))
        {
            return false;
        }
        // By address and path: another host may use that address now.
        _pathsByAddress.TryRemove(KeyValuePair.Create(path.Destination, path));
        lock (_tableWriter)
        {
            // One rebuild for all of them (each rebuild freezes the table's indexes anew).
            _table = new ForwardingTable(_table.Endpoints.Where(e => e.RemoteHost != hostId));
        }
        ReleaseAll(path);
        Report($"path to {hostId} removed");
        return true;
    }

    /// <summary>Adds a remote host and binds its path to the named stack. Throws naming what is missing.</summary>
    /// <param name="spec">The host, its underlay addresses and the path's stack.</param>
    /// <param name="underlayPort">The host's underlay UDP port.</param>
    /// <param name="sealedPath">The path must never carry unbound VMs' frames in clear, whatever its stack (a replaced encrypting path).</param>
    public RemotePath AddRemoteHost(RemoteHostSpec spec, int underlayPort = FabricHeader.DefaultUdpPort, bool sealedPath = false) => AddRemoteHost(spec, underlayPort, sealedPath, abandon: null);

    /// <summary>
    /// <see cref="AddRemoteHost(RemoteHostSpec, int, bool)"/>; with <paramref name="abandon"/>, the host's current path,
    /// stuck in a stack call: it is set aside, not released (its gate is held). The new path replaces exactly it; when
    /// another took its place meanwhile (an operator's add-host), that one stays and the new one is let go (throws).
    /// </summary>
    private RemotePath AddRemoteHost(RemoteHostSpec spec, int underlayPort, bool sealedPath, RemotePath? abandon)
    {
        var description = _stackHost.Describe(spec.Stack)
            ?? throw new InvalidOperationException($"Remote host '{spec.HostId}': stack '{spec.Stack}' is not loaded (available: {string.Join(", ", _stackHost.Registered)}).");
        var family = description.UnderlayFamily;
        var address = family == AddressFamily.InterNetworkV6 ? spec.UnderlayIPv6 : spec.UnderlayIPv4;
        var underlay = family == AddressFamily.InterNetworkV6 ? _underlay6 : _underlay4;
        if (address is null || underlay is null)
        {
            throw new InvalidOperationException(
                $"Remote host '{spec.HostId}': stack '{spec.Stack}' runs over {(family == AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4")}, "
                + (address is null ? "but the host has no such underlay address." : "but this agent has no underlay socket of that family."));
        }
        var destination = UdpPeer.From(new IPEndPoint(address, underlayPort));
        var path = new RemotePath(spec, destination, underlay, DeliverFromUnderlay, _clock, _options.HostId) { OnFault = HandleFault, OnControl = HandleControl, InnerMtu = InnerMtuOf,
            TimerArmed = TimerArmed, Disposer = _disposer, Usable = _stackHost.IsUsable, OnNeedEncryptingSlot = OpenEncryptingSlot,
            OnStackEvent = (stack, name, detail) => Report($"stack {stack} on the path to {spec.HostId}: {name}: {detail}") };
        if (spec.OverlayKey is null)
        {
            Report($"the path to {spec.HostId} has no overlay key: its probes and control messages are not authenticated, so anyone "
                + "who can send as its address can open or close its slots and steer its measurements (set remoteHosts[].overlayKey)");
        }
        try
        {
            OpenOwnSlot(path, spec.Stack, 0);
            path.Commit(0, 0);
            path.SealedPath |= sealedPath;
            // The standing fallback: the family's std stack, open for receiving in the last slot on every path.
            var fallback = FallbackStack(family);
            if (_stackHost.Registered.Contains(fallback))
            {
                OpenOwnSlot(path, fallback, RemotePath.FallbackSlot);
            }
        }
        catch
        {
            // Nothing of a path that could not be set up stays: its stacks are released, the host's old path kept.
            ReleaseAll(path);
            throw;
        }
        // The new path takes the old one's place in one step: the host is never without a path (a frame or datagram
        // for it meanwhile would find none), and the old one's address entry goes only if it is still the old one's.
        RemotePath? old;
        if (abandon is not null)
        {
            if (!_paths.TryUpdate(spec.HostId, path, abandon))
            {
                ReleaseAll(path);
                throw new InvalidOperationException($"the path to {spec.HostId} was replaced meanwhile; that one stays");
            }
            old = abandon;
        }
        else
        {
            _paths.TryGetValue(spec.HostId, out old);
            _paths[spec.HostId] = path;
        }
        _pathsByAddress[destination] = path;
        if (old is not null)
        {
            _pathsByAddress.TryRemove(KeyValuePair.Create(old.Destination, old));
            if (abandon is not null)
            {
                _abandoned.TryAdd(old, true);
            }
            else
            {
                ReleaseAll(old);
            }
            Interlocked.Increment(ref _pathsReplaced);
        }
        Log.PathBound(_logger, spec.HostId, address + ":" + underlayPort, spec.Stack, 0);
        return path;
    }

    /// <summary>
    /// Phase 1 of a hitless swap: opens <paramref name="slot"/> (or a free one) on the path to <paramref name="hostId"/>
    /// with a new instance of <paramref name="stackId"/>, ready to receive. Returns the slot. Nothing transmits through
    /// it until <see cref="CommitSwap"/>; <see cref="AbortSwap"/> closes it again.
    /// </summary>
    public int PrepareSwap(string hostId, string stackId, int? slot = null)
    {
        var path = PathTo(hostId);
        var current = _stackHost.Describe(path.TransmitStack!)!;
        var next = _stackHost.Describe(stackId)
            ?? throw new InvalidOperationException($"Swap on '{hostId}': stack '{stackId}' is not available (available: {string.Join(", ", _stackHost.Registered)}).");
        if (next.UnderlayFamily != current.UnderlayFamily)
        {
            throw new InvalidOperationException($"Swap on '{hostId}': {stackId} runs over another underlay family than {current.Id}; re-add the host instead.");
        }
        var chosen = slot ?? path.FreeSlot();
        if (chosen is < 0 or > 255)
        {
            throw new InvalidOperationException($"Swap on '{hostId}': slot {chosen} is not 0..255 (or no slot is free).");
        }
        // The peer may have prepared first and its instance already spoken (secure's hello): this end then opened the
        // slot with the same stack at its request, and that instance is the prepared one.
        OpenOwnSlot(path, stackId, chosen, adoptPeerOpened: slot is not null);
        return chosen;
    }

    /// <summary>
    /// Opens a slot on this end with a new instance of <paramref name="stackId"/>. Nothing stays acquired when it fails
    /// (or when the slot was adopted: it is already counted), and a stack whose factory throws is quarantined (it would
    /// throw for every path) before the error goes on.
    /// </summary>
    private void OpenOwnSlot(RemotePath path, string stackId, int slot, bool adoptPeerOpened = false)
    {
        var stack = _stackHost.Acquire(stackId);
        try
        {
            if (!path.Open(stack, slot, _options.HostId, adoptPeerOpened))
            {
                _stackHost.Release(stackId);
            }
        }
        catch (Exception e)
        {
            _stackHost.Release(stackId);
            if (e is StackStartException start)
            {
                QuarantineUnstartable(start);
            }
            throw;
        }
    }

    /// <summary>Paths an encrypting slot is being opened on (for frames to a confidential VM), and since when (clock
    /// nanoseconds): one attempt at a time, and another after 10 s should one never end.</summary>
    private readonly ConcurrentDictionary<RemotePath, long> _openingEncrypting = new();

    /// <summary>
    /// Opens a slot that encrypts on <paramref name="path"/>, bound to no VM, for frames to confidential VMs behind it:
    /// asked (at most once a second) by a path whose frames to such a VM found none — a standard VM that speaks first,
    /// or after this agent or the path was replaced, before the confidential VM's host sent anything. Runs in the
    /// background; the frames that asked were dropped, those after it go encrypted.
    /// </summary>
    private void OpenEncryptingSlot(RemotePath path)
    {
        var now = _clock();
        if (_openingEncrypting.TryGetValue(path, out var since) && now - since < 10_000_000_000L || !_openingEncrypting.TryAdd(path, now) && !_openingEncrypting.TryUpdate(path, now, since))
        {
            return;
        }
        _ = Task.Run(async () =>
        {
            try
            {
                var family = _stackHost.Describe(path.StackIn(path.TransmitSlot) ?? path.Spec.Stack)?.UnderlayFamily;
                // Of the stacks that encrypt over the path's family, one the path has settings (keys) for, "secure" first.
                var stack = _stackHost.Registered
                    .Where(id => _stackHost.IsUsable(id) && _stackHost.Describe(id) is { Encrypts: true } d && d.UnderlayFamily == family)
                    .OrderByDescending(id => path.Spec.SettingsOf(id).Count > 0).ThenByDescending(id => id == "secure").ThenBy(id => id, StringComparer.Ordinal)
                    .FirstOrDefault();
                if (stack is null)
                {
                    Report($"frames to a confidential VM on {path.Spec.HostId} are dropped: no stack that encrypts is available on this host");
                    return;
                }
                // One this end opened already (draining, or being confirmed) is left to finish; else a free one.
                var slot = path.OwnSlotOf(stack) >= 0 ? -1 : path.FreeOwnSlot();
                if (slot < 0)
                {
                    return;
                }
                OpenOwnSlot(path, stack, slot);
                if (await AskPeerToOpenAsync(path, slot, stack, CancellationToken.None).ConfigureAwait(false) is { } refused)
                {
                    if (path.Close(slot) is { } closed)
                    {
                        _stackHost.Release(closed);
                    }
                    Report($"frames to a confidential VM on {path.Spec.HostId} are dropped: {path.Spec.HostId} did not open {stack} in slot {slot}: {refused}");
                    return;
                }
                Report($"{stack} opened in slot {slot} on the path to {path.Spec.HostId} for frames to its confidential VMs");
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Report($"frames to a confidential VM on {path.Spec.HostId} are dropped: a slot that encrypts could not be opened: {e.Message}");
            }
            finally
            {
                _openingEncrypting.TryRemove(KeyValuePair.Create(path, now));
            }
        });
    }

    private void QuarantineUnstartable(StackStartException e)
    {
        Report($"stack {e.StackId} quarantined: {e.Message}");
        _stackHost.Quarantine(e.StackId, e.Message);
    }

    /// <summary>Phase 2: this host transmits through <paramref name="slot"/> from the next packet on; the old slot drains.</summary>
    public void CommitSwap(string hostId, int slot)
    {
        var path = PathTo(hostId);
        path.Commit(slot, _clock() + (long)(_options.Drain.TotalMilliseconds * 1_000_000));
    }

    private long DrainDeadline() => _clock() + (long)(_options.Drain.TotalMilliseconds * 1_000_000);

    private readonly ConcurrentDictionary<(string Host, int Slot), TaskCompletionSource<string?>> _opening = new();

    /// <summary>
    /// Binds a VM's transmissions to <paramref name="hostId"/> to <paramref name="stackId"/>, hitlessly: the stack is
    /// opened in a slot of this host's range (or the one already open with it is reused), the peer is asked to open the
    /// same slot and must confirm (prepare on both ends), then the VM's next frame goes through it (commit); its previous
    /// slot drains. The path's default stack needs no slot of its own. Returns null when bound, else why not — and then
    /// the VM's binding is what it was. Safe to call again with the same arguments (nothing changes).
    /// </summary>
    public async Task<string?> BindVmAsync(string vmId, string hostId, string stackId, CancellationToken cancellationToken = default)
    {
        try
        {
            return await BindVmCoreAsync(vmId, hostId, stackId, cancellationToken).ConfigureAwait(false);
        }
        catch (PathStuckException e)
        {
            // The watchdog gives that host a fresh path; the binding is applied again then.
            return e.Message;
        }
    }

    private async Task<string?> BindVmCoreAsync(string vmId, string hostId, string stackId, CancellationToken cancellationToken)
    {
        if (!_paths.TryGetValue(hostId, out var path))
        {
            return $"no path to host '{hostId}'";
        }
        if (_vms.TryGetValue(vmId, out var vm) && vm.Sealed && _stackHost.Describe(stackId)?.Encrypts != true)
        {
            // Whoever asks (the control plane included): a binding that would carry a confidential VM in clear is refused.
            return $"VM '{vmId}' must be encrypted (its policy is confidential) and stack '{stackId}' does not encrypt";
        }
        if (stackId == path.StackIn(path.TransmitSlot))
        {
            path.BindVm(vmId, -1, DrainDeadline());
            return null;
        }
        if (path.BindingOf(vmId).Stack == stackId)
        {
            return null;
        }
        var description = _stackHost.Describe(stackId);
        if (description is null)
        {
            return $"stack '{stackId}' is not available on this host (available: {string.Join(", ", _stackHost.Registered)})";
        }
        if (_stackHost.Quarantined.TryGetValue(stackId, out var why))
        {
            return $"stack '{stackId}' is quarantined on this host: {why}";
        }
        if (_stackHost.Withdrawn.TryGetValue(stackId, out var withdrawn))
        {
            return $"stack '{stackId}' is withdrawn on this host: {withdrawn}";
        }
        if (description.UnderlayFamily != _stackHost.Describe(path.StackIn(path.TransmitSlot) ?? path.Spec.Stack)?.UnderlayFamily)
        {
            return $"stack '{stackId}' runs over another underlay family than the path to '{hostId}'";
        }
        var slot = path.OwnSlotOf(stackId);
        var opened = false;
        if (slot < 0)
        {
            slot = path.FreeOwnSlot();
            if (slot < 0)
            {
                return $"no free slot on the path to '{hostId}'";
            }
            try
            {
                OpenOwnSlot(path, stackId, slot);
            }
            catch (StackStartException e)
            {
                return e.Message;
            }
            opened = true;
        }
        // The peer confirms even a slot it has already (idempotent): a restarted peer may have lost it.
        var reply = await AskPeerToOpenAsync(path, slot, stackId, cancellationToken).ConfigureAwait(false);
        if (reply is not null)
        {
            if (opened && path.Close(slot) is { } closed)
            {
                _stackHost.Release(closed);
            }
            return $"host '{hostId}' did not open {stackId} in slot {slot}: {reply}";
        }
        path.BindVm(vmId, slot, DrainDeadline());
        return null;
    }

    /// <summary>
    /// Sets whether a VM's frames must be encrypted (its policy is confidential): from then on they leave only through a
    /// stack that encrypts, and are dropped where none carries them. False when the VM is not attached.
    /// </summary>
    public bool SetSealed(string vmId, bool mustEncrypt)
    {
        if (!_vms.TryGetValue(vmId, out var vm))
        {
            return false;
        }
        if (vm.Sealed != mustEncrypt)
        {
            vm.Sealed = mustEncrypt;
            Report($"{vmId} {(mustEncrypt ? "must be encrypted from now on: its frames leave only through a stack that encrypts" : "no longer needs encryption")}");
        }
        return true;
    }

    /// <summary>Moves a VM back to the path's default stack; its previous slot drains.</summary>
    public void UnbindVm(string vmId, string hostId)
    {
        if (_paths.TryGetValue(hostId, out var path))
        {
            path.BindVm(vmId, -1, DrainDeadline());
        }
    }

    private async Task<string?> AskPeerToOpenAsync(RemotePath path, int slot, string stackId, CancellationToken cancellationToken)
    {
        var key = (path.Spec.HostId, slot);
        var pending = _opening.GetOrAdd(key, _ => new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously));
        try
        {
            // Sent until confirmed: the request or its answer may be lost on the very path that is lossy.
            for (var attempt = 0; attempt < 20; attempt++)
            {
                path.SendControl(ControlMessages.MakeOpen(slot, stackId, path.OpenIdOf(slot)));
                Flush();
                var done = await Task.WhenAny(pending.Task, Task.Delay(100, cancellationToken)).ConfigureAwait(false);
                if (done == pending.Task)
                {
                    return await pending.Task.ConfigureAwait(false);
                }
            }
            return "no answer within 2 s";
        }
        finally
        {
            _opening.TryRemove(KeyValuePair.Create(key, pending));
        }
    }

    /// <summary>
    /// The peer refused a slot this end sends on (asked to open it again after the peer lost it — it restarted, replaced a
    /// stuck path, or quarantined or withdrew the stack meanwhile): what was sent through it moves to the fallback slot,
    /// dropping rather than clearing what must be encrypted, instead of going on into a slot the peer drops.
    /// </summary>
    private void RefusedInUse(RemotePath path, int slot, string reason)
    {
        // Only from a peer whose refusals are authenticated (else anyone could move traffic), and never off a stack that
        // encrypts onto one that does not: those frames wait for a binding instead.
        if (!path.Authenticated || !path.IsOwnSlot(slot) || slot == RemotePath.FallbackSlot || path.StackIn(slot) is not { } stack
            || path.StackIn(RemotePath.FallbackSlot) is not { } fallback || _stackHost.Describe(stack)?.Encrypts == true)
        {
            return;
        }
        var drainUntil = _clock() + (long)(_options.Drain.TotalMilliseconds * 1_000_000);
        var moved = path.RebindSlot(slot, RemotePath.FallbackSlot);
        if (path.TransmitSlot == slot)
        {
            path.Commit(RemotePath.FallbackSlot, drainUntil, fallback: true);
            moved++;
        }
        if (moved > 0)
        {
            Report($"host {path.Spec.HostId} refused slot {slot} ({stack}): {reason}; what it carried falls back to {fallback} (slot {RemotePath.FallbackSlot})");
        }
    }

    /// <summary>An agent control message from a peer (on the underlay thread; what it sends is flushed after the batch).</summary>
    private void HandleControl(RemotePath path, byte[] message)
    {
        if (message.Length < 2)
        {
            path.Counters.Drop(DropReason.Malformed);
            return;
        }
        var slot = message[1];
        switch (message[0])
        {
            case ControlMessages.Open:
                var (stackId, openId) = ControlMessages.ParseOpen(message);
                path.SendControl(OpenForPeer(path, slot, stackId, openId));
                break;
            case ControlMessages.Opened:
            case ControlMessages.Refused:
                if (_opening.TryGetValue((path.Spec.HostId, slot), out var pending))
                {
                    pending.TrySetResult(message[0] == ControlMessages.Opened ? null : ControlMessages.Text(message));
                }
                else if (message[0] == ControlMessages.Refused)
                {
                    RefusedInUse(path, slot, ControlMessages.Text(message));
                }
                break;
            case ControlMessages.Close:
                if (path.IsPeerSlot(slot) && path.Close(slot) is { } closed)
                {
                    _stackHost.Release(closed);
                }
                break;
            case ControlMessages.Unknown:
                if (path.IsOwnSlot(slot) && path.StackIn(slot) is { } stack)
                {
                    Report($"host {path.Spec.HostId} does not have slot {slot} ({stack}): asking it to open it again");
                    path.SendControl(ControlMessages.MakeOpen(slot, stack, path.OpenIdOf(slot)));
                }
                break;
            default:
                path.Counters.Drop(DropReason.Malformed);
                break;
        }
    }

    private byte[] OpenForPeer(RemotePath path, int slot, string stackId, ulong openId)
    {
        if (!path.IsPeerSlot(slot))
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"slot {slot} is not in {path.Spec.HostId}'s range on this path");
        }
        var description = _stackHost.Describe(stackId);
        if (description is null)
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is not available on {_options.HostId}");
        }
        if (_stackHost.Quarantined.TryGetValue(stackId, out var why))
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is quarantined on {_options.HostId}: {why}");
        }
        if (_stackHost.Withdrawn.TryGetValue(stackId, out var withdrawn))
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is withdrawn on {_options.HostId}: {withdrawn}");
        }
        var stack = _stackHost.Acquire(stackId);
        string? replaced;
        bool unchanged;
        try
        {
            replaced = path.OpenForPeer(stack, slot, _options.HostId, openId, out unchanged);
        }
        catch (StackStartException e)
        {
            _stackHost.Release(stackId);
            QuarantineUnstartable(e);
            return ControlMessages.Make(ControlMessages.Refused, slot, e.Message);
        }
        catch (InvalidOperationException e) when (e is PathStuckException or PathClosedException)
        {
            // Nothing was opened: the count taken for it goes (the watchdog replaces a stuck path; a closed one is gone).
            _stackHost.Release(stackId);
            throw;
        }
        if (unchanged || replaced is not null)
        {
            // Already counted once for this slot (unchanged), or the replaced stack's count goes.
            _stackHost.Release(unchanged ? stackId : replaced!);
        }
        return ControlMessages.Make(ControlMessages.Opened, slot, stackId);
    }

    /// <summary>Each path's measurements since the last call (the agent reports them once a second).</summary>
    public IReadOnlyDictionary<string, PathMeasurement> Measure()
    {
        var now = _clock();
        var result = new Dictionary<string, PathMeasurement>(StringComparer.Ordinal);
        foreach (var path in _paths.Values)
        {
            // A path stuck in a stack call is left out this time.
            if (path.TakeMeasurement(now) is { } measurement)
            {
                result[path.Spec.HostId] = measurement;
            }
        }
        return result;
    }

    /// <summary>
    /// Runs the stacks' timers and sends the probes (every 100 ms). Between them it sleeps until the earliest stack
    /// timer or probe is due — a path whose stack arms an earlier timer wakes it (<see cref="TimerArmed"/>) — instead of
    /// looking every millisecond: an idle agent costs nothing here. Timers fire within about a millisecond (the wait's
    /// granularity), as before.
    /// </summary>
    /// <summary>An exception escaped the handling of one underlay datagram: reported (at most one a second), and the receive thread goes on.</summary>
    private void UnderlayFault(Exception e)
    {
        if (_faultReports.ShouldReport(_clock()))
        {
            Report($"handling an underlay datagram threw {e.GetType().Name}: {e.Message} (the datagram is lost; receiving goes on)");
        }
    }

    private readonly RateLimit _faultReports = new(TimeSpan.FromSeconds(1));

    /// <summary>Exceptions the underlay receive threads caught and survived (each cost one datagram).</summary>
    public long UnderlayFaults => (_underlay4?.Faults ?? 0) + (_underlay6?.Faults ?? 0);

    /// <summary>What each underlay socket's UDP offloads did (segmented sends, coalesced receives, refusals).</summary>
    public IReadOnlyList<(string Family, UdpOffloads Figures)> UnderlayOffloads =>
        [.. new[] { ("ipv4", _underlay4), ("ipv6", _underlay6) }.Where(u => u.Item2 is not null).Select(u => (u.Item1, u.Item2!.Offloads))];

    /// <summary>Exceptions the path monitor caught and survived.</summary>
    public long MonitorFaults => Interlocked.Read(ref _monitorFaults);

    private long _monitorFaults;

    private void MonitorLoop(int generation)
    {
        while (!_stopping && Volatile.Read(ref _monitorGeneration) == generation)
        {
            try
            {
                MonitorRounds(generation);
            }
            catch (Exception e)
            {
                // A bug in one round must not end probing and stack timers for every path: report, pause, go on. Said
                // before it is counted, so whoever sees the count finds the event.
                if (_faultReports.ShouldReport(_clock()))
                {
                    Report($"the path monitor threw {e.GetType().Name}: {e.Message} (it goes on)");
                }
                Interlocked.Increment(ref _monitorFaults);
                Thread.Sleep(10);
            }
        }
    }

    private long _nextProbe;

    private void MonitorRounds(int generation)
    {
        while (!_stopping && Volatile.Read(ref _monitorGeneration) == generation)
        {
            var now = _clock();
            Volatile.Write(ref _monitorBeat, now);
            var probe = now >= _nextProbe;
            if (probe)
            {
                _nextProbe = now + 100_000_000;
            }
            foreach (var path in _paths.Values)
            {
                path.RunTimers(now);
                if (probe)
                {
                    path.SendProbe();
                }
            }
            Flush();
            // Said before the paths are asked, so a timer armed meanwhile wakes the wait below (it sets the event).
            Volatile.Write(ref _monitorWakeAt, _nextProbe);
            var next = _nextProbe;
            foreach (var path in _paths.Values)
            {
                next = Math.Min(next, path.NextTimer(now));
            }
            Volatile.Write(ref _monitorWakeAt, next);
            // At least 1 ms: a stack whose timer stays due after it ran is called every millisecond, as before, not in a spin.
            _monitorWake.WaitOne((int)Math.Clamp(Math.Ceiling((next - _clock()) / 1_000_000.0), 1, 100));
            Volatile.Write(ref _monitorWakeAt, long.MinValue);
        }
    }

    /// <summary>When the monitor plans to wake (<see cref="long.MinValue"/> while it is awake: it looks at every path before sleeping).</summary>
    private long _monitorWakeAt = long.MinValue;

    private readonly AutoResetEvent _monitorWake = new(false);

    /// <summary>A stack's timer is due at <paramref name="at"/>: wakes the monitor if it planned to sleep past it.</summary>
    private void TimerArmed(long at)
    {
        if (at < Volatile.Read(ref _monitorWakeAt))
        {
            _monitorWake.Set();
        }
    }

    private volatile bool _stopping;
    private Thread? _monitor;

    /// <summary>Undoes a prepare that will not be committed; the old binding stays as it was.</summary>
    public bool AbortSwap(string hostId, int slot)
    {
        var stackId = PathTo(hostId).Close(slot);
        if (stackId is not null)
        {
            _stackHost.Release(stackId);
        }
        return stackId is not null;
    }

    /// <summary>Closes drained slots and unloads stacks idle past the drain time. Call periodically; a round still running makes the next one return at once.</summary>
    public void Housekeeping()
    {
        if (!Monitor.TryEnter(_housekeeping))
        {
            return;
        }
        try
        {
            HousekeepingRound();
        }
        finally
        {
            Monitor.Exit(_housekeeping);
        }
    }

    private readonly object _housekeeping = new();

    private void HousekeepingRound()
    {
        var now = _clock();
        foreach (var abandoned in _abandoned.Keys)
        {
            // A path set aside while a call was stuck on it, whose call has come back: its slots and stacks are released.
            if (abandoned.InCallFor(now) == 0 && _abandoned.TryRemove(abandoned, out _))
            {
                ReleaseAll(abandoned);
            }
        }
        foreach (var path in _paths.Values)
        {
            // A stack stuck in a call holds its path's gate: report and quarantine it, and do not wait on that path.
            if (path.InCallFor(now) > HangThresholdNanoseconds)
            {
                if (path.InCallStack is { } hung && _hung.TryAdd(path, true))
                {
                    // Reported before it takes effect, so whoever sees the quarantine also finds the event.
                    Report($"stack {hung} quarantined: hung in a call on the path to {path.Spec.HostId} (slot {path.InCallSlot})");
                    _stackHost.Quarantine(hung, $"a call on the path to {path.Spec.HostId} has not returned for over {HangThresholdNanoseconds / 1_000_000} ms");
                    MoveOff(hung, drainSlots: false);
                    ReplaceStuckPath(path, hung);
                }
                continue;
            }
            foreach (var (slot, stackId, idle) in path.TakeDrained(now, (long)_options.PeerSlotIdle.TotalNanoseconds))
            {
                if (idle)
                {
                    Report($"slot {slot} on the path to {path.Spec.HostId} ({stackId}), opened by the peer, received nothing for {_options.PeerSlotIdle.TotalSeconds:0.#} s: closed");
                }
                _stackHost.Release(stackId);
                if (path.IsOwnSlot(slot))
                {
                    // The peer opened it for us: it may close it too.
                    path.SendControl(ControlMessages.Make(ControlMessages.Close, slot));
                    Flush();
                }
            }
        }
        foreach (var withdrawn in _stackHost.Entries().Where(e => e.Withdrawn))
        {
            // Again every round while it is loaded: an operation that was under way when it was withdrawn (a binding
            // whose peer answered late, a swap committed after) may have put it back in use.
            MoveOff(withdrawn.Id, drainSlots: true);
        }
        foreach (var hung in _disposer.NewlyHung(DisposeHangLimit))
        {
            // Every instance of it would hold a thread when it closes: no more are made, and its traffic moves off.
            Report($"stack {hung} quarantined: an instance's Dispose has not returned for over {DisposeHangLimit.TotalSeconds:0} s");
            _stackHost.Quarantine(hung, $"an instance's Dispose has not returned for over {DisposeHangLimit.TotalSeconds:0} s");
            MoveOff(hung, drainSlots: false);
        }
        if (_monitor is not null && now - Volatile.Read(ref _monitorBeat) > MonitorStuckNanoseconds)
        {
            // A stack stuck in a timer call holds the monitor, which every path's timers and probes share: another thread
            // takes its place (the stuck path itself was replaced above).
            var count = Interlocked.Increment(ref _monitorReplacements);
            Report($"the path monitor was stuck for over {MonitorStuckNanoseconds / 1_000_000} ms: a new one took its place ({count} so far)");
            StartMonitor();
        }
        foreach (var underlay in new[] { _underlay4, _underlay6 })
        {
            // A stack stuck in a receive call holds the underlay's receive thread, which every path shares: another
            // thread takes its place (the stuck path itself was replaced above).
            if (underlay is not null && underlay.HandlingFor.Ticks * 100 > HangThresholdNanoseconds)
            {
                var count = underlay.ReplaceReceiver();
                Report($"the underlay receive thread on {underlay.Local} was stuck in a call for over {HangThresholdNanoseconds / 1_000_000} ms: a new one took its place ({count} so far)");
            }
        }
        _stackHost.Collect();
    }

    /// <summary>
    /// A stack never returned from a call on <paramref name="stuck"/>, whose gate it holds: the host gets a fresh path
    /// (its configured stack, or the family's std when that is the stuck one) with new slots the peer opens anew, as after
    /// a restart of this end; the VMs' bindings are applied again by whoever applies them, and a path that had to be
    /// encrypted stays so. The stuck path is set aside; its instance cannot unload until the agent restarts.
    /// </summary>
    private void ReplaceStuckPath(RemotePath stuck, string hung)
    {
        var spec = stuck.Spec;
        var family = _stackHost.Describe(spec.Stack)?.UnderlayFamily ?? AddressFamily.InterNetwork;
        var stack = spec.Stack == hung || _stackHost.Quarantined.ContainsKey(spec.Stack) ? FallbackStack(family) : spec.Stack;
        try
        {
            var fresh = AddRemoteHost(spec with { Stack = stack }, stuck.Destination.Port, stuck.SealedPath, abandon: stuck);
            Report($"the path to {spec.HostId} was replaced by a fresh one on {stack}{(fresh.SealedPath ? " (its frames that must be encrypted are dropped until a stack that encrypts carries them)" : "")}; "
                + $"the stuck instance of {hung} stays loaded until the agent restarts");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A stack that will not start, one that will not load: said, never the end of housekeeping.
            Report($"the path to {spec.HostId} is stuck in {hung} and could not be replaced: {e.Message}");
        }
    }

    /// <summary>Recent events operators should see (quarantines, hangs), newest last, at most 100.</summary>
    public IReadOnlyList<string> Events => [.. _events];

    private static string FallbackStack(AddressFamily family) => family == AddressFamily.InterNetworkV6 ? "std-ipv6" : "std-ipv4";

    private void Report(string text)
    {
        _events.Enqueue($"{DateTime.UtcNow:O} {text}");
        while (_events.Count > 100)
        {
            _events.TryDequeue(out _);
        }
        Log.StackEvent(_logger, text);
    }

    /// <summary>
    /// Moves every path transmitting through <paramref name="stackId"/>, and every VM binding on it, to the path's
    /// fallback slot. With <paramref name="drainSlots"/> every slot holding it, on any path, drains and closes (which
    /// releases it, so it can unload); a quarantined stack's slots are left as they are.
    /// </summary>
    private void MoveOff(string stackId, bool drainSlots)
    {
        var encrypts = _stackHost.Describe(stackId)?.Encrypts == true;
        var drainUntil = _clock() + (long)(_options.Drain.TotalMilliseconds * 1_000_000);
        foreach (var path in _paths.Values)
        {
            if (path.Stuck)
            {
                // Nothing waits on a path a stack is stuck on: the watchdog replaces it.
                continue;
            }
            try
            {
                MoveOff(path, stackId, encrypts, drainSlots, drainUntil);
            }
            catch (PathStuckException e)
            {
                // The watchdog replaces a stuck path; the others move on.
                Report($"{stackId} could not be moved off the path to {path.Spec.HostId}: {e.Message}");
            }
        }
    }

    private void MoveOff(RemotePath path, string stackId, bool encrypts, bool drainSlots, long drainUntil)
    {
        var fallback = path.StackIn(RemotePath.FallbackSlot);
        if (fallback is null || fallback == stackId)
        {
            // Said once per path and stack: housekeeping comes back here every round while a withdrawn stack is loaded.
            if (path.TransmitStack == stackId && _saidNoFallback.TryAdd((path, stackId), true))
            {
                Report($"path to {path.Spec.HostId} has no other stack to fall back to; it keeps {stackId} until a binding moves it");
            }
            return;
        }
        if (path.TransmitStack == stackId)
        {
            path.Commit(RemotePath.FallbackSlot, drainUntil, fallback: true);
            Report($"path to {path.Spec.HostId} falls back to {fallback} (slot {RemotePath.FallbackSlot})"
                + (encrypts ? $"; frames that must stay encrypted are dropped until a stack that encrypts carries them" : ""));
        }
        if (path.RebindStack(stackId, RemotePath.FallbackSlot) is > 0 and var moved)
        {
            Report($"{moved} VM binding(s) on the path to {path.Spec.HostId} fall back to {fallback} (slot {RemotePath.FallbackSlot})"
                + (encrypts ? "; those of VMs that must be encrypted drop their frames instead" : ""));
        }
        if (drainSlots)
        {
            path.DrainStack(stackId, drainUntil);
        }
    }

    /// <summary>
    /// A stack was withdrawn from the signed targets: no new binding takes it, every path and binding on it moves to
    /// the path's fallback (dropping, not clearing, what must stay encrypted), its slots drain and close — also those the
    /// peer opened, so it no longer handles even what arrives — and it unloads once released and idle for the drain time.
    /// Bindings the control plane pushes for it are refused from now on. Returns false when it was not registered.
    /// </summary>
    public bool WithdrawStack(string stackId, string reason)
    {
        if (!_stackHost.Withdraw(stackId, reason))
        {
            return false;
        }
        Report($"stack {stackId} withdrawn: {reason}");
        MoveOff(stackId, drainSlots: true);
        return true;
    }

    /// <summary>
    /// A stack threw: it is quarantined (no new bindings anywhere), every path transmitting through it moves to its
    /// fallback slot, and an instance that threw while receiving is retired at once (datagrams for its slot are then
    /// counted as unknown-slot drops until the peer moves too). The agent and every other binding keep working.
    /// </summary>
    private void HandleFault(RemotePath faulted, int slot, string stackId, bool transmitting, Exception fault)
    {
        Report($"stack {stackId} quarantined: {(transmitting ? "transmit" : "receive")} on the path to {faulted.Spec.HostId} (slot {slot}) threw {fault.GetType().Name}: {fault.Message}");
        _stackHost.Quarantine(stackId, $"{(transmitting ? "transmit" : "receive")} on the path to {faulted.Spec.HostId} threw {fault.GetType().Name}: {fault.Message}");
        MoveOff(stackId, drainSlots: false);
        if (!transmitting && faulted.TransmitSlot != slot && faulted.Retire(slot) is { } retired)
        {
            _stackHost.Release(retired);
        }
    }

    private RemotePath PathTo(string hostId) =>
        _paths.TryGetValue(hostId, out var path) ? path : throw new InvalidOperationException($"No path to host '{hostId}'.");

    private void ReleaseAll(RemotePath path)
    {
        List<string> bound;
        try
        {
            bound = path.BoundStacks();
        }
        catch (PathStuckException)
        {
            // Its instances stay (a stack is stuck in a call on it); nothing of it is released.
            return;
        }
        path.Dispose();
        foreach (var stackId in bound)
        {
            _stackHost.Release(stackId);
        }
    }

    /// <summary>The largest IP packet a VM may send to <paramref name="path"/> without hitting the MTU handling.</summary>
    /// <remarks>Called per oversize check on the data path: computed once per stack id (a stack id's description never
    /// changes while it is registered), then read without taking the stack host's lock.</remarks>
    public int InnerMtu(RemotePath path) => InnerMtuOf(path.TransmitStack ?? path.Spec.Stack);

    /// <summary>The largest IP packet a VM may send through <paramref name="stackId"/>.</summary>
    public int InnerMtuOf(string stackId) => _innerMtuByStack.GetOrAdd(stackId, ComputeInnerMtu);

    private int ComputeInnerMtu(string stackId)
    {
        var stack = _stackHost.Describe(stackId)!;
        var outerIp = stack.UnderlayFamily == AddressFamily.InterNetworkV6 ? 40 : 20;
        return _options.UnderlayMtu - outerIp - UdpAndFabric - stack.MaxStackFieldBytes - stack.MaxExpansionBytes - InnerEthernet;
    }

    private void ReceiveFromVm(VmPort vm)
    {
        // A port with offloads may hand over 64 KiB segments: fewer of them per batch.
        var batch = new FrameBatch(vm.Port.Capabilities.Offloads ? 16 : 32, Math.Max(vm.Port.Capabilities.MaxFrameLength, 2048));
        var scratch = new byte[65536];
        try
        {
            ReceiveLoop(vm, batch, scratch);
        }
        catch (ObjectDisposedException)
        {
            // The switch is shutting down under this thread: nothing left to forward.
        }
    }

    private void ReceiveLoop(VmPort vm, FrameBatch batch, byte[] scratch)
    {
        byte[]? segments = null;
        // The device's MTU, an Ethernet header and a VLAN tag: what a frame that is not a segment to cut may be.
        var maxPlain = vm.Port.Capabilities.Offloads ? vm.Port.Capabilities.Mtu + 18 : int.MaxValue;
        while (!vm.Stopping)
        {
            var result = vm.Port.ReceiveBatch(batch, TimeSpan.FromMilliseconds(100));
            if (result == PortResult.Closed || result == PortResult.Error)
            {
                if (!vm.Stopping)
                {
                    Log.VmPortStopped(_logger, vm.Spec.VmId, result.ToString());
                }
                return;
            }
            for (var i = 0; i < batch.Count; i++)
            {
                var offload = batch.Offload(i);
                if (offload.IsPlain && batch[i].Length <= maxPlain)
                {
                    FromVm(vm, batch[i], scratch);
                }
                else if (offload.IsPlain)
                {
                    // A port with offloads takes 64 KiB frames, but only a segment to cut may exceed the device's MTU.
                    vm.Counters.Received(batch[i].Length);
                    vm.Counters.Drop(DropReason.Malformed);
                }
                else
                {
                    FromVmOffloaded(vm, batch[i], offload, scratch, segments ??= new byte[65536]);
                }
            }
            Flush();
        }
    }

    /// <summary>Sends what the calling thread queued on the underlay during its batch.</summary>
    private void Flush()
    {
        _underlay4?.Flush();
        _underlay6?.Flush();
        VmPort.FlushThread();
    }

    /// <summary>
    /// Finishes what the VM's device left to the port: a partial checksum is completed, a large TCP or UDP segment cut into
    /// the frames the VM's MSS makes (each switched as if the VM had sent it). A header the frame's own headers do not
    /// bear out is the VM's malformed frame.
    /// </summary>
    private void FromVmOffloaded(VmPort vm, Span<byte> frame, VirtioNetHeader offload, Span<byte> scratch, Span<byte> segment)
    {
        if ((offload.GsoType & ~VirtioNetHeader.GsoEcn) == VirtioNetHeader.GsoNone)
        {
            if (!FrameOffload.FinishChecksum(frame, offload))
            {
                vm.Counters.Received(frame.Length);
                vm.Counters.Drop(DropReason.Malformed);
                return;
            }
            FromVm(vm, frame, scratch);
            return;
        }
        var count = FrameOffload.SegmentCount(frame, offload);
        // A segment size beyond the device's MTU is a header the VM's kernel would never write (and each cut frame would
        // only be fragmented again); headers are at most 134 bytes, so a segment always fits the buffer.
        if (count == 0 || offload.GsoSize > vm.Port.Capabilities.Mtu || offload.GsoSize + 134 > segment.Length)
        {
            vm.Counters.Received(frame.Length);
            vm.Counters.Drop(DropReason.Malformed);
            return;
        }
        vm.LargeSegmentsCut++;
        vm.FramesCut += count;
        for (var i = 0; i < count; i++)
        {
            FromVm(vm, segment[..FrameOffload.Segment(frame, offload, i, segment)], scratch);
        }
    }

    /// <summary>Switches one frame a VM sent; the caller flushes the underlay after its batch.</summary>
    private void FromVm(VmPort vm, ReadOnlySpan<byte> frame, Span<byte> scratch)
    {
        vm.Counters.Received(frame.Length);
        if (!EthernetFrame.TryCreate(frame, out var eth) || eth.TagCount > 0)
        {
            vm.Counters.Drop(DropReason.Malformed);
            return;
        }
        if (eth.Source != vm.Spec.Mac)
        {
            vm.Counters.Drop(DropReason.SpoofedSource);
            return;
        }
        if (SourceGuard.Check(vm.Spec, eth) is { } refused)
        {
            vm.Counters.Drop(refused);
            return;
        }
        var table = _table;
        var vni = vm.Spec.Vni;
        if (eth.Destination.IsMulticast)
        {
            if (TryAnswerFromTable(vm, eth, table, scratch))
            {
                return;
            }
            Flood(vm, frame, table);
            return;
        }
        var target = table.FindByMac(vni, eth.Destination);
        if (target is null)
        {
            vm.Counters.Drop(DropReason.UnknownDestination);
            return;
        }
        if (target.LocalVm is not null)
        {
            // Same host: straight to the other VM's port, never to the uplink.
            if (_vms.TryGetValue(target.LocalVm, out var local))
            {
                local.Deliver(frame);
            }
            return;
        }
        if (!_paths.TryGetValue(target.RemoteHost!, out var path))
        {
            vm.Counters.Drop(DropReason.NoPath);
            return;
        }
        if (path.Transmit(frame, vni, vm.Spec.VmId, vm.Sealed, target.Sealed) is > 0 and var mtu)
        {
            HandleTooLarge(vm, path, eth, mtu, target.Sealed, scratch);
        }
    }

    private void HandleTooLarge(VmPort vm, RemotePath path, in EthernetFrame eth, int mtu, bool sealedDestination, Span<byte> scratch)
    {
        vm.Counters.Drop(DropReason.TooLarge);
        if (eth.EtherType == EtherTypes.IPv4 && IPv4Packet.TryCreate(eth.Payload, out var v4))
        {
            if (!v4.DontFragment)
            {
                // Without DF a router fragments: so does the switch, and the VM never notices the overlay.
                var fragmentScratch = new byte[mtu + InnerEthernet + 64];
                Replies.Fragment(eth, v4, mtu, fragmentScratch, fragment => path.Transmit(fragment, vm.Spec.Vni, vm.Spec.VmId, vm.Sealed, sealedDestination));
                return;
            }
            vm.Deliver(scratch[..Replies.FragmentationNeeded(eth, v4, mtu, scratch)]);
        }
        else if (eth.EtherType == EtherTypes.IPv6 && IPv6Packet.TryCreate(eth.Payload, out var v6))
        {
            vm.Deliver(scratch[..Replies.PacketTooBig(eth, v6, mtu, scratch)]);
        }
    }

    private bool TryAnswerFromTable(VmPort vm, in EthernetFrame eth, ForwardingTable table, Span<byte> scratch)
    {
        var vni = vm.Spec.Vni;
        if (eth.EtherType == EtherTypes.Arp && ArpPacket.TryCreate(eth.Payload, out var arp) && arp.Operation == ArpOperation.Request)
        {
            var request = arp.ToRepr();
            // Gratuitous ARP (sender = target) announces; it is not a question.
            if (request.SenderProtocol == request.TargetProtocol)
            {
                return false;
            }
            if (table.FindByIPv4(vni, request.TargetProtocol) is { } owner && owner.Mac != vm.Spec.Mac)
            {
                vm.Deliver(scratch[..Replies.ArpReply(request, owner.Mac, scratch)]);
                return true;
            }
            return false;
        }
        if (eth.EtherType == EtherTypes.IPv6 && IPv6Packet.TryCreate(eth.Payload, out var ip) && ip.UpperLayerProtocol == IPProtocols.IcmpV6
            && IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var icmp) && icmp.Type == IcmpV6Types.NeighborSolicitation)
        {
            // Duplicate address detection comes from :: and must not be answered, or the VM would drop its own address.
            if (ip.Source == default)
            {
                return true;
            }
            if (table.FindByIPv6(vni, icmp.TargetAddress) is { } owner && owner.Mac != vm.Spec.Mac)
            {
                vm.Deliver(scratch[..Replies.NeighborAdvertisement(vm.Spec.Mac, ip.Source, icmp.TargetAddress, owner.Mac, scratch)]);
                return true;
            }
        }
        return false;
    }

    private void Flood(VmPort from, ReadOnlySpan<byte> frame, ForwardingTable table)
    {
        var vni = from.Spec.Vni;
        foreach (var vmId in table.LocalVmsOf(vni))
        {
            if (vmId != from.Spec.VmId && _vms.TryGetValue(vmId, out var local))
            {
                local.Deliver(frame);
            }
        }
        foreach (var host in table.RemoteHostsOf(vni))
        {
            if (_paths.TryGetValue(host, out var path))
            {
                path.Transmit(frame, vni, from.Spec.VmId, from.Sealed, preferEncrypted: table.HasSealedVms(vni, host));
            }
        }
    }

    private void OnDatagram(ReadOnlySpan<byte> datagram, UdpPeer source)
    {
        if (!_pathsByAddress.TryGetValue(source, out var path))
        {
            _underlayCounters.Drop(DropReason.UnknownPeer);
            return;
        }
        path.Receive(datagram);
    }

    /// <summary>
    /// Delivers a frame from the path to <paramref name="fromHost"/> to the local VM it is for; returns that VM's id (null
    /// for a broadcast or a drop). The frame's source must be a VM the forwarding table places on that host in that
    /// virtual network: a host (or anyone who can send as it) cannot speak for VMs it does not have, nor for VMs of
    /// networks it has none in. A confidential VM gets it only if it was <paramref name="encrypted"/> (the stack that carried it encrypts).
    /// </summary>
    private string? DeliverFromUnderlay(string fromHost, uint vni, bool encrypted, ReadOnlySpan<byte> frame)
    {
        if (!EthernetFrame.TryCreate(frame, out var eth))
        {
            _underlayCounters.Drop(DropReason.Malformed);
            return null;
        }
        var table = _table;
        if (table.FindByMac(vni, eth.Source)?.RemoteHost != fromHost)
        {
            _underlayCounters.Drop(DropReason.SpoofedSource);
            return null;
        }
        if (eth.Destination.IsMulticast)
        {
            foreach (var vmId in table.LocalVmsOf(vni))
            {
                if (!_vms.TryGetValue(vmId, out var local))
                {
                    continue;
                }
                if (!local.Sealed || encrypted)
                {
                    local.Deliver(frame);
                }
                else
                {
                    _underlayCounters.Drop(DropReason.NotEncrypted);
                }
            }
            return null;
        }
        // The VNI comes from the Fabric header: a frame reaches a VM only if that VM is in that network.
        if (table.FindByMac(vni, eth.Destination) is { LocalVm: { } vmIdTarget } && _vms.TryGetValue(vmIdTarget, out var target))
        {
            if (target.Sealed && !encrypted)
            {
                // A confidential VM takes frames from other hosts only as they crossed the underlay: encrypted. Whatever
                // came in clear (from a standard VM, or forged as its host) could have been read or made up on the way.
                _underlayCounters.Drop(DropReason.NotEncrypted);
                return null;
            }
            target.Deliver(frame);
            return vmIdTarget;
        }
        _underlayCounters.Drop(DropReason.WrongVirtualNetwork);
        return null;
    }

    public void Dispose()
    {
        _stopping = true;
        _monitor?.Join(TimeSpan.FromSeconds(2));
        foreach (var vmId in _vms.Keys.ToList())
        {
            DetachVm(vmId);
        }
        _underlay4?.Dispose();
        _underlay6?.Dispose();
        foreach (var path in _paths.Values.Concat(_abandoned.Keys))
        {
            ReleaseAll(path);
        }
        _paths.Clear();
    }
}
