using Fabric.Stacks;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>
/// The slot table of one path: which stack instance occupies each of the 256 slots and how it got there (this end opened
/// it, or the peer asked for it), whether it drains, when it last received, whether its timers faulted, which slot the
/// path transmits through and which slot each VM is bound to. Pure state: no lock, no clock, no I/O and no call into a
/// stack. The path holds its gate around every call and passes the time in; an instance taken out of a slot is returned
/// to the caller, who disposes of it.
/// </summary>
/// <remarks>
/// Slots for stacks the control plane binds are split between the two ends so that neither ever picks one the other
/// opened: the host whose id sorts first opens 1..127 on the path, the other 128..254. Slot 0 holds the path's own
/// stack when the path is set up, slot <see cref="Fallback"/> the family's std stack.
/// </remarks>
internal sealed class SlotTable
{
    /// <summary>The slot every path keeps open with the family's std stack, so a path whose stack fails can fall back at once.</summary>
    public const int Fallback = 255;

    private const int Count = 256;
    private readonly IStack?[] _instances = new IStack?[Count];
    private readonly string?[] _stacks = new string?[Count];
    private readonly long[] _drainUntil = new long[Count];
    private readonly long[] _receivedAt = new long[Count];
    private readonly ulong[] _openIds = new ulong[Count];
    private readonly bool[] _peerOpened = new bool[Count];
    private readonly bool[] _encrypts = new bool[Count];
    private readonly bool[] _timerFaulted = new bool[Count];
    private readonly Dictionary<string, VmTraffic> _vms = new(StringComparer.Ordinal);
    private readonly string _remoteHost;
    private readonly int _ownFirst;
    private readonly int _ownLast;
    private int _transmitSlot;
    private bool _sealedPath;

    /// <param name="localHost">This host's id.</param>
    /// <param name="remoteHost">The path's remote host (its id decides which half of the slots is this end's).</param>
    public SlotTable(string localHost, string remoteHost)
    {
        _remoteHost = remoteHost;
        (_ownFirst, _ownLast) = string.CompareOrdinal(localHost, remoteHost) < 0 ? (1, 127) : (128, 254);
    }

    /// <summary>The slot transmissions of VMs without a binding use; read without the path's gate.</summary>
    public int TransmitSlot => Volatile.Read(ref _transmitSlot);

    /// <summary>The stack the path was last deliberately committed to encrypts: frames of VMs without a binding never
    /// leave in clear through the transmit slot.</summary>
    public bool SealedPath
    {
        get => Volatile.Read(ref _sealedPath);
        set => Volatile.Write(ref _sealedPath, value);
    }

    /// <summary>True when <paramref name="slot"/> is one this host opens on the path.</summary>
    public bool IsOwn(int slot) => slot >= _ownFirst && slot <= _ownLast;

    /// <summary>True when <paramref name="slot"/> is one the peer opens on the path (this end opens it when asked).</summary>
    public bool IsPeer(int slot) => slot is > 0 and < Fallback && !IsOwn(slot);

    /// <summary>The instance in <paramref name="slot"/>, or null.</summary>
    public IStack? Instance(int slot) => _instances[slot];

    /// <summary>The stack id in <paramref name="slot"/>, or null; may be read without the path's gate.</summary>
    public string? StackIn(int slot) => Volatile.Read(ref _stacks[slot]);

    /// <summary>Whether the stack in <paramref name="slot"/> encrypts.</summary>
    public bool Encrypts(int slot) => _encrypts[slot];

    /// <summary>The id of the instance in <paramref name="slot"/> (sent with every open request for one of this end's slots).</summary>
    public ulong OpenIdOf(int slot) => _openIds[slot];

    /// <summary>Whether <paramref name="slot"/>'s timers threw once (they are not run again until the slot is emptied).</summary>
    public bool TimerFaulted(int slot) => _timerFaulted[slot];

    /// <summary>Marks <paramref name="slot"/>'s timers as faulted.</summary>
    public void MarkTimerFaulted(int slot) => _timerFaulted[slot] = true;

