using System.Net;
using Fabric.Agent.Stacks;
using Fabric.Agent.Underlay;
using Fabric.Hal.Linux;
using Fabric.Stacks;
using Fabric.Stacks.Loading;
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
/// The path from this host to one remote host: its slot table (<see cref="SlotTable"/>), the gate its stack instances
/// are called under (<see cref="PathGate"/>), the path sequence, its monitor's probes, and the adapters the stacks write
/// through (<c>RemotePath.Adapters.cs</c>). Every call into a stack instance holds the gate; what a call throws is
/// reported to the switch (<see cref="OnFault"/>) once the gate is released.
/// </summary>
public sealed partial class RemotePath : IDisposable
{
    private readonly PathGate _gate;
    private readonly SlotTable _table;
    private readonly PathSequence _sequence = new();
    private readonly PathOutput _output;
    private readonly IUnderlay _underlay;
    private readonly PathDelivery _delivery;
    private readonly PathMonitor _monitor = new();
    private readonly OverlayAuthenticator? _authenticator;

    /// <summary>The slot every path keeps open with the family's std stack, so a path whose stack fails can fall back at once.</summary>
    public const int FallbackSlot = SlotTable.Fallback;

    /// <summary>
    /// How recently a leader's frames must have arrived in a slot of its host's leaders' half for a VM that follows
    /// (<see cref="VmRole.Follows"/>) to answer on that slot: after that long without a word from the leader, the follower
    /// is on its own binding again (a leader that moved or went away lets its followers go).
    /// </summary>
    public static readonly TimeSpan FollowWindow = TimeSpan.FromSeconds(2);

    /// <summary>How long a stack's factory may take to create an instance before the attempt counts as failed.</summary>
    internal static readonly TimeSpan CreateTimeout = TimeSpan.FromSeconds(2);

    /// <summary>How long <see cref="StackStats"/> waits for the stacks' figures before it answers without them.</summary>
    private const int StatsWaitMilliseconds = 1000;

    /// <summary>Set under the gate when the path is disposed: nothing is opened in it after.</summary>
    private bool _disposed;

    internal RemotePath(RemoteHostSpec spec, UdpPeer destination, IUnderlay underlay, Func<string, uint, bool, ReadOnlySpan<byte>, string?> deliver, Func<long> clock, string localHost, TimeProvider? time = null)
    {
        Spec = spec;
        Destination = destination;
        Clock = clock;
        _gate = new PathGate(spec.HostId, clock);
        _table = new SlotTable(localHost, spec.HostId);
        _output = new PathOutput(this, underlay);
        _underlay = underlay;
        _delivery = new PathDelivery(this, deliver);
        _authenticator = spec.OverlayKey is { } key ? new OverlayAuthenticator(key, localHost, spec.HostId, time) : null;
    }

    public RemoteHostSpec Spec { get; private set; }

    /// <summary>The remote host's underlay socket address for the family of the bound stack.</summary>
    public UdpPeer Destination { get; }

    /// <summary>Rx = datagrams from the remote host; Tx = datagrams sent to it.</summary>
    public TrafficCounters Counters { get; } = new();

    internal Func<long> Clock { get; }

    /// <summary>Disposes the instances this path takes out of their slots (shared by the switch's paths, which watches it).</summary>
    internal StackDisposer Disposer { get; init; } = new(TimeProvider.System);

    /// <summary>Called (outside the path's gate) when a stack instance throws: the path, the slot, the stack id, whether it was transmitting, the exception.</summary>
    internal Action<RemotePath, int, string, bool, Exception>? OnFault { get; set; }

    /// <summary>Called (outside the path's gate) with the payload of an agent control message from the peer.</summary>
    internal Action<RemotePath, byte[]>? OnControl { get; set; }

    /// <summary>Told when a stack's next timer may have come closer (the switch's monitor sleeps until the next timer is due).</summary>
    internal Action<long>? TimerArmed { get; init; }

    /// <summary>Whether a stack may carry frames it was not bound to (set by the switch: not quarantined or withdrawn).</summary>
    internal Func<string, bool> Usable { get; init; } = _ => true;

    /// <summary>Called (under the gate, at most once a second) when a frame to a confidential VM found no slot that encrypts: the switch opens one.</summary>
    internal Action<RemotePath>? OnNeedEncryptingSlot { get; init; }

    /// <summary>The largest inner IP packet a stack carries on this path (set by the switch).</summary>
    internal Func<string, int> InnerMtu { get; init; } = _ => int.MaxValue;

    /// <summary>Whether a local VM follows (<see cref="VmRole.Follows"/>): what it gets from a VM on a slot that VM's host
    /// opened is that VM's choice, not metered as its own.</summary>
    internal Func<string, bool> Follows { get; init; } = _ => false;

    /// <summary>Called with (stack id, event, detail) when a stack instance on this path reports an event.</summary>
    internal Action<string, string, string>? OnStackEvent { get; init; }

