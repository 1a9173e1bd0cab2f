using Fabric.Testing;
using Fabric.Agent.Switching;
using Fabric.Wire;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// The switch between two real agents over an in-memory underlay (<see cref="Underlay.InMemoryWire"/>: no sockets; an
/// attacker injects on the wire), VMs on channel ports. No root needed. The UDP underlay itself is tested with real
/// sockets in the other classes (TwoHosts' default) and <c>ResilienceTests</c>.
/// </summary>
public class SwitchTests
{
    [Theory]
    [InlineData("std-ipv4")]
    [InlineData("std-ipv6")]
    public void UnicastToARemoteVm_ArrivesIntact(string stack)
    {
        using var hosts = new TwoHosts(stack, inMemory: true);
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 1000);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        var path = hosts.A.Switch.Paths["host-b"];
        Assert.Equal(stack, path.TransmitStack);
        Assert.Equal(1, path.Counters.TxPackets);
        Assert.Equal(frame.Length + FabricHeader.Length, path.Counters.TxBytes);

        var back = Frames.Udp6(Mac3, Mac1, "fd00:100::3", "fd00:100::1", 500);
        hosts.Vm("vm3").Transmit(back);
        Assert.Equal(back, hosts.Expect("vm1"));
    }

    [Fact]
    public void ArpAndNeighborSolicitation_AreAnsweredFromTheTable()
    {
        using var hosts = new TwoHosts(inMemory: true);
        hosts.Vm("vm1").Transmit(Frames.ArpRequest(Mac1, "10.0.0.1", "10.0.0.3"));
        var reply = hosts.Expect("vm1");
        Assert.True(EthernetFrame.TryCreate(reply, out var eth));
        Assert.True(ArpPacket.TryCreate(eth.Payload, out var arp));
        Assert.Equal(ArpOperation.Reply, arp.Operation);
        Assert.Equal(Mac3, arp.SenderHardware);
        Assert.Equal(IPv4Address.Parse("10.0.0.3"), arp.SenderProtocol);
        Assert.Equal(Mac1, eth.Destination);

        hosts.Vm("vm1").Transmit(Frames.NeighborSolicitation(Mac1, "fd00:100::1", "fd00:100::3"));
        var na = hosts.Expect("vm1");
        Assert.True(EthernetFrame.TryCreate(na, out eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var icmp));
        Assert.Equal(IcmpV6Types.NeighborAdvertisement, icmp.Type);
        Assert.True(icmp.VerifyChecksum(ip.Source, ip.Destination));
        Assert.Equal(IPv6Address.Parse("fd00:100::3"), icmp.TargetAddress);
        foreach (var option in icmp.Options)
        {
            Assert.True(option.TryGetLinkLayerAddress(out var mac));
            Assert.Equal(Mac3, mac);
        }
        // Nothing was sent to host B: the answers came from the table.
        Assert.Equal(0, hosts.A.Switch.Paths["host-b"].Counters.TxPackets);
    }

    [Fact]
    public void SameHostTraffic_IsSwitchedLocallyAndNeverTouchesTheUnderlay()
    {
        using var hosts = new TwoHosts(inMemory: true);
        var frame = Frames.Udp(Mac1, Mac2, "10.0.0.1", "10.0.0.2", 1400);
        for (var i = 0; i < 10; i++)
        {
            hosts.Vm("vm1").Transmit(frame);
            Assert.Equal(frame, hosts.Expect("vm2"));
        }
        Assert.Equal(0, hosts.A.Switch.Paths["host-b"].Counters.TxPackets);
        // Counted once the port took the frame: vm2's end may hold the 10th a moment before the switch counts it.
        Eventually.True(() => hosts.A.Switch.Vms["vm2"].Counters.TxPackets == 10, TimeSpan.FromSeconds(5), "vm2's port counted 10 frames",
            () => $"{hosts.A.Switch.Vms["vm2"].Counters.TxPackets}");
    }

    [Fact]
    public void OtherVirtualNetworks_AreUnreachable_AndSpoofedFramesAreDropped()
    {
        using var hosts = new TwoHosts(inMemory: true);
        // vm4 is in vni 200: vm3's MAC does not exist there.
        hosts.Vm("vm4").Transmit(Frames.Udp(Mac4, Mac3, "10.0.0.4", "10.0.0.3", 100));
        hosts.Vm("vm4").Transmit(Frames.ArpRequest(Mac4, "10.0.0.4", "10.0.0.1"));
        // vm1 pretends to be vm2.
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac2, Mac3, "10.0.0.2", "10.0.0.3", 100));
        // Barriers, not a wait for silence: one thread handles each VM's frames in order, so once a later frame of the
        // same VM is handled, the ones above were. vm4's second frame to nowhere is counted after its ARP question was
        // handled; vm1's genuine frame reaches vm3 after its forgery would have.
        hosts.Vm("vm4").Transmit(Frames.Udp(Mac4, Mac3, "10.0.0.4", "10.0.0.3", 100));
        Eventually.True(() => hosts.A.Switch.Vms["vm4"].Counters.Drops(DropReason.UnknownDestination) == 2, TimeSpan.FromSeconds(5), "vm4's frames handled",
            () => $"{hosts.A.Switch.Vms["vm4"].Counters.Drops(DropReason.UnknownDestination)} dropped");
        var genuine = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 100);
        hosts.Vm("vm1").Transmit(genuine);
        Assert.Equal(genuine, hosts.Expect("vm3"));
        // The ARP question reached no VM of another network and went unanswered.
        Assert.True(hosts.Silent("vm1", TimeSpan.Zero));
        Assert.True(hosts.Silent("vm2", TimeSpan.Zero));
        Assert.True(hosts.Silent("vm4", TimeSpan.Zero));
        Assert.Equal(1, hosts.A.Switch.Vms["vm1"].Counters.Drops(DropReason.SpoofedSource));
        Assert.Equal(1, hosts.A.Switch.Paths["host-b"].Counters.TxPackets);
    }

    [Fact]
    public void Broadcasts_ReachEveryVmOfTheNetworkAndNoOther()
    {
        using var hosts = new TwoHosts(inMemory: true);
        var broadcast = Frames.Udp(Mac1, MacAddress.Broadcast, "10.0.0.1", "255.255.255.255", 50, dontFragment: false);
        hosts.Vm("vm1").Transmit(broadcast);
        Assert.Equal(broadcast, hosts.Expect("vm2"));
        Assert.Equal(broadcast, hosts.Expect("vm3"));
        Assert.True(hosts.Silent("vm4", TimeSpan.FromMilliseconds(200)));
        Assert.True(hosts.Silent("vm1", TimeSpan.FromMilliseconds(50)));
    }

    [Fact]
    public void TooLargeWithDontFragment_GetsFragmentationNeededWithThePathMtu()
    {
        using var hosts = new TwoHosts(inMemory: true);
        var mtu = hosts.A.Switch.InnerMtu(hosts.A.Switch.Paths["host-b"]);
        Assert.Equal(1500 - 20 - 8 - 16 - 14, mtu);
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 1472));
        var icmpFrame = hosts.Expect("vm1");
        Assert.True(EthernetFrame.TryCreate(icmpFrame, out var eth));
        Assert.True(IPv4Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(ip.VerifyChecksum());
        Assert.Equal(IPv4Address.Parse("10.0.0.3"), ip.Source);
        Assert.True(IcmpV4Message.TryCreate(ip.Payload, out var icmp));
        Assert.True(icmp.VerifyChecksum());
        Assert.Equal((IcmpV4Message.DestinationUnreachable, IcmpV4Message.FragmentationNeeded), (icmp.Type, icmp.Code));
        Assert.Equal(mtu, icmp.NextHopMtu);
        // The answer came, so the frame was handled: dropped (counted), not sent.
        Assert.Equal(1, hosts.A.Switch.Vms["vm1"].Counters.Drops(DropReason.TooLarge));
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));

        // Exactly the path MTU passes.
        var fits = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", mtu - 28);
        hosts.Vm("vm1").Transmit(fits);
        Assert.Equal(fits, hosts.Expect("vm3"));
    }

    [Fact]
    public void TooLargeWithoutDontFragment_IsFragmentedIntoPiecesThatReassemble()
    {
        using var hosts = new TwoHosts(inMemory: true);
        // A full 1500-byte packet from a VM whose MTU is the LAN's: larger than the 1442 bytes the path carries.
        var big = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 1472, dontFragment: false);
        Assert.Equal(Fabric.Hal.PortResult.Ok, hosts.Vm("vm1").Transmit(big));
        var payload = new byte[1480];
        var covered = 0;
        var sawLast = false;
        while (!sawLast)
        {
            var piece = hosts.Expect("vm3");
            Assert.True(EthernetFrame.TryCreate(piece, out var eth));
            Assert.True(IPv4Packet.TryCreate(eth.Payload, out var fragment));
            Assert.True(fragment.VerifyChecksum());
            Assert.True(fragment.TotalLength <= 1442);
            fragment.Payload.CopyTo(payload.AsSpan(fragment.FragmentOffset));
            covered += fragment.Payload.Length;
            sawLast = !fragment.MoreFragments;
        }
        Assert.Equal(1480, covered);
        Assert.True(IPv4Packet.TryCreate(big.AsSpan(14), out var original));
        Assert.Equal(original.Payload.ToArray(), payload);
    }

    [Fact]
    public void TooLargeIPv6_GetsPacketTooBig()
    {
        using var hosts = new TwoHosts(inMemory: true);
        hosts.Vm("vm1").Transmit(Frames.Udp6(Mac1, Mac3, "fd00:100::1", "fd00:100::3", 1452));
        var reply = hosts.Expect("vm1");
        Assert.True(EthernetFrame.TryCreate(reply, out var eth));
        Assert.True(IPv6Packet.TryCreate(eth.Payload, out var ip));
        Assert.True(IcmpV6Message.TryCreate(ip.UpperLayerPayload, out var icmp));
        Assert.Equal(IcmpV6Types.PacketTooBig, icmp.Type);
        Assert.Equal(1442u, icmp.PacketTooBigMtu);
        Assert.True(icmp.VerifyChecksum(ip.Source, ip.Destination));
    }

    [Fact]
    public void AVmCannotSendAsAnotherVmsAddress_NorClaimItInArpOrNeighbourDiscovery()
    {
        using var hosts = new TwoHosts(inMemory: true);
        // vm1 (10.0.0.1, fd00:100::1) with its own MAC but vm2's addresses: as IPv4, IPv6, an ARP sender, an advertised neighbour.
        byte[][] spoofed =
        [
            Frames.Udp(Mac1, Mac3, "10.0.0.2", "10.0.0.3", 100),
            Frames.Udp6(Mac1, Mac3, "fd00:100::2", "fd00:100::3", 100),
            Frames.ArpRequest(Mac1, "10.0.0.2", "10.0.0.9"),
            Frames.NeighborAdvertisement(Mac1, "fe80::1", "fd00:100::2"),
            Frames.Udp(Mac1, Mac2, "10.0.0.3", "10.0.0.2", 100),
        ];
        foreach (var frame in spoofed)
        {
            hosts.Vm("vm1").Transmit(frame);
        }
        // Each frame is either dropped (counted) or switched: all of them counted, none went anywhere.
        Eventually.True(() => hosts.A.Switch.Vms["vm1"].Counters.Drops(DropReason.SpoofedSource) == spoofed.Length, TimeSpan.FromSeconds(5),
            "every spoofed frame dropped", () => $"spoofed {hosts.A.Switch.Vms["vm1"].Counters.Drops(DropReason.SpoofedSource)}");
        Assert.Equal(0, hosts.A.Switch.Paths["host-b"].Counters.TxPackets);
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
        Assert.True(hosts.Silent("vm2", TimeSpan.Zero));
        // Its own addresses, its link-local address and the unspecified source (DHCP, duplicate address detection) pass.
        byte[][] own =
        [
            Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 100),
            Frames.Udp6(Mac1, Mac3, "fd00:100::1", "fd00:100::3", 100),
            Frames.Udp6(Mac1, Mac3, "fe80::5054:ff:fe00:1", "fd00:100::3", 100),
            Frames.Udp(Mac1, Mac3, "0.0.0.0", "10.0.0.3", 100),
        ];
        foreach (var frame in own)
        {
            hosts.Vm("vm1").Transmit(frame);
            Assert.Equal(frame, hosts.Expect("vm3"));
        }
        Assert.Equal(spoofed.Length, hosts.A.Switch.Vms["vm1"].Counters.Drops(DropReason.SpoofedSource));
        // An IPv4 frame whose packet does not parse cannot be checked: it is dropped as malformed.
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 100).AsSpan(0, 30));
        Eventually.True(() => hosts.A.Switch.Vms["vm1"].Counters.Drops(DropReason.Malformed) == 1, TimeSpan.FromSeconds(5), "the malformed frame dropped", () => "not yet");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
    }

    /// <summary>
    /// Each address of a network is one VM's (ARP, neighbour discovery and the source check answer by it): a route or a VM
    /// that claims an address another VM of the network holds is refused naming both, and the table is as it was.
    /// </summary>
    [Fact]
    public void AnAddressAnotherVmHolds_IsRefusedNamingIt_ForARouteAndForAVm()
    {
        using var hosts = new TwoHosts(inMemory: true);
        var before = hosts.A.Switch.Table;
        var route = hosts.A.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, "02:00:00:00:01:09", "host-b", ["10.0.0.2"], [])));
        Assert.False(route.Ok);
        Assert.Contains("address 10.0.0.2 in vni 100 already belongs to local VM 'vm2'", route.Error, StringComparison.Ordinal);
        var vm = hosts.A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm9", "tap-vm9", 100, "02:00:00:00:01:0a", [], ["fd00:100::3"])));
        Assert.False(vm.Ok);
        Assert.Contains($"address fd00:100::3 in vni 100 already belongs to {Mac3} on host 'host-b'", vm.Error, StringComparison.Ordinal);
        Assert.Same(before, hosts.A.Switch.Table);
        Assert.False(hosts.A.Switch.Vms.ContainsKey("vm9"));
        // Nor may one entry name an address twice (it would be indexed twice).
        var twice = hosts.A.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, "02:00:00:00:01:0b", "host-b", ["10.0.0.7", "10.0.0.7"], [])));
        Assert.False(twice.Ok);
        Assert.Contains("address 10.0.0.7 is listed twice for 02:00:00:00:01:0b in vni 100", twice.Error, StringComparison.Ordinal);
        Assert.Same(before, hosts.A.Switch.Table);
        // In another network the same address is free.
        Ok(hosts.A.Handle(new ApiRequest("set-route", Route: new RouteConfig(200, "02:00:00:00:01:09", "host-b", ["10.0.0.2"], []))));
    }

    /// <summary>
    /// A VM registered with no addresses (it takes them from DHCP or SLAAC) may use addresses no one has, but not those the
    /// forwarding table gives other VMs of its network, local or remote: it cannot send as them nor claim them in ARP or
    /// neighbour discovery. The frame after the refused ones is the first to arrive: none of them went out before it.
    /// </summary>
    [Fact]
    public void AVmRegisteredWithoutAddresses_TakesFreeOnes_ButNotTheAddressesOfVmsTheFleetKnows()
    {
        using var hosts = new TwoHosts(inMemory: true);
        var mac5 = new MacAddress(0x02_00_00_00_01_05);
        Ok(hosts.A.Handle(new ApiRequest("attach-vm", Vm: new VmConfig("vm5", "tap-vm5", 100, mac5.ToString(), [], []))));
        Ok(hosts.B.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, mac5.ToString(), "host-a", [], []))));
        byte[][] claimed =
        [
            Frames.Udp(mac5, Mac3, "10.0.0.2", "10.0.0.3", 100),
            Frames.Udp(mac5, Mac3, "10.0.0.3", "10.0.0.3", 100),
            Frames.Udp6(mac5, Mac3, "fd00:100::1", "fd00:100::3", 100),
            Frames.ArpRequest(mac5, "10.0.0.1", "10.0.0.3"),
            Frames.NeighborAdvertisement(mac5, "fe80::5", "fd00:100::3"),
        ];
        foreach (var frame in claimed)
        {
            hosts.Vm("vm5").Transmit(frame);
        }
        // Addresses no VM of the network has (what DHCP or SLAAC gave it) pass, in the order sent.
        byte[][] free =
        [
            Frames.Udp(mac5, Mac3, "10.0.0.77", "10.0.0.3", 100),
            Frames.Udp6(mac5, Mac3, "fd00:100::77", "fd00:100::3", 100),
            Frames.Udp(mac5, Mac3, "10.0.0.4", "10.0.0.3", 100),
        ];
        foreach (var frame in free)
        {
            hosts.Vm("vm5").Transmit(frame);
            Assert.Equal(frame, hosts.Expect("vm3"));
        }
        Assert.Equal(claimed.Length, hosts.A.Switch.Vms["vm5"].Counters.Drops(DropReason.SpoofedSource));
    }

    [Fact]
    public void AHostCannotSpeakForVmsItDoesNotHave_NorInNetworksItHasNoneIn()
    {
        using var hosts = new TwoHosts(inMemory: true);
        // A third host B knows, with one VM of its own in vni 100: an attacker on the wire who can send as that host.
        var intruder = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 39_999);
        var port = intruder.Port;
        var macC = new MacAddress(0x02_00_00_00_03_05);
        Ok(hosts.B.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-c", "127.0.0.1", null, "std-ipv4", port))));
        Ok(hosts.B.Handle(new ApiRequest("set-route", Route: new RouteConfig(100, macC.ToString(), "host-c", ["10.0.0.5"]))));
        uint sequence = 0;
        void Send(uint vni, byte[] frame)
        {
            var datagram = new byte[FabricHeader.Length + frame.Length];
            new FabricHeaderRepr(0, FabricPayloadType.Ethernet, vni, sequence++, 0, 0).Write(datagram);
            frame.CopyTo(datagram, FabricHeader.Length);
            hosts.Wire!.Inject(intruder, hosts.B.Switch.UnderlayEndpoints.IPv4!, datagram);
        }
        // As vm1 (host-a's), unicast and broadcast; as a MAC no one has; as its own VM but in vni 200, where it has none.
        Send(100, Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 100));
        Send(100, Frames.Udp(Mac1, MacAddress.Broadcast, "10.0.0.1", "255.255.255.255", 100, dontFragment: false));
        Send(100, Frames.Udp(new MacAddress(0x02_00_00_00_09_09), Mac3, "10.0.0.9", "10.0.0.3", 100));
        Send(200, Frames.Udp(macC, Mac3, "10.0.0.5", "10.0.0.3", 100));
        Eventually.True(() => hosts.B.Switch.UnderlayCounters.Drops(DropReason.SpoofedSource) == 4, TimeSpan.FromSeconds(5),
            "four frames from host-c spoken for VMs it does not have", () => $"spoofed {hosts.B.Switch.UnderlayCounters.Drops(DropReason.SpoofedSource)}");
        // Its own VM's frame in its own network is delivered: the check is where the sender is, not whether it is known.
        // Handled after the four (one receive thread, in order), it is the first frame vm3 sees: none of them reached it.
        var own = Frames.Udp(macC, Mac3, "10.0.0.5", "10.0.0.3", 100);
        Send(100, own);
        Assert.Equal(own, hosts.Expect("vm3"));
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
    }

    [Fact]
    public void DatagramsFromUnknownPeers_AreCountedAndIgnored()
    {
        using var hosts = new TwoHosts(inMemory: true);
        hosts.Wire!.Inject(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 39_998), hosts.B.Switch.UnderlayEndpoints.IPv4!, new byte[40]);
        Fabric.Testing.Eventually.True(() => hosts.B.Switch.UnderlayCounters.Drops(DropReason.UnknownPeer) == 1, TimeSpan.FromSeconds(5),
            "a stranger's datagram", () => $"drops {hosts.B.Switch.UnderlayCounters.Drops(DropReason.UnknownPeer)}");
        Assert.True(hosts.Silent("vm3", TimeSpan.Zero));
    }
}
