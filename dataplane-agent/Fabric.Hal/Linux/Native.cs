using System.Runtime.InteropServices;

namespace Fabric.Hal.Linux;

/// <summary>libc entry points and kernel ABI structures (x86-64 and arm64 Linux share these layouts). Status codes only; no throwing.</summary>
internal static unsafe partial class Native
{
    public const int AF_INET = 2;
    public const int AF_PACKET = 17;
    public const int SOCK_DGRAM = 2;
    public const int SOCK_RAW = 3;
    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;
    public const ushort ETH_P_ALL = 0x0003;
    public const int SOL_SOCKET = 1;
    public const int SO_SNDBUF = 7;
    public const int SO_RCVBUF = 8;
    public const int SO_SNDBUFFORCE = 32;
    public const int SO_RCVBUFFORCE = 33;
    public const int SO_TIMESTAMPNS = 35; // SO_TIMESTAMPNS_OLD: a struct timespec of two longs, CLOCK_REALTIME
    public const int SOL_PACKET = 263;
    public const int SOL_UDP = 17;
    public const int UDP_SEGMENT = 103;
    public const int UDP_GRO = 104;
    public const int EIO = 5;
    public const int EINVAL = 22;
    public const int PACKET_ADD_MEMBERSHIP = 1;
    public const int PACKET_MR_PROMISC = 1;
    public const int PACKET_IGNORE_OUTGOING = 23;
    public const int PACKET_VNET_HDR = 15;
    public const int MSG_TRUNC = 0x20;
    public const int MSG_CTRUNC = 0x08;
    public const int MSG_DONTWAIT = 0x40;
    public const int MSG_WAITFORONE = 0x10000;
    public const short POLLIN = 0x1;
    public const short POLLOUT = 0x4;
    public const short POLLERR = 0x8;
    public const short POLLHUP = 0x10;
    public const short POLLNVAL = 0x20;
    public const int O_RDWR = 2;
    public const int O_RDONLY = 0;
    public const int O_NONBLOCK = 0x800;
    public const int O_CLOEXEC = 0x80000;
    public const uint TUNSETIFF = 0x400454ca;
    public const short IFF_UP = 0x1;
    public const short IFF_TAP = 0x0002;
    public const short IFF_NO_PI = 0x1000;
    public const uint SIOCGIFFLAGS = 0x8913;
    public const uint SIOCSIFFLAGS = 0x8914;
    public const uint SIOCGIFMTU = 0x8921;
    public const int CLONE_NEWNET = 0x40000000;
    public const int EINTR = 4;
    public const int ENXIO = 6;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENODEV = 19;
    public const int EMSGSIZE = 90;
    public const int ENETDOWN = 100;
    public const int ENOBUFS = 105;

    [StructLayout(LayoutKind.Sequential)]
    public struct SockaddrLl
    {
        public ushort Family;
        public ushort Protocol;
        public int IfIndex;
        public ushort HaType;
        public byte PktType;
        public byte HaLen;
        public fixed byte Addr[8];
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PacketMreq
    {
        public int IfIndex;
        public ushort Type;
        public ushort ALen;
        public fixed byte Address[8];
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short REvents;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct MMsgHdr
    {
        public MsgHdr Header;
        public uint Length;
    }

    /// <summary>struct ifreq: a 16-byte name and a 24-byte union; only the short (flags) and int (mtu) members are used.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 40)]
    public struct IfReq
    {
        [FieldOffset(0)] public fixed byte Name[16];
        [FieldOffset(16)] public short Flags;
        [FieldOffset(16)] public int Value;
    }

    [DllImport("libc", SetLastError = true)]
    public static extern int socket(int domain, int type, int protocol);

    [DllImport("libc", SetLastError = true)]
    public static extern int bind(int fd, SockaddrLl* address, int length);

    [DllImport("libc", SetLastError = true)]
    public static extern int getsockname(int fd, SockaddrLl* address, int* length);

    [DllImport("libc", SetLastError = true)]
    public static extern int setsockopt(int fd, int level, int name, void* value, int length);

    [DllImport("libc", SetLastError = true)]
    public static extern nint recv(int fd, byte* buffer, nint length, int flags);

    [DllImport("libc", SetLastError = true)]
    public static extern nint send(int fd, byte* buffer, nint length, int flags);

    [DllImport("libc", SetLastError = true)]
    public static extern int recvmmsg(int fd, MMsgHdr* messages, uint count, int flags, void* timeout);

    [DllImport("libc", SetLastError = true)]
    public static extern int sendmmsg(int fd, MMsgHdr* messages, uint count, int flags);

    [DllImport("libc", SetLastError = true)]
    public static extern nint sendmsg(int fd, MsgHdr* message, int flags);

    [DllImport("libc", SetLastError = true)]
    public static extern nint recvmsg(int fd, MsgHdr* message, int flags);

    [DllImport("libc", SetLastError = true)]
    public static extern int poll(PollFd* fds, nuint count, int timeoutMs);

    [DllImport("libc", SetLastError = true)]
    public static extern int close(int fd);

    [DllImport("libc", SetLastError = true)]
    public static extern uint if_nametoindex([MarshalAs(UnmanagedType.LPUTF8Str)] string name);

    [DllImport("libc", SetLastError = true)]
    public static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", SetLastError = true)]
    public static extern nint read(int fd, byte* buffer, nint count);

    [DllImport("libc", SetLastError = true)]
    public static extern nint write(int fd, byte* buffer, nint count);

    [DllImport("libc", SetLastError = true)]
    public static extern int ioctl(int fd, nuint request, void* argument);

    [DllImport("libc", SetLastError = true)]
    public static extern int setns(int fd, int nstype);

    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>Closes the descriptor held in <paramref name="fd"/> and leaves −1 there, once however many threads call it.</summary>
    public static void CloseOnce(ref int fd)
    {
        var held = Interlocked.Exchange(ref fd, -1);
        if (held >= 0)
        {
            close(held);
        }
    }

    /// <summary>poll() one descriptor for <paramref name="events"/>; retries on EINTR. Returns &gt;0 ready, 0 timeout, -1 error.</summary>
    public static int PollOne(int fd, short events, TimeSpan timeout, out short revents)
    {
        var ms = timeout == Timeout.InfiniteTimeSpan ? -1 : (int)Math.Min(int.MaxValue, Math.Ceiling(timeout.TotalMilliseconds));
        var pfd = new PollFd { Fd = fd, Events = events };
        while (true)
        {
            var rc = poll(&pfd, 1, ms);
            if (rc < 0 && Errno == EINTR)
            {
                continue;
            }
            revents = pfd.REvents;
            return rc;
        }
    }

    public static void CopyName(byte* destination, string name)
    {
        var bytes = System.Text.Encoding.ASCII.GetBytes(name);
        for (var i = 0; i < 16; i++)
        {
            destination[i] = i < bytes.Length ? bytes[i] : (byte)0;
        }
    }

    /// <summary>Reads the MTU of <paramref name="name"/> through SIOCGIFMTU; -1 on failure.</summary>
    public static int GetMtu(string name)
    {
        var fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            return -1;
        }
        try
        {
            var req = default(IfReq);
            CopyName(req.Name, name);
            return ioctl(fd, SIOCGIFMTU, &req) < 0 ? -1 : req.Value;
        }
        finally
        {
            close(fd);
        }
    }

    /// <summary>Sets IFF_UP on <paramref name="name"/>; returns 0 or an errno.</summary>
    public static int SetUp(string name)
    {
        var fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            return Errno;
        }
        try
        {
            var req = default(IfReq);
            CopyName(req.Name, name);
            if (ioctl(fd, SIOCGIFFLAGS, &req) < 0)
            {
                return Errno;
            }
            req.Flags |= IFF_UP;
            return ioctl(fd, SIOCSIFFLAGS, &req) < 0 ? Errno : 0;
        }
        finally
        {
            close(fd);
        }
    }
}
