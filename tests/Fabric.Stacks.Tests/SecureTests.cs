using Fabric.Stacks.Secure;
using Fabric.Wire;

namespace Fabric.Stacks.Tests;

public class SecureTests
{
    private static readonly string Key = Convert.ToHexString(Enumerable.Range(0, 32).Select(i => (byte)(i * 7)).ToArray());

    private sealed record Datagram(FabricHeaderRepr Header, byte[] Fields, byte[] Payload);

    private sealed class Wire : IUnderlayOutput
    {
        private readonly byte[] _buffer = new byte[65536];

        public List<Datagram> Sent { get; } = [];

        public uint VirtualNetwork { get; set; } = 100;

        public Span<byte> Begin(int maxLength) => _buffer.AsSpan(0, maxLength);

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length) =>
            Sent.Add(new Datagram(new FabricHeaderRepr(0, payloadType, VirtualNetwork, (uint)Sent.Count, 0, (byte)stackFieldLength), _buffer[..stackFieldLength], _buffer[stackFieldLength..length]));
    }

    private sealed class Vm : IVmOutput
    {
        public List<byte[]> Frames { get; } = [];

        public uint VirtualNetwork { get; set; }

        public void Deliver(ReadOnlySpan<byte> frame) => Frames.Add(frame.ToArray());
    }

    private sealed class Events : IStackTelemetry
    {
        public List<string> Seen { get; } = [];

        public void Event(string name, string detail) => Seen.Add($"{name}: {detail}");
    }

    private static SecureStack Stack(string local, string remote, string? key = null, Events? events = null, Dictionary<string, string>? extra = null)
    {
        var configuration = new Dictionary<string, string>(extra ?? []);
        if (key is not null)
        {
            configuration["key"] = key;
        }
        return new SecureStack(new StackContext(local, remote, configuration, events ?? new Events()));
    }

    private static byte[] Frame(int i)
    {
        var frame = new byte[100];
        EthernetWriter.Write(frame, new MacAddress(0x02_00_00_00_00_02), new MacAddress(0x02_00_00_00_00_01), EtherTypes.IPv4);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(14), i);
        return frame;
    }

    private static void Receive(SecureStack stack, Datagram d, Vm vm) => stack.Receive(new StackDatagram(d.Header, d.Fields, d.Payload), 0, vm, new Wire());

    private static long Drops(SecureStack stack, StackDropReason reason) => stack.GetStats().Drops.GetValueOrDefault(reason);

    [Fact]
    public void Frames_AreSealed_AndOpenOnlyAtThePeer()
    {
        using var a = Stack("a", "b", Key);
        using var b = Stack("b", "a", Key);
        var wire = new Wire();
        a.Transmit(Frame(1), 0, wire);
        var sent = Assert.Single(wire.Sent);
        Assert.Equal(FabricPayloadType.StackEncoded, sent.Header.PayloadType);
        // The frame is not readable on the wire.
        Assert.DoesNotContain(Convert.ToHexString(Frame(1)[14..30]), Convert.ToHexString(sent.Payload), StringComparison.Ordinal);
        var vm = new Vm();
        Receive(b, sent, vm);
        Assert.Equal(Frame(1), Assert.Single(vm.Frames));
        // Reflected back at its sender, it does not open: each direction has its own key.
        Receive(a, sent, new Vm());
        Assert.Equal(1, Drops(a, StackDropReason.AuthenticationFailed));
    }

    [Fact]
    public void TamperedPackets_AreDroppedAndCounted_WhereverTheByteIs()
    {
        using var a = Stack("a", "b", Key);
        using var b = Stack("b", "a", Key);
        var wire = new Wire();
        a.Transmit(Frame(1), 0, wire);
        var d = wire.Sent[0];
        var vm = new Vm();
        var forgeries = new List<Datagram>();
        for (var i = 0; i < d.Payload.Length; i += 7)
        {
            var payload = d.Payload.ToArray();
            payload[i] ^= 0x01;
            forgeries.Add(d with { Payload = payload });
        }
        var fields = d.Fields.ToArray();
        fields[2] ^= 0x80; // the epoch: another key
        forgeries.Add(d with { Fields = fields });
        // Moved to another tenant's network: the virtual network id is authenticated.
        forgeries.Add(d with { Header = d.Header with { VirtualNetworkId = 200 } });
        foreach (var forged in forgeries)
        {
            Receive(b, forged, vm);
        }
        Assert.Empty(vm.Frames);
        Assert.Equal(forgeries.Count, Drops(b, StackDropReason.AuthenticationFailed));
        // The genuine packet still opens afterwards: forgeries did not move the replay window.
        Receive(b, d, vm);
        Assert.Single(vm.Frames);
    }

    [Fact]
    public void Replays_AndPacketsOlderThanTheWindow_AreDroppedAndCounted_ReorderingWithinItIsNot()
    {
        using var a = Stack("a", "b", Key);
        using var b = Stack("b", "a", Key);
        var wire = new Wire();
        for (var i = 0; i < 3000; i++)
        {
            a.Transmit(Frame(i), 0, wire);
        }
        var vm = new Vm();
        // Delivered newest-first within a window's span: all accepted (the window is 1024, far more than 64).
        foreach (var d in wire.Sent.Take(1000).Reverse())
        {
            Receive(b, d, vm);
        }
        Assert.Equal(1000, vm.Frames.Count);
        foreach (var d in wire.Sent.Skip(1000).Take(1000))
        {
            Receive(b, d, vm);
        }
        // Replays of recent packets, then packets from before the window.
        Receive(b, wire.Sent[1999], vm);
        Receive(b, wire.Sent[1500], vm);
        Receive(b, wire.Sent[10], vm);
        Receive(b, wire.Sent[975], vm);
        Assert.Equal(2000, vm.Frames.Count);
        Assert.Equal(2, Drops(b, StackDropReason.Duplicate));
        Assert.Equal(2, Drops(b, StackDropReason.OutOfWindow));
        // A packet never seen but older than the window is refused too: it cannot be told from a replay.
        Receive(b, wire.Sent[2999], vm);
        Receive(b, wire.Sent[1900], vm);
        Assert.Equal(3, Drops(b, StackDropReason.OutOfWindow));
    }

    [Fact]
    public void ForgedEpochs_NeverGrowTheKeyCache_BeforeOrAfterTheFirstGenuinePacket()
    {
        using var a = Stack("a", "b", Key, extra: new() { ["rekeyPackets"] = "100" });
        using var b = Stack("b", "a", Key);
        var wire = new Wire();
        for (var i = 0; i < 300; i++)
        {
            a.Transmit(Frame(i), i * 1000L, wire);
        }
        var random = new Random(5);
        void Forge(int count)
        {
            // An attacker on the underlay: random epochs and counters, a payload of the right length, no key.
            for (var i = 0; i < count; i++)
            {
                var fields = new byte[wire.Sent[0].Fields.Length];
                random.NextBytes(fields);
                var payload = new byte[wire.Sent[0].Payload.Length];
                random.NextBytes(payload);
                Receive(b, wire.Sent[0] with { Fields = fields, Payload = payload }, new Vm());
            }
        }
        Forge(5000);
        Assert.Equal(0, b.CachedKeys);
        var vm = new Vm();
        foreach (var d in wire.Sent)
        {
            Receive(b, d, vm);
            Forge(5);
        }
        Assert.Equal(300, vm.Frames.Count);
        Assert.InRange(b.CachedKeys, 1, 3);
        Assert.Equal(5000 + (300 * 5), Drops(b, StackDropReason.AuthenticationFailed) + Drops(b, StackDropReason.OutOfWindow) + Drops(b, StackDropReason.Duplicate));
    }

    [Fact]
    public void Rekeying_LosesNothing_EvenWithPacketsOfTheOldKeyStillInFlight()
    {
        using var a = Stack("a", "b", Key, extra: new() { ["rekeyPackets"] = "100" });
        using var b = Stack("b", "a", Key);
        var wire = new Wire();
        for (var i = 0; i < 1000; i++)
        {
            a.Transmit(Frame(i), i * 1000L, wire);
        }
        Assert.Equal(9u, a.Epoch);
        // Each pair of neighbours swapped: around every epoch change an old-key packet arrives after a new-key one.
        var order = Enumerable.Range(0, 1000).Select(i => i % 2 == 0 ? Math.Min(i + 1, 999) : i - 1).ToList();
        var vm = new Vm();
        foreach (var i in order)
        {
            Receive(b, wire.Sent[i], vm);
        }
        Assert.Equal(1000, vm.Frames.Count);
        Assert.Empty(b.GetStats().Drops);
        // Epochs are sealed with different keys: the same counter under another epoch does not open.
        Assert.NotEqual(wire.Sent[99].Fields[..4], wire.Sent[100].Fields[..4]);
    }

    [Fact]
    public void WithoutAKeyOrWithAnotherKey_NothingIsDelivered_AndTheCauseIsCounted()
    {
        var events = new Events();
        using var keyless = Stack("a", "b", null, events);
        var wire = new Wire();
        keyless.Transmit(Frame(1), 0, wire);
        Assert.Empty(wire.Sent);
        Assert.Equal(1, Drops(keyless, StackDropReason.NotConfigured));
        Assert.Contains(events.Seen, e => e.Contains("no 'key'", StringComparison.Ordinal));
        using var bad = Stack("a", "b", "xyz", events);
        Assert.Contains(events.Seen, e => e.Contains("64 hex digits", StringComparison.Ordinal));

        using var a = Stack("a", "b", Key);
        using var stranger = Stack("b", "a", new string('0', 64));
        a.Transmit(Frame(1), 0, wire);
        var vm = new Vm();
        Receive(stranger, wire.Sent[0], vm);
        Assert.Empty(vm.Frames);
        Assert.Equal(1, Drops(stranger, StackDropReason.AuthenticationFailed));
    }
}
