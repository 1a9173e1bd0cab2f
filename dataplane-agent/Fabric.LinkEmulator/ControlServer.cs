using System.Text.Json;
using Fabric.Hal.Linux;

namespace Fabric.LinkEmulator;

/// <summary>
/// A line protocol on a unix socket to change a running emulator: one request line, one reply line.
/// <code>
///   set a2b|b2a|both key=value ...   -> "ok a2b: PROFILE; b2a: PROFILE" or "error: WHAT"
///   show                             -> "ok a2b: PROFILE; b2a: PROFILE"
///   stats                            -> "ok {json counters}"
/// </code>
/// A set is applied to every named direction only when all its settings parse: nothing is half-applied.
/// </summary>
public sealed class ControlServer : IDisposable
{
    private readonly LinkEmulator _emulator;
    private readonly UnixLineServer _server;

    public ControlServer(LinkEmulator emulator, string path)
    {
        _emulator = emulator;
        _server = new UnixLineServer(path, Handle);
    }

    /// <summary>Handles one request line and returns the reply line (also used by tests without a socket).</summary>
    public string Handle(string request)
    {
        var words = request.Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (words.Length == 0)
        {
            return "error: empty request (commands: set, show, stats)";
        }
        switch (words[0])
        {
            case "show":
                return "ok " + Describe();
            case "stats":
                return "ok " + JsonSerializer.Serialize(new
                {
                    a2b = Stats(Direction.AToB),
                    b2a = Stats(Direction.BToA),
                });
            case "set":
                if (words.Length < 3)
                {
                    return "error: usage: set a2b|b2a|both key=value ...";
                }
                Direction[] directions = words[1] switch
                {
                    "a2b" => [Direction.AToB],
                    "b2a" => [Direction.BToA],
                    "both" => [Direction.AToB, Direction.BToA],
                    _ => [],
                };
                if (directions.Length == 0)
                {
                    return $"error: direction '{words[1]}' is not a2b, b2a or both";
                }
                try
                {
                    var updated = directions.Select(d => (d, _emulator.GetProfile(d).Apply(words[2..]))).ToList();
                    foreach (var (direction, profile) in updated)
                    {
                        _emulator.SetProfile(direction, profile);
                    }
                    return "ok " + Describe();
                }
                catch (FormatException e)
                {
                    return "error: " + e.Message;
                }
            default:
                return $"error: unknown command '{words[0]}' (commands: set, show, stats)";
        }
    }

    private object Stats(Direction direction)
    {
        var (link, transmitFailures) = _emulator.GetStats(direction);
        return new { link.Offered, link.Lost, link.QueueDrops, link.Delivered, link.DeliveredBytes, link.Queued, link.InFlight, TransmitFailures = transmitFailures };
    }

    private string Describe() => $"a2b: {_emulator.GetProfile(Direction.AToB)}; b2a: {_emulator.GetProfile(Direction.BToA)}";

    /// <summary>Sends one request to a control socket and returns the reply line.</summary>
    public static string Send(string path, string request) =>
        UnixLineServer.Send(path, request) ?? "error: the emulator closed the connection without answering";

    public void Dispose() => _server.Dispose();
}
