using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Fabric.Hal.Linux;

/// <summary>A peer's UDP address as a value: IPv4 mapped into the low bits, usable as a dictionary key without allocation.</summary>
public readonly record struct UdpPeer(ulong High, ulong Low, ushort Port, bool IsIPv6)
{
    public static UdpPeer From(IPEndPoint endpoint)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (endpoint.AddressFamily == AddressFamily.InterNetwork)
        {
            endpoint.Address.TryWriteBytes(bytes, out _);
            return new UdpPeer(0, BinaryPrimitives.ReadUInt32BigEndian(bytes), (ushort)endpoint.Port, false);
        }
        endpoint.Address.TryWriteBytes(bytes, out _);
        return new UdpPeer(BinaryPrimitives.ReadUInt64BigEndian(bytes), BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]), (ushort)endpoint.Port, true);
    }

    public override string ToString()
    {
        Span<byte> bytes = stackalloc byte[16];
        if (!IsIPv6)
        {
            BinaryPrimitives.WriteUInt32BigEndian(bytes, (uint)Low);
            return new IPEndPoint(new IPAddress(bytes[..4]), Port).ToString();
        }
        BinaryPrimitives.WriteUInt64BigEndian(bytes, High);
        BinaryPrimitives.WriteUInt64BigEndian(bytes[8..], Low);
        return new IPEndPoint(new IPAddress(bytes), Port).ToString();
    }
}

/// <summary>What the offloads of one socket did, shared by its senders and its receiver. Thread-safe.</summary>
public sealed class UdpOffloads
{
    private long _sends;
    private long _datagrams;
    private long _coalesced;
    private long _truncated;
    private volatile bool _sendRefused;

    /// <summary>Messages sent with more than one segment.</summary>
    public long Sends => Interlocked.Read(ref _sends);

    /// <summary>Datagrams those messages carried.</summary>
    public long Datagrams => Interlocked.Read(ref _datagrams);

    /// <summary>Buffers received holding more than one datagram.</summary>
    public long Coalesced => Interlocked.Read(ref _coalesced);

    /// <summary>Received messages (or their tails) dropped because they did not fit: cut short, or more datagrams than a message has room for.</summary>
    public long Truncated => Interlocked.Read(ref _truncated);

    /// <summary>True once the kernel refused a segmented send because the device cannot checksum for it: no sender tries again.</summary>
    public bool SendRefused => _sendRefused;

    internal void Sent(int segments)
    {
        Interlocked.Increment(ref _sends);
        Interlocked.Add(ref _datagrams, segments);
    }

    internal void Received() => Interlocked.Increment(ref _coalesced);

    internal void CountTruncated() => Interlocked.Increment(ref _truncated);

    /// <summary>Peers a segmented send was refused for other than EIO (its path's MTU below the segment size): until when, in ms.</summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<UdpPeer, long> _refusedPeers = new();

    /// <summary>How long a peer whose segmented send was refused gets single datagrams before segmentation is tried again.</summary>
    internal const int PeerRefusalMilliseconds = 10_000;

    /// <summary>True while sends to <paramref name="peer"/> go unsegmented (a segmented one was refused lately).</summary>
    internal bool Refused(UdpPeer peer) =>
        !_refusedPeers.IsEmpty && _refusedPeers.TryGetValue(peer, out var until) && (Environment.TickCount64 < until || !_refusedPeers.TryRemove(peer, out _));

    internal void RefusePeer(UdpPeer peer) => _refusedPeers[peer] = Environment.TickCount64 + PeerRefusalMilliseconds;

    internal void RefuseSend() => _sendRefused = true;
}