    /// <summary>Whether a call into a stack on this path has lasted longer than <see cref="PathGate.StuckNanoseconds"/>.</summary>
    internal bool Stuck => _gate.Stuck;

    /// <summary>How long the current call into a stack has lasted, in nanoseconds (0 when none is running).</summary>
    internal long InCallFor(long now) => _gate.InCallFor(now);

    /// <summary>The slot whose stack the current (or last) call went into.</summary>
    internal int InCallSlot => _gate.InCallSlot;

    /// <summary>The stack the current (or last) call went into, read without the gate (for the watchdog).</summary>
    internal string? InCallStack => _gate.InCallStack;

    /// <summary>Whether <paramref name="thread"/> (a managed thread id) is in a call into a stack of this path that has
    /// lasted longer than <paramref name="nanoseconds"/>.</summary>
    internal bool Holds(int thread, long now, long nanoseconds) => _gate.InCallFor(now) > nanoseconds && _gate.InCallThread == thread;

    /// <summary>Whether the path's own stack encrypts, so frames of VMs without a binding never leave in clear on it.</summary>
    internal bool SealedPath
    {
        get => _table.SealedPath;
        set => _table.SealedPath = value;
    }

    /// <summary>True when this path's probes, probe replies and control messages are authenticated (the host pair has an overlay key).</summary>
    public bool Authenticated => _authenticator is not null;

    /// <summary>Set once the path's keys came as a ring (<see cref="Rekey"/>): the secure stack's key then follows it.</summary>
    private volatile bool _ringKeys;

    /// <summary>
    /// Takes the host pair's keys anew in place while a host key rotates: the path, its slots and its stack instances stay
    /// (no frame is lost); probes and control messages verify under every key of the ring, and secure instances made from
    /// now on take the key this end seals under, with the ring's others as alternates. False when the path has no overlay
    /// key (its keys are the operator's).
    /// </summary>
    public bool Rekey(PathKeyRing ring, bool mineRotated)
    {
        if (_authenticator is null)
        {
            return false;
        }
        using (_gate.Take())
        {
            _authenticator.Rekey(ring, mineRotated);
            _ringKeys = true;
            // What a path that replaces this one (a stack stuck for good) starts from: the pair's current keys, not those
            // it was added with.
            var current = ring.Entries.First(e => e.MineCurrent && e.TheirsNewest).Keys;
            var settings = (Spec.Settings ?? new Dictionary<string, IReadOnlyDictionary<string, string>>()).ToDictionary(StringComparer.Ordinal);
            if (settings.TryGetValue("secure", out var secure))
            {
                settings["secure"] = new Dictionary<string, string>(secure, StringComparer.Ordinal) { ["key"] = Convert.ToHexString(current.Secure) };
            }
            Spec = Spec with { OverlayKey = current.Overlay.ToArray(), Settings = settings };
        }
        return true;
    }

    /// <summary>How many keys of the pair verify (1; more while a host key rotates) and whether this end seals under its host's current key.</summary>
    /// <remarks>Read without the gate, so status never waits on a path whose stack is stuck in a call.</remarks>
    public (int Keys, bool SealsWithCurrentKey) KeyState => _authenticator is null ? (0, false) : (_authenticator.KeyCount, _authenticator.SealsWithCurrentKey);

    /// <summary>The configuration an instance of <paramref name="stackId"/> gets now: secure's key follows the ring (and names the ring's other keys).</summary>
    private IReadOnlyDictionary<string, string> SettingsFor(string stackId)
    {
        var settings = Spec.SettingsOf(stackId);
        if (!_ringKeys || stackId != "secure" || _authenticator?.SecureKeys() is not ({ } key, var alternates))
        {
            return settings;
        }
        var chosen = new Dictionary<string, string>(settings, StringComparer.Ordinal) { ["key"] = key };
        chosen.Remove("alternateKeys");
        if (alternates.Length > 0)
        {
            chosen["alternateKeys"] = string.Join(',', alternates);
        }
        return chosen;
    }

    /// <summary>The id of the stack that transmits on this path.</summary>
    /// <remarks>Read without the gate, so status and metrics never wait on a path whose stack is stuck in a call.</remarks>
    public string? TransmitStack => TransmitKey is { } key ? StackKey.IdOf(key) : null;

    /// <summary>The version of the stack that transmits on this path, as its key (<see cref="StackKey"/>).</summary>
    /// <remarks>Read without the gate.</remarks>
    public string? TransmitKey => _table.StackIn(_table.TransmitSlot);

    /// <summary>The slot transmissions use.</summary>
    public int TransmitSlot => _table.TransmitSlot;

    /// <summary>The stack version (its key) in <paramref name="slot"/>, or null.</summary>
    internal string? StackIn(int slot) => _table.StackIn(slot);

