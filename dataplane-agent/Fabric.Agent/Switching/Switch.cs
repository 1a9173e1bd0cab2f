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

    /// <summary>The one clock of the switch, its paths, their stacks and authenticators, the underlay's watchdog and the
    /// stack host; tests pass a fake one.</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>
    /// How many threads receive from the VMs' ports that can be waited on together (packet sockets, taps), each for its
    /// share of the VMs; 0: a thread per VM. With many VMs a thread per port wakes for a few frames each, and on a small
    /// host the wake-ups cost more than the frames. The default: one per two cores, at most 8.
    /// </summary>
    public int VmReceiveThreads
    {
        get => _vmReceiveThreads;
        init => _vmReceiveThreads = value is >= 0 and <= 64 ? value
            : throw new ArgumentOutOfRangeException(nameof(VmReceiveThreads), value, "VmReceiveThreads must be between 0 (a thread per VM) and 64");
    }

    private readonly int _vmReceiveThreads = Math.Clamp(Environment.ProcessorCount / 2, 1, 8);
}

/// <summary>
/// The VMs' switch on one host: it attaches VMs, keeps the forwarding table and the paths to remote hosts, runs the swap
/// lifecycle and housekeeping, and answers for the whole to the agent. Its parts each do one job over the state they
/// share (<see cref="SwitchState"/>): <see cref="Forwarder"/> switches frames both ways, <see cref="SlotNegotiation"/>
/// binds VMs and opens slots with the peers, <see cref="MonitorThread"/> runs the stacks' timers and the probes, and
/// <see cref="Quarantine"/> moves traffic off stacks that fail or are withdrawn. A path (<see cref="RemotePath"/>) holds
/// its slot table and calls its stacks under its own gate.
/// </summary>
public sealed class Switch : IDisposable
{
    private const int InnerEthernet = 14;
    private const int UdpAndFabric = 8 + FabricHeader.Length;
    private readonly SwitchState _state;
    private readonly SwitchOptions _options;
    private readonly Func<long> _clock;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<string, VmPort> _vms;
    private readonly ConcurrentDictionary<string, RemotePath> _paths;
    private readonly ConcurrentDictionary<UdpPeer, RemotePath> _pathsByAddress;
    private readonly Forwarder _forwarder;
    private readonly Quarantine _quarantine;
    private readonly SlotNegotiation _negotiation;
    private readonly MonitorThread _monitor;

    /// <summary>Paths replaced while a stack was stuck in a call on them: never released (their gate is held), disposed at the end if they come free.</summary>
    private readonly ConcurrentDictionary<RemotePath, bool> _abandoned = new();
    private long _pathsReplaced;
    private readonly StackHost _stackHost;
    private readonly object _tableWriter = new();
    private readonly ConcurrentDictionary<string, int> _innerMtuByStack = new(StringComparer.Ordinal);

    public Switch(SwitchOptions options, ILogger logger)
    {
        _state = new SwitchState(options, logger);
        (_options, _clock, _logger, _stackHost) = (options, _state.Clock, logger, _state.StackHost);
        (_vms, _paths, _pathsByAddress) = (_state.Vms, _state.Paths, _state.PathsByAddress);
        _forwarder = new Forwarder(_state);
        _quarantine = new Quarantine(_state);
        _negotiation = new SlotNegotiation(_state, _quarantine);
        _monitor = new MonitorThread(_state);
    }

    public string HostId => _options.HostId;

    public ForwardingTable Table => _state.Table;

    public IReadOnlyDictionary<string, VmPort> Vms => _vms;

    public IReadOnlyDictionary<string, RemotePath> Paths => _paths;

    /// <summary>Sends what the calling thread has queued on the underlay (a test that holds a thread's outbox as a receive thread does).</summary>
    internal void FlushCallingThread() => _state.Flush();

    /// <summary>How many times a host's path was replaced by a new one (its VM bindings then start again: whoever applies bindings applies them anew).</summary>
    public long PathsReplaced => Interlocked.Read(ref _pathsReplaced);

