namespace Fabric.Testing;

/// <summary>Finds a program of this checkout, and runs it (or any program) through the product's one runner with a time limit.</summary>
public static class Processes
{
    /// <summary>A product executable's path: PROJECT_FOLDER/bin/CONFIGURATION/net10.0/NAME under the repository root.</summary>
    public static string Built(string projectFolder, string name)
    {
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;
        var path = Path.Combine(RepositoryRoot.Directory, projectFolder, "bin", configuration, "net10.0", name);
        return File.Exists(path) ? path : throw new FileNotFoundException($"{name} is not built at {path}.", path);
    }

    /// <summary>Runs to completion (at most <paramref name="timeout"/>, 30 s by default) and returns the exit code, stdout and stderr.</summary>
    public static (int Code, string Stdout, string Stderr) Run(string program, IEnumerable<string> args, string? stdin = null, IDictionary<string, string>? environment = null,
        TimeSpan? timeout = null)
    {
        var (code, stdout, stderr) = Fabric.Programs.ProgramRunner.TryRun(program, args, stdin, environment?.AsReadOnly(), timeout ?? TimeSpan.FromSeconds(30));
        return (code, stdout, stderr);
    }
}
