using System.Collections.Immutable;
using System.Globalization;
using Fabric.Wire;

namespace Fabric.Hal.Inventory;

/// <summary>What kind of netdev a NIC is.</summary>
public enum NicKind
{
    /// <summary>A device on a bus (PCI): a physical port or an SR-IOV physical function.</summary>
    Physical,
    /// <summary>An SR-IOV virtual function.</summary>
    VirtualFunction,
    Loopback,
    /// <summary>A tun or tap device.</summary>
    Tap,
    Bridge,
    Veth,
    /// <summary>Any other software device (vlan, macvlan, vxlan, ifb, wireguard...).</summary>
    Virtual,
}

/// <summary>The counters under /sys/class/net/NAME/statistics.</summary>
public sealed record NicCounters(long RxPackets, long TxPackets, long RxBytes, long TxBytes, long RxDropped, long TxDropped, long RxErrors, long TxErrors);

/// <summary>One VF of a physical function: its index, PCI address and netdev (null when bound to vfio or not probed).</summary>
public sealed record VfReference(int Index, string PciAddress, string? NetDevice);

/// <summary>SR-IOV capability of a physical function.</summary>
public sealed record SriovCapability(int TotalVfs, int NumVfs, ImmutableArray<VfReference> Vfs);

/// <summary>For a VF: its physical function and its index there.</summary>
public sealed record PhysicalFunctionReference(string PciAddress, string? NetDevice, int VfIndex);

/// <summary>One netdev as the HAL sees it.</summary>
public sealed record NicInfo(
    string Name,
    int IfIndex,
    NicKind Kind,
    string? Driver,
    MacAddress? Mac,
    int Mtu,
    long? SpeedMbps,
    string OperState,
    NicCounters Counters,
    string? PciAddress,
    SriovCapability? Sriov,
    PhysicalFunctionReference? PhysicalFunction)
{
    /// <summary>One line for operators.</summary>
    public override string ToString()
    {
        var speed = SpeedMbps is { } s ? s.ToString(CultureInfo.InvariantCulture) + "Mb/s" : "-";
        var line = $"{Name,-16} {Kind,-15} driver={Driver ?? "-"} mac={Mac?.ToString() ?? "-"} mtu={Mtu} speed={speed} state={OperState} "
            + $"rx={Counters.RxPackets}p/{Counters.RxBytes}B tx={Counters.TxPackets}p/{Counters.TxBytes}B drop={Counters.RxDropped}/{Counters.TxDropped}";
        if (PciAddress is not null)
        {
            line += $" pci={PciAddress}";
        }
        if (Sriov is not null)
        {
            line += $" sriov={Sriov.NumVfs}/{Sriov.TotalVfs} vfs=[{string.Join(", ", Sriov.Vfs.Select(v => $"{v.Index}:{v.PciAddress}:{v.NetDevice ?? "-"}"))}]";
        }
        if (PhysicalFunction is not null)
        {
            line += $" pf={PhysicalFunction.NetDevice ?? PhysicalFunction.PciAddress} vf={PhysicalFunction.VfIndex}";
        }
        return line;
    }
}
