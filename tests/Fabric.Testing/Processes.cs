using System.Diagnostics;

namespace Fabric.Testing;

/// <summary>Runs a program of this checkout (or any program) with stdin and environment, and collects what it printed.</summary>
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
        var start = new ProcessStartInfo(program)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"{program} did not start");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.StandardInput.Write(stdin ?? "");
        process.StandardInput.Close();
        if (!process.WaitForExit(timeout ?? TimeSpan.FromSeconds(30)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} {string.Join(' ', start.ArgumentList)} did not finish within {(timeout ?? TimeSpan.FromSeconds(30)).TotalSeconds} s");
        }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
