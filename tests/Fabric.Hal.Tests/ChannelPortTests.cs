using Fabric.Hal;

namespace Fabric.Hal.Tests;

public class ChannelPortTests
{
    [Fact]
    public void FramesSentOnOneEnd_ArriveInOrderOnTheOther()
    {
        var (a, b) = ChannelPort.CreatePair();
        for (byte i = 0; i < 10; i++)
        {
            Assert.Equal(PortResult.Ok, a.Transmit(Frame(i, 60)));
        }
        var buffer = new byte[2048];
        for (byte i = 0; i < 10; i++)
        {
            Assert.Equal(PortResult.Ok, b.Receive(buffer, out var length, TimeSpan.Zero));
            Assert.Equal(60, length);
            Assert.Equal(i, buffer[0]);
        }
        Assert.Equal(PortResult.Timeout, b.Receive(buffer, out _, TimeSpan.Zero));
    }

    [Fact]
    public void Batches_TakeWhatIsReadyUpToCapacity()
    {
        var (a, b) = ChannelPort.CreatePair();
        var send = new FrameBatch(8, 2048);
        for (byte i = 0; i < 5; i++)
        {
            Assert.True(send.TryAdd(Frame(i, 100 + i)));
        }
        Assert.Equal(5, a.TransmitBatch(send));
        var receive = new FrameBatch(3, 2048);
        Assert.Equal(PortResult.Ok, b.ReceiveBatch(receive, TimeSpan.Zero));
        Assert.Equal(3, receive.Count);
        Assert.Equal(102, receive[2].Length);
        Assert.Equal(PortResult.Ok, b.ReceiveBatch(receive, TimeSpan.Zero));
        Assert.Equal(2, receive.Count);
        Assert.Equal(4, receive[1][0]);
    }

    [Fact]
    public void FullQueue_WouldBlock_AndOversizedFrames_AreRefused()
    {
        var (a, _) = ChannelPort.CreatePair(capacity: 2);
        Assert.Equal(PortResult.Ok, a.Transmit(Frame(1, 60)));
        Assert.Equal(PortResult.Ok, a.Transmit(Frame(2, 60)));
        Assert.Equal(PortResult.WouldBlock, a.Transmit(Frame(3, 60)));
        Assert.Equal(PortResult.TooLarge, a.Transmit(new byte[a.Capabilities.MaxFrameLength + 1]));
    }

    [Fact]
    public async Task ClosingAPort_WakesAWaitingReceiver()
    {
        var (a, b) = ChannelPort.CreatePair();
        var receiver = Task.Run(() => b.Receive(new byte[2048], out _, TimeSpan.FromSeconds(30)), TestContext.Current.CancellationToken);
        b.Dispose();
        Assert.Equal(PortResult.Closed, await receiver.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.Equal(PortResult.Closed, a.Transmit(Frame(0, 60)));
    }

    [Fact]
    public async Task AReceiverAsleep_IsWokenByEveryFrame_NoneLeftUnseen()
    {
        // The receiver waits without a timeout, and the sender often waits until it has taken everything, so it falls
        // asleep thousands of times: one lost wake-up leaves it asleep for good with frames waiting, and the test fails.
        var (a, b) = ChannelPort.CreatePair(capacity: 1 << 16);
        const int Frames = 20_000;
        var receiver = Task.Run(() =>
        {
            var batch = new FrameBatch(4, 2048);
            var (received, expected) = (0, 0);
            while (received < Frames)
            {
                var result = b.ReceiveBatch(batch, Timeout.InfiniteTimeSpan);
                if (result != PortResult.Ok)
                {
                    return $"{result} after {received} frames";
                }
                for (var i = 0; i < batch.Count; i++, received++)
                {
                    if (batch[i][0] != (byte)expected++)
                    {
                        return $"frame {received} out of order";
                    }
                }
            }
            return "ok";
        }, TestContext.Current.CancellationToken);
        var random = new Random(7);
        for (var sent = 0; sent < Frames;)
        {
            for (var burst = random.Next(1, 6); burst > 0 && sent < Frames; burst--, sent++)
            {
                Assert.Equal(PortResult.Ok, a.Transmit(Frame((byte)sent, 60)));
            }
            if (random.Next(4) == 0)
            {
                var waiting = System.Diagnostics.Stopwatch.StartNew();
                while (b.Pending > 0)
                {
                    Assert.True(waiting.Elapsed < TimeSpan.FromSeconds(30), $"the receiver slept with {b.Pending} frames waiting after {sent} were sent");
                    Thread.Sleep(1);
                }
            }
        }
        try
        {
            Assert.Equal("ok", await receiver.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken));
        }
        finally
        {
            b.Dispose();
        }
    }

    [Fact]
    public void AReceiveWithATimeout_ReturnsTimeout_WhenNothingCame()
    {
        var (_, b) = ChannelPort.CreatePair();
        Assert.Equal(PortResult.Timeout, b.Receive(new byte[2048], out _, TimeSpan.FromMilliseconds(20)));
        Assert.Equal(PortResult.Timeout, b.ReceiveBatch(new FrameBatch(4, 2048), TimeSpan.FromMilliseconds(20)));
    }

    private static byte[] Frame(byte marker, int length)
    {
        var frame = new byte[length];
        frame[0] = marker;
        return frame;
    }
}