    /// <summary>The loaded and registered stacks with their bindings.</summary>
    public StackHost StackHost => _stackHost;

    /// <summary>Datagrams from unknown peers and other underlay-level drops.</summary>
    public TrafficCounters UnderlayCounters => _state.UnderlayCounters;

    /// <summary>The bound underlay endpoints.</summary>
    public (IPEndPoint? IPv4, IPEndPoint? IPv6) UnderlayEndpoints => (_state.Underlay4?.Local, _state.Underlay6?.Local);

    /// <summary>Makes a stack plug-in available to paths by its id, beside the other versions of that id (<see cref="StackHost.Register"/>).</summary>
    public void RegisterStack(string assemblyPath, string? signedId = null, IReadOnlyDictionary<string, string>? digests = null, string? signedVersion = null,
        Fabric.Stacks.StackDescription? declared = null)
    {
        var (description, key) = _stackHost.Register(assemblyPath, signedId, digests, signedVersion, declared);
        // A version registered again after its withdrawn copy unloaded may be another build with another overhead.
        _innerMtuByStack.TryRemove(key, out _);
        Log.StackRegistered(_logger, description.Id, StackKey.VersionOf(key)!, assemblyPath);
    }

    private UnderlayFactory MakeUnderlay => _options.Underlay ?? ((local, handler, afterBatch, fault, time) => new UdpUnderlay(local, handler, afterBatch, fault, time));

    /// <summary>Binds the underlay sockets (either may be null).</summary>
    public void StartUnderlay(IPEndPoint? ipv4, IPEndPoint? ipv6)
    {
        if (ipv4 is not null)
        {
            _state.Underlay4 = MakeUnderlay(ipv4, _forwarder.OnDatagram, _state.Flush, UnderlayFault, _options.Time);
            Log.UnderlayListening(_logger, _state.Underlay4.Local.ToString());
        }
        if (ipv6 is not null)
        {
            _state.Underlay6 = MakeUnderlay(ipv6, _forwarder.OnDatagram, _state.Flush, UnderlayFault, _options.Time);
            Log.UnderlayListening(_logger, _state.Underlay6.Local.ToString());
        }
        _monitor.Start();
    }

    /// <summary>Path monitor threads replaced because a stack held one in a call that did not return.</summary>
    public long MonitorReplacements => _monitor.Replacements;

    /// <summary>Exceptions the path monitor caught and survived.</summary>
    public long MonitorFaults => _monitor.Faults;

