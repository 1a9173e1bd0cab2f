using System.Net;
using Fabric.Agent.Stacks;
using Fabric.Agent.Underlay;
using Fabric.Hal.Linux;
using Fabric.Stacks;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>A remote host as the switch knows it: its id and underlay addresses, and the configuration per stack id its instances on this path get.</summary>
public sealed record RemoteHostSpec(string HostId, IPAddress? UnderlayIPv4, IPAddress? UnderlayIPv6, string Stack)
{
    public IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>>? Settings { get; init; }

    /// <summary>The host pair's overlay key (32 bytes): authenticates probes, probe replies and control messages; null: they go unauthenticated.</summary>
    public byte[]? OverlayKey { get; init; }

    private static readonly IReadOnlyDictionary<string, string> None = new Dictionary<string, string>();

    /// <summary>The configuration instances of <paramref name="stackId"/> get on this path (empty when none is set).</summary>
    public IReadOnlyDictionary<string, string> SettingsOf(string stackId) => Settings?.GetValueOrDefault(stackId) ?? None;
}

/// <summary>
/// The path from this host to one remote host: the stack instances bound to it by slot, the path sequence, and the
/// adapters the stacks write through. All calls into a stack instance hold <see cref="_gate"/>, so the stack sees one
/// thread at a time whichever VM port or underlay thread the packet came from.
/// </summary>
public sealed class RemotePath : IDisposable
{
    private readonly object _gate = new();
    private readonly IStack?[] _slots = new IStack?[256];
    private readonly string?[] _slotStacks = new string?[256];
    private readonly long[] _drainUntil = new long[256];

    /// <summary>When each slot last received a datagram for its instance (or was opened): a peer-opened slot idle long is closed.</summary>
    private readonly long[] _receivedAt = new long[256];
    private readonly ulong[] _openIds = new ulong[256];
    private readonly bool[] _peerOpened = new bool[256];
    private readonly bool[] _slotEncrypts = new bool[256];

    /// <summary>Slots whose instance threw from a timer call: their timers are not run again (the slot is quarantined and drained by the switch).</summary>
    private readonly bool[] _timerFaulted = new bool[256];
    private long _highestSequence = -1;
    private long _firstSequence = -1;
    private long _sequenced;
    private readonly PathOutput _output;
    private readonly PathDelivery _delivery;
    private int _transmitSlot;
    private readonly Dictionary<string, VmTraffic> _vms = new(StringComparer.Ordinal);
    private readonly PathMonitor _monitor = new();

    /// <summary>The slot every path keeps open with the family's std stack, so a path whose stack fails can fall back at once.</summary>
    public const int FallbackSlot = 255;

    private long _inCallSince;
    private volatile int _inCallSlot;

    /// <summary>After how long a call into a stack counts as stuck: from then on no thread waits on this path's gate.</summary>
    internal const long StuckNanoseconds = 200_000_000;

    /// <summary>How long a frame, datagram or probe waits for the gate (held for microseconds, except by a slow or stuck
    /// stack; one seen stuck is not waited for at all). Generous, so a busy machine never drops a healthy path's frames.</summary>
    private const int DataWaitMilliseconds = 250;

    /// <summary>How long an operation (a binding, a slot opened) waits for the gate before it fails naming the stuck path.</summary>
    private const int OperationWaitMilliseconds = 2000;

    /// <summary>Whether a call into a stack on this path has lasted longer than <see cref="StuckNanoseconds"/>.</summary>
    internal bool Stuck => InCallFor(Clock()) > StuckNanoseconds;

    /// <summary>Takes the gate, waiting at most <paramref name="milliseconds"/>, and not at all once the path is stuck.</summary>
    /// <remarks>The free gate is taken without reading the clock: the stuck check costs only a frame that has to wait.</remarks>
    private bool TryTake(int milliseconds) => Monitor.TryEnter(_gate) || Monitor.TryEnter(_gate, Stuck ? 0 : milliseconds);

    /// <summary>Takes the gate for an operation; throws <see cref="PathStuckException"/> rather than wait on a stuck stack.</summary>
    private Hold Take() => TryTake(OperationWaitMilliseconds) ? new Hold(_gate) : throw new PathStuckException(Spec.HostId, InCallFor(Clock()));

    /// <summary>
    /// <see cref="Take"/> for installing a new instance (created outside the gate): when the path is stuck, or was
    /// disposed meanwhile (its host removed or given another path), the instance is discarded before the error goes on.
    /// </summary>
    private Hold TakeFor(IStack instance, string stackId)
    {
        Hold held;
        try
        {
            held = Take();
        }
        catch (PathStuckException)
        {
            Discard(instance, stackId);
            throw;
        }
        if (_disposed)
        {
            held.Dispose();
            Discard(instance, stackId);
            throw new PathClosedException(Spec.HostId);
        }
        return held;
    }

    /// <summary>Set under the gate when the path is disposed: nothing is opened in it after.</summary>
    private bool _disposed;

    /// <summary>The gate, already taken by <see cref="TryTake"/>: released when disposed.</summary>
    private Hold Held() => new(_gate);

    private readonly struct Hold(object gate) : IDisposable
    {
        public void Dispose() => Monitor.Exit(gate);
    }

    /// <summary>The slot whose stack the current (or last) call went into.</summary>
    internal int InCallSlot => _inCallSlot;

    /// <summary>Marks a call into <paramref name="slot"/>'s stack as running (under the gate): one that never returns makes the path <see cref="Stuck"/>.</summary>
    private void Calling(int slot) => Calling(slot, _slotStacks[slot]);

    /// <summary><see cref="Calling(int)"/> for an instance of <paramref name="stackId"/> not yet in its slot.</summary>
    private void Calling(int slot, string? stackId)
    {
        _inCallSlot = slot;
        _inCallStack = stackId;
        Volatile.Write(ref _inCallSince, Clock());
    }

    private volatile string? _inCallStack;

    /// <summary>The stack the current (or last) call went into, read without the gate (for the watchdog).</summary>
    internal string? InCallStack => _inCallStack;

    /// <summary>The call <see cref="Calling(int)"/> marked has returned.</summary>
    private void Returned() => Volatile.Write(ref _inCallSince, 0);

    /// <summary>How long a stack's factory may take to create an instance before the attempt counts as failed.</summary>
    internal static readonly TimeSpan CreateTimeout = TimeSpan.FromSeconds(2);

    /// <summary>How long <see cref="StackStats"/> waits for the stacks' figures before it answers without them.</summary>
    private const int StatsWaitMilliseconds = 1000;

