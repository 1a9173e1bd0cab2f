using System.Net;
using Fabric.Agent.Stacks;
using Fabric.Agent.Switching;
using Fabric.Hal;
using Fabric.Hal.Linux;
using Fabric.Registration;
using Fabric.Repository;
using Fabric.Wire;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent;

/// <summary>A request to the agent's local API (one JSON object per line).</summary>
/// <param name="Op">
/// The operation, one of eleven: status (the agent's state and counters); attach-vm and detach-vm (a VM port);
/// add-host (a remote host and its path's stack); set-route and remove-route (a remote VM's forwarding entry);
/// prepare-swap, commit-swap and abort-swap (the two phases of a path's hitless swap, and undoing a prepare);
/// register-vm and deregister-vm (VMs and containers from the libvirt hook and the CNI plugin).
/// </param>
/// <param name="Vm">For attach-vm.</param>
/// <param name="Id">For detach-vm: the VM id. For prepare-swap, commit-swap and abort-swap: the remote host's id. For deregister-vm: the registration's id.</param>
/// <param name="Route">For set-route and remove-route.</param>
/// <param name="Host">For add-host.</param>
/// <param name="Stack">For prepare-swap: the stack to open.</param>
/// <param name="Slot">For prepare-swap (optional), commit-swap and abort-swap.</param>
/// <param name="Registration">For register-vm (libvirt hook, CNI plugin); deregister-vm takes the registration's id.</param>
public sealed record ApiRequest(string Op, VmConfig? Vm = null, string? Id = null, RouteConfig? Route = null, RemoteHostConfig? Host = null,
    string? Stack = null, int? Slot = null, VmRegistration? Registration = null);

/// <summary>A VM on this host for the control plane: its id, name, network, MACs, the policy its hook carried (null for VMs attached directly) and its switch ports.</summary>
public sealed record LocalVm(string Id, string Name, uint Vni, string[] Macs, VmPolicy? Policy, string[] Ports)
{
    /// <summary>Each vNIC with a MAC: its virtual network and addresses (what other hosts' routes to it say).</summary>
    public LocalVnic[] Vnics { get; init; } = [];
}

/// <summary>One vNIC of a local VM as the control plane places it.</summary>
public sealed record LocalVnic(string Mac, uint Vni, string[] IPv4, string[] IPv6);

/// <summary>The answer: ok with a result, or an error that says what is wrong.</summary>
public sealed record ApiResponse(bool Ok, object? Result = null, string? Error = null);

/// <summary>
/// The dataplane agent: loads the configured stack plug-ins, runs the switch over the HAL's ports and the UDP
/// underlay, applies the config's VMs, hosts and routes, and serves the same operations on its local API.
/// Each operation validates fully before it changes anything.
/// </summary>
public sealed class Agent : IDisposable
{
    private readonly Func<string, IFramePort> _openPort;
    private readonly ILogger _logger;
    private readonly object _apiGate = new();

    /// <param name="config">The agent's configuration.</param>
    /// <param name="logger">Where it logs.</param>
    /// <param name="openPort">Opens a VM's port by device name; null: AF_PACKET on the device.</param>
    /// <param name="underlay">Makes the underlay; null: kernel UDP sockets. Tests pass an <see cref="Underlay.InMemoryWire"/>'s.</param>
    /// <param name="time">The agent's one clock; null: the system's. Tests pass a fake one.</param>
    public Agent(AgentConfig config, ILogger logger, Func<string, IFramePort>? openPort = null, Underlay.UnderlayFactory? underlay = null, TimeProvider? time = null)
    {
        Config = config;
        _logger = logger;
        // A VM's port reads and writes virtio-net headers: its device keeps checksum and segmentation offloads, as a VM's
        // virtio NIC does, and the switch cuts large segments from the VM and joins runs of them on their way to it.
        _openPort = openPort ?? (device => AfPacketPort.Open(device, new AfPacketOptions(Offloads: config.VmPortOffloads)));
        Time = time ?? TimeProvider.System;
        var options = new SwitchOptions(config.HostId, config.Underlay.Mtu)
        {
            Drain = TimeSpan.FromMilliseconds(config.DrainMilliseconds),
            PeerSlotIdle = TimeSpan.FromSeconds(config.PeerSlotIdleSeconds),
            Underlay = underlay,
            Time = Time,
        };
        Switch = new Switch(config.VmReceiveThreads is { } threads ? options with { VmReceiveThreads = threads } : options, logger);
        _registrations = new Registrations(TryAttach, Switch.DetachVm, config.StateDirectory);
    }

