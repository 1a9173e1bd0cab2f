using System.Net.Sockets;

namespace Fabric.Hal.Linux;

/// <summary>
/// Waits on many sockets at once with ppoll(2) and a nanosecond timeout, for a thread that must also wake at a precise
/// time (the embedded link emulator); then reads what is waiting without blocking and without exceptions.
/// </summary>
public sealed unsafe class SocketPoller
{
    private readonly Native.PollFd[] _fds;

    public SocketPoller(IReadOnlyList<Socket> sockets)
    {
        _fds = new Native.PollFd[sockets.Count];
        for (var i = 0; i < sockets.Count; i++)
        {
            _fds[i] = new Native.PollFd { Fd = (int)sockets[i].Handle, Events = Native.POLLIN };
        }
    }

    /// <summary>Waits until a socket is readable or <paramref name="timeoutNanoseconds"/> pass; returns whether any is.</summary>
    public bool Wait(long timeoutNanoseconds)
    {
        var timeout = new TimeSpec { Seconds = timeoutNanoseconds / 1_000_000_000, Nanoseconds = timeoutNanoseconds % 1_000_000_000 };
        fixed (Native.PollFd* at = _fds)
        {
            return ppoll(at, (nuint)_fds.Length, &timeout, null) > 0;
        }
    }

    /// <summary>Whether socket <paramref name="index"/> was readable at the last <see cref="Wait"/> (asking clears it).</summary>
    public bool TakeReadable(int index)
    {
        var readable = _fds[index].REvents != 0;
        _fds[index].REvents = 0;
        return readable;
    }

    /// <summary>One datagram waiting on <paramref name="socket"/> into <paramref name="buffer"/>: its length, or -1 when none is (or the socket reported an error).</summary>
    public static int TryReceive(Socket socket, Span<byte> buffer)
    {
        fixed (byte* at = buffer)
        {
            return (int)Native.recv((int)socket.Handle, at, buffer.Length, Native.MSG_DONTWAIT);
        }
    }

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int ppoll(Native.PollFd* fds, nuint count, TimeSpec* timeout, void* signalMask);
}
