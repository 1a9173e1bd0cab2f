using System.Text;
using Fabric.Testing;

namespace Fabric.Stacks.Tests;

/// <summary>
/// stacks/README.md's guide to writing, signing and publishing a stack, followed literally: every <c>sh</c> block runs in
/// order in one shell from the checkout's root, and every block marked <c>file=NAME</c> is written where it appears. The
/// example stack is built inside the checkout (so its Directory.Build.props applies, as it would in stacks/), signed into
/// a repository and loaded by a real fabric-agent process, whose status must list it.
/// </summary>
public sealed class StackGuideTests
{
    [Fact]
    public void TheGuide_BuildsSignsPublishesAndLoadsTheExampleStack()
    {
        var root = RepositoryRoot.Directory;
        var script = Script(File.ReadAllLines(Path.Combine(root, "stacks", "README.md")));
        var scratch = Path.Combine(root, "artifacts", $"stack-guide-{Guid.NewGuid():N}");
        var work = Directory.CreateTempSubdirectory("fabric-stack-guide-").FullName;
        try
        {
            var (code, stdout, stderr) = Processes.Run("bash", ["-euo", "pipefail", "-c", $"cd '{root}'\n{script}"],
                environment: new Dictionary<string, string> { ["STACK_DIR"] = Path.Combine(scratch, "Fabric.Stacks.Counted"), ["WORK"] = work },
                timeout: TimeSpan.FromMinutes(4));
            var log = File.Exists(Path.Combine(work, "agent.log")) ? File.ReadAllText(Path.Combine(work, "agent.log")) : "(no agent log)";
            Assert.True(code == 0, $"the guide failed (exit {code}):\n{stdout}\n{stderr}\nagent log:\n{log}");
            Assert.Contains("ok counted/1.0.0", stdout, StringComparison.Ordinal);
            Assert.Contains("\"counted\"", stdout, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
            if (Directory.Exists(scratch))
            {
                Directory.Delete(scratch, recursive: true);
            }
        }
    }

    [Fact]
    public void TheGuide_HasTheStepsTheTestRuns()
    {
        var script = Script(File.ReadAllLines(Path.Combine(RepositoryRoot.Directory, "stacks", "README.md")));
        foreach (var step in new[] { "CountedStack.cs", "Fabric.Stacks.Counted.csproj", "dotnet build", " pack ", " publish ", " verify ", " run --config", " ctl " })
        {
            Assert.Contains(step, script, StringComparison.Ordinal);
        }
    }

    /// <summary>The guide's blocks as one script: sh blocks as they are, file blocks as here-documents.</summary>
    private static string Script(string[] lines)
    {
        var script = new StringBuilder();
        for (var i = 0; i < lines.Length; i++)
        {
            if (!lines[i].StartsWith("```", StringComparison.Ordinal) || lines[i] == "```")
            {
                continue;
            }
            var info = lines[i][3..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var body = new List<string>();
            for (i++; i < lines.Length && lines[i] != "```"; i++)
            {
                body.Add(lines[i]);
            }
            var file = info.Skip(1).FirstOrDefault(w => w.StartsWith("file=", StringComparison.Ordinal))?["file=".Length..];
            if (info.Length > 0 && info[0] == "sh")
            {
                script.AppendJoin('\n', body).Append('\n');
            }
            else if (file is not null)
            {
                script.Append($"cat > \"$STACK_DIR/{file}\" <<'FABRIC_GUIDE_EOF'\n").AppendJoin('\n', body).Append("\nFABRIC_GUIDE_EOF\n");
            }
        }
        return script.ToString();
    }
}
