using System.Collections.Concurrent;
using Fabric.Agent.Stacks;
using Fabric.Stacks.Loading;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent.Switching;

/// <summary>
/// The slots two ends open for each other, and the VM bindings that use them. A binding opens its stack in a slot of
/// this host's range and asks the peer to open the same slot (open → opened or refused, resent until answered); the
/// peer's requests are checked against its range and this host's stacks; a refusal of a slot in use moves what it
/// carried to the fallback; a slot the peer sends on that this end lacks is asked for again. Frames to a confidential VM
/// that find no slot that encrypts get one opened in the background. The control messages travel as the agents' own
/// datagrams of the path (<see cref="ControlMessages"/>), authenticated where the host pair has an overlay key.
/// </summary>
internal sealed class SlotNegotiation(SwitchState state, Quarantine quarantine)
{
    private readonly ConcurrentDictionary<(string Host, int Slot), TaskCompletionSource<string?>> _opening = new();

    /// <summary>
    /// Binds a VM's transmissions to <paramref name="hostId"/> to <paramref name="stack"/>, hitlessly: the stack is
    /// opened in a slot of this host's range (or the one already open with it is reused), the peer is asked to open the
    /// same slot and must confirm (prepare on both ends), then the VM's next frame goes through it (commit); its previous
    /// slot drains. The path's default stack needs no slot of its own. Returns null when bound, else why not — and then
    /// the VM's binding is what it was. Safe to call again with the same arguments (nothing changes).
    /// <paramref name="stack"/> is a stack id or one version's key (<see cref="StackKey"/>): an id binds the newest
    /// usable version the peer also runs — tried newest first; a peer that refuses one (it does not have it yet, or
    /// quarantined it) is asked for the next — and a VM already on an older version of the id moves to a newer one the
    /// peer accepts, else stays where it is.
    /// </summary>
    public async Task<string?> BindAsync(string vmId, string hostId, string stack, CancellationToken cancellationToken = default)
    {
        try
        {
            var candidates = state.StackHost.Candidates(stack);
            if (candidates.Count == 0)
            {
                // Unknown, quarantined or withdrawn: said by the checks below for the version concerned.
                return (await BindVmCoreAsync(vmId, hostId, state.StackHost.Resolve(stack) ?? stack, cancellationToken).ConfigureAwait(false)).Error;
            }
            // Best first: a peer's refusal tries the next one; the one the VM is on already binds at once (nothing changes).
            string? first = null;
            foreach (var candidate in candidates)
            {
                var (error, peerRefused) = await BindVmCoreAsync(vmId, hostId, candidate, cancellationToken).ConfigureAwait(false);
                if (error is null)
                {
                    return null;
                }
                first ??= error;
                if (!peerRefused)
                {
                    // Not the peer's answer (no free slot, a confidential VM and a stack that does not encrypt): an older
                    // version would meet it too.
                    break;
                }
            }
            return first;
        }
        catch (PathStuckException e)
        {
            // The watchdog gives that host a fresh path; the binding is applied again then.
            return e.Message;
        }
    }