    private readonly Registrations _registrations;

    /// <summary>Where libvirt hook calls that found the agent down wait (under the state folder); null without one.</summary>
    public HookSpool? Spool => Config.StateDirectory is { } state ? new HookSpool(Path.Combine(state, "hook-spool")) : null;

    public AgentConfig Config { get; }

    public Switch Switch { get; }

    /// <summary>The agent's one clock: the switch, its paths and stacks, the stack host, the control-plane link.</summary>
    public TimeProvider Time { get; }

    /// <summary>Loads stacks, binds the underlay and applies the config's hosts, VMs and routes. Throws on the first failure.</summary>
    public void Start()
    {
        foreach (var path in Config.Stacks ?? [])
        {
            Switch.RegisterStack(path);
        }
        if (Config.Repository is { } repository)
        {
            // Targets that do not verify stop the start (there is nothing trusted to run); one package that cannot be had
            // or used costs only itself: the agent starts with the others and says which and why.
            var read = SignedStacks.Read(repository, _logger);
            foreach (var stack in read.Stacks)
            {
                RegisterSigned(stack);
            }
            Said(read);
            var period = TimeSpan.FromSeconds(repository.RefreshSeconds);
            _stackRefresh = Time.CreateTimer(_ => RefreshStacks(), null, period, period);
        }
        var u = Config.Underlay;
        Switch.StartUnderlay(u.IPv4 is null ? null : new IPEndPoint(IPAddress.Parse(u.IPv4), u.Port), u.IPv6 is null ? null : new IPEndPoint(IPAddress.Parse(u.IPv6), u.Port));
        foreach (var host in Config.RemoteHosts ?? [])
        {
            Switch.AddRemoteHost(host.ToSpec(), host.Port);
        }
        foreach (var vm in Config.Vms ?? [])
        {
            Attach(vm);
        }
        foreach (var route in Config.Routes ?? [])
        {
            SetRoute(route);
        }
        lock (_apiGate)
        {
            // VMs registered before a restart, then hook calls made while the agent was down, in the order they were made.
            // A registration file that cannot be read is set aside and said, never a reason not to forward.
            foreach (var (file, aside, reason) in _registrations.Load())
            {
                Log.RegistrationUnreadable(_logger, file, aside, reason);
            }
        }
        ReplaySpool();
        // Drained slots are closed, idle stacks unloaded and registered vNICs whose netdev appeared attached in the
        // background; every 2 s, hook calls that gave up waiting on a busy agent are taken from the queue.
        var ticks = 0;
        _housekeeping = Time.CreateTimer(_ =>
        {
            try
            {
                var attached = 0;
                lock (_apiGate)
                {
                    // A tick already running when Dispose began must not touch a switch being torn down.
                    if (_disposed)
                    {
                        return;
                    }
                    attached = _registrations.AttachPending();
                }
                if (attached > 0)
                {
                    VmsChanged?.Invoke();
                }
                Switch.Housekeeping();
                if (Interlocked.Increment(ref ticks) % 8 == 0)
                {
                    ReplaySpool();
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // A timer callback that throws ends the process: a round that failed is said, and the next one tries again.
                Log.HousekeepingFailed(_logger, e.Message);
            }
        }, null, TimeSpan.FromMilliseconds(250), TimeSpan.FromMilliseconds(250));
    }

    private ITimer? _housekeeping;
    private ITimer? _stackRefresh;
    private readonly Dictionary<string, SignedStacks.VerifiedStack> _signed = new(StringComparer.Ordinal);
    private readonly object _refreshGate = new();
    private RepositoryState? _repositoryState;

    /// <summary>When the signed targets were last read, which version they were, and why the last read failed (null: it worked).</summary>
    private sealed record RepositoryState(DateTime CheckedAt, int? TargetsVersion, string? LastError);

    /// <summary>
    /// Reads the signed targets again (every <c>repository.refreshSeconds</c>). A stack they no longer publish at all, or
    /// no longer publish in the version this host runs, is withdrawn: unbound, refused, its slots drained, unloaded once
    /// idle. A stack or version newly published is registered beside the versions already there (and one withdrawn
    /// before, once its old copy has unloaded), and VM bindings on an older version of its id move to it hitlessly, path
    /// by path, as soon as the peer runs it too (<see cref="Switching.Switch.ConformBindingsAsync"/>, tried again at every
    /// refresh); a withdrawn newest version sends its bindings back to the previous one the same way. Targets that do not
    /// verify (forged, expired, rolled back) change nothing: the host keeps running what it verified and says why. Never
    /// throws (it runs on a timer).
    /// </summary>
    public void RefreshStacks()
    {
        if (Config.Repository is not { } repository || !Monitor.TryEnter(_refreshGate))
        {
            return;
        }
        try
        {
            if (!_disposed)
            {
                RefreshStacks(repository);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            _repositoryState = (_repositoryState ?? new(Time.GetUtcNow().UtcDateTime, null, null)) with { CheckedAt = Time.GetUtcNow().UtcDateTime, LastError = e.Message };
            Log.RepositoryRefreshFailed(_logger, _signed.Count, e.Message);
        }
        finally
        {
            Monitor.Exit(_refreshGate);
        }
    }

    private void RefreshStacks(RepositoryConfig repository)
    {
        var read = SignedStacks.Read(repository, _logger);
        var published = read.Targets.Targets.Values;
        foreach (var (key, running) in _signed.ToList())
        {
            var versions = published.Where(t => t.Id == running.Id).ToList();
            var reason = versions.Count == 0 ? $"targets v{read.Targets.Version} no longer publish it"
                : !versions.Any(t => t.Version == running.Version && t.Sha256 == running.Sha256) ? $"targets v{read.Targets.Version} no longer publish version {running.Version} (they publish {string.Join(", ", versions.Select(t => t.Version))})"
                : null;
            if (reason is not null)
            {
                Switch.WithdrawStack(key, reason);
                _signed.Remove(key);
            }
        }
        foreach (var stack in read.Stacks.Where(v => !_signed.ContainsKey(StackKey.Of(v.Id, v.Version)) && Switch.StackHost.CanRegister(StackKey.Of(v.Id, v.Version))))
        {
            RegisterSigned(stack);
        }
        Said(read);
        ConformBindings();
    }

    private int _conforming;
    private int _conformAgain;
    private int _conformFull;

    /// <summary>
    /// Moves bindings to the stack version each should run: the newest both ends have, or the one the control plane holds
    /// (in the background; one round at a time, and a call during a round makes one more round after it).
    /// </summary>
    /// <param name="periodic">A routine call (every registration): bindings whose move a peer refused lately wait
    /// <see cref="Switching.Switch.ConformRetry"/> (a call for a change — a refresh, new holds — tries them all).</param>
    public void ConformBindings(bool periodic = false)
    {
        if (!periodic)
        {
            Volatile.Write(ref _conformFull, 1);
        }
        Volatile.Write(ref _conformAgain, 1);
        if (Interlocked.Exchange(ref _conforming, 1) == 1)
        {
            return;
        }
        _ = Task.Run(async () =>
        {
            try
            {
                while (Interlocked.Exchange(ref _conformAgain, 0) == 1)
                {
                    var full = Interlocked.Exchange(ref _conformFull, 0) == 1;
                    if (await Switch.ConformBindingsAsync(full ? TimeSpan.Zero : Switching.Switch.ConformRetry).ConfigureAwait(false) is > 0 and var moved)
                    {
                        Log.BindingsUpgraded(_logger, moved);
                    }
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log.RepositoryRefreshFailed(_logger, _signed.Count, $"moving bindings to the stack versions they are to run: {e.Message}");
            }
            finally
            {
                Volatile.Write(ref _conforming, 0);
            }
            // A call that came between the last round's check and the release above.
            if (Volatile.Read(ref _conformAgain) == 1)
            {
                ConformBindings();
            }
        });
    }

    /// <summary>Logs each package that could not be had or used, and records what this read of the targets found for status.</summary>
    private void Said(SignedStacks.VerifiedTargets read)
    {
        foreach (var (name, error) in read.Failed)
        {
            Refused(name, "", error.Message);
        }
        _repositoryState = new(Time.GetUtcNow().UtcDateTime, read.Targets.Version, read.Failed.Count > 0 ? string.Join("; ", read.Failed.Select(f => f.Error.Message)) : read.Offline);
    }

    /// <summary>Logs a stack that could not be had or used, once per stack and reason (the refresh meets it again every period).</summary>
    private void Refused(string stack, string version, string reason)
    {
        if (_refusedSaid.Add($"{stack} {version}: {reason}"))
        {
            Log.StackRefused(_logger, stack, version, reason);
        }
    }

    private readonly HashSet<string> _refusedSaid = new(StringComparer.Ordinal);

    /// <summary>
    /// Registers a verified stack under its signed id; one whose package declares (or, from an older package, whose factory
    /// declares) another id is refused and said, and the host goes on with the others (it is tried again at the next
    /// refresh). A package's declaration is taken without loading the plug-in: its first binding loads it, and a version
    /// that will not load then, by its own fault, is quarantined (<see cref="Switching.Quarantine.Unloadable"/>).
    /// </summary>
    private void RegisterSigned(SignedStacks.VerifiedStack stack)
    {
        try
        {
            Switch.RegisterStack(stack.EntryPath, stack.Id, stack.Digests, stack.Version, stack.Declares?.ToDescription());
            _signed[StackKey.Of(stack.Id, stack.Version)] = stack;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A plug-in that will not load (wrong contract, missing type, another id than it was signed as) costs itself.
            Refused(stack.Id, stack.Version, e.Message);
        }
    }

    /// <summary>
    /// Raised (outside the agent's locks) when the VMs this host runs changed: one registered, deregistered, attached or
    /// detached through the API, or a registered VM's NIC that appeared and was attached. The control plane link places
    /// or removes them at once, not at its next report: a migrating VM's traffic follows it that much sooner.
    /// </summary>
    public event Action? VmsChanged;

    /// <summary>Handles one API request; never throws for a bad request.</summary>
    public ApiResponse Handle(ApiRequest request)
    {
        var response = request.Op == "rotate-key" ? RotateKey() : HandleLocked(request);
        if (response.Ok && request.Op is "register-vm" or "deregister-vm" or "attach-vm" or "detach-vm")
        {
            VmsChanged?.Invoke();
        }
        return response;
    }

    private ApiResponse HandleLocked(ApiRequest request)
    {
        lock (_apiGate)
        {
            try
            {
                return request.Op switch
                {
                    "status" => new ApiResponse(true, Status()),
                    "register-vm" when request.Registration is not null => new ApiResponse(true, new { Outcome = _registrations.Register(request.Registration) }),
                    "deregister-vm" when request.Id is not null => new ApiResponse(true, new { Outcome = _registrations.Deregister(request.Id) ? "deregistered" : "not registered" }),
                    "attach-vm" when request.Vm is not null => Checked(request.Vm.Validate("vm"), () => Attach(request.Vm)),
                    "detach-vm" when request.Id is not null => Switch.DetachVm(request.Id) ? new ApiResponse(true) : new ApiResponse(false, Error: $"no VM '{request.Id}' is attached"),
                    "set-route" when request.Route is not null => Checked(request.Route.Validate("route"), () => SetRoute(request.Route)),
                    "remove-route" when request.Route is not null => MacAddress.TryParse(request.Route.Mac, out var mac) && Switch.RemoveRemoteEndpoint(request.Route.Vni, mac)
                        ? new ApiResponse(true) : new ApiResponse(false, Error: $"no remote entry for {request.Route.Mac} in vni {request.Route.Vni}"),
                    "add-host" when request.Host is not null => Checked(request.Host.Validate("host"), () => Switch.AddRemoteHost(request.Host.ToSpec(), request.Host.Port)),
                    "remove-host" when request.Id is not null => Switch.RemoveRemoteHost(request.Id) ? new ApiResponse(true) : new ApiResponse(false, Error: $"no remote host '{request.Id}'"),
                    "prepare-swap" when request.Id is not null && request.Stack is not null =>
                        new ApiResponse(true, new { Slot = Switch.PrepareSwap(request.Id, request.Stack, request.Slot) }),
                    "commit-swap" when request.Id is not null && request.Slot is { } commit => Do(() => Switch.CommitSwap(request.Id, commit)),
                    "abort-swap" when request.Id is not null && request.Slot is { } abort => Switch.AbortSwap(request.Id, abort)
                        ? new ApiResponse(true) : new ApiResponse(false, Error: $"slot {abort} on the path to '{request.Id}' is not a prepared slot"),
                    "attach-vm" or "detach-vm" or "set-route" or "remove-route" or "add-host" or "remove-host" or "prepare-swap" or "commit-swap" or "abort-swap" or "register-vm" or "deregister-vm" =>
                        new ApiResponse(false, Error: $"{request.Op}: missing its argument (attach-vm: vm, detach-vm: id, *-route: route, add-host: host, remove-host: id, "
                            + "prepare-swap: id and stack, commit-swap/abort-swap: id and slot, register-vm: registration, deregister-vm: id)"),
                    _ => new ApiResponse(false, Error: $"unknown op '{request.Op}' (status, attach-vm, detach-vm, set-route, remove-route, add-host, remove-host, prepare-swap, commit-swap, abort-swap, register-vm, deregister-vm, rotate-key)"),
                };
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException or IOException or Switching.StackStartException)
            {
                // A stack that cannot start (its factory threw or never returned) is refused like any bad request.
                Log.ApiRefused(_logger, e.Message);
                return new ApiResponse(false, Error: e.Message);
            }
        }
    }

    /// <summary>
    /// Delivers queued hook requests in order; returns how many were applied (refused ones go to rejected/). Only what a
    /// hook queues is replayed — registrations and deregistrations: a file dropped into the spool cannot add hosts,
    /// routes or swaps.
    /// </summary>
    public int ReplaySpool() => Spool?.Replay(json =>
    {
        ApiResponse response;
        try
        {
            var request = AgentConfig.Parse<ApiRequest>(json);
            response = request.Op is "register-vm" or "deregister-vm" ? Handle(request)
                : new ApiResponse(false, Error: $"'{request.Op}' is not replayed from the hook spool (only register-vm and deregister-vm)");
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or FormatException)
        {
            response = new ApiResponse(false, Error: $"unreadable: {e.Message}");
        }
        if (!response.Ok)
        {
            Log.ApiRefused(_logger, $"queued hook request: {response.Error}");
        }
        return response.Ok;
    }) ?? 0;

    /// <summary>Attaches a registered vNIC; the error when its netdev cannot be opened yet.</summary>
    private string? TryAttach(VmConfig vm)
    {
        try
        {
            Attach(vm);
            return null;
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or ArgumentException or FormatException)
        {
            return e.Message;
        }
    }

    private static ApiResponse Do(Action apply)
    {
        apply();
        return new ApiResponse(true);
    }

    private static ApiResponse Checked(IEnumerable<string> problems, Action apply)
    {
        var list = problems.ToList();
        if (list.Count > 0)
        {
            return new ApiResponse(false, Error: string.Join("; ", list));
        }
        apply();
        return new ApiResponse(true);
    }

    private void Attach(VmConfig vm)
    {
        var spec = vm.ToSpec();
        if (Switch.Vms.ContainsKey(spec.VmId))
        {
            throw new InvalidOperationException($"VM '{spec.VmId}' is already attached.");
        }
        var port = _openPort(vm.Device);
        try
        {
            Switch.AttachVm(spec, port);
        }
        catch
        {
            port.Dispose();
            throw;
        }
    }

    private void SetRoute(RouteConfig route)
    {
        MacAddress.TryParse(route.Mac, out var mac);
        if (!Switch.Paths.ContainsKey(route.Host))
        {
            throw new InvalidOperationException($"route for {route.Mac}: host '{route.Host}' is not a known remote host (add-host first).");
        }
        Switch.SetRemoteEndpoint(route.Vni, mac, route.Host, ConfigChecks.V4(route.IPv4), ConfigChecks.V6(route.IPv6), route.Confidential);
    }

    /// <summary>
    /// The VMs on this host as the control plane knows them: each registration (libvirt, CNI) with its policy and the
    /// switch ports of its attached vNICs, and each VM attached directly (config or API) as a VM of one port.
    /// </summary>
    public IReadOnlyList<LocalVm> LocalVms()
    {
        lock (_apiGate)
        {
            var result = new List<LocalVm>();
            var registered = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (registration, ports) in _registrations.Snapshot())
            {
                registered.UnionWith(ports);
                var vni = registration.Interfaces.Select(i => i.Vni).FirstOrDefault(v => v is not null) ?? registration.Policy.Vni;
                result.Add(new LocalVm(registration.Id, registration.Name, vni, [.. registration.Interfaces.Select(i => i.Mac).OfType<string>()], registration.Policy, ports)
                {
                    Vnics = [.. registration.Interfaces.Where(i => i.Mac is not null)
                        .Select(i => new LocalVnic(MacAddress.TryParse(i.Mac, out var mac) ? mac.ToString() : i.Mac!, i.Vni ?? registration.Policy.Vni, i.IPv4 ?? [], i.IPv6 ?? []))],
                });
            }
            foreach (var vm in Switch.Vms.Values.Where(v => !registered.Contains(v.Spec.VmId)))
            {
                result.Add(new LocalVm(vm.Spec.VmId, vm.Spec.VmId, vm.Spec.Vni, [vm.Spec.Mac.ToString()], null, [vm.Spec.VmId])
                {
                    Vnics = [new LocalVnic(vm.Spec.Mac.ToString(), vm.Spec.Vni, [.. vm.Spec.IPv4.Select(a => a.ToString())], [.. vm.Spec.IPv6.Select(a => a.ToString())])],
                });
            }
            return result;
        }
    }

    /// <summary>The control-plane link's state for status (set by the host process when it runs one).</summary>
    public Func<object?>? ControlPlaneStatus { get; set; }

    /// <summary>Rotates the host's key now (the API's rotate-key; set by the host process when it runs a control-plane link).</summary>
    public Func<Task>? RotateHostKey { get; set; }

    /// <summary>
    /// The API's rotate-key: outside the API's lock (the link applies what follows through this API), waiting at most 30 s.
    /// </summary>
    private ApiResponse RotateKey()
    {
        if (RotateHostKey is not { } rotate)
        {
            return new ApiResponse(false, Error: "rotate-key: this agent runs without a control plane: its path keys are its configuration's overlayKey and settings (change them there)");
        }
        try
        {
            return rotate().Wait(TimeSpan.FromSeconds(30)) ? new ApiResponse(true)
                : new ApiResponse(false, Error: "rotate-key: not done within 30 s (the control plane link is busy); it completes on its own");
        }
        catch (AggregateException e) when (e.InnerException is { } inner)
        {
            return new ApiResponse(false, Error: $"rotate-key: {inner.Message}");
        }
    }

    /// <summary>What the agent is doing, with every counter.</summary>
    public object Status() => new
    {
        HostId = Config.HostId,
        ControlPlane = ControlPlaneStatus?.Invoke(),
        Underlay = new
        {
            IPv4 = Switch.UnderlayEndpoints.IPv4?.ToString(),
            IPv6 = Switch.UnderlayEndpoints.IPv6?.ToString(),
            Drops = Switch.UnderlayCounters.DropSnapshot(),
            Offloads = Switch.UnderlayOffloads.Select(o => new
            {
                o.Family,
                SegmentedSends = o.Figures.Sends,
                SegmentedDatagrams = o.Figures.Datagrams,
                CoalescedReceives = o.Figures.Coalesced,
                o.Figures.Truncated,
                SegmentationRefused = o.Figures.SendRefused,
            }),
        },
        Stacks = Switch.StackHost.Entries(),
        Quarantined = Switch.StackHost.Quarantined,
        Withdrawn = Switch.StackHost.Withdrawn,
        Holds = Switch.StackHost.Holds,
        Releases = Switch.StackHost.Releases,
        Repository = _repositoryState,
        Events = Switch.Events,
        UnloadingContexts = Switch.StackHost.UnloadingContexts,
        Vms = Switch.Vms.Values.OrderBy(v => v.Spec.VmId, StringComparer.Ordinal).Select(v => new
        {
            Id = v.Spec.VmId,
            v.Spec.Device,
            v.Spec.Vni,
            Mac = v.Spec.Mac.ToString(),
            FromVm = new { Packets = v.Counters.RxPackets, Bytes = v.Counters.RxBytes },
            ToVm = new { Packets = v.Counters.TxPackets, Bytes = v.Counters.TxBytes },
            Drops = v.Counters.DropSnapshot(),
            Offloads = new
            {
                v.Port.Capabilities.Offloads,
                LargeSegmentsCut = Volatile.Read(ref v.LargeSegmentsCut),
                FramesCut = Volatile.Read(ref v.FramesCut),
                JoinedSends = v.Port is AfPacketPort joined ? joined.JoinedSends : 0,
                JoinedFrames = v.Port is AfPacketPort joinedFrames ? joinedFrames.JoinedFrames : 0,
            },
        }),
        Paths = Switch.Paths.Values.OrderBy(p => p.Spec.HostId, StringComparer.Ordinal).Select(p => new
        {
            Host = p.Spec.HostId,
            Stack = p.TransmitStack,
            StackVersion = p.TransmitKey is { } key ? StackKey.VersionOf(key) : null,
            Slot = p.TransmitSlot,
            // How many keys of the pair verify (more than one while a host key rotates), and whether this end seals under
            // its host's current key; never a key itself.
            Keys = p.KeyState.Keys,
            SealsWithCurrentKey = p.KeyState.SealsWithCurrentKey,
            p.SequenceGaps,
            InnerMtu = Switch.InnerMtu(p),
            Sent = new { Datagrams = p.Counters.TxPackets, Bytes = p.Counters.TxBytes },
            Received = new { Datagrams = p.Counters.RxPackets, Bytes = p.Counters.RxBytes },
            Drops = p.Counters.DropSnapshot(),
            Bindings = p.VmBindingKeys().Select(b => new { Vm = b.Key, Stack = b.Value.Stack is { } key ? StackKey.IdOf(key) : null, Version = b.Value.Stack is { } bound ? StackKey.VersionOf(bound) : null, b.Value.Slot }),
            Slots = p.StackStats().Select(s => new { Slot = s.Key, s.Value.Stack, s.Value.Version, s.Value.Stats.FramesIn, s.Value.Stats.DatagramsOut, s.Value.Stats.DatagramsIn, s.Value.Stats.FramesDelivered, Drops = s.Value.Stats.Drops.ToDictionary(d => d.Key.ToString(), d => d.Value),
                // A plug-in's NaN or infinity would make the whole status fail to serialize.
                Gauges = s.Value.Stats.Gauges.Where(g => double.IsFinite(g.Value)).ToDictionary(g => g.Key, g => g.Value) }),
        }),
        Registrations = _registrations.Status(),
        UnreadableRegistrations = _registrations.Unreadable.Select(u => new { u.File, u.SetAside, u.Reason }),
        Routes = Switch.Table.Endpoints.Where(e => e.RemoteHost is not null).Select(e => new { e.Vni, Mac = e.Mac.ToString(), Host = e.RemoteHost }),
    };

    private volatile bool _disposed;

    public void Dispose()
    {
        _housekeeping?.Dispose();
        _stackRefresh?.Dispose();
        lock (_apiGate)
        {
            _disposed = true;
        }
        lock (_refreshGate)
        {
            // A refresh in progress ends before the switch goes; one that starts later sees _disposed and does nothing.
        }
        Switch.Dispose();
    }
}