    /// <summary>Disposes the instances this path takes out of their slots (shared by the switch's paths, which watches it).</summary>
    internal StackDisposer Disposer { get; init; } = new();

    private void Discard(IStack instance, string stackId) => Disposer.Discard(instance, stackId);

    /// <summary>Called (outside the path's gate) when a stack instance throws: the path, the slot, the stack id, whether it was transmitting, the exception.</summary>
    internal Action<RemotePath, int, string, bool, Exception>? OnFault { get; set; }

    internal RemotePath(RemoteHostSpec spec, UdpPeer destination, IUnderlay underlay, Func<string, uint, bool, ReadOnlySpan<byte>, string?> deliver, Func<long> clock, string localHost)
    {
        Spec = spec;
        Destination = destination;
        Clock = clock;
        _output = new PathOutput(this, underlay);
        _delivery = new PathDelivery(this, deliver);
        _authenticator = spec.OverlayKey is { } key ? new OverlayAuthenticator(key, localHost, spec.HostId) : null;
        // Slots for stacks the control plane binds are split between the two ends so that neither ever picks one the
        // other opened: the host whose id sorts first opens 1..127 on this path, the other 128..254.
        (_ownFirst, _ownLast) = string.CompareOrdinal(localHost, spec.HostId) < 0 ? (1, 127) : (128, 254);
    }

    private readonly int _ownFirst;
    private readonly int _ownLast;
    private readonly OverlayAuthenticator? _authenticator;

    /// <summary>The stack the path was last deliberately committed to encrypts: VMs without a binding of their own never leave through one that does not.</summary>
    private bool _sealedPath;

    /// <summary>Whether the path's own stack encrypts, so frames of VMs without a binding never leave in clear on it.</summary>
    internal bool SealedPath
    {
        get => Volatile.Read(ref _sealedPath);
        set => Volatile.Write(ref _sealedPath, value);
    }

    /// <summary>True when this path's probes, probe replies and control messages are authenticated (the host pair has an overlay key).</summary>
    public bool Authenticated => _authenticator is not null;

    /// <summary>Called (outside the path's gate) with the payload of an agent control message from the peer.</summary>
    internal Action<RemotePath, byte[]>? OnControl { get; set; }

    /// <summary>True when <paramref name="slot"/> is one this host opens on this path (for the control plane's bindings).</summary>
    internal bool IsOwnSlot(int slot) => slot >= _ownFirst && slot <= _ownLast;

    /// <summary>True when <paramref name="slot"/> is one the peer opens on this path (this end opens it when asked).</summary>
    internal bool IsPeerSlot(int slot) => slot is > 0 and < FallbackSlot && !IsOwnSlot(slot);

    /// <summary>A slot of this host's range that holds <paramref name="stackId"/>, or -1.</summary>
    internal int OwnSlotOf(string stackId)
    {
        using (Take())
        {
            for (var i = _ownFirst; i <= _ownLast; i++)
            {
                if (_slotStacks[i] == stackId)
                {
                    return i;
                }
            }
            return -1;
        }
    }

    /// <summary>An empty slot of this host's range, or -1.</summary>
    internal int FreeOwnSlot()
    {
        using (Take())
        {
            for (var i = _ownFirst; i <= _ownLast; i++)
            {
                if (_slots[i] is null)
                {
                    return i;
                }
            }
            return -1;
        }
    }

    /// <summary>
    /// Binds a VM's transmissions on this path to <paramref name="slot"/> (-1: the path's transmit slot) from its next
    /// frame on. A slot no VM and not the path uses any more drains until <paramref name="drainUntil"/>. Returns the
    /// VM's previous slot.
    /// </summary>
    internal int BindVm(string vmId, int slot, long drainUntil)
    {
        using (Take())
        {
            if (slot >= 0 && _slots[slot] is null)
            {
                throw new InvalidOperationException($"Path to '{Spec.HostId}': slot {slot} is not open.");
            }
            if (!_vms.TryGetValue(vmId, out var traffic))
            {
                _vms[vmId] = traffic = new VmTraffic();
            }
            var previous = traffic.Slot;
            traffic.Slot = slot;
            if (slot >= 0)
            {
                _drainUntil[slot] = 0;
            }
            if (previous >= 0 && previous != slot && !InUseLocked(previous))
            {
                _drainUntil[previous] = drainUntil;
            }
            return previous;
        }
    }