    private async Task<(string? Error, bool PeerRefused)> BindVmCoreAsync(string vmId, string hostId, string stackId, CancellationToken cancellationToken)
    {
        if (!state.Paths.TryGetValue(hostId, out var path))
        {
            return ($"no path to host '{hostId}'", false);
        }
        if (state.Vms.TryGetValue(vmId, out var vm) && vm.Sealed && state.StackHost.Describe(stackId)?.Encrypts != true)
        {
            // Whoever asks (the control plane included): a binding that would carry a confidential VM in clear is refused.
            return ($"VM '{vmId}' must be encrypted (its policy is confidential) and stack '{stackId}' does not encrypt", false);
        }
        // A VM that leads sends through a slot of this host's leaders' half, which the peer's followers answer on, even on the
        // path's default stack; no other VM's frames go through those.
        var leads = vm?.Role == VmRole.Leads;
        if (stackId == path.StackIn(path.TransmitSlot) && !leads)
        {
            path.BindVm(vmId, -1, state.DrainDeadline());
            return (null, false);
        }
        if (path.BindingOf(vmId) is var (boundSlot, boundStack) && boundStack == stackId && path.IsOwnLeadersSlot(boundSlot) == leads)
        {
            // (A leader moved to the fallback slot, by a quarantine or a refusal, is bound again in a leaders' slot; a VM
            // that no longer leads leaves one.)
            return (null, false);
        }
        var description = state.StackHost.Describe(stackId);
        if (description is null)
        {
            return ($"stack '{stackId}' is not available on this host (available: {string.Join(", ", state.StackHost.Registered)})", false);
        }
        if (state.StackHost.Quarantined.TryGetValue(stackId, out var why))
        {
            return ($"stack '{stackId}' is quarantined on this host: {why}", false);
        }
        if (state.StackHost.Withdrawn.TryGetValue(stackId, out var withdrawn))
        {
            return ($"stack '{stackId}' is withdrawn on this host: {withdrawn}", false);
        }
        if (state.StackHost.HeldOut(stackId) is { } held)
        {
            return ($"stack '{stackId}' is not run on this host: {held}", false);
        }
        if (description.UnderlayFamily != state.StackHost.Describe(path.StackIn(path.TransmitSlot) ?? path.Spec.Stack)?.UnderlayFamily)
        {
            return ($"stack '{stackId}' runs over another underlay family than the path to '{hostId}'", false);
        }
        var slot = path.OwnSlotOf(stackId, leads);
        var opened = false;
        if (slot < 0)
        {
            slot = path.FreeOwnSlot(leads);
            if (slot < 0)
            {
                return ($"no free slot on the path to '{hostId}'", false);
            }
            // A VM moving between two versions of one stack hands what the old instance measured of the path to the new one.
            var previous = boundSlot >= 0 && boundStack is not null && boundStack != stackId && StackKey.IdOf(boundStack) == StackKey.IdOf(stackId)
                ? path.ExportState(boundSlot) : null;
            try
            {
                OpenOwnSlot(path, stackId, slot, previous: previous);
            }
            catch (Exception e) when (e is StackStartException or StackLoadException)
            {
                return (e.Message, false);
            }
            opened = true;
        }
        // The peer confirms even a slot it has already (idempotent): a restarted peer may have lost it.
        var reply = await AskPeerToOpenAsync(path, slot, stackId, cancellationToken).ConfigureAwait(false);
        if (reply is not null)
        {
            if (opened && path.Close(slot) is { } closed)
            {
                state.StackHost.Release(closed);
            }
            return ($"host '{hostId}' did not open {stackId} in slot {slot}: {reply}", true);
        }
        path.BindVm(vmId, slot, state.DrainDeadline());
        return (null, false);
    }

    /// <summary>
    /// Moves the VMs bound to <paramref name="slot"/> of this host's range on <paramref name="path"/> to a fresh instance of
    /// the same stack version in another slot, hitlessly (open, the peer confirms, then each VM's next frame goes there; the
    /// old slot drains): a secure slot made before the pair's keys rotated keeps the session keys it derived from the old
    /// path key, and a fresh one derives them from the new. Returns null when done (or nothing was bound there), else why not.
    /// </summary>
    public async Task<string?> RenewSlotAsync(RemotePath path, int slot, CancellationToken cancellationToken = default)
    {
        var bound = path.VmBindingKeys().Where(b => b.Value.Slot == slot && b.Value.Stack is not null).ToList();
        if (bound.Count == 0 || !path.IsOwnSlot(slot))
        {
            return null;
        }
        var stackKey = bound[0].Value.Stack!;
        var fresh = path.FreeOwnSlot(path.IsOwnLeadersSlot(slot));
        if (fresh < 0)
        {
            return $"no free slot on the path to '{path.Spec.HostId}'";
        }
        try
        {
            OpenOwnSlot(path, stackKey, fresh);
        }
        catch (Exception e) when (e is StackStartException or StackLoadException)
        {
            return e.Message;
        }
        if (await AskPeerToOpenAsync(path, fresh, stackKey, cancellationToken).ConfigureAwait(false) is { } refused)
        {
            if (path.Close(fresh) is { } closed)
            {
                state.StackHost.Release(closed);
            }
            return $"host '{path.Spec.HostId}' did not open {stackKey} in slot {fresh}: {refused}";
        }
        // Only the VMs still there: one the control plane moved meanwhile stays where it went.
        var now = path.VmBindingKeys();
        foreach (var (vm, _) in bound.Where(b => now.TryGetValue(b.Key, out var still) && still.Slot == slot))
        {
            path.BindVm(vm, fresh, state.DrainDeadline());
        }
        return null;
    }

