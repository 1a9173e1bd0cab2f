using System.Globalization;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;

namespace Fabric.Dashboard;

/// <summary>A dashboard user: admins change policies, read-only users see everything and change nothing.</summary>
public sealed record DashboardUser(string Name, string Role)
{
    public const string Admin = "admin";
    public const string ReadOnly = "read-only";
}

/// <summary>
/// The users allowed in, from a file of "NAME HASH ROLE" lines (mode 0600, '#' comments), where HASH is
/// <c>pbkdf2-sha256$ITERATIONS$SALT$KEY</c> (base64) as <c>fabric-dashboard users set</c> writes it: the file holds no
/// password, and a line with one in clear is refused. Checks compare in constant time.
/// <para>
/// The file is read again when its content changes (looked at no more than once a second): a user removed from it,
/// given another role or another password loses what their sign-in gave them at their next request (a sign-in carries a
/// stamp of the credential it was made with), and a file that no longer reads lets no one in until it is fixed (never
/// the users it had before).
/// </para>
/// </summary>
public sealed class Users
{
    /// <summary>The prefix of a stored hash, and its iterations (each check costs this many HMAC-SHA256 rounds).</summary>
    public const string Scheme = "pbkdf2-sha256";
    public const int Iterations = 100_000;

    /// <summary>The shortest password <see cref="HashLine"/> accepts.</summary>
    public const int MinimumPassword = 12;

    /// <summary>The claim a sign-in carries: a digest of the stored credential it was made with.</summary>
    public const string StampClaim = "fabric:credential";

    /// <summary>The most iterations a stored hash may ask for (each sign-in pays them; a typo must not take a core).</summary>
    private const int MaximumIterations = 10_000_000;

    /// <summary>A users file larger than this is refused (it is a few lines per user).</summary>
    private const int MaximumBytes = 1 << 20;

    private static readonly TimeSpan LookEvery = TimeSpan.FromSeconds(1);

    private readonly TimeProvider _time;
    private readonly Lock _gate = new();
    private Snapshot _current;
    private long _lookedAt;

    private sealed record Entry(DashboardUser User, int Iterations, byte[] Salt, byte[] Hash)
    {
        /// <summary>What a sign-in with this credential carries: changing the password or role changes it.</summary>
        public byte[] Stamp { get; } = SHA256.HashData([.. Encoding.UTF8.GetBytes(User.Role + "\n"), .. Salt, .. Hash]);
    }

    private sealed record Snapshot(IReadOnlyDictionary<string, Entry> Users, byte[] Content, string? Error);

    private Users(string path, Snapshot first, TimeProvider time)
    {
        Path = path;
        _current = first;
        _time = time;
        _lookedAt = time.GetTimestamp();
    }

    /// <summary>The file the credentials are in.</summary>
    public string Path { get; }

    /// <summary>The users the file names now (none while it does not read).</summary>
    public IEnumerable<DashboardUser> All => Current().Users.Values.Select(u => u.User);

    /// <summary>Why the file does not read now (null when it does).</summary>
    public string? Error => Current().Error;

    /// <summary>Reads the file; throws <see cref="FormatException"/> naming the file and line that is wrong.</summary>
    public static Users Load(string path, TimeProvider? time = null)
    {
        // Null only when compared with an earlier snapshot.
        var snapshot = Read(path, unless: null)!;
        return snapshot.Error is { } error ? throw new FormatException(error) : new Users(path, snapshot, time ?? TimeProvider.System);
    }

