using System.Diagnostics;
using System.Text;
using Fabric.Testing;

namespace Fabric.Dashboard.Tests;

/// <summary>
/// The README's first command as a process: <c>fabric-dashboard</c> on its embedded default (silo, signed repository,
/// simulated fleet, dashboard) with its own data folder and port, or with <paramref name="arguments"/> in cluster mode.
/// Shared by the browser tests; stopped and removed after.
/// </summary>
public sealed class EmbeddedDashboard(params string[] arguments) : IAsyncLifetime
{
    private readonly StringBuilder _output = new();
    private Process? _process;

    public EmbeddedDashboard()
        : this(["--phase-seconds", "20"])
    {
    }

    public string DataDirectory { get; } = Directory.CreateTempSubdirectory("fabric-dashboard-").FullName;

    public string Url { get; private set; } = "";

    private bool ClusterMode => arguments.Contains("--gateway") || arguments.Contains("--clustering");

    public (string Name, string Password) Admin { get; private set; }

    public (string Name, string Password) Viewer { get; private set; }

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    public async ValueTask InitializeAsync()
    {
        var port = LoopbackPorts.Free();
        // A dashboard of a cluster when the arguments name one, else the embedded default (what './fabric run' starts).
        var start = new ProcessStartInfo(ClusterMode ? Processes.Built("dashboard/Fabric.Dashboard", "fabric-dashboard")
            : Processes.Built("dashboard/Fabric.Embedded.Host", "fabric-embedded"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in new[] { "--listen", $"127.0.0.1:{port}", "--data", DataDirectory }.Concat(arguments))
        {
            start.ArgumentList.Add(arg);
        }
        _process = Process.Start(start)!;
        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        Url = $"{(arguments.Contains("--tls-certificate") ? "https" : "http")}://127.0.0.1:{port}/";
        await Eventually.TrueAsync(() => Task.FromResult(Output.Contains("ashboard: http", StringComparison.Ordinal) || _process.HasExited),
            TimeSpan.FromSeconds(60), "the embedded default started", () => Task.FromResult(Output));
        if (_process.HasExited)
        {
            throw new InvalidOperationException($"{(ClusterMode ? "fabric-dashboard" : "fabric-embedded")} exited with {_process.ExitCode}: {Output}");
        }
        if (arguments.Contains("--users"))
        {
            // The test wrote that file's hashes and knows the passwords.
            return;
        }
        var users = File.ReadAllLines(InitialPasswords).Where(l => !l.StartsWith('#')).Select(l => l.Split(' ')).ToList();
        Admin = (users.Single(u => u[2] == "admin")[0], users.Single(u => u[2] == "admin")[1]);
        Viewer = (users.Single(u => u[2] == "read-only")[0], users.Single(u => u[2] == "read-only")[1]);
    }

    /// <summary>
    /// <c>fabric-dashboard users set --users FILE NAME ROLE</c> with the password on standard input, as an operator runs it;
    /// fails the test when the command fails.
    /// </summary>
    public static void SetUser(string file, string name, string password, string role)
    {
        var start = new ProcessStartInfo(Processes.Built("dashboard/Fabric.Dashboard", "fabric-dashboard"), ["users", "set", "--users", file, name, role])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        process.StandardInput.WriteLine(password);
        process.StandardInput.Close();
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"fabric-dashboard users set exited with {process.ExitCode}: {output} {error.Result}");
        }
    }

    /// <summary>The embedded default's users file (hashes only).</summary>
    public string UsersFile => Path.Combine(DataDirectory, "credentials.txt");

    /// <summary>Where the embedded default put the passwords it generated.</summary>
    public string InitialPasswords => Path.Combine(DataDirectory, "initial-passwords.txt");

    private void Append(string? line)
    {
        if (line is not null)
        {
            lock (_output)
            {
                _output.AppendLine(line);
            }
        }
    }

    /// <summary>SIGKILL to the dashboard alone, as a crash or the OOM killer would: what it started is left behind.</summary>
    public async Task KillAloneAsync()
    {
        _process!.Kill(entireProcessTree: false);
        await _process.WaitForExitAsync();
    }

    /// <summary>Stops it as Ctrl+C would (SIGTERM); returns its exit code, or null when it had not exited after 30 s.</summary>
    public async Task<int?> StopAsync()
    {
        if (_process is null)
        {
            return null;
        }
        if (!_process.HasExited)
        {
            Privileged.TryRun("kill", "-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try
            {
                await _process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                return null;
            }
        }
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        // Stopped as an operator would, so what it made (agent processes, namespaces) goes too; killed if that hangs.
        if (_process is { HasExited: false } && await StopAsync() is null)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process?.Dispose();
        Directory.Delete(DataDirectory, recursive: true);
    }
}
