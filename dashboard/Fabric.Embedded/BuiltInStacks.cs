using System.Text.Json;
using Fabric.Repository;

namespace Fabric.Embedded;

/// <summary>A built-in stack: its id and version, the project that builds it, and the profile its manifest declares.</summary>
public sealed record BuiltInStack(string Id, string Version, string Project, StackProfile Profile);

/// <summary>Reads <c>stacks/builtin-stacks.json</c> and finds each stack's build output in the source tree.</summary>
public static class BuiltInStacks
{
    public const string FileName = "builtin-stacks.json";

    private static readonly JsonSerializerOptions Json = new() { PropertyNameCaseInsensitive = true, ReadCommentHandling = JsonCommentHandling.Skip };

    private sealed record Document(BuiltInStack[]? Stacks);

    /// <summary>The list in <paramref name="sourceRoot"/>/stacks; throws <see cref="FormatException"/> naming what is wrong.</summary>
    public static IReadOnlyList<BuiltInStack> Load(string sourceRoot)
    {
        var path = Path.Combine(sourceRoot, "stacks", FileName);
        if (!File.Exists(path))
        {
            throw new FormatException($"'{path}' does not exist (is '{sourceRoot}' a Fabric checkout?)");
        }
        BuiltInStack[] stacks;
        try
        {
            stacks = JsonSerializer.Deserialize<Document>(File.ReadAllText(path), Json)?.Stacks ?? [];
        }
        catch (JsonException e)
        {
            throw new FormatException($"'{path}': {e.Message}", e);
        }
        var problems = stacks.Select((s, i) => (s, i))
            .Where(x => string.IsNullOrWhiteSpace(x.s.Id) || !SemanticVersion.TryParse(x.s.Version, out _) || string.IsNullOrWhiteSpace(x.s.Project) || x.s.Profile is null)
            .Select(x => $"stacks[{x.i}]: needs id, a semantic version, project and profile").ToList();
        if (stacks.Length == 0 || problems.Count > 0)
        {
            throw new FormatException($"'{path}': {(stacks.Length == 0 ? "no stacks" : string.Join("; ", problems))}");
        }
        return stacks;
    }

    /// <summary>The folder holding the stack's built plug-in (stacks/PROJECT/bin/CONFIGURATION/net10.0); throws naming it when it was not built.</summary>
    public static string PluginDirectory(string sourceRoot, BuiltInStack stack, string configuration)
    {
        var directory = Path.Combine(sourceRoot, "stacks", stack.Project, "bin", configuration, "net10.0");
        return File.Exists(Path.Combine(directory, stack.Project + ".dll")) ? directory
            : throw new FileNotFoundException($"stack '{stack.Id}' is not built: {Path.Combine(directory, stack.Project + ".dll")} is missing (run: dotnet build -c {configuration})");
    }

    /// <summary>The checkout this program was built from: the nearest folder above <paramref name="start"/> with stacks/builtin-stacks.json.</summary>
    public static string? FindSourceRoot(string start)
    {
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "stacks", FileName)))
            {
                return dir.FullName;
            }
        }
        return null;
    }
}
