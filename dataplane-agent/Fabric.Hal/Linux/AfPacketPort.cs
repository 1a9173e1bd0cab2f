using System.Buffers.Binary;

namespace Fabric.Hal.Linux;

/// <summary>Options for <see cref="AfPacketPort.Open"/>.</summary>
/// <param name="Promiscuous">Receive frames for every MAC, not only the device's own (needed on an uplink that carries VM MACs).</param>
/// <param name="SocketBufferBytes">SO_RCVBUF/SO_SNDBUF; 0 keeps the kernel default.</param>
/// <param name="MaxFrameLength">Largest frame accepted for transmit and expected on receive; 0 derives it from the MTU.</param>
public sealed record AfPacketOptions(bool Promiscuous = true, int SocketBufferBytes = 4 * 1024 * 1024, int MaxFrameLength = 0);

/// <summary>
/// A frame port over an AF_PACKET raw socket bound to one netdev (a veth end, the host side of a tap, a NIC, an SR-IOV
/// VF). Frames the port itself sends are not received back (PACKET_IGNORE_OUTGOING). Batches use recvmmsg/sendmmsg.
/// </summary>
public sealed unsafe class AfPacketPort : FdFramePort
{
    private const int MaxBatch = 64;

    private AfPacketPort(string name, int fd, PortCapabilities capabilities) : base(name, fd, capabilities)
    {
    }

    /// <summary>Opens a packet socket on <paramref name="device"/>. Throws with the reason when that is impossible.</summary>
    /// <exception cref="InvalidOperationException">No such device, or no permission (CAP_NET_RAW), or a socket option the kernel refused.</exception>
    public static AfPacketPort Open(string device, AfPacketOptions? options = null)
    {
        options ??= new AfPacketOptions();
        var status = TryOpen(device, options, out var port, out var errno, out var step);
        if (status)
        {
            return port!;
        }
        var reason = errno switch
        {
            1 or 13 => "permission denied: AF_PACKET needs CAP_NET_RAW (run the agent as root or grant the capability)",
            Native.ENODEV or Native.ENXIO => $"no network device named '{device}' in this network namespace",
            _ => Describe(errno),
        };
        throw new InvalidOperationException($"Cannot open an AF_PACKET port on '{device}' ({step}): {reason}.");
    }

    /// <summary>The platform layer: opens the socket or returns the errno and the step that failed.</summary>
    public static bool TryOpen(string device, AfPacketOptions options, out AfPacketPort? port, out int errno, out string step)
    {
        port = null;
        step = "if_nametoindex";
        var ifIndex = (int)Native.if_nametoindex(device);
        if (ifIndex == 0)
        {
            errno = Native.ENODEV;
            return false;
        }
        var protocol = BinaryPrimitives.ReverseEndianness(Native.ETH_P_ALL);
        step = "socket";
        var fd = Native.socket(Native.AF_PACKET, Native.SOCK_RAW | Native.SOCK_NONBLOCK | Native.SOCK_CLOEXEC, protocol);
        if (fd < 0)
        {
            errno = Native.Errno;
            return false;
        }
        var address = new Native.SockaddrLl { Family = Native.AF_PACKET, Protocol = protocol, IfIndex = ifIndex };
        var one = 1;
        step = "bind";
        var ok = Native.bind(fd, &address, sizeof(Native.SockaddrLl)) == 0;
        if (ok)
        {
            // Without this the socket also sees every frame this port transmits on the device.
            step = "PACKET_IGNORE_OUTGOING";
            ok = Native.setsockopt(fd, Native.SOL_PACKET, Native.PACKET_IGNORE_OUTGOING, &one, sizeof(int)) == 0;
        }
        if (ok && options.Promiscuous)
        {
            var membership = new Native.PacketMreq { IfIndex = ifIndex, Type = Native.PACKET_MR_PROMISC };
            step = "PACKET_ADD_MEMBERSHIP promisc";
            ok = Native.setsockopt(fd, Native.SOL_PACKET, Native.PACKET_ADD_MEMBERSHIP, &membership, sizeof(Native.PacketMreq)) == 0;
        }
        if (ok && options.SocketBufferBytes > 0)
        {
            var size = options.SocketBufferBytes;
            // The *FORCE variants pass net.core.[rw]mem_max when privileged; fall back to the capped ones otherwise.
            step = "SO_RCVBUF";
            ok = Native.setsockopt(fd, Native.SOL_SOCKET, Native.SO_RCVBUFFORCE, &size, sizeof(int)) == 0
                 || Native.setsockopt(fd, Native.SOL_SOCKET, Native.SO_RCVBUF, &size, sizeof(int)) == 0;
            step = "SO_SNDBUF";
            ok = ok && (Native.setsockopt(fd, Native.SOL_SOCKET, Native.SO_SNDBUFFORCE, &size, sizeof(int)) == 0
                 || Native.setsockopt(fd, Native.SOL_SOCKET, Native.SO_SNDBUF, &size, sizeof(int)) == 0);
        }
        if (!ok)
        {
            errno = Native.Errno;
            Native.close(fd);
            return false;
        }
        var mtu = Native.GetMtu(device);
        mtu = mtu > 0 ? mtu : 1500;
        // Room for the Ethernet header and two VLAN tags on top of the MTU.
        var maxFrame = options.MaxFrameLength > 0 ? options.MaxFrameLength : mtu + 22;
        port = new AfPacketPort(device, fd, new PortCapabilities(mtu, maxFrame, BatchedIo: true));
        errno = 0;
        step = "";
        return true;
    }

