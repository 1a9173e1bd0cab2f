using System.Diagnostics;

namespace Fabric.Testing;

/// <summary>Runs host commands for privileged tests, and says whether they can run.</summary>
public static class Privileged
{
    /// <summary>True when the process is root (namespaces, veths, AF_PACKET need it).</summary>
    public static bool IsRoot => Environment.UserName == "root" || Environment.GetEnvironmentVariable("USER") == "root" || GetEuid() == 0;

    /// <summary>The reason privileged tests give when they skip.</summary>
    public const string SkipReason = "needs root (network namespaces, veth pairs, AF_PACKET); run ./fabric test as root";

    private static uint GetEuid()
    {
        try
        {
            var status = File.ReadAllLines("/proc/self/status").First(l => l.StartsWith("Uid:", StringComparison.Ordinal));
            return uint.Parse(status.Split('\t', StringSplitOptions.RemoveEmptyEntries)[2], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or FormatException or InvalidOperationException)
        {
            return uint.MaxValue;
        }
    }

    /// <summary>Runs a command and returns its standard output; throws with stderr when it fails.</summary>
    public static string Run(string program, params string[] args) => Fabric.Programs.ProgramRunner.Run(program, args);

    /// <summary>Starts a long-running program inside a network namespace; its output is drained (and discarded) so it never blocks on a full pipe.</summary>
    public static Process StartInNamespace(string ns, string program, params string[] args) => StartInNamespace(ns, program, null, args);

    /// <summary>The same, handing each line it prints to <paramref name="output"/>.</summary>
    public static Process StartInNamespace(string ns, string program, Action<string>? output, params string[] args)
    {
        var process = Fabric.Programs.ProgramRunner.Start("ip", ["netns", "exec", ns, program, .. args]);
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { output?.Invoke(e.Data); } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { output?.Invoke(e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>Runs a command and returns its exit code and output.</summary>
    public static Fabric.Programs.ProgramResult TryRun(string program, params string[] args) => Fabric.Programs.ProgramRunner.TryRun(program, args);
}
