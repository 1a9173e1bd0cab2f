using Fabric.Hal;
using Fabric.Hal.Linux;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>
/// The switch's data path, both ways. From a VM: a frame is checked (valid Ethernet, untagged, its own source MAC and
/// addresses), ARP and neighbour solicitations are answered from the forwarding table, same-host traffic goes straight to
/// the other VM's port, traffic for a remote VM to the path's stack, broadcasts to every VM of the virtual network. From
/// the underlay: a frame reaches only a local VM of the virtual network in its Fabric header, only from a VM the table
/// places on the sending host, and a confidential VM only if it crossed encrypted. Every drop is counted by reason.
/// </summary>
internal sealed class Forwarder(SwitchState state) : IDisposable
{
    private const int InnerEthernet = 14;
    private readonly List<VmReceiveGroup> _groups = [];
    private bool _disposed;
    private readonly RateLimit _faultReports = new(TimeSpan.FromSeconds(1));

    /// <summary>
    /// Starts receiving the VM's frames: in the least busy of the switch's receive groups when its port can be waited on
    /// with others (<see cref="SwitchOptions.VmReceiveThreads"/>), else on a thread of its own. Called again for a VM whose
    /// receiving a stack holds in a call: a new thread takes over (its group's, for a member), and the one held ends when
    /// that call returns.
    /// </summary>
    public void StartReceiver(VmPort vm)
    {
        if (vm.Group is { } member)
        {
            StartGroupThread(member);
            return;
        }
        if (vm.Port is IPollablePort port && state.Options.VmReceiveThreads > 0 && JoinGroup(vm, port))
        {
            return;
        }
        var generation = Interlocked.Increment(ref vm.ReceiverGeneration);
        Volatile.Write(ref vm.HandlingSince, 0);
        vm.Receiver = new Thread(() => ReceiveFromVm(vm, generation)) { IsBackground = true, Name = $"vm-rx {vm.Spec.VmId}" };
        vm.Receiver.Start();
    }

    /// <summary>Stops receiving the VM's frames (it is stopping): once this returns, nothing reads its port.</summary>
    public void StopReceiver(VmPort vm)
    {
        if (vm.Group is { } group)
        {
            group.Leave(vm, TimeSpan.FromSeconds(2));
            return;
        }
        vm.Receiver?.Join(TimeSpan.FromSeconds(2));
    }

    private bool JoinGroup(VmPort vm, IPollablePort port)
    {
        VmReceiveGroup group;
        lock (_groups)
        {
            if (_disposed)
            {
                return false;
            }
            if (_groups.Count < state.Options.VmReceiveThreads)
            {
                group = new VmReceiveGroup(_groups.Count);
                _groups.Add(group);
                StartGroupThread(group);
            }
            else
            {
                group = _groups.MinBy(g => g.Count)!;
            }
            return group.TryJoin(vm, port);
        }
    }

    /// <summary>Starts the group's receive thread; one started before it (stuck in a stack's call) ends when that call returns.</summary>
    private void StartGroupThread(VmReceiveGroup group)
    {
        var generation = Interlocked.Increment(ref group.Generation);
        foreach (var member in group.Members)
        {
            Volatile.Write(ref member.HandlingSince, 0);
        }
        var thread = new Thread(() => ReceiveGroup(group, generation)) { IsBackground = true, Name = $"vm-rx group {group.Index}" };
        group.Thread = thread;
        thread.Start();
    }

    /// <summary>
    /// Gives a group whose thread ended by a fault a new one (the watchdog calls it every round): a fault in one VM's
    /// batch must not stop every member's traffic for good. Returns how many were restarted.
    /// </summary>
    public int ReviveGroups()
    {
        var revived = 0;
        lock (_groups)
        {
            foreach (var group in _groups)
            {
                if (!group.Disposed && group.Thread is { IsAlive: false })
                {
                    StartGroupThread(group);
                    revived++;
                }
            }
        }
        return revived;
    }

