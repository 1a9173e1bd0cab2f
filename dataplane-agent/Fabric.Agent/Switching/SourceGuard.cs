using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>
/// Whether the network-layer sender of a frame a VM sent is that VM: an IPv4 or IPv6 packet's source address, an ARP
/// packet's sender and a neighbour advertisement's target must be one of the VM's registered addresses (its IPv6
/// link-local addresses, and the unspecified addresses a host uses before it has one, count as its own). So a tenant can
/// neither send as another VM's address nor poison its neighbours' ARP and neighbour caches. A VM registered without
/// addresses of a family is not checked in that family (it may take them from DHCP or SLAAC).
/// </summary>
public static class SourceGuard
{
    /// <summary>Null when the frame's sender is the VM (or nothing is checked for it); else why it is dropped.</summary>
    public static DropReason? Check(VmSpec vm, in EthernetFrame eth)
    {
        switch (eth.EtherType)
        {
            case EtherTypes.IPv4 when !vm.IPv4.IsEmpty:
                return !IPv4Packet.TryCreate(eth.Payload, out var v4) ? DropReason.Malformed : OwnIPv4(vm, v4.Source) ? null : DropReason.SpoofedSource;
            case EtherTypes.Arp when !vm.IPv4.IsEmpty:
                return !ArpPacket.TryCreate(eth.Payload, out var arp) ? DropReason.Malformed
                    : arp.SenderHardware == vm.Mac && OwnIPv4(vm, arp.SenderProtocol) ? null : DropReason.SpoofedSource;
            case EtherTypes.IPv6 when !vm.IPv6.IsEmpty:
                if (!IPv6Packet.TryCreate(eth.Payload, out var v6))
                {
                    return DropReason.Malformed;
                }
                var own = OwnIPv6(vm, v6.Source) && (v6.UpperLayerProtocol != IPProtocols.IcmpV6 || !IcmpV6Message.TryCreate(v6.UpperLayerPayload, out var icmp)
                    || icmp.Type != IcmpV6Types.NeighborAdvertisement || (icmp.TargetAddress != default && OwnIPv6(vm, icmp.TargetAddress)));
                return own ? null : DropReason.SpoofedSource;
            default:
                return null;
        }
    }

    private static bool OwnIPv4(VmSpec vm, IPv4Address address) => address.Value == 0 || vm.IPv4.Contains(address);

    /// <summary>The VM's own, a link-local address (fe80::/10), or the unspecified address (duplicate address detection).</summary>
    private static bool OwnIPv6(VmSpec vm, IPv6Address address) => address == default || address.High >> 54 == 0x3FA || vm.IPv6.Contains(address);
}
