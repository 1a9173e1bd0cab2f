using System.ComponentModel;
using System.Text.RegularExpressions;
using Fabric.Programs;
using Fabric.Testing;

namespace Fabric.Hal.Tests.Programs;

public sealed partial class ProgramRunnerTests
{
    [Fact]
    public void MissingProgram_IsAFailedResultNamingIt_NotAnException()
    {
        var result = ProgramRunner.TryRun("fabric-no-such-program", "--version");

        Assert.Equal(ProgramResult.NotFound, result.Code);
        Assert.False(result.Succeeded);
        Assert.Contains("'fabric-no-such-program'", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingListedProgram_NamesItsDebianPackage()
    {
        var message = ProgramRunner.NotStarted("kcptun-client", new Win32Exception(2));

        Assert.Contains("'kcptun-client'", message, StringComparison.Ordinal);
        Assert.Contains("Debian package 'kcptun'", message, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_OfAMissingProgram_ThrowsNamingIt()
    {
        var e = Assert.Throws<InvalidOperationException>(() => ProgramRunner.Run("fabric-no-such-program"));
        Assert.Contains("fabric-no-such-program", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_WithInputAndEnvironment_ReturnsOutputAndExitCode()
    {
        var result = ProgramRunner.TryRun("sh", ["-c", "read line; echo \"$line $FABRIC_TEST\"; exit 3"], "hello\n",
            new Dictionary<string, string> { ["FABRIC_TEST"] = "world" });

        Assert.Equal(3, result.Code);
        Assert.Equal("hello world\n", result.Stdout);
    }

    [Fact]
    public void ProgramList_Parses_AndRefusesMalformedLines()
    {
        Assert.Equal("iproute2", ExternalPrograms.PackageOf("ip"));
        Assert.Null(ExternalPrograms.PackageOf("gnuplot"));
        Assert.Contains("line 2", Assert.Throws<FormatException>(() => ExternalPrograms.Parse("# c\nip\n")).Message, StringComparison.Ordinal);
        Assert.Contains("twice", Assert.Throws<FormatException>(() => ExternalPrograms.Parse("ip\tiproute2\nip\tx\n")).Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Every program the code (product, tests, benchmarks) starts by name is on programs.tsv, which ./fabric test installs
    /// from — so a newly started program that nobody installs fails here instead of on a newcomer's machine.
    /// </summary>
    [Fact]
    public void EveryProgramTheCodeStartsByName_IsOnTheList()
    {
        var found = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(RepositoryRoot.Directory, "*.cs", SearchOption.AllDirectories))
        {
            if (file.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                || file.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                || file.EndsWith("ProgramRunnerTests.cs", StringComparison.Ordinal))
            {
                continue;
            }
            var text = File.ReadAllText(file);
            foreach (var pattern in StartPatterns)
            {
                foreach (Match m in pattern.Matches(text))
                {
                    found.TryAdd(m.Groups["program"].Value, Path.GetRelativePath(RepositoryRoot.Directory, file));
                }
            }
        }

        // The scan must see the programs it is known to start, or it proves nothing.
        Assert.Superset(new SortedSet<string> { "ip", "ethtool", "nsenter", "iperf3", "sockperf", "wg", "wireguard-go", "kcptun-client", "kill", "ping" },
            new SortedSet<string>(found.Keys));
        var unlisted = found.Where(p => ExternalPrograms.PackageOf(p.Key) is null).Select(p => $"{p.Key} (started in {p.Value})").ToList();
        Assert.True(unlisted.Count == 0, "programs started by name but missing from programs.tsv: " + string.Join(", ", unlisted));
    }

    private static readonly Regex[] StartPatterns =
    [
        // The runner and its wrappers, with the program as their first argument.
        FirstArgument(),
        // A program run inside a namespace: ip netns exec NS PROGRAM, nsenter --net=NS PROGRAM, StartIn(NS, PROGRAM).
        NamespaceExec(),
        Nsenter(),
        StartInNamespace(),
        // env VAR=value PROGRAM.
        EnvPrefix(),
    ];

    // A program name as the code writes it: a word or an absolute path.
    private const string Name = @"""(?<program>[a-z0-9/][a-z0-9._/-]*)""";

    [GeneratedRegex(@"(?:ProgramRunner|Privileged|Shell|Commands)\.(?:Run|TryRun|Start|Must|Try|StartInNamespace)\(\s*\[?\s*" + Name
        + @"|(?<![.\w])(?:TryRun|RunWithInput)\(\s*" + Name + @"|new ProcessStartInfo\(\s*" + Name + @"|Process\.Start\(\s*" + Name)]
    private static partial Regex FirstArgument();

    [GeneratedRegex(@"""exec"",\s*[^,""]+,\s*" + Name)]
    private static partial Regex NamespaceExec();

    [GeneratedRegex(@"""--net=[^""]*"",\s*" + Name)]
    private static partial Regex Nsenter();

    [GeneratedRegex(@"StartIn(?:Namespace)?\(\s*[^,""]+,\s*" + Name)]
    private static partial Regex StartInNamespace();

    [GeneratedRegex(@"""env"",\s*(?:""[A-Z_]+=[^""]*"",\s*)+" + Name)]
    private static partial Regex EnvPrefix();
}
