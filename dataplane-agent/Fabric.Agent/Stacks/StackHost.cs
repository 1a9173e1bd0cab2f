using System.Runtime.CompilerServices;
using Fabric.Stacks;

namespace Fabric.Agent.Stacks;

/// <summary>A stack version in the host: bindings reference it; it unloads when none does and its drain time has passed.</summary>
public sealed record StackHostEntry(string Id, string Version, string AssemblyPath, int Bindings, bool Loaded, DateTime? IdleSince, bool Withdrawn = false);

/// <summary>
/// Owns the loaded stack plug-ins. <see cref="Acquire"/> loads a stack on first use (one collectible context per
/// stack version) and counts a binding; <see cref="Release"/> uncounts it. A stack with no binding is unloaded by
/// <see cref="Collect"/> once it has been idle for the drain time, and its context is then collectable — nothing of
/// the plug-in stays reachable from the host. Thread-safe.
/// </summary>
public sealed class StackHost
{
    private readonly object _gate = new();
    private readonly Dictionary<string, string> _paths = new(StringComparer.Ordinal);
    private readonly Dictionary<string, IReadOnlyDictionary<string, string>> _digests = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Slot> _loaded = new(StringComparer.Ordinal);
    private readonly List<WeakReference> _unloading = [];
    private readonly Dictionary<string, string> _quarantined = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _withdrawn = new(StringComparer.Ordinal);
    private readonly TimeSpan _drain;
    private readonly TimeProvider _time;

    private sealed class Slot(LoadedStack stack)
    {
        public LoadedStack? Stack = stack;
        public int Bindings;
        public DateTime? IdleSince;
    }

