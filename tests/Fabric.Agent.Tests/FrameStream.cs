using Fabric.Hal;
using Fabric.Testing;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// vm1 sends UDP frames to vm3 at about 20,000 a second while a test changes what carries them; vm3's side counts what
/// arrives. <see cref="Stop"/> stops the sender and drains until everything sent is in, or nothing came for 2 s.
/// </summary>
internal sealed class FrameStream : IDisposable
{
    private readonly TwoHosts _hosts;
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _sender;
    private readonly Thread _sink;
    private int _sent;
    private int _received;
    private volatile bool _senderDone;

    public FrameStream(TwoHosts hosts)
    {
        _hosts = hosts;
        _sender = new Thread(Send);
        _sink = new Thread(Sink);
        _sender.Start();
        _sink.Start();
    }

    public int Sent => Volatile.Read(ref _sent);

    public int Received => Volatile.Read(ref _received);

    public void Stop()
    {
        _stop.Cancel();
        _sender.Join();
        // Only now is the count of what was sent final: a sink that judged by it earlier could stop between the sender's
        // last transmit and its count, one frame short (seen in CI once the VM ports woke their receivers faster).
        _senderDone = true;
        _sink.Join();
    }

    public void Dispose()
    {
        if (!_stop.IsCancellationRequested)
        {
            Stop();
        }
        _stop.Dispose();
    }

    private void Send()
    {
        // About 20,000 frames a second: enough to see any gap, slow enough for the sink on a loaded machine.
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 1000);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!_stop.IsCancellationRequested)
        {
            if (clock.Elapsed.TotalMilliseconds * 20 < _sent)
            {
                Thread.Yield();
                continue;
            }
            if (_hosts.Vm("vm1").Transmit(frame) == PortResult.Ok)
            {
                Interlocked.Increment(ref _sent);
            }
        }
    }

    private void Sink()
    {
        var buffer = new byte[2048];
        // After the sender stops, frames still in the underlay sockets keep arriving: drain until everything sent is in,
        // or nothing has come for 2 s (then the caller's count assertion reports what is missing).
        var idle = System.Diagnostics.Stopwatch.StartNew();
        while (!_senderDone || (Received < Sent && idle.Elapsed < TimeSpan.FromSeconds(2)))
        {
            if (_hosts.Vm("vm3").Receive(buffer, out _, TimeSpan.FromMilliseconds(50)) == PortResult.Ok)
            {
                Interlocked.Increment(ref _received);
                idle.Restart();
            }
        }
    }
}
