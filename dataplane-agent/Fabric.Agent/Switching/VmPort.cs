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
public sealed record VmSpec(string VmId, string Device, uint Vni, MacAddress Mac, ImmutableArray<IPv4Address> IPv4, ImmutableArray<IPv6Address> IPv6);

/// <summary>An attached VM: its spec, its port and its counters. The receive thread belongs to the switch.</summary>
public sealed class VmPort
{
    internal VmPort(VmSpec spec, IFramePort port)
    {
        Spec = spec;
        Port = port;
    }

    public VmSpec Spec { get; }

    public IFramePort Port { get; }

    /// <summary>Rx = frames from the VM; Tx = frames delivered to the VM.</summary>
    public TrafficCounters Counters { get; } = new();

    internal Thread? Receiver { get; set; }

    internal volatile bool Stopping;

    /// <summary>Serializes transmits to the port: frames arrive from several threads (other VMs, the underlay).</summary>
    internal object TransmitGate { get; } = new();

    internal void Deliver(ReadOnlySpan<byte> frame)
    {
        PortResult result;
        lock (TransmitGate)
        {
            result = Port.Transmit(frame);
        }
        if (result == PortResult.Ok)
        {
            Counters.Sent(frame.Length);
        }
        else
        {
            Counters.Drop(DropReason.TransmitFailed);
        }
    }
}
