using System.Security.Claims;
using Microsoft.Extensions.Time.Testing;

namespace Fabric.Dashboard.Tests;

/// <summary>
/// The users file as a careless operator and an attacker who reads it would meet it: no password in it, a password in
/// clear refused naming the line, and a user removed or demoted losing what their sign-in gave them once the file changes.
/// </summary>
public sealed class UsersTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("fabric-users-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string File(string name) => Path.Combine(_folder, name);

    /// <summary>A sign-in as the dashboard makes it: name, role and the stamp of the credential as the file has it now.</summary>
    private static ClaimsPrincipal SignedIn(Users users, string name, string role) =>
        new(new ClaimsIdentity(users.ClaimsOf(new DashboardUser(name, role)), "cookie"));

    private static ClaimsPrincipal Claiming(string name, string role, string? stamp = null) =>
        new(new ClaimsIdentity([new Claim(ClaimTypes.Name, name), new Claim(ClaimTypes.Role, role), .. stamp is null ? Array.Empty<Claim>() : [new Claim(Users.StampClaim, stamp)]], "cookie"));

    [Fact]
    public void TheFileHoldsHashesOnly_AndAPasswordInClearIsRefusedNamingTheLineAndTheCommand()
    {
        var path = File("users");
        Users.Set(path, "ops", "correct-horse-battery", DashboardUser.Admin);
        Users.Set(path, "auditor", "staple-battery-horse", DashboardUser.ReadOnly);
        var text = System.IO.File.ReadAllText(path);
        Assert.DoesNotContain("correct-horse-battery", text, StringComparison.Ordinal);
        Assert.Equal(2, text.Split('\n').Count(l => l.Contains(" pbkdf2-sha256$100000$", StringComparison.Ordinal)));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, System.IO.File.GetUnixFileMode(path));

        var users = Users.Load(path);
        Assert.Equal(new DashboardUser("ops", DashboardUser.Admin), users.Check("ops", "correct-horse-battery"));
        Assert.Null(users.Check("ops", "correct-horse-batterY"));
        Assert.Null(users.Check("nobody", "correct-horse-battery"));
        Assert.Null(users.Check("auditor", "correct-horse-battery"));

        // Setting a user again replaces its line and keeps the others (a comment included).
        Users.Set(path, "ops", "another-long-password", DashboardUser.ReadOnly);
        var again = Users.Load(path);
        Assert.Null(again.Check("ops", "correct-horse-battery"));
        Assert.Equal(DashboardUser.ReadOnly, again.Check("ops", "another-long-password")?.Role);
        Assert.NotNull(again.Check("auditor", "staple-battery-horse"));
        Assert.StartsWith("#", System.IO.File.ReadAllLines(path)[0], StringComparison.Ordinal);

        var clear = File("clear");
        System.IO.File.WriteAllText(clear, "# operators\nops correct-horse-battery admin\n");
        var refused = Assert.Throws<FormatException>(() => Users.Load(clear));
        Assert.Contains($"users file '{clear}' line 2: 'ops' has a password in clear", refused.Message, StringComparison.Ordinal);
        Assert.Contains($"fabric-dashboard users set --users {clear} ops admin", refused.Message, StringComparison.Ordinal);

        foreach (var (content, expected) in new[]
        {
            ("ops pbkdf2-sha256$100000$AAAA$BBBB admin\n", "line 1: the hash of 'ops' is not pbkdf2-sha256$ITERATIONS$SALT$KEY"),
            ("ops pbkdf2-sha256$10$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= admin\n", "line 1: the hash of 'ops'"),
            (Users.HashLine("ops", "correct-horse-battery", "admin") + "\n" + Users.HashLine("ops", "staple-battery-horse", "read-only") + "\n", "line 2: 'ops' is named twice"),
            (Users.HashLine("ops", "correct-horse-battery", "admin").Replace(" admin", " root", StringComparison.Ordinal) + "\n", "line 1: expected NAME HASH admin|read-only"),
            ("# nobody\n", "names no user"),
        })
        {
            System.IO.File.WriteAllText(clear, content);
            Assert.Contains(expected, Assert.Throws<FormatException>(() => Users.Load(clear)).Message, StringComparison.Ordinal);
        }
        Assert.Contains("shorter than 12", Assert.Throws<FormatException>(() => Users.HashLine("ops", "short", "admin")).Message, StringComparison.Ordinal);
        Assert.Contains("one word", Assert.Throws<FormatException>(() => Users.HashLine("o ps", "correct-horse-battery", "admin")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AUserRemovedOrDemoted_LosesTheirSignIn_OnceTheFileChanges_AndABrokenFileLetsNoOneIn()
    {
        var path = File("users");
        Users.Set(path, "ops", "correct-horse-battery", DashboardUser.Admin);
        Users.Set(path, "auditor", "staple-battery-horse", DashboardUser.ReadOnly);
        var time = new FakeTimeProvider(DateTimeOffset.Parse("2026-12-02T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        var users = Users.Load(path, time);
        var ops = SignedIn(users, "ops", DashboardUser.Admin);
        var auditor = SignedIn(users, "auditor", DashboardUser.ReadOnly);
        Assert.True(users.IsAdmin(ops));
        Assert.True(users.StillValid(auditor));
        Assert.False(users.IsAdmin(auditor));
        // A cookie that claims a role its user does not have, or carries no stamp or another's, is no sign-in.
        var auditorStamp = auditor.FindFirst(Users.StampClaim)!.Value;
        Assert.False(users.StillValid(Claiming("auditor", DashboardUser.Admin, auditorStamp)));
        Assert.False(users.StillValid(Claiming("ops", DashboardUser.Admin)));
        Assert.False(users.StillValid(Claiming("ops", DashboardUser.Admin, auditorStamp)));
        Assert.False(users.StillValid(Claiming("ops", DashboardUser.Admin, "not base64!")));

        // The operator gives ops a new password (a leaked one, say): sign-ins made with the old one end.
        Users.Set(path, "ops", "a-new-password-for-ops", DashboardUser.Admin);
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.False(users.StillValid(ops));
        Assert.False(users.IsAdmin(ops));
        Assert.True(users.StillValid(auditor));
        ops = SignedIn(users, "ops", DashboardUser.Admin);

        // The operator demotes ops and removes auditor (with an editor, keeping the other lines).
        Users.Set(path, "ops", "correct-horse-battery", DashboardUser.ReadOnly);
        System.IO.File.WriteAllLines(path, System.IO.File.ReadAllLines(path).Where(l => !l.StartsWith("auditor ", StringComparison.Ordinal)));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.False(users.IsAdmin(ops));
        Assert.False(users.StillValid(ops));
        Assert.False(users.StillValid(auditor));
        Assert.Null(users.Check("auditor", "staple-battery-horse"));
        var demoted = SignedIn(users, "ops", DashboardUser.ReadOnly);
        Assert.True(users.StillValid(demoted));

        // A file that no longer reads lets no one in (not the users it had) and says why, until it is fixed.
        System.IO.File.AppendAllText(path, "mallory hunter2 admin\n");
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.False(users.StillValid(demoted));
        Assert.Null(users.Check("ops", "correct-horse-battery"));
        Assert.Contains("'mallory' has a password in clear", users.Error, StringComparison.Ordinal);
        System.IO.File.WriteAllLines(path, System.IO.File.ReadAllLines(path).Where(l => !l.StartsWith("mallory ", StringComparison.Ordinal)));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Null(users.Error);
        Assert.NotNull(users.Check("ops", "correct-horse-battery"));
        Assert.True(users.StillValid(demoted));

        // Within a second of a look, the file is not read again (a flood of requests costs no file reads).
        Users.Set(path, "ops", "correct-horse-battery", DashboardUser.Admin);
        Assert.True(users.StillValid(demoted));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.False(users.StillValid(demoted));
    }

    [Fact]
    public void TheEmbeddedDefault_GeneratesHashes_AndMovesTheClearPasswordsOfAnOlderDataFolderOut()
    {
        var (path, initial) = (File("credentials.txt"), File("initial-passwords.txt"));
        var users = Users.EnsureGenerated(path, initial);
        var generated = System.IO.File.ReadAllLines(initial).Where(l => !l.StartsWith('#')).Select(l => l.Split(' ')).ToList();
        Assert.Equal(["admin", "viewer"], generated.Select(g => g[0]));
        Assert.All(generated, g => Assert.NotNull(users.Check(g[0], g[1])));
        Assert.All(generated, g => Assert.DoesNotContain(g[1], System.IO.File.ReadAllText(path), StringComparison.Ordinal));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, System.IO.File.GetUnixFileMode(initial));

        // A data folder from before hashes: its users keep their passwords, which leave the users file.
        System.IO.File.WriteAllText(path, "# old\nadmin old-clear-password-1 admin\nviewer old-clear-password-2 read-only\n");
        System.IO.File.Delete(initial);
        var migrated = Users.EnsureGenerated(path, initial);
        Assert.Equal(DashboardUser.Admin, migrated.Check("admin", "old-clear-password-1")?.Role);
        Assert.DoesNotContain("old-clear-password", System.IO.File.ReadAllText(path), StringComparison.Ordinal);
        Assert.Contains("admin old-clear-password-1 admin", System.IO.File.ReadAllText(initial), StringComparison.Ordinal);
    }
}
