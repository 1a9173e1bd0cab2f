using BenchmarkDotNet.Attributes;
using Fabric.Wire;

namespace Fabric.Benchmarks;

/// <summary>Per-packet costs of the views: parsing an overlay datagram down to the inner frame must not allocate.</summary>
[MemoryDiagnoser]
public class WireBenchmarks
{
    private readonly byte[] _overlay = new byte[14 + 20 + 8 + FabricHeader.Length + 1514];
    private readonly byte[] _scratch = new byte[2048];

    [GlobalSetup]
    public void Setup()
    {
        var at = EthernetWriter.Write(_overlay, new MacAddress(2), new MacAddress(3), EtherTypes.IPv4);
        var payload = _overlay.Length - at - 20;
        at += new IPv4Repr(new IPv4Address(0xC6120001), new IPv4Address(0xC6120002), IPProtocols.Udp, 64, payload).Write(_overlay.AsSpan(at));
        at += UdpWriter.Write(_overlay.AsSpan(at), 40000, FabricHeader.DefaultUdpPort, payload - 8);
        at += new FabricHeaderRepr(1, FabricPayloadType.Ethernet, 42, 7, 1234).Write(_overlay.AsSpan(at));
        EthernetWriter.Write(_overlay.AsSpan(at), new MacAddress(4), new MacAddress(5), EtherTypes.IPv4);
    }

    /// <summary>Outer Ethernet → IPv4 → UDP → Fabric header → inner Ethernet: what the receive path does per packet.</summary>
    [Benchmark(Baseline = true)]
    public uint ParseOverlayToInnerFrame()
    {
        if (EthernetFrame.TryCreate(_overlay, out var eth) && IPv4Packet.TryCreate(eth.Payload, out var ip) && UdpDatagram.TryCreate(ip.Payload, out var udp)
            && FabricHeader.TryCreate(udp.Payload, out var fabric) && EthernetFrame.TryCreate(fabric.Payload, out var inner))
        {
            return fabric.VirtualNetworkId + (uint)inner.Destination.Value;
        }
        return 0;
    }

    /// <summary>Writing the outer headers around a 1514-byte VM frame: what the transmit path does per packet.</summary>
    [Benchmark]
    public int EncapsulateWithChecksum()
    {
        var at = EthernetWriter.Write(_scratch, new MacAddress(2), new MacAddress(3), EtherTypes.IPv4);
        at += new IPv4Repr(new IPv4Address(0xC6120001), new IPv4Address(0xC6120002), IPProtocols.Udp, 64, 8 + FabricHeader.Length + 1400).Write(_scratch.AsSpan(at));
        at += UdpWriter.Write(_scratch.AsSpan(at), 40000, FabricHeader.DefaultUdpPort, FabricHeader.Length + 1400);
        return at + new FabricHeaderRepr(1, FabricPayloadType.Ethernet, 42, 7, 1234).Write(_scratch.AsSpan(at));
    }

    /// <summary>The Internet checksum over a full-size frame.</summary>
    [Benchmark]
    public ushort Checksum1500() => Checksum.Compute(_overlay.AsSpan(0, 1500));
}
