using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;

namespace Fabric.Testing;

/// <summary>
/// A real redis-server (Debian's, installed by `./fabric test` from programs.tsv) for one test class: on a free loopback
/// port, nothing saved to disk, killed on dispose. Where it is not installed, <see cref="Unavailable"/> says why (tests
/// skip with it).
/// </summary>
public sealed class Redis : IDisposable
{
    private readonly Process? _process;
    private readonly List<string> _output = [];

    public Redis()
    {
        Port = LoopbackPorts.Free();
        if (!(Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, "redis-server"))))
        {
            Unavailable = "redis-server is not installed (./fabric test installs it as root)";
            return;
        }
        var start = new ProcessStartInfo("redis-server")
        {
            ArgumentList = { "--bind", "127.0.0.1", "--port", Port.ToString(CultureInfo.InvariantCulture), "--save", "", "--appendonly", "no", "--daemonize", "no" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        try
        {
            _process = Process.Start(start) ?? throw new InvalidOperationException("redis-server did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"redis-server cannot be started ({e.Message}): run `./fabric test` as root (it installs redis-server).", e);
        }
        _process.OutputDataReceived += (_, e) => Add(e.Data);
        _process.ErrorDataReceived += (_, e) => Add(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = Stopwatch.StartNew();
        while (!LoopbackPorts.Listening(Port))
        {
            if (_process.HasExited || deadline.Elapsed > TimeSpan.FromSeconds(20))
            {
                Dispose();
                throw new InvalidOperationException($"redis-server did not listen on 127.0.0.1:{Port} within 20 s: {string.Join(" | ", _output)}");
            }
            Thread.Sleep(50);
        }
    }

    public int Port { get; }

    /// <summary>Why there is no server (null: there is one).</summary>
    public string? Unavailable { get; }

    /// <summary>The StackExchange.Redis configuration string of this server.</summary>
    public string ConnectionString => $"127.0.0.1:{Port}";

    private void Add(string? line)
    {
        if (line is not null)
        {
            lock (_output)
            {
                _output.Add(line);
            }
        }
    }

    public void Dispose()
    {
        if (_process is null)
        {
            return;
        }
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit(5000);
        }
        _process.Dispose();
    }
}
