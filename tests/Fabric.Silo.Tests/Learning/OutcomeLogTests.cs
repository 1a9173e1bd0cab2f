using Fabric.Repository;
using Fabric.Silo.Learning;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace Fabric.Silo.Tests.Learning;

public sealed class OutcomeLogTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("fabric-outcomes-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Segments_AreWrittenOnce_ReadBackInTimeOrderAcrossWriters_AndOnlyTheNewestWhenAsked()
    {
        var store = new LocalFolderStore(_folder);
        var time = new FakeTimeProvider(OutcomeGenerator.T0);
        var a = new OutcomeLog(store, time, retentionDays: 7);
        var b = new OutcomeLog(store, time, retentionDays: 7);
        var outcomes = OutcomeGenerator.Generate(30, seed: 1);
        for (var i = 0; i < 3; i++)
        {
            (i % 2 == 0 ? a : b).Append(outcomes.Skip(i * 10).Take(10));
            Assert.Equal(10, (i % 2 == 0 ? a : b).Flush());
            time.Advance(TimeSpan.FromSeconds(1));
        }
        Assert.Equal(0, a.Flush());
        Assert.Equal(3, store.List(OutcomeLog.Folder).Count());

        Assert.Equal(outcomes, a.ReadRecent(100));
        Assert.Equal(outcomes[^15..], a.ReadRecent(15));
    }

    [Fact]
    public void Retention_DeletesSegmentsOlderThanItsDays()
    {
        var store = new LocalFolderStore(_folder);
        var time = new FakeTimeProvider(OutcomeGenerator.T0);
        var log = new OutcomeLog(store, time, retentionDays: 2);
        var outcomes = OutcomeGenerator.Generate(4, seed: 1);
        foreach (var outcome in outcomes)
        {
            log.Append([outcome]);
            log.Flush();
            time.Advance(TimeSpan.FromDays(1));
        }
        // Written at days 0, 1, 2, 3; at the last write (day 3) everything before day 1 is past the retention.
        Assert.Equal(outcomes[1..], log.ReadRecent(10));
    }

    [Fact]
    public void AStoreThatFails_KeepsTheOutcomesForTheNextFlush()
    {
        var file = Path.Combine(_folder, "not-a-folder");
        File.WriteAllText(file, "");
        var log = new OutcomeLog(new LocalFolderStore(file), TimeProvider.System, 7);
        log.Append(OutcomeGenerator.Generate(5, seed: 1));
        Assert.ThrowsAny<IOException>(() => log.Flush());
        Assert.Equal(0, log.Appended);
    }

    /// <summary>
    /// A silo given no learning store logs into a temporary folder, and the folder goes when the silo's services are
    /// disposed (with the segment its last flush wrote): before, every test silo left one behind in the machine's
    /// temporary folder. A store the operator gave is never deleted. And a silo stopped a moment after it started still
    /// writes what its VMs logged: before, the flusher's last flush ran only if its loop had begun.
    /// </summary>
    [Fact]
    public async Task ASilosTemporaryLearningFolder_IsDeletedWithTheSilo_AStoreGivenIsKept()
    {
        async Task<string> RunSilo(LearningOptions? learning)
        {
            var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
            builder.Logging.ClearProviders();
            builder.UseOrleans(silo => silo
                .UseLocalhostClustering(Fabric.Testing.LoopbackPorts.Free(), Fabric.Testing.LoopbackPorts.Free(), serviceId: "fabric", clusterId: "fabric")
                .AddMemoryGrainStorage(Storage.Name)
                .AddFabricControlPlane(ClusterFixture.Selector, learning));
            using var host = builder.Build();
            await host.StartAsync(TestContext.Current.CancellationToken);
            var store = host.Services.GetRequiredService<LearningOptions>().Store;
            host.Services.GetRequiredService<OutcomeLog>().Append(OutcomeGenerator.Generate(5, seed: 3));
            await host.StopAsync(TestContext.Current.CancellationToken);
            // The flusher's last flush on stop wrote the outcomes (before, not when the stop came this soon after the start).
            Assert.Equal(5, host.Services.GetRequiredService<OutcomeLog>().Appended);
            Assert.NotEmpty(Directory.GetFiles(store, "*", SearchOption.AllDirectories));
            return store;
        }

        var temporary = await RunSilo(null);
        Assert.StartsWith(Path.GetTempPath(), temporary);
        Assert.False(Directory.Exists(temporary), $"{temporary} is still there");
        var given = await RunSilo(new LearningOptions(_folder, TrainEverySeconds: 0));
        Assert.Equal(_folder, given);
        Assert.NotEmpty(Directory.GetFiles(_folder, "*", SearchOption.AllDirectories));
    }
}