    /// <summary>The slot a VM's binding names and the stack in it; (-1, null) when it has none (or the slot was retired).</summary>
    internal (int Slot, string? Stack) BindingOf(string vmId)
    {
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(100)))
        {
            throw new InvalidOperationException($"Path to '{Spec.HostId}' is busy (a stack call has not returned).");
        }
        try
        {
            return _vms.TryGetValue(vmId, out var traffic) && traffic.Slot >= 0 && _slots[traffic.Slot] is not null ? (traffic.Slot, _slotStacks[traffic.Slot]) : (-1, null);
        }
        finally
        {
            Monitor.Exit(_gate);
        }
    }

    /// <summary>Forgets a VM that left the host; its slot drains when nothing else uses it.</summary>
    internal void ForgetVm(string vmId, long drainUntil)
    {
        using (Take())
        {
            if (_vms.Remove(vmId, out var traffic) && traffic.Slot >= 0 && !InUseLocked(traffic.Slot))
            {
                _drainUntil[traffic.Slot] = drainUntil;
            }
        }
    }

    /// <summary>Moves every VM bound to a slot holding <paramref name="stackId"/> to <paramref name="slot"/> (fallback after a fault).</summary>
    internal int RebindStack(string stackId, int slot) => Rebind(from => _slotStacks[from] == stackId, slot);

    /// <summary>Moves every VM bound to <paramref name="from"/> to <paramref name="to"/>; returns how many moved.</summary>
    internal int RebindSlot(int from, int to) => Rebind(bound => bound == from, to);

    private int Rebind(Func<int, bool> moves, int to)
    {
        using (Take())
        {
            var moved = 0;
            foreach (var traffic in _vms.Values)
            {
                if (traffic.Slot >= 0 && moves(traffic.Slot))
                {
                    traffic.Slot = to;
                    moved++;
                }
            }
            return moved;
        }
    }

    /// <summary>Marks every slot holding <paramref name="stackId"/> to drain until <paramref name="drainUntil"/> (those not draining
    /// already); housekeeping closes each once nothing transmits on it. Returns how many were marked.</summary>
    internal int DrainStack(string stackId, long drainUntil)
    {
        using (Take())
        {
            var marked = 0;
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is not null && _slotStacks[i] == stackId && _drainUntil[i] == 0)
                {
                    _drainUntil[i] = drainUntil;
                    marked++;
                }
            }
            return marked;
        }
    }

    /// <summary>The stack each VM that used this path transmits with (its binding's, or the path's).</summary>
    /// <remarks>Empty when the path is busy for more than 100 ms (a stack stuck in a call must not stall status or the control plane).</remarks>
    public IReadOnlyDictionary<string, (string? Stack, int Slot)> VmBindings()
    {
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(100)))
        {
            return new Dictionary<string, (string?, int)>();
        }
        try
        {
            return _vms.ToDictionary(v => v.Key, v => (v.Value.Slot >= 0 && _slots[v.Value.Slot] is not null ? _slotStacks[v.Value.Slot] : _slotStacks[_transmitSlot],
                v.Value.Slot >= 0 && _slots[v.Value.Slot] is not null ? v.Value.Slot : _transmitSlot), StringComparer.Ordinal);
        }
        finally
        {
            Monitor.Exit(_gate);
        }
    }

    private bool InUseLocked(int slot)
    {
        if (slot == _transmitSlot)
        {
            return true;
        }
        foreach (var traffic in _vms.Values)
        {
            if (traffic.Slot == slot)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// Opens (or reopens) a slot of the peer's range at the peer's request; returns the stack id it replaced, or null.
    /// A repeated request for the instance already there (same stack, same <paramref name="openId"/>) changes nothing,
    /// nor does a request for a slot this end opened itself with the same stack (a path-level swap both ends prepare:
    /// the instance is adopted as the one the peer asked for). A request with another open id for a slot the peer had
    /// opened is the peer's new instance (it restarted or reopened the slot), so the old instance here, whose sequence
    /// numbers and session belong to the peer's old one, is replaced too.
    /// </summary>
    internal string? OpenForPeer(LoadedStack stack, int slot, string localHost, ulong openId, out bool unchanged)
    {
        if (UnchangedOpen(stack.Description.Id, slot, openId))
        {
            unchanged = true;
            return null;
        }
        // The new instance first, outside the gate (a factory may take a while, and the frames of the path's other slots
        // do not wait for it): a stack that fails to start leaves the slot as it was.
        var instance = CreateInstance(stack, localHost);
        using (TakeFor(instance, stack.Description.Id))
        {
            unchanged = UnchangedLocked(stack.Description.Id, slot, openId);
            if (unchanged)
            {
                // The same open was applied meanwhile (a repeated request another receive thread handled), or this end
                // opened the slot with the same stack: as above, nothing else changes.
                Discard(instance, stack.Description.Id);
                return null;
            }
            ArmedNew(instance, slot, stack.Description.Id);
            var replaced = _slots[slot] is null ? null : CloseLocked(slot);
            _slots[slot] = instance;
            _slotStacks[slot] = stack.Description.Id;
            _slotEncrypts[slot] = stack.Description.Encrypts;
            (_openIds[slot], _peerOpened[slot]) = (openId, true);
            _receivedAt[slot] = Clock();
            return replaced;
        }
    }

    /// <summary>Whether an open request asks for the instance already in <paramref name="slot"/> (then it is refreshed, nothing else).</summary>
    private bool UnchangedOpen(string stackId, int slot, ulong openId)
    {
        using (Take())
        {
            _receivedAt[slot] = Clock();
            return UnchangedLocked(stackId, slot, openId);
        }
    }

    /// <summary>See <see cref="UnchangedOpen"/>; under the gate.</summary>
    private bool UnchangedLocked(string stackId, int slot, ulong openId)
    {
        if (_slotStacks[slot] != stackId || (_openIds[slot] != openId && _peerOpened[slot]))
        {
            return false;
        }
        _drainUntil[slot] = 0;
        (_openIds[slot], _peerOpened[slot]) = (openId, true);
        return true;
    }

    /// <summary>
    /// Before a new instance goes into <paramref name="slot"/> (under the gate): passes on its first timer, as a watched
    /// call. What it throws is the stack's start failing: the instance is discarded and the slot left as it was.
    /// </summary>
    private void ArmedNew(IStack instance, int slot, string stackId)
    {
        Calling(slot, stackId);
        try
        {
            Armed(instance);
        }
        catch (Exception e)
        {
            Discard(instance, stackId);
            throw new StackStartException(stackId, Spec.HostId, e);
        }
        finally
        {
            Returned();
        }
    }

    /// <summary>
    /// A new instance of <paramref name="stack"/> for this path; what its factory throws comes back as a
    /// <see cref="StackStartException"/>, and so does a factory that returns nothing or has not returned within
    /// <see cref="CreateTimeout"/>. It runs on a thread of its own (instances are created when a slot opens, seldom), so a
    /// factory that never returns costs that thread, not the caller's, and no busy thread pool makes a healthy one late;
    /// an instance a factory returns after the caller gave up is disposed.
    /// </summary>
    private IStack CreateInstance(LoadedStack stack, string localHost)
    {
        var id = stack.Description.Id;
        var creation = new Creation(stack.Factory, new StackContext(localHost, Spec.HostId, Spec.SettingsOf(id), new PathTelemetry(this, id)), Disposer, id);
        var thread = new Thread(creation.Run) { IsBackground = true, Name = $"stack-create {id}" };
        thread.Start();
        if (!thread.Join(CreateTimeout))
        {
            creation.Abandon();
            throw new StackStartException(id, Spec.HostId, new TimeoutException($"its factory did not create an instance within {CreateTimeout.TotalSeconds:0.#} s"));
        }
        return creation.Failed is { } failed ? throw new StackStartException(id, Spec.HostId, failed)
            : creation.Created ?? throw new StackStartException(id, Spec.HostId, new InvalidOperationException("its factory returned no instance"));
    }

    /// <summary>One call of a factory, on its own thread; an instance that comes after <see cref="Abandon"/> is disposed.</summary>
    private sealed class Creation(IStackFactory factory, StackContext context, StackDisposer disposer, string stackId)
    {
        private readonly object _gate = new();
        private bool _abandoned;

        public IStack? Created { get; private set; }

        public Exception? Failed { get; private set; }

        public void Run()
        {
            IStack? created = null;
            try
            {
                created = factory.Create(context);
            }
            catch (Exception e)
            {
                Failed = e;
            }
            lock (_gate)
            {
                if (_abandoned)
                {
                    if (created is not null)
                    {
                        disposer.Discard(created, stackId);
                    }
                    return;
                }
                Created = created;
            }
        }

        public void Abandon()
        {
            lock (_gate)
            {
                _abandoned = true;
                if (Created is { } late)
                {
                    // Returned between the timeout and now: the caller has given up on it.
                    Created = null;
                    disposer.Discard(late, stackId);
                }
            }
        }
    }

    /// <summary>The id of the instance this host opened in one of its own slots (sent with every open request for it).</summary>
    internal ulong OpenIdOf(int slot)
    {
        using (Take())
        {
            return _openIds[slot];
        }
    }

    /// <summary>Sends an agent control message to the peer (the caller flushes the underlay).</summary>
    internal void SendControl(ReadOnlySpan<byte> message)
    {
        if (!TryTake(DataWaitMilliseconds))
        {
            Counters.Drop(DropReason.PathStuck);
            return;
        }
        using (Held())
        {
            SendControlLocked(message);
        }
    }

    /// <summary>Sends one active probe (the caller flushes the underlay).</summary>
    internal void SendProbe()
    {
        if (!TryTake(DataWaitMilliseconds))
        {
            return;
        }
        using (Held())
        {
            _output.Prepare(0, 0);
            var buffer = _output.Begin(PathMonitor.ProbeLength);
            if (buffer.Length < PathMonitor.ProbeLength)
            {
                return;
            }
            _monitor.WriteProbe(buffer, Clock());
            _output.Commit(FabricPayloadType.Probe, 0, PathMonitor.ProbeLength);
            // A capacity train when one is due (see PathMonitor), back to back in the same flush.
            var members = _monitor.TrainDue(Clock());
            for (var i = 0; i < members; i++)
            {
                var length = PathMonitor.TrainMemberLengthOf(i);
                _output.Prepare(0, 0);
                buffer = _output.Begin(length);
                if (buffer.Length < length)
                {
                    return;
                }
                _monitor.WriteTrainMember(buffer, i, members);
                _output.Commit(FabricPayloadType.ProbeTrain, 0, length);
            }
        }
    }

    /// <summary>Told when a stack's next timer may have come closer (the switch's monitor sleeps until the next timer is due).</summary>
    internal Action<long>? TimerArmed { get; init; }

    /// <summary>After a call into a stack (under the gate): passes on when its timer is next due, if it has one.</summary>
    private void Armed(IStack stack)
    {
        var at = stack.NextTimerNanoseconds;
        if (at != long.MaxValue)
        {
            TimerArmed?.Invoke(at);
        }
    }

    /// <summary>When the earliest stack timer on this path is due (<see cref="long.MaxValue"/>: none); soon when a stack holds the gate.</summary>
    internal long NextTimer(long now)
    {
        if (!Monitor.TryEnter(_gate))
        {
            // A call is running: look again in a millisecond, as the monitor always did.
            return now + 1_000_000;
        }
        Exception? fault = null;
        var faultSlot = 0;
        string? faultStack = null;
        var next = long.MaxValue;
        try
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is { } stack && !_timerFaulted[i])
                {
                    Calling(i);
                    try
                    {
                        next = Math.Min(next, stack.NextTimerNanoseconds);
                    }
                    catch (Exception e)
                    {
                        // The stack's fault, as in RunTimers: a stack may throw once and not again, so the next round
                        // cannot be trusted to meet it (a CI run lost the fault that way).
                        _timerFaulted[i] = true;
                        if (fault is null)
                        {
                            (fault, faultSlot, faultStack) = (e, i, _slotStacks[i]);
                        }
                    }
                    finally
                    {
                        Returned();
                    }
                }
            }
        }
        finally
        {
            Monitor.Exit(_gate);
        }
        ReportTimerFault(fault, faultSlot, faultStack);
        return next;
    }

    private void ReportTimerFault(Exception? fault, int slot, string? stack)
    {
        if (fault is not null)
        {
            Counters.Drop(DropReason.StackFault);
            OnFault?.Invoke(this, slot, stack!, true, fault);
        }
    }

    /// <summary>Runs the timers of stack instances whose time has come (the caller flushes the underlay and the VM outboxes).</summary>
    internal void RunTimers(long now)
    {
        Exception? fault = null;
        var faultSlot = 0;
        string? faultStack = null;
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(5)))
        {
            return;
        }
        try
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is not { } stack || _timerFaulted[i])
                {
                    continue;
                }
                // Reading when the timer is due is a call into the stack like any other: watched, and what it throws is the
                // stack's fault (it would throw at every round, and the paths after this one would wait for ever).
                _output.Prepare((byte)i, 0);
                _delivery.VirtualNetwork = 0;
                Calling(i);
                try
                {
                    if (stack.NextTimerNanoseconds <= now)
                    {
                        stack.OnTimer(now, _delivery, _output);
                    }
                }
                catch (Exception e)
                {
                    // Its timers are not run again (it would throw at every round): reported once, the others go on.
                    _timerFaulted[i] = true;
                    if (fault is null)
                    {
                        (fault, faultSlot, faultStack) = (e, i, _slotStacks[i]);
                    }
                }
                Returned();
            }
        }
        finally
        {
            Monitor.Exit(_gate);
        }
        ReportTimerFault(fault, faultSlot, faultStack);
    }

    /// <summary>What the path measured since the last call (probes, the peer's sequence counts, traffic per VM).</summary>
    internal PathMeasurement? TakeMeasurement(long now)
    {
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(50)))
        {
            return null;
        }
        try
        {
            var vms = new List<VmInterval>(_vms.Count);
            foreach (var (vmId, traffic) in _vms)
            {
                var slot = traffic.Slot >= 0 && _slots[traffic.Slot] is not null ? traffic.Slot : _transmitSlot;
                vms.Add(new VmInterval(vmId, _slotStacks[slot] ?? "", traffic.Frames - traffic.ReportedFrames, traffic.Bytes - traffic.ReportedBytes, traffic.Tcp.Take(now, _slotStacks[slot])));
                (traffic.ReportedFrames, traffic.ReportedBytes) = (traffic.Frames, traffic.Bytes);
            }
            return _monitor.Take(now, Counters.TxBytes, vms);
        }
        finally
        {
            Monitor.Exit(_gate);
        }
    }

    public RemoteHostSpec Spec { get; }

    /// <summary>The remote host's underlay socket address for the family of the bound stack.</summary>
    public UdpPeer Destination { get; }

    /// <summary>Rx = datagrams from the remote host; Tx = datagrams sent to it.</summary>
    public TrafficCounters Counters { get; } = new();

    internal Func<long> Clock { get; }

    /// <summary>The id of the stack that transmits on this path.</summary>
    /// <remarks>Read without the gate, so status and metrics never wait on a path whose stack is stuck in a call.</remarks>
    public string? TransmitStack => Volatile.Read(ref _slotStacks[Volatile.Read(ref _transmitSlot)]);

    /// <summary>The slot transmissions use.</summary>
    public int TransmitSlot => Volatile.Read(ref _transmitSlot);

    /// <summary>
    /// Opens <paramref name="slot"/> with a new instance of <paramref name="stack"/>: it receives at once, transmits
    /// after <see cref="Commit"/>. With <paramref name="adoptPeerOpened"/> (a path-level swap both ends prepare), a slot
    /// the peer already had this end open with the same stack (its instance spoke first) is adopted instead: returns
    /// false and the new instance is discarded. The check is made under the gate, after the (slow) instance creation,
    /// because the peer's open can arrive on the underlay thread in between.
    /// </summary>
    internal bool Open(LoadedStack stack, int slot, string localHost, bool adoptPeerOpened = false)
    {
        var instance = CreateInstance(stack, localHost);
        using (TakeFor(instance, stack.Description.Id))
        {
            if (adoptPeerOpened && _peerOpened[slot] && _drainUntil[slot] == 0 && slot != _transmitSlot && _slotStacks[slot] == stack.Description.Id)
            {
                // Adopted for a swap about to commit: fresh, so the idle expiry does not take it meanwhile.
                _receivedAt[slot] = Clock();
                Discard(instance, stack.Description.Id);
                return false;
            }
            if (_slots[slot] is not null)
            {
                Discard(instance, stack.Description.Id);
                throw new InvalidOperationException($"Path to '{Spec.HostId}': slot {slot} is in use by {_slotStacks[slot]}.");
            }
            ArmedNew(instance, slot, stack.Description.Id);
            _slots[slot] = instance;
            _slotStacks[slot] = stack.Description.Id;
            _slotEncrypts[slot] = stack.Description.Encrypts;
            _drainUntil[slot] = 0;
            (_openIds[slot], _peerOpened[slot]) = ((ulong)Random.Shared.NextInt64(1, long.MaxValue), false);
            return true;
        }
    }

    /// <summary>
    /// Moves transmission to <paramref name="slot"/> atomically (the next packet uses it). The previous slot keeps
    /// receiving until <paramref name="drainUntil"/>, then <see cref="TakeDrained"/> hands it back for release.
    /// Returns the previous slot. A <paramref name="fallback"/> (the path's stack failed) keeps what the path promised:
    /// if its stack encrypted, frames that would now leave unencrypted are dropped instead.
    /// </summary>
    internal int Commit(int slot, long drainUntil, bool fallback = false)
    {
        using (Take())
        {
            if (_slots[slot] is null)
            {
                throw new InvalidOperationException($"Path to '{Spec.HostId}': slot {slot} was not prepared.");
            }
            if (!fallback)
            {
                _sealedPath = _slotEncrypts[slot];
            }
            var previous = _transmitSlot;
            if (previous != slot)
            {
                _drainUntil[previous] = drainUntil;
                Volatile.Write(ref _transmitSlot, slot);
            }
            return previous;
        }
    }

    /// <summary>Closes a slot that is not transmitting (an aborted prepare); returns its stack id, or null when the slot was empty.</summary>
    internal string? Close(int slot)
    {
        using (Take())
        {
            if (slot == _transmitSlot || _slots[slot] is null)
            {
                return null;
            }
            return CloseLocked(slot);
        }
    }

    /// <summary>
    /// Closes every drained slot whose time has come, and every slot the peer opened that has received nothing for
    /// <paramref name="peerIdle"/> nanoseconds and that this end does not send on (the peer's VM fell silent, or the
    /// peer went away without closing it: its memory and instance are not held for ever; if the peer sends on it again,
    /// this end asks it to open the slot anew). Returns their slots, stack ids (for the stack host to release) and which
    /// were idle.
    /// </summary>
    internal List<(int Slot, string Stack, bool Idle)> TakeDrained(long now, long peerIdle)
    {
        var released = new List<(int, string, bool)>();
        // Housekeeping must not wait on a path whose stack is stuck: try again next round.
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(50)))
        {
            return released;
        }
        try
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is not null && _drainUntil[i] != 0 && _drainUntil[i] <= now && !InUseLocked(i))
                {
                    released.Add((i, CloseLocked(i), false));
                }
                else if (_slots[i] is not null && _peerOpened[i] && _drainUntil[i] == 0 && now - _receivedAt[i] > peerIdle && !InUseLocked(i))
                {
                    released.Add((i, CloseLocked(i), true));
                }
            }
        }
        finally
        {
            Monitor.Exit(_gate);
        }
        return released;
    }

    private string CloseLocked(int slot)
    {
        var id = _slotStacks[slot]!;
        Discard(_slots[slot]!, id);
        _slots[slot] = null;
        _timerFaulted[slot] = false;
        Volatile.Write(ref _slotStacks[slot], null);
        _drainUntil[slot] = 0;
        (_openIds[slot], _peerOpened[slot]) = (0, false);
        _slotEncrypts[slot] = false;
        return id;
    }

    /// <summary>A slot no instance occupies, other than 0 when possible; -1 when all 256 are taken.</summary>
    internal int FreeSlot()
    {
        using (Take())
        {
            for (var i = 1; i < _slots.Length; i++)
            {
                var candidate = (_transmitSlot + i) % _slots.Length;
                if (_slots[candidate] is null && candidate != FallbackSlot)
                {
                    return candidate;
                }
            }
            return -1;
        }
    }

    /// <summary>The stack ids of every occupied slot (for release when the path goes away).</summary>
    internal List<string> BoundStacks()
    {
        using (Take())
        {
            return [.. _slotStacks.OfType<string>()];
        }
    }

    /// <summary>Path sequence numbers missing so far (from the Fabric header): loss on the path, whatever the stack.</summary>
    /// <remarks>Read without the gate (the three counters are written under it; a read between two writes is off by one at most).</remarks>
    public long SequenceGaps
    {
        get
        {
            var first = Volatile.Read(ref _firstSequence);
            return first < 0 ? 0 : (Volatile.Read(ref _highestSequence) - first + 1) - Volatile.Read(ref _sequenced);
        }
    }

    /// <summary>Stats of each bound stack instance by slot.</summary>
    /// <remarks>
    /// Empty when the path is busy for more than 100 ms or its stacks have not answered within 1 s: a stack stuck in
    /// a call, GetStats included, must not stall status or metrics. The stacks are asked on a thread of their own, so one
    /// whose GetStats never returns holds that thread (and marks the path stuck, for the watchdog), not the caller.
    /// </remarks>
    public IReadOnlyDictionary<int, (string Stack, StackStats Stats)> StackStats()
    {
        // A thread of its own, not the pool's: a pool short of threads (some held by stacks stuck in calls) would make
        // every answer late and empty.
        Dictionary<int, (string Stack, StackStats Stats)>? collected = null;
        var asking = new Thread(() => collected = CollectStats()) { IsBackground = true, Name = "stack-stats" };
        asking.Start();
        return asking.Join(StatsWaitMilliseconds) ? collected! : new Dictionary<int, (string, StackStats)>();
    }

    private Dictionary<int, (string Stack, StackStats Stats)> CollectStats()
    {
        var result = new Dictionary<int, (string, StackStats)>();
        if (!Monitor.TryEnter(_gate, TimeSpan.FromMilliseconds(100)))
        {
            return result;
        }
        try
        {
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is { } stack)
                {
                    Calling(i);
                    try
                    {
                        result[i] = (_slotStacks[i]!, stack.GetStats());
                    }
                    finally
                    {
                        Returned();
                    }
                }
            }
            return result;
        }
        finally
        {
            Monitor.Exit(_gate);
        }
    }

    /// <summary>
    /// Sends a VM frame of virtual network <paramref name="vni"/> through the stack the VM is bound to on this path, or
    /// the path's transmit slot when it has no binding (or its binding's slot was retired). A frame that must be
    /// encrypted (<paramref name="sealedVm"/>, or the path's own stack encrypts and the VM has no binding of its own)
    /// goes only through a stack that encrypts: when the slot it would take does not (a quarantined secure fell back to
    /// std), it is dropped and counted, never sent in the clear.
    /// </summary>
    /// <returns>0 when handed to the stack or dropped; else the largest inner IP packet the VM's stack carries, which the frame exceeds (nothing was sent).</returns>
    /// <param name="frame">The VM's frame.</param>
    /// <param name="vni">Its virtual network.</param>
    /// <param name="vmId">The VM that sent it (its binding's slot carries it), or null for the path's transmit slot.</param>
    /// <param name="sealedVm">The sender is confidential: the frame leaves only through a slot that encrypts.</param>
    /// <param name="sealedDestination">The destination is confidential: the frame leaves only through a slot that
    /// encrypts — the sender's own if it does, else one the path has (<see cref="EncryptingSlot"/>); with none, it is
    /// dropped and <see cref="OnNeedEncryptingSlot"/> asks the switch to open one.</param>
    /// <param name="preferEncrypted">A broadcast reaching a confidential VM there too: through a slot that encrypts if
    /// the path has one, else as any other frame (the confidential VM drops it, the others take it).</param>
    internal int Transmit(ReadOnlySpan<byte> frame, uint vni, string? vmId = null, bool sealedVm = false, bool sealedDestination = false, bool preferEncrypted = false)
    {
        Exception? fault = null;
        int slot;
        string? stackId;
        if (!TryTake(DataWaitMilliseconds))
        {
            // A stack stuck in a call holds the gate: this frame is dropped (counted), the thread never waits on it.
            Counters.Drop(DropReason.PathStuck);
            return 0;
        }
        using (Held())
        {
            slot = _transmitSlot;
            if (vmId is not null)
            {
                if (!_vms.TryGetValue(vmId, out var traffic))
                {
                    _vms[vmId] = traffic = new VmTraffic();
                }
                traffic.Frames++;
                traffic.Bytes += frame.Length;
                traffic.Tcp.OnEgress(frame, Clock());
                if (traffic.Slot >= 0 && _slots[traffic.Slot] is not null)
                {
                    slot = traffic.Slot;
                }
            }
            stackId = _slotStacks[slot];
            var stack = _slots[slot];
            if (stack is null)
            {
                Counters.Drop(DropReason.NoPath);
                return 0;
            }
            if ((sealedDestination || preferEncrypted) && !_slotEncrypts[slot])
            {
                if (EncryptingSlot() is { } encrypting)
                {
                    // A frame to a confidential VM goes through a slot that encrypts (one this end opened, else the one the
                    // confidential VM's host opened for its traffic here). Borrowed, the slot counts as in use: a slot
                    // the peer opened is not closed as idle while frames go out through it.
                    (slot, stackId, stack) = (encrypting, _slotStacks[encrypting], _slots[encrypting]!);
                    _receivedAt[slot] = Clock();
                }
                else if (sealedDestination && _monitor.EncryptingSlotRequests.ShouldReport(Clock()))
                {
                    OnNeedEncryptingSlot?.Invoke(this);
                }
            }
            if ((sealedVm || sealedDestination || (slot == _transmitSlot && _sealedPath)) && !_slotEncrypts[slot])
            {
                Counters.Drop(DropReason.NotEncrypted);
                if (vmId is not null && _monitor.UnencryptedReports.ShouldReport(Clock()))
                {
                    OnStackEvent?.Invoke(stackId!, "not-encrypted", sealedVm
                        ? $"{vmId} must be encrypted but its frames would leave through {stackId}, which does not encrypt: dropped"
                        : $"{vmId}'s frames to a confidential VM on {Spec.HostId} would leave through {stackId}, which does not encrypt, and no slot of the path encrypts: dropped");
                }
                return 0;
            }
            // The MTU is the stack's this VM sends with: stacks differ in what they add to a frame.
            var mtu = InnerMtu(stackId!);
            if (frame.Length - 14 > mtu)
            {
                return mtu;
            }
            _output.Prepare((byte)slot, vni);
            Calling(slot);
            try
            {
                stack.Transmit(frame, Clock(), _output);
                Armed(stack);
            }
            catch (Exception e)
            {
                // A stack must count per-packet failures, not throw: this one is broken and will be quarantined.
                fault = e;
            }
            Returned();
        }
        if (fault is not null)
        {
            Counters.Drop(DropReason.StackFault);
            OnFault?.Invoke(this, slot, stackId!, true, fault);
        }
        return 0;
    }

    /// <summary>
    /// A slot open on this path whose stack encrypts, is neither draining nor faulted, and whose stack the switch may
    /// still use (<see cref="Usable"/>: not quarantined or withdrawn); one this end opened before one the peer opened.
    /// Null when none. Under the gate.
    /// </summary>
    private int? EncryptingSlot()
    {
        int? peers = null;
        for (var slot = 0; slot < _slots.Length; slot++)
        {
            if (_slotEncrypts[slot] && _slots[slot] is not null && _drainUntil[slot] == 0 && !_timerFaulted[slot] && Usable(_slotStacks[slot]!))
            {
                if (!_peerOpened[slot])
                {
                    return slot;
                }
                peers ??= slot;
            }
        }
        return peers;
    }

    /// <summary>Whether a stack may carry frames it was not bound to (set by the switch: not quarantined or withdrawn).</summary>
    internal Func<string, bool> Usable { get; init; } = _ => true;

    /// <summary>Called (under the gate, at most once a second) when a frame to a confidential VM found no slot that encrypts: the switch opens one.</summary>
    internal Action<RemotePath>? OnNeedEncryptingSlot { get; init; }

    /// <summary>The largest inner IP packet a stack carries on this path (set by the switch).</summary>
    internal Func<string, int> InnerMtu { get; init; } = _ => int.MaxValue;

    /// <summary>How long the current call into a stack has lasted, in nanoseconds (0 when none is running).</summary>
    internal long InCallFor(long now)
    {
        var since = Volatile.Read(ref _inCallSince);
        return since == 0 ? 0 : now - since;
    }

    /// <summary>The stack id in <paramref name="slot"/>, or null.</summary>
    internal string? StackIn(int slot) => Volatile.Read(ref _slotStacks[slot]);

    /// <summary>Retires a faulted instance at once (its slot then drops what arrives for it); returns its stack id.</summary>
    internal string? Retire(int slot)
    {
        using (Take())
        {
            return _slots[slot] is null ? null : CloseLocked(slot);
        }
    }

    /// <summary>Hands a datagram from this host to the stack in its slot.</summary>
    internal void Receive(ReadOnlySpan<byte> datagram)
    {
        if (!FabricHeader.TryCreate(datagram, out var header))
        {
            Counters.Drop(DropReason.UnknownPeer);
            return;
        }
        Exception? fault = null;
        string? faultStack = null;
        byte[]? control = null;
        if (!TryTake(DataWaitMilliseconds))
        {
            Counters.Drop(DropReason.PathStuck);
            return;
        }
        using (Held())
        {
            var agents = header.PayloadType is FabricPayloadType.Probe or FabricPayloadType.ProbeReply or FabricPayloadType.ProbeTrain or FabricPayloadType.AgentControl;
            var payload = header.Payload;
            if (agents && _authenticator is not null)
            {
                // The agents' own datagrams must carry the peer's tag, and a control message a boot id and counter newer
                // than any taken: a forgery or a replay neither opens, closes nor measures anything.
                if (!_authenticator.Verify(datagram) || (header.PayloadType == FabricPayloadType.AgentControl
                    && (payload.Length < OverlayAuthenticator.TagLength + OverlayAuthenticator.FreshnessLength
                        || !_authenticator.TakeFreshness(payload[^(OverlayAuthenticator.TagLength + OverlayAuthenticator.FreshnessLength)..^OverlayAuthenticator.TagLength]))))
                {
                    Counters.Drop(DropReason.Unauthenticated);
                    return;
                }
                payload = payload[..^(header.PayloadType == FabricPayloadType.AgentControl
                    ? OverlayAuthenticator.TagLength + OverlayAuthenticator.FreshnessLength : OverlayAuthenticator.TagLength)];
            }
            TrackSequence(header.PathSequence);
            switch (header.PayloadType)
            {
                case FabricPayloadType.Probe:
                    AnswerProbe(payload);
                    return;
                case FabricPayloadType.ProbeReply:
                    _monitor.OnReply(payload, Clock());
                    return;
                case FabricPayloadType.ProbeTrain:
                    if (!_monitor.OnTrainMember(payload, datagram.Length, Clock()))
                    {
                        Counters.Drop(DropReason.Malformed);
                    }
                    return;
                case FabricPayloadType.AgentControl:
                    // Handled by the switch, outside the gate (it may open a slot on this path).
                    control = payload.ToArray();
                    break;
                default:
                    // The path's traffic counters count what stacks exchange; probes and control messages are the agents'.
                    Counters.Received(datagram.Length);
                    break;
            }
            var stack = _slots[header.Slot];
            if (control is null && stack is null)
            {
                Counters.Drop(DropReason.UnknownSlot);
                if (IsPeerSlot(header.Slot) && _monitor.UnknownReports.ShouldReport(Clock()))
                {
                    // The peer sends through a slot this end does not have (this agent restarted, or missed the
                    // peer's open): ask it to open the slot here again.
                    SendControlLocked([ControlMessages.Unknown, header.Slot]);
                }
                return;
            }
            if (control is null && stack is not null)
            {
                _output.Prepare(header.Slot, header.VirtualNetworkId);
                _delivery.VirtualNetwork = header.VirtualNetworkId;
                _inCallSlot = header.Slot;
                _inCallStack = _slotStacks[header.Slot];
                var now = Clock();
                _receivedAt[header.Slot] = now;
                Volatile.Write(ref _inCallSince, now);
                try
                {
                    stack.Receive(new StackDatagram(header.ToRepr(), header.StackFields, header.Payload), Clock(), _delivery, _output);
                    Armed(stack);
                }
                catch (Exception e)
                {
                    fault = e;
                    faultStack = _slotStacks[header.Slot];
                }
                Volatile.Write(ref _inCallSince, 0);
            }
        }
        if (control is not null)
        {
            OnControl?.Invoke(this, control);
        }
        if (fault is not null)
        {
            Counters.Drop(DropReason.StackFault);
            OnFault?.Invoke(this, header.Slot, faultStack!, false, fault);
        }
    }

    private void AnswerProbe(ReadOnlySpan<byte> probe)
    {
        if (probe.Length != PathMonitor.ProbeLength)
        {
            Counters.Drop(DropReason.Malformed);
            return;
        }
        _output.Prepare(0, 0);
        var length = _monitor.ReplyLengthAt(Clock());
        var buffer = _output.Begin(length);
        if (buffer.Length < length)
        {
            return;
        }
        // The probe echoed, then what this end has received from the peer so far: the peer computes its loss from it;
        // and the rate its last capacity train came at, while it sends trains.
        _monitor.Answer(buffer, length, probe, _sequenced, _firstSequence < 0 ? 0 : _highestSequence - _firstSequence + 1);
        _output.Commit(FabricPayloadType.ProbeReply, 0, length);
    }

    private void SendControlLocked(ReadOnlySpan<byte> message)
    {
        _output.Prepare(0, 0);
        var length = message.Length + (_authenticator is null ? 0 : OverlayAuthenticator.FreshnessLength);
        var buffer = _output.Begin(length);
        if (buffer.Length < length)
        {
            return;
        }
        message.CopyTo(buffer);
        _authenticator?.WriteFreshness(buffer[message.Length..]);
        _output.Commit(FabricPayloadType.AgentControl, 0, length);
    }

    private void TrackSequence(uint sequence)
    {
        if (_firstSequence < 0)
        {
            _firstSequence = _highestSequence = sequence;
            _sequenced = 1;
            return;
        }
        // Unwrap the 32-bit counter against the highest seen: a small negative step is reordering, not a wrap.
        var step = (int)(sequence - (uint)_highestSequence);
        var unwrapped = _highestSequence + step;
        if (unwrapped < _firstSequence)
        {
            return;
        }
        _sequenced++;
        _highestSequence = Math.Max(_highestSequence, unwrapped);
    }

    public void Dispose()
    {
        // A path abandoned because a stack is stuck in a call keeps its instances: they cannot be disposed under a gate
        // that call holds, and the stuck stack's context can never unload anyway.
        if (!TryTake(DataWaitMilliseconds))
        {
            return;
        }
        using (Held())
        {
            _disposed = true;
            for (var i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is { } instance)
                {
                    Discard(instance, _slotStacks[i]!);
                }
                _slots[i] = null;
                _slotStacks[i] = null;
            }
            _authenticator?.Dispose();
        }
    }

    /// <summary>
    /// Writes the Fabric header in front of what the stack wrote, straight into the calling thread's underlay outbox.
    /// Used under the path's gate.
    /// </summary>
    private sealed class PathOutput(RemotePath path, IUnderlay underlay) : IUnderlayOutput
    {
        private byte _slot;
        private uint _sequence;
        private int _begun;

        public uint VirtualNetwork { get; set; }

        public void Prepare(byte slot, uint vni)
        {
            _slot = slot;
            VirtualNetwork = vni;
        }

        public Span<byte> Begin(int maxLength)
        {
            // Room for the overlay tag is kept whatever the caller: the agents' own datagrams carry one after their payload.
            if (maxLength > underlay.MaxDatagram - FabricHeader.Length - OverlayAuthenticator.TagLength)
            {
                return Span<byte>.Empty;
            }
            _begun = 1;
            return underlay.NextBuffer()[FabricHeader.Length..^OverlayAuthenticator.TagLength];
        }

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length)
        {
            if (_begun == 0)
            {
                return;
            }
            _begun = 0;
            var now = path.Clock();
            var buffer = underlay.NextBuffer();
            // Path sequence counts every datagram on this path, across slots: loss and reordering measured for free.
            new FabricHeaderRepr(_slot, payloadType, VirtualNetwork, _sequence++, (uint)(now / 1000), (byte)stackFieldLength).Write(buffer);
            var total = FabricHeader.Length + length;
            if (payloadType is FabricPayloadType.Probe or FabricPayloadType.ProbeReply or FabricPayloadType.ProbeTrain or FabricPayloadType.AgentControl)
            {
                total = path._authenticator?.Seal(buffer, total) ?? total;
                underlay.Commit(total, path.Destination);
                return;
            }
            underlay.Commit(total, path.Destination);
            path.Counters.Sent(total);
        }
    }

    /// <summary>Delivers a stack's frames to the switch (which returns the local VM a frame went to) and meters what
    /// reached a VM. Called under the path's gate (from a stack's receive or timer).</summary>
    private sealed class PathDelivery(RemotePath path, Func<string, uint, bool, ReadOnlySpan<byte>, string?> deliver) : IVmOutput
    {
        public uint VirtualNetwork { get; set; }

        public void Deliver(ReadOnlySpan<byte> frame)
        {
            // The stack delivering it says whether the frame crossed the underlay encrypted (a confidential VM takes no other).
            if (deliver(path.Spec.HostId, VirtualNetwork, path._slotEncrypts[path._inCallSlot], frame) is { } vmId)
            {
                if (!path._vms.TryGetValue(vmId, out var traffic))
                {
                    path._vms[vmId] = traffic = new VmTraffic();
                }
                traffic.Tcp.OnIngress(frame, path.Clock());
            }
        }
    }

    /// <summary>A VM's use of this path: its binding's slot (-1: the path's transmit slot) and what it sent.</summary>
    private sealed class VmTraffic
    {
        public int Slot = -1;
        public long Frames;
        public long Bytes;
        public long ReportedFrames;
        public long ReportedBytes;
        public readonly TcpMeter Tcp = new();
    }

    /// <summary>Called with (stack id, event, detail) when a stack instance on this path reports an event.</summary>
    internal Action<string, string, string>? OnStackEvent { get; init; }

    private long _lastStackEvent = long.MinValue / 2;

    /// <summary>A stack's events go to the switch's event list and log, at most one a second per path.</summary>
    private sealed class PathTelemetry(RemotePath path, string stackId) : IStackTelemetry
    {
        public void Event(string name, string detail)
        {
            var now = path.Clock();
            var last = Volatile.Read(ref path._lastStackEvent);
            if (now - last < 1_000_000_000 || Interlocked.CompareExchange(ref path._lastStackEvent, now, last) != last)
            {
                return;
            }
            path.OnStackEvent?.Invoke(stackId, name, detail);
        }
    }
}

/// <summary>A stack's factory threw while creating an instance for a path: the stack is broken, not the agent.</summary>
public sealed class StackStartException(string stackId, string hostId, Exception inner)
    : Exception($"stack '{stackId}' failed to start on the path to '{hostId}': {inner.GetType().Name}: {inner.Message}", inner)
{
    public string StackId { get; } = stackId;
}

/// <summary>An instance was to be opened in a path that was closed meanwhile (its host removed or given another path).</summary>
public sealed class PathClosedException(string hostId)
    : InvalidOperationException($"The path to '{hostId}' was closed while a stack instance was being created for it.");

/// <summary>An operation on a path whose stack is stuck in a call (the watchdog replaces such a path).</summary>
public sealed class PathStuckException(string hostId, long stuckNanoseconds)
    : InvalidOperationException($"The path to '{hostId}' is stuck: a call into its stack has not returned for {stuckNanoseconds / 1_000_000} ms.");
