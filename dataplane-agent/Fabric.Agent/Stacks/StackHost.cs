using System.Runtime.CompilerServices;
using Fabric.Stacks;
using Fabric.Stacks.Loading;

namespace Fabric.Agent.Stacks;

/// <summary>A stack version in the host: bindings reference it; it unloads when none does and its drain time has passed.</summary>
public sealed record StackHostEntry(string Id, string Version, string AssemblyPath, int Bindings, bool Loaded, DateTime? IdleSince, bool Withdrawn = false)
{
    /// <summary>How many times this host has loaded, or tried to load, the version since the agent started (0: none of its code has run here).</summary>
    public int Loads { get; init; }

    /// <summary>The version's key (<see cref="StackKey"/>).</summary>
    public string Key => StackKey.Of(Id, Version);
}

/// <summary>
/// Owns the loaded stack plug-ins, one collectible context per stack <em>version</em>: several versions of one stack id
/// may be registered side by side (<see cref="StackKey"/> names each), so a path can move from one to another hitlessly
/// like between any two stacks. <see cref="Acquire"/> loads a version on first use and counts a binding; a bare id
/// acquires the id's newest usable version. <see cref="Release"/> uncounts it. A version with no binding is unloaded by
/// <see cref="Collect"/> once it has been idle for the drain time, and its context is then collectable — nothing of the
/// plug-in stays reachable from the host. Quarantine and withdrawal are per version, so a faulty new version leaves the
/// previous one usable. Thread-safe.
/// </summary>
public sealed class StackHost
{
    private readonly object _gate = new();
    private readonly Dictionary<string, Registration> _registered = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Slot> _loaded = new(StringComparer.Ordinal);
    private readonly List<WeakReference> _unloading = [];
    private readonly Dictionary<string, string> _quarantined = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _withdrawn = new(StringComparer.Ordinal);
    private Dictionary<string, string> _holds = new(StringComparer.Ordinal);
    private Dictionary<string, string> _releases = new(StringComparer.Ordinal);
    private long _holdsGeneration;
    private readonly TimeSpan _drain;
    private readonly TimeProvider _time;

    private sealed record Registration(string Path, IReadOnlyDictionary<string, string>? Digests, StackDescription Description, string Version);

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

