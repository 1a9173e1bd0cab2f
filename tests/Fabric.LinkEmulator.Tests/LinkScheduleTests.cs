using Fabric.LinkEmulator;
using Fabric.Testing;

namespace Fabric.LinkEmulator.Tests;

/// <summary>The schedule format of <c>bench/learning.sh</c>: what it accepts, and that every refusal names file, line and word.</summary>
public sealed class LinkScheduleTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("fabric-sched-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string Write(string name, string text)
    {
        var path = Path.Combine(_folder, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void APhasePerLine_CommentsAndBlankLinesIgnored_MissingSettingsAreTheCleanDefault()
    {
        var schedule = LinkSchedule.Load(Write("wan.sched", """
            # a comment line
            30 delay=45ms jitter=2ms loss=1% rate=50mbit queue=400 | delay=45ms   # the reverse is clean but for its delay

            7.5 ge=0.005,0.25 | 
            """));
        Assert.Equal("wan", schedule.Name);
        Assert.Equal(2, schedule.Phases.Count);
        var first = schedule.Phases[0];
        Assert.Equal(2, first.Line);
        Assert.Equal(TimeSpan.FromSeconds(30), first.Duration);
        Assert.Equal(TimeSpan.FromMilliseconds(45), first.Forward.Delay);
        Assert.Equal(0.01, first.Forward.LossRate, 9);
        Assert.Equal(50_000_000, first.Forward.RateBitsPerSecond);
        Assert.Equal(400, first.Forward.QueuePackets);
        Assert.Equal(TimeSpan.FromMilliseconds(45), first.Reverse.Delay);
        Assert.Equal(0, first.Reverse.LossRate);
        Assert.Equal(0, first.Reverse.RateBitsPerSecond);
        var second = schedule.Phases[1];
        Assert.Equal(4, second.Line);
        Assert.Equal(TimeSpan.FromSeconds(7.5), second.Duration);
        Assert.Equal(new GilbertElliott(0.005, 0.25), second.Forward.BurstLoss);
        // The second phase does not inherit the first one's delay: what it leaves out is clean.
        Assert.Equal(TimeSpan.Zero, second.Forward.Delay);
        Assert.Equal(LinkProfile.Clean, second.Reverse);
        Assert.Equal(TimeSpan.FromSeconds(37.5), schedule.Duration);
        // Steady links: a measurement of a few seconds stands for the phase (one that plays a trace does not).
        Assert.False(first.VariesInTime);
        Assert.False(second.VariesInTime);
        // What the emulator is sent resets every setting first, so the previous phase never leaks into this one.
        var words = second.EmulatorWords(forward: true);
        Assert.Equal(LinkProfile.Clean.Apply(words), second.Forward);
        Assert.Equal(LinkProfile.Clean.Apply(["delay=45ms", "rate=9mbit"]).Apply(words), second.Forward);
    }

    [Fact]
    public void ATracePath_IsRelativeToTheSchedulesFolder()
    {
        var traces = Directory.CreateDirectory(Path.Combine(_folder, "traces")).FullName;
        File.Copy(TestData.PathOf("mahimahi", "Verizon-LTE-short.up"), Path.Combine(traces, "lte.up"));
        var schedule = LinkSchedule.Load(Write("cell.sched", "10 delay=20ms trace=traces/lte.up | trace=traces/lte.up\n"));
        var phase = Assert.Single(schedule.Phases);
        Assert.NotNull(phase.Forward.Trace);
        Assert.Contains($"trace={Path.Combine(traces, "lte.up")}", phase.ForwardSettings);
        Assert.True(phase.VariesInTime);
        // A trace one way is enough for the link to change within the phase.
        Assert.True(LinkSchedule.Load(Write("half.sched", "10 delay=20ms | trace=traces/lte.up\n")).Phases[0].VariesInTime);
    }

    [Fact]
    public void TheCommittedSchedules_AllParse_AndTrainingAndEvaluationShareNoName()
    {
        var root = Path.Combine(RepositoryRoot.Directory, "bench", "schedules");
        var train = LinkSchedule.LoadAll(Path.Combine(root, "train"));
        var evaluation = LinkSchedule.LoadAll(Path.Combine(root, "eval"));
        Assert.NotEmpty(train);
        Assert.NotEmpty(evaluation);
        Assert.Empty(train.Select(s => s.Name).Intersect(evaluation.Select(s => s.Name)));
        // Some of each come from the recorded traces of the shared test data.
        Assert.Contains(train.SelectMany(s => s.Phases), p => p.Forward.Trace is not null);
        Assert.Contains(evaluation.SelectMany(s => s.Phases), p => p.Forward.Trace is not null);
    }

    [Theory]
    [InlineData("30 delay=10ms\n", 1, "30 delay=10ms", "no '|'")]
    [InlineData("# fine\n30 | \n30 a | b | c\n", 3, "30 a | b | c", "exactly one '|'")]
    [InlineData("thirty delay=1ms | \n", 1, "thirty", "positive number of seconds")]
    [InlineData("0 | \n", 1, "'0'", "positive number of seconds")]
    [InlineData("-5 | \n", 1, "'-5'", "positive number of seconds")]
    [InlineData("NaN | \n", 1, "'NaN'", "positive number of seconds")]
    [InlineData("90000 | \n", 1, "'90000'", "at most 86400 s")]
    [InlineData(" | delay=1ms\n", 1, "the phase's length", "missing")]
    [InlineData("\n\n10 delay=1ms | dealy=2ms\n", 3, "'dealy=2ms'", "Unknown setting 'dealy'")]
    [InlineData("10 delay=1ms loss=150% | \n", 1, "'loss=150%'", "outside 0–100%")]
    [InlineData("10 delay | \n", 1, "'delay'", "not key=value")]
    [InlineData("10 delay= | \n", 1, "'delay='", "not key=value")]
    [InlineData("10 rate=50 mbit | \n", 1, "'rate=50'", "rate")]
    [InlineData("10 delay=1ms delay=2ms | \n", 1, "'delay=2ms'", "set twice")]
    [InlineData("10 trace=missing.up | \n", 1, "'trace=missing.up'", "trace")]
    public void AMalformedLine_IsRefused_NamingTheFileTheLineAndTheWord(string text, int line, string word, string why)
    {
        var path = Write("bad.sched", text);
        var e = Assert.Throws<FormatException>(() => LinkSchedule.Load(path));
        Assert.StartsWith($"{path}:{line}: ", e.Message, StringComparison.Ordinal);
        Assert.Contains(word, e.Message, StringComparison.Ordinal);
        Assert.Contains(why, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AFileWithoutPhases_OrNotASchedule_OrAFolderWithoutOne_IsRefusedByName()
    {
        var empty = Write("empty.sched", "# nothing but a comment\n\n");
        Assert.Equal($"{empty}: holds no phase", Assert.Throws<FormatException>(() => LinkSchedule.Load(empty)).Message);
        var wrong = Write("phases.txt", "10 | \n");
        Assert.Contains(".sched", Assert.Throws<FormatException>(() => LinkSchedule.Load(wrong)).Message, StringComparison.Ordinal);
        var missing = Path.Combine(_folder, "nope.sched");
        Assert.Equal($"{missing}: no such schedule file", Assert.Throws<FormatException>(() => LinkSchedule.Load(missing)).Message);
        var folder = Directory.CreateDirectory(Path.Combine(_folder, "none")).FullName;
        Assert.Equal($"{folder}: holds no *.sched file", Assert.Throws<FormatException>(() => LinkSchedule.LoadAll(folder)).Message);
    }
}
