using System.Net.Sockets;
using System.Text;

namespace Fabric.Hal.Linux;

/// <summary>
/// A request/response line protocol on a unix socket: each line a client sends is answered by one line from the
/// handler. Control sockets (the agent's local API, the link emulator's) share it. The socket file is mode 0600 and is
/// removed on dispose.
/// </summary>
public sealed class UnixLineServer : IDisposable
{
    private readonly string _path;
    private readonly Func<string, string> _handler;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;

    public UnixLineServer(string path, Func<string, string> handler)
    {
        _path = path;
        _handler = handler;
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

    /// <summary>Sends one request line and returns the reply line, or null when the server closed without answering.</summary>
    public static string? Send(string path, string request)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        using var stream = new NetworkStream(socket);
        using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
        using var reader = new StreamReader(stream, Encoding.UTF8);
        writer.WriteLine(request);
        return reader.ReadLine();
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
                    await writer.WriteLineAsync(_handler(line)).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is IOException or OperationCanceledException or SocketException or ObjectDisposedException)
            {
                // The client went away, or the server is stopping: nothing to answer.
            }
        }
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