    /// <summary>
    /// Opens a slot on this end with a new instance of <paramref name="stackId"/>. Nothing stays acquired when it fails
    /// (or when the slot was adopted: it is already counted), and a stack whose factory throws is quarantined (it would
    /// throw for every path) before the error goes on.
    /// </summary>
    public void OpenOwnSlot(RemotePath path, string stackId, int slot, bool adoptPeerOpened = false, Fabric.Stacks.StackState? previous = null)
    {
        var stack = Acquire(stackId);
        try
        {
            if (!path.Open(stack, slot, state.HostId, adoptPeerOpened, previous))
            {
                state.StackHost.Release(stackId);
            }
        }
        catch (Exception e)
        {
            state.StackHost.Release(stackId);
            if (e is StackStartException start)
            {
                quarantine.Unstartable(start);
            }
            throw;
        }
    }

    /// <summary>Takes a binding of the version; one that will not load by its own fault is quarantined (and said) before the error goes on.</summary>
    private LoadedStack Acquire(string stackId)
    {
        try
        {
            return state.StackHost.Acquire(stackId);
        }
        catch (StackLoadException e) when (e.VersionsFault)
        {
            quarantine.Unloadable(e);
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
    public void OpenEncryptingSlot(RemotePath path)
    {
        var now = state.Clock();
        // Ours when no attempt was under way (the entry is the one just added), or when the one under way is 10 s old and
        // this call is the one that replaced its time.
        var since = _openingEncrypting.GetOrAdd(path, now);
        if (since != now && (now - since < 10_000_000_000L || !_openingEncrypting.TryUpdate(path, now, since)))
        {
            return;
        }
        _ = Task.Run(async () =>
        {
            try
            {
                var family = state.StackHost.Describe(path.StackIn(path.TransmitSlot) ?? path.Spec.Stack)?.UnderlayFamily;
                // Of the stacks that encrypt over the path's family, one the path has settings (keys) for, "secure" first.
                // Each id's newest usable version.
                var stack = state.StackHost.UsableIds.Select(id => state.StackHost.Resolve(id)!)
                    .Where(key => state.StackHost.Describe(key) is { Encrypts: true } d && d.UnderlayFamily == family)
                    .OrderByDescending(key => path.Spec.SettingsOf(StackKey.IdOf(key)).Count > 0).ThenByDescending(key => StackKey.IdOf(key) == "secure")
                    .ThenBy(key => key, StringComparer.Ordinal)
                    .FirstOrDefault();
                if (stack is null)
                {
                    state.Report($"frames to a confidential VM on {path.Spec.HostId} are dropped: no stack that encrypts is available on this host");
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
                        state.StackHost.Release(closed);
                    }
                    state.Report($"frames to a confidential VM on {path.Spec.HostId} are dropped: {path.Spec.HostId} did not open {stack} in slot {slot}: {refused}");
                    return;
                }
                state.Report($"{stack} opened in slot {slot} on the path to {path.Spec.HostId} for frames to its confidential VMs", LogLevel.Information);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                state.Report($"frames to a confidential VM on {path.Spec.HostId} are dropped: a slot that encrypts could not be opened: {e.Message}");
            }
            finally
            {
                _openingEncrypting.TryRemove(KeyValuePair.Create(path, now));
            }
        });
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
                var done = await Task.WhenAny(pending.Task, Task.Delay(TimeSpan.FromMilliseconds(100), state.Options.Time, cancellationToken)).ConfigureAwait(false);
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
            || path.StackIn(RemotePath.FallbackSlot) is not { } fallback || state.StackHost.Describe(stack)?.Encrypts == true)
        {
            return;
        }
        var drainUntil = state.DrainDeadline();
        var moved = path.RebindSlot(slot, RemotePath.FallbackSlot);
        if (path.TransmitSlot == slot)
        {
            path.Commit(RemotePath.FallbackSlot, drainUntil, fallback: true);
            moved++;
        }
        if (moved > 0)
        {
            state.Report($"host {path.Spec.HostId} refused slot {slot} ({stack}): {reason}; what it carried falls back to {fallback} (slot {RemotePath.FallbackSlot})");
        }
    }

