namespace Fabric.Dashboard;

/// <summary>
/// Limits password guessing at the sign-in: after <see cref="UserLimit"/> failures for one user name within
/// <see cref="Window"/>, that name is locked for <see cref="UserLockout"/>; after <see cref="AddressLimit"/> failures from
/// one client address (a spray over many names), the address is locked for <see cref="AddressLockout"/>. A locked attempt
/// is refused before the password is hashed, and at most one hash per core runs at a time, so a flood of attempts
/// cannot take the dashboard's CPU (each costs a 100,000-iteration PBKDF2). What it remembers is bounded.
/// </summary>
public sealed class SignInThrottle(TimeProvider time) : IDisposable
{
    public const int UserLimit = 5;
    public const int AddressLimit = 30;
    public static readonly TimeSpan Window = TimeSpan.FromMinutes(15);
    public static readonly TimeSpan UserLockout = TimeSpan.FromMinutes(5);
    public static readonly TimeSpan AddressLockout = TimeSpan.FromMinutes(15);

    /// <summary>Names and addresses remembered at most (the oldest are forgotten first).</summary>
    public const int Capacity = 10_000;

    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _hashing = new(Environment.ProcessorCount, Environment.ProcessorCount);

    private sealed class Entry
    {
        public Queue<DateTimeOffset> Failures { get; } = new();

        public DateTimeOffset LockedUntil { get; set; }

        public DateTimeOffset LastSeen { get; set; }
    }

    /// <summary>How many names and addresses it remembers now.</summary>
    public int Remembered
    {
        get
        {
            lock (_entries)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>When the attempt may not be made: how long until it may (the later of the name's and the address's lock).</summary>
    public TimeSpan? Locked(string? user, string address)
    {
        var now = time.GetUtcNow();
        lock (_entries)
        {
            var until = new[] { Key("user", user), Key("address", address) }
                .Select(k => _entries.TryGetValue(k, out var e) ? e.LockedUntil : DateTimeOffset.MinValue).Max();
            return until > now ? until - now : null;
        }
    }

    /// <summary>Checks a password with at most one hash per core at a time.</summary>
    public async Task<T> HashAsync<T>(Func<T> check)
    {
        await _hashing.WaitAsync().ConfigureAwait(false);
        try
        {
            return check();
        }
        finally
        {
            _hashing.Release();
        }
    }

    public void Failed(string? user, string address)
    {
        var now = time.GetUtcNow();
        lock (_entries)
        {
            Count(Key("user", user), now, UserLimit, UserLockout);
            Count(Key("address", address), now, AddressLimit, AddressLockout);
        }
    }

    /// <summary>A right password clears the name's failures (not the address's: a spray may include one right guess).</summary>
    public void Succeeded(string? user)
    {
        lock (_entries)
        {
            _entries.Remove(Key("user", user));
        }
    }

    private void Count(string key, DateTimeOffset now, int limit, TimeSpan lockout)
    {
        if (!_entries.TryGetValue(key, out var entry))
        {
            if (_entries.Count >= Capacity)
            {
                // Forget the entries seen longest ago that hold no lock: a flood of new names cannot grow this.
                foreach (var old in _entries.Where(e => e.Value.LockedUntil <= now).OrderBy(e => e.Value.LastSeen).Take(Capacity / 10).Select(e => e.Key).ToList())
                {
                    _entries.Remove(old);
                }
            }
            _entries[key] = entry = new Entry();
        }
        entry.LastSeen = now;
        while (entry.Failures.Count > 0 && now - entry.Failures.Peek() > Window)
        {
            entry.Failures.Dequeue();
        }
        entry.Failures.Enqueue(now);
        if (entry.Failures.Count >= limit)
        {
            entry.LockedUntil = now + lockout;
            entry.Failures.Clear();
        }
    }

    private static string Key(string kind, string? value) => $"{kind}:{value ?? ""}";

    public void Dispose() => _hashing.Dispose();
}
