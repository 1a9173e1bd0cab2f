using System.Buffers.Binary;

namespace Fabric.Hal.Linux;

/// <summary>Options for <see cref="AfPacketPort.Open"/>.</summary>
/// <param name="Promiscuous">Receive frames for every MAC, not only the device's own (needed on an uplink that carries VM MACs).</param>
/// <param name="SocketBufferBytes">SO_RCVBUF/SO_SNDBUF; 0 keeps the kernel default.</param>
/// <param name="MaxFrameLength">Largest frame accepted for transmit and expected on receive; 0 derives it from the MTU.</param>
/// <param name="Offloads">
/// Read and write a virtio-net header with each frame (PACKET_VNET_HDR), as a VM's virtio NIC does: the device may then
/// keep its checksum and segmentation offloads on, frames received may be partial or large (up to 64 KiB, see
/// <see cref="FrameBatch.Offload"/>), and runs of TCP segments of one flow are joined into one large frame on transmit.
/// For a VM's port; never for an uplink whose frames leave the host as they are.
/// </param>
public sealed record AfPacketOptions(bool Promiscuous = true, int SocketBufferBytes = 4 * 1024 * 1024, int MaxFrameLength = 0, bool Offloads = false);

/// <summary>
/// A frame port over an AF_PACKET raw socket bound to one netdev (a veth end, the host side of a tap, a NIC, an SR-IOV
/// VF). Frames the port itself sends are not received back (PACKET_IGNORE_OUTGOING). Batches use recvmmsg/sendmmsg.
/// </summary>
public sealed unsafe class AfPacketPort : FdFramePort
{
    private const int MaxBatch = 64;

    /// <summary>The largest frame a port with offloads takes or gives: a 64 KiB IP packet and its Ethernet header.</summary>
    public const int OffloadFrameLength = 65535 + 14;

    private readonly bool _offloads;
    private readonly int _ifIndex;

    private AfPacketPort(string name, int fd, int ifIndex, PortCapabilities capabilities) : base(name, fd, capabilities)
    {
        _offloads = capabilities.Offloads;
        _ifIndex = ifIndex;
    }

    /// <summary>
    /// A packet socket reports ENETDOWN once when its device goes down, or when it was bound while the device was down (a
    /// VM's NIC that appears on its host before it is up, as in a migration): the device is still this one, so its frames
    /// come when it is up again. Only a device that is gone (deleted, or moved to another namespace) closes the port.
    /// </summary>
    private protected override bool DeviceDownOnly()
    {
        // The socket's own binding, not a lookup by name (which would read the calling thread's namespace): the kernel
        // unbinds a packet socket (index -1) when its device leaves the namespace or is deleted, and only then.
        var address = default(Native.SockaddrLl);
        var length = sizeof(Native.SockaddrLl);
        return Fd >= 0 && Native.getsockname(Fd, &address, &length) == 0 && address.IfIndex == _ifIndex;
    }

    /// <summary>Frames this port joined into larger ones on transmit, and the larger frames they made.</summary>
    public long JoinedFrames { get; private set; }

    public long JoinedSends { get; private set; }

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
        if (ok && options.Offloads)
        {
            step = "PACKET_VNET_HDR";
            ok = Native.setsockopt(fd, Native.SOL_PACKET, Native.PACKET_VNET_HDR, &one, sizeof(int)) == 0;
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
        var maxFrame = options.MaxFrameLength > 0 ? options.MaxFrameLength : options.Offloads ? OffloadFrameLength : mtu + 22;
        port = new AfPacketPort(device, fd, ifIndex, new PortCapabilities(mtu, maxFrame, BatchedIo: true, options.Offloads));
        errno = 0;
        step = "";
        return true;
    }

