using System.Collections.Immutable;
using Fabric.Hal;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>What identifies a VM's vNIC to the switch.</summary>
/// <param name="VmId">The VM's id.</param>
/// <param name="Device">The host-side netdev (tap, veth end) the HAL attaches to.</param>
/// <param name="Vni">The virtual network the vNIC is in.</param>
/// <param name="Mac">The vNIC's MAC: the only source MAC accepted from it.</param>
/// <param name="IPv4">Its IPv4 addresses (answered in ARP for the other VMs of the network).</param>
/// <param name="IPv6">Its IPv6 addresses (answered in neighbour discovery).</param>
/// <param name="Sealed">The VM's policy demands encryption (confidential): its frames leave only through a stack that encrypts.</param>
public sealed record VmSpec(string VmId, string Device, uint Vni, MacAddress Mac, ImmutableArray<IPv4Address> IPv4, ImmutableArray<IPv6Address> IPv6, bool Sealed = false);

/// <summary>
/// Whose stack carries a conversation between two VMs on different hosts. A binding is per (VM, remote host) and carries
/// what the VM sends; the answers come back on the other VM's binding. A VM that declared what it needs (a latency or bulk
/// workload, or a pin) leads: what it gets depends on both directions, so a VM that declared nothing follows it and
/// answers on the slot the leader's frames arrive on: a host opens its leaders' slots in the upper half of its range, so
/// the peer tells them by number. Two leaders, or two followers, each send on their own.
/// </summary>
public enum VmRole
{
    /// <summary>Its frames ride its own binding (no control plane has said otherwise).</summary>
    Own = 0,

    /// <summary>Its frames ride its own binding, always in a slot of its host's leaders' half (the path's default stack
    /// too), so that the VMs that follow it see its choice on whatever stack it is.</summary>
    Leads = 1,

    /// <summary>Its frames to a VM whose frames arrived within <see cref="RemotePath.FollowWindow"/> in a slot of its host's
    /// leaders' half ride that slot; its other frames ride its own binding.</summary>
    Follows = 2,
}

/// <summary>
/// An attached VM: its spec, its port and its counters. The receive thread belongs to the switch. Frames for the VM
/// are batched per delivering thread and go out in one call (sendmmsg on AF_PACKET) when that thread flushes.
/// </summary>
public sealed class VmPort : IDisposable
{
    [ThreadStatic]
    private static List<VmPort>? t_pending;
    private readonly ThreadLocal<FrameBatch> _outgoing;

    internal VmPort(VmSpec spec, IFramePort port)
    {
        Spec = spec;
        Port = port;
        _sealed = spec.Sealed;
        // Frames to a VM come from the underlay or from other VMs' cut segments: never beyond the device's MTU, even on a
        // port with offloads, which joins runs of up to 64 of them when it sends.
        var capacity = port.Capabilities.Offloads ? Math.Max(port.Capabilities.Mtu + 22, 2048) : Math.Max(port.Capabilities.MaxFrameLength, 2048);
        _outgoing = new ThreadLocal<FrameBatch>(() => new FrameBatch(port.Capabilities.Offloads ? 64 : 32, capacity), trackAllValues: false);
    }

    public VmSpec Spec { get; }

    private volatile bool _sealed;

    /// <summary>
    /// True while the VM's policy demands encryption: its frames leave only through a stack that encrypts, and where none
    /// carries them they are dropped (<see cref="DropReason.NotEncrypted"/>), never sent in the clear. Set at attach from
    /// its registration, then by the control plane when the policy changes.
    /// </summary>
    public bool Sealed
    {
        get => _sealed;
        internal set => _sealed = value;
    }

    private volatile int _role;

    /// <summary>
    /// Whose stack carries the VM's conversations with VMs on other hosts (<see cref="VmRole"/>); set by the control plane
    /// from the VM's policy. <see cref="VmRole.Own"/> until then, and on a host without one.
    /// </summary>
    public VmRole Role
    {
        get => (VmRole)_role;
        internal set => _role = (int)value;
    }

    public IFramePort Port { get; }