    /// <summary>An agent control message from a peer (on the underlay thread; what it sends is flushed after the batch).</summary>
    public void HandleControl(RemotePath path, byte[] message)
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
                    state.StackHost.Release(closed);
                }
                break;
            case ControlMessages.Unknown:
                if (path.IsOwnSlot(slot) && path.StackIn(slot) is { } stack)
                {
                    state.Report($"host {path.Spec.HostId} does not have slot {slot} ({stack}): asking it to open it again");
                    path.SendControl(ControlMessages.MakeOpen(slot, stack, path.OpenIdOf(slot)));
                }
                break;
            default:
                path.Counters.Drop(DropReason.Malformed);
                break;
        }
    }

    private byte[] OpenForPeer(RemotePath path, int slot, string requested, ulong openId)
    {
        if (!path.IsPeerSlot(slot))
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"slot {slot} is not in {path.Spec.HostId}'s range on this path");
        }
        // The peer names the version it opened (a bare id, from an agent that names none: this host's newest usable one).
        var stackId = state.StackHost.Resolve(requested) ?? requested;
        var description = state.StackHost.Describe(stackId);
        if (description is null)
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is not available on {state.HostId}");
        }
        if (state.StackHost.Quarantined.TryGetValue(stackId, out var why))
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is quarantined on {state.HostId}: {why}");
        }
        if (state.StackHost.Withdrawn.TryGetValue(stackId, out var withdrawn))
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is withdrawn on {state.HostId}: {withdrawn}");
        }
        if (state.StackHost.HeldOut(stackId) is { } held)
        {
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{stackId}' is not run on {state.HostId}: {held}");
        }
        LoadedStack stack;
        try
        {
            stack = Acquire(stackId);
        }
        catch (StackLoadException e)
        {
            // The peer hears that, not this host's files and digests.
            return ControlMessages.Make(ControlMessages.Refused, slot, $"stack '{e.Key}' could not be loaded on {state.HostId}{(e.VersionsFault ? " (quarantined)" : "")}");
        }
        string? replaced;
        bool unchanged;
        try
        {
            replaced = path.OpenForPeer(stack, slot, state.HostId, openId, out unchanged);
        }
        catch (StackStartException e)
        {
            state.StackHost.Release(stackId);
            quarantine.Unstartable(e);
            return ControlMessages.Make(ControlMessages.Refused, slot, e.Message);
        }
        catch (InvalidOperationException e) when (e is PathStuckException or PathClosedException)
        {
            // Nothing was opened: the count taken for it goes (the watchdog replaces a stuck path; a closed one is gone).
            state.StackHost.Release(stackId);
            throw;
        }
        if (unchanged || replaced is not null)
        {
            // Already counted once for this slot (unchanged), or the replaced stack's count goes.
            state.StackHost.Release(unchanged ? stackId : replaced!);
        }
        return ControlMessages.Make(ControlMessages.Opened, slot, stackId);
    }
}