    /// <summary>Path sequence numbers missing so far (from the Fabric header): loss on the path, whatever the stack.</summary>
    /// <remarks>Read without the gate.</remarks>
    public long SequenceGaps => _sequence.Gaps;

    /// <summary>True when <paramref name="slot"/> is one this host opens on this path (for the control plane's bindings).</summary>
    internal bool IsOwnSlot(int slot) => _table.IsOwn(slot);

    /// <summary>True when <paramref name="slot"/> is one the peer opens on this path (this end opens it when asked).</summary>
    internal bool IsPeerSlot(int slot) => _table.IsPeer(slot);

    private void Discard(IStack instance, string stackId) => Disposer.Discard(instance, stackId);

    /// <summary>Empties <paramref name="slot"/> (under the gate) and disposes of its instance; returns its stack id.</summary>
    private string CloseLocked(int slot)
    {
        var stackId = _table.StackIn(slot)!;
        // What the instance counted goes on counting for its version (a rollout's drops gate compares versions, and the
        // previous one's slots close as the new one takes over). Asked as every call into a stack is, under the watch: a
        // stack that throws here loses its figures, one that hangs makes the path stuck like any other call.
        _gate.Calling(slot, stackId);
        try
        {
            var stats = _table.Instance(slot)!.GetStats();
            lock (_closedStats)
            {
                var (packets, drops) = _closedStats.TryGetValue(stackId, out var sum) ? sum : (0, new Dictionary<StackDropReason, long>());
                foreach (var (reason, count) in stats.Drops)
                {
                    drops[reason] = drops.GetValueOrDefault(reason) + Math.Max(0, count);
                }
                _closedStats[stackId] = (packets + Math.Max(0, stats.FramesIn) + Math.Max(0, stats.DatagramsIn), drops);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            OnStackEvent?.Invoke(stackId, "stats-lost", $"{e.GetType().Name}: {e.Message}; what the closed slot counted is not kept");
        }
        finally
        {
            _gate.Returned();
        }
        var (instance, _) = _table.Remove(slot);
        Discard(instance, stackId);
        return stackId;
    }

    private readonly Dictionary<string, (long Packets, Dictionary<StackDropReason, long> Drops)> _closedStats = new(StringComparer.Ordinal);

    /// <summary>Per stack version key: the time a sample of the path's calls into its instances took, and how many were timed.</summary>
    public IReadOnlyDictionary<string, (long Nanoseconds, long Samples)> StackCallTimes() => _gate.CallTimes();

    /// <summary>Per stack version key: the packets the path's closed slots of it took and what they dropped, by reason.</summary>
    public IReadOnlyDictionary<string, (long Packets, IReadOnlyDictionary<StackDropReason, long> Drops)> ClosedStackStats()
    {
        lock (_closedStats)
        {
            return _closedStats.ToDictionary(e => e.Key, e => (e.Value.Packets, (IReadOnlyDictionary<StackDropReason, long>)new Dictionary<StackDropReason, long>(e.Value.Drops)),
                StringComparer.Ordinal);
        }
    }

    /// <summary>Reports what the calls of one turn of the gate threw, once the gate is released.</summary>
    private void Report(in StackFaults faults, bool transmitting)
    {
        if (faults.First is not null)
        {
            Counters.Drop(DropReason.StackFault);
            OnFault?.Invoke(this, faults.Slot, faults.Stack!, transmitting, faults.First);
        }
    }

    /// <summary>
    /// <see cref="PathGate.Take"/> for installing a new instance (created outside the gate): when the path is stuck, or
    /// was disposed meanwhile (its host removed or given another path), the instance is discarded before the error goes on.
    /// </summary>
    private PathGate.Hold TakeFor(IStack instance, string stackId)
    {
        PathGate.Hold held;
        try
        {
            held = _gate.Take();
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

    /// <summary>A slot of this host's range that holds <paramref name="stackId"/> (in the leaders' half, or the other), or -1.</summary>
    internal int OwnSlotOf(string stackId, bool leads = false)
    {
        using (_gate.Take())
        {
            return _table.OwnSlotOf(stackId, leads);
        }
    }

    /// <summary>An empty slot of this host's range (in the leaders' half, or the other), or -1.</summary>
    internal int FreeOwnSlot(bool leads = false)
    {
        using (_gate.Take())
        {
            return _table.FreeOwnSlot(leads);
        }
    }

    /// <summary>True when <paramref name="slot"/> is one this host opened for VMs that lead (<see cref="VmRole.Leads"/>).</summary>
    public bool IsOwnLeadersSlot(int slot) => _table.IsOwn(slot) && SlotTable.IsLeaders(slot);

    /// <summary>A slot no instance occupies, other than 0 when possible; -1 when all 256 are taken.</summary>
    internal int FreeSlot()
    {
        using (_gate.Take())
        {
            return _table.FreeSlot();
        }
    }

    /// <summary>
    /// Binds a VM's transmissions on this path to <paramref name="slot"/> (-1: the path's transmit slot) from its next
    /// frame on. A slot no VM and not the path uses any more drains until <paramref name="drainUntil"/>. Returns the
    /// VM's previous slot.
    /// </summary>
    internal int BindVm(string vmId, int slot, long drainUntil)
    {
        using (_gate.Take())
        {
            return _table.Bind(vmId, slot, drainUntil);
        }
    }

    /// <summary>The slot a VM's binding names and the stack in it; (-1, null) when it has none (or the slot was retired).</summary>
    internal (int Slot, string? Stack) BindingOf(string vmId)
    {
        if (!_gate.TryTakeWithin(100))
        {
            throw new InvalidOperationException($"Path to '{Spec.HostId}' is busy (a stack call has not returned).");
        }
        using (_gate.Held())
        {
            return _table.BindingOf(vmId);
        }
    }

    /// <summary>Forgets a VM that left the host; its slot drains when nothing else uses it.</summary>
    internal void ForgetVm(string vmId, long drainUntil)
    {
        using (_gate.Take())
        {
            _table.Forget(vmId, drainUntil);
        }
    }

    /// <summary>Moves every VM bound to a slot holding <paramref name="stackId"/> to <paramref name="slot"/> (fallback after a fault).</summary>
    internal int RebindStack(string stackId, int slot)
    {
        using (_gate.Take())
        {
            return _table.RebindStack(stackId, slot);
        }
    }

    /// <summary>Moves every VM bound to <paramref name="from"/> to <paramref name="to"/>; returns how many moved.</summary>
    internal int RebindSlot(int from, int to)
    {
        using (_gate.Take())
        {
            return _table.RebindSlot(from, to);
        }
    }

    /// <summary>Marks every slot holding <paramref name="stackId"/> to drain until <paramref name="drainUntil"/> (those not draining
    /// already); housekeeping closes each once nothing transmits on it. Returns how many were marked.</summary>
    internal int DrainStack(string stackId, long drainUntil)
    {
        using (_gate.Take())
        {
            return _table.DrainStack(stackId, drainUntil);
        }
    }

    /// <summary>The stack id each VM that used this path transmits with (its binding's, or the path's).</summary>
    /// <remarks>Empty when the path is busy for more than 100 ms (a stack stuck in a call must not stall status or the control plane).</remarks>
    public IReadOnlyDictionary<string, (string? Stack, int Slot)> VmBindings() =>
        VmBindingKeys().ToDictionary(b => b.Key, b => (b.Value.Stack is { } key ? StackKey.IdOf(key) : null, b.Value.Slot), StringComparer.Ordinal);

    /// <summary><see cref="VmBindings"/> with each stack's version: its key (<see cref="StackKey"/>).</summary>
    public IReadOnlyDictionary<string, (string? Stack, int Slot)> VmBindingKeys()
    {
        if (!_gate.TryTakeWithin(100))
        {
            return new Dictionary<string, (string?, int)>();
        }
        using (_gate.Held())
        {
            return _table.VmBindings();
        }
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
        var stackId = stack.Key;
        using (_gate.Take())
        {
            _table.Touch(slot, Clock());
            if (_table.Unchanged(stackId, slot, openId))
            {
                unchanged = true;
                return null;
            }
        }
        // The new instance first, outside the gate (a factory may take a while, and the frames of the path's other slots
        // do not wait for it): a stack that fails to start leaves the slot as it was.
        var instance = CreateInstance(stack, localHost);
        using (TakeFor(instance, stackId))
        {
            unchanged = _table.Unchanged(stackId, slot, openId);
            if (unchanged)
            {
                // The same open was applied meanwhile (a repeated request another receive thread handled), or this end
                // opened the slot with the same stack: as above, nothing else changes.
                Discard(instance, stackId);
                return null;
            }
            ArmedNew(instance, slot, stackId);
            var replaced = _table.Instance(slot) is null ? null : CloseLocked(slot);
            _table.Place(slot, instance, stackId, stack.Description.Encrypts, openId, peerOpened: true, Clock());
            return replaced;
        }
    }

    /// <summary>
    /// Opens <paramref name="slot"/> with a new instance of <paramref name="stack"/>: it receives at once, transmits
    /// after <see cref="Commit"/>. With <paramref name="adoptPeerOpened"/> (a path-level swap both ends prepare), a slot
    /// the peer already had this end open with the same stack (its instance spoke first) is adopted instead: returns
    /// false and the new instance is discarded. The check is made under the gate, after the (slow) instance creation,
    /// because the peer's open can arrive on the underlay thread in between.
    /// </summary>
    /// <remarks><c>previous</c>: what an instance of another version of the stack on this path exported, for the new one to start from.</remarks>
    internal bool Open(LoadedStack stack, int slot, string localHost, bool adoptPeerOpened = false, StackState? previous = null)
    {
        var stackId = stack.Key;
        var instance = CreateInstance(stack, localHost, previous);
        using (TakeFor(instance, stackId))
        {
            if (adoptPeerOpened && _table.CanAdopt(slot, stackId))
            {
                // Adopted for a swap about to commit: fresh, so the idle expiry does not take it meanwhile.
                _table.Touch(slot, Clock());
                Discard(instance, stackId);
                return false;
            }
            if (_table.Instance(slot) is not null)
            {
                Discard(instance, stackId);
                throw new InvalidOperationException($"Path to '{Spec.HostId}': slot {slot} is in use by {_table.StackIn(slot)}.");
            }
            ArmedNew(instance, slot, stackId);
            _table.Place(slot, instance, stackId, stack.Description.Encrypts, (ulong)Random.Shared.NextInt64(1, long.MaxValue), peerOpened: false, Clock());
            return true;
        }
    }

    /// <summary>
    /// Before a new instance goes into <paramref name="slot"/> (under the gate): passes on its first timer, as a watched
    /// call. What it throws is the stack's start failing: the instance is discarded and the slot left as it was.
    /// </summary>
    private void ArmedNew(IStack instance, int slot, string stackId)
    {
        _gate.Calling(slot, stackId);
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
            _gate.Returned();
        }
    }

    /// <summary>
    /// A new instance of <paramref name="stack"/> for this path; what its factory throws comes back as a
    /// <see cref="StackStartException"/>, and so does a factory that returns nothing or has not returned within
    /// <see cref="CreateTimeout"/>. It runs on a thread of its own (instances are created when a slot opens, seldom), so a
    /// factory that never returns costs that thread, not the caller's, and no busy thread pool makes a healthy one late;
    /// an instance a factory returns after the caller gave up is disposed.
    /// </summary>
    private IStack CreateInstance(LoadedStack stack, string localHost, StackState? previous = null)
    {
        // Settings are per stack id; what fails is named by its version's key (a quarantine takes that version only).
        var id = stack.Key;
        var settingsId = stack.Description.Id;
        var creation = new Creation(stack.Factory, new StackContext(localHost, Spec.HostId, SettingsFor(settingsId), new PathTelemetry(this, id)) { Previous = previous }, Disposer, id);
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

    /// <summary>
    /// What the instance in <paramref name="slot"/> exports for an instance of another version of its stack taking over
    /// (<see cref="IStack.ExportState"/>), as a watched call; null when the slot is empty or the export threw (said as an
    /// event: the next version starts fresh).
    /// </summary>
    internal StackState? ExportState(int slot)
    {
        using (_gate.Take())
        {
            if (_table.Instance(slot) is not { } instance)
            {
                return null;
            }
            var stackId = _table.StackIn(slot)!;
            _gate.Calling(slot, stackId);
            try
            {
                return instance.ExportState();
            }
            catch (Exception e)
            {
                OnStackEvent?.Invoke(stackId, "export-failed", $"{e.GetType().Name}: {e.Message}; the next version starts fresh");
                return null;
            }
            finally
            {
                _gate.Returned();
            }
        }
    }

    /// <summary>The id of the instance this host opened in one of its own slots (sent with every open request for it).</summary>
    internal ulong OpenIdOf(int slot)
    {
        using (_gate.Take())
        {
            return _table.OpenIdOf(slot);
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
        using (_gate.Take())
        {
            return _table.Commit(slot, drainUntil, fallback);
        }
    }

    /// <summary>Closes a slot that is not transmitting (an aborted prepare); returns its stack id, or null when the slot was empty.</summary>
    internal string? Close(int slot)
    {
        using (_gate.Take())
        {
            return slot == _table.TransmitSlot || _table.Instance(slot) is null ? null : CloseLocked(slot);
        }
    }

    /// <summary>Retires a faulted instance at once (its slot then drops what arrives for it); returns its stack id.</summary>
    internal string? Retire(int slot)
    {
        using (_gate.Take())
        {
            return _table.Instance(slot) is null ? null : CloseLocked(slot);
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
        // Housekeeping must not wait on a path whose stack is stuck: try again next round.
        if (!_gate.TryTakeWithin(50))
        {
            return [];
        }
        using (_gate.Held())
        {
            return [.. _table.Due(now, peerIdle).Select(due => (due.Slot, CloseLocked(due.Slot), due.Idle))];
        }
    }

    /// <summary>The stack ids of every occupied slot (for release when the path goes away).</summary>
    internal List<string> BoundStacks()
    {
        using (_gate.Take())
        {
            return _table.Stacks();
        }
    }

    /// <summary>Sends an agent control message to the peer at once (it is not left in the calling thread's outbox).</summary>
    internal void SendControl(ReadOnlySpan<byte> message)
    {
        if (!_gate.TryTake())
        {
            Counters.Drop(DropReason.PathStuck);
            return;
        }
        using (_gate.Held())
        {
            SendControlLocked(message);
        }
    }

    /// <summary>Sends one active probe (the caller flushes the underlay).</summary>
    internal void SendProbe()
    {
        if (!_gate.TryTake())
        {
            return;
        }
        using (_gate.Held())
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
        if (!_gate.TryTakeWithin(0))
        {
            // A call is running: look again in a millisecond, as the monitor always did.
            return now + 1_000_000;
        }
        var faults = new StackFaults();
        var next = long.MaxValue;
        using (_gate.Held())
        {
            foreach (var slot in _table.Occupied())
            {
                if (_table.TimerFaulted(slot))
                {
                    continue;
                }
                _gate.Calling(slot, _table.StackIn(slot));
                try
                {
                    next = Math.Min(next, _table.Instance(slot)!.NextTimerNanoseconds);
                }
                catch (Exception e)
                {
                    // The stack's fault, as in RunTimers: a stack may throw once and not again, so the next round
                    // cannot be trusted to meet it (a CI run lost the fault that way).
                    _table.MarkTimerFaulted(slot);
                    faults.Add(e, slot, _table.StackIn(slot));
                }
                finally
                {
                    _gate.Returned();
                }
            }
        }
        Report(faults, transmitting: true);
        return next;
    }

    /// <summary>Runs the timers of stack instances whose time has come (the caller flushes the underlay and the VM outboxes).</summary>
    internal void RunTimers(long now)
    {
        if (!_gate.TryTakeWithin(5))
        {
            return;
        }
        var faults = new StackFaults();
        using (_gate.Held())
        {
            foreach (var slot in _table.Occupied())
            {
                if (_table.TimerFaulted(slot))
                {
                    continue;
                }
                // Reading when the timer is due is a call into the stack like any other: watched, and what it throws is the
                // stack's fault (it would throw at every round, and the paths after this one would wait for ever).
                var stack = _table.Instance(slot)!;
                _output.Prepare((byte)slot, 0);
                _delivery.VirtualNetwork = 0;
                _gate.Calling(slot, _table.StackIn(slot));
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
                    _table.MarkTimerFaulted(slot);
                    faults.Add(e, slot, _table.StackIn(slot));
                }
                finally
                {
                    _gate.Returned();
                }
            }
        }
        Report(faults, transmitting: true);
    }

    /// <summary>What the path measured since the last call (probes, the peer's sequence counts, traffic per VM).</summary>
    internal PathMeasurement? TakeMeasurement(long now)
    {
        if (!_gate.TryTakeWithin(50))
        {
            return null;
        }
        using (_gate.Held())
        {
            var vms = new List<VmInterval>(_table.Vms.Count);
            foreach (var (vmId, traffic) in _table.Vms)
            {
                var stackId = _table.StackIn(_table.SlotOf(traffic));
                vms.Add(new VmInterval(vmId, stackId ?? "", traffic.Frames - traffic.ReportedFrames, traffic.Bytes - traffic.ReportedBytes, traffic.Tcp.Take(now, stackId)));
                (traffic.ReportedFrames, traffic.ReportedBytes) = (traffic.Frames, traffic.Bytes);
            }
            return _monitor.Take(now, Counters.TxBytes, vms, _borrowedBytes);
        }
    }

    /// <summary>Stats of each bound stack instance by slot, with its stack's id and version.</summary>
    /// <remarks>
    /// Empty when the path is busy for more than 100 ms or its stacks have not answered within 1 s: a stack stuck in
    /// a call, GetStats included, must not stall status or metrics. The stacks are asked on a thread of their own, so one
    /// whose GetStats never returns holds that thread (and marks the path stuck, for the watchdog), not the caller.
    /// </remarks>
    public IReadOnlyDictionary<int, (string Stack, StackStats Stats, string Version)> StackStats()
    {
        // A thread of its own, not the pool's: a pool short of threads (some held by stacks stuck in calls) would make
        // every answer late and empty.
        Dictionary<int, (string Stack, StackStats Stats, string Version)>? collected = null;
        var asking = new Thread(() => collected = CollectStats()) { IsBackground = true, Name = "stack-stats" };
        asking.Start();
        return asking.Join(StatsWaitMilliseconds) ? collected! : new Dictionary<int, (string, StackStats, string)>();
    }

    private Dictionary<int, (string Stack, StackStats Stats, string Version)> CollectStats()
    {
        var result = new Dictionary<int, (string, StackStats, string)>();
        if (!_gate.TryTakeWithin(100))
        {
            return result;
        }
        using (_gate.Held())
        {
            foreach (var slot in _table.Occupied())
            {
                var stackId = _table.StackIn(slot)!;
                _gate.Calling(slot, stackId);
                try
                {
                    result[slot] = (StackKey.IdOf(stackId), _table.Instance(slot)!.GetStats(), StackKey.VersionOf(stackId) ?? "");
                }
                finally
                {
                    _gate.Returned();
                }
            }
            return result;
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
    /// encrypts — the sender's own if it does, else one the path has (<see cref="SlotTable.EncryptingSlot"/>); with none,
    /// it is dropped and <see cref="OnNeedEncryptingSlot"/> asks the switch to open one.</param>
    /// <param name="preferEncrypted">A broadcast reaching a confidential VM there too: through a slot that encrypts if
    /// the path has one, else as any other frame (the confidential VM drops it, the others take it).</param>
    /// <param name="follows">The sender follows (<see cref="VmRole.Follows"/>): a frame to a VM whose frames arrived within
    /// <see cref="FollowWindow"/> in a slot of its host's leaders' half leaves through that slot (see <see cref="FollowedSlot"/>).</param>
    internal int Transmit(ReadOnlySpan<byte> frame, uint vni, string? vmId = null, bool sealedVm = false, bool sealedDestination = false, bool preferEncrypted = false,
        bool follows = false)
    {
        var faults = new StackFaults();
        if (!_gate.TryTake())
        {
            // A stack stuck in a call holds the gate: this frame is dropped (counted), the thread never waits on it.
            Counters.Drop(DropReason.PathStuck);
            return 0;
        }
        using (_gate.Held())
        {
            var slot = _table.TransmitSlot;
            VmTraffic? traffic = null;
            if (vmId is not null)
            {
                traffic = _table.Traffic(vmId);
                slot = _table.SlotOf(traffic);
            }
            var borrowed = false;
            if (follows && traffic is not null && FollowedSlot(frame, traffic, slot, sealedVm) is var followed and >= 0)
            {
                // The VM it answers chose the stack of this conversation: the answer rides the slot that VM's frames came on.
                // Borrowed: what this VM gets there is the leader's stack's doing.
                (slot, borrowed) = (followed, true);
                _table.Touch(slot, Clock());
            }
            var stack = _table.Instance(slot);
            if (stack is null)
            {
                Counters.Drop(DropReason.NoPath);
                return 0;
            }
            if ((sealedDestination || preferEncrypted) && !_table.Encrypts(slot))
            {
                if (_table.EncryptingSlot(Usable) is { } encrypting)
                {
                    // A frame to a confidential VM goes through a slot that encrypts (one this end opened, else the one the
                    // confidential VM's host opened for its traffic here). Borrowed, the slot counts as in use: a slot
                    // the peer opened is not closed as idle while frames go out through it.
                    (slot, stack, borrowed) = (encrypting, _table.Instance(encrypting)!, true);
                    _table.Touch(slot, Clock());
                }
                else if (sealedDestination && _monitor.EncryptingSlotRequests.ShouldReport(Clock()))
                {
                    OnNeedEncryptingSlot?.Invoke(this);
                }
            }
            var stackId = _table.StackIn(slot)!;
            if ((sealedVm || sealedDestination || (slot == _table.TransmitSlot && _table.SealedPath)) && !_table.Encrypts(slot))
            {
                Counters.Drop(DropReason.NotEncrypted);
                if (vmId is not null && _monitor.UnencryptedReports.ShouldReport(Clock()))
                {
                    OnStackEvent?.Invoke(stackId, "not-encrypted", sealedVm
                        ? $"{vmId} must be encrypted but its frames would leave through {stackId}, which does not encrypt: dropped"
                        : $"{vmId}'s frames to a confidential VM on {Spec.HostId} would leave through {stackId}, which does not encrypt, and no slot of the path encrypts: dropped");
                }
                return 0;
            }
            if (borrowed)
            {
                // The VMs' frames all the same: the path's bytes beyond them are the stacks' overhead, shared by the VMs.
                _borrowedBytes += frame.Length;
            }
            else if (traffic is not null)
            {
                // The VM's outcomes are credited to the stack it transmits with: what another stack carried for it (a
                // borrowed slot, to a confidential VM) would be read as its own stack's service, and what was dropped
                // because no slot encrypts was never its stack's to carry; neither is counted nor metered.
                traffic.Frames++;
                traffic.Bytes += frame.Length;
                traffic.Tcp.OnEgress(frame, Clock());
            }
            // The MTU is the stack's this VM sends with: stacks differ in what they add to a frame.
            var mtu = InnerMtu(stackId);
            if (frame.Length - 14 > mtu)
            {
                return mtu;
            }
            _output.Prepare((byte)slot, vni);
            _gate.Calling(slot, stackId);
            try
            {
                stack.Transmit(frame, Clock(), _output);
                Armed(stack);
            }
            catch (Exception e)
            {
                faults.Add(e, slot, stackId);
            }
            finally
            {
                _gate.Returned();
            }
        }
        Report(faults, transmitting: true);
        return 0;
    }

    /// <summary>
    /// The slot a follower's frame leaves through instead of its own slot <paramref name="own"/> (-1: its own): the leaders'
    /// slot the VM it is addressed to was heard on within <see cref="FollowWindow"/>, while that slot is open, not draining, its
    /// stack usable and its MTU enough for the frame, and never a slot that does not encrypt in place of one that does or
    /// must (the VM is confidential, or its slot is the path's and the path's stack encrypts).
    /// </summary>
    private int FollowedSlot(ReadOnlySpan<byte> frame, VmTraffic traffic, int own, bool sealedVm)
    {
        if (frame.Length < 14 || traffic.HeardOn(MacAddress.Read(frame), Clock(), FollowWindowNanoseconds) is not (>= 0 and var heard) || heard == own
            || heard == _table.TransmitSlot
            || _table.Instance(heard) is null || !_table.Sendable(heard) || _table.StackIn(heard) is not { } stackId || !Usable(stackId)
            || frame.Length - 14 > InnerMtu(stackId))
        {
            return -1;
        }
        var encrypted = sealedVm || _table.Encrypts(own) || (own == _table.TransmitSlot && _table.SealedPath);
        return !encrypted || _table.Encrypts(heard) ? heard : -1;
    }

    private static readonly long FollowWindowNanoseconds = (long)FollowWindow.TotalNanoseconds;

    /// <summary>VM frames sent through a slot not their VM's own (to a confidential VM, or answering a leader), since the path began.</summary>
    private long _borrowedBytes;

    /// <summary>Hands a datagram from this host to the stack in its slot.</summary>
    internal void Receive(ReadOnlySpan<byte> datagram)
    {
        if (!FabricHeader.TryCreate(datagram, out var header))
        {
            Counters.Drop(DropReason.UnknownPeer);
            return;
        }
        var faults = new StackFaults();
        byte[]? control = null;
        if (!_gate.TryTake())
        {
            Counters.Drop(DropReason.PathStuck);
            return;
        }
        using (_gate.Held())
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
            _sequence.Track(header.PathSequence);
            switch (header.PayloadType)
            {
                case FabricPayloadType.Probe:
                    AnswerProbe(payload);
                    return;
                case FabricPayloadType.ProbeReply:
                    _monitor.OnReply(payload, Clock());
                    return;
                case FabricPayloadType.ProbeTrain:
                    // Spaced by when the wire delivered them, not when this thread read them (a busy receive thread
                    // reads a train late and at once: a 300 Mbit/s link read as 664 under load).
                    if (!_monitor.OnTrainMember(payload, datagram.Length, Clock(), _underlay.Arrival))
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
                    ReceiveLocked(header, datagram, ref faults);
                    break;
            }
        }
        if (control is not null)
        {
            OnControl?.Invoke(this, control);
        }
        Report(faults, transmitting: false);
    }

    /// <summary>A stack's datagram (under the gate): to the instance in its slot; for a slot this end does not have,
    /// the peer is asked (at most once a second) to open it here again.</summary>
    private void ReceiveLocked(in FabricHeader header, ReadOnlySpan<byte> datagram, ref StackFaults faults)
    {
        var slot = header.Slot;
        if (_table.Instance(slot) is not { } stack)
        {
            Counters.Drop(DropReason.UnknownSlot);
            if (_table.IsPeer(slot) && _monitor.UnknownReports.ShouldReport(Clock()))
            {
                // The peer sends through a slot this end does not have (this agent restarted, or missed the peer's
                // open): ask it to open the slot here again.
                SendControlLocked([ControlMessages.Unknown, slot]);
            }
            return;
        }
        _output.Prepare(slot, header.VirtualNetworkId);
        _delivery.VirtualNetwork = header.VirtualNetworkId;
        var now = Clock();
        _table.Touch(slot, now);
        var stackId = _table.StackIn(slot);
        _gate.Calling(slot, stackId, now);
        try
        {
            stack.Receive(new StackDatagram(header.ToRepr(), header.StackFields, header.Payload), Clock(), _delivery, _output);
            Armed(stack);
        }
        catch (Exception e)
        {
            faults.Add(e, slot, stackId);
        }
        finally
        {
            _gate.Returned();
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
        _monitor.Answer(buffer, length, probe, _sequence.Received, _sequence.Span);
        _output.Commit(FabricPayloadType.ProbeReply, 0, length);
        // Sent now: the peer measures the path's round trip by it, and a receive thread holds its output while full
        // batches keep coming (UdpUnderlay), which would count as path.
        _underlay.Flush();
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
        // Sent now, under the gate, so control messages leave in the order of their counters: left in this thread's
        // outbox (a receive thread flushes only after its batch) one could follow a later message another thread sent
        // at once, and the peer would refuse it as a replay.
        _underlay.Flush();
    }

    public void Dispose()
    {
        // A path abandoned because a stack is stuck in a call keeps its instances: they cannot be disposed under a gate
        // that call holds, and the stuck stack's context can never unload anyway.
        if (!_gate.TryTake())
        {
            return;
        }
        using (_gate.Held())
        {
            _disposed = true;
            foreach (var slot in _table.Occupied().ToList())
            {
                CloseLocked(slot);
            }
            _authenticator?.Dispose();
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