    /// <summary>
    /// Makes a plug-in available. A signed one whose package says what its factory declares (<paramref name="declared"/>)
    /// is not loaded: it is loaded on its first binding (a version no binding takes never runs here), and refused then if
    /// its factory declares anything else. Any other is loaded once to learn its id and version, then left idle. Another
    /// version of an id already registered is registered beside it; the same version again from another file is refused.
    /// </summary>
    /// <param name="assemblyPath">The plug-in's entry assembly.</param>
    /// <param name="signedId">The id its signed target publishes it under: a plug-in whose factory declares another id is refused (it would take that stack's place).</param>
    /// <param name="digests">For a signed plug-in, its package's file digests: every load (the first and each after an idle unload) loads only bytes that match them.</param>
    /// <param name="signedVersion">The version its signed target publishes it as (what the host then calls it); null: the version its factory declares.</param>
    /// <param name="declared">For a signed plug-in, what its signed package says its factory declares; it is then not loaded here.</param>
    /// <returns>What the factory declares, and the version's key in this host.</returns>
    public (StackDescription Description, string Key) Register(string assemblyPath, string? signedId = null, IReadOnlyDictionary<string, string>? digests = null, string? signedVersion = null,
        StackDescription? declared = null)
    {
        if (declared is not null && digests is null)
        {
            throw new ArgumentException($"'{assemblyPath}': a declaration is taken only from a signed package (with its digests).", nameof(declared));
        }
        var stack = declared is not null ? null : StackLoader.Load(assemblyPath, digests);
        var description = stack?.Description ?? declared!;
        var version = signedVersion ?? description.Version;
        var key = StackKey.Of(description.Id, version);
        if (stack is not null)
        {
            stack.Key = key;
            Count(key);
        }
        lock (_gate)
        {
            var refusal = signedId is not null && signedId != description.Id ? $"'{assemblyPath}' is signed as stack '{signedId}' but its factory declares '{description.Id}'"
                : description.Id.Length == 0 || description.Id.Contains(StackKey.Separator) || version.Length == 0 || version.Contains(StackKey.Separator)
                    ? $"'{assemblyPath}' is stack '{description.Id}' version '{version}': an id and a version must be non-empty and without '{StackKey.Separator}'"
                : _registered.TryGetValue(key, out var existing) && existing.Path != assemblyPath ? $"Stack '{description.Id}' {version} is registered from '{existing.Path}'; '{assemblyPath}' is the same id and version."
                : _registered.Values.FirstOrDefault(r => r.Description.Id == description.Id && (r.Digests is null) != (digests is null)) is { } other
                    ? $"Stack '{description.Id}' is registered {(other.Digests is null ? "unsigned" : "from a signed package")} ('{other.Path}'); '{assemblyPath}' is {(digests is null ? "unsigned" : "signed")}: signed and unsigned copies of one stack never run side by side"
                : _loaded.ContainsKey(key) && !_registered.ContainsKey(key) ? $"Stack '{description.Id}' {version} was withdrawn and is still draining; '{assemblyPath}' can be registered once it has unloaded."
                : null;
            if (refusal is not null)
            {
                if (stack?.Context.Target is System.Runtime.Loader.AssemblyLoadContext refused)
                {
                    refused.Unload();
                }
                throw new InvalidOperationException(refusal);
            }
            _registered[key] = new Registration(assemblyPath, digests, description, version);
            _withdrawn.Remove(key);
            // (One its signed package declares is loaded on its first binding.)
            if (stack is not null && !_loaded.ContainsKey(key))
            {
                _loaded[key] = new Slot(stack) { IdleSince = _time.GetUtcNow().UtcDateTime };
            }
            else if (stack?.Context.Target is System.Runtime.Loader.AssemblyLoadContext duplicate)
            {
                // Already loaded: the copy loaded just to read its description goes away at once.
                duplicate.Unload();
            }
            return (description, key);
        }
    }

    /// <summary>The registered stack versions' keys (<see cref="StackKey"/>), in order.</summary>
    public IReadOnlyCollection<string> Registered
    {
        get
        {
            lock (_gate)
            {
                return [.. _registered.Keys.Order(StringComparer.Ordinal)];
            }
        }
    }

    /// <summary>The stack ids that have at least one registered version neither quarantined nor withdrawn.</summary>
    public IReadOnlyCollection<string> UsableIds
    {
        get
        {
            lock (_gate)
            {
                return [.. _registered.Keys.Where(k => !_quarantined.ContainsKey(k)).Select(StackKey.IdOf).Distinct().Order(StringComparer.Ordinal)];
            }
        }
    }

    /// <summary>
    /// The version key <paramref name="name"/> stands for: a key as it is (when registered, loaded or withdrawn), a bare
    /// id its newest registered version that is not quarantined — else its newest registered, loaded or withdrawn one, so
    /// what is said about it names the version concerned. Null when nothing of it is known.
    /// </summary>
    public string? Resolve(string name)
    {
        lock (_gate)
        {
            return ResolveLocked(name);
        }
    }

    /// <summary>
    /// The versions a binding to <paramref name="name"/> may use, best first: a key alone; for a bare id every registered
    /// version that is not quarantined, newest first (a peer that lacks the newest may still run an older one) — none
    /// newer than the one the control plane holds or releases the id at (<see cref="SetHolds"/>).
    /// </summary>
    public IReadOnlyList<string> Candidates(string name)
    {
        lock (_gate)
        {
            if (StackKey.IsVersioned(name))
            {
                return [name];
            }
            return CandidatesLocked(name);
        }
    }