    /// <summary>
    /// A group's receive thread: waits for any member's port to have frames, takes a batch from each ready one in turn and
    /// switches it, then flushes once for the round; until the switch ends or the thread is replaced.
    /// </summary>
    private void ReceiveGroup(VmReceiveGroup group, int generation)
    {
        var tokens = new long[64];
        var batches = new Dictionary<(int, int), FrameBatch>();
        var scratch = new byte[65536];
        byte[]? segments = null;
        while (!group.Disposed && Volatile.Read(ref group.Generation) == generation)
        {
            int ready;
            try
            {
                ready = group.Epoll.Wait(tokens, 100);
            }
            catch (ObjectDisposedException)
            {
                // The switch is shutting down under this thread.
                return;
            }
            var progress = false;
            for (var t = 0; t < ready; t++)
            {
                if (!group.TryGet(tokens[t], out var vm))
                {
                    continue;
                }
                // Fewer 64 KiB segments per batch than a thread of its own takes: each may be cut into many frames, and
                // the group's other VMs wait for what one batch makes.
                var shape = (vm.Port.Capabilities.Offloads ? 4 : 32, Math.Max(vm.Port.Capabilities.MaxFrameLength, 2048));
                if (!batches.TryGetValue(shape, out var batch))
                {
                    batches[shape] = batch = new FrameBatch(shape.Item1, shape.Item2);
                }
                lock (vm.ReceiveGate)
                {
                    // Checked under the gate: a thread replaced while a stack held it reads no more once its successor
                    // runs, and a port that is stopping may be closed as soon as the gate is free.
                    if (Volatile.Read(ref group.Generation) != generation)
                    {
                        Flush();
                        return;
                    }
                    if (vm.Stopping)
                    {
                        continue;
                    }
                    var result = vm.Port.ReceiveBatch(batch, TimeSpan.Zero);
                    if (result == PortResult.Closed || result == PortResult.Error)
                    {
                        Log.VmPortStopped(state.Logger, vm.Spec.VmId, result.ToString());
                        // Under the gate: its descriptor cannot have been closed and given to another port yet.
                        group.Forget(vm);
                        continue;
                    }
                    // A frame taken and refused (too large) is progress too: only ports that gave nothing at all are idle.
                    progress |= result != PortResult.Timeout;
                    if (batch.Count == 0)
                    {
                        continue;
                    }
                    Volatile.Write(ref vm.HandlingSince, state.Clock());
                }
                try
                {
                    if (!HandleBatch(vm, batch, ref group.Generation, generation, scratch, ref segments))
                    {
                        return;
                    }
                }
                catch (ObjectDisposedException) when (group.Disposed)
                {
                    return;
                }
                catch (Exception e)
                {
                    // One VM's batch: the others go on. A VM detached under it is the expected case (a frame for it had
                    // nowhere to go); anything else is a fault operators must see.
                    if (e is not ObjectDisposedException && _faultReports.ShouldReport(state.Clock()))
                    {
                        state.Report($"switching a batch from {vm.Spec.VmId} failed (its frames are lost, the group's other VMs go on; said at most once a second): {e.GetType().Name}: {e.Message}",
                            Microsoft.Extensions.Logging.LogLevel.Error);
                    }
                }
                finally
                {
                    // Only the current thread's: a replaced one that came back must not hide its successor's batch.
                    if (Volatile.Read(ref group.Generation) == generation)
                    {
                        Volatile.Write(ref vm.HandlingSince, 0);
                    }
                }
            }
            if (!Flush())
            {
                return;
            }
            if (ready > 0 && !progress)
            {
                // Ports reported ready that gave nothing (an error a port waits out): do not spin on them.
                Thread.Sleep(1);
            }
        }

        bool Flush()
        {
            try
            {
                state.Flush();
                return true;
            }
            catch (ObjectDisposedException)
            {
                // The underlay was disposed: the switch is shutting down.
                return false;
            }
        }
    }

    public void Dispose()
    {
        lock (_groups)
        {
            _disposed = true;
            foreach (var group in _groups)
            {
                group.Dispose();
            }
        }
    }

    /// <summary>The VM's receive thread: its frames, a batch at a time, until it is detached or replaced.</summary>
    private void ReceiveFromVm(VmPort vm, int generation)
    {
        // A port with offloads may hand over 64 KiB segments: fewer of them per batch.
        var batch = new FrameBatch(vm.Port.Capabilities.Offloads ? 16 : 32, Math.Max(vm.Port.Capabilities.MaxFrameLength, 2048));
        var scratch = new byte[65536];
        try
        {
            ReceiveLoop(vm, generation, batch, scratch);
        }
        catch (ObjectDisposedException)
        {
            // The switch is shutting down under this thread: nothing left to forward.
        }
    }