    /// <param name="drain">How long an unused stack stays loaded (its old slots may still be receiving).</param>
    /// <param name="time">The clock (the agent's; tests pass a fake one); null: the system's.</param>
    public StackHost(TimeSpan drain, TimeProvider? time = null)
    {
        _drain = drain;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>Makes a plug-in available: loads it once to learn its id and version, then leaves it idle.</summary>
    /// <param name="assemblyPath">The plug-in's entry assembly.</param>
    /// <param name="signedId">The id its signed target publishes it under: a plug-in whose factory declares another id is refused (it would take that stack's place).</param>
    /// <param name="digests">For a signed plug-in, its package's file digests: every load (the first and each after an idle unload) loads only bytes that match them.</param>
    public StackDescription Register(string assemblyPath, string? signedId = null, IReadOnlyDictionary<string, string>? digests = null)
    {
        var stack = StackLoader.Load(assemblyPath, digests);
        var id = stack.Description.Id;
        lock (_gate)
        {
            var refusal = signedId is not null && signedId != id ? $"'{assemblyPath}' is signed as stack '{signedId}' but its factory declares '{id}'"
                : _paths.TryGetValue(id, out var existing) && existing != assemblyPath ? $"Stack '{id}' is registered from '{existing}'; '{assemblyPath}' declares the same id."
                : _loaded.ContainsKey(id) && !_paths.ContainsKey(id) ? $"Stack '{id}' was withdrawn and is still draining; '{assemblyPath}' can be registered once it has unloaded."
                : null;
            if (refusal is not null)
            {
                if (stack.Context.Target is System.Runtime.Loader.AssemblyLoadContext refused)
                {
                    refused.Unload();
                }
                throw new InvalidOperationException(refusal);
            }
            _paths[id] = assemblyPath;
            if (digests is null)
            {
                _digests.Remove(id);
            }
            else
            {
                _digests[id] = digests;
            }
            _withdrawn.Remove(id);
            if (!_loaded.ContainsKey(id))
            {
                _loaded[id] = new Slot(stack) { IdleSince = _time.GetUtcNow().UtcDateTime };
            }
            else if (stack.Context.Target is System.Runtime.Loader.AssemblyLoadContext duplicate)
            {
                // Already loaded: the copy loaded just to read its description goes away at once.
                duplicate.Unload();
            }
            return stack.Description;
        }
    }

    /// <summary>The registered stack ids.</summary>
    public IReadOnlyCollection<string> Registered
    {
        get
        {
            lock (_gate)
            {
                return [.. _paths.Keys];
            }
        }
    }

    /// <summary>What a registered (or withdrawn but still loaded) stack declares, loading it if needed; null when the id is unknown.</summary>
    public StackDescription? Describe(string id)
    {
        lock (_gate)
        {
            return _loaded.TryGetValue(id, out var slot) ? slot.Stack!.Description : _paths.ContainsKey(id) ? LoadLocked(id).Description : null;
        }
    }

    /// <summary>Whether a plug-in declaring <paramref name="id"/> could be registered now (neither registered nor a withdrawn one still draining).</summary>
    public bool CanRegister(string id)
    {
        lock (_gate)
        {
            return !_paths.ContainsKey(id) && !_loaded.ContainsKey(id);
        }
    }

    /// <summary>
    /// Takes <paramref name="id"/> out of the registered stacks (it was withdrawn from the signed targets): no new
    /// binding can acquire it, the switch moves existing ones off it, and it unloads like any idle stack once its last
    /// binding is released and its drain time has passed. Returns false when it was not registered.
    /// </summary>
    public bool Withdraw(string id, string reason)
    {
        lock (_gate)
        {
            if (!_paths.Remove(id))
            {
                return false;
            }
            _digests.Remove(id);
            _withdrawn[id] = reason;
            if (_loaded.TryGetValue(id, out var slot) && slot.Bindings == 0)
            {
                slot.IdleSince ??= _time.GetUtcNow().UtcDateTime;
            }
            return true;
        }
    }

    /// <summary>Stacks withdrawn from the signed targets since this host started, and why.</summary>
    public IReadOnlyDictionary<string, string> Withdrawn
    {
        get
        {
            lock (_gate)
            {
                return new Dictionary<string, string>(_withdrawn);
            }
        }
    }

    /// <summary>Counts a binding of <paramref name="id"/> and returns the stack, loading it if it was unloaded.</summary>
    public LoadedStack Acquire(string id)
    {
        lock (_gate)
        {
            if (_withdrawn.TryGetValue(id, out var withdrawn))
            {
                throw new InvalidOperationException($"Stack '{id}' is withdrawn: {withdrawn}.");
            }
            if (!_paths.ContainsKey(id))
            {
                throw new InvalidOperationException($"Stack '{id}' is not available (available: {string.Join(", ", _paths.Keys)}).");
            }
            if (_quarantined.TryGetValue(id, out var reason))
            {
                throw new InvalidOperationException($"Stack '{id}' is quarantined: {reason}.");
            }
            var stack = LoadLocked(id);
            var slot = _loaded[id];
            slot.Bindings++;
            slot.IdleSince = null;
            return stack;
        }
    }

    /// <summary>Uncounts a binding; the stack starts draining when it was the last.</summary>
    public void Release(string id)
    {
        lock (_gate)
        {
            if (_loaded.TryGetValue(id, out var slot) && slot.Bindings > 0 && --slot.Bindings == 0)
            {
                slot.IdleSince = _time.GetUtcNow().UtcDateTime;
            }
        }
    }

    /// <summary>Refuses new bindings of <paramref name="id"/> from now on; existing ones are moved off it by the switch.</summary>
    public void Quarantine(string id, string reason)
    {
        lock (_gate)
        {
            _quarantined.TryAdd(id, reason);
        }
    }

    /// <summary>True when <paramref name="id"/> is neither quarantined nor withdrawn (cheaper than reading both lists).</summary>
    public bool IsUsable(string id)
    {
        lock (_gate)
        {
            return !_quarantined.ContainsKey(id) && !_withdrawn.ContainsKey(id);
        }
    }

    /// <summary>Quarantined stacks and why.</summary>
    public IReadOnlyDictionary<string, string> Quarantined
    {
        get
        {
            lock (_gate)
            {
                return new Dictionary<string, string>(_quarantined);
            }
        }
    }

    /// <summary>Unloads every stack idle for longer than the drain time; returns how many were unloaded.</summary>
    public int Collect()
    {
        lock (_gate)
        {
            var now = _time.GetUtcNow().UtcDateTime;
            var unloaded = 0;
            foreach (var (id, slot) in _loaded.ToList())
            {
                if (slot.Bindings == 0 && slot.IdleSince is { } idle && now - idle >= _drain)
                {
                    Unload(slot);
                    _loaded.Remove(id);
                    unloaded++;
                }
            }
            _unloading.RemoveAll(w => !w.IsAlive);
            return unloaded;
        }
    }

    /// <summary>Load contexts asked to unload whose memory is not yet collected (0 once the GC has run and nothing leaked).</summary>
    public int UnloadingContexts
    {
        get
        {
            lock (_gate)
            {
                _unloading.RemoveAll(w => !w.IsAlive);
                return _unloading.Count;
            }
        }
    }

    /// <summary>Every registered stack with its bindings and state.</summary>
    public IReadOnlyList<StackHostEntry> Entries()
    {
        lock (_gate)
        {
            return _paths.Select(p => _loaded.TryGetValue(p.Key, out var slot)
                    ? new StackHostEntry(p.Key, slot.Stack!.Description.Version, p.Value, slot.Bindings, true, slot.IdleSince)
                    : new StackHostEntry(p.Key, "", p.Value, 0, false, null))
                .Concat(_loaded.Where(l => !_paths.ContainsKey(l.Key))
                    .Select(l => new StackHostEntry(l.Key, l.Value.Stack!.Description.Version, "", l.Value.Bindings, true, l.Value.IdleSince, Withdrawn: true)))
                .OrderBy(e => e.Id, StringComparer.Ordinal).ToList();
        }
    }

    private LoadedStack LoadLocked(string id)
    {
        if (_loaded.TryGetValue(id, out var slot))
        {
            return slot.Stack!;
        }
        LoadedStack stack;
        try
        {
            stack = StackLoader.Load(_paths[id], _digests.GetValueOrDefault(id));
        }
        catch (Exception e) when (e is IOException or InvalidDataException or BadImageFormatException or InvalidOperationException)
        {
            throw new InvalidOperationException($"Stack '{id}' could not be loaded: {e.Message}", e);
        }
        _loaded[id] = new Slot(stack) { IdleSince = _time.GetUtcNow().UtcDateTime };
        return stack;
    }

    // Kept out of line so no local of the caller's frame keeps the context alive.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Unload(Slot slot)
    {
        var context = slot.Stack!.Context;
        slot.Stack = null;
        if (context.Target is System.Runtime.Loader.AssemblyLoadContext alc)
        {
            alc.Unload();
        }
        _unloading.Add(context);
    }
}
