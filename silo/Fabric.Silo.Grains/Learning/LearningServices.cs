using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo.Learning;

/// <summary>
/// Keeps this silo's scorer on the version the learner has in service: every few seconds it asks the learner grain,
/// and loads a new version from the learning store when there is one. Every silo does the same, so all score with the
/// same version within seconds of an adoption.
/// </summary>
public sealed class ModelRefresher(IGrainFactory grains, LearnedScorer scorer, OutcomeLog log, ILogger<ModelRefresher> logger) : BackgroundService
{
    public static readonly TimeSpan Period = TimeSpan.FromSeconds(3);

    /// <summary>One refresh: returns the version scoring now.</summary>
    public async Task<long> RefreshAsync()
    {
        var view = await grains.GetGrain<ILearnerGrain>(ILearnerGrain.Key).GetAsync();
        var wanted = view.InService?.Version ?? 0;
        if (wanted != scorer.Version)
        {
            var model = wanted == 0 ? null : await Task.Run(() => UtilityModel.Load(log.Store, wanted));
            scorer.Use(model, view.LearningEnabled);
            LearnerLog.Installed(logger, model?.Version ?? 0, view.LearningEnabled ? "on" : "off");
        }
        else if (view.LearningEnabled != scorer.Enabled)
        {
            scorer.Use(scorer.Model, view.LearningEnabled);
            LearnerLog.Installed(logger, scorer.Version, view.LearningEnabled ? "on" : "off");
        }
        return scorer.Version;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await RefreshAsync();
            }
            catch (Exception e) when (e is not OperationCanceledException || !stoppingToken.IsCancellationRequested)
            {
                // The silo is still starting, or storage is away: the scorer keeps what it has.
                LearnerLog.RefreshFailed(logger, e.Message);
            }
            try
            {
                await Task.Delay(Period, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }
}

/// <summary>Writes the outcomes this silo's VMs logged as a segment every couple of seconds, and once more on stop.</summary>
public sealed class OutcomeLogFlusher(OutcomeLog log, ILogger<OutcomeLogFlusher> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(2), stoppingToken);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            Flush();
        }
    }

    /// <summary>The last flush, here rather than at the end of <see cref="ExecuteAsync"/>: a silo stopped before the
    /// service's loop had begun never ran it (the loop is started on the thread pool with the stopping token, and not at
    /// all once that is cancelled), and what its VMs logged was lost.</summary>
    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        Flush();
    }

    private void Flush()
    {
        try
        {
            log.Flush();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Kept for the next flush (a store that is away), or dropped with the reason logged: a background service that
            // throws stops the whole host, and a silo must not stop over its learning log.
            LearnerLog.LogFailed(logger, e.Message);
        }
    }
}

/// <summary>
/// Deletes the temporary learning folder of a silo configured without a learning store (<see cref="LearningOptions.Temporary"/>)
/// once its services are disposed, after the outcome log's last flush: before, every test silo left one behind (a
/// machine that ran the tests for a week had hundreds in its temporary folder).
/// </summary>
internal sealed class TemporaryLearningFolder(string path) : IHostedService, IDisposable
{
    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose()
    {
        try
        {
            Directory.Delete(path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Gone already, or still held: nothing to keep, nothing to do.
        }
    }
}
