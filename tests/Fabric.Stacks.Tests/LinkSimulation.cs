using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using Fabric.Stacks.Loading;
using Fabric.Wire;

namespace Fabric.Stacks.Tests;

/// <summary>
/// Two stack instances joined by an emulated channel pair (one-way delay, random loss, a serialization rate) under a
/// simulated clock: A sends numbered frames at a fixed interval, B's deliveries are timed. Seeded, so the same inputs
/// give the same table on any machine.
/// </summary>
internal sealed class LinkSimulation
{
    public sealed record Result(int Sent, int Delivered, int Duplicates, bool InOrder, double P50Ms, double P99Ms, double MaxMs, double Overhead)
    {
        public override string ToString() => string.Create(CultureInfo.InvariantCulture,
            $"delivered {Delivered}/{Sent}, duplicates {Duplicates}, in order {(InOrder ? "yes" : "no")}, delay p50 {P50Ms:0.0} ms p99 {P99Ms:0.0} ms max {MaxMs:0.0} ms, overhead {Overhead:0.000}");
    }

    private readonly PriorityQueue<Action, (long, long)> _events = new();
    private long _order;
    private long _now;

    public static Result Run(string plugin, IReadOnlyDictionary<string, string> configuration, double loss, long oneWayNanoseconds, int frames, long intervalNanoseconds, int seed)
    {
        var factory = StackLoader.Load(Fabric.Testing.StackPlugins.PathOf(plugin)).Factory;
        using var a = factory.Create(new StackContext("a", "b", configuration, new Quiet()));
        using var b = factory.Create(new StackContext("b", "a", configuration, new Quiet()));
        return new LinkSimulation().Run(a, b, loss, oneWayNanoseconds, frames, intervalNanoseconds, new Random(seed));
    }

    private Result Run(IStack a, IStack b, double loss, long oneWay, int frames, long interval, Random random)
    {
        var sentAt = new long[frames];
        var deliveredAt = new Dictionary<int, long>();
        var order = new List<int>();
        var duplicates = 0;
        long underlayBytes = 0;
        long deliveredBytes = 0;
        var toB = new Wire(() => _now);
        var toA = new Wire(() => _now);
        var atB = new Vm((frame, _) =>
        {
            var index = BinaryPrimitives.ReadInt32BigEndian(frame.AsSpan(14));
            if (!deliveredAt.TryAdd(index, _now))
            {
                duplicates++;
                return;
            }
            order.Add(index);
            deliveredBytes += frame.Length;
        });
        var atA = new Vm((_, _) => { });

        void Carry(Wire wire, IStack to, Vm vm, Wire back)
        {
            foreach (var (header, fields, payload) in wire.Take())
            {
                underlayBytes += FabricHeader.Length + 8 + 20 + fields.Length + payload.Length;
                if (random.NextDouble() < loss)
                {
                    continue;
                }
                At(_now + oneWay, () =>
                {
                    to.Receive(new StackDatagram(header, fields, payload), _now, vm, back);
                    Carry(back, to == b ? a : b, to == b ? atA : atB, wire);
                });
            }
        }

        for (var i = 0; i < frames; i++)
        {
            var index = i;
            At(i * interval, () =>
            {
                var frame = new byte[200];
                EthernetWriter.Write(frame, new MacAddress(0x02_00_00_00_00_02), new MacAddress(0x02_00_00_00_00_01), EtherTypes.IPv4);
                BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(14), index);
                sentAt[index] = _now;
                toB.VirtualNetwork = 7;
                a.Transmit(frame, _now, toB);
                Carry(toB, b, atB, toA);
            });
        }
        var end = frames * interval + 10_000_000_000L;
        var steps = 0L;
        while (true)
        {
            // A stack whose timer stays due after it ran would spin here (and burn a host's timer thread): fail instead.
            if (++steps > 20_000_000)
            {
                throw new InvalidOperationException($"the simulation did not settle by {_now / 1e6:0.0} ms: a stack's timer stays due after it ran");
            }
            var next = _events.TryPeek(out _, out var key) ? key.Item1 : long.MaxValue;
            var timerA = a.NextTimerNanoseconds;
            var timerB = b.NextTimerNanoseconds;
            var soonest = Math.Min(next, Math.Min(timerA, timerB));
            if (soonest == long.MaxValue || soonest > end)
            {
                break;
            }
            _now = Math.Max(_now, soonest);
            if (timerA <= _now)
            {
                a.OnTimer(_now, atA, toB);
                Carry(toB, b, atB, toA);
            }
            else if (timerB <= _now)
            {
                b.OnTimer(_now, atB, toA);
                Carry(toA, a, atA, toB);
            }
            else
            {
                _events.Dequeue()();
            }
        }
        var delays = deliveredAt.Select(d => (d.Value - sentAt[d.Key]) / 1e6).Order().ToList();
        double Percentile(double p) => delays.Count == 0 ? double.NaN : delays[Math.Max(0, (int)Math.Ceiling(p * delays.Count) - 1)];
        return new Result(frames, deliveredAt.Count, duplicates, order.SequenceEqual(order.Order()), Percentile(0.5), Percentile(0.99), delays.Count == 0 ? double.NaN : delays[^1],
            deliveredBytes == 0 ? double.NaN : (double)underlayBytes / deliveredBytes - 1);
    }

    private void At(long time, Action action) => _events.Enqueue(action, (time, _order++));

    /// <summary>Collects what a stack sends, stamped with the send time in the Fabric header as an agent stamps it.</summary>
    private sealed class Wire(Func<long> clock) : IUnderlayOutput
    {
        private readonly byte[] _buffer = new byte[65536];
        private readonly List<(FabricHeaderRepr, byte[], byte[])> _pending = [];
        private uint _sequence;

        public uint VirtualNetwork { get; set; }

        public Span<byte> Begin(int maxLength) => _buffer.AsSpan(0, maxLength);

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length) =>
            _pending.Add((new FabricHeaderRepr(0, payloadType, VirtualNetwork, _sequence++, (uint)(clock() / 1000), (byte)stackFieldLength), _buffer[..stackFieldLength], _buffer[stackFieldLength..length]));

        public List<(FabricHeaderRepr Header, byte[] Fields, byte[] Payload)> Take()
        {
            var taken = _pending.ToList();
            _pending.Clear();
            return taken;
        }
    }

    private sealed class Vm(Action<byte[], uint> deliver) : IVmOutput
    {
        public uint VirtualNetwork { get; set; }

        public void Deliver(ReadOnlySpan<byte> frame) => deliver(frame.ToArray(), VirtualNetwork);
    }

    private sealed class Quiet : IStackTelemetry
    {
        public void Event(string name, string detail)
        {
        }
    }
}

