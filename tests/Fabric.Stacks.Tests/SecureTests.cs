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

    /// <summary>
    /// Runs both ends' due timers and carries what each sends to the other, until neither sends anything more (the
    /// hello exchange, then whatever waited for it); returns every datagram carried, in order.
    /// </summary>
    private static List<(string To, Datagram Datagram)> Exchange(SecureStack a, SecureStack b, long now = 0, Vm? atA = null, Vm? atB = null, Wire? toA = null, Wire? toB = null)
    {
        var carried = new List<(string, Datagram)>();
        toA ??= new Wire();
        toB ??= new Wire();
        if (a.NextTimerNanoseconds <= now)
        {
            a.OnTimer(now, atA ?? new Vm(), toB);
        }
        if (b.NextTimerNanoseconds <= now)
        {
            b.OnTimer(now, atB ?? new Vm(), toA);
        }
        for (var round = 0; toA.Sent.Count + toB.Sent.Count > 0; round++)
        {
            Assert.True(round < 10, "the two ends keep answering each other");
            var (forA, forB) = (toA.Sent.ToList(), toB.Sent.ToList());
            toA.Sent.Clear();
            toB.Sent.Clear();
            foreach (var d in forB)
            {
                carried.Add(("b", d));
                b.Receive(new StackDatagram(d.Header, d.Fields, d.Payload), now, atB ?? new Vm(), toA);
            }
            foreach (var d in forA)
            {
                carried.Add(("a", d));
                a.Receive(new StackDatagram(d.Header, d.Fields, d.Payload), now, atA ?? new Vm(), toB);
            }
        }
        return carried;
    }

    /// <summary>Two ends of one path with their session established.</summary>
    private static (SecureStack A, SecureStack B) Pair(Dictionary<string, string>? extra = null)
    {
        var (a, b) = (Stack("a", "b", Key, extra: extra), Stack("b", "a", Key, extra: extra));
        Exchange(a, b);
        Assert.True(a.Established && b.Established, "the hello exchange did not establish the session");
        Assert.Equal(a.Session, b.Session);
        return (a, b);
    }

    private static long Drops(SecureStack stack, StackDropReason reason) => stack.GetStats().Drops.GetValueOrDefault(reason);

    [Fact]
    public void Frames_AreSealed_AndOpenOnlyAtThePeer()
    {
        var (a, b) = Pair();
        using var _ = a;
        using var __ = b;
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
        var (a, b) = Pair();
        using var _ = a;
        using var __ = b;
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
        var (a, b) = Pair();
        using var _ = a;
        using var __ = b;
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
        var (a, b) = Pair(new() { ["rekeyPackets"] = "100" });
        using var _ = a;
        using var __ = b;
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
        var (a, b) = Pair(new() { ["rekeyPackets"] = "100" });
        using var _ = a;
        using var __ = b;
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

        // With another key the hellos do not verify: no session, so nothing is ever sealed, let alone sent in the clear.
        using var a = Stack("a", "b", Key);
        using var stranger = Stack("b", "a", new string('0', 64));
        var carried = Exchange(a, stranger);
        Assert.False(a.Established || stranger.Established);
        Assert.Equal(1, Drops(stranger, StackDropReason.AuthenticationFailed));
        Assert.Equal(1, Drops(a, StackDropReason.AuthenticationFailed));
        var before = new Wire();
        a.Transmit(Frame(1), 0, before);
        Assert.All(before.Sent.Concat(carried.Select(c => c.Datagram)), d => Assert.Equal(FabricPayloadType.StackControl, d.Header.PayloadType));
        Assert.Equal(1, a.Waiting);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WhileHostKeysRotate_TwoEndsGivenDifferentKeysOfThePair_MeetOnOne_AndAThirdKeyStillGetsNothing(bool firstHasTheNewKey)
    {
        // One end was given the pair's new key (the old one as its alternate), the other the old one (the new as its
        // alternate): "b", which sorts second, takes a's key, whichever it is; a never moves.
        var other = new string('5', 64);
        var (aKey, aAlternate) = firstHasTheNewKey ? (other, Key) : (Key, other);
        using var a = Stack("a", "b", aKey, extra: new() { ["alternateKeys"] = aAlternate });
        var events = new Events();
        using var b = Stack("b", "a", aAlternate, events, extra: new() { ["alternateKeys"] = $"{new string('7', 64)},{aKey}" });
        Exchange(a, b);
        Assert.True(a.Established && b.Established, "the two ends did not meet on one key");
        Assert.Equal(a.Session, b.Session);
        Assert.False(a.OnAlternateKey);
        Assert.True(b.OnAlternateKey);
        Assert.Contains(events.Seen, e => e.StartsWith("peer-key", StringComparison.Ordinal));
        var (wire, vm) = (new Wire(), new Vm());
        a.Transmit(Frame(7), 0, wire);
        Receive(b, Assert.Single(wire.Sent), vm);
        Assert.Equal(Frame(7), Assert.Single(vm.Frames));

        // Whoever holds neither key of the pair gets no session, alternate or not.
        using var stranger = Stack("c", "a", new string('0', 64), extra: new() { ["alternateKeys"] = new string('1', 64) });
        using var a2 = Stack("a", "c", aKey, extra: new() { ["alternateKeys"] = aAlternate });
        Exchange(a2, stranger);
        Assert.False(a2.Established || stranger.Established);
        Assert.False(stranger.OnAlternateKey);
    }

    [Fact]
    public void NoKeyAndNonce_EverRepeats_AcrossRestartsReopensSwapsAndRekeys()
    {
        // Every datagram sealed in a run where each end is replaced several ways, keys roll every 50 packets and both
        // directions carry traffic: (direction, session, epoch) names the key, (epoch, counter) the nonce.
        var sealedWith = new HashSet<string>(StringComparer.Ordinal);
        var sealedCount = 0;
        var delivered = 0;
        var extra = new Dictionary<string, string> { ["rekeyPackets"] = "50" };
        var a = Stack("a", "b", Key, extra: extra);
        var b = Stack("b", "a", Key, extra: extra);
        var now = 0L;
        void Traffic(int frames)
        {
            var (atA, atB) = (new Vm(), new Vm());
            Exchange(a, b, now, atA, atB);
            for (var i = 0; i < frames; i++)
            {
                now += 1_000_000;
                foreach (var (from, to, vm) in new[] { (a, b, atB), (b, a, atA) })
                {
                    var wire = new Wire();
                    from.Transmit(Frame(i), now, wire);
                    foreach (var d in wire.Sent.Where(d => d.Header.PayloadType == FabricPayloadType.StackEncoded))
                    {
                        sealedCount++;
                        Assert.True(sealedWith.Add($"{(from == a ? "a->b" : "b->a")} {from.Session} {Convert.ToHexString(d.Fields)}"), "a (key, nonce) pair was sealed twice");
                        to.Receive(new StackDatagram(d.Header, d.Fields, d.Payload), now, vm, new Wire());
                    }
                }
            }
            delivered += atA.Frames.Count + atB.Frames.Count;
        }
        // A packet a sealed in the current session, and proof that the next session's keys differ: it never opens there,
        // though the next session has sealed packets with the same epoch and counter fields.
        Datagram Sample()
        {
            var wire = new Wire();
            a.Transmit(Frame(999), now, wire);
            Assert.True(sealedWith.Add($"a->b {a.Session} {Convert.ToHexString(wire.Sent.Single().Fields)}"), "a (key, nonce) pair was sealed twice");
            Receive(b, wire.Sent.Single(), new Vm());
            return wire.Sent.Single();
        }
        void RefusedIn(Datagram old, SecureStack receiver)
        {
            var failed = Drops(receiver, StackDropReason.AuthenticationFailed);
            var vm = new Vm();
            Receive(receiver, old, vm);
            Assert.Empty(vm.Frames);
            Assert.Equal(failed + 1, Drops(receiver, StackDropReason.AuthenticationFailed));
        }
        Traffic(120);
        // The agent on b restarts; a keeps the path (its instance survives).
        var old = Sample();
        b.Dispose();
        b = Stack("b", "a", Key, extra: extra);
        Traffic(120);
        RefusedIn(old, b);
        // a re-opens the slot: a new instance where the old one stood.
        old = Sample();
        a.Dispose();
        a = Stack("a", "b", Key, extra: extra);
        Traffic(120);
        RefusedIn(old, b);
        // A swap: both ends get new instances.
        old = Sample();
        a.Dispose();
        b.Dispose();
        (a, b) = (Stack("a", "b", Key, extra: extra), Stack("b", "a", Key, extra: extra));
        Traffic(120);
        RefusedIn(old, b);
        a.Dispose();
        b.Dispose();
        Assert.Equal(4 * 120 * 2, sealedCount);
        Assert.Equal(sealedCount, delivered);
    }

    [Fact]
    public void ACapturedStream_ReplayedIntoANewSession_IsRefusedAndCounted_AndOldHellosCannotPullASessionBack()
    {
        using var a = Stack("a", "b", Key);
        var b = Stack("b", "a", Key);
        var firstPairing = Exchange(a, b);
        var wire = new Wire();
        for (var i = 0; i < 100; i++)
        {
            a.Transmit(Frame(i), i, wire);
        }
        var vm = new Vm();
        foreach (var d in wire.Sent)
        {
            Receive(b, d, vm);
        }
        Assert.Equal(100, vm.Frames.Count);
        b.Dispose();

        // b restarted and paired with a again: the captured stream, replayed into the new session, opens nothing.
        using var b2 = Stack("b", "a", Key);
        Exchange(a, b2);
        Assert.True(a.Established && b2.Established);
        vm.Frames.Clear();
        foreach (var d in wire.Sent)
        {
            Receive(b2, d, vm);
        }
        Assert.Empty(vm.Frames);
        Assert.Equal(100, Drops(b2, StackDropReason.AuthenticationFailed));
        // Nor into an instance that has no session yet.
        using var fresh = Stack("b", "a", Key);
        foreach (var d in wire.Sent)
        {
            Receive(fresh, d, vm);
        }
        Assert.Empty(vm.Frames);
        Assert.Equal(100, Drops(fresh, StackDropReason.AuthenticationFailed));

        // The old b's hellos replayed at a: a session a has left is never taken again (counted as replays), so a keeps
        // sealing for b2 under the new session's keys.
        var session = a.Session;
        var oldHellos = firstPairing.Where(c => c.To == "a").Select(c => c.Datagram).ToList();
        Assert.NotEmpty(oldHellos);
        var answers = new Wire();
        foreach (var hello in oldHellos)
        {
            a.Receive(new StackDatagram(hello.Header, hello.Fields, hello.Payload), 0, new Vm(), answers);
        }
        Assert.Equal(oldHellos.Count, Drops(a, StackDropReason.Duplicate));
        Assert.Empty(answers.Sent);
        Assert.Equal(session, a.Session);
        var after = new Wire();
        a.Transmit(Frame(7), 0, after);
        Receive(b2, Assert.Single(after.Sent), vm);
        Assert.Equal(Frame(7), Assert.Single(vm.Frames));
    }

    [Fact]
    public void ARestartedPeer_GetsTrafficAgain_OnceItEchoesOurNonce_WhileAnOldHelloReplayedChangesNothing()
    {
        var events = new Events();
        using var a = Stack("a", "b", Key, events);
        var b = Stack("b", "a", Key);
        var first = Exchange(a, b);
        var session = a.Session;
        b.Dispose();
        using var b2 = Stack("b", "a", Key);
        var vm = new Vm();
        // a does not know yet: what it seals for the old b is refused at b2, counted.
        var wire = new Wire();
        a.Transmit(Frame(0), 0, wire);
        Receive(b2, Assert.Single(wire.Sent), vm);
        Assert.Equal(1, Drops(b2, StackDropReason.AuthenticationFailed));
        // b2's first hello reaches a. It does not echo a's nonce (b2 has not heard it), so a keeps its session and only
        // answers; b2 echoes a's nonce in its reply, and only then does a move to the new session.
        var toA = new Wire();
        b2.OnTimer(0, vm, toA);
        var toB = new Wire();
        a.Receive(new StackDatagram(toA.Sent[0].Header, toA.Sent[0].Fields, toA.Sent[0].Payload), 1_000_000, new Vm(), toB);
        Assert.Equal(session, a.Session);
        Assert.DoesNotContain(events.Seen, e => e.StartsWith("new-session", StringComparison.Ordinal));
        Exchange(a, b2, 2_000_000, atB: vm, toB: toB);
        Assert.True(a.Established && b2.Established);
        Assert.NotEqual(session, a.Session);
        Assert.Contains(events.Seen, e => e.StartsWith("new-session", StringComparison.Ordinal));
        var after = new Wire();
        for (var i = 1; i <= 10; i++)
        {
            a.Transmit(Frame(i), 3_000_000 + i, after);
        }
        foreach (var d in after.Sent)
        {
            Receive(b2, d, vm);
        }
        Assert.Equal(Enumerable.Range(1, 10).Select(Frame), vm.Frames);
        // The old b's hellos, replayed now, are refused: a never goes back to a session it left.
        foreach (var (_, hello) in first.Where(c => c.To == "a"))
        {
            a.Receive(new StackDatagram(hello.Header, hello.Fields, hello.Payload), 4_000_000, new Vm(), new Wire());
        }
        Assert.True(a.Established);
        Assert.Equal(b2.Session, a.Session);
    }

    [Fact]
    public void ForgedTamperedAndReflectedHellos_AreCounted_AndChangeNoSession()
    {
        var (a, b) = Pair();
        using var _ = a;
        using var __ = b;
        var session = a.Session;
        using var probe = Stack("b", "a", Key);
        var wire = new Wire();
        probe.OnTimer(0, new Vm(), wire);
        var hello = wire.Sent.Single();
        var forgeries = new List<Datagram>();
        for (var i = 0; i < hello.Payload.Length; i++)
        {
            var payload = hello.Payload.ToArray();
            payload[i] ^= 0x04;
            forgeries.Add(hello with { Payload = payload });
        }
        var random = new Random(9);
        for (var i = 0; i < 200; i++)
        {
            var payload = new byte[SecureStack.HelloLength];
            random.NextBytes(payload);
            payload[0] = 1;
            forgeries.Add(hello with { Payload = payload });
        }
        // a's own hello reflected back at it: the direction is in the MAC.
        var own = new Wire();
        using (var twin = Stack("a", "b", Key))
        {
            twin.OnTimer(0, new Vm(), own);
        }
        forgeries.Add(own.Sent.Single());
        // Under another path key.
        using (var stranger = Stack("b", "a", new string('1', 64)))
        {
            var other = new Wire();
            stranger.OnTimer(0, new Vm(), other);
            forgeries.Add(other.Sent.Single());
        }
        var answers = new Wire();
        foreach (var forged in forgeries)
        {
            a.Receive(new StackDatagram(forged.Header, forged.Fields, forged.Payload), 0, new Vm(), answers);
        }
        // Flipping the kind byte makes it malformed; everything else fails authentication.
        Assert.Equal(1, Drops(a, StackDropReason.Malformed));
        Assert.Equal(forgeries.Count - 1, Drops(a, StackDropReason.AuthenticationFailed));
        Assert.Empty(answers.Sent);
        Assert.Equal(session, a.Session);
        Assert.True(a.Established);
        // A genuine hello, but of an instance that never heard a's nonce (as a replay of any other b would be): a only
        // answers it, at most once per 10 ms, and keeps sealing for b under the live session.
        for (var i = 0; i < 100; i++)
        {
            a.Receive(new StackDatagram(hello.Header, hello.Fields, hello.Payload), i * 100_000L, new Vm(), answers);
        }
        Assert.Single(answers.Sent);
        Assert.Equal(session, a.Session);
        var sealedNow = new Wire();
        a.Transmit(Frame(3), 10_000_000, sealedNow);
        var delivered = new Vm();
        Receive(b, Assert.Single(sealedNow.Sent), delivered);
        Assert.Equal(Frame(3), Assert.Single(delivered.Frames));
        a.Receive(new StackDatagram(hello.Header, new byte[3], hello.Payload), 0, new Vm(), answers);
        a.Receive(new StackDatagram(hello.Header, [], hello.Payload.AsSpan(0, hello.Payload.Length - 1)), 0, new Vm(), answers);
        Assert.Equal(3, Drops(a, StackDropReason.Malformed));
    }

    [Fact]
    public void BeforeTheSession_FramesWaitInABoundedQueue_AndLeaveInOrderOnceItIsEstablished()
    {
        using var a = Stack("a", "b", Key);
        using var b = Stack("b", "a", Key);
        var early = new Wire();
        for (var i = 0; i < SecureStack.QueueFrames + 44; i++)
        {
            early.VirtualNetwork = (uint)(100 + (i % 3));
            a.Transmit(Frame(i), 0, early);
        }
        // Only the first hello left; nothing sealed, nothing in the clear.
        Assert.Equal(FabricPayloadType.StackControl, Assert.Single(early.Sent).Header.PayloadType);
        Assert.Equal(SecureStack.QueueFrames, a.Waiting);
        Assert.Equal(44, Drops(a, StackDropReason.BufferFull));
        var vm = new Vm();
        var carried = Exchange(a, b, 0, atB: vm);
        Assert.Equal(0, a.Waiting);
        Assert.Equal(Enumerable.Range(0, SecureStack.QueueFrames).Select(Frame), vm.Frames);
        // Each held frame kept the virtual network it was sent in (it is authenticated with it).
        Assert.Equal(Enumerable.Range(0, SecureStack.QueueFrames).Select(i => (uint)(100 + (i % 3))),
            carried.Where(c => c.Datagram.Header.PayloadType == FabricPayloadType.StackEncoded).Select(c => c.Datagram.Header.VirtualNetworkId));
    }
}