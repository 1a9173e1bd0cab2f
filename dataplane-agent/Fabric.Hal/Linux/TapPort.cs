namespace Fabric.Hal.Linux;

/// <summary>
/// A tap device the agent creates and owns (IFF_TAP | IFF_NO_PI): the kernel side is a netdev a VM or a namespace can
/// use; this side reads and writes Ethernet frames. The device disappears when the port is disposed.
/// </summary>
public sealed unsafe class TapPort : FdFramePort
{
    private TapPort(string name, int fd, PortCapabilities capabilities) : base(name, fd, capabilities)
    {
    }

    /// <summary>Creates the tap <paramref name="name"/> (at most 15 bytes) and, if asked, sets it up. Throws with the reason on failure.</summary>
    public static TapPort Create(string name, bool bringUp = true)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 15 || name.Contains('/', StringComparison.Ordinal))
        {
            throw new ArgumentException($"'{name}' is not a valid interface name (1 to 15 characters, no '/').", nameof(name));
        }
        var fd = Native.open("/dev/net/tun", Native.O_RDWR | Native.O_NONBLOCK | Native.O_CLOEXEC);
        if (fd < 0)
        {
            var errno = Native.Errno;
            throw new InvalidOperationException($"Cannot open /dev/net/tun to create tap '{name}': {Describe(errno)}.");
        }
        var request = default(Native.IfReq);
        Native.CopyName(request.Name, name);
        request.Flags = Native.IFF_TAP | Native.IFF_NO_PI;
        if (Native.ioctl(fd, Native.TUNSETIFF, &request) < 0)
        {
            var errno = Native.Errno;
            Native.close(fd);
            var reason = errno is 1 or 13 ? "permission denied (creating a tap needs CAP_NET_ADMIN)" : errno == 16 ? "the name is in use by another device" : Describe(errno);
            throw new InvalidOperationException($"Cannot create tap '{name}': {reason}.");
        }
        if (bringUp)
        {
            var errno = Native.SetUp(name);
            if (errno != 0)
            {
                Native.close(fd);
                throw new InvalidOperationException($"Created tap '{name}' but cannot set it up: {Describe(errno)}.");
            }
        }
        var mtu = Native.GetMtu(name);
        mtu = mtu > 0 ? mtu : 1500;
        return new TapPort(name, fd, new PortCapabilities(mtu, mtu + 22, BatchedIo: false));
    }

    private protected override nint ReadOne(byte* buffer, int length) => Native.read(Fd, buffer, length);

    private protected override nint WriteOne(byte* frame, int length) => Native.write(Fd, frame, length);
}
