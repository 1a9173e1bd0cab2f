using Fabric.Stacks;
using Fabric.Stacks.Loading;
using Fabric.Wire;

namespace Fabric.Stacks.Tests;

/// <summary>
/// The conformance suite every stack passes: two instances (this host → peer and back) exchange frames through
/// in-memory outputs under a simulated clock. A stack's test class derives from this and names its plug-in; the
/// plug-in is loaded through the real loader, as the agent loads it.
/// </summary>
public abstract class StackConformance
{
    protected abstract string PluginProject { get; }

    protected abstract string ExpectedId { get; }

    private LoadedStack Load() => StackLoader.Load(Fabric.Testing.StackPlugins.PathOf(PluginProject));

    /// <summary>Collects datagrams a stack writes, as the host would frame them.</summary>
    internal sealed class CapturingUnderlay : IUnderlayOutput
    {
        private readonly byte[] _buffer = new byte[65536];
        public List<(FabricHeaderRepr Header, byte[] StackFields, byte[] Payload)> Datagrams { get; } = [];
        public bool Refuse { get; set; }

        public uint VirtualNetwork { get; set; } = 1;

        public Span<byte> Begin(int maxLength) => Refuse ? Span<byte>.Empty : _buffer.AsSpan(0, maxLength);

        public void Commit(FabricPayloadType payloadType, int stackFieldLength, int length) =>
            Datagrams.Add((new FabricHeaderRepr(0, payloadType, VirtualNetwork, (uint)Datagrams.Count, 0, (byte)stackFieldLength),
                _buffer[..stackFieldLength], _buffer[stackFieldLength..length]));
    }

    internal sealed class CapturingVm : IVmOutput
    {
        public List<byte[]> Frames { get; } = [];

        public uint VirtualNetwork { get; set; } = 1;

        public void Deliver(ReadOnlySpan<byte> frame) => Frames.Add(frame.ToArray());
    }

    /// <summary>The configuration both instances get (e.g. a key); none by default.</summary>
    protected virtual IReadOnlyDictionary<string, string> Configuration { get; } = new Dictionary<string, string>();

    private StackContext Context(string local, string remote) => new(local, remote, Configuration, new NoTelemetry());

    internal sealed class NoTelemetry : IStackTelemetry
    {
        public void Event(string name, string detail)
        {
        }
    }

    internal static byte[] Frame(int payload, byte fill)
    {
        var frame = new byte[14 + payload];
        EthernetWriter.Write(frame, new MacAddress(0x02_00_00_00_00_02), new MacAddress(0x02_00_00_00_00_01), EtherTypes.IPv4);
        frame.AsSpan(14).Fill(fill);
        return frame;
    }

    [Fact]
    public void Plugin_LoadsThroughTheLoaderWithItsDeclaredIdentity()
    {
        var stack = Load();
        Assert.Equal(ExpectedId, stack.Description.Id);
        // The contract type is the host's own: the plug-in did not carry a copy of Fabric.Stacks.Abstractions.
        Assert.Same(typeof(IStackFactory).Assembly, stack.Factory.GetType().GetInterfaces().Single(i => i.Name == nameof(IStackFactory)).Assembly);
    }

    /// <summary>True for a stack whose instances draw random session values (secure): their control datagrams differ run to run.</summary>
    protected virtual bool DrawsSessionNonces => false;

    /// <summary>
    /// Runs both instances' due timers and carries what each sends to the other until neither sends more: whatever a
    /// stack exchanges before it carries frames (secure's session hellos). Nothing for stacks that need no exchange.
    /// </summary>
    private static void Settle(IStack a, IStack b, long now)
    {
        var (toA, toB) = (new CapturingUnderlay(), new CapturingUnderlay());
        if (a.NextTimerNanoseconds <= now)
        {
            a.OnTimer(now, new CapturingVm(), toB);
        }
        if (b.NextTimerNanoseconds <= now)
        {
            b.OnTimer(now, new CapturingVm(), toA);
        }
        for (var round = 0; toA.Datagrams.Count + toB.Datagrams.Count > 0; round++)
        {
            Assert.True(round < 20, "the two instances keep answering each other");
            var (forA, forB) = (toA.Datagrams.ToList(), toB.Datagrams.ToList());
            toA.Datagrams.Clear();
            toB.Datagrams.Clear();
            foreach (var (header, fields, payload) in forB)
            {
                b.Receive(new StackDatagram(header, fields, payload), now, new CapturingVm(), toA);
            }
            foreach (var (header, fields, payload) in forA)
            {
                a.Receive(new StackDatagram(header, fields, payload), now, new CapturingVm(), toB);
            }
        }
    }

