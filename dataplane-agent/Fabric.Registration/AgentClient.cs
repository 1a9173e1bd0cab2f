using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace Fabric.Registration;

/// <summary>
/// One request to the agent's local API (a JSON line over its unix socket) with a hard deadline, for hooks that must
/// return quickly whatever the agent's state.
/// </summary>
public static class AgentClient
{
    /// <summary>The response line; throws <see cref="AgentUnavailableException"/> when the agent is absent or misses the deadline.</summary>
    public static string Send(string socketPath, string requestJson, TimeSpan timeout)
    {
        var watch = Stopwatch.StartNew();
        if (!File.Exists(socketPath))
        {
            throw new AgentUnavailableException($"the agent's socket {socketPath} does not exist (is fabric-agent running?)");
        }
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            // A unix connect fails at once when there is no socket file or nobody listens; it waits only while the
            // agent's backlog is full, so connect without blocking and bound that wait too.
            socket.Blocking = false;
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(socketPath));
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress)
            {
                if (!socket.Poll(timeout, SelectMode.SelectWrite))
                {
                    throw new AgentUnavailableException($"the agent at {socketPath} did not accept within {timeout.TotalMilliseconds:0} ms");
                }
            }
            socket.Blocking = true;
            socket.Send(Encoding.UTF8.GetBytes(requestJson + "\n"));
            var buffer = new byte[64 * 1024];
            var received = new MemoryStream();
            while (true)
            {
                var left = timeout - watch.Elapsed;
                if (left <= TimeSpan.Zero || !socket.Poll(left, SelectMode.SelectRead))
                {
                    throw new AgentUnavailableException($"the agent at {socketPath} did not answer within {timeout.TotalMilliseconds:0} ms");
                }
                var n = socket.Receive(buffer);
                if (n == 0)
                {
                    throw new AgentUnavailableException($"the agent at {socketPath} closed the connection without an answer");
                }
                var newline = Array.IndexOf(buffer, (byte)'\n', 0, n);
                received.Write(buffer, 0, newline < 0 ? n : newline);
                if (newline >= 0)
                {
                    return Encoding.UTF8.GetString(received.ToArray());
                }
            }
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            throw new AgentUnavailableException($"the agent at {socketPath} cannot be reached ({e.Message})");
        }
    }
}

/// <summary>The agent is not running, not listening or too slow; the request was not applied.</summary>
public sealed class AgentUnavailableException(string message) : Exception(message);

/// <summary>
/// A durable, ordered queue of agent requests that could not be delivered (the agent was down): each request is one
/// file, written to a temporary name, flushed to disk and renamed, so a crash never leaves half a request. Whoever replays
/// (the next hook call, or the agent at start) holds an exclusive lock, so requests are applied once and in order.
/// </summary>
public sealed class HookSpool(string directory)
{
    private const string LockName = ".replay.lock";

    public string Directory { get; } = directory;

    /// <summary>Queued request files, oldest first.</summary>
    public IReadOnlyList<string> Pending() => System.IO.Directory.Exists(Directory)
        ? [.. System.IO.Directory.EnumerateFiles(Directory, "*.json").Order(StringComparer.Ordinal)]
        : [];

    /// <summary>Queues a request; it is on disk when this returns.</summary>
    public void Enqueue(string requestJson)
    {
        System.IO.Directory.CreateDirectory(Directory);
        var name = $"{DateTime.UtcNow.Ticks:D19}-{Guid.NewGuid():N}.json";
        var temporary = Path.Combine(Directory, name + ".tmp");
        using (var file = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
        {
            file.Write(Encoding.UTF8.GetBytes(requestJson));
            file.Flush(flushToDisk: true);
        }
        File.Move(temporary, Path.Combine(Directory, name));
    }

    /// <summary>
    /// Delivers queued requests in order. <paramref name="deliver"/> returns true when applied, false when refused for
    /// good (the file moves to rejected/ so it never blocks the queue), and throws <see cref="AgentUnavailableException"/>
    /// to stop (the rest stays queued). Returns how many were applied.
    /// </summary>
    public int Replay(Func<string, bool> deliver)
    {
        if (!System.IO.Directory.Exists(Directory))
        {
            return 0;
        }
        using var gate = TryLock();
        if (gate is null)
        {
            return 0;
        }
        var applied = 0;
        foreach (var file in Pending())
        {
            string request;
            try
            {
                request = File.ReadAllText(file);
            }
            catch (FileNotFoundException)
            {
                continue;
            }
            if (deliver(request))
            {
                applied++;
                File.Delete(file);
            }
            else
            {
                var rejected = Path.Combine(Directory, "rejected");
                System.IO.Directory.CreateDirectory(rejected);
                File.Move(file, Path.Combine(rejected, Path.GetFileName(file)), overwrite: true);
            }
        }
        return applied;
    }

    private FileStream? TryLock()
    {
        try
        {
            return new FileStream(Path.Combine(Directory, LockName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            // Someone else is replaying right now; they deliver in order.
            return null;
        }
    }
}