    /// <summary>
    /// The file's users, or why it does not read; null when its content is still <paramref name="unless"/>'s (nothing to
    /// parse again).
    /// </summary>
    private static Snapshot? Read(string path, Snapshot? unless)
    {
        byte[] content;
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists)
            {
                return new Snapshot(new Dictionary<string, Entry>(), [], $"users file '{path}' does not exist");
            }
            if (info.Length > MaximumBytes)
            {
                return new Snapshot(new Dictionary<string, Entry>(), [], $"users file '{path}' is larger than {MaximumBytes / 1024} KiB");
            }
            content = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new Snapshot(new Dictionary<string, Entry>(), [], $"users file '{path}': {e.Message}");
        }
        // A snapshot of a file that did not read holds no content: the file is parsed again whatever it holds now.
        return unless is { Content.Length: > 0 } && content.AsSpan().SequenceEqual(unless.Content) ? null : Parse(path, content);
    }

    private static Snapshot Parse(string path, byte[] content)
    {
        var users = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var lineNumber = 0;
        foreach (var raw in Encoding.UTF8.GetString(content).Split('\n'))
        {
            lineNumber++;
            var line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }
            var fields = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length != 3 || fields[2] is not (DashboardUser.Admin or DashboardUser.ReadOnly))
            {
                return Failed(path, lineNumber, "expected NAME HASH admin|read-only");
            }
            if (!fields[1].StartsWith(Scheme + "$", StringComparison.Ordinal))
            {
                return Failed(path, lineNumber, $"'{fields[0]}' has a password in clear, not its hash: set it with "
                    + $"'fabric-dashboard users set --users {path} {fields[0]} {fields[2]}' (the password from standard input)");
            }
            if (ParseHash(fields[1]) is not { } hash)
            {
                return Failed(path, lineNumber, $"the hash of '{fields[0]}' is not {Scheme}$ITERATIONS$SALT$KEY (iterations 10,000 to {MaximumIterations:N0}, salt and key in base64)");
            }
            if (users.ContainsKey(fields[0]))
            {
                return Failed(path, lineNumber, $"'{fields[0]}' is named twice");
            }
            users[fields[0]] = new Entry(new DashboardUser(fields[0], fields[2]), hash.Iterations, hash.Salt, hash.Key);
        }
        return users.Count > 0 ? new Snapshot(users, content, null) : new Snapshot(users, content, $"users file '{path}' names no user");

        Snapshot Failed(string file, int line, string why) => new(new Dictionary<string, Entry>(), content, $"users file '{file}' line {line}: {why}");
    }

    private static (int Iterations, byte[] Salt, byte[] Key)? ParseHash(string text)
    {
        var parts = text.Split('$');
        try
        {
            return parts.Length == 4 && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var iterations) && iterations is >= 10_000 and <= MaximumIterations
                && Convert.FromBase64String(parts[2]) is { Length: >= 16 } salt && Convert.FromBase64String(parts[3]) is { Length: 32 } key
                ? (iterations, salt, key) : null;
        }
        catch (FormatException)
        {
            return null;
        }
    }

    /// <summary>The file as it is now, parsed again when its content changed (looked at once a second at most, on a monotonic clock).</summary>
    private Snapshot Current()
    {
        lock (_gate)
        {
            if (_time.GetElapsedTime(_lookedAt) < LookEvery)
            {
                return _current;
            }
            _lookedAt = _time.GetTimestamp();
            return _current = Read(Path, unless: _current) ?? _current;
        }
    }

    /// <summary>A "NAME HASH ROLE" line for the file: the password hashed under a new random salt.</summary>
    public static string HashLine(string name, string password, string role)
    {
        CheckNameAndRole(name, role);
        if (password.Length < MinimumPassword)
        {
            throw new FormatException($"the password of '{name}' is shorter than {MinimumPassword} characters");
        }
        var salt = RandomNumberGenerator.GetBytes(16);
        return $"{name} {Scheme}${Iterations}${Convert.ToBase64String(salt)}${Convert.ToBase64String(Hash(password, salt, Iterations))} {role}";
    }

    /// <summary>Throws <see cref="FormatException"/> when <paramref name="name"/> is not one word or <paramref name="role"/> no role.</summary>
    public static void CheckNameAndRole(string name, string role)
    {
        if (name.Length == 0 || name.Any(char.IsWhiteSpace) || name.StartsWith('#'))
        {
            throw new FormatException($"user name '{name}': must be one word, not starting with '#'");
        }
        if (role is not (DashboardUser.Admin or DashboardUser.ReadOnly))
        {
            throw new FormatException($"role '{role}': is not admin or read-only");
        }
    }

    /// <summary>
    /// Sets <paramref name="name"/>'s password and role in the file (added, or its line replaced; every other line kept as
    /// it is). The file is rewritten in place, so it keeps its owner and mode (the dashboard's user must go on reading it);
    /// a new file is created owner-only. A dashboard that reads it midway sees a file that does not parse and lets no one
    /// in for that second, never a half-changed user.
    /// </summary>
    public static void Set(string path, string name, string password, string role)
    {
        var line = HashLine(name, password, role);
        var lines = File.Exists(path) ? File.ReadAllLines(path).ToList()
            : ["# Fabric dashboard users: NAME HASH ROLE (admin | read-only); set with 'fabric-dashboard users set'."];
        var at = lines.FindIndex(l => l.Trim().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries) is { Length: > 0 } f && f[0] == name);
        if (at >= 0)
        {
            lines[at] = line;
        }
        else
        {
            lines.Add(line);
        }
        using var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.OpenOrCreate,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        var bytes = Encoding.UTF8.GetBytes(string.Join('\n', lines) + "\n");
        file.SetLength(0);
        file.Write(bytes);
    }

    /// <summary>
    /// The embedded default's file: created on first run with an admin and a read-only user and random passwords, whose
    /// hashes go in <paramref name="path"/> and the passwords themselves in <paramref name="initialPasswords"/> (owner-only,
    /// for the operator to read once and delete).
    /// </summary>
    public static Users EnsureGenerated(string path, string initialPasswords)
    {
        if (!File.Exists(path))
        {
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
            var (admin, viewer) = (Password(), Password());
            WriteOwnerOnly(initialPasswords, new StringBuilder()
                .AppendLine("# The embedded default's generated users: NAME PASSWORD ROLE. The dashboard reads only their hashes (in "
                    + System.IO.Path.GetFileName(path) + "); delete this file once you have them.")
                .AppendLine($"admin {admin} {DashboardUser.Admin}")
                .AppendLine($"viewer {viewer} {DashboardUser.ReadOnly}").ToString());
            WriteOwnerOnly(path, new StringBuilder()
                .AppendLine("# Fabric dashboard users, generated on first run: NAME HASH ROLE (admin | read-only).")
                .AppendLine("# Change them with 'fabric-dashboard users set --users FILE NAME ROLE' (the password from standard input); read at every change.")
                .AppendLine(HashLine("admin", admin, DashboardUser.Admin))
                .AppendLine(HashLine("viewer", viewer, DashboardUser.ReadOnly)).ToString());
        }
        else
        {
            HashClearPasswords(path, initialPasswords);
        }
        return Load(path);
    }

    /// <summary>
    /// A file the embedded default generated before it stored hashes: its passwords move to
    /// <paramref name="initialPasswords"/> and their hashes take their place, so an existing data folder keeps its users.
    /// </summary>
    private static void HashClearPasswords(string path, string initialPasswords)
    {
        var lines = File.ReadAllLines(path);
        var clear = lines.Select(l => l.Trim().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length == 3 && !f[0].StartsWith('#') && !f[1].StartsWith(Scheme + "$", StringComparison.Ordinal)).ToList();
        if (clear.Count == 0)
        {
            return;
        }
        WriteOwnerOnly(initialPasswords, "# The embedded default's users as they were in clear: NAME PASSWORD ROLE. Delete this file once you have them.\n"
            + string.Concat(clear.Select(f => $"{f[0]} {f[1]} {f[2]}\n")));
        foreach (var f in clear)
        {
            Set(path, f[0], f[1], f[2]);
        }
    }

    /// <summary>Writes a new owner-only file (one there before is deleted first: its mode would stay as it was).</summary>
    private static void WriteOwnerOnly(string path, string text)
    {
        File.Delete(path);
        using var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        file.Write(Encoding.UTF8.GetBytes(text));
    }

    private static string Password() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(15)).Replace('+', 'k').Replace('/', 'z');

    private static byte[] Hash(string password, byte[] salt, int iterations) => Rfc2898DeriveBytes.Pbkdf2(password, salt, iterations, HashAlgorithmName.SHA256, 32);

    private static readonly byte[] NoSalt = new byte[16];

    /// <summary>The user when the password is right; null otherwise (unknown users cost the same time).</summary>
    public DashboardUser? Check(string? name, string? password)
    {
        var known = Current().Users.TryGetValue(name ?? "", out var entry);
        var hash = Hash(password ?? "", known ? entry!.Salt : NoSalt, known ? entry!.Iterations : Iterations);
        return known && CryptographicOperations.FixedTimeEquals(hash, entry!.Hash) ? entry.User : null;
    }

    /// <summary>The claims a sign-in as <paramref name="user"/> carries: name, role and the stamp of its credential now.</summary>
    public IReadOnlyList<Claim> ClaimsOf(DashboardUser user) =>
        Current().Users.TryGetValue(user.Name, out var entry)
            ? [new Claim(ClaimTypes.Name, user.Name), new Claim(ClaimTypes.Role, entry.User.Role), new Claim(StampClaim, Convert.ToBase64String(entry.Stamp))]
            : throw new InvalidOperationException($"user '{user.Name}' is not in the users file");

    /// <summary>
    /// Whether the file still names the signed-in <paramref name="principal"/> with the role and the credential (password)
    /// it signed in with.
    /// </summary>
    public bool StillValid(ClaimsPrincipal principal)
    {
        if (principal.Identity?.Name is not { } name || !Current().Users.TryGetValue(name, out var entry) || !principal.IsInRole(entry.User.Role))
        {
            return false;
        }
        var stamp = principal.FindFirst(StampClaim)?.Value;
        byte[] claimed;
        try
        {
            claimed = stamp is null ? [] : Convert.FromBase64String(stamp);
        }
        catch (FormatException)
        {
            return false;
        }
        return CryptographicOperations.FixedTimeEquals(claimed, entry.Stamp);
    }

    /// <summary>Whether <paramref name="principal"/> is an admin now: signed in as one and still one in the file.</summary>
    public bool IsAdmin(ClaimsPrincipal principal) => StillValid(principal) && principal.IsInRole(DashboardUser.Admin);
}
