using System.Collections.Concurrent;
using Fabric.Agent.Stacks;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent.Switching;

/// <summary>
/// What the switch does with a stack that misbehaves or may no longer run: one that throws, hangs in a call or in its
/// Dispose, or fails to start is quarantined (no new binding takes it anywhere), one withdrawn from the signed targets
/// is refused from then on; either way every path and VM binding on it moves to the path's fallback slot — dropping,
/// never clearing, what must stay encrypted — and the agent and every other binding keep working.
/// </summary>
internal sealed class Quarantine(SwitchState state)
{
    /// <summary>How long a call into a stack may run before the stack counts as hung.</summary>
    public const long HangThresholdNanoseconds = 1_000_000_000;

    /// <summary>
    /// How long an instance's Dispose may run before its stack is quarantined. Longer than a call on the data path may
    /// take (1 s): a Dispose only holds a pool thread, and a plug-in may flush or join a worker there; a busy machine
    /// must not cost a healthy stack its place.
    /// </summary>
    public static readonly TimeSpan DisposeHangLimit = TimeSpan.FromSeconds(5);

    private readonly ConcurrentDictionary<(RemotePath, string), bool> _saidNoFallback = new();
    private readonly ConcurrentDictionary<RemotePath, bool> _hung = new();

    /// <summary>
    /// A call into <paramref name="path"/>'s stack has not returned for over <see cref="HangThresholdNanoseconds"/>: its
    /// stack is quarantined and moved off every path (once per path). Returns the hung stack when it was newly found, so
    /// the caller replaces the path, else null.
    /// </summary>
    public string? Hung(RemotePath path)
    {
        if (path.InCallStack is not { } hung || !_hung.TryAdd(path, true))
        {
            return null;
        }
        // Reported before it takes effect, so whoever sees the quarantine also finds the event.
        state.Report($"stack {hung} quarantined: hung in a call on the path to {path.Spec.HostId} (slot {path.InCallSlot})", LogLevel.Error);
        state.StackHost.Quarantine(hung, $"a call on the path to {path.Spec.HostId} has not returned for over {HangThresholdNanoseconds / 1_000_000} ms");
        MoveOff(hung, drainSlots: false);
        return hung;
    }

    /// <summary>Stacks an instance of which has been in Dispose for over <see cref="DisposeHangLimit"/>: every instance of
    /// them would hold a thread when it closes, so no more are made, and their traffic moves off.</summary>
    public void DisposeHangs()
    {
        foreach (var hung in state.Disposer.NewlyHung(DisposeHangLimit))
        {
            state.Report($"stack {hung} quarantined: an instance's Dispose has not returned for over {DisposeHangLimit.TotalSeconds:0} s", LogLevel.Error);
            state.StackHost.Quarantine(hung, $"an instance's Dispose has not returned for over {DisposeHangLimit.TotalSeconds:0} s");
            MoveOff(hung, drainSlots: false);
        }
    }

    /// <summary>Withdrawn stacks still loaded move off again every round: an operation under way when one was withdrawn
    /// (a binding whose peer answered late, a swap committed after) may have put it back in use.</summary>
    public void MoveOffWithdrawn()
    {
        foreach (var withdrawn in state.StackHost.Entries().Where(e => e.Withdrawn))
        {
            MoveOff(withdrawn.Key, drainSlots: true);
        }
    }

    /// <summary>A stack whose factory failed (it would fail for every path): quarantined.</summary>
    public void Unstartable(StackStartException e)
    {
        state.Report($"stack {e.StackId} quarantined: {e.Message}", LogLevel.Error);
        state.StackHost.Quarantine(e.StackId, e.Message);
    }

    /// <summary>A signed version that will not load by its own fault: it would fail for every binding (and nothing holds it yet).</summary>
    public void Unloadable(StackLoadException e)
    {
        state.Report($"stack {e.Key} quarantined: {e.Message}", LogLevel.Error);
        state.StackHost.Quarantine(e.Key, e.Message);
    }

    /// <summary>
    /// Moves every path transmitting through <paramref name="stackId"/>, and every VM binding on it, to the path's
    /// fallback slot. With <paramref name="drainSlots"/> every slot holding it, on any path, drains and closes (which
    /// releases it, so it can unload); a quarantined stack's slots are left as they are.
    /// </summary>
    public void MoveOff(string stackId, bool drainSlots)
    {
        var encrypts = state.StackHost.Describe(stackId)?.Encrypts == true;
        var drainUntil = state.DrainDeadline();
        foreach (var path in state.Paths.Values)
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
                state.Report($"{stackId} could not be moved off the path to {path.Spec.HostId}: {e.Message}");
            }
        }
    }

    private void MoveOff(RemotePath path, string stackId, bool encrypts, bool drainSlots, long drainUntil)
    {
        var fallback = path.StackIn(RemotePath.FallbackSlot);
        if (fallback is null || fallback == stackId)
        {
            // Said once per path and stack: housekeeping comes back here every round while a withdrawn stack is loaded.
            if (path.TransmitKey == stackId && _saidNoFallback.TryAdd((path, stackId), true))
            {
                state.Report($"path to {path.Spec.HostId} has no other stack to fall back to; it keeps {stackId} until a binding moves it");
            }
            return;
        }
        if (path.TransmitKey == stackId)
        {
            path.Commit(RemotePath.FallbackSlot, drainUntil, fallback: true);
            state.Report($"path to {path.Spec.HostId} falls back to {fallback} (slot {RemotePath.FallbackSlot})"
                + (encrypts ? $"; frames that must stay encrypted are dropped until a stack that encrypts carries them" : ""));
        }
        if (path.RebindStack(stackId, RemotePath.FallbackSlot) is > 0 and var moved)
        {
            state.Report($"{moved} VM binding(s) on the path to {path.Spec.HostId} fall back to {fallback} (slot {RemotePath.FallbackSlot})"
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
    /// Bindings the control plane pushes for it are refused from now on. <paramref name="stack"/> names one version (its
    /// key) or a stack id (every registered version of it). Returns false when nothing of it was registered.
    /// </summary>
    public bool Withdraw(string stack, string reason)
    {
        IReadOnlyList<string> keys = StackKey.IsVersioned(stack) ? [stack] : state.StackHost.Registered.Where(k => StackKey.IdOf(k) == stack).ToList();
        var any = false;
        foreach (var key in keys.Where(k => state.StackHost.Withdraw(k, reason)))
        {
            state.Report($"stack {key} withdrawn: {reason}");
            MoveOff(key, drainSlots: true);
            any = true;
        }
        return any;
    }

    /// <summary>
    /// A stack threw: it is quarantined (no new bindings anywhere), every path transmitting through it moves to its
    /// fallback slot, and an instance that threw while receiving is retired at once (datagrams for its slot are then
    /// counted as unknown-slot drops until the peer moves too). The agent and every other binding keep working.
    /// </summary>
    public void HandleFault(RemotePath faulted, int slot, string stackId, bool transmitting, Exception fault)
    {
        state.Report($"stack {stackId} quarantined: {(transmitting ? "transmit" : "receive")} on the path to {faulted.Spec.HostId} (slot {slot}) threw {fault.GetType().Name}: {fault.Message}", LogLevel.Error);
        state.StackHost.Quarantine(stackId, $"{(transmitting ? "transmit" : "receive")} on the path to {faulted.Spec.HostId} threw {fault.GetType().Name}: {fault.Message}");
        MoveOff(stackId, drainSlots: false);
        if (!transmitting && faulted.TransmitSlot != slot && faulted.Retire(slot) is { } retired)
        {
            state.StackHost.Release(retired);
        }
    }
}