    private void ReceiveLoop(VmPort vm, int generation, FrameBatch batch, byte[] scratch)
    {
        byte[]? segments = null;
        while (!vm.Stopping)
        {
            PortResult result;
            lock (vm.ReceiveGate)
            {
                // Checked under the gate: a thread replaced while a stack held it reads no more once its successor runs.
                if (Volatile.Read(ref vm.ReceiverGeneration) != generation)
                {
                    return;
                }
                result = vm.Port.ReceiveBatch(batch, TimeSpan.FromMilliseconds(100));
                if (batch.Count > 0)
                {
                    Volatile.Write(ref vm.HandlingSince, state.Clock());
                }
            }
            if (result == PortResult.Closed || result == PortResult.Error)
            {
                if (!vm.Stopping)
                {
                    Log.VmPortStopped(state.Logger, vm.Spec.VmId, result.ToString());
                }
                return;
            }
            if (!HandleBatch(vm, batch, ref vm.ReceiverGeneration, generation, scratch, ref segments))
            {
                return;
            }
            state.Flush();
            // Only the current thread's: a replaced one that came back must not hide its successor's batch.
            if (Volatile.Read(ref vm.ReceiverGeneration) == generation)
            {
                Volatile.Write(ref vm.HandlingSince, 0);
            }
        }
    }

    /// <summary>
    /// Switches a batch the VM sent. False when the thread was replaced while a stack held it (<paramref name="current"/>
    /// moved on from <paramref name="generation"/>): what the batch sent so far goes out, the rest of it is old (counted as
    /// dropped), and the thread must end.
    /// </summary>
    private bool HandleBatch(VmPort vm, FrameBatch batch, ref int current, int generation, byte[] scratch, ref byte[]? segments)
    {
        // The device's MTU, an Ethernet header and a VLAN tag: what a frame that is not a segment to cut may be.
        var maxPlain = vm.Port.Capabilities.Offloads ? vm.Port.Capabilities.Mtu + 18 : int.MaxValue;
        for (var i = 0; i < batch.Count; i++)
        {
            if (Volatile.Read(ref current) != generation)
            {
                state.Flush();
                for (var rest = i; rest < batch.Count; rest++)
                {
                    vm.Counters.Received(batch[rest].Length);
                    vm.Counters.Drop(DropReason.PathStuck);
                }
                return false;
            }
            var offload = batch.Offload(i);
            if (offload.IsPlain && batch[i].Length <= maxPlain)
            {
                FromVm(vm, batch[i], scratch);
            }
            else if (offload.IsPlain)
            {
                // A port with offloads takes 64 KiB frames, but only a segment to cut may exceed the device's MTU.
                vm.Counters.Received(batch[i].Length);
                vm.Counters.Drop(DropReason.Malformed);
            }
            else
            {
                FromVmOffloaded(vm, batch[i], offload, scratch, segments ??= new byte[65536]);
            }
        }
        return true;
    }

    /// <summary>
    /// Finishes what the VM's device left to the port: a partial checksum is completed, a large TCP or UDP segment cut into
    /// the frames the VM's MSS makes (each switched as if the VM had sent it). A header the frame's own headers do not
    /// bear out is the VM's malformed frame.
    /// </summary>
    private void FromVmOffloaded(VmPort vm, Span<byte> frame, VirtioNetHeader offload, Span<byte> scratch, Span<byte> segment)
    {
        if ((offload.GsoType & ~VirtioNetHeader.GsoEcn) == VirtioNetHeader.GsoNone)
        {
            if (!FrameOffload.FinishChecksum(frame, offload))
            {
                vm.Counters.Received(frame.Length);
                vm.Counters.Drop(DropReason.Malformed);
                return;
            }
            FromVm(vm, frame, scratch);
            return;
        }
        var count = FrameOffload.SegmentCount(frame, offload);
        // A segment size beyond the device's MTU is a header the VM's kernel would never write (and each cut frame would
        // only be fragmented again); headers are at most 134 bytes, so a segment always fits the buffer.
        if (count == 0 || offload.GsoSize > vm.Port.Capabilities.Mtu || offload.GsoSize + 134 > segment.Length)
        {
            vm.Counters.Received(frame.Length);
            vm.Counters.Drop(DropReason.Malformed);
            return;
        }
        vm.LargeSegmentsCut++;
        vm.FramesCut += count;
        for (var i = 0; i < count; i++)
        {
            FromVm(vm, segment[..FrameOffload.Segment(frame, offload, i, segment)], scratch);
        }
    }