    /// <summary>
    /// Takes the control plane's holds (stack id → the version this host is to run at most, an operator's) and releases
    /// (the version a rollout, or the catalog's newest good version, has this host run; a hold goes over it). For such an
    /// id no newer version is used: bindings take the newest at or below it, and a peer's request for a newer one is
    /// refused. Returns true when either changed (and counts a <see cref="HoldsGeneration"/>).
    /// </summary>
    public bool SetHolds(IReadOnlyDictionary<string, string> holds, IReadOnlyDictionary<string, string>? releases = null)
    {
        releases ??= new Dictionary<string, string>();
        lock (_gate)
        {
            if (Same(holds, _holds) && Same(releases, _releases))
            {
                return false;
            }
            _holds = new Dictionary<string, string>(holds, StringComparer.Ordinal);
            _releases = new Dictionary<string, string>(releases, StringComparer.Ordinal);
            _holdsGeneration++;
            return true;
        }

        static bool Same(IReadOnlyDictionary<string, string> a, Dictionary<string, string> b) => a.Count == b.Count && a.All(h => b.TryGetValue(h.Key, out var v) && v == h.Value);
    }

    /// <summary>How many times the holds or releases changed (a binding refused a move is tried again sooner once they do).</summary>
    public long HoldsGeneration
    {
        get
        {
            lock (_gate)
            {
                return _holdsGeneration;
            }
        }
    }

    /// <summary>The operators' holds in force (stack id → version).</summary>
    public IReadOnlyDictionary<string, string> Holds
    {
        get
        {
            lock (_gate)
            {
                return new Dictionary<string, string>(_holds, StringComparer.Ordinal);
            }
        }
    }

    /// <summary>The control plane's releases in force (stack id → version; a hold of the same id goes over it).</summary>
    public IReadOnlyDictionary<string, string> Releases
    {
        get
        {
            lock (_gate)
            {
                return new Dictionary<string, string>(_releases, StringComparer.Ordinal);
            }
        }
    }

    /// <summary>Why a peer may not open the version <paramref name="key"/> here (the control plane holds or releases its id at another version), or null.</summary>
    public string? HeldOut(string key)
    {
        lock (_gate)
        {
            return HeldOutLocked(key) ? HeldOutReasonLocked(key) : null;
        }
    }

    private string HeldOutReasonLocked(string key) => _holds.TryGetValue(StackKey.IdOf(key), out var held)
        ? $"the control plane holds {StackKey.IdOf(key)} at {held} on this host"
        : $"the control plane releases {StackKey.IdOf(key)} {_releases[StackKey.IdOf(key)]} to this host, not {StackKey.VersionOf(key)}";

    /// <summary>The version the control plane has this host run of <paramref name="id"/> (an operator's hold over a release), or null.</summary>
    private string? DecidedLocked(string id) => _holds.TryGetValue(id, out var held) ? held : _releases.GetValueOrDefault(id);

    /// <summary>
    /// A version newer than the one decided for its id is out: the decided version is a ceiling, not a pin. So a host
    /// released a version it has not installed (the agent keeps the newest three) runs the newest one below it rather
    /// than its newest, and a host a rollout reached still accepts the previous version from a peer it has not reached.
    /// A ceiling below every version this host has holds nothing out: a catalog entry that names a version no agent
    /// runs (published by hand) does not take the stack away.
    /// </summary>
    private bool HeldOutLocked(string key) =>
        DecidedLocked(StackKey.IdOf(key)) is { } decided && StackKey.CompareVersions(StackKey.VersionOf(key)!, decided) > 0
        && _registered.Keys.Any(k => StackKey.IdOf(k) == StackKey.IdOf(key) && StackKey.CompareVersions(StackKey.VersionOf(k)!, decided) <= 0);

    /// <summary>What a stack version declares (a bare id: its newest usable version); null when the name is unknown.</summary>
    public StackDescription? Describe(string name)
    {
        lock (_gate)
        {
            return ResolveLocked(name) is not { } key ? null
                : _loaded.TryGetValue(key, out var slot) ? slot.Stack!.Description
                : _registered.TryGetValue(key, out var registration) ? registration.Description
                : null;
        }
    }

    /// <summary>Whether the version <paramref name="key"/> could be registered now (neither registered nor a withdrawn one still draining).</summary>
    public bool CanRegister(string key)
    {
        lock (_gate)
        {
            return !_registered.ContainsKey(key) && !_loaded.ContainsKey(key);
        }
    }