    /// <summary>Exceptions stack instances threw from Dispose (each disposed on a pool thread once out of its slot).</summary>
    public long DisposeFaults => _state.Disposer.Faults;

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
            if (_state.Table.FindByMac(spec.Vni, spec.Mac) is { } existing)
            {
                throw new InvalidOperationException($"MAC {spec.Mac} in vni {spec.Vni} already belongs to {existing.LocalVm ?? "remote host " + existing.RemoteHost}.");
            }
            var entry = new Endpoint(spec.Vni, spec.Mac, spec.VmId, null, spec.IPv4, spec.IPv6);
            RefuseAddressConflict(entry);
            _vms[spec.VmId] = vm;
            _state.Table = _state.Table.With(entry);
        }
        _forwarder.StartReceiver(vm);
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
            _state.Table = _state.Table.Without(vm.Spec.Vni, vm.Spec.Mac);
        }
        vm.Stopping = true;
        _forwarder.StopReceiver(vm);
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
            var existing = _state.Table.FindByMac(vni, mac);
            if (existing is { LocalVm: { } local })
            {
                throw new InvalidOperationException($"MAC {mac} in vni {vni} is local VM '{local}'; a remote entry cannot replace it.");
            }
            // A confidential VM's entry stays sealed until it is removed: a set-route that forgets to say so (an operator's,
            // by hand) does not send its frames in clear. The control plane unseals by removing the entry and setting it anew.
            var entry = new Endpoint(vni, mac, null, remoteHost, ipv4, ipv6, sealedVm || existing?.Sealed == true);
            RefuseAddressConflict(entry);
            _state.Table = _state.Table.With(entry);
        }
    }

    /// <summary>Throws naming the address and its holder when another VM of the network holds one of the entry's addresses
    /// (ARP, neighbour discovery and the source check need each address to be one VM's).</summary>
    private void RefuseAddressConflict(Endpoint entry)
    {
        if (_state.Table.AddressConflict(entry) is var (address, holder))
        {
            throw new InvalidOperationException(ReferenceEquals(holder, entry)
                ? $"address {address} is listed twice for {entry.Mac} in vni {entry.Vni}"
                : $"address {address} in vni {entry.Vni} already belongs to {(holder.LocalVm is { } vm ? $"local VM '{vm}'" : $"{holder.Mac} on host '{holder.RemoteHost}'")}; "
                    + "remove or change that entry first");
        }
    }

    /// <summary>Removes a remote VM entry; false when there was none.</summary>
    public bool RemoveRemoteEndpoint(uint vni, MacAddress mac)
    {
        lock (_tableWriter)
        {
            if (_state.Table.FindByMac(vni, mac) is not { RemoteHost: not null })
            {
                return false;
            }
            _state.Table = _state.Table.Without(vni, mac);
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
            _state.Table = new ForwardingTable(_state.Table.Endpoints.Where(e => e.RemoteHost != hostId));
        }
        ReleaseAll(path);
        Report($"path to {hostId} removed", LogLevel.Information);
        return true;
    }

    /// <summary>Adds a remote host and binds its path to the named stack. Throws naming what is missing.</summary>
    /// <param name="spec">The host, its underlay addresses and the path's stack.</param>
    /// <param name="underlayPort">The host's underlay UDP port.</param>
    /// <param name="sealedPath">The path must never carry unbound VMs' frames in clear, whatever its stack (a replaced encrypting path).</param>
    public RemotePath AddRemoteHost(RemoteHostSpec spec, int underlayPort = FabricHeader.DefaultUdpPort, bool sealedPath = false) => AddRemoteHost(spec, underlayPort, sealedPath, abandon: null);

    /// <summary>Takes the host pair's keys anew in place (<see cref="RemotePath.Rekey"/>); false when there is no such path or it has no overlay key.</summary>
    public bool RekeyRemoteHost(string hostId, PathKeyRing ring, bool mineRotated) => _paths.TryGetValue(hostId, out var path) && path.Rekey(ring, mineRotated);

    /// <summary>
    /// Moves every VM bound to a stack that encrypts on the path to <paramref name="hostId"/> onto fresh instances
    /// (<see cref="SlotNegotiation.RenewSlotAsync"/>), one per slot, hitlessly: after the pair's keys rotated, their
    /// sessions derive from the new path key. Returns how many slots were renewed; what failed is said as an event.
    /// </summary>
    public async Task<int> RenewEncryptingSlotsAsync(string hostId, CancellationToken cancellationToken = default)
    {
        if (!_paths.TryGetValue(hostId, out var path))
        {
            return 0;
        }
        var renewed = 0;
        foreach (var slot in path.VmBindingKeys().Values.Where(b => b.Slot >= 0 && b.Stack is not null && _stackHost.Describe(b.Stack)?.Encrypts == true).Select(b => b.Slot).Distinct().ToList())
        {
            if (await _negotiation.RenewSlotAsync(path, slot, cancellationToken).ConfigureAwait(false) is { } error)
            {
                Report($"the path to {hostId}: slot {slot} was not renewed after its keys rotated: {error}");
            }
            else
            {
                renewed++;
            }
        }
        return renewed;
    }

    /// <summary>
    /// <see cref="AddRemoteHost(RemoteHostSpec, int, bool)"/>; with <paramref name="abandon"/>, the host's current path,
    /// stuck in a stack call: it is set aside, not released (its gate is held). The new path replaces exactly it; when
    /// another took its place meanwhile (an operator's add-host), that one stays and the new one is let go (throws).
    /// </summary>
    private RemotePath AddRemoteHost(RemoteHostSpec spec, int underlayPort, bool sealedPath, RemotePath? abandon)
    {
        var description = _stackHost.Describe(spec.Stack)
            ?? throw new InvalidOperationException($"Remote host '{spec.HostId}': stack '{spec.Stack}' is not loaded (available: {string.Join(", ", _stackHost.Registered)}).");
        // The path opens the stack's newest usable version (or the version the spec names).
        var stackKey = _stackHost.Resolve(spec.Stack)!;
        var family = description.UnderlayFamily;
        var address = family == AddressFamily.InterNetworkV6 ? spec.UnderlayIPv6 : spec.UnderlayIPv4;
        var underlay = family == AddressFamily.InterNetworkV6 ? _state.Underlay6 : _state.Underlay4;
        if (address is null || underlay is null)
        {
            throw new InvalidOperationException(
                $"Remote host '{spec.HostId}': stack '{spec.Stack}' runs over {(family == AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4")}, "
                + (address is null ? "but the host has no such underlay address." : "but this agent has no underlay socket of that family."));
        }
        var destination = UdpPeer.From(new IPEndPoint(address, underlayPort));
        var path = new RemotePath(spec, destination, underlay, _forwarder.DeliverFromUnderlay, _clock, _options.HostId, _options.Time) { OnFault = _quarantine.HandleFault,
            OnControl = _negotiation.HandleControl, InnerMtu = InnerMtuOf, TimerArmed = _monitor.TimerArmed, Disposer = _state.Disposer,
            Usable = _stackHost.IsUsable, OnNeedEncryptingSlot = _negotiation.OpenEncryptingSlot,
            Follows = vmId => _vms.TryGetValue(vmId, out var vm) && vm.Role == VmRole.Follows,
            OnStackEvent = (stack, name, detail) => Report($"stack {stack} on the path to {spec.HostId}: {name}: {detail}") };
        if (spec.OverlayKey is null)
        {
            Report($"the path to {spec.HostId} has no overlay key: its probes and control messages are not authenticated, so anyone "
                + "who can send as its address can open or close its slots and steer its measurements (set remoteHosts[].overlayKey)");
        }
        try
        {
            OpenOwnSlot(path, stackKey, 0);
            path.Commit(0, 0);
            path.SealedPath |= sealedPath;
            // The standing fallback: the family's std stack, open for receiving in the last slot on every path.
            if (_stackHost.Candidates(FallbackStack(family)) is [var fallback, ..])
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
        Log.PathBound(_logger, spec.HostId, address + ":" + underlayPort, stackKey, 0);
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
        var current = _stackHost.Describe(path.TransmitKey!)!;
        var next = _stackHost.Describe(stackId)
            ?? throw new InvalidOperationException($"Swap on '{hostId}': stack '{stackId}' is not available (available: {string.Join(", ", _stackHost.Registered)}).");
        stackId = _stackHost.Resolve(stackId)!;
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

    /// <summary>Phase 2: this host transmits through <paramref name="slot"/> from the next packet on; the old slot drains.</summary>
    public void CommitSwap(string hostId, int slot)
    {
        var path = PathTo(hostId);
        path.Commit(slot, DrainDeadline());
    }

    private long DrainDeadline() => _state.DrainDeadline();

    private void OpenOwnSlot(RemotePath path, string stackId, int slot, bool adoptPeerOpened = false) => _negotiation.OpenOwnSlot(path, stackId, slot, adoptPeerOpened);

    /// <summary>
    /// Binds a VM's transmissions to <paramref name="hostId"/> to <paramref name="stackId"/>, hitlessly: the stack is
    /// opened in a slot of this host's range (or the one already open with it is reused), the peer is asked to open the
    /// same slot and must confirm (prepare on both ends), then the VM's next frame goes through it (commit); its previous
    /// slot drains. The path's default stack needs no slot of its own. Returns null when bound, else why not — and then
    /// the VM's binding is what it was. Safe to call again with the same arguments (nothing changes).
    /// </summary>
    public Task<string?> BindVmAsync(string vmId, string hostId, string stackId, CancellationToken cancellationToken = default) =>
        _negotiation.BindAsync(vmId, hostId, stackId, cancellationToken);

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
            Report($"{vmId} {(mustEncrypt ? "must be encrypted from now on: its frames leave only through a stack that encrypts" : "no longer needs encryption")}", LogLevel.Information);
        }
        return true;
    }

    /// <summary>
    /// Sets whose stack carries a VM's conversations with VMs on other hosts (<see cref="VmRole"/>). A VM that comes to
    /// lead (or stops) is bound again, in a slot of the leaders' half (or out of it), when the control plane next binds it
    /// (see <see cref="SlotNegotiation.BindAsync"/>). False when the VM is not attached.
    /// </summary>
    public bool SetRole(string vmId, VmRole role)
    {
        if (!_vms.TryGetValue(vmId, out var vm))
        {
            return false;
        }
        if (vm.Role != role)
        {
            vm.Role = role;
            Report($"{vmId} {role switch
            {
                VmRole.Leads => "leads its conversations with VMs on other hosts: they answer on its stack",
                VmRole.Follows => "follows: it answers a VM that leads on that VM's stack",
                _ => "sends on its own stack only",
            }}", LogLevel.Information);
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

    /// <summary>An exception escaped the handling of one underlay datagram: reported (at most one a second), and the receive thread goes on.</summary>
    private void UnderlayFault(Exception e)
    {
        if (_faultReports.ShouldReport(_clock()))
        {
            Report($"handling an underlay datagram threw {e.GetType().Name}: {e.Message} (the datagram is lost; receiving goes on)", LogLevel.Error);
        }
    }

    private readonly RateLimit _faultReports = new(TimeSpan.FromSeconds(1));

    /// <summary>Exceptions the underlay receive threads caught and survived (each cost one datagram).</summary>
    public long UnderlayFaults => (_state.Underlay4?.Faults ?? 0) + (_state.Underlay6?.Faults ?? 0);

    /// <summary>What each underlay socket's UDP offloads did (segmented sends, coalesced receives, refusals).</summary>
    public IReadOnlyList<(string Family, UdpOffloads Figures)> UnderlayOffloads =>
        [.. new[] { ("ipv4", _state.Underlay4), ("ipv6", _state.Underlay6) }.Where(u => u.Item2 is not null).Select(u => (u.Item1, u.Item2!.Offloads))];

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
            // A stack stuck in a call holds its path's gate: it is quarantined and the host given a fresh path; nothing
            // waits on the stuck one.
            if (path.InCallFor(now) > Quarantine.HangThresholdNanoseconds)
            {
                if (_quarantine.Hung(path) is { } hung)
                {
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
                }
            }
        }
        _quarantine.MoveOffWithdrawn();
        _quarantine.DisposeHangs();
        // A stack stuck in a timer call holds the monitor, which every path's timers and probes share: another thread
        // takes its place (the stuck path itself was replaced above).
        _monitor.ReplaceIfStuck(now);
        foreach (var vm in _vms.Values)
        {
            // A stack stuck in a transmit call holds the VM's receive thread, which all its traffic shares (to every host and
            // to local VMs): another thread takes its place (the stuck path itself was replaced above); the frame it held is
            // lost. Only a thread a path's stack holds is replaced: a batch that is merely slow is not.
            var since = Volatile.Read(ref vm.HandlingSince);
            if (since != 0 && now - since > Quarantine.HangThresholdNanoseconds && !vm.Stopping && vm.Receiver is { } receiver
                && _paths.Values.Concat(_abandoned.Keys).Any(path => path.Holds(receiver.ManagedThreadId, now, Quarantine.HangThresholdNanoseconds)))
            {
                var count = vm.CountReplacement();
                Report($"the receive thread of {vm.Spec.VmId} was stuck in a call for over {Quarantine.HangThresholdNanoseconds / 1_000_000} ms: a new one took its place ({count} so far)", LogLevel.Error);
                _forwarder.StartReceiver(vm);
            }
        }
        if (_forwarder.ReviveGroups() is > 0 and var revived)
        {
            Report($"{revived} VM receive group thread(s) had ended by a fault: new ones took their place", LogLevel.Error);
        }
        foreach (var underlay in new[] { _state.Underlay4, _state.Underlay6 })
        {
            // A stack stuck in a receive call holds the underlay's receive thread, which every path shares: another
            // thread takes its place (the stuck path itself was replaced above).
            if (underlay is not null && underlay.HandlingFor.Ticks * 100 > Quarantine.HangThresholdNanoseconds)
            {
                var count = underlay.ReplaceReceiver();
                Report($"the underlay receive thread on {underlay.Local} was stuck in a call for over {Quarantine.HangThresholdNanoseconds / 1_000_000} ms: a new one took its place ({count} so far)", LogLevel.Error);
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
        // The configured stack's newest usable version (an older one when the hung version was its newest), else std.
        var stack = _stackHost.Candidates(spec.Stack).Count == 0 ? FallbackStack(family) : spec.Stack;
        try
        {
            var fresh = AddRemoteHost(spec with { Stack = stack }, stuck.Destination.Port, stuck.SealedPath, abandon: stuck);
            Report($"the path to {spec.HostId} was replaced by a fresh one on {stack}{(fresh.SealedPath ? " (its frames that must be encrypted are dropped until a stack that encrypts carries them)" : "")}; "
                + $"the stuck instance of {hung} stays loaded until the agent restarts");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A stack that will not start, one that will not load: said, never the end of housekeeping.
            Report($"the path to {spec.HostId} is stuck in {hung} and could not be replaced: {e.Message}", LogLevel.Error);
        }
    }

    /// <summary>Recent events operators should see (quarantines, hangs), newest last, at most 100.</summary>
    public IReadOnlyList<string> Events => _state.Events;

    private static string FallbackStack(AddressFamily family) => SwitchState.FallbackStack(family);

    private void Report(string text, LogLevel level = LogLevel.Warning) => _state.Report(text, level);

    /// <summary>
    /// A stack was withdrawn from the signed targets: no new binding takes it, every path and binding on it moves to
    /// the path's fallback (dropping, not clearing, what must stay encrypted), its slots drain and close — also those the
    /// peer opened, so it no longer handles even what arrives — and it unloads once released and idle for the drain time.
    /// Bindings the control plane pushes for it are refused from now on. Returns false when it was not registered.
    /// </summary>
    public bool WithdrawStack(string stackId, string reason) => _quarantine.Withdraw(stackId, reason);

    /// <summary>
    /// Moves every VM binding on a version of a stack id other than the one its bindings should use — an older one than
    /// the id's newest usable version, or one the control plane's hold excludes — to that version (the newest the peer
    /// also runs), hitlessly (<see cref="BindVmAsync"/> with the bare id: a new slot opened and confirmed by the peer, the
    /// VM's next frame through it, the old slot draining). A peer that does not run it yet leaves the VM where it is; call
    /// again later. Returns how many bindings moved.
    /// </summary>
    /// <param name="retryAfter">A binding whose move the peer refused less than this long ago, with this host's holds
    /// and releases as they were then, is not tried again (zero: every binding is tried).</param>
    /// <param name="cancellationToken">Stops between bindings.</param>
    public async Task<int> ConformBindingsAsync(TimeSpan retryAfter = default, CancellationToken cancellationToken = default)
    {
        var moved = 0;
        if (_conformRefused.Count > 65_536)
        {
            // VMs that left keep their entries; rather than track them, forget every refusal now and then.
            _conformRefused.Clear();
        }
        foreach (var path in _paths.Values)
        {
            if (path.Stuck)
            {
                continue;
            }
            foreach (var (vmId, (key, _)) in path.VmBindingKeys())
            {
                if (key is null || !StackKey.IsVersioned(key))
                {
                    continue;
                }
                // Best first; a binding on one of them that is not older than the best stays (the peer may lack a newer one).
                var candidates = _stackHost.Candidates(StackKey.IdOf(key));
                if (candidates.Count == 0 || candidates[0] == key
                    || (candidates.Contains(key) && StackKey.CompareVersions(StackKey.VersionOf(candidates[0])!, StackKey.VersionOf(key)!) <= 0))
                {
                    continue;
                }
                // A move the peer refused (it does not run the version yet, or the control plane has not released it there)
                // is tried again after retryAfter, or as soon as this host's holds or releases change: not at every periodic
                // call, each try opening an instance of the version and asking the peer.
                var generation = _stackHost.HoldsGeneration;
                var now = _options.Time.GetUtcNow().ToUnixTimeMilliseconds();
                if (_conformRefused.TryGetValue((path.Spec.HostId, vmId), out var refused) && refused.Target == candidates[0] && refused.Generation == generation
                    && now - refused.At < (long)retryAfter.TotalMilliseconds)
                {
                    continue;
                }
                if (await BindVmAsync(vmId, path.Spec.HostId, StackKey.IdOf(key), cancellationToken).ConfigureAwait(false) is null
                    && path.BindingOf(vmId).Stack is { } bound && bound != key)
                {
                    moved++;
                }
                if (path.BindingOf(vmId).Stack != candidates[0])
                {
                    _conformRefused[(path.Spec.HostId, vmId)] = (candidates[0], generation, now);
                }
                else
                {
                    _conformRefused.TryRemove((path.Spec.HostId, vmId), out _);
                }
            }
        }
        return moved;
    }

    /// <summary>How long a binding whose move to its best version the peer refused stays where it is before the periodic conformance tries again.</summary>
    public static readonly TimeSpan ConformRetry = TimeSpan.FromSeconds(15);

    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string Host, string Vm), (string Target, long Generation, long At)> _conformRefused = new();

    private RemotePath PathTo(string hostId) => _state.PathTo(hostId);

    private void ReleaseAll(RemotePath path)
    {
        List<string> bound;
        try
        {
            bound = path.BoundStacks();
        }
        catch (PathStuckException)
        {
            // Its instances stay (a stack is stuck in a call on it); nothing of it is released now. Set aside, it is released
            // when the call comes back, and the watchdog still sees the VM thread the call may hold.
            _abandoned.TryAdd(path, true);
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
    public int InnerMtu(RemotePath path) => InnerMtuOf(path.TransmitKey ?? path.Spec.Stack);

    /// <summary>The largest IP packet a VM may send through <paramref name="stackId"/>.</summary>
    public int InnerMtuOf(string stackId) => _innerMtuByStack.GetOrAdd(stackId, ComputeInnerMtu);

    private int ComputeInnerMtu(string stackId)
    {
        var stack = _stackHost.Describe(stackId)!;
        var outerIp = stack.UnderlayFamily == AddressFamily.InterNetworkV6 ? 40 : 20;
        return _options.UnderlayMtu - outerIp - UdpAndFabric - stack.MaxStackFieldBytes - stack.MaxExpansionBytes - InnerEthernet;
    }

    public void Dispose()
    {
        _monitor.Dispose();
        foreach (var vmId in _vms.Keys.ToList())
        {
            DetachVm(vmId);
        }
        _forwarder.Dispose();
        _state.Underlay4?.Dispose();
        _state.Underlay6?.Dispose();
        foreach (var path in _paths.Values.Concat(_abandoned.Keys))
        {
            ReleaseAll(path);
        }
        _paths.Clear();
    }
}
