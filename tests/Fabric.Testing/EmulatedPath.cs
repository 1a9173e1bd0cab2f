using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Fabric.LinkEmulator;

namespace Fabric.Testing;

/// <summary>
/// Two "hosts" (namespaces A and B) whose only link runs through a real <c>fabric-linkem</c> process in a third
/// namespace: A —veth— [M: fabric-linkem] —veth— B. A is 198.18.0.1/24 and fd00:fab::1/64, B is .2 and ::2 (RFC 2544
/// benchmarking and ULA ranges, inside namespaces this object made). Everything is deleted on dispose.
/// </summary>
public sealed partial class EmulatedPath : IDisposable
{
    public const string AddressA = "198.18.0.1";
    public const string AddressB = "198.18.0.2";
    private readonly TestNetwork _network = new();
    private readonly Process _emulator;
    private readonly string _controlPath;

    /// <param name="emulatorPath">The fabric-linkem executable.</param>
    /// <param name="options">Extra `fabric-linkem run` options (e.g. "--delay", "20ms").</param>
    public EmulatedPath(string emulatorPath, params string[] options)
    {
        try
        {
            NamespaceA = _network.AddNamespace("a");
            NamespaceB = _network.AddNamespace("b");
            NamespaceM = _network.AddNamespace("m");
            var id = _network.Id;
            _network.AddVeth($"{id}a", NamespaceA, $"{id}ma", NamespaceM);
            _network.AddVeth($"{id}b", NamespaceB, $"{id}mb", NamespaceM);
            _network.AddAddress(NamespaceA, $"{id}a", AddressA + "/24");
            _network.AddAddress(NamespaceB, $"{id}b", AddressB + "/24");
            _network.AddAddress(NamespaceA, $"{id}a", "fd00:fab::1/64");
            _network.AddAddress(NamespaceB, $"{id}b", "fd00:fab::2/64");
            _controlPath = Path.Combine(Path.GetTempPath(), $"{id}-linkem.sock");
            _emulator = Fabric.Programs.ProgramRunner.Start("ip", ["netns", "exec", NamespaceM, emulatorPath, "run", "--a", $"{id}ma", "--b", $"{id}mb", "--control", _controlPath, .. options]);
            Output = _emulator.StandardOutput.ReadToEndAsync();
            Errors = _emulator.StandardError.ReadToEndAsync();
            Eventually.True(() => _emulator.HasExited || (File.Exists(_controlPath) && TryControl("show")), TimeSpan.FromSeconds(20),
                "starting fabric-linkem", () => $"exited={_emulator.HasExited}");
            if (_emulator.HasExited)
            {
                throw new InvalidOperationException($"fabric-linkem exited {_emulator.ExitCode}: {Errors.Result}");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string NamespaceA { get; } = "";
    public string NamespaceB { get; } = "";
    public string NamespaceM { get; } = "";

    /// <summary>What the emulator printed (complete once it has stopped).</summary>
    public Task<string> Output { get; } = Task.FromResult("");
    public Task<string> Errors { get; } = Task.FromResult("");

    /// <summary>The emulator's process id (for CPU accounting).</summary>
    public int EmulatorPid => _emulator.Id;

    /// <summary>Sends a control command; throws when the emulator answers with an error.</summary>
    public string Control(string command)
    {
        var reply = ControlServer.Send(_controlPath, command);
        return reply.StartsWith("ok", StringComparison.Ordinal) ? reply : throw new InvalidOperationException($"fabric-linkem refused '{command}': {reply}");
    }

    private bool TryControl(string command)
    {
        try
        {
            return ControlServer.Send(_controlPath, command).StartsWith("ok", StringComparison.Ordinal);
        }
        catch (System.Net.Sockets.SocketException)
        {
            return false;
        }
    }

    /// <summary>Pings B from A; returns the round trips in milliseconds (one per reply) and the loss reported.</summary>
    public (List<double> RttMs, int Sent, int Received) Ping(int count, double intervalSeconds, string target = AddressB)
    {
        var output = TestNetwork.Exec(NamespaceA, "ping", "-n", "-c", count.ToString(CultureInfo.InvariantCulture),
            "-i", intervalSeconds.ToString(CultureInfo.InvariantCulture), "-W", "2", target);
        var rtts = TimeRegex().Matches(output).Select(m => double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();
        var summary = SummaryRegex().Match(output);
        return (rtts, int.Parse(summary.Groups[1].Value, CultureInfo.InvariantCulture), int.Parse(summary.Groups[2].Value, CultureInfo.InvariantCulture));
    }

    public void Dispose()
    {
        if (_emulator is { HasExited: false })
        {
            // `ip netns exec` execs the emulator, so this pid is fabric-linkem: SIGTERM lets it stop and print its counters.
            Privileged.TryRun("kill", "-TERM", _emulator.Id.ToString(CultureInfo.InvariantCulture));
            if (!_emulator.WaitForExit(5000))
            {
                _emulator.Kill(entireProcessTree: true);
            }
        }
        _emulator?.Dispose();
        _network.Dispose();
        if (_controlPath is not null && File.Exists(_controlPath))
        {
            File.Delete(_controlPath);
        }
    }

    [GeneratedRegex(@"time=([\d.]+) ms")]
    private static partial Regex TimeRegex();

    [GeneratedRegex(@"(\d+) packets transmitted, (\d+) received")]
    private static partial Regex SummaryRegex();
}