    /// <summary>
    /// Takes the version <paramref name="key"/> out of the registered stacks (it was withdrawn from the signed targets):
    /// no new binding can acquire it, the switch moves existing ones off it, and it unloads like any idle stack once its
    /// last binding is released and its drain time has passed. Returns false when it was not registered.
    /// </summary>
    public bool Withdraw(string key, string reason)
    {
        lock (_gate)
        {
            if (!_registered.Remove(key))
            {
                return false;
            }
            _withdrawn[key] = reason;
            if (_loaded.TryGetValue(key, out var slot) && slot.Bindings == 0)
            {
                slot.IdleSince ??= _time.GetUtcNow().UtcDateTime;
            }
            return true;
        }
    }

    /// <summary>Stack versions withdrawn from the signed targets since this host started, by key, and why.</summary>
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

    /// <summary>
    /// Counts a binding of <paramref name="name"/> (a key, or a bare id: its newest usable version) and returns the stack,
    /// loading it if it is not loaded. The load runs outside the host's lock (reading and checking files, the plug-in's
    /// constructors), so other paths' traffic does not wait on it; it throws <see cref="StackLoadException"/> when the
    /// version will not load.
    /// </summary>
    public LoadedStack Acquire(string name)
    {
        string key;
        Registration registration;
        lock (_gate)
        {
            key = Usable(name);
            if (_loaded.TryGetValue(key, out var slot))
            {
                return Bind(slot);
            }
            registration = _registered[key];
        }
        var loaded = Load(key, registration);
        lock (_gate)
        {
            // Taken away, registered anew or loaded by another binding while it loaded: this copy goes.
            try
            {
                key = Usable(key);
            }
            catch (InvalidOperationException e)
            {
                Unload(new Slot(loaded));
                throw new StackLoadException(key, $"it was taken away while it loaded ({e.Message})", versionsFault: false, e);
            }
            if (_registered[key] != registration)
            {
                Unload(new Slot(loaded));
                throw new StackLoadException(key, "it was registered anew while it loaded; try again", versionsFault: false, null);
            }
            if (_loaded.TryGetValue(key, out var other))
            {
                Unload(new Slot(loaded));
                return Bind(other);
            }
            loaded.Key = key;
            _loaded[key] = new Slot(loaded);
            lock (_loads)
            {
                _everLoaded.Add(key);
            }
            return Bind(_loaded[key]);
        }

        static LoadedStack Bind(Slot slot)
        {
            slot.Bindings++;
            slot.IdleSince = null;
            return slot.Stack!;
        }
    }

    /// <summary>The version <paramref name="name"/> stands for, when a binding may take it; else throws saying why.</summary>
    private string Usable(string name)
    {
        var key = ResolveLocked(name) ?? name;
        if (_withdrawn.TryGetValue(key, out var withdrawn))
        {
            throw new InvalidOperationException($"Stack '{key}' is withdrawn: {withdrawn}.");
        }
        if (!_registered.ContainsKey(key))
        {
            throw new InvalidOperationException($"Stack '{name}' is not available (available: {string.Join(", ", _registered.Keys.Order(StringComparer.Ordinal))}).");
        }
        if (_quarantined.TryGetValue(key, out var reason))
        {
            throw new InvalidOperationException($"Stack '{key}' is quarantined: {reason}.");
        }
        if (HeldOutLocked(key))
        {
            throw new InvalidOperationException($"Stack '{key}' is not run on this host: {HeldOutReasonLocked(key)}.");
        }
        return key;
    }

    /// <summary>Uncounts a binding of the version <paramref name="key"/>; it starts draining when it was the last.</summary>
    public void Release(string key)
    {
        lock (_gate)
        {
            if (_loaded.TryGetValue(key, out var slot) && slot.Bindings > 0 && --slot.Bindings == 0)
            {
                slot.IdleSince = _time.GetUtcNow().UtcDateTime;
            }
        }
    }

