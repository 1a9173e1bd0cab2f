using Fabric.Agent.Switching;
using Fabric.Stacks;

namespace Fabric.Agent.Tests;

/// <summary>
/// The slot table as a unit: no path, no gate, no clock, no stack that runs. Each test states a rule of the slot
/// protocol the paths and the switch rely on, at the table where it is decided.
/// </summary>
public sealed class SlotTableTests
{
    private const long Second = 1_000_000_000;

    /// <summary>An instance no one calls: the table only holds it.</summary>
    private sealed class Held : IStack
    {
        public long NextTimerNanoseconds => long.MaxValue;

        public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay) => throw new InvalidOperationException("the table never calls a stack");

        public void Receive(in StackDatagram datagram, long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay) => throw new InvalidOperationException("the table never calls a stack");

        public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay) => throw new InvalidOperationException("the table never calls a stack");

        public StackStats GetStats() => throw new InvalidOperationException("the table never calls a stack");

        public StackState ExportState() => throw new InvalidOperationException("the table never calls a stack");

        public void ApplyPolicy(StackPolicy policy) => throw new InvalidOperationException("the table never calls a stack");

        public void Dispose()
        {
        }
    }

    /// <summary>host-a's table towards host-b, with std-ipv4 transmitting in slot 0 and the fallback open.</summary>
    private static SlotTable Table()
    {
        var table = new SlotTable("host-a", "host-b");
        table.Place(0, new Held(), "std-ipv4", encrypts: false, openId: 1, peerOpened: false, now: 0);
        table.Place(SlotTable.Fallback, new Held(), "std-ipv4", encrypts: false, openId: 2, peerOpened: false, now: 0);
        table.Commit(0, 0, fallback: false);
        return table;
    }

    [Fact]
    public void TheEnds_SplitTheSlotsByHostId_AndNeitherOwnsTheFirstOrTheFallback()
    {
        var a = new SlotTable("host-a", "host-b");
        var b = new SlotTable("host-b", "host-a");
        for (var slot = 0; slot < 256; slot++)
        {
            // Every slot of 1..254 is exactly one end's, and what one end opens the other takes as the peer's.
            Assert.Equal(slot is > 0 and < 255, a.IsOwn(slot) ^ b.IsOwn(slot));
            Assert.Equal(a.IsOwn(slot), b.IsPeer(slot));
            Assert.Equal(b.IsOwn(slot), a.IsPeer(slot));
        }
        Assert.True(a.IsOwn(1) && a.IsOwn(127) && !a.IsOwn(128));
        Assert.True(b.IsOwn(128) && b.IsOwn(254));
        Assert.Equal(1, a.FreeOwnSlot());
        Assert.Equal(128, b.FreeOwnSlot());
    }

    [Fact]
    public void ABinding_NeedsAnOpenSlot_AndTheSlotItLeaves_DrainsOnlyWhenNothingElseUsesIt()
    {
        var table = Table();
        var refused = Assert.Throws<InvalidOperationException>(() => table.Bind("vm1", 5, 10 * Second));
        Assert.Contains("host-b", refused.Message);
        Assert.Contains("slot 5", refused.Message);
        Assert.Equal(-1, table.BindingOf("vm1").Slot);

        table.Place(5, new Held(), "fec", encrypts: false, openId: 7, peerOpened: false, now: 0);
        Assert.Equal(-1, table.Bind("vm1", 5, 10 * Second));
        Assert.Equal(-1, table.Bind("vm2", 5, 10 * Second));
        Assert.Equal((5, "fec"), table.BindingOf("vm1"));

        // vm1 leaves slot 5, which vm2 still uses: it does not drain.
        Assert.Equal(5, table.Bind("vm1", -1, 10 * Second));
        Assert.Empty(table.Due(100 * Second, long.MaxValue));
        // vm2 leaves too: it drains until its deadline, then is due for closing, and not before.
        table.Forget("vm2", 10 * Second);
        Assert.Empty(table.Due(10 * Second - 1, long.MaxValue));
        Assert.Equal([(5, false)], table.Due(10 * Second, long.MaxValue));
        // A VM binding to it again stops the drain.
        table.Bind("vm3", 5, 0);
        Assert.Empty(table.Due(100 * Second, long.MaxValue));
    }

    [Fact]
    public void ASlotThePeerOpened_IsDueForClosingWhenIdle_UnlessItReceivesOrSomethingSendsOnIt()
    {
        var table = Table();
        table.Place(200, new Held(), "secure", encrypts: true, openId: 42, peerOpened: true, now: 0);
        table.Place(3, new Held(), "fec", encrypts: false, openId: 43, peerOpened: false, now: 0);
        Assert.Empty(table.Due(5 * Second, 5 * Second));
        // Received at 4 s: idle counts from there. This end's own slot 3 is never idle (it is closed by draining).
        table.Touch(200, 4 * Second);
        Assert.Empty(table.Due(9 * Second, 5 * Second));
        Assert.Equal([(200, true)], table.Due(9 * Second + 1, 5 * Second));
        // A VM sending through it keeps it.
        table.Bind("vm1", 200, 0);
        Assert.Empty(table.Due(100 * Second, 5 * Second));
    }

    [Fact]
    public void AnOpenRequest_ForTheInstanceAlreadyThere_ChangesNothing_ButAnotherOpenIdIsThePeersNewInstance()
    {
        var table = Table();
        table.Place(200, new Held(), "fec", encrypts: false, openId: 42, peerOpened: true, now: 0);
        Assert.True(table.Unchanged("fec", 200, 42));
        // The peer restarted or reopened the slot: its instance is new, so ours must be too.
        Assert.False(table.Unchanged("fec", 200, 43));
        Assert.False(table.Unchanged("arq-bulk", 200, 42));

        // A slot this end opened itself with the same stack (a swap both ends prepare) is adopted as the peer's.
        table.Place(9, new Held(), "fec", encrypts: false, openId: 5, peerOpened: false, now: 0);
        table.DrainStack("fec", 10 * Second);
        Assert.True(table.Unchanged("fec", 9, 77));
        Assert.Equal(77ul, table.OpenIdOf(9));
        // Adopted, it drains no more; asked again with another id, it is the peer's, so that is a new instance.
        Assert.DoesNotContain(table.Due(100 * Second, long.MaxValue), due => due.Slot == 9 && !due.Idle);
        Assert.False(table.Unchanged("fec", 9, 78));
    }

    [Fact]
    public void FramesToAConfidentialVm_BorrowAnEncryptingSlot_OwnFirst_NeverOneDrainingFaultedOrUnusable()
    {
        var table = Table();
        Assert.Null(table.EncryptingSlot(_ => true));
        table.Place(200, new Held(), "secure", encrypts: true, openId: 42, peerOpened: true, now: 0);
        Assert.Equal(200, table.EncryptingSlot(_ => true));
        table.Place(7, new Held(), "secure", encrypts: true, openId: 8, peerOpened: false, now: 0);
        Assert.Equal(7, table.EncryptingSlot(_ => true));
        table.MarkTimerFaulted(7);
        Assert.Equal(200, table.EncryptingSlot(_ => true));
        Assert.Null(table.EncryptingSlot(stack => stack != "secure"));
        table.DrainStack("secure", 10 * Second);
        Assert.Null(table.EncryptingSlot(_ => true));
    }

    [Fact]
    public void ACommit_MovesTransmission_AndOnlyADeliberateOneChangesWhetherThePathMustEncrypt()
    {
        var table = Table();
        Assert.Throws<InvalidOperationException>(() => table.Commit(9, 0, fallback: false));
        table.Place(9, new Held(), "secure", encrypts: true, openId: 8, peerOpened: false, now: 0);
        Assert.Equal(0, table.Commit(9, 10 * Second, fallback: false));
        Assert.True(table.SealedPath);
        Assert.Equal(9, table.TransmitSlot);
        Assert.Equal([(0, false)], table.Due(10 * Second, long.MaxValue));
        // secure failed: the path falls back to std, and what it promised still holds (frames that must be encrypted drop).
        Assert.Equal(9, table.Commit(SlotTable.Fallback, 20 * Second, fallback: true));
        Assert.True(table.SealedPath);
        Assert.Equal("std-ipv4", table.StackIn(table.TransmitSlot));
    }

    [Fact]
    public void ARemovedSlot_ForgetsEverything_AndVmsBoundToItTransmitOnThePathsSlot()
    {
        var table = Table();
        table.Place(9, new Held(), "secure", encrypts: true, openId: 8, peerOpened: true, now: 0);
        table.MarkTimerFaulted(9);
        table.Bind("vm1", 9, 0);
        var (_, stack) = table.Remove(9);
        Assert.Equal("secure", stack);
        Assert.Null(table.StackIn(9));
        Assert.False(table.Encrypts(9) || table.TimerFaulted(9));
        Assert.Equal(0ul, table.OpenIdOf(9));
        Assert.Equal((-1, null), table.BindingOf("vm1"));
        Assert.Equal(("std-ipv4", 0), table.VmBindings()["vm1"]);
    }

    [Fact]
    public void AFreeSlot_IsNeverTheFallback_NorALeadersSlotWhileAnotherIsFree_AndNoneIsFreeWhenAllAreTaken()
    {
        var table = Table();
        var order = Enumerable.Range(1, SlotTable.Fallback - 1).OrderBy(SlotTable.IsLeaders).ToList();
        Assert.Equal([.. Enumerable.Range(1, 63), .. Enumerable.Range(128, 64)], order.Take(127));
        foreach (var slot in order)
        {
            Assert.Equal(slot, table.FreeSlot());
            table.Place(slot, new Held(), "fec", encrypts: false, openId: (ulong)slot, peerOpened: false, now: 0);
        }
        Assert.Equal(-1, table.FreeSlot());
        Assert.Equal(-1, table.FreeOwnSlot());
        Assert.Equal(1, table.OwnSlotOf("fec"));
        Assert.Equal(256, table.Stacks().Count);
    }

    [Fact]
    public void ThePathSequence_CountsGapsAndReordering_AcrossTheWrapOfItsCounter()
    {
        var sequence = new PathSequence();
        Assert.Equal(0, sequence.Gaps);
        foreach (var n in new uint[] { uint.MaxValue - 2, uint.MaxValue, uint.MaxValue - 1, 1, 2, 5 })
        {
            sequence.Track(n);
        }
        // From 2^32 - 3 to 5 after the wrap is 9 numbers; 6 arrived (one reordered), 0, 3 and 4 are missing.
        Assert.Equal(9, sequence.Span);
        Assert.Equal(6, sequence.Received);
        Assert.Equal(3, sequence.Gaps);
        // From before the first: not counted.
        sequence.Track(uint.MaxValue - 10);
        Assert.Equal(6, sequence.Received);
    }
}
