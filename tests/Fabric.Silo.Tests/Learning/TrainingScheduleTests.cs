using Fabric.Silo.Learning;

namespace Fabric.Silo.Tests.Learning;

public class TrainingScheduleTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 5, 0, 0, 0, TimeSpan.Zero);

    [Fact]
    public void ATrainingThatTook3s_AtOnePercent_PutsTheNextScheduledOneOffFor5Minutes()
    {
        var schedule = new TrainingSchedule(0.01);
        Assert.True(schedule.Due(T0));
        schedule.Took(T0, T0.AddSeconds(3));
        Assert.False(schedule.Due(T0.AddSeconds(60)));
        Assert.False(schedule.Due(T0.AddSeconds(299)));
        Assert.True(schedule.Due(T0.AddSeconds(300)));
        // A shorter training next: the schedule follows the last one, so the log's growth is what spaces them out.
        schedule.Took(T0.AddSeconds(300), T0.AddSeconds(300.5));
        Assert.True(schedule.Due(T0.AddSeconds(350)));
    }

    [Fact]
    public void AShareOfOne_PutsNothingOff()
    {
        var schedule = new TrainingSchedule(1);
        schedule.Took(T0, T0.AddSeconds(30));
        Assert.True(schedule.Due(T0.AddSeconds(30)));
    }
}