    /// <summary>Switches one frame a VM sent; the caller flushes the underlay after its batch.</summary>
    private void FromVm(VmPort vm, ReadOnlySpan<byte> frame, Span<byte> scratch)
    {
        vm.Counters.Received(frame.Length);
        if (!EthernetFrame.TryCreate(frame, out var eth) || eth.TagCount > 0)
        {
            vm.Counters.Drop(DropReason.Malformed);
            return;
        }
        if (eth.Source != vm.Spec.Mac)
        {
            vm.Counters.Drop(DropReason.SpoofedSource);
            return;
        }
        var table = state.Table;
        if (SourceGuard.Check(vm.Spec, eth, table) is { } refused)
        {
            vm.Counters.Drop(refused);
            return;
        }
        var vni = vm.Spec.Vni;
        if (eth.Destination.IsMulticast)
        {
            if (TryAnswerFromTable(vm, eth, table, scratch))
            {
                return;
            }
            Flood(vm, frame, table);
            return;
        }
        var target = table.FindByMac(vni, eth.Destination);
        if (target is null)
        {
            vm.Counters.Drop(DropReason.UnknownDestination);
            return;
        }
        if (target.LocalVm is not null)
        {
            // Same host: straight to the other VM's port, never to the uplink.
            if (state.Vms.TryGetValue(target.LocalVm, out var local))
            {
                local.Deliver(frame);
            }
            return;
        }
        if (!state.Paths.TryGetValue(target.RemoteHost!, out var path))
        {
            vm.Counters.Drop(DropReason.NoPath);
            return;
        }
        if (path.Transmit(frame, vni, vm.Spec.VmId, vm.Sealed, target.Sealed, follows: vm.Role == VmRole.Follows) is > 0 and var mtu)
        {
            HandleTooLarge(vm, path, eth, mtu, target.Sealed, scratch);
        }
    }

    private void HandleTooLarge(VmPort vm, RemotePath path, in EthernetFrame eth, int mtu, bool sealedDestination, Span<byte> scratch)
    {
        vm.Counters.Drop(DropReason.TooLarge);
        if (eth.EtherType == EtherTypes.IPv4 && IPv4Packet.TryCreate(eth.Payload, out var v4))
        {
            if (!v4.DontFragment)
            {
                // Without DF a router fragments: so does the switch, and the VM never notices the overlay.
                var fragmentScratch = new byte[mtu + InnerEthernet + 64];
                Replies.Fragment(eth, v4, mtu, fragmentScratch, fragment => path.Transmit(fragment, vm.Spec.Vni, vm.Spec.VmId, vm.Sealed, sealedDestination, follows: vm.Role == VmRole.Follows));
                return;
            }
            vm.Deliver(scratch[..Replies.FragmentationNeeded(eth, v4, mtu, scratch)]);
        }
        else if (eth.EtherType == EtherTypes.IPv6 && IPv6Packet.TryCreate(eth.Payload, out var v6))
        {
            vm.Deliver(scratch[..Replies.PacketTooBig(eth, v6, mtu, scratch)]);
        }
    }

