using System.Runtime.InteropServices;

namespace Fabric.Hal.Linux;

/// <summary>
/// The shared part of ports over a Linux file descriptor (a packet socket or a tap): a non-blocking descriptor, poll()
/// for timeouts, errno values turned into <see cref="PortResult"/>s. Subclasses say how one frame is read and written.
/// </summary>
public abstract unsafe class FdFramePort : IPollablePort
{
    private int _fd;
    private int _lastErrno;

    private protected FdFramePort(string name, int fd, PortCapabilities capabilities)
    {
        Name = name;
        _fd = fd;
        Capabilities = capabilities;
    }

    public string Name { get; }

    public PortCapabilities Capabilities { get; }

    public int LastErrno => _lastErrno;

    private protected int Fd => _fd;

    public int ReadinessDescriptor => Volatile.Read(ref _fd);

    /// <summary>One non-blocking read of one frame: returns its full length (may exceed <paramref name="length"/>), or -1 with errno.</summary>
    private protected abstract nint ReadOne(byte* buffer, int length);

    /// <summary>One non-blocking write of one frame: returns bytes written, or -1 with errno.</summary>
    private protected abstract nint WriteOne(byte* frame, int length);

    public PortResult Transmit(ReadOnlySpan<byte> frame)
    {
        if (frame.Length > Capabilities.MaxFrameLength)
        {
            return PortResult.TooLarge;
        }
        fixed (byte* p = frame)
        {
            for (var attempt = 0; ; attempt++)
            {
                var fd = _fd;
                if (fd < 0)
                {
                    return PortResult.Closed;
                }
                if (WriteOne(p, frame.Length) >= 0)
                {
                    return PortResult.Ok;
                }
                var errno = Native.Errno;
                if (errno == Native.EINTR)
                {
                    continue;
                }
                // The device queue is momentarily full: give it one millisecond, as a NIC ring would, then report a drop.
                if ((errno == Native.EAGAIN || errno == Native.ENOBUFS) && attempt == 0)
                {
                    Native.PollOne(fd, Native.POLLOUT, TimeSpan.FromMilliseconds(1), out _);
                    continue;
                }
                return Fail(errno);
            }
        }
    }

    public PortResult Receive(Span<byte> buffer, out int length, TimeSpan timeout)
    {
        length = 0;
        fixed (byte* p = buffer)
        {
            while (true)
            {
                var fd = _fd;
                if (fd < 0)
                {
                    return PortResult.Closed;
                }
                var n = ReadOne(p, buffer.Length);
                if (n >= 0)
                {
                    if (n > buffer.Length)
                    {
                        return PortResult.TooLarge;
                    }
                    length = (int)n;
                    return PortResult.Ok;
                }
                var errno = Native.Errno;
                if (errno == Native.EINTR)
                {
                    continue;
                }
                if (errno != Native.EAGAIN && !(errno == Native.ENETDOWN && DeviceDownOnly()))
                {
                    return Fail(errno);
                }
                if (WaitReadable(fd, ref timeout) is { } notReady)
                {
                    return notReady;
                }
            }
        }
    }

    /// <summary>Whether an ENETDOWN from a read means only that the device is down now (the port waits for it), not gone.</summary>
    private protected virtual bool DeviceDownOnly() => false;

    /// <summary>
    /// Waits up to <paramref name="timeout"/> for the descriptor to become readable after a read found nothing.
    /// Returns null when it is (and sets the timeout to zero, so the caller reads once more and stops), or the result
    /// to hand back: a timeout, or the port closing under the wait.
    /// </summary>
    private protected PortResult? WaitReadable(int fd, ref TimeSpan timeout)
    {
        if (timeout == TimeSpan.Zero)
        {
            return PortResult.Timeout;
        }
        var ready = Native.PollOne(fd, Native.POLLIN, timeout, out var revents);
        if (ready == 0)
        {
            return PortResult.Timeout;
        }
        if (ready < 0 || (revents & (Native.POLLNVAL | Native.POLLHUP)) != 0)
        {
            return _fd < 0 ? PortResult.Closed : Fail(ready < 0 ? Native.Errno : Native.EBADF);
        }
        timeout = TimeSpan.Zero;
        return null;
    }

    public virtual PortResult ReceiveBatch(FrameBatch batch, TimeSpan timeout)
    {
        batch.Clear();
        var first = Receive(batch.BufferAt(0), out var length, timeout);
        if (first != PortResult.Ok)
        {
            return first;
        }
        batch.SetReceived(0, length);
        for (var i = 1; i < batch.Capacity; i++)
        {
            if (Receive(batch.BufferAt(i), out length, TimeSpan.Zero) != PortResult.Ok)
            {
                break;
            }
            batch.SetReceived(i, length);
        }
        return PortResult.Ok;
    }

    public virtual int TransmitBatch(FrameBatch batch)
    {
        for (var i = 0; i < batch.Count; i++)
        {
            if (Transmit(batch[i]) != PortResult.Ok)
            {
                return i;
            }
        }
        return batch.Count;
    }

    private protected PortResult Fail(int errno)
    {
        _lastErrno = errno;
        return errno is Native.ENXIO or Native.ENODEV or Native.ENETDOWN or Native.EBADF ? PortResult.Closed
            : errno == Native.EMSGSIZE ? PortResult.TooLarge
            : errno is Native.EAGAIN or Native.ENOBUFS ? PortResult.WouldBlock
            : PortResult.Error;
    }

    /// <summary>Closes the descriptor; a receive blocked in poll() wakes with <see cref="PortResult.Closed"/> within its timeout.</summary>
    public void Dispose()
    {
        Native.CloseOnce(ref _fd);
        GC.SuppressFinalize(this);
    }

    private protected static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
