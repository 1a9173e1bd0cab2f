using System.Diagnostics;
using System.Globalization;
using Fabric.Testing;

namespace Fabric.Silo.Tests;

/// <summary>
/// A fabric-silo process with a configuration file and the storage account's connection string in its environment (and,
/// when given, the Redis server's).
/// </summary>
internal sealed class SiloProcess : IDisposable
{
    private readonly Process _process;

    public SiloProcess(string config, string? connection, string? redis = null)
    {
        var start = new ProcessStartInfo(Processes.Built("silo/Fabric.Silo.Host", "fabric-silo")) { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(config);
        if (connection is not null)
        {
            start.Environment["FABRIC_TABLE_CONNECTION_STRING"] = connection;
            start.Environment["FABRIC_BLOB_CONNECTION_STRING"] = connection;
        }
        if (redis is not null)
        {
            start.Environment["FABRIC_REDIS_CONNECTION_STRING"] = redis;
        }
        _process = Process.Start(start)!;
        _process.OutputDataReceived += (_, e) => Output.Enqueue(e.Data ?? "");
        _process.ErrorDataReceived += (_, e) => Output.Enqueue(e.Data ?? "");
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public System.Collections.Concurrent.ConcurrentQueue<string> Output { get; } = [];

    /// <summary>For a failure message: the lines that say something went wrong (errors, exceptions), then the last lines written.</summary>
    public string Problems()
    {
        var lines = Output.ToArray();
        var bad = lines.Where(l => l.Contains("fail:", StringComparison.Ordinal) || l.Contains("crit:", StringComparison.Ordinal)
            || l.Contains("Exception", StringComparison.Ordinal) || l.StartsWith("fabric-silo:", StringComparison.Ordinal)).Take(20);
        return string.Join("\n", bad.Append("--- last lines:").Concat(lines.TakeLast(15)));
    }

    public bool HasExited => _process.HasExited;

    /// <summary>kill -9: no goodbye to the cluster.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: true);
        _process.WaitForExit(10_000);
    }

    /// <summary>SIGTERM, as systemd and Kubernetes stop it, and waits for it to leave the cluster and exit.</summary>
    public bool Stop(TimeSpan wait)
    {
        Processes.Run("kill", ["-TERM", _process.Id.ToString(CultureInfo.InvariantCulture)]);
        return _process.WaitForExit(wait);
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(10_000);
        }
        _process.Dispose();
    }
}
