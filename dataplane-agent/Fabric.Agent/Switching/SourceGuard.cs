using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>
/// Whether the network-layer sender of a frame a VM sent is that VM: an IPv4 or IPv6 packet's source address, an ARP
/// packet's sender and a neighbour advertisement's target must be one of the VM's registered addresses (its IPv6
/// link-local addresses, and the unspecified addresses a host uses before it has one, count as its own). So a tenant can
/// neither send as another VM's address nor poison its neighbours' ARP and neighbour caches. A VM registered without
/// addresses of a family may take them from DHCP or SLAAC, so any address of that family is its own — except one the
/// forwarding table gives another VM of its network: it still cannot send as, or claim, a VM the fleet knows.
/// </summary>
public static class SourceGuard
{
    /// <summary>Null when the frame's sender is the VM; else why it is dropped.</summary>
    /// <param name="vm">The VM that sent it.</param>
    /// <param name="eth">The frame.</param>
    /// <param name="table">The forwarding table, which says whose an address is when the VM registered none of its family.</param>
    public static DropReason? Check(VmSpec vm, in EthernetFrame eth, ForwardingTable table)
    {
        switch (eth.EtherType)
        {
            case EtherTypes.IPv4:
                return !IPv4Packet.TryCreate(eth.Payload, out var v4) ? DropReason.Malformed : OwnIPv4(vm, v4.Source, table) ? null : DropReason.SpoofedSource;
            case EtherTypes.Arp:
                return !ArpPacket.TryCreate(eth.Payload, out var arp) ? DropReason.Malformed
                    : arp.SenderHardware == vm.Mac && OwnIPv4(vm, arp.SenderProtocol, table) ? null : DropReason.SpoofedSource;
            case EtherTypes.IPv6:
                if (!IPv6Packet.TryCreate(eth.Payload, out var v6))
                {
                    return DropReason.Malformed;
                }
                var own = OwnIPv6(vm, v6.Source, table) && (v6.UpperLayerProtocol != IPProtocols.IcmpV6 || !IcmpV6Message.TryCreate(v6.UpperLayerPayload, out var icmp)
                    || icmp.Type != IcmpV6Types.NeighborAdvertisement || (icmp.TargetAddress != default && OwnIPv6(vm, icmp.TargetAddress, table)));
                return own ? null : DropReason.SpoofedSource;
            default:
                return null;
        }
    }

    /// <summary>The VM's own, or the unspecified address (DHCP); for a VM with no IPv4 registered, any address no other VM of its network has.</summary>
    private static bool OwnIPv4(VmSpec vm, IPv4Address address, ForwardingTable table) => address.Value == 0 || (vm.IPv4.IsEmpty
        ? table.FindByIPv4(vm.Vni, address) is not { } owner || owner.Mac == vm.Mac
        : vm.IPv4.Contains(address));

    /// <summary>The VM's own, a link-local address (fe80::/10), or the unspecified address (duplicate address detection);
    /// for a VM with no IPv6 registered, any address no other VM of its network has.</summary>
    private static bool OwnIPv6(VmSpec vm, IPv6Address address, ForwardingTable table) => address == default || address.High >> 54 == 0x3FA || (vm.IPv6.IsEmpty
        ? table.FindByIPv6(vm.Vni, address) is not { } owner || owner.Mac == vm.Mac
        : vm.IPv6.Contains(address));
}
