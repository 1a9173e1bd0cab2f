using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Fabric.Agent.Api;

/// <summary>
/// The agent's local API on a unix socket: one JSON <see cref="ApiRequest"/> per line in, one JSON
/// <see cref="ApiResponse"/> per line out. Hooks (libvirt, CNI) and the CLI talk to it. The socket file is mode 0600.
/// </summary>
public sealed class LocalApiServer : IDisposable
{
    private readonly Agent _agent;
    private readonly string _path;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;

    public LocalApiServer(Agent agent, string path)
    {
        _agent = agent;
        _path = path;
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        if (File.Exists(path))
        {
            File.Delete(path);
        }
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(path));
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _listener.Listen(16);
        _accepting = Task.Run(AcceptLoopAsync);
    }

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
                    ApiResponse response;
                    try
                    {
                        response = _agent.Handle(AgentConfig.Parse<ApiRequest>(line));
                    }
                    catch (Exception e) when (e is JsonException or FormatException)
                    {
                        response = new ApiResponse(false, Error: $"bad request: {e.Message}");
                    }
                    await writer.WriteLineAsync(AgentConfig.Serialize(response)).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is IOException or OperationCanceledException or SocketException)
            {
                // The client went away.
            }
        }
    }

    /// <summary>Sends one request line and returns the response line.</summary>
    public static string Send(string path, string requestJson)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        using var stream = new NetworkStream(socket);
        using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
        using var reader = new StreamReader(stream, Encoding.UTF8);
        writer.WriteLine(requestJson);
        return reader.ReadLine() ?? """{"ok":false,"error":"the agent closed the connection"}""";
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