/// <summary>
/// Batched UDP I/O with recvmmsg/sendmmsg on a bound <see cref="Socket"/>: one system call moves up to
/// <see cref="Capacity"/> datagrams. With segmentation offload (<c>gso</c>), a run of queued datagrams to one peer of one
/// size (the last may be shorter) leaves as one message with UDP_SEGMENT: the kernel builds one buffer and splits it as
/// late as the device allows, instead of walking the stack once per datagram. With receive offload (<see cref="EnableGro"/>
/// on the socket), the kernel may hand over several datagrams of one sender coalesced in one buffer, which
/// <see cref="Receive"/> splits again: callers see datagrams either way. Buffers are pinned and reused; not thread-safe
/// (one receiving thread, and one instance per sending thread).
/// </summary>
public sealed unsafe class UdpBatchSocket
{
    private const int SockaddrSize = 28; // sizeof(struct sockaddr_in6), which also holds a sockaddr_in

    /// <summary>CMSG_SPACE(sizeof(int)): a cmsghdr (16 bytes on 64-bit Linux) and an int, rounded to 8.</summary>
    private const int ControlSize = 24;

    /// <summary>A received message's control room: a UDP_GRO message (<see cref="ControlSize"/>) and an SCM_TIMESTAMPNS one (CMSG_SPACE of a 16-byte timespec).</summary>
    private const int ReceiveControlSize = ControlSize + 32;

    /// <summary>Segments per offloaded send: the kernel's limit is 64 on older kernels (128 since 6.9).</summary>
    public const int MaxSegments = 64;

    /// <summary>Bytes per offloaded send: one IP packet's payload must hold them all.</summary>
    private const int MaxOffloadBytes = 65000;

    /// <summary>
    /// Most datagrams one coalesced receive may hold: GRO coalesces at most 64, but a segmented send that reaches the
    /// socket unsegmented (from this host, or over a device that keeps UDP segmentation) holds up to 128.
    /// </summary>
    private const int MaxCoalesced = 128;

    private readonly Socket _socket;
    private readonly byte[][] _buffers;
    private readonly int[] _lengths;
    private readonly UdpPeer[] _peers;
    private readonly byte[] _names;
    private readonly byte[] _control;
    private readonly Native.MMsgHdr[] _messages;
    private readonly Native.IoVec[] _vectors;
    private readonly int[] _runStarts;
    private readonly bool _gro;
    private readonly bool _timestamps;
    private readonly bool _gso;
    private readonly UdpOffloads _offloads;

    // What Receive split the messages into: datagram i is _segmentLengths[i] bytes at _segmentOffsets[i] of buffer _segmentBuffers[i].
    private readonly int[] _segmentBuffers;
    private readonly int[] _segmentOffsets;
    private readonly int[] _segmentLengths;
    private readonly UdpPeer[] _segmentPeers;
    private readonly long[] _segmentArrivals;

    /// <param name="socket">A bound UDP socket.</param>
    /// <param name="capacity">Datagrams per batch (sent), messages per batch (received).</param>
    /// <param name="datagramCapacity">Bytes per buffer: a coalesced receive needs 65,536.</param>
    /// <param name="gso">Send runs of equal datagrams to one peer as one segmented message (falls back on its own where the device cannot).</param>
    /// <param name="gro">Expect coalesced datagrams on receive (the socket has <see cref="EnableGro"/>); needs 65,536-byte buffers.</param>
    /// <param name="offloads">Where offload figures go, shared by every batch of the socket (and the refusal of segmented sends).</param>
    /// <param name="timestamps">Read each message's kernel receive time (the socket has <see cref="EnableTimestamps"/>): <see cref="Arrival"/>.</param>
    public UdpBatchSocket(Socket socket, int capacity = 32, int datagramCapacity = 65536, bool gso = false, bool gro = false, UdpOffloads? offloads = null,
        bool timestamps = false)
    {
        if (gro && datagramCapacity < 65536)
        {
            throw new ArgumentOutOfRangeException(nameof(datagramCapacity), datagramCapacity, "A socket that receives coalesced datagrams needs 65,536-byte buffers.");
        }
        _socket = socket;
        Capacity = capacity;
        _buffers = new byte[capacity][];
        for (var i = 0; i < capacity; i++)
        {
            _buffers[i] = GC.AllocateUninitializedArray<byte>(datagramCapacity, pinned: true);
        }
        _lengths = new int[capacity];
        _peers = new UdpPeer[capacity];
        _names = GC.AllocateArray<byte>(capacity * SockaddrSize, pinned: true);
        _control = GC.AllocateArray<byte>(capacity * ReceiveControlSize, pinned: true);
        _messages = GC.AllocateArray<Native.MMsgHdr>(capacity, pinned: true);
        _vectors = GC.AllocateArray<Native.IoVec>(capacity, pinned: true);
        _runStarts = new int[capacity + 1];
        DatagramCapacity = datagramCapacity;
        _offloads = offloads ?? new UdpOffloads();
        _gso = gso;
        _gro = gro;
        _timestamps = timestamps;
        // Room for every message to hold MaxCoalesced datagrams: one message never takes another's room.
        var segments = gro ? capacity * MaxCoalesced : capacity;
        _segmentBuffers = new int[segments];
        _segmentOffsets = new int[segments];
        _segmentLengths = new int[segments];
        _segmentPeers = new UdpPeer[segments];
        _segmentArrivals = new long[segments];
    }

