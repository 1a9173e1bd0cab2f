using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Fabric.Agent.Switching;
using Fabric.Testing;
using Fabric.Wire;
using static Fabric.Agent.Tests.TwoHosts;

namespace Fabric.Agent.Tests;

/// <summary>
/// An attacker on the underlay sends as host A's own address and port (a raw socket writes the UDP header, so host B's
/// agent cannot tell it from A): with the host pair's overlay key nothing it forges opens, closes or measures anything;
/// without one, the same forged close tears the slot down (the attack is real).
/// </summary>
public class OverlayAuthenticationTests
{
    /// <summary>Sends <paramref name="datagram"/> to <paramref name="to"/> with <paramref name="fromPort"/> as its UDP source port, from 127.0.0.1.</summary>
    private static void SendAs(int fromPort, IPEndPoint to, byte[] datagram)
    {
        using var raw = new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Udp);
        var udp = new byte[8 + datagram.Length];
        BinaryPrimitives.WriteUInt16BigEndian(udp, (ushort)fromPort);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), (ushort)to.Port);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)udp.Length);
        // Checksum 0: none (IPv4).
        datagram.CopyTo(udp, 8);
        raw.SendTo(udp, new IPEndPoint(to.Address, 0));
    }

    private static byte[] Datagram(FabricPayloadType type, byte[] payload, uint sequence = 1_000_000)
    {
        var datagram = new byte[FabricHeader.Length + payload.Length];
        new FabricHeaderRepr(0, type, 0, sequence, 0, 0).Write(datagram);
        payload.CopyTo(datagram, FabricHeader.Length);
        return datagram;
    }

    private static async Task<(TwoHosts Hosts, int Slot)> BoundToSecure(bool authenticated)
    {
        var hosts = new TwoHosts(settings: SecureKeys, authenticated: authenticated);
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "secure", TestContext.Current.CancellationToken));
        var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot;
        hosts.Vm("vm1").Transmit(Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300));
        hosts.Expect("vm3");
        return (hosts, slot);
    }

    [Fact]
    public async Task ForgedCloseOpenProbeRepliesAndTrains_FromThePeersOwnAddress_ChangeNothing_AndAreCounted()
    {
        Assert.SkipUnless(Privileged.IsRoot, "forging a peer's source port needs a raw socket (root)");
        var (hosts, slot) = await BoundToSecure(authenticated: true);
        using var _ = hosts;
        var portA = hosts.A.Switch.UnderlayEndpoints.IPv4!.Port;
        var atB = hosts.B.Switch.UnderlayEndpoints.IPv4!;
        var pathAtB = hosts.B.Switch.Paths["host-a"];
        var random = new Random(3);
        var garbageTag = new byte[32];
        random.NextBytes(garbageTag);
        byte[][] forgeries =
        [
            // As an agent without a key would send them ...
            Datagram(FabricPayloadType.AgentControl, [4, (byte)slot]),
            Datagram(FabricPayloadType.AgentControl, [1, (byte)slot, .. "swap-test 00000000000000ff"u8]),
            // ... and with a made-up boot id, counter and tag.
            Datagram(FabricPayloadType.AgentControl, [4, (byte)slot, .. garbageTag]),
            // A probe reply claiming a probe sent long ago (a huge RTT), and a probe.
            Datagram(FabricPayloadType.ProbeReply, new byte[32 + OverlayAuthenticator.TagLength]),
            Datagram(FabricPayloadType.Probe, new byte[16 + OverlayAuthenticator.TagLength]),
            // A capacity train's member (forged members would make the path look faster or slower than it is), and a
            // reply carrying a train's rate.
            Datagram(FabricPayloadType.ProbeTrain, [.. new byte[8], 0, 1, 0, 8, .. new byte[1188 + OverlayAuthenticator.TagLength]]),
            Datagram(FabricPayloadType.ProbeReply, new byte[48 + OverlayAuthenticator.TagLength]),
        ];
        foreach (var forged in forgeries)
        {
            SendAs(portA, atB, forged);
        }
        Eventually.True(() => pathAtB.Counters.Drops(DropReason.Unauthenticated) == forgeries.Length, TimeSpan.FromSeconds(5),
            "every forgery refused", () => $"unauthenticated {pathAtB.Counters.Drops(DropReason.Unauthenticated)}");
        // The slot is still secure at B and vm1's traffic still flows through it.
        Assert.Equal("secure", pathAtB.StackStats()[slot].Stack);
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 400);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        Assert.True(pathAtB.Authenticated);
    }

    [Fact]
    public async Task WithoutAnOverlayKey_TheSameForgedClose_TearsTheSlotDown_AndTheAgentSaysSo()
    {
        Assert.SkipUnless(Privileged.IsRoot, "forging a peer's source port needs a raw socket (root)");
        var (hosts, slot) = await BoundToSecure(authenticated: false);
        using var _ = hosts;
        Assert.Contains(hosts.B.Switch.Events, e => e.Contains("the path to host-a has no overlay key", StringComparison.Ordinal));
        SendAs(hosts.A.Switch.UnderlayEndpoints.IPv4!.Port, hosts.B.Switch.UnderlayEndpoints.IPv4!, Datagram(FabricPayloadType.AgentControl, [4, (byte)slot]));
        Eventually.True(() => !hosts.B.Switch.Paths["host-a"].StackStats().ContainsKey(slot), TimeSpan.FromSeconds(5),
            "the forged close took effect", () => string.Join(",", hosts.B.Switch.Paths["host-a"].StackStats().Keys));
    }

    [Fact]
    public async Task WithoutAnOverlayKey_AForgedRefusal_OfASlotInUse_MovesNoTraffic()
    {
        Assert.SkipUnless(Privileged.IsRoot, "forging a peer's source port needs a raw socket (root)");
        using var hosts = new TwoHosts(authenticated: false);
        Assert.Null(await hosts.A.Switch.BindVmAsync("vm1", "host-b", "swap-test", TestContext.Current.CancellationToken));
        var slot = hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot;
        // "Refused" for the slot vm1 sends on, as host-b would say it after losing the slot: taken only from a peer whose
        // refusals are authenticated, else anyone could move a VM's traffic off its stack.
        SendAs(hosts.B.Switch.UnderlayEndpoints.IPv4!.Port, hosts.A.Switch.UnderlayEndpoints.IPv4!,
            Datagram(FabricPayloadType.AgentControl, [3, (byte)slot, .. "no such stack"u8]));
        var frame = Frames.Udp(Mac1, Mac3, "10.0.0.1", "10.0.0.3", 300);
        hosts.Vm("vm1").Transmit(frame);
        Assert.Equal(frame, hosts.Expect("vm3"));
        Assert.Equal((slot, "swap-test"), (hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Slot, hosts.A.Switch.Paths["host-b"].VmBindings()["vm1"].Stack));
        Assert.DoesNotContain(hosts.A.Switch.Events, e => e.Contains("refused slot", StringComparison.Ordinal));
    }

    /// <summary>The pair's keys as both hosts derive them (each key's bytes from the two host keys it combines).</summary>
    private static PathKeyRing Ring(params (string Mine, bool MineCurrent, string Theirs, bool TheirsNewest)[] entries) =>
        new([.. entries.Select(e => new PathKeyEntry(new PathKeys(PairKey(e.Mine, e.Theirs), PairKey(e.Mine, e.Theirs).Reverse().ToArray()), e.MineCurrent, e.TheirsNewest))]);

    private static void SecureKeysAre(OverlayAuthenticator at, string key, params string[] alternates)
    {
        var keys = at.SecureKeys()!.Value;
        Assert.Equal(key, keys.Key);
        Assert.Equal(alternates, keys.Alternates);
    }

    private static string Secure(string x, string y) => Convert.ToHexString(PairKey(x, y).Reverse().ToArray());

    private static byte[] PairKey(string x, string y) =>
        System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(string.CompareOrdinal(x, y) < 0 ? x + y : y + x));

    private static bool Carried(OverlayAuthenticator from, OverlayAuthenticator to)
    {
        var datagram = new byte[40 + OverlayAuthenticator.TagLength];
        Random.Shared.NextBytes(datagram.AsSpan(0, 40));
        from.Seal(datagram, 40);
        return to.Verify(datagram);
    }

    [Fact]
    public void WhileAHostKeyRotates_EveryDatagramVerifies_BothEndsEndOnTheNewKey_AndTheRetiredKeyNoLongerVerifies()
    {
        using var a = new OverlayAuthenticator(PairKey("a0", "b0"), "host-a", "host-b");
        using var b = new OverlayAuthenticator(PairKey("a0", "b0"), "host-b", "host-a");
        using var old = new OverlayAuthenticator(PairKey("a0", "b0"), "host-a", "host-b");

        // host-a rotates: it holds a1 and a0; host-b has not heard of a1 yet, and still verifies what host-a sends.
        a.Rekey(Ring(("a1", true, "b0", true), ("a0", false, "b0", true)), mineRotated: true);
        Assert.False(a.SealsWithCurrentKey);
        Assert.True(Carried(a, b) && Carried(b, a) && Carried(a, b));
        // Secure instances made now take the key this end seals under, with every other key of the ring as alternates.
        SecureKeysAre(a, Secure("a0", "b0"), Secure("a1", "b0"));

        // host-b learns a1 from the control plane and seals under it at once; host-a verifies it and moves to it.
        b.Rekey(Ring(("b0", true, "a1", true), ("b0", true, "a0", false)), mineRotated: false);
        SecureKeysAre(b, Secure("a1", "b0"), Secure("a0", "b0"));
        Assert.True(Carried(a, b));
        Assert.True(Carried(b, a));
        Assert.True(a.SealsWithCurrentKey);
        Assert.True(Carried(a, b) && Carried(b, a));
        Assert.Equal(Secure("a1", "b0"), a.SecureKeys()!.Value.Key);
        Assert.Equal(Secure("a1", "b0"), b.SecureKeys()!.Value.Key);

        // The overlap ends: only the new key is held; what the old key seals verifies nowhere.
        a.Rekey(Ring(("a1", true, "b0", true)), mineRotated: false);
        b.Rekey(Ring(("b0", true, "a1", true)), mineRotated: false);
        Assert.True(Carried(a, b) && Carried(b, a));
        Assert.False(Carried(old, b));
        Assert.Equal(1, a.KeyCount);
    }

    [Fact]
    public void WhenBothHostsRotateAtOnce_NothingFailsToVerify_AndBothEndOnTheirNewKeys()
    {
        using var a = new OverlayAuthenticator(PairKey("a0", "b0"), "host-a", "host-b");
        using var b = new OverlayAuthenticator(PairKey("a0", "b0"), "host-b", "host-a");
        a.Rekey(Ring(("a1", true, "b0", true), ("a0", false, "b0", true)), mineRotated: true);
        b.Rekey(Ring(("b1", true, "a0", true), ("b0", false, "a0", true)), mineRotated: true);
        Assert.True(Carried(a, b) && Carried(b, a));
        // Each learns the other's new key (in either order).
        a.Rekey(Ring(("a1", true, "b1", true), ("a1", true, "b0", false), ("a0", false, "b1", true), ("a0", false, "b0", false)), mineRotated: false);
        Assert.True(Carried(a, b) && Carried(b, a));
        b.Rekey(Ring(("b1", true, "a1", true), ("b1", true, "a0", false), ("b0", false, "a1", true), ("b0", false, "a0", false)), mineRotated: false);
        for (var i = 0; i < 3; i++)
        {
            Assert.True(Carried(a, b) && Carried(b, a));
        }
        Assert.True(a.SealsWithCurrentKey && b.SealsWithCurrentKey);
        using var onlyNew = new OverlayAuthenticator(PairKey("a1", "b1"), "host-b", "host-a");
        Assert.True(Carried(a, onlyNew));
    }

    [Fact]
    public void ControlMessages_OpenOnlyUnderThePeersKey_AndNeitherAReplayNorAStaleMessageNorAnOlderBootIsTaken()
    {
        var key = Convert.FromHexString(TwoHosts.OverlayKey);
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.Parse("2026-12-01T12:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        using var a = new OverlayAuthenticator(key, "host-a", "host-b", time);
        using var b = new OverlayAuthenticator(key, "host-b", "host-a", time);
        static byte[] Message(OverlayAuthenticator from, byte op)
        {
            var datagram = new byte[FabricHeader.Length + 2 + OverlayAuthenticator.FreshnessLength + OverlayAuthenticator.TagLength];
            new FabricHeaderRepr(0, FabricPayloadType.AgentControl, 0, 7, 0, 0).Write(datagram);
            datagram[FabricHeader.Length] = op;
            from.WriteFreshness(datagram.AsSpan(FabricHeader.Length + 2));
            from.Seal(datagram, datagram.Length - OverlayAuthenticator.TagLength);
            return datagram;
        }
        static bool Accepted(OverlayAuthenticator at, byte[] datagram) => at.Verify(datagram)
            && at.TakeFreshness(datagram.AsSpan(datagram.Length - OverlayAuthenticator.TagLength - OverlayAuthenticator.FreshnessLength, OverlayAuthenticator.FreshnessLength));

        var first = Message(a, 1);
        var second = Message(a, 4);
        Assert.True(Accepted(b, first));
        Assert.True(Accepted(b, second));
        // Replayed, or reordered behind a newer one: refused.
        Assert.False(Accepted(b, first));
        Assert.False(Accepted(b, second));
        // Reflected at its sender: the direction is in the key.
        Assert.False(a.Verify(Message(a, 1)));
        // Any flipped bit, header included.
        var fresh = Message(a, 1);
        for (var i = 0; i < fresh.Length; i++)
        {
            var tampered = fresh.ToArray();
            tampered[i] ^= 0x20;
            Assert.False(b.Verify(tampered), $"byte {i} flipped still verified");
        }
        // Older than a minute: refused even by a receiver that never heard the boot (one that just restarted).
        var captured = Message(a, 4);
        time.Advance(TimeSpan.FromSeconds(61));
        using (var restartedReceiver = new OverlayAuthenticator(key, "host-b", "host-a", time))
        {
            Assert.False(Accepted(restartedReceiver, captured));
        }
        // Host A restarts: its new boot is taken, and the old boot's messages are refused, fresh or not ...
        using var restarted = new OverlayAuthenticator(key, "host-a", "host-b", time);
        Assert.True(Accepted(b, Message(restarted, 1)));
        Assert.False(Accepted(b, Message(a, 4)));
        // ... also by a receiver that heard the new boot only after an old-boot message (it cannot displace the live one).
        using var receiver = new OverlayAuthenticator(key, "host-b", "host-a", time);
        Assert.True(Accepted(receiver, Message(a, 4)));
        Assert.True(Accepted(receiver, Message(restarted, 1)));
        Assert.False(Accepted(receiver, Message(a, 4)));
        Assert.True(Accepted(receiver, Message(restarted, 4)));
        // Under another host pair's key nothing verifies.
        using var stranger = new OverlayAuthenticator(new byte[32], "host-a", "host-b", time);
        Assert.False(b.Verify(Message(stranger, 1)));
    }

    [Fact]
    public void ControlMessagesSentByTwoThreadsAtOnce_LeaveInTheOrderOfTheirCounters_AndThePeerTakesBoth()
    {
        // A receive thread sends what it answers only after its batch; a control message it answered must not wait there
        // while another thread sends a later one at once: the peer would take the first it got and refuse the other as a replay
        // (an unauthenticated drop during a key rotation's slot renewals, once in CI).
        using var hosts = new TwoHosts();
        var pathAtA = hosts.A.Switch.Paths["host-b"];
        var pathAtB = hosts.B.Switch.Paths["host-a"];
        var taken = new System.Collections.Concurrent.ConcurrentQueue<int>();
        var handle = pathAtB.OnControl;
        pathAtB.OnControl = (path, message) =>
        {
            if (message.Length >= 2 && message[0] == ControlMessages.Close && message[1] >= 200)
            {
                taken.Enqueue(message[1]);
            }
            handle?.Invoke(path, message);
        };
        using var sentFirst = new ManualResetEventSlim();
        using var sentSecond = new ManualResetEventSlim();
        // A close of a slot host B never opened: taken, and it changes nothing.
        var first = new Thread(() =>
        {
            pathAtA.SendControl(ControlMessages.Make(ControlMessages.Close, 200));
            sentFirst.Set();
            sentSecond.Wait();
            hosts.A.Switch.FlushCallingThread();
        });
        first.Start();
        sentFirst.Wait(TestContext.Current.CancellationToken);
        pathAtA.SendControl(ControlMessages.Make(ControlMessages.Close, 201));
        hosts.A.Switch.FlushCallingThread();
        sentSecond.Set();
        first.Join();
        Eventually.True(() => taken.Count == 2, TimeSpan.FromSeconds(5), "host B took both control messages",
            () => $"taken [{string.Join(", ", taken)}], unauthenticated {pathAtB.Counters.Drops(DropReason.Unauthenticated)}");
        Assert.Equal([200, 201], taken);
        Assert.Equal(0, pathAtB.Counters.Drops(DropReason.Unauthenticated));
    }
}
