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

        // All at once and no arrival times: no rate at all rather than an infinite one, answered as 0 (too close together
        // to time: the sender's next train is its longest).
        var batch = new PathMonitor();
        for (var i = 0; i < Members; i++)
        {
            batch.OnTrainMember(Member(7, i), 1200, 5_000_000_000L);
        }
        Assert.Equal(0, AnsweredKbps(batch, 5_000_000_000L));
        // Half of them at once is no answer yet: the rest may still come spread out.
        var half = new PathMonitor();
        for (var i = 0; i < Members / 2; i++)
        {
            half.OnTrainMember(Member(7, i), 1200, 5_000_000_000L);
        }
        Assert.False(half.AnswersTrains(5_000_000_000L));
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

    /// <summary>
    /// A 150 Mbit/s link turns into a cellular trace's 36 kbit/s (the learning benchmark's Verizon EVDO phase, where the
    /// 48-member train sized for the old rate, 60 KB, held every answer behind it for 13 s and gave each stack in turn a
    /// 13-s p99). The probes' round trip rose from 1 to 300 ms, so the old rate no longer holds: the next train is the
    /// shortest; unanswered, the trains back off (10, 20, 40 s apart, up to a minute) and stay the shortest; answered, the
    /// 36 kbit/s they measured spaces them so they take at most a twentieth of the link.
    /// </summary>
    [Fact]
    public void WhereTheProbesSayTheLinkSlowed_TrainsAreTheShortest_BackOff_AndTakeAtMostATwentiethOfTheSlowLink()
    {
        var sender = new Sender();
        Assert.Equal(8, sender.After(6));
        sender.Answer(150_000);
        Assert.Equal(PathMonitor.MaxTrainMembers, sender.After(5.6));
        sender.Answer(150_000);

        // One probe held up is no change of the link (the least of the last five round trips is taken)...
        sender.Probe(rttMs: 300);
        Assert.Equal(PathMonitor.MaxTrainMembers, sender.After(5.6));
        sender.Answer(150_000);
        // ...five in a row are.
        for (var i = 0; i < 5; i++)
        {
            sender.Probe(rttMs: 300);
        }
        Assert.Equal(PathMonitor.MinTrainMembers, sender.After(5.6));
        var sent = new List<(double At, int Members)>();
        for (var second = 1; second <= 120; second++)
        {
            sender.Probe(rttMs: 300);
            if (sender.After(1) is > 0 and var members)
            {
                sent.Add((second, members));
            }
        }
        Assert.All(sent, s => Assert.Equal(PathMonitor.MinTrainMembers, s.Members));
        // The first a period on (±10 %: the one before it was answered), then 10, 20 and 40 s apart.
        Assert.InRange(sent[0].At, 5, 6);
        Assert.Equal([10, 20, 40], sent.Skip(1).Select((s, i) => s.At - sent[i].At));

        // Answered at last: 36 kbit/s. Four members are 1.07 s of that link, so trains come at least 21.3 s apart, the
        // confirmations of a rate so far off the last included (elsewhere a second apart).
        sender.Answer(36, rttMs: 300);
        var answered = new List<double>();
        for (var second = 1; second <= 90; second++)
        {
            sender.Probe(rttMs: 300);
            if (sender.After(1) is > 0 and var members)
            {
                Assert.Equal(PathMonitor.MinTrainMembers, members);
                answered.Add(second);
                sender.Answer(36, rttMs: 300);
            }
        }
        Assert.True(answered.Count >= 3, $"{answered.Count} trains in 90 s");
        Assert.All(answered.Skip(1).Select((at, i) => at - answered[i]), gap => Assert.InRange(gap, 21, 30));

        // The link turns fast again (1 ms): the shortest train, sized for 36 kbit/s, arrives too close together to time
        // and the peer answers so (0); the next is the longest, which measures the link.
        for (var i = 0; i < 5; i++)
        {
            sender.Probe(rttMs: 1);
        }
        Assert.Equal(PathMonitor.MinTrainMembers, sender.After(30));
        sender.Answer(0);
        Assert.Equal(PathMonitor.MaxTrainMembers, sender.After(30));
        sender.Answer(300_000);
        Assert.Equal(PathMonitor.MaxTrainMembers, sender.After(5.6));
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

        /// <summary>The peer's probe reply <paramref name="rttMs"/> later, with the last train sent measured at <paramref name="kbps"/>.</summary>
        public void Answer(long kbps, double rttMs = 1)
        {
            var reply = new byte[PathMonitor.TrainReplyLength];
            _monitor.WriteProbe(reply, _now);
            BinaryPrimitives.WriteInt64BigEndian(reply.AsSpan(32), _sent);
            BinaryPrimitives.WriteInt64BigEndian(reply.AsSpan(40), kbps);
            _monitor.OnReply(reply, _now + (long)(rttMs * 1e6));
        }

        /// <summary>A probe, answered <paramref name="rttMs"/> later without a train's rate.</summary>
        public void Probe(double rttMs)
        {
            var reply = new byte[PathMonitor.ReplyLength];
            _monitor.WriteProbe(reply, _now);
            _monitor.OnReply(reply, _now + (long)(rttMs * 1e6));
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
