using System.ComponentModel;
using System.Diagnostics;

namespace Fabric.Programs;

/// <summary>What a program run ended with. <see cref="Code"/> is the exit code, or <see cref="NotFound"/> when the program
/// could not be started at all (then <see cref="Stderr"/> names it and the package that provides it).</summary>
public readonly record struct ProgramResult(int Code, string Stdout, string Stderr)
{
    /// <summary>The exit code a shell uses for "command not found", used here when the program cannot be started.</summary>
    public const int NotFound = 127;

    public bool Succeeded => Code == 0;
}

/// <summary>
/// The one way Fabric runs an external program (ip, ethtool, nsenter, a CNI IPAM plugin): never through a shell (arguments
/// are passed as they are), output captured, and a program that is not installed reported as a failed result that names
/// it and its Debian package instead of an exception.
/// </summary>
public static class ProgramRunner
{
    /// <summary>Runs a program to completion; never throws for a missing program or a non-zero exit.</summary>
    public static ProgramResult TryRun(string program, params string[] args) => TryRun(program, args, null, null);

    /// <summary>Runs a program to completion with <paramref name="stdin"/> written to its input and extra environment
    /// variables; never throws for a missing program or a non-zero exit. With a <paramref name="timeout"/>, a program still
    /// running then is killed (with its children) and <see cref="TimeoutException"/> names it.</summary>
    public static ProgramResult TryRun(string program, IEnumerable<string> args, string? stdin, IReadOnlyDictionary<string, string>? environment,
        TimeSpan? timeout = null)
    {
        var start = StartInfo(program, args);
        // The input is always a pipe, closed after stdin (if any): a child never reads the caller's own input (the CNI
        // plugin's stdin is the runtime's configuration).
        start.RedirectStandardInput = true;
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new Win32Exception(2);
        }
        catch (Win32Exception e)
        {
            return new ProgramResult(ProgramResult.NotFound, "", NotStarted(program, e));
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            try
            {
                process.StandardInput.Write(stdin ?? "");
                process.StandardInput.Close();
            }
            catch (IOException)
            {
                // The program exited without reading its input (a CNI plugin's VERSION does): its output still counts.
            }
            if (timeout is { } limit && !process.WaitForExit(limit))
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"'{program} {string.Join(' ', start.ArgumentList)}' did not finish within {limit.TotalSeconds:0} s");
            }
            process.WaitForExit();
            return new ProgramResult(process.ExitCode, stdout.Result, stderr.Result);
        }
    }

    /// <summary>Runs a program and returns its standard output; throws naming the command and its stderr when it fails
    /// or cannot be started.</summary>
    public static string Run(string program, params string[] args)
    {
        var result = TryRun(program, args);
        if (!result.Succeeded)
        {
            throw new InvalidOperationException(result.Code == ProgramResult.NotFound
                ? result.Stderr
                : $"'{program} {string.Join(' ', args)}' exited {result.Code}: {result.Stderr.Trim()}");
        }
        return result.Stdout;
    }

    /// <summary>Starts a long-running program with its output redirected (the caller reads or discards it and owns the
    /// process); throws naming the program and its package when it cannot be started.</summary>
    public static Process Start(string program, params string[] args)
    {
        try
        {
            return Process.Start(StartInfo(program, args)) ?? throw new Win32Exception(2);
        }
        catch (Win32Exception e)
        {
            throw new InvalidOperationException(NotStarted(program, e), e);
        }
    }

    /// <summary>Why a program could not be started, naming the package that provides it when the list knows it.</summary>
    public static string NotStarted(string program, Win32Exception e)
    {
        var package = ExternalPrograms.PackageOf(program);
        return package is null
            ? $"cannot start '{program}': {e.Message}"
            : $"cannot start '{program}': {e.Message} (it comes from the Debian package '{package}'; ./fabric test installs it as root)";
    }

    private static ProcessStartInfo StartInfo(string program, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        return start;
    }
}