/// <summary>
/// Every stack over the same seeded emulated links (30 ms RTT; 0, 2 and 5 % loss each way; a 200-byte frame every
/// millisecond): the table is compared with the checked-in snapshot, so a change in any stack's behaviour shows up as a
/// diff. Set FABRIC_UPDATE_SNAPSHOT=1 to rewrite it after an intended change.
/// </summary>
public class LinkSimulationTests
{
    private static readonly (string Name, string Plugin, Dictionary<string, string> Configuration)[] Stacks =
    [
        ("std-ipv4", Fabric.Testing.StackPlugins.StdIPv4, []),
        ("fec", Fabric.Testing.StackPlugins.Fec, []),
        ("arq-lowlat", Fabric.Testing.StackPlugins.ArqLowLat, []),
        ("arq-bulk", Fabric.Testing.StackPlugins.ArqBulk, []),
        ("secure", Fabric.Testing.StackPlugins.Secure, new() { ["key"] = new string('7', 64) }),
    ];

    [Fact]
    public void TheTableOfEveryStackOverSeededLossyLinks_MatchesTheSnapshot()
    {
        var table = new StringBuilder();
        foreach (var loss in new[] { 0.0, 0.02, 0.05 })
        {
            foreach (var (name, plugin, configuration) in Stacks)
            {
                var result = LinkSimulation.Run(plugin, configuration, loss, 15_000_000, 2000, 1_000_000, seed: 42);
                table.AppendLine(CultureInfo.InvariantCulture, $"loss {loss * 100:0} %  {name,-11} {result}");
            }
        }
        var path = Path.Combine(Fabric.Testing.RepositoryRoot.Directory, "tests", "Fabric.Stacks.Tests", "link-simulation.snapshot.txt");
        var text = table.ToString();
        if (Environment.GetEnvironmentVariable("FABRIC_UPDATE_SNAPSHOT") == "1")
        {
            File.WriteAllText(path, text);
        }
        Assert.True(File.Exists(path), $"no snapshot at {path}: run with FABRIC_UPDATE_SNAPSHOT=1 to write it\n{text}");
        Assert.Equal(File.ReadAllText(path), text);
    }

    /// <summary>A sender faster than arq-bulk's window: frames wait for acknowledgements (no timer spinning meanwhile) and all arrive.</summary>
    [Fact]
    public void AWindowLimitedSender_WaitsForAcknowledgements_AndEverythingArrives()
    {
        var bulk = LinkSimulation.Run(Fabric.Testing.StackPlugins.ArqBulk, new Dictionary<string, string>(), 0.02, 60_000_000, 3000, 100_000, seed: 1);
        Assert.Equal(3000, bulk.Delivered);
        Assert.True(bulk.InOrder, bulk.ToString());
        // arq-lowlat's window (512) is smaller than this path's bandwidth-delay product: the excess is dropped and counted, never queued without bound.
        var lowlat = LinkSimulation.Run(Fabric.Testing.StackPlugins.ArqLowLat, new Dictionary<string, string>(), 0, 60_000_000, 3000, 100_000, seed: 1);
        Assert.InRange(lowlat.Delivered, 512, 2999);
    }

    [Fact]
    public void UnderLoss_ArqDeliversEverythingInOrder_FecNearlyAll_StdLosesItsShare()
    {
        var std = LinkSimulation.Run(Fabric.Testing.StackPlugins.StdIPv4, new Dictionary<string, string>(), 0.05, 15_000_000, 2000, 1_000_000, seed: 3);
        var fec = LinkSimulation.Run(Fabric.Testing.StackPlugins.Fec, new Dictionary<string, string>(), 0.05, 15_000_000, 2000, 1_000_000, seed: 3);
        var arq = LinkSimulation.Run(Fabric.Testing.StackPlugins.ArqLowLat, new Dictionary<string, string>(), 0.05, 15_000_000, 2000, 1_000_000, seed: 3);
        Assert.InRange(std.Delivered, 2000 * 0.92, 2000 * 0.98);
        Assert.True(fec.Delivered >= 2000 * 0.995, fec.ToString());
        Assert.Equal(2000, arq.Delivered);
        Assert.True(arq.InOrder, arq.ToString());
        Assert.Equal(0, arq.Duplicates);
        // A loss is repaired within a few RTTs, not after a doubling RTO ladder: the tail stays bounded.
        Assert.True(arq.MaxMs < 200, arq.ToString());
    }
}