    /// <summary>Turns on UDP receive offload (UDP_GRO) on <paramref name="socket"/>; false where the kernel refuses it.</summary>
    public static bool EnableGro(Socket socket)
    {
        var one = 1;
        return Native.setsockopt((int)socket.SafeHandle.DangerousGetHandle(), Native.SOL_UDP, Native.UDP_GRO, &one, sizeof(int)) == 0;
    }

    /// <summary>
    /// Turns on kernel receive timestamps (SO_TIMESTAMPNS) on <paramref name="socket"/>; false where the kernel refuses
    /// them. The time a datagram reached the socket, not the time a busy receive thread got round to it: a capacity
    /// train read in one batch after a wait would otherwise seem to have arrived all at once.
    /// </summary>
    public static bool EnableTimestamps(Socket socket)
    {
        var one = 1;
        return Native.setsockopt((int)socket.SafeHandle.DangerousGetHandle(), Native.SOL_SOCKET, Native.SO_TIMESTAMPNS, &one, sizeof(int)) == 0;
    }

    public int Capacity { get; }

    public int DatagramCapacity { get; }

    /// <summary>True while sends use segmentation offload: it turns off for good when the device cannot checksum for it (EIO).</summary>
    public bool Offloading => _gso && !_offloads.SendRefused;

    /// <summary>What the socket's offloads did (shared by every batch given the same figures).</summary>
    public UdpOffloads Offloads => _offloads;

    /// <summary>Datagrams in the batch (received, or added for sending).</summary>
    public int Count { get; private set; }

    /// <summary>Messages the last <see cref="Receive"/> took from the socket (at most <see cref="Capacity"/>; a coalesced one holds several datagrams): as many as it could take says more may be waiting.</summary>
    public int Messages { get; private set; }

    public ReadOnlySpan<byte> Datagram(int index) => _buffers[_segmentBuffers[index]].AsSpan(_segmentOffsets[index], _segmentLengths[index]);

    public UdpPeer Peer(int index) => _segmentPeers[index];

    /// <summary>
    /// When the kernel received datagram <paramref name="index"/> (nanoseconds of CLOCK_REALTIME; only differences mean
    /// anything), or 0 when not known (no timestamps asked for, or none came with it). Datagrams coalesced into one
    /// message share the message's time.
    /// </summary>
    public long Arrival(int index) => _segmentArrivals[index];

    /// <summary>A buffer to write the next outgoing datagram into; call <see cref="Add"/> with its length.</summary>
    public Span<byte> Next => _buffers[Count];

