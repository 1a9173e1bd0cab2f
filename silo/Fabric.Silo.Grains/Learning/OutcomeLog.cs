using System.Globalization;
using System.Text;
using System.Text.Json;
using Fabric.Repository;

namespace Fabric.Silo.Learning;

/// <summary>Where the learner keeps its outcome log and model versions, and for how long outcomes are kept.</summary>
/// <param name="Store">A folder, or blob:CONTAINER (connection string in FABRIC_BLOB_CONNECTION_STRING).</param>
/// <param name="RetentionDays">Outcome segments older than this are deleted.</param>
/// <param name="TrainEverySeconds">How often the learner retrains when new outcomes arrived (0: only on demand).</param>
/// <param name="MinOutcomes">Fewer outcomes than this: no training; the prior decides.</param>
/// <param name="MinSupport">Fewer training outcomes near a context than this (same stack and workload, similar loss and
/// RTT): the prior decides there, not the model.</param>
/// <param name="TrainingShare">The most of one core scheduled trainings take on average (0–1; 1: no limit): a training
/// that took T seconds, from reading the log to judging the candidate, puts off the next scheduled one until T / share
/// seconds after it began. A training reads up to 200,000 outcomes, so its time grows with the log while the schedule
/// stays put; with a share, trainings space out as the log grows and their cost follows the outcome rate instead.
/// Trainings on demand are not put off.</param>
public sealed record LearningOptions(string Store, int RetentionDays = 7, int TrainEverySeconds = 300, int MinOutcomes = 200, int MinSupport = UtilityModel.DefaultMinSupport,
    double TrainingShare = 1)
{
    /// <summary>A folder for a silo configured without one (tests, a development silo): lost when the machine is.</summary>
    public static LearningOptions Temporary() => new(Path.Combine(Path.GetTempPath(), $"fabric-learning-{Environment.ProcessId}-{Guid.NewGuid():N}"));
}

/// <summary>
/// The fleet's outcome log: append-only segments of JSON lines in the learning store (a folder or a blob container),
/// written by every silo for the VMs it hosts. A segment is written once, whole, with a create-only write and never
/// changed; segments older than the retention are deleted. Segment names start with their UTC time, so listing them
/// in order reads the log in time order across writers.
/// </summary>
public sealed class OutcomeLog(IRepositoryStore store, TimeProvider time, int retentionDays)
{
    public const string Folder = "outcomes";

    /// <summary>Outcomes kept in memory while the store cannot be written.</summary>
    public const int MaxPending = 100_000;

    // NaN stays representable (a percentile with no samples), so one odd value never fails a whole segment.
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    private readonly string _writer = Guid.NewGuid().ToString("N")[..12];
    private readonly Lock _gate = new();
    private List<LoggedOutcome> _pending = [];
    private long _segments;
    private long _appended;

    public IRepositoryStore Store => store;

    /// <summary>Outcomes appended by this silo since it started.</summary>
    public long Appended => Interlocked.Read(ref _appended);

    /// <summary>Queues outcomes for the next segment (cheap, any thread).</summary>
    public void Append(IEnumerable<LoggedOutcome> outcomes)
    {
        lock (_gate)
        {
            _pending.AddRange(outcomes);
        }
    }

    /// <summary>Writes what was appended since the last flush as one segment, then applies the retention. Returns how
    /// many outcomes it wrote. A store that fails keeps them for the next flush.</summary>
    public int Flush()
    {
        List<LoggedOutcome> batch;
        lock (_gate)
        {
            (batch, _pending) = (_pending, []);
        }
        if (batch.Count == 0)
        {
            return 0;
        }
        var text = new StringBuilder();
        foreach (var outcome in batch)
        {
            text.Append(JsonSerializer.Serialize(outcome, Json)).Append('\n');
        }
        var name = $"{Folder}/{time.GetUtcNow().UtcDateTime.ToString("yyyyMMdd'T'HHmmssfff", CultureInfo.InvariantCulture)}-{_writer}-{_segments++:D6}.jsonl";
        try
        {
            if (!store.TryWrite(name, Encoding.UTF8.GetBytes(text.ToString()), ifMatch: null))
            {
                throw new InvalidOperationException($"outcome segment {name} already exists");
            }
        }
        catch
        {
            lock (_gate)
            {
                // Kept for the next flush, up to a bound: a store away for long loses the oldest, not the silo's memory.
                _pending.InsertRange(0, batch);
                if (_pending.Count > MaxPending)
                {
                    _pending.RemoveRange(0, _pending.Count - MaxPending);
                }
            }
            throw;
        }
        Interlocked.Add(ref _appended, batch.Count);
        ApplyRetention();
        return batch.Count;
    }

    /// <summary>The newest outcomes in the log, at most <paramref name="max"/>, in time order.</summary>
    public IReadOnlyList<LoggedOutcome> ReadRecent(int max)
    {
        var segments = new List<List<LoggedOutcome>>();
        var count = 0;
        foreach (var name in store.List(Folder).Reverse())
        {
            var bytes = store.Read(name);
            if (bytes is null)
            {
                continue;
            }
            var lines = Encoding.UTF8.GetString(bytes).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            var segment = lines.Select(l => JsonSerializer.Deserialize<LoggedOutcome>(l, Json)!).ToList();
            segments.Add(segment);
            count += segment.Count;
            if (count >= max)
            {
                break;
            }
        }
        segments.Reverse();
        var all = segments.SelectMany(s => s).ToList();
        return all.Count > max ? all[^max..] : all;
    }

    /// <summary>The newest outcomes whose reward is the current one (<see cref="LoggedOutcome.RewardVersion"/>), of at most <paramref name="max"/> read.</summary>
    public List<LoggedOutcome> ReadRecentUnderCurrentReward(int max) =>
        [.. ReadRecent(max).Where(o => o.RewardVersion == UtilityModel.SchemaVersion)];

    private void ApplyRetention()
    {
        var cutoff = time.GetUtcNow().UtcDateTime.AddDays(-retentionDays).ToString("yyyyMMdd'T'HHmmssfff", CultureInfo.InvariantCulture);
        foreach (var name in store.List(Folder))
        {
            var stamp = name[(Folder.Length + 1)..];
            if (string.CompareOrdinal(stamp, cutoff) >= 0)
            {
                break;
            }
            store.Delete(name);
        }
    }
}
