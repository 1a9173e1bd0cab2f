using Fabric.Stacks.Fec;
using Fabric.Wire;

namespace Fabric.Stacks.Tests;

public class FecTests
{
    /// <summary>
    /// A new version's instance starts from the loss the old one's peer reported, so it sends the parity the path needs
    /// from its first group (and exports the same state again); state it cannot read is set aside with an event.
    /// </summary>
    [Fact]
    public void AnotherVersionsLossEstimate_SetsTheParityFromTheFirstGroup_AndUnreadableStateStartsFresh()
    {
        static byte[] State(byte format, double loss)
        {
            var data = new byte[9];
            data[0] = format;
            System.Buffers.Binary.BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(1), loss);
            return data;
        }
        (FecStack Stack, List<string> Events) Create(StackState? previous)
        {
            var events = new Recorded();
            return ((FecStack)new FecFactory().Create(new StackContext("a", "b", new Dictionary<string, string>(), events) { Previous = previous }), events.Seen);
        }

        var fresh = Create(null);
        Assert.Empty(fresh.Events);
        Assert.True(fresh.Stack.ExportState().Data.IsEmpty);
        var good = State(1, 0.05);
        var (resumed, said) = Create(new StackState("fec", good));
        // At 5 % shard loss, a group of 8 needs more parity than the initial 2 to stay under one failure in 1,000.
        Assert.True(resumed.Parity > 2, $"parity {resumed.Parity}");
        Assert.Equal([$"state-resumed: peer loss 5 %, parity {resumed.Parity} of 8"], said);
        Assert.Equal(good, resumed.ExportState().Data.ToArray());