    private protected override nint ReadOne(byte* buffer, int length) =>
        // MSG_TRUNC makes recv return the frame's real length, so an oversized frame is reported instead of cut.
        Native.recv(Fd, buffer, length, Native.MSG_DONTWAIT | Native.MSG_TRUNC);

    private protected override nint WriteOne(byte* frame, int length) => Native.send(Fd, frame, length, Native.MSG_DONTWAIT);

    public override PortResult ReceiveBatch(FrameBatch batch, TimeSpan timeout)
    {
        batch.Clear();
        var count = Math.Min(batch.Capacity, MaxBatch);
        var messages = stackalloc Native.MMsgHdr[count];
        var vectors = stackalloc Native.IoVec[count];
        for (var i = 0; i < count; i++)
        {
            // FrameBatch buffers are allocated pinned, so their addresses are stable without GCHandles.
            vectors[i] = new Native.IoVec { Base = batch.AddressOf(i), Length = (nuint)batch.FrameCapacity };
            messages[i] = new Native.MMsgHdr { Header = new Native.MsgHdr { Iov = &vectors[i], IovLength = 1 } };
        }
        while (true)
        {
            var fd = Fd;
            if (fd < 0)
            {
                return PortResult.Closed;
            }
            var n = Native.recvmmsg(fd, messages, (uint)count, Native.MSG_DONTWAIT, null);
            if (n > 0)
            {
                for (var i = 0; i < n; i++)
                {
                    batch.SetReceived(i, (int)Math.Min(messages[i].Length, (uint)batch.FrameCapacity));
                }
                return PortResult.Ok;
            }
            var errno = Native.Errno;
            if (n < 0 && errno == Native.EINTR)
            {
                continue;
            }
            if (n < 0 && errno != Native.EAGAIN)
            {
                return Fail(errno);
            }
            if (WaitReadable(fd, ref timeout) is { } notReady)
            {
                return notReady;
            }
        }
    }

    public override int TransmitBatch(FrameBatch batch)
    {
        var messages = stackalloc Native.MMsgHdr[MaxBatch];
        var vectors = stackalloc Native.IoVec[MaxBatch];
        var sent = 0;
        while (sent < batch.Count)
        {
            var count = Math.Min(batch.Count - sent, MaxBatch);
            for (var i = 0; i < count; i++)
            {
                vectors[i] = new Native.IoVec { Base = batch.AddressOf(sent + i), Length = (nuint)batch[sent + i].Length };
                messages[i] = new Native.MMsgHdr { Header = new Native.MsgHdr { Iov = &vectors[i], IovLength = 1 } };
            }
            var fd = Fd;
            var n = fd < 0 ? -1 : Native.sendmmsg(fd, messages, (uint)count, Native.MSG_DONTWAIT);
            if (n <= 0)
            {
                // A full queue or an error: one frame the slow way, which waits briefly and records the errno.
                if (Transmit(batch[sent]) != PortResult.Ok)
                {
                    return sent;
                }
                n = 1;
            }
            sent += n;
        }
        return sent;
    }
}
