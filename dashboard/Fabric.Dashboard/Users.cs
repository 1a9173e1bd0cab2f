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
/// The users allowed in, from a file of "NAME PASSWORD ROLE" lines (mode 0600, '#' comments). Passwords are kept only as
/// salted PBKDF2 hashes in memory and compared in constant time.
/// </summary>
public sealed class Users
{
    private readonly Dictionary<string, (DashboardUser User, byte[] Salt, byte[] Hash)> _users = new(StringComparer.Ordinal);

    private Users(string path) => Path = path;

    /// <summary>The file the credentials are in (what the embedded default tells the operator).</summary>
    public string Path { get; }

    public IEnumerable<DashboardUser> All => _users.Values.Select(u => u.User);

    /// <summary>Reads the file; throws <see cref="FormatException"/> naming the file and line that is wrong.</summary>
    public static Users Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new FormatException($"users file '{path}' does not exist");
        }
        var users = new Users(path);
        var lineNumber = 0;
        foreach (var raw in File.ReadLines(path))
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
                throw new FormatException($"users file '{path}' line {lineNumber}: expected NAME PASSWORD admin|read-only");
            }
            if (fields[1].Length < 12)
            {
                throw new FormatException($"users file '{path}' line {lineNumber}: the password of '{fields[0]}' is shorter than 12 characters");
            }
            var salt = RandomNumberGenerator.GetBytes(16);
            users._users[fields[0]] = (new DashboardUser(fields[0], fields[2]), salt, Hash(fields[1], salt));
        }
        return users._users.Count > 0 ? users : throw new FormatException($"users file '{path}' names no user");
    }

    /// <summary>The embedded default's file: created on first run with an admin and a read-only user and random passwords.</summary>
    public static Users EnsureGenerated(string path)
    {
        if (!File.Exists(path))
        {
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
            var text = new StringBuilder()
                .AppendLine("# Fabric dashboard users, generated on first run: NAME PASSWORD ROLE (admin | read-only).")
                .AppendLine("# Edit or delete this file to change them; it is read at start.")
                .AppendLine($"admin {Password()} {DashboardUser.Admin}")
                .AppendLine($"viewer {Password()} {DashboardUser.ReadOnly}");
            using var file = new FileStream(path, new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            });
            file.Write(Encoding.UTF8.GetBytes(text.ToString()));
        }
        return Load(path);
    }

    private static string Password() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(15)).Replace('+', 'k').Replace('/', 'z');

    private static byte[] Hash(string password, byte[] salt) => Rfc2898DeriveBytes.Pbkdf2(password, salt, 100_000, HashAlgorithmName.SHA256, 32);

    /// <summary>The user when the password is right; null otherwise (unknown users cost the same time).</summary>
    public DashboardUser? Check(string? name, string? password)
    {
        var known = _users.TryGetValue(name ?? "", out var entry);
        var salt = known ? entry.Salt : new byte[16];
        var hash = Hash(password ?? "", salt);
        return known && CryptographicOperations.FixedTimeEquals(hash, entry.Hash) ? entry.User : null;
    }
}