    [Fact]
    public void Frames_RoundTripBetweenTwoInstances()
    {
        var factory = Load().Factory;
        using var a = factory.Create(Context("a", "b"));
        using var b = factory.Create(Context("b", "a"));
        Settle(a, b, 0);
        var wire = new CapturingUnderlay();
        var vm = new CapturingVm();
        var replies = new CapturingUnderlay();
        var sent = Enumerable.Range(0, 50).Select(i => Frame(46 + (i * 29), (byte)i)).ToList();
        var now = 0L;
        foreach (var frame in sent)
        {
            a.Transmit(frame, now += 1_000_000, wire);
        }
        foreach (var (header, fields, payload) in wire.Datagrams)
        {
            b.Receive(new StackDatagram(header, fields, payload), now += 1_000_000, vm, replies);
        }
        Assert.Equal(sent, vm.Frames);
        var stats = b.GetStats();
        Assert.Equal(50, stats.FramesDelivered);
        Assert.Empty(stats.Drops);
        Assert.Equal(50, a.GetStats().FramesIn);
    }

    [Fact]
    public void GarbageAndWrongTypes_AreCountedDrops_NeverExceptions()
    {
        var factory = Load().Factory;
        using var b = factory.Create(Context("b", "a"));
        var vm = new CapturingVm();
        var random = new Random(5);
        var count = 0;
        foreach (var type in Enum.GetValues<FabricPayloadType>())
        {
            for (var i = 0; i < 200; i++)
            {
                var payload = new byte[random.Next(0, 120)];
                random.NextBytes(payload);
                var fields = new byte[random.Next(0, 3) == 0 ? random.Next(1, 16) : 0];
                b.Receive(new StackDatagram(new FabricHeaderRepr(0, type, 1, (uint)i, 0, (byte)fields.Length), fields, payload), i, vm, new CapturingUnderlay());
                count++;
            }
        }
        var stats = b.GetStats();
        Assert.Equal(count, stats.DatagramsIn);
        Assert.Equal(count - stats.FramesDelivered, stats.Drops.Values.Sum());
        Assert.True(stats.Drops.Values.Sum() > 0);
    }

    [Fact]
    public void AHostThatRefusesBuffers_CostsACountedDrop()
    {
        var factory = Load().Factory;
        using var a = factory.Create(Context("a", "b"));
        using var b = factory.Create(Context("b", "a"));
        Settle(a, b, 0);
        var refusing = new CapturingUnderlay { Refuse = true };
        a.Transmit(Frame(100, 1), 0, refusing);
        a.Transmit(new byte[5], 0, refusing);
        var stats = a.GetStats();
        Assert.Equal(2, stats.FramesIn);
        Assert.Equal(2, stats.Drops.Values.Sum());
        Assert.Empty(refusing.Datagrams);
    }

    [Fact]
    public void SameInputsAndClock_GiveTheSameOutput()
    {
        Assert.Equal(Run(), Run());

        List<string> Run()
        {
            var factory = Load().Factory;
            using var a = factory.Create(Context("a", "b"));
            var wire = new CapturingUnderlay();
            for (var i = 0; i < 100; i++)
            {
                a.Transmit(Frame(100 + i, (byte)i), i * 1_000_000L, wire);
                if (a.NextTimerNanoseconds <= i * 1_000_000L)
                {
                    a.OnTimer(i * 1_000_000L, new CapturingVm(), wire);
                }
            }
            // A session nonce is random by design (a repeat would repeat keys): such control datagrams are compared by shape.
            return wire.Datagrams.Select(d => DrawsSessionNonces && d.Header.PayloadType == FabricPayloadType.StackControl
                ? $"{d.Header.PayloadType}:{d.StackFields.Length}:{d.Payload.Length}"
                : $"{d.Header.PayloadType}:{Convert.ToHexString(d.StackFields)}:{Convert.ToHexString(d.Payload)}").ToList();
        }
    }
}

public class StdIPv4Conformance : StackConformance
{
    protected override string PluginProject => Fabric.Testing.StackPlugins.StdIPv4;

    protected override string ExpectedId => "std-ipv4";
}

public class StdIPv6Conformance : StackConformance
{
    protected override string PluginProject => Fabric.Testing.StackPlugins.StdIPv6;

    protected override string ExpectedId => "std-ipv6";
}

public class FecConformance : StackConformance
{
    protected override string PluginProject => Fabric.Testing.StackPlugins.Fec;

    protected override string ExpectedId => "fec";
}

public class SecureConformance : StackConformance
{
    protected override string PluginProject => Fabric.Testing.StackPlugins.Secure;

    protected override string ExpectedId => "secure";

    protected override IReadOnlyDictionary<string, string> Configuration { get; } = new Dictionary<string, string> { ["key"] = new string('a', 64) };

    protected override bool DrawsSessionNonces => true;
}

public class ArqLowLatConformance : StackConformance
{
    protected override string PluginProject => Fabric.Testing.StackPlugins.ArqLowLat;

    protected override string ExpectedId => "arq-lowlat";
}

public class ArqBulkConformance : StackConformance
{
    protected override string PluginProject => Fabric.Testing.StackPlugins.ArqBulk;

    protected override string ExpectedId => "arq-bulk";
}
