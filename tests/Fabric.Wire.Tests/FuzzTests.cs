using Fabric.Wire;

namespace Fabric.Wire.Tests;

/// <summary>Random and mutated frames: no view and no decode may throw, whatever the bytes.</summary>
public class FuzzTests
{
    private const int Iterations = 120_000;

    [Fact]
    public void RandomAndMutatedFrames_NeverThrow()
    {
        var seeds = Captures.All().SelectMany(p =>
        {
            using var reader = CaptureReader.Open(p);
            return reader.ReadAll().Take(20).Select(r => (r.LinkType, Data: r.Data.ToArray())).ToList();
        }).ToList();
        Assert.NotEmpty(seeds);
        var random = new Random(20261126);
        LinkType[] linkTypes = [LinkType.Ethernet, LinkType.Raw, LinkType.LinuxSll, LinkType.LinuxSll2, LinkType.IPv4, LinkType.IPv6, LinkType.Null];
        var refused = 0;
        for (var i = 0; i < Iterations; i++)
        {
            byte[] frame;
            LinkType linkType;
            if (i % 4 == 0)
            {
                frame = new byte[random.Next(0, 200)];
                random.NextBytes(frame);
                linkType = linkTypes[random.Next(linkTypes.Length)];
            }
            else
            {
                var (seedType, seed) = seeds[random.Next(seeds.Count)];
                frame = Mutate(seed, random);
                linkType = seedType;
            }
            var decoded = FrameDecoder.Decode(linkType, frame);
            refused += decoded.IsValid ? 0 : 1;
            ExerciseViews(frame);
        }
        // Mutations must reach the refusal paths, or the run proves little.
        Assert.InRange(refused, Iterations / 10, Iterations);
    }

    private static byte[] Mutate(byte[] seed, Random random)
    {
        var frame = (byte[])seed.Clone();
        switch (random.Next(4))
        {
            case 0:
                for (var flips = random.Next(1, 6); flips > 0 && frame.Length > 0; flips--)
                {
                    frame[random.Next(frame.Length)] ^= (byte)(1 << random.Next(8));
                }
                return frame;
            case 1:
                return frame[..random.Next(0, frame.Length + 1)];
            case 2:
                if (frame.Length > 0)
                {
                    frame[random.Next(frame.Length)] = (byte)random.Next(256);
                    frame[random.Next(frame.Length)] = random.Next(2) == 0 ? (byte)0 : (byte)0xFF;
                }
                return frame;
            default:
                var extra = new byte[random.Next(1, 64)];
                random.NextBytes(extra);
                return [.. frame, .. extra];
        }
    }

    private static void ExerciseViews(ReadOnlySpan<byte> bytes)
    {
        if (EthernetFrame.TryCreate(bytes, out var eth))
        {
            _ = eth.Payload.Length + eth.EtherType;
        }
        if (IPv4Packet.TryCreate(bytes, out var v4))
        {
            _ = v4.VerifyChecksum();
            _ = v4.Options.Length + v4.FragmentOffset;
        }
        if (IPv6Packet.TryCreate(bytes, out var v6))
        {
            _ = v6.UpperLayerPayload.Length + v6.FragmentOffset + (int)v6.FragmentIdentification;
        }
        if (TcpSegment.TryCreate(bytes, out var tcp))
        {
            foreach (var option in tcp.Options)
            {
                _ = option.Data.Length;
            }
            _ = tcp.MaximumSegmentSize;
        }
        if (IcmpV6Message.TryCreate(bytes, out var icmp6))
        {
            foreach (var option in icmp6.Options)
            {
                _ = option.TryGetLinkLayerAddress(out _);
            }
            _ = icmp6.TargetAddress;
            _ = icmp6.PacketTooBigMtu + icmp6.ReachableTime + icmp6.EchoSequence;
        }
        if (FabricHeader.TryCreate(bytes, out var fabric))
        {
            _ = fabric.Payload.Length + fabric.StackFields.Length;
        }
        if (UdpDatagram.TryCreate(bytes, out var udp))
        {
            _ = udp.Payload.Length;
        }
        if (ArpPacket.TryCreate(bytes, out var arp))
        {
            _ = arp.ToRepr();
        }
        if (IcmpV4Message.TryCreate(bytes, out var icmp))
        {
            _ = icmp.VerifyChecksum();
        }
    }
}
