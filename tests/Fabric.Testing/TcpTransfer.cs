using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Fabric.Hal.Linux;

namespace Fabric.Testing;

/// <summary>
/// A kernel TCP transfer between two namespaces: the sender streams seeded pseudo-random bytes and hashes what it sent,
/// the receiver hashes what it got. Equal SHA-256 means every byte arrived, in order.
/// </summary>
public static class TcpTransfer
{
    public sealed record Result(long Bytes, string SentSha256, string ReceivedSha256, TimeSpan Elapsed)
    {
        public double MegabitsPerSecond => Bytes * 8 / Elapsed.TotalSeconds / 1e6;
    }

    /// <summary>
    /// Sends <paramref name="bytes"/> from <paramref name="senderNamespace"/> to <paramref name="receiverAddress"/>:<paramref name="port"/>
    /// in <paramref name="receiverNamespace"/>, within <paramref name="timeout"/>; with <paramref name="pacingMbps"/>, no faster
    /// than that (SO_MAX_PACING_RATE), so that a transfer lasts long enough for something to happen during it.
    /// </summary>
    public static Result Run(string senderNamespace, string receiverNamespace, string receiverAddress, long bytes, TimeSpan timeout, int port = 5201,
        uint? pacingMbps = null)
    {
        var address = IPAddress.Parse(receiverAddress);
        using var listener = NetworkNamespace.Run(receiverNamespace, () => new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
        listener.Bind(new IPEndPoint(address, port));
        listener.Listen(1);
        string? received = null;
        Exception? receiveFailure = null;
        var receiver = new Thread(() =>
        {
            try
            {
                using var connection = listener.Accept();
                connection.ReceiveTimeout = (int)timeout.TotalMilliseconds;
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                var buffer = new byte[256 * 1024];
                int n;
                while ((n = connection.Receive(buffer)) > 0)
                {
                    hash.AppendData(buffer, 0, n);
                }
                received = Convert.ToHexString(hash.GetHashAndReset());
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                receiveFailure = e;
            }
        }) { IsBackground = true };
        receiver.Start();

        using var client = NetworkNamespace.Run(senderNamespace, () => new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
        client.SendTimeout = (int)timeout.TotalMilliseconds;
        if (pacingMbps is { } mbps)
        {
            client.SetRawSocketOption(1 /* SOL_SOCKET */, 47 /* SO_MAX_PACING_RATE */, BitConverter.GetBytes(mbps * 125_000u));
        }
        var watch = Stopwatch.StartNew();
        client.Connect(new IPEndPoint(address, port));
        using var sentHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var chunk = new byte[256 * 1024];
        var random = new Random(20261126);
        for (var sent = 0L; sent < bytes;)
        {
            var n = (int)Math.Min(chunk.Length, bytes - sent);
            random.NextBytes(chunk.AsSpan(0, n));
            sentHash.AppendData(chunk, 0, n);
            client.Send(chunk.AsSpan(0, n));
            sent += n;
        }
        client.Shutdown(SocketShutdown.Send);
        if (!receiver.Join(timeout))
        {
            throw new TimeoutException($"TCP transfer of {bytes} bytes to {receiverAddress}: the receiver did not finish within {timeout.TotalSeconds} s.");
        }
        watch.Stop();
        if (receiveFailure is not null)
        {
            throw new InvalidOperationException($"TCP transfer to {receiverAddress} failed at the receiver: {receiveFailure.Message}", receiveFailure);
        }
        return new Result(bytes, Convert.ToHexString(sentHash.GetHashAndReset()), received!, watch.Elapsed);
    }
}