    private protected override nint ReadOne(byte* buffer, int length)
    {
        if (!_offloads)
        {
            // MSG_TRUNC makes recv return the frame's real length, so an oversized frame is reported instead of cut.
            return Native.recv(Fd, buffer, length, Native.MSG_DONTWAIT | Native.MSG_TRUNC);
        }
        var header = stackalloc byte[VirtioNetHeader.Size];
        var vectors = stackalloc Native.IoVec[2];
        vectors[0] = new Native.IoVec { Base = header, Length = VirtioNetHeader.Size };
        vectors[1] = new Native.IoVec { Base = buffer, Length = (nuint)length };
        var message = new Native.MsgHdr { Iov = vectors, IovLength = 2 };
        var n = Native.recvmsg(Fd, &message, Native.MSG_DONTWAIT | Native.MSG_TRUNC);
        if (n < VirtioNetHeader.Size)
        {
            return n < 0 ? n : 0;
        }
        var frameLength = (int)n - VirtioNetHeader.Size;
        var offload = VirtioNetHeader.Read(new ReadOnlySpan<byte>(header, VirtioNetHeader.Size));
        if (offload.IsPlain || frameLength > length)
        {
            return frameLength;
        }
        // One frame at a time has no room for the segments of a large one: it is reported too large. Receive batches cut them.
        var frame = new Span<byte>(buffer, frameLength);
        return (offload.GsoType & ~VirtioNetHeader.GsoEcn) == VirtioNetHeader.GsoNone && FrameOffload.FinishChecksum(frame, offload) ? frameLength : length + 1;
    }

    private protected override nint WriteOne(byte* frame, int length)
    {
        if (!_offloads)
        {
            return Native.send(Fd, frame, length, Native.MSG_DONTWAIT);
        }
        var header = stackalloc byte[VirtioNetHeader.Size];
        new Span<byte>(header, VirtioNetHeader.Size).Clear();
        var vectors = stackalloc Native.IoVec[2];
        vectors[0] = new Native.IoVec { Base = header, Length = VirtioNetHeader.Size };
        vectors[1] = new Native.IoVec { Base = frame, Length = (nuint)length };
        var message = new Native.MsgHdr { Iov = vectors, IovLength = 2 };
        var n = Native.sendmsg(Fd, &message, Native.MSG_DONTWAIT);
        return n < 0 ? n : Math.Max(0, n - VirtioNetHeader.Size);
    }

    public override PortResult ReceiveBatch(FrameBatch batch, TimeSpan timeout)
    {
        batch.Clear();
        var count = Math.Min(batch.Capacity, MaxBatch);
        var messages = stackalloc Native.MMsgHdr[count];
        var vectors = stackalloc Native.IoVec[count * 2];
        var perMessage = _offloads ? 2 : 1;
        for (var i = 0; i < count; i++)
        {
            // FrameBatch buffers are allocated pinned, so their addresses are stable without GCHandles.
            var v = &vectors[i * perMessage];
            if (_offloads)
            {
                *v++ = new Native.IoVec { Base = batch.HeaderAddressOf(i), Length = VirtioNetHeader.Size };
            }
            *v = new Native.IoVec { Base = batch.AddressOf(i), Length = (nuint)batch.FrameCapacity };
            messages[i] = new Native.MMsgHdr { Header = new Native.MsgHdr { Iov = &vectors[i * perMessage], IovLength = (nuint)perMessage } };
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
                    var length = (int)messages[i].Length;
                    if (_offloads)
                    {
                        length = Math.Max(0, length - VirtioNetHeader.Size);
                    }
                    batch.SetReceived(i, Math.Min(length, batch.FrameCapacity));
                    if (_offloads)
                    {
                        batch.SetOffload(i, VirtioNetHeader.Read(batch.HeaderAt(i)));
                    }
                }
                return PortResult.Ok;
            }
            var errno = Native.Errno;
            if (n < 0 && errno == Native.EINTR)
            {
                continue;
            }
            if (n < 0 && errno != Native.EAGAIN && !(errno == Native.ENETDOWN && DeviceDownOnly()))
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
        if (_offloads)
        {
            return TransmitJoined(batch);
        }
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