    private bool TryAnswerFromTable(VmPort vm, in EthernetFrame eth, ForwardingTable table, Span<byte> scratch)
    {
        var vni = vm.Spec.Vni;
        if (eth.EtherType == EtherTypes.Arp && ArpPacket.TryCreate(eth.Payload, out var arp) && arp.Operation == ArpOperation.Request)
        {
            var request = arp.ToRepr();
            // Gratuitous ARP (sender = target) announces; it is not a question.
            if (request.SenderProtocol == request.TargetProtocol)
            {
                return false;
            }
            if (table.FindByIPv4(vni, request.TargetProtocol) is { } owner && owner.Mac != vm.Spec.Mac)
            {
                vm.Deliver(scratch[..Replies.ArpReply(request, owner.Mac, scratch)]);
                return true;
            }
            return false;
        }
        if (eth.EtherType == EtherTypes.IPv6 && IPv6Packet.TryCreate(eth.Payload, out var ip) && ip.UpperLayerProtocol == IPProtocols.IcmpV6
            && IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var icmp) && icmp.Type == IcmpV6Types.NeighborSolicitation)
        {
            // Duplicate address detection comes from :: and must not be answered, or the VM would drop its own address.
            if (ip.Source == default)
            {
                return true;
            }
            if (table.FindByIPv6(vni, icmp.TargetAddress) is { } owner && owner.Mac != vm.Spec.Mac)
            {
                vm.Deliver(scratch[..Replies.NeighborAdvertisement(vm.Spec.Mac, ip.Source, icmp.TargetAddress, owner.Mac, scratch)]);
                return true;
            }
        }
        return false;
    }

    private void Flood(VmPort from, ReadOnlySpan<byte> frame, ForwardingTable table)
    {
        var vni = from.Spec.Vni;
        foreach (var vmId in table.LocalVmsOf(vni))
        {
            if (vmId != from.Spec.VmId && state.Vms.TryGetValue(vmId, out var local))
            {
                local.Deliver(frame);
            }
        }
        foreach (var host in table.RemoteHostsOf(vni))
        {
            if (state.Paths.TryGetValue(host, out var path))
            {
                path.Transmit(frame, vni, from.Spec.VmId, from.Sealed, preferEncrypted: table.HasSealedVms(vni, host));
            }
        }
    }

    /// <summary>A datagram from the underlay (on its receive thread): to the path of the address it came from.</summary>
    public void OnDatagram(ReadOnlySpan<byte> datagram, UdpPeer source)
    {
        if (!state.PathsByAddress.TryGetValue(source, out var path))
        {
            state.UnderlayCounters.Drop(DropReason.UnknownPeer);
            return;
        }
        path.Receive(datagram);
    }

    /// <summary>
    /// Delivers a frame from the path to <paramref name="fromHost"/> to the local VM it is for; returns that VM's id (null
    /// for a broadcast or a drop). The frame's source must be a VM the forwarding table places on that host in that
    /// virtual network: a host (or anyone who can send as it) cannot speak for VMs it does not have, nor for VMs of
    /// networks it has none in. A confidential VM gets it only if it was <paramref name="encrypted"/> (the stack that carried it encrypts).
    /// </summary>
    public string? DeliverFromUnderlay(string fromHost, uint vni, bool encrypted, ReadOnlySpan<byte> frame)
    {
        if (!EthernetFrame.TryCreate(frame, out var eth))
        {
            state.UnderlayCounters.Drop(DropReason.Malformed);
            return null;
        }
        var table = state.Table;
        if (table.FindByMac(vni, eth.Source)?.RemoteHost != fromHost)
        {
            state.UnderlayCounters.Drop(DropReason.SpoofedSource);
            return null;
        }
        if (eth.Destination.IsMulticast)
        {
            foreach (var vmId in table.LocalVmsOf(vni))
            {
                if (!state.Vms.TryGetValue(vmId, out var local))
                {
                    continue;
                }
                if (!local.Sealed || encrypted)
                {
                    local.Deliver(frame);
                }
                else
                {
                    state.UnderlayCounters.Drop(DropReason.NotEncrypted);
                }
            }
            return null;
        }
        // The VNI comes from the Fabric header: a frame reaches a VM only if that VM is in that network.
        if (table.FindByMac(vni, eth.Destination) is { LocalVm: { } vmIdTarget } && state.Vms.TryGetValue(vmIdTarget, out var target))
        {
            if (target.Sealed && !encrypted)
            {
                // A confidential VM takes frames from other hosts only as they crossed the underlay: encrypted. Whatever
                // came in clear (from a standard VM, or forged as its host) could have been read or made up on the way.
                state.UnderlayCounters.Drop(DropReason.NotEncrypted);
                return null;
            }
            target.Deliver(frame);
            return vmIdTarget;
        }
        state.UnderlayCounters.Drop(DropReason.WrongVirtualNetwork);
        return null;
    }
}