        foreach (var (previous, reason) in new[]
        {
            (new StackState("arq-bulk", good), "state of 'arq-bulk'"),
            (new StackState("fec", State(2, 0.05)), "state format 2 of 9 bytes"),
            (new StackState("fec", good.AsMemory(0, 5)), "of 5 bytes"),
            (new StackState("fec", State(1, double.NaN)), "a loss outside 0..1"),
            (new StackState("fec", State(1, 1.5)), "a loss outside 0..1"),
        })
        {
            var (stack, events) = Create(previous);
            Assert.Contains(events, e => e.StartsWith("state-refused: ", StringComparison.Ordinal) && e.Contains(reason, StringComparison.Ordinal) && e.EndsWith("starting fresh", StringComparison.Ordinal));
            Assert.Equal(2, stack.Parity);
            Assert.True(stack.ExportState().Data.IsEmpty);
        }
    }

    private sealed class Recorded : IStackTelemetry
    {
        public List<string> Seen { get; } = [];

        public void Event(string name, string detail) => Seen.Add($"{name}: {detail}");
    }

    [Fact]
    public void GaloisField_MultiplicationHasInversesAndDistributes()
    {
        for (var a = 1; a < 256; a++)
        {
            Assert.Equal(1, GaloisField.Multiply((byte)a, GaloisField.Inverse((byte)a)));
            for (var b = 0; b < 256; b += 17)
            {
                Assert.Equal(GaloisField.Multiply((byte)a, (byte)b), GaloisField.Multiply((byte)b, (byte)a));
                // a·(b + 3) = a·b + a·3 (addition is XOR).
                Assert.Equal(GaloisField.Multiply((byte)a, (byte)(b ^ 3)), (byte)(GaloisField.Multiply((byte)a, (byte)b) ^ GaloisField.Multiply((byte)a, 3)));
            }
        }
        Assert.Throws<DivideByZeroException>(() => GaloisField.Inverse(0));
    }

    /// <summary>Property: for random k, m, shard contents and any pattern of up to m erasures, the data comes back exactly; with more, it says so.</summary>
    [Fact]
    public void ReedSolomon_RecoversAnyMErasures_AndRefusesMore()
    {
        var random = new Random(2026);
        for (var trial = 0; trial < 400; trial++)
        {
            var k = random.Next(1, 21);
            var m = random.Next(1, 9);
            var length = random.Next(1, 300);
            var data = Enumerable.Range(0, k).Select(_ => RandomBytes(random, length)).ToList();
            var parity = Enumerable.Range(0, m).Select(_ => new byte[length]).ToList();
            var codec = new ReedSolomon(k, m);
            codec.Encode(data, parity, length);
            var lose = random.Next(0, m + 2);
            var shards = data.Concat(parity).Select(s => (byte[]?)s.ToArray()).ToArray();
            foreach (var index in Enumerable.Range(0, k + m).OrderBy(_ => random.Next()).Take(lose))
            {
                shards[index] = null;
            }
            var ok = codec.Reconstruct(shards, length);
            Assert.Equal(lose <= m, ok);
            if (ok)
            {
                for (var i = 0; i < k; i++)
                {
                    Assert.Equal(data[i], shards[i]);
                }
            }
        }
    }

    [Fact]
    public void Residual_IsTheShareOfFramesLostBeyondTheParity()
    {
        // 10 shards at 3 % loss with 2 parity: sum over j > 2 of C(10,j) .03^j .97^(10-j) j / 10 ≈ 0.000845; without parity,
        // the loss itself; without loss, nothing.
        Assert.Equal(0.000845, FecStack.Residual(10, 2, 0.03), 6);
        Assert.Equal(0.01, FecStack.Residual(8, 0, 0.01), 12);
        Assert.Equal(0, FecStack.Residual(10, 2, 0), 12);
        Assert.Equal(1, FecStack.Residual(10, 2, 1), 12);
    }

    [Fact]
    public void LossBound_IsWilsonsUpperBound()
    {
        // None lost of 40: the point estimate says 0, the bound about 6 %; 2 % of 4,000: about 2.4 %; no shards: nothing known.
        Assert.Equal(0.063, FecStack.LossBound(0, 40), 3);
        Assert.Equal(0.0238, FecStack.LossBound(80, 4000), 3);
        Assert.Equal(0, FecStack.LossBound(0, 0));
        Assert.True(FecStack.LossBound(20, 1000) > FecStack.LossBound(200, 10_000));
    }

    /// <summary>
    /// The sender's parity follows what the loss reports can vouch for: a first report over few shards with none lost
    /// calls for more parity than a report of 2 % over many, which settles where a full group of 8 leaves fewer than 3
    /// frames in a million lost at the bound (4); 8,000 shards without a loss let one parity shard do. A report counts for no
    /// more shards than were sent since the last one taken, and one closer than 50 ms to it is not taken: a forged report
    /// of total loss is outweighed within five genuine ones. A report from an older peer without its count is taken as
    /// covering few shards, and a report of another length is malformed and changes nothing.
    /// </summary>
    [Fact]
    public void Parity_FollowsTheLossTheReportsVouchFor_NotTheirPointEstimate()
    {
        var sender = new FecStack(new Dictionary<string, string>());
        sender.ApplyPolicy(new StackPolicy(LatencySensitive: false, MaxOverheadRatio: 1));
        var now = 0L;
        var sink = new Wire((_, _, _) => { });
        void Send(int frames)
        {
            for (var i = 0; i < frames; i++)
            {
                sender.Transmit(StackConformance.Frame(100, 0), now, sink);
            }
        }
        void Report(uint ppm, uint? shards, long after = 100_000_000)
        {
            now += after;
            var payload = new byte[shards is null ? 4 : 8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(payload, ppm);
            if (shards is { } count)
            {
                System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(4), count);
            }
            byte[] fields = [0, 0, 0, 0, 0, 0, 0, 2];
            sender.Receive(new StackDatagram(new FabricHeaderRepr(0, FabricPayloadType.StackControl, 0, 0, 0, 8), fields, payload), now, new Vm(), sink);
        }

        // Claims of shards never sent are not taken.
        Report(1_000_000, 8000);
        Assert.Equal(2, sender.Parity);
        Send(40);
        Report(0, 40);
        var early = sender.Parity;
        Assert.True(early >= 5, $"parity {early} after 40 shards without a loss");
        for (var i = 0; i < 50; i++)
        {
            Send(1300);
            Report(20_000, 1300);
        }
        Assert.Equal(4, sender.Parity);
        Assert.Equal(2, sender.GetStats().Gauges["peerLossPercent"], 1);

        sender = new FecStack(new Dictionary<string, string>());
        sender.ApplyPolicy(new StackPolicy(false, 1));
        Send(8000);
        Report(0, 8000);
        Assert.Equal(1, sender.Parity);
        // A forged report of total loss, claiming 8,000 shards after 100 were sent, then one 10 ms later.
        Send(100);
        Report(1_000_000, 8000);
        var forged = sender.Parity;
        Assert.True(forged > 1, $"parity {forged}: the forged report was not taken at all");
        Report(1_000_000, 8000, after: 10_000_000);
        Assert.Equal(forged, sender.Parity);
        for (var i = 0; i < 5; i++)
        {
            Send(8000);
            Report(0, 8000);
        }
        Assert.Equal(1, sender.Parity);

        var older = new FecStack(new Dictionary<string, string>());
        older.ApplyPolicy(new StackPolicy(false, 1));
        sender = older;
        Send(100);
        Report(0, null);
        Assert.True(older.Parity >= 5, $"parity {older.Parity} after a report without its count");
        var before = older.GetStats().Drops.GetValueOrDefault(StackDropReason.Malformed);
        var parity = older.Parity;
        var odd = new byte[6];
        sender.Receive(new StackDatagram(new FabricHeaderRepr(0, FabricPayloadType.StackControl, 0, 0, 0, 8), new byte[] { 0, 0, 0, 0, 0, 0, 0, 2 }, odd), now, new Vm(), sink);
        Assert.Equal(before + 1, older.GetStats().Drops.GetValueOrDefault(StackDropReason.Malformed));
        Assert.Equal(parity, older.Parity);
    }

    /// <summary>
    /// One shard of every fourth group is lost. Where those groups' shards arrive with no more delay than the others, the
    /// loss is reported and the sender adds parity; where they queued 20 ms more than the path's minimum (an overflowing
    /// queue drops what arrives while it is full), the receiver says so and leaves that loss out of its reports: parity
    /// would only add to the load that overflowed the queue.
    /// </summary>
    [Fact]
    public void LossWhereThePathsQueueOverflows_IsLeftOutOfTheReports_LossAtAnEmptyQueueIsNot()
    {
        (double Reported, StackStats Receiver, int Parity) Run(bool queued, int frames = 6000, long start = 0)
        {
            var sender = new FecStack(new Dictionary<string, string>());
            var receiver = new FecStack(new Dictionary<string, string>());
            var sent = new List<(FabricHeaderRepr Header, byte[] Fields, byte[] Payload)>();
            var wire = new Wire((header, fields, payload) => sent.Add((header, fields, payload)));
            Wire? back = null;
            back = new Wire((header, fields, payload) => sender.Receive(new StackDatagram(header, fields, payload), back!.Now, new Vm(), new Wire((_, _, _) => { })));
            var vm = new Vm();
            for (var i = 0; i < frames; i++)
            {
                wire.Now = start + (i + 1) * 100_000L;
                sender.Transmit(StackConformance.Frame(100, (byte)i), wire.Now, wire);
                foreach (var (header, fields, payload) in sent)
                {
                    var group = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(fields);
                    if (group % 4 == 0 && fields[4] == 0)
                    {
                        continue;
                    }
                    // The receiver's clock runs 123 s apart from the sender's.
                    var arrival = wire.Now + 123_000_000_000 + 10_000_000 + (queued && group % 4 == 0 ? 20_000_000 : 0);
                    back.Now = arrival;
                    receiver.Receive(new StackDatagram(header, fields, payload), arrival, vm, back);
                }
                sent.Clear();
            }
            return (sender.GetStats().Gauges["peerLossPercent"], receiver.GetStats(), sender.Parity);
        }

        var random = Run(queued: false);
        Assert.True(random.Reported > 1, $"reported {random.Reported:0.###} % for loss at an empty queue");
        Assert.Equal(0, random.Receiver.Gauges["overflowLossPercent"]);
        var overflow = Run(queued: true);
        Assert.True(overflow.Receiver.Gauges["overflowLossPercent"] > 1, $"overflow {overflow.Receiver.Gauges["overflowLossPercent"]:0.###} %");
        Assert.True(overflow.Reported < 0.1, $"reported {overflow.Reported:0.###} % for loss at a full queue");
        Assert.True(overflow.Parity < random.Parity, $"parity {overflow.Parity} for overflow, {random.Parity} for random loss");

        // 25 s across the wrap of the header's 32-bit microsecond timestamp, past two delay windows: still loss, not overflow.
        var wrapped = Run(queued: false, frames: 250_000, start: (4_294_967_296L - 5_000_000) * 1000);
        Assert.True(wrapped.Reported > 1, $"reported {wrapped.Reported:0.###} % across the timestamp's wrap");
        Assert.Equal(0, wrapped.Receiver.Gauges["overflowLossPercent"]);
        Assert.True(wrapped.Parity >= 3, $"parity {wrapped.Parity} across the timestamp's wrap");
    }

    /// <summary>
    /// Two instances under a simulated clock, 20 ms apart in round trip, the sender at 1,000 frames of 1,400 bytes a
    /// second (11 Mbit/s). With no queue on the path its parity follows the configured target (at least one per group).
    /// A malformed shard stamped 300 ms ahead (an attacker on the underlay) does not make the path's queue look standing.
    /// Once every shard queues 50 ms more (the path is full, the guest keeps its queue standing), a loss-based TCP at
    /// 11 Mbit/s over 20 ms bears a few per thousand: groups go without parity, stretched to a quarter of the queue, and
    /// the markers that close them keep the receiver's reports coming; when the markers are lost, the next groups' data
    /// shards say the size (without either, no group would be counted and the sender would fall back to parity within a
    /// second). When the reports stop, parity comes back; when the queue is gone and 2 % is lost, the parity is what the
    /// configured target asks for again.
    /// </summary>
    [Fact]
    public void WhereThePathsQueueStands_ParityFollowsWhatTheGuestBears_AndComesBackWhenTheQueueOrTheReportsGo()
    {
        var sender = new FecStack(new Dictionary<string, string>());
        var receiver = new FecStack(new Dictionary<string, string>());
        sender.ApplyPolicy(new StackPolicy(false, 1));
        var inFlight = new PriorityQueue<Action<long>, (long At, long Order)>();
        var order = 0L;
        var (queue, loss, reportsLost, markersLost, markers, lastGroup) = (0L, 0.0, false, false, 0, 0u);
        var random = new Random(11);
        var vm = new Vm();
        var sink = new Wire((_, _, _) => { });
        Wire? back = null;
        back = new Wire((header, fields, payload) =>
        {
            if (!reportsLost)
            {
                inFlight.Enqueue(at => sender.Receive(new StackDatagram(header, fields, payload), at, new Vm(), sink), (back!.Now + 10_000_000, order++));
            }
        });
        Wire? wire = null;
        wire = new Wire((header, fields, payload) =>
        {
            markers += fields[7] == 3 ? 1 : 0;
            lastGroup = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(fields);
            if ((fields[7] == 0 && random.NextDouble() < loss) || (fields[7] == 3 && markersLost))
            {
                return;
            }
            inFlight.Enqueue(at =>
            {
                back.Now = at;
                receiver.Receive(new StackDatagram(header, fields, payload), at, vm, back);
            }, (wire!.Now + 10_000_000 + queue, order++));
        });
        var now = 0L;
        void Run(double seconds)
        {
            for (var end = now + (long)(seconds * 1e9); now < end; now += 1_000_000)
            {
                Millisecond(sender, wire, vm, inFlight, now, send: true);
            }
        }

        Run(2);
        var forged = (byte[])[0, 0, 0, 0, 0, 0, 0, 0];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(forged, lastGroup - 3);
        receiver.Receive(new StackDatagram(new FabricHeaderRepr(0, FabricPayloadType.Ethernet, 0, 0, (uint)((now + 300_000_000) / 1000), 8), forged, new byte[5]),
            now + 10_000_000, vm, back);
        Run(1);
        Assert.Equal(0, sender.GetStats().Gauges["peerStandingQueueMs"]);
        Assert.True(sender.Parity >= 1, $"parity {sender.Parity} with no queue");
        Assert.Equal(3, sender.GetStats().Gauges["toleranceppm"], 3);
        Assert.InRange(sender.GetStats().Gauges["minRttMs"], 19.9, 21.1);

        queue = 50_000_000;
        Run(1);
        var markersBefore = markers;
        var parity = new List<int>();
        for (var i = 0; i < 30; i++)
        {
            Run(0.1);
            parity.Add(sender.Parity);
        }
        var standing = sender.GetStats().Gauges;
        Assert.True(parity.All(p => p == 0), $"parity {string.Join(",", parity)} while the queue stands");
        Assert.InRange(standing["toleranceppm"], 1000, 10_000);
        Assert.Equal(12.5, standing["groupDeadlineMs"], 1);
        Assert.True(markers - markersBefore > 200, $"{markers - markersBefore} groups closed by a marker");

        markersLost = true;
        for (var i = 0; i < 20; i++)
        {
            Run(0.1);
            Assert.Equal(0, sender.Parity);
        }
        markersLost = false;
        Assert.Equal(0, receiver.GetStats().Gauges["receivedLossPercent"]);

        reportsLost = true;
        Run(1.5);
        Assert.True(sender.Parity >= 1, $"parity {sender.Parity} after 1.5 s without a report");
        Assert.Equal(5, sender.GetStats().Gauges["groupDeadlineMs"], 1);

        (reportsLost, queue, loss) = (false, 0, 0.02);
        Run(10);
        Assert.True(sender.Parity >= 3, $"parity {sender.Parity} at 2 % loss with no queue");
    }

    /// <summary>
    /// A path that carries no shard for a while and meanwhile changes (the learning benchmark's training moved a link from
    /// 1 to 10 ms one way while no VM sent on fec): from then on 2 % of the shards are lost. The first shard after the
    /// pause meets the path as it is, so the loss is reported as loss rather than a queue's overflow, no queue is said to
    /// stand, and the sender's parity covers it. Before, against the minimum of the 10 to 20 s before, every shard looked
    /// 9 ms queued: the receiver reported no loss and a standing queue, and the sender sent no parity for that long (the
    /// benchmark's fec gave a CUBIC guest 1 to 8 Mbit/s of 200). A pause shorter than a second keeps the minimum.
    /// </summary>
    [Fact]
    public void AfterAPauseInWhichThePathsDelayRose_TheLossGetsParity_NotTakenForAQueuesOverflow()
    {
        var path = new SimulatedPath(seed: 5);
        path.Run(3);
        path.Run(0.5, send: false);
        path.Run(1);
        Assert.Equal(0, path.Receiver.GetStats().Gauges["delayFloorRestarts"]);

        path.Run(5, send: false);
        (path.OneWay, path.Loss) = (10_000_000, 0.02);
        path.Run(6);
        var (sent, received) = (path.Sender.GetStats().Gauges, path.Receiver.GetStats().Gauges);
        Assert.Equal(1, received["delayFloorRestarts"]);
        Assert.Equal(0, received["overflowLossPercent"]);
        Assert.Equal(0, sent["peerStandingQueueMs"]);
        Assert.InRange(sent["peerLossPercent"], 1, 4);
        Assert.True(path.Sender.Parity >= 3, $"parity {path.Sender.Parity} at 2 % loss after the pause");
    }

    /// <summary>
    /// Two instances under a simulated clock: the sender sends a 1,400-byte frame every millisecond (11 Mbit/s) while it
    /// sends at all, each shard crosses the path in <see cref="OneWay"/> unless <see cref="Loss"/> takes it, and the
    /// receiver's reports come back the same way, without loss.
    /// </summary>
    private sealed class SimulatedPath
    {
        private readonly PriorityQueue<Action<long>, (long At, long Order)> _inFlight = new();
        private readonly Wire _wire;
        private readonly Vm _vm = new();
        private long _order;
        private long _now;

        public SimulatedPath(int seed)
        {
            var random = new Random(seed);
            var sink = new Wire((_, _, _) => { });
            Wire? back = null;
            back = new Wire((header, fields, payload) =>
                _inFlight.Enqueue(at => Sender.Receive(new StackDatagram(header, fields, payload), at, new Vm(), sink), (back!.Now + OneWay, _order++)));
            _wire = new Wire((header, fields, payload) =>
            {
                if (random.NextDouble() >= Loss)
                {
                    _inFlight.Enqueue(at =>
                    {
                        back.Now = at;
                        Receiver.Receive(new StackDatagram(header, fields, payload), at, _vm, back);
                    }, (_wire!.Now + OneWay, _order++));
                }
            });
        }

        public FecStack Sender { get; } = new(new Dictionary<string, string>());

        public FecStack Receiver { get; } = new(new Dictionary<string, string>());

        /// <summary>The path's one-way delay (ns).</summary>
        public long OneWay { get; set; } = 1_000_000;

        public double Loss { get; set; }

        /// <summary>Runs the clock for <paramref name="seconds"/>, the sender sending a frame each millisecond when <paramref name="send"/>.</summary>
        public void Run(double seconds, bool send = true)
        {
            for (var end = _now + (long)(seconds * 1e9); _now < end; _now += 1_000_000)
            {
                Millisecond(Sender, _wire, _vm, _inFlight, _now, send);
            }
        }
    }

    /// <summary>
    /// One millisecond of a simulated path at <paramref name="now"/>: the sender sends a 1,400-byte frame (when
    /// <paramref name="send"/>) and runs its timer when due, and what is in flight and due arrives.
    /// </summary>
    private static void Millisecond(FecStack sender, Wire wire, Vm vm, PriorityQueue<Action<long>, (long At, long Order)> inFlight, long now, bool send)
    {
        wire.Now = now;
        if (send)
        {
            sender.Transmit(StackConformance.Frame(1400, (byte)now), now, wire);
        }
        if (now >= sender.NextTimerNanoseconds)
        {
            sender.OnTimer(now, vm, wire);
        }
        while (inFlight.TryPeek(out var deliver, out var due) && due.At <= now)
        {
            inFlight.Dequeue();
            deliver(due.At);
        }
    }

    /// <summary>
    /// Every group loses its first data shard, and an attacker on the underlay sends a data shard numbered 20 in its place
    /// (beyond the group's 8): the receiver still reports the loss, for that shard was never one of the group's.
    /// </summary>
    [Fact]
    public void AForgedDataShardBeyondItsGroup_DoesNotHideALoss()
    {
        var received = ReceivedLossPercent(800, fields =>
        {
            if (fields[7] == 0 && fields[4] == 0)
            {
                byte[] forged = [.. fields];
                forged[4] = 20;
                return forged;
            }
            return fields;
        });
        Assert.True(received > 5, $"received loss {received:0.##} %");
    }

    /// <summary>
    /// Two instances over a channel that loses 5 % of datagrams at random (seeded) under a simulated clock: nearly every
    /// frame arrives, each with the virtual network it was sent in, the recovered ones at most the group deadline plus
    /// one transit late, and the sender raises its parity after the receiver's loss reports.
    /// </summary>
    [Fact]
    public void OverALossyChannel_LostFramesAreRebuiltWithTheirNetwork_WithinTheDeadline()
    {
        var random = new Random(7);
        var sender = new FecStack(new Dictionary<string, string> { ["deadlineMicroseconds"] = "2000" });
        var receiver = new FecStack(new Dictionary<string, string>());
        var toReceiver = new Queue<(long At, FabricHeaderRepr Header, byte[] Fields, byte[] Payload)>();
        var sentAt = new long[4000];
        var wire = new Wire((header, fields, payload) =>
        {
            if (random.NextDouble() >= 0.05)
            {
                toReceiver.Enqueue((0, header, fields, payload));
            }
        });
        var now = 0L;
        // Reports reach the sender at the simulation's time (it takes at most one per 50 ms).
        var back = new Wire((header, fields, payload) => sender.Receive(new StackDatagram(header, fields, payload), now, new Vm(), new Wire((_, _, _) => { })));
        var vm = new Vm();
        const long transit = 10_000_000; // 10 ms
        var initialParity = sender.Parity;
        for (var i = 0; i < 4000; i++)
        {
            now += 300_000; // a frame every 0.3 ms
            var frame = new byte[60 + (i % 200)];
            EthernetWriter.Write(frame, new MacAddress(0x02_00_00_00_00_02), new MacAddress(0x02_00_00_00_00_01), EtherTypes.IPv4);
            BitConverterHelper.Write(frame, i);
            wire.VirtualNetwork = (uint)(100 + (i % 3));
            wire.Now = now;
            sender.Transmit(frame, now, wire);
            if (sender.NextTimerNanoseconds <= now)
            {
                sender.OnTimer(now, new Vm(), wire);
            }
            sentAt[i] = now;
            // What was sent arrives one transit later, in order.
            while (toReceiver.Count > 0)
            {
                var (_, header, fields, payload) = toReceiver.Dequeue();
                vm.Now = now + transit;
                receiver.Receive(new StackDatagram(header, fields, payload), now + transit, vm, back);
            }
            if (i % 4 == 0)
            {
                // Low-rate gaps let deadlines close groups early, too.
                now += 2_500_000;
                wire.Now = now;
                if (sender.NextTimerNanoseconds <= now)
                {
                    sender.OnTimer(now, new Vm(), wire);
                }
                while (toReceiver.Count > 0)
                {
                    var (_, header, fields, payload) = toReceiver.Dequeue();
                    vm.Now = now + transit;
                    receiver.Receive(new StackDatagram(header, fields, payload), now + transit, vm, back);
                }
            }
        }
        var delivered = vm.Frames.Select(f => (Index: BitConverterHelper.Read(f.Frame), f.Vni, f.At)).ToList();
        // The latest frame arrived at most the deadline (2 ms), one transit (10 ms) and this simulation's timer step (2.5 ms) after it was sent.
        var late = delivered.Max(d => d.At - sentAt[d.Index]);
        Assert.True(late <= 14_500_000, $"a frame arrived {late / 1e6:0.0} ms after it was sent");
        var unique = delivered.Select(d => d.Index).Distinct().Count();
        Assert.Equal(delivered.Count, unique);
        Assert.All(delivered, d => Assert.Equal((uint)(100 + (d.Index % 3)), d.Vni));
        Assert.True(unique >= 4000 * 0.99, $"{unique} of 4000 frames arrived over a 5 % lossy channel; recovered {receiver.Recovered}, unrecoverable groups {receiver.Unrecoverable}");
        Assert.True(receiver.Recovered > 100, $"recovered {receiver.Recovered}");
        Assert.True(sender.Parity > initialParity, $"parity stayed {sender.Parity} after loss reports");
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>
    /// Every fourth group loses its first frame and all its parity (a burst): the receiver still counts it, from the size
    /// the next group's data shards carry, and reports the loss. Before, a group whose parity never came was never
    /// counted, and the burst went unreported (0 %).
    /// </summary>
    [Fact]
    public void AGroupThatLostAllItsParity_IsStillCounted()
    {
        var received = ReceivedLossPercent(2000, fields =>
            System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(fields) % 4 == 0 && (fields[7] == 1 || (fields[7] == 0 && fields[4] == 0)) ? null : fields);
        Assert.True(received > 3, $"received loss {received:0.##} %");
    }

    /// <summary>
    /// The loss a receiver reports after <paramref name="frames"/> frames, one a millisecond, each of the sender's
    /// datagrams arriving 10 ms later with the stack fields <paramref name="onTheWire"/> makes of them (null: lost). Its
    /// reports go nowhere, so the sender's parity stays at its initial 2.
    /// </summary>
    private static double ReceivedLossPercent(int frames, Func<byte[], byte[]?> onTheWire)
    {
        var sender = new FecStack(new Dictionary<string, string>());
        var receiver = new FecStack(new Dictionary<string, string>());
        var sent = new List<(FabricHeaderRepr Header, byte[] Fields, byte[] Payload)>();
        var wire = new Wire((header, fields, payload) => sent.Add((header, fields, payload)));
        var back = new Wire((_, _, _) => { });
        var vm = new Vm();
        for (var i = 0; i < frames; i++)
        {
            wire.Now = (i + 1) * 1_000_000L;
            sender.Transmit(StackConformance.Frame(100, (byte)i), wire.Now, wire);
            foreach (var (header, fields, payload) in sent)
            {
                if (onTheWire(fields) is { } arriving)
                {
                    receiver.Receive(new StackDatagram(header, arriving, payload), wire.Now + 10_000_000, vm, back);
                }
            }
            sent.Clear();
        }
        return receiver.GetStats().Gauges["receivedLossPercent"];
    }

    private static class BitConverterHelper
    {
        public static void Write(byte[] frame, int value) => System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(14), value);

        public static int Read(byte[] frame) => System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(frame.AsSpan(14));
    }

    private sealed class Wire(Action<FabricHeaderRepr, byte[], byte[]> send) : IUnderlayOutput
    {
        private readonly byte[] _buffer = new byte[65536];
        private uint _sequence;

        public uint VirtualNetwork { get; set; }

        /// <summary>The send time stamped in each header (ns), as an agent stamps it.</summary>
        public long Now { get; set; }

        public Span<byte> Begin(int maxLength) => _buffer.AsSpan(0, maxLength);

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length) =>
            send(new FabricHeaderRepr(0, payloadType, VirtualNetwork, _sequence++, (uint)(Now / 1000), (byte)stackFieldLength), _buffer[..stackFieldLength], _buffer[stackFieldLength..length]);
    }

    private sealed class Vm : IVmOutput
    {
        public List<(byte[] Frame, uint Vni, long At)> Frames { get; } = [];

        public long Now { get; set; }

        public uint VirtualNetwork { get; set; }

        public void Deliver(ReadOnlySpan<byte> frame) => Frames.Add((frame.ToArray(), VirtualNetwork, Now));
    }
}
