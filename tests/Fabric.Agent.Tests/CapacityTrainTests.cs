using System.Buffers.Binary;
using Fabric.Agent.Switching;

namespace Fabric.Agent.Tests;

/// <summary>
/// How the receiving end of a capacity train measures the path's bottleneck: from when the host received each member,
/// when the underlay can say, so a train read late and all at once by a busy receive thread is not taken for a faster link.
/// </summary>
public sealed class CapacityTrainTests
{
    private const int Members = 16;

    [Fact]
    public void ATrainReadAllAtOnce_IsMeasuredByWhenItsMembersArrived()
    {
        // 16 members of 1,200 bytes, one every millisecond on the wire (9.6 Mbit/s), all read in the same instant.
        var monitor = new PathMonitor();
        var readAt = 5_000_000_000L;
        for (var i = 0; i < Members; i++)
        {
            Assert.True(monitor.OnTrainMember(Member(7, i), 1200, readAt, arrival: 1_000_000_000L + (i * 1_000_000L)));
        }

        Assert.Equal(9_600, AnsweredKbps(monitor, readAt));
    }

    [Fact]
    public void WithoutArrivalTimes_ThePathsClockSpacesTheTrain_AndOneInstantMeasuresNothing()
    {
        var spaced = new PathMonitor();
        for (var i = 0; i < Members; i++)
        {
            spaced.OnTrainMember(Member(7, i), 1200, 5_000_000_000L + (i * 2_000_000L));
        }
        Assert.Equal(4_800, AnsweredKbps(spaced, 6_000_000_000L));

        // All at once and no arrival times: no rate at all rather than an infinite one.
        var batch = new PathMonitor();
        for (var i = 0; i < Members; i++)
        {
            batch.OnTrainMember(Member(7, i), 1200, 5_000_000_000L);
        }
        Assert.False(batch.AnswersTrains(5_000_000_000L));
    }

    [Fact]
    public void AMemberWithoutAnArrivalTime_TimesTheWholeTrainByThePathsClock()
    {
        // Arrival times that would say 96 Mbit/s, one member without: the clock's spacing (4.8 Mbit/s) is taken, never a mix.
        var monitor = new PathMonitor();
        for (var i = 0; i < Members; i++)
        {
            monitor.OnTrainMember(Member(7, i), 1200, 5_000_000_000L + (i * 2_000_000L), arrival: i == 3 ? 0 : 1_000_000_000L + (i * 100_000L));
        }
        Assert.Equal(4_800, AnsweredKbps(monitor, 6_000_000_000L));
    }

    /// <summary>
    /// The sending end: a train sized for a rate the link no longer has (300 Mbit/s, now 13 under a queue a VM keeps full)
    /// loses most of its members and gets no answer; the next is a quarter of its size, down to the shortest, and then
    /// the longest again (a short train on a fast link arrives too close together to time), until one is answered and the
    /// rate it measured sizes the next again.
    /// </summary>
    [Fact]
    public void ATrainThatGotNoAnswer_IsFollowedByOneOfAnotherSize()
    {
        var sender = new Sender();
        int Send() => sender.After(6);
        void Answer(long kbps) => sender.Answer(kbps);

        // A peer that never answered a train (an agent that predates them) keeps getting short ones.
        Assert.Equal(2 * PathMonitor.MinTrainMembers, Send());
        Assert.Equal(2 * PathMonitor.MinTrainMembers, Send());
        Answer(300_000);
        Assert.Equal(PathMonitor.MaxTrainMembers, Send());
        Assert.Equal(12, Send());
        Assert.Equal(PathMonitor.MinTrainMembers, Send());
        // The shortest unanswered too: the longest again (a fast link times only a long train), and round once more.
        Assert.Equal(PathMonitor.MaxTrainMembers, Send());
        Assert.Equal(12, Send());
        Answer(13_380);
        Assert.Equal(6, Send());
        Answer(13_380);
        Assert.Equal(6, Send());
    }

