using Fabric.Agent.Underlay;
using Fabric.Stacks;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>The adapters a path's stack instances are given: the output that frames their datagrams for the underlay,
/// the delivery to local VMs, their telemetry, and the creation of an instance on a thread of its own.</summary>
public sealed partial class RemotePath
{
    /// <summary>
    /// Writes the Fabric header in front of what the stack wrote, straight into the calling thread's underlay outbox.
    /// Used under the path's gate.
    /// </summary>
    private sealed class PathOutput(RemotePath path, IUnderlay underlay) : IUnderlayOutput
    {
        private byte _slot;
        private uint _sequence;
        private int _begun;

        public uint VirtualNetwork { get; set; }

        public void Prepare(byte slot, uint vni)
        {
            _slot = slot;
            VirtualNetwork = vni;
        }

        public Span<byte> Begin(int maxLength)
        {
            // Room for the overlay tag is kept whatever the caller: the agents' own datagrams carry one after their payload.
            if (maxLength > underlay.MaxDatagram - FabricHeader.Length - OverlayAuthenticator.TagLength)
            {
                return Span<byte>.Empty;
            }
            _begun = 1;
            return underlay.NextBuffer()[FabricHeader.Length..^OverlayAuthenticator.TagLength];
        }

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length)
        {
            if (_begun == 0)
            {
                return;
            }
            _begun = 0;
            var now = path.Clock();
            var buffer = underlay.NextBuffer();
            // Path sequence counts every datagram on this path, across slots: loss and reordering measured for free.
            new FabricHeaderRepr(_slot, payloadType, VirtualNetwork, _sequence++, (uint)(now / 1000), (byte)stackFieldLength).Write(buffer);
            var total = FabricHeader.Length + length;
            if (payloadType is FabricPayloadType.Probe or FabricPayloadType.ProbeReply or FabricPayloadType.ProbeTrain or FabricPayloadType.AgentControl)
            {
                total = path._authenticator?.Seal(buffer, total) ?? total;
                underlay.Commit(total, path.Destination);
                return;
            }
            underlay.Commit(total, path.Destination);
            path.Counters.Sent(total);
        }
    }

    /// <summary>Delivers a stack's frames to the switch (which returns the local VM a frame went to) and meters what
    /// reached a VM. Called under the path's gate (from a stack's receive or timer).</summary>
    private sealed class PathDelivery(RemotePath path, Func<string, uint, bool, ReadOnlySpan<byte>, string?> deliver) : IVmOutput
    {
        public uint VirtualNetwork { get; set; }

        public void Deliver(ReadOnlySpan<byte> frame)
        {
            // The stack delivering it says whether the frame crossed the underlay encrypted (a confidential VM takes no other).
            var slot = path._gate.InCallSlot;
            if (deliver(path.Spec.HostId, VirtualNetwork, path._table.Encrypts(slot), frame) is { } vmId)
            {
                var traffic = path._table.Traffic(vmId);
                var now = path.Clock();
                if (path._table.IsPeer(slot) && SlotTable.IsLeaders(slot) && frame.Length >= 12)
                {
                    // A slot the peer opened for VMs that lead: what the sender chose for its frames here, which a VM that
                    // follows answers on (and then, both ways, the sender's choice: not what the follower's own stack gets it).
                    traffic.Heard(MacAddress.Read(frame[6..]), slot, now);
                    if (path.Follows(vmId))
                    {
                        return;
                    }
                }
                traffic.Tcp.OnIngress(frame, now);
            }
        }
    }

    private long _lastStackEvent = long.MinValue / 2;

    /// <summary>A stack's events go to the switch's event list and log, at most one a second per path.</summary>
    private sealed class PathTelemetry(RemotePath path, string stackId) : IStackTelemetry
    {
        public void Event(string name, string detail)
        {
            var now = path.Clock();
            var last = Volatile.Read(ref path._lastStackEvent);
            if (now - last < 1_000_000_000 || Interlocked.CompareExchange(ref path._lastStackEvent, now, last) != last)
            {
                return;
            }
            path.OnStackEvent?.Invoke(stackId, name, detail);
        }
    }

    /// <summary>One call of a factory, on its own thread; an instance that comes after <see cref="Abandon"/> is disposed.</summary>
    private sealed class Creation(IStackFactory factory, StackContext context, StackDisposer disposer, string stackId)
    {
        private readonly object _gate = new();
        private bool _abandoned;

        public IStack? Created { get; private set; }

        public Exception? Failed { get; private set; }

        public void Run()
        {
            IStack? created = null;
            try
            {
                created = factory.Create(context);
            }
            catch (Exception e)
            {
                Failed = e;
            }
            lock (_gate)
            {
                if (_abandoned)
                {
                    if (created is not null)
                    {
                        disposer.Discard(created, stackId);
                    }
                    return;
                }
                Created = created;
            }
        }

        public void Abandon()
        {
            lock (_gate)
            {
                _abandoned = true;
                if (Created is { } late)
                {
                    // Returned between the timeout and now: the caller has given up on it.
                    Created = null;
                    disposer.Discard(late, stackId);
                }
            }
        }
    }
}
