using System.Runtime.InteropServices;

namespace Fabric.Hal.Linux;

/// <summary>
/// An epoll(7) set: one thread waits on many descriptors at once and learns which are readable, each by the token it was
/// added with (never by descriptor number, which the kernel reuses once a descriptor closes). Level-triggered: a
/// descriptor with frames left after a read is reported again at the next wait. Closing a descriptor removes it.
/// </summary>
public sealed unsafe class EpollSet : IDisposable
{
    private const int EPOLL_CLOEXEC = 0x80000;
    private const int EPOLL_CTL_ADD = 1;
    private const int EPOLL_CTL_DEL = 2;
    private const uint EPOLLIN = 0x1;
    private const int ENOENT = 2;

    // struct epoll_event is packed on x86-64 (a 32-bit mask, then 64 bits of data: 12 bytes), naturally aligned elsewhere.
    private static readonly int EventSize = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;
    private static readonly int DataOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 4 : 8;

    /// <summary>The most readable descriptors one <see cref="Wait"/> reports (its buffer is on the stack).</summary>
    public const int MaxEvents = 1024;

    private int _fd;

    /// <summary>Makes an empty set. Throws with the reason when the kernel refuses one (the descriptor limit).</summary>
    public EpollSet()
    {
        _fd = epoll_create1(EPOLL_CLOEXEC);
        if (_fd < 0)
        {
            throw new InvalidOperationException($"epoll_create1 failed: {Marshal.GetPInvokeErrorMessage(Native.Errno)}");
        }
    }

    /// <summary>Adds <paramref name="descriptor"/>, reported as readable with <paramref name="token"/>. Throws naming the descriptor when the kernel refuses it.</summary>
    public void Add(int descriptor, long token)
    {
        var ev = stackalloc byte[16];
        *(uint*)ev = EPOLLIN;
        *(long*)(ev + DataOffset) = token;
        if (epoll_ctl(Handle(), EPOLL_CTL_ADD, descriptor, ev) < 0)
        {
            throw new InvalidOperationException($"epoll_ctl could not add descriptor {descriptor}: {Marshal.GetPInvokeErrorMessage(Native.Errno)}");
        }
    }

    /// <summary>Removes <paramref name="descriptor"/>; one already closed (and so removed) is not an error.</summary>
    public void Remove(int descriptor)
    {
        if (descriptor < 0)
        {
            return;
        }
        var ev = stackalloc byte[16];
        if (epoll_ctl(Handle(), EPOLL_CTL_DEL, descriptor, ev) < 0 && Native.Errno is not (ENOENT or Native.EBADF))
        {
            throw new InvalidOperationException($"epoll_ctl could not remove descriptor {descriptor}: {Marshal.GetPInvokeErrorMessage(Native.Errno)}");
        }
    }

    /// <summary>
    /// Waits up to <paramref name="timeoutMilliseconds"/> (−1: without end) for readable descriptors and writes their tokens
    /// into <paramref name="tokens"/> (1 to <see cref="MaxEvents"/> of them); returns how many (0 on timeout or a signal).
    /// Throws when the set was disposed.
    /// </summary>
    public int Wait(Span<long> tokens, int timeoutMilliseconds)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens.Length, 1, nameof(tokens));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens.Length, MaxEvents, nameof(tokens));
        var events = stackalloc byte[EventSize * tokens.Length];
        var n = epoll_wait(Handle(), events, tokens.Length, timeoutMilliseconds);
        if (n < 0)
        {
            var errno = Native.Errno;
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _fd) < 0, this);
            return errno == Native.EINTR ? 0 : throw new InvalidOperationException($"epoll_wait failed: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        for (var i = 0; i < n; i++)
        {
            tokens[i] = *(long*)(events + (i * EventSize) + DataOffset);
        }
        return n;
    }

    private int Handle()
    {
        var fd = Volatile.Read(ref _fd);
        ObjectDisposedException.ThrowIf(fd < 0, this);
        return fd;
    }

    public void Dispose()
    {
        Native.CloseOnce(ref _fd);
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int epoll_create1(int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int epoll_ctl(int epfd, int op, int fd, void* ev);

    [DllImport("libc", SetLastError = true)]
    private static extern int epoll_wait(int epfd, void* events, int maxEvents, int timeout);
}