    /// <summary>
    /// When trains come: every 5 s, but a second after one that followed an unanswered train, and twice a second apart
    /// after one that measured a rate more than twice off the last (the path's conditions take a new bottleneck rate from
    /// three trains in a row: the learning benchmark's 300 → 13 Mbit/s link was taken for 300 for 24 s of a 25 s phase).
    /// </summary>
    [Fact]
    public void TrainsComeASecondApart_WhileOneGotNoAnswer_OrARateChangedByMoreThanTwice()
    {
        var sender = new Sender();
        int After(double seconds) => sender.After(seconds);
        void Answer(long kbps) => sender.Answer(kbps);

        Assert.Equal(8, After(6));
        Answer(300_000);
        Assert.Equal(0, After(1.1));
        Assert.Equal(48, After(4.5));
        // No answer: the next after its period, then a second apart.
        Assert.Equal(0, After(1.1));
        Assert.Equal(12, After(4.5));
        Assert.Equal(4, After(1.1));
        // 13 Mbit/s, far off 300: two more a second apart confirm it, then every period again.
        Answer(13_380);
        Assert.Equal(6, After(1.1));
        Answer(13_380);
        Assert.Equal(6, After(1.1));
        Answer(13_380);
        Assert.Equal(0, After(1.1));
        Assert.Equal(6, After(4.5));
        // A rate that keeps flipping (a noisy bottleneck, members delayed on the underlay) is confirmed at most once a
        // period: 300 again is confirmed, the flips back within 5 s of that are not.
        Answer(300_000);
        Assert.Equal(48, After(1.1));
        Answer(13_380);
        Assert.Equal(6, After(1.1));
        Answer(300_000);
        Assert.Equal(0, After(1.1));
        Assert.Equal(48, After(4.5));
    }

    /// <summary>A path's sending end on a clock the test moves: sends each train that is due, and answers the last one sent as its peer would.</summary>
    private sealed class Sender
    {
        private readonly PathMonitor _monitor = new();
        private long _now;
        private long _sent;

        public Sender() => _monitor.TrainDue(_now); // the first comes within one period of this

        /// <summary>Moves the clock on by <paramref name="seconds"/>; returns how many members the train then due had (0: none due).</summary>
        public int After(double seconds)
        {
            _now += (long)(seconds * 1e9);
            var members = _monitor.TrainDue(_now);
            var member = new byte[PathMonitor.TrainMemberLength];
            for (var i = 0; i < members; i++)
            {
                _monitor.WriteTrainMember(member, i, members);
            }
            _sent = members > 0 ? BinaryPrimitives.ReadInt64BigEndian(member) : _sent;
            return members;
        }

        /// <summary>The peer's probe reply a millisecond later, with the last train sent measured at <paramref name="kbps"/>.</summary>
        public void Answer(long kbps)
        {
            var reply = new byte[PathMonitor.TrainReplyLength];
            _monitor.WriteProbe(reply, _now);
            BinaryPrimitives.WriteInt64BigEndian(reply.AsSpan(32), _sent);
            BinaryPrimitives.WriteInt64BigEndian(reply.AsSpan(40), kbps);
            _monitor.OnReply(reply, _now + 1_000_000);
        }
    }

    private static byte[] Member(long train, int index)
    {
        var payload = new byte[PathMonitor.TrainMemberLength];
        BinaryPrimitives.WriteInt64BigEndian(payload, train);
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(8), (ushort)index);
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(10), Members);
        return payload;
    }

    /// <summary>The rate the monitor answers the peer's probes with (its train reply), in kbit/s.</summary>
    private static long AnsweredKbps(PathMonitor monitor, long now)
    {
        Assert.True(monitor.AnswersTrains(now), "no train was measured");
        var reply = new byte[PathMonitor.TrainReplyLength];
        monitor.Answer(reply, PathMonitor.TrainReplyLength, new byte[PathMonitor.ProbeLength], 0, 0);
        return BinaryPrimitives.ReadInt64BigEndian(reply.AsSpan(40));
    }
}
