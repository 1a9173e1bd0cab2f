using System.Diagnostics;

namespace Fabric.Hal.Linux;

/// <summary>Runs host commands (ip, ethtool, kill) and reports their exit code and output.</summary>
public static class Commands
{
    /// <summary>Runs a command and returns its standard output; throws naming the command and its stderr when it fails.</summary>
    public static string Run(string program, params string[] args)
    {
        var (code, stdout, stderr) = TryRun(program, args);
        if (code != 0)
        {
            throw new InvalidOperationException($"'{program} {string.Join(' ', args)}' exited {code}: {stderr.Trim()}");
        }
        return stdout;
    }

    /// <summary>Runs a command and returns its exit code and output.</summary>
    public static (int Code, string Stdout, string Stderr) TryRun(string program, params string[] args)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
