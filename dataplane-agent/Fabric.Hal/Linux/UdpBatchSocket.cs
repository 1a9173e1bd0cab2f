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

/// <summary>
/// Batched UDP I/O with recvmmsg/sendmmsg on a bound <see cref="Socket"/>: one system call moves up to
/// <see cref="Capacity"/> datagrams. Buffers are pinned and reused; not thread-safe (one receiving thread, and one
/// instance per sending thread).
/// </summary>
public sealed unsafe class UdpBatchSocket
{
    private const int SockaddrSize = 28; // sizeof(struct sockaddr_in6), which also holds a sockaddr_in
    private readonly Socket _socket;
    private readonly byte[][] _buffers;
    private readonly int[] _lengths;
    private readonly UdpPeer[] _peers;
    private readonly byte[] _names;
    private readonly Native.MMsgHdr[] _messages;
    private readonly Native.IoVec[] _vectors;

    public UdpBatchSocket(Socket socket, int capacity = 32, int datagramCapacity = 65536)
    {
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
        _messages = GC.AllocateArray<Native.MMsgHdr>(capacity, pinned: true);
        _vectors = GC.AllocateArray<Native.IoVec>(capacity, pinned: true);
        DatagramCapacity = datagramCapacity;
    }

    public int Capacity { get; }

    public int DatagramCapacity { get; }

    /// <summary>Datagrams in the batch (received, or added for sending).</summary>
    public int Count { get; private set; }

    public ReadOnlySpan<byte> Datagram(int index) => _buffers[index].AsSpan(0, _lengths[index]);

    public UdpPeer Peer(int index) => _peers[index];

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
                    },
                };
            }
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
            for (var i = 0; i < n; i++)
            {
                _lengths[i] = (int)_messages[i].Length;
                _peers[i] = ReadPeer(new ReadOnlySpan<byte>(names + (i * SockaddrSize), SockaddrSize));
            }
            Count = n;
            return n;
        }
    }

    /// <summary>Sends every queued datagram and empties the batch; returns how many the kernel took.</summary>
    public int Send()
    {
        if (Count == 0)
        {
            return 0;
        }
        var fd = (int)_socket.SafeHandle.DangerousGetHandle();
        var sent = 0;
        fixed (byte* names = _names)
        {
            for (var i = 0; i < Count; i++)
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
        var taken = Count;
        Count = 0;
        return taken;
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
