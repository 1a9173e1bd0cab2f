using Fabric.Silo.Selection;

namespace Fabric.Silo.Tests.Selection;

/// <summary>One instance of values the control plane repeats (see <see cref="Shared{T}"/>).</summary>
public class SharedTests
{
    [Fact]
    public void EqualValues_AreOneInstance_AndAValueIsNeverTradedForAnotherThatDiffers()
    {
        var first = new string('x', 40) + "fec";
        var again = new string('x', 40) + "fec";
        Assert.NotSame(first, again);
        // The table is the process's: a selector test running beside this one may take the slot between the two calls
        // (one chance in 65,536 per decision), so the pair is tried a few times; a table that never shares fails all.
        Assert.Contains(Enumerable.Range(0, 5), _ => ReferenceEquals(Shared<string>.Of(first), Shared<string>.Of(again)));
        var score = new CandidateScore("fec", 0.8123, "model v3: 0.81 ± 0.05", 0.05, "model v3");
        Assert.Contains(Enumerable.Range(0, 5), _ => ReferenceEquals(Shared<CandidateScore>.Of(score), Shared<CandidateScore>.Of(score with { })));
        // Far more distinct values than slots, each asked for twice: whatever the table kept or lost, every answer equals
        // what was asked for.
        var random = new Random(4);
        for (var i = 0; i < 4 * Shared<string>.Slots; i++)
        {
            var text = $"reason {random.Next(200_000)}";
            Assert.Equal(text, Shared<string>.Of(text));
            Assert.Equal(text, Shared<string>.Of(string.Concat("reason ", text.AsSpan(7))));
        }
    }
}