    /// <summary>Large segments from the VM its port's offloads handed over, and the frames they were cut into (written by its receive thread only).</summary>
    public long LargeSegmentsCut;

    public long FramesCut;

    /// <summary>Rx = frames from the VM; Tx = frames delivered to the VM.</summary>
    public TrafficCounters Counters { get; } = new();

    private Thread? _receiver;

    /// <summary>The thread that receives the VM's frames: its group's, or one of its own.</summary>
    internal Thread? Receiver
    {
        get => Group?.Thread ?? _receiver;
        set => _receiver = value;
    }

    /// <summary>The receive group whose thread reads the VM's port (null: a thread of its own), and its token there.</summary>
    internal VmReceiveGroup? Group;

    internal long GroupToken;

    /// <summary>Which receive thread is the current one: one that comes back from a call a stack held it in ends.</summary>
    internal int ReceiverGeneration;

    /// <summary>When the current receive thread began switching its batch (switch clock nanoseconds; 0 while it waits for
    /// frames): one that has not finished within the watchdog's limit is stuck in a stack's call.</summary>
    internal long HandlingSince;

    private long _receiverReplacements;

    /// <summary>Receive threads replaced because a stack held one in a call that did not return.</summary>
    public long ReceiverReplacements => Interlocked.Read(ref _receiverReplacements);

    internal long CountReplacement() => Interlocked.Increment(ref _receiverReplacements);

    /// <summary>Held by a receive thread while it reads a batch from the port: one port is read by one thread at a time,
    /// also while a replaced thread comes back from a stack's call.</summary>
    internal object ReceiveGate { get; } = new();

    internal volatile bool Stopping;

    /// <summary>Serializes transmits to the port: frames arrive from several threads (other VMs, the underlay).</summary>
    internal object TransmitGate { get; } = new();

    /// <summary>Queues a frame for the VM on this thread's batch; it leaves at the thread's next <see cref="FlushThread"/>.</summary>
    internal void Deliver(ReadOnlySpan<byte> frame)
    {
        if (Stopping)
        {
            // Detached (its batches may be disposed already): the frame has nowhere to go.
            Counters.Drop(DropReason.TransmitFailed);
            return;
        }
        FrameBatch batch;
        try
        {
            batch = _outgoing.Value!;
        }
        catch (ObjectDisposedException)
        {
            // Detached between the check and here.
            Counters.Drop(DropReason.TransmitFailed);
            return;
        }
        if (batch.Count == batch.Capacity)
        {
            FlushPending(batch);
        }
        if (!batch.TryAdd(frame))
        {
            Counters.Drop(DropReason.TransmitFailed);
            return;
        }
        if (batch.Count == 1)
        {
            (t_pending ??= []).Add(this);
        }
    }

    /// <summary>Sends every frame this thread queued, on every port.</summary>
    internal static void FlushThread()
    {
        var pending = t_pending;
        if (pending is null || pending.Count == 0)
        {
            return;
        }
        try
        {
            foreach (var port in pending)
            {
                if (port.Stopping)
                {
                    // Detached (its batches may be disposed already): what waited for it has nowhere to go.
                    continue;
                }
                try
                {
                    if (port._outgoing.IsValueCreated)
                    {
                        port.FlushPending(port._outgoing.Value!);
                    }
                }
                catch (ObjectDisposedException)
                {
                    // Detached between the check and the flush.
                }
            }
        }
        finally
        {
            // Never left listing a port: one that threw every time would hold back every port after it for good.
            pending.Clear();
        }
    }

    private void FlushPending(FrameBatch batch)
    {
        if (batch.Count == 0 || Stopping)
        {
            batch.Clear();
            return;
        }
        int sent;
        lock (TransmitGate)
        {
            sent = Port.TransmitBatch(batch);
        }
        for (var i = 0; i < batch.Count; i++)
        {
            if (i < sent)
            {
                Counters.Sent(batch[i].Length);
            }
            else
            {
                Counters.Drop(DropReason.TransmitFailed);
            }
        }
        batch.Clear();
    }

    public void Dispose() => _outgoing.Dispose();
}