    /// <summary>Refuses new bindings of <paramref name="name"/> (a key; a bare id: its newest usable version) from now on; existing ones are moved off it by the switch.</summary>
    public void Quarantine(string name, string reason)
    {
        lock (_gate)
        {
            _quarantined.TryAdd(ResolveLocked(name) ?? name, reason);
        }
    }

    /// <summary>True when the version <paramref name="key"/> is neither quarantined nor withdrawn (cheaper than reading both lists).</summary>
    public bool IsUsable(string key)
    {
        lock (_gate)
        {
            return !_quarantined.ContainsKey(key) && !_withdrawn.ContainsKey(key);
        }
    }

    /// <summary>True when the version <paramref name="name"/> (a key), or any version of it (a bare id), is quarantined.</summary>
    public bool IsQuarantined(string name)
    {
        lock (_gate)
        {
            return StackKey.IsVersioned(name) ? _quarantined.ContainsKey(name) : _quarantined.Keys.Any(k => StackKey.IdOf(k) == name);
        }
    }

    /// <summary>Quarantined stack versions, by key, and why.</summary>
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

    /// <summary>Unloads every stack version idle for longer than the drain time; returns how many were unloaded.</summary>
    public int Collect()
    {
        lock (_gate)
        {
            var now = _time.GetUtcNow().UtcDateTime;
            var unloaded = 0;
            foreach (var (key, slot) in _loaded.ToList())
            {
                if (slot.Bindings == 0 && slot.IdleSince is { } idle && now - idle >= _drain)
                {
                    Unload(slot);
                    _loaded.Remove(key);
                    unloaded++;
                }
            }
            lock (_unloading)
            {
                _unloading.RemoveAll(w => !w.IsAlive);
            }
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
                lock (_unloading)
                {
                    _unloading.RemoveAll(w => !w.IsAlive);
                    return _unloading.Count;
                }
            }
        }
    }

    /// <summary>Every registered stack version, and every withdrawn one still loaded, with its bindings and state.</summary>
    public IReadOnlyList<StackHostEntry> Entries()
    {
        lock (_gate)
        {
            Dictionary<string, int> loads;
            lock (_loads)
            {
                loads = new(_loads, StringComparer.Ordinal);
            }
            return _registered.Select(r => (_loaded.TryGetValue(r.Key, out var slot)
                    ? new StackHostEntry(r.Value.Description.Id, r.Value.Version, r.Value.Path, slot.Bindings, true, slot.IdleSince)
                    : new StackHostEntry(r.Value.Description.Id, r.Value.Version, r.Value.Path, 0, false, null)) with { Loads = loads.GetValueOrDefault(r.Key) })
                .Concat(_loaded.Where(l => !_registered.ContainsKey(l.Key))
                    .Select(l => new StackHostEntry(StackKey.IdOf(l.Key), StackKey.VersionOf(l.Key)!, "", l.Value.Bindings, true, l.Value.IdleSince, Withdrawn: true) { Loads = loads.GetValueOrDefault(l.Key) }))
                .OrderBy(e => e.Id, StringComparer.Ordinal).ThenByDescending(e => e.Version, Comparer<string>.Create(StackKey.CompareVersions)).ToList();
        }
    }

    /// <summary>The registered versions of id <paramref name="name"/> neither quarantined nor held out, newest first.</summary>
    private List<string> CandidatesLocked(string name) =>
        [.. Newest(_registered.Keys.Where(k => StackKey.IdOf(k) == name && !_quarantined.ContainsKey(k) && !HeldOutLocked(k)))];

    private string? ResolveLocked(string name)
    {
        if (StackKey.IsVersioned(name))
        {
            return _registered.ContainsKey(name) || _loaded.ContainsKey(name) || _withdrawn.ContainsKey(name) ? name : null;
        }
        bool Of(string key) => StackKey.IdOf(key) == name;
        return CandidatesLocked(name).FirstOrDefault()
            ?? Newest(_registered.Keys.Where(k => Of(k) && !_quarantined.ContainsKey(k))).FirstOrDefault()
            ?? Newest(_registered.Keys.Where(Of)).FirstOrDefault()
            ?? Newest(_loaded.Keys.Where(Of)).FirstOrDefault()
            ?? Newest(_withdrawn.Keys.Where(Of)).FirstOrDefault();
    }

    private static IEnumerable<string> Newest(IEnumerable<string> keys) =>
        keys.OrderByDescending(k => StackKey.VersionOf(k)!, Comparer<string>.Create(StackKey.CompareVersions));

    /// <summary>
    /// Loads a registered version (not under the host's lock) and checks that its factory declares what it was registered
    /// as. A failure is the version's own (<see cref="StackLoadException.VersionsFault"/>: its checked bytes will not load,
    /// or it declares something else) unless files are missing or changed on disk — which the next repository refresh
    /// unpacks again — or this host has loaded it before (the same bytes did load).
    /// </summary>
    private LoadedStack Load(string key, Registration registration)
    {
        LoadedStack stack;
        try
        {
            stack = StackLoader.Load(registration.Path, registration.Digests);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Count(key);
            var disk = false;
            for (var cause = e; cause is not null && !disk; cause = cause.InnerException)
            {
                disk = cause is IOException or InvalidDataException or UnauthorizedAccessException
                    || (cause as System.Reflection.ReflectionTypeLoadException)?.LoaderExceptions.Any(l => l is IOException) == true;
            }
            throw new StackLoadException(key, e.Message, versionsFault: !disk && VersionsOwn(key, registration), e);
        }
        Count(key);
        if (stack.Description != registration.Description)
        {
            // The file now declares something else than it did when registered (an operator's path, rebuilt in place), or
            // than its signed package says it declares.
            Unload(new Slot(stack));
            throw new StackLoadException(key, $"'{registration.Path}' declares {Said(stack.Description)}, not what it was registered as ({Said(registration.Description)})",
                versionsFault: VersionsOwn(key, registration), null);
        }
        return stack;
    }

    /// <summary>
    /// Whether a failed load is the signed version's own fault: never loaded here before (the same bytes did load), and its
    /// package's files all on disk as signed with nothing beside them — whoever can write the state folder (a deps file
    /// altered, an assembly removed) makes a load fail, but the fault is then the disk's, which the next refresh repairs.
    /// </summary>
    private bool VersionsOwn(string key, Registration registration)
    {
        if (registration.Digests is not { } digests)
        {
            return false;
        }
        lock (_loads)
        {
            if (_everLoaded.Contains(key))
            {
                return false;
            }
        }
        try
        {
            return Fabric.Repository.StackPackage.Differs(Path.GetDirectoryName(registration.Path)!, digests) is null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static string Said(StackDescription d) =>
        $"{d.Id} {d.Version} over {(d.UnderlayFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4")}, {d.MaxStackFieldBytes}+{d.MaxExpansionBytes} bytes{(d.Encrypts ? ", encrypting" : "")}";

    /// <summary>Counts a load of the version <paramref name="key"/>, good or not (what <see cref="StackHostEntry.Loads"/> says).</summary>
    private void Count(string key)
    {
        lock (_loads)
        {
            _loads[key] = _loads.GetValueOrDefault(key) + 1;
        }
    }

    private readonly Dictionary<string, int> _loads = new(StringComparer.Ordinal);

    /// <summary>Versions a binding has loaded here since the agent started (guarded by <see cref="_loads"/>).</summary>
    private readonly HashSet<string> _everLoaded = new(StringComparer.Ordinal);

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
        lock (_unloading)
        {
            _unloading.Add(context);
        }
    }
}

/// <summary>
/// A stack version that would not load for a binding. <see cref="VersionsFault"/>: the signed version itself is at fault
/// (its checked bytes will not load, or its factory declares something else than its package says), so the switch
/// quarantines it; otherwise (files missing or changed on disk, an operator's path) it is only refused this time.
/// </summary>
public sealed class StackLoadException(string key, string why, bool versionsFault, Exception? inner)
    : InvalidOperationException($"Stack '{key}' could not be loaded: {why}.", inner)
{
    public string Key { get; } = key;

    public bool VersionsFault { get; } = versionsFault;
}
