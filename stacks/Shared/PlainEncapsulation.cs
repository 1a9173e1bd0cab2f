using Fabric.Wire;

namespace Fabric.Stacks;

/// <summary>
/// Plain encapsulation, shared by std-ipv4 and std-ipv6 (compiled into each plug-in): the VM's Ethernet frame is the
/// payload, no stack fields, nothing kept between packets. The two differ only in the underlay family they declare.
/// </summary>
internal sealed class PlainEncapsulation(StackDescription description) : IStack
{
    private readonly StackCounters _counters = new();

    public long NextTimerNanoseconds => long.MaxValue;

    public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
    {
        _counters.FramesIn++;
        if (!EthernetFrame.TryCreate(frame, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        var buffer = underlay.Begin(frame.Length);
        if (buffer.Length < frame.Length)
        {
            _counters.Drop(buffer.IsEmpty ? StackDropReason.NoBuffer : StackDropReason.TooLarge);
            return;
        }
        frame.CopyTo(buffer);
        underlay.Commit(FabricPayloadType.Ethernet, 0, frame.Length);
        _counters.DatagramsOut++;
    }

    public void Receive(in StackDatagram datagram, long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
        _counters.DatagramsIn++;
        if (datagram.Header.PayloadType != FabricPayloadType.Ethernet)
        {
            _counters.Drop(StackDropReason.UnexpectedPayloadType);
            return;
        }
        if (!datagram.StackFields.IsEmpty || !EthernetFrame.TryCreate(datagram.Payload, out _))
        {
            _counters.Drop(StackDropReason.Malformed);
            return;
        }
        vm.Deliver(datagram.Payload);
        _counters.FramesDelivered++;
    }

    public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
    {
    }

    public StackStats GetStats() => _counters.Snapshot();

    public StackState ExportState() => StackState.Empty(description.Id);

    public void ApplyPolicy(StackPolicy policy)
    {
    }

    public void Dispose()
    {
    }
}