    /// <summary>Queues the datagram written into <see cref="Next"/>; false when the batch is full (send it first).</summary>
    public bool Add(int length, UdpPeer peer)
    {
        if (Count == Capacity)
        {
            return false;
        }
        _lengths[Count] = length;
        _peers[Count] = peer;
        Count++;
        return true;
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> for datagrams and takes those ready; returns how many (0 on timeout).</summary>
    public int Receive(int timeoutMs)
    {
        Count = 0;
        var fd = (int)_socket.SafeHandle.DangerousGetHandle();
        fixed (byte* names = _names)
        fixed (byte* control = _control)
        {
            for (var i = 0; i < Capacity; i++)
            {
                _vectors[i] = new Native.IoVec { Base = Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffers[i])), Length = (nuint)DatagramCapacity };
                _messages[i] = new Native.MMsgHdr
                {
                    Header = new Native.MsgHdr
                    {
                        Name = names + (i * SockaddrSize),
                        NameLength = SockaddrSize,
                        Iov = (Native.IoVec*)Unsafe.AsPointer(ref _vectors[i]),
                        IovLength = 1,
                        Control = _gro || _timestamps ? control + (i * ReceiveControlSize) : null,
                        ControlLength = (nuint)(_gro || _timestamps ? ReceiveControlSize : 0),
                    },
                };
            }
            Messages = 0;
            var n = Native.recvmmsg(fd, (Native.MMsgHdr*)Unsafe.AsPointer(ref _messages[0]), (uint)Capacity, Native.MSG_DONTWAIT, null);
            if (n <= 0)
            {
                if (Native.PollOne(fd, Native.POLLIN, TimeSpan.FromMilliseconds(timeoutMs), out _) <= 0)
                {
                    return 0;
                }
                n = Native.recvmmsg(fd, (Native.MMsgHdr*)Unsafe.AsPointer(ref _messages[0]), (uint)Capacity, Native.MSG_DONTWAIT, null);
                if (n <= 0)
                {
                    return 0;
                }
            }
            Messages = n;
            var count = 0;
            for (var i = 0; i < n; i++)
            {
                var flags = _messages[i].Header.Flags;
                if ((flags & (Native.MSG_TRUNC | Native.MSG_CTRUNC)) != 0)
                {
                    // Cut short (a datagram beyond the buffer), or its segment size lost with the control data: what it
                    // holds cannot be told apart, so none of it is handed on.
                    _offloads.CountTruncated();
                    continue;
                }
                var length = (int)_messages[i].Length;
                var peer = ReadPeer(new ReadOnlySpan<byte>(names + (i * SockaddrSize), SockaddrSize));
                var (size, arrival) = _gro || _timestamps ? ReadControl(ref _messages[i].Header) : (0, 0L);
                if (size <= 0 || size >= length)
                {
                    (_segmentBuffers[count], _segmentOffsets[count], _segmentLengths[count], _segmentPeers[count], _segmentArrivals[count]) = (i, 0, length, peer, arrival);
                    count++;
                    continue;
                }
                // Several datagrams of one sender, each `size` bytes but the last: split them again. Each message has
                // room for MaxCoalesced of them; a message that claims more loses the rest, counted.
                _offloads.Received();
                var end = count + MaxCoalesced;
                for (var offset = 0; offset < length; offset += size)
                {
                    if (count == end)
                    {
                        _offloads.CountTruncated();
                        break;
                    }
                    (_segmentBuffers[count], _segmentOffsets[count], _segmentLengths[count], _segmentPeers[count], _segmentArrivals[count]) = (i, offset, Math.Min(size, length - offset), peer, arrival);
                    count++;
                }
            }
            Count = count;
            return count;
        }
    }

    /// <summary>
    /// From a received message's control data: the segment size of a coalesced receive (its UDP_GRO message; 0 when the
    /// message is one datagram) and the kernel's receive time in nanoseconds (its SCM_TIMESTAMPNS message; 0 when none).
    /// </summary>
    private static (int Size, long Arrival) ReadControl(ref Native.MsgHdr header)
    {
        var length = (int)header.ControlLength;
        var control = (byte*)header.Control;
        var (size, arrival) = (0, 0L);
        for (var offset = 0; offset + 16 <= length;)
        {
            var cmsgLength = (int)*(nuint*)(control + offset);
            if (cmsgLength < 16 || offset + cmsgLength > length)
            {
                break;
            }
            var (level, type) = (*(int*)(control + offset + 8), *(int*)(control + offset + 12));
            if (level == Native.SOL_UDP && type == Native.UDP_GRO && cmsgLength >= 20)
            {
                size = *(int*)(control + offset + 16);
            }
            else if (level == Native.SOL_SOCKET && type == Native.SO_TIMESTAMPNS && cmsgLength >= 32)
            {
                arrival = (*(long*)(control + offset + 16) * 1_000_000_000) + *(long*)(control + offset + 24);
            }
            offset += (cmsgLength + 7) & ~7;
        }
        return (size, arrival);
    }

    /// <summary>Sends every queued datagram and empties the batch; returns how many the kernel took.</summary>
    public int Send()
    {
        if (Count == 0)
        {
            return 0;
        }
        var taken = Count;
        var from = Offloading ? SendOffloaded() : 0;
        if (from < Count)
        {
            SendEach(from);
        }
        Count = 0;
        return taken;
    }

    /// <summary>
    /// Sends the batch as runs (one message per run of datagrams to one peer, all of one size but the last) and returns
    /// the index of the first datagram still to send one by one: <see cref="Count"/> when every run went.
    /// </summary>
    private int SendOffloaded()
    {
        var fd = (int)_socket.SafeHandle.DangerousGetHandle();
        var runs = 0;
        fixed (byte* names = _names)
        fixed (byte* control = _control)
        {
            for (var i = 0; i < Count;)
            {
                var start = i;
                var size = _lengths[i];
                var total = size;
                i++;
                var segmentable = !_offloads.Refused(_peers[start]);
                while (segmentable && i < Count && i - start < MaxSegments && _peers[i] == _peers[start] && _lengths[i] <= size && total + _lengths[i] <= MaxOffloadBytes)
                {
                    total += _lengths[i];
                    i++;
                    if (_lengths[i - 1] < size)
                    {
                        break; // a shorter datagram ends its run
                    }
                }
                for (var d = start; d < i; d++)
                {
                    _vectors[d] = new Native.IoVec { Base = Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffers[d])), Length = (nuint)_lengths[d] };
                }
                var name = names + (runs * SockaddrSize);
                var nameLength = WritePeer(new Span<byte>(name, SockaddrSize), _peers[start]);
                var cmsg = control + (runs * ControlSize);
                var segments = i - start;
                if (segments > 1)
                {
                    new Span<byte>(cmsg, ControlSize).Clear();
                    *(nuint*)cmsg = 16 + sizeof(ushort); // CMSG_LEN(sizeof(uint16_t))
                    *(int*)(cmsg + 8) = Native.SOL_UDP;
                    *(int*)(cmsg + 12) = Native.UDP_SEGMENT;
                    *(ushort*)(cmsg + 16) = (ushort)size;
                }
                _messages[runs] = new Native.MMsgHdr
                {
                    Header = new Native.MsgHdr
                    {
                        Name = name,
                        NameLength = (uint)nameLength,
                        Iov = (Native.IoVec*)Unsafe.AsPointer(ref _vectors[start]),
                        IovLength = (nuint)segments,
                        Control = segments > 1 ? cmsg : null,
                        ControlLength = (nuint)(segments > 1 ? ControlSize : 0),
                    },
                };
                _runStarts[runs] = start;
                runs++;
            }
            _runStarts[runs] = Count;
            var sent = 0;
            while (sent < runs)
            {
                var n = Native.sendmmsg(fd, (Native.MMsgHdr*)Unsafe.AsPointer(ref _messages[sent]), (uint)(runs - sent), 0);
                if (n > 0)
                {
                    for (var r = sent; r < sent + n; r++)
                    {
                        var segments = _runStarts[r + 1] - _runStarts[r];
                        if (segments > 1)
                        {
                            _offloads.Sent(segments);
                        }
                    }
                    sent += n;
                    continue;
                }
                var errno = Native.Errno;
                if (n < 0 && errno == Native.EINTR)
                {
                    continue;
                }
                if (_runStarts[sent + 1] - _runStarts[sent] > 1)
                {
                    // The run was refused as one message. A device that cannot checksum what the kernel segments (EIO) never
                    // will: offload stops for this socket. Anything else costs only this send. Either way the datagrams still
                    // go, one message each.
                    if (errno == Native.EIO)
                    {
                        _offloads.RefuseSend();
                    }
                    else
                    {
                        // Most likely its path's MTU below the segment size: this peer alone gets single datagrams a while,
                        // rather than every flush trying, failing and sending them again one by one.
                        _offloads.RefusePeer(_peers[_runStarts[sent]]);
                    }
                    return _runStarts[sent];
                }
                // One datagram refused (no route, too big): skip it, keep the rest.
                sent++;
            }
        }
        return Count;
    }

    /// <summary>Sends datagrams <paramref name="from"/> onwards, one message each.</summary>
    private void SendEach(int from)
    {
        var fd = (int)_socket.SafeHandle.DangerousGetHandle();
        var sent = from;
        fixed (byte* names = _names)
        {
            for (var i = from; i < Count; i++)
            {
                var nameLength = WritePeer(new Span<byte>(names + (i * SockaddrSize), SockaddrSize), _peers[i]);
                _vectors[i] = new Native.IoVec { Base = Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffers[i])), Length = (nuint)_lengths[i] };
                _messages[i] = new Native.MMsgHdr
                {
                    Header = new Native.MsgHdr
                    {
                        Name = names + (i * SockaddrSize),
                        NameLength = (uint)nameLength,
                        Iov = (Native.IoVec*)Unsafe.AsPointer(ref _vectors[i]),
                        IovLength = 1,
                    },
                };
            }
            while (sent < Count)
            {
                var n = Native.sendmmsg(fd, (Native.MMsgHdr*)Unsafe.AsPointer(ref _messages[sent]), (uint)(Count - sent), 0);
                if (n <= 0)
                {
                    if (n < 0 && Native.Errno == Native.EINTR)
                    {
                        continue;
                    }
                    // The first remaining datagram was refused (no route, too big): skip it, keep the rest.
                    sent++;
                    continue;
                }
                sent += n;
            }
        }
    }
    private static UdpPeer ReadPeer(ReadOnlySpan<byte> name)
    {
        var family = BinaryPrimitives.ReadUInt16LittleEndian(name);
        var port = BinaryPrimitives.ReadUInt16BigEndian(name[2..]);
        return family == 10
            ? new UdpPeer(BinaryPrimitives.ReadUInt64BigEndian(name[8..]), BinaryPrimitives.ReadUInt64BigEndian(name[16..]), port, true)
            : new UdpPeer(0, BinaryPrimitives.ReadUInt32BigEndian(name[4..]), port, false);
    }

    private static int WritePeer(Span<byte> name, UdpPeer peer)
    {
        name.Clear();
        BinaryPrimitives.WriteUInt16BigEndian(name[2..], peer.Port);
        if (peer.IsIPv6)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(name, 10);
            BinaryPrimitives.WriteUInt64BigEndian(name[8..], peer.High);
            BinaryPrimitives.WriteUInt64BigEndian(name[16..], peer.Low);
            return 28;
        }
        BinaryPrimitives.WriteUInt16LittleEndian(name, 2);
        BinaryPrimitives.WriteUInt32BigEndian(name[4..], (uint)peer.Low);
        return 16;
    }
}
