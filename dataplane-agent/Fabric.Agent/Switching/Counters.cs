namespace Fabric.Agent.Switching;

/// <summary>Why the switch dropped a frame or datagram. Each is counted; none is logged per packet.</summary>
public enum DropReason
{
    /// <summary>Not a valid Ethernet frame (or a VLAN-tagged one from a VM, which must send untagged).</summary>
    Malformed,
    /// <summary>
    /// A VM sent a frame whose source MAC, source IP, ARP sender or advertised neighbour address is not its own, or a path
    /// delivered one whose source is no VM of its host in that network.
    /// </summary>
    SpoofedSource,
    /// <summary>No entry for the destination MAC in the VM's virtual network.</summary>
    UnknownDestination,
    /// <summary>A frame from the underlay addressed to a MAC that is not a local VM of that virtual network.</summary>
    WrongVirtualNetwork,
    /// <summary>A datagram from an underlay address that is no known host, or not a Fabric datagram.</summary>
    UnknownPeer,
    /// <summary>A datagram for a stack slot with no instance.</summary>
    UnknownSlot,
    /// <summary>Larger than the path carries; the VM was sent ICMP "fragmentation needed" / "packet too big".</summary>
    TooLarge,
    /// <summary>A port or the underlay socket refused the frame (queue full, device gone).</summary>
    TransmitFailed,
    /// <summary>The remote host has no path configured.</summary>
    NoPath,
    /// <summary>The stack threw instead of counting a drop; it was quarantined.</summary>
    StackFault,
    /// <summary>A probe, probe reply or control message without the peer's valid tag, or a control message replayed.</summary>
    Unauthenticated,
    /// <summary>A frame of a VM whose policy demands encryption, with no stack that encrypts to carry it (never sent in clear).</summary>
    NotEncrypted,
    /// <summary>The path's stack was stuck in a call (a hung plug-in): nothing waits on it until the watchdog replaces the path.</summary>
    PathStuck,
}

/// <summary>Packet and byte counters with drops by reason; written by data-path threads with interlocked adds.</summary>
public sealed class TrafficCounters
{
    private readonly long[] _drops = new long[Enum.GetValues<DropReason>().Length];
    private long _rxPackets;
    private long _rxBytes;
    private long _txPackets;
    private long _txBytes;

    public long RxPackets => Interlocked.Read(ref _rxPackets);
    public long RxBytes => Interlocked.Read(ref _rxBytes);
    public long TxPackets => Interlocked.Read(ref _txPackets);
    public long TxBytes => Interlocked.Read(ref _txBytes);

    public void Received(int bytes)
    {
        Interlocked.Increment(ref _rxPackets);
        Interlocked.Add(ref _rxBytes, bytes);
    }

    public void Sent(int bytes)
    {
        Interlocked.Increment(ref _txPackets);
        Interlocked.Add(ref _txBytes, bytes);
    }

    public void Drop(DropReason reason) => Interlocked.Increment(ref _drops[(int)reason]);

    public long Drops(DropReason reason) => Interlocked.Read(ref _drops[(int)reason]);

    /// <summary>Non-zero drop counts by reason name.</summary>
    public IReadOnlyDictionary<string, long> DropSnapshot() =>
        Enum.GetValues<DropReason>().Where(r => Drops(r) > 0).ToDictionary(r => r.ToString(), Drops);
}