    /// <summary>The slot received a datagram (or was asked for, or was borrowed) at <paramref name="now"/>: not idle.</summary>
    public void Touch(int slot, long now) => _receivedAt[slot] = now;

    /// <summary>
    /// Whether <paramref name="slot"/> is in the upper half of either end's range, where an end opens the slots of VMs that
    /// lead (<see cref="VmRole.Leads"/>) and nothing else: the peer tells a leader's choice by the slot's number alone.
    /// </summary>
    public static bool IsLeaders(int slot) => slot is (>= 64 and <= 127) or (>= 192 and <= 254);

    /// <summary>A slot of this host's range that holds <paramref name="stackId"/> (in the leaders' half, or the other), or -1.</summary>
    public int OwnSlotOf(string stackId, bool leads = false)
    {
        for (var i = _ownFirst; i <= _ownLast; i++)
        {
            if (_stacks[i] == stackId && IsLeaders(i) == leads)
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>An empty slot of this host's range (in the leaders' half, or the other), or -1.</summary>
    public int FreeOwnSlot(bool leads = false)
    {
        for (var i = _ownFirst; i <= _ownLast; i++)
        {
            if (_instances[i] is null && IsLeaders(i) == leads)
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>
    /// An empty slot other than the fallback, searched from the one after the transmit slot, outside the leaders' halves
    /// first (<see cref="IsLeaders"/>: a path's transmit slot there would read to the peer as a leader's choice, and a
    /// control plane's reconciler would move every VM on it again); -1 when none.
    /// </summary>
    public int FreeSlot()
    {
        for (var pass = 0; pass < 2; pass++)
        {
            for (var i = 1; i < Count; i++)
            {
                var candidate = (_transmitSlot + i) % Count;
                if (_instances[candidate] is null && candidate != Fallback && IsLeaders(candidate) == (pass == 1))
                {
                    return candidate;
                }
            }
        }
        return -1;
    }

    /// <summary>
    /// Binds a VM's transmissions to <paramref name="slot"/> (-1: the transmit slot). A slot neither a VM nor the path
    /// uses any more drains until <paramref name="drainUntil"/>. Returns the VM's previous slot; throws when
    /// <paramref name="slot"/> is empty.
    /// </summary>
    public int Bind(string vmId, int slot, long drainUntil)
    {
        if (slot >= 0 && _instances[slot] is null)
        {
            throw new InvalidOperationException($"Path to '{_remoteHost}': slot {slot} is not open.");
        }
        var traffic = Traffic(vmId);
        var previous = traffic.Slot;
        traffic.Slot = slot;
        if (slot >= 0)
        {
            _drainUntil[slot] = 0;
        }
        if (previous >= 0 && previous != slot && !InUse(previous))
        {
            _drainUntil[previous] = drainUntil;
        }
        return previous;
    }

    /// <summary>The slot a VM's binding names and the stack in it; (-1, null) when it has none (or the slot was emptied).</summary>
    public (int Slot, string? Stack) BindingOf(string vmId) =>
        _vms.TryGetValue(vmId, out var traffic) && traffic.Slot >= 0 && _instances[traffic.Slot] is not null ? (traffic.Slot, _stacks[traffic.Slot]) : (-1, null);

    /// <summary>Forgets a VM; its slot drains until <paramref name="drainUntil"/> when nothing else uses it.</summary>
    public void Forget(string vmId, long drainUntil)
    {
        if (_vms.Remove(vmId, out var traffic) && traffic.Slot >= 0 && !InUse(traffic.Slot))
        {
            _drainUntil[traffic.Slot] = drainUntil;
        }
    }

    /// <summary>Moves every VM bound to a slot holding <paramref name="stackId"/> to <paramref name="to"/>; returns how many moved.</summary>
    public int RebindStack(string stackId, int to) => Rebind(from => _stacks[from] == stackId, to);

    /// <summary>Moves every VM bound to <paramref name="from"/> to <paramref name="to"/>; returns how many moved.</summary>
    public int RebindSlot(int from, int to) => Rebind(bound => bound == from, to);

    private int Rebind(Func<int, bool> moves, int to)
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

    /// <summary>Marks every slot holding <paramref name="stackId"/> that is not draining already to drain until
    /// <paramref name="drainUntil"/>; returns how many were marked.</summary>
    public int DrainStack(string stackId, long drainUntil)
    {
        var marked = 0;
        for (var i = 0; i < Count; i++)
        {
            if (_instances[i] is not null && _stacks[i] == stackId && _drainUntil[i] == 0)
            {
                _drainUntil[i] = drainUntil;
                marked++;
            }
        }
        return marked;
    }

    /// <summary>The slot a VM transmits through: its binding's, or the transmit slot when it has none (or its slot was emptied).</summary>
    public int SlotOf(VmTraffic traffic) => traffic.Slot >= 0 && _instances[traffic.Slot] is not null ? traffic.Slot : _transmitSlot;

    /// <summary>The stack and slot each VM that used the path transmits with.</summary>
    public Dictionary<string, (string? Stack, int Slot)> VmBindings() =>
        _vms.ToDictionary(v => v.Key, v => (_stacks[SlotOf(v.Value)], SlotOf(v.Value)), StringComparer.Ordinal);

    /// <summary>The VMs that used the path, with what they sent and received.</summary>
    public IReadOnlyDictionary<string, VmTraffic> Vms => _vms;

    /// <summary>A VM's traffic on the path, made when it is first seen.</summary>
    public VmTraffic Traffic(string vmId)
    {
        if (!_vms.TryGetValue(vmId, out var traffic))
        {
            _vms[vmId] = traffic = new VmTraffic();
        }
        return traffic;
    }

    /// <summary>Whether the path or a VM transmits through <paramref name="slot"/>.</summary>
    public bool InUse(int slot)
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
    /// Whether an open request from the peer asks for the instance already in <paramref name="slot"/>: the same stack,
    /// and the same open id unless this end opened the slot itself (a path-level swap both ends prepare, whose instance
    /// is adopted as the one the peer asked for). If so the slot stops draining and is the peer's instance from now on.
    /// </summary>
    public bool Unchanged(string stackId, int slot, ulong openId)
    {
        if (_stacks[slot] != stackId || (_openIds[slot] != openId && _peerOpened[slot]))
        {
            return false;
        }
        _drainUntil[slot] = 0;
        (_openIds[slot], _peerOpened[slot]) = (openId, true);
        return true;
    }

    /// <summary>Whether this end's open of <paramref name="slot"/> with <paramref name="stackId"/> for a swap may adopt the
    /// instance the peer had this end open there first (the same stack, not draining, not transmitting).</summary>
    public bool CanAdopt(int slot, string stackId) =>
        _peerOpened[slot] && _drainUntil[slot] == 0 && slot != _transmitSlot && _stacks[slot] == stackId;

    /// <summary>
    /// Puts <paramref name="instance"/> into <paramref name="slot"/> (which the caller emptied or found empty), receiving
    /// at once; <paramref name="peerOpened"/> says the peer asked for it with <paramref name="openId"/>.
    /// </summary>
    public void Place(int slot, IStack instance, string stackId, bool encrypts, ulong openId, bool peerOpened, long now)
    {
        _instances[slot] = instance;
        Volatile.Write(ref _stacks[slot], stackId);
        _encrypts[slot] = encrypts;
        _drainUntil[slot] = 0;
        _timerFaulted[slot] = false;
        (_openIds[slot], _peerOpened[slot]) = (openId, peerOpened);
        _receivedAt[slot] = now;
    }

    /// <summary>Empties <paramref name="slot"/>; returns its instance and stack id (the caller disposes of the instance).</summary>
    public (IStack Instance, string StackId) Remove(int slot)
    {
        var removed = (_instances[slot]!, _stacks[slot]!);
        _instances[slot] = null;
        Volatile.Write(ref _stacks[slot], null);
        _drainUntil[slot] = 0;
        _timerFaulted[slot] = false;
        (_openIds[slot], _peerOpened[slot]) = (0, false);
        _encrypts[slot] = false;
        return removed;
    }

    /// <summary>
    /// Moves transmission to <paramref name="slot"/> (which must hold an instance); the previous slot drains until
    /// <paramref name="drainUntil"/>. A <paramref name="fallback"/> keeps <see cref="SealedPath"/> as it was. Returns the
    /// previous slot.
    /// </summary>
    public int Commit(int slot, long drainUntil, bool fallback)
    {
        if (_instances[slot] is null)
        {
            throw new InvalidOperationException($"Path to '{_remoteHost}': slot {slot} was not prepared.");
        }
        if (!fallback)
        {
            SealedPath = _encrypts[slot];
        }
        var previous = _transmitSlot;
        if (previous != slot)
        {
            _drainUntil[previous] = drainUntil;
            Volatile.Write(ref _transmitSlot, slot);
        }
        return previous;
    }

    /// <summary>
    /// The slots to close at <paramref name="now"/>: those drained whose time has come, and those the peer opened that
    /// received nothing for <paramref name="peerIdle"/> nanoseconds (idle); neither kind while something transmits on it.
    /// </summary>
    public List<(int Slot, bool Idle)> Due(long now, long peerIdle)
    {
        var due = new List<(int, bool)>();
        for (var i = 0; i < Count; i++)
        {
            if (_instances[i] is null || InUse(i))
            {
                continue;
            }
            if (_drainUntil[i] != 0 && _drainUntil[i] <= now)
            {
                due.Add((i, false));
            }
            else if (_peerOpened[i] && _drainUntil[i] == 0 && now - _receivedAt[i] > peerIdle)
            {
                due.Add((i, true));
            }
        }
        return due;
    }

    /// <summary>Whether a slot is one to send new frames through: not draining, its timers not faulted.</summary>
    public bool Sendable(int slot) => _drainUntil[slot] == 0 && !_timerFaulted[slot];

    /// <summary>
    /// A slot whose stack encrypts, which is neither draining nor timer-faulted and whose stack <paramref name="usable"/>
    /// admits (not quarantined or withdrawn); one this end opened before one the peer opened. Null when none.
    /// </summary>
    public int? EncryptingSlot(Func<string, bool> usable)
    {
        int? peers = null;
        for (var slot = 0; slot < Count; slot++)
        {
            if (_encrypts[slot] && _instances[slot] is not null && _drainUntil[slot] == 0 && !_timerFaulted[slot] && usable(_stacks[slot]!))
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

    /// <summary>The occupied slots, in order.</summary>
    public IEnumerable<int> Occupied()
    {
        for (var i = 0; i < Count; i++)
        {
            if (_instances[i] is not null)
            {
                yield return i;
            }
        }
    }

    /// <summary>The stack ids of every occupied slot.</summary>
    public List<string> Stacks() => [.. _stacks.OfType<string>()];
}

/// <summary>A VM's use of a path: its binding's slot (-1: the transmit slot), what it sent, and its TCP meter.</summary>
internal sealed class VmTraffic
{
    public int Slot = -1;
    public long Frames;
    public long Bytes;
    public long ReportedFrames;
    public long ReportedBytes;
    public readonly TcpMeter Tcp = new();

    /// <summary>The slot each remote VM's frames to this VM last arrived on, and when (a slot the peer opened only).</summary>
    private Dictionary<MacAddress, (int Slot, long At)>? _heard;

    /// <summary>Notes that <paramref name="remote"/>'s frame to this VM arrived on <paramref name="slot"/> (under the path's gate).</summary>
    public void Heard(MacAddress remote, int slot, long now)
    {
        _heard ??= [];
        if (_heard.Count >= MaxHeard && !_heard.ContainsKey(remote))
        {
            // A VM that talks to more VMs behind one host than this follows the busiest again as they speak.
            _heard.Clear();
        }
        _heard[remote] = (slot, now);
    }

    /// <summary>The slot <paramref name="remote"/>'s frames arrived on within <paramref name="window"/> of <paramref name="now"/>, else -1.</summary>
    public int HeardOn(MacAddress remote, long now, long window) =>
        _heard is not null && _heard.TryGetValue(remote, out var heard) && now - heard.At <= window ? heard.Slot : -1;

    private const int MaxHeard = 256;
}
