using System.Net.Sockets;
using System.Text;
using System.Text.Json;

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
    private readonly Socket _listener;
    private readonly string _path;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;

    public ControlServer(LinkEmulator emulator, string path)
    {
        _emulator = emulator;
        _path = path;
        if (File.Exists(path))
        {
            File.Delete(path);
        }
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(path));
        _listener.Listen(8);
        _accepting = Task.Run(AcceptLoopAsync);
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

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }
            _ = Task.Run(() => ServeAsync(client));
        }
    }

    private async Task ServeAsync(Socket client)
    {
        using (client)
        {
            await using var stream = new NetworkStream(client);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            await using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
            try
            {
                while (await reader.ReadLineAsync(_stop.Token).ConfigureAwait(false) is { } line)
                {
                    await writer.WriteLineAsync(Handle(line)).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is IOException or OperationCanceledException or SocketException)
            {
                // The client went away or we are stopping: nothing to answer.
            }
        }
    }

    /// <summary>Sends one request to a control socket and returns the reply line.</summary>
    public static string Send(string path, string request)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        using var stream = new NetworkStream(socket);
        using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
        using var reader = new StreamReader(stream, Encoding.UTF8);
        writer.WriteLine(request);
        return reader.ReadLine() ?? "error: the emulator closed the connection without answering";
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        _accepting.Wait(TimeSpan.FromSeconds(2));
        _stop.Dispose();
        if (File.Exists(_path))
        {
            File.Delete(_path);
        }
    }
}