    /// <summary>
    /// Sends a batch with a virtio-net header per message, joining each run of TCP segments of one flow (in order, one size
    /// but the last) into one large segment whose checksum the kernel need not verify: the VM's stack then handles one
    /// packet where it would have handled the run, as receive offload on a NIC gives it. No payload is copied: a joined
    /// message points at the first frame whole and at the payload of each after it.
    /// </summary>
    private int TransmitJoined(FrameBatch batch)
    {
        var count = Math.Min(batch.Count, MaxBatch);
        var messages = stackalloc Native.MMsgHdr[count];
        var vectors = stackalloc Native.IoVec[count * 2];
        var headers = stackalloc byte[count * VirtioNetHeader.Size];
        var firstFrame = stackalloc int[count + 1];
        var v = 0;
        var m = 0;
        for (var i = 0; i < count; m++)
        {
            var first = batch[i];
            var header = headers + (m * VirtioNetHeader.Size);
            var run = 1;
            var headerLength = FrameOffload.JoinableHeaders(first);
            var size = first.Length - headerLength;
            var total = size;
            if (headerLength > 0)
            {
                while (i + run < count && total + size <= 65535 - headerLength
                       && batch[i + run].Length - headerLength <= size
                       && FrameOffload.Continues(batch[i + run - 1], batch[i + run], headerLength))
                {
                    total += batch[i + run].Length - headerLength;
                    run++;
                    if (batch[i + run - 1].Length - headerLength < size)
                    {
                        break; // a shorter segment ends its run
                    }
                }
            }
            var offload = run > 1
                ? FrameOffload.JoinHead(first, headerLength, size, total, FrameOffload.Pushes(batch[i + run - 1]))
                : default;
            offload.Write(new Span<byte>(header, VirtioNetHeader.Size));
            messages[m] = new Native.MMsgHdr { Header = new Native.MsgHdr { Iov = &vectors[v], IovLength = (nuint)(run + 1) } };
            vectors[v++] = new Native.IoVec { Base = header, Length = VirtioNetHeader.Size };
            vectors[v++] = new Native.IoVec { Base = batch.AddressOf(i), Length = (nuint)first.Length };
            for (var j = 1; j < run; j++)
            {
                vectors[v++] = new Native.IoVec { Base = (byte*)batch.AddressOf(i + j) + headerLength, Length = (nuint)(batch[i + j].Length - headerLength) };
            }
            if (run > 1)
            {
                JoinedSends++;
                JoinedFrames += run;
            }
            firstFrame[m] = i;
            i += run;
        }
        firstFrame[m] = count;
        var sentMessages = 0;
        while (sentMessages < m)
        {
            var fd = Fd;
            var n = fd < 0 ? -1 : Native.sendmmsg(fd, messages + sentMessages, (uint)(m - sentMessages), Native.MSG_DONTWAIT);
            if (n > 0)
            {
                sentMessages += n;
                continue;
            }
            var errno = n < 0 ? Native.Errno : 0;
            if (errno == Native.EINTR)
            {
                continue;
            }
            if ((errno == Native.EAGAIN || errno == Native.ENOBUFS) && fd >= 0)
            {
                // The device queue is momentarily full: give it one millisecond, as a NIC ring would, then stop here.
                Native.PollOne(fd, Native.POLLOUT, TimeSpan.FromMilliseconds(1), out _);
                n = Native.sendmmsg(fd, messages + sentMessages, (uint)(m - sentMessages), Native.MSG_DONTWAIT);
                if (n > 0)
                {
                    sentMessages += n;
                    continue;
                }
            }
            break;
        }
        // Frames of messages sent count as sent (a joined message carried them all); the rest were not.
        return firstFrame[sentMessages] + (count < batch.Count && sentMessages == m ? TransmitRest(batch, count) : 0);
    }

    /// <summary>Frames beyond one call's batch limit go one by one (batches larger than <see cref="MaxBatch"/> are rare).</summary>
    private int TransmitRest(FrameBatch batch, int from)
    {
        var sent = 0;
        for (var i = from; i < batch.Count && Transmit(batch[i]) == PortResult.Ok; i++)
        {
            sent++;
        }
        return sent;
    }
}
