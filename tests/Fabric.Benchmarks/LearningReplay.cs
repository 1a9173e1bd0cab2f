using System.Globalization;
using Fabric.Embedded;
using Fabric.Silo;
using Fabric.Silo.Learning;
using Fabric.Silo.Selection;

namespace Fabric.Benchmarks;

/// <summary>
/// Judges the scorers offline on a learning benchmark run's outcome log (its <c>-outcomes.csv</c>), in seconds instead of
/// the run's half hour: a model is trained on the run's training part only, as the silo trained it, and on each fixed
/// cell group (one evaluation phase and workload, every stack pinned in turn) each scorer is asked which stack it would
/// choose from each stack's measured conditions. What a choice is worth is what the VM got on that stack there (the
/// cells' own outcomes, judged as the reward judges them), against the best stack's. No live dynamics (sustain, margins,
/// exploration): only whether the scores rank the stacks right on conditions the model never trained on.
/// </summary>
internal static class LearningReplay
{
    /// <summary>The outcome CSV's columns, as <see cref="LearningBenchmark"/> writes them.</summary>
    public static readonly string[] Columns =
    [
        "at", "vm", "host", "remote_host", "workload", "stack", "exploration", "rtt_ms", "min_rtt_ms", "loss", "burstiness", "capacity_mbps",
        "goodput_mbps", "delay_p99_ms", "residual_loss", "overhead_ratio", "utility", "jitter_ms", "rtt_std_ms", "propensity", "part", "cell",
    ];

    private sealed record Row(LoggedOutcome Outcome, string Part, string Cell);

    /// <summary>One stack in one cell group: what the VM got on it and the conditions measured while it ran.</summary>
    private sealed record Ran(string Stack, string Vm, double Utility, int Outcomes, PathConditions Conditions);

    public static int Run(string path, int minSupport, int? inService)
    {
        List<Row> rows;
        try
        {
            rows = Read(path);
        }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            Console.Error.WriteLine($"learning-replay: {e.Message}");
            return 2;
        }
        var training = rows.Where(r => r.Part == "training").Select(r => r.Outcome).OrderBy(o => o.At).ToList();
        var groups = rows.Where(r => r.Part == "fixed" && r.Cell.Length > 0).GroupBy(r => r.Cell, StringComparer.Ordinal).ToList();
        if (training.Count < 200 || groups.Count == 0)
        {
            Console.Error.WriteLine($"learning-replay: '{path}' has {training.Count} training outcomes and {groups.Count} fixed cells; a replay needs at least 200 and 1");
            return 2;
        }
        if (inService is { } first && (first < 100 || first > training.Count - 10))
        {
            Console.Error.WriteLine($"learning-replay: --in-service {first}: '{path}' has {training.Count} training outcomes; give from 100 to {training.Count - 10}");
            return 2;
        }
        var catalog = BuiltInStacks.Load(Fabric.Testing.RepositoryRoot.Directory).ToDictionary(s => s.Id, s => CatalogSync.InfoOf(s.Id, s.Version, s.Profile), StringComparer.Ordinal);

        using var model = Served(training, DateTimeOffset.UtcNow);
        var prior = new ProfileScorer();
        var gated = new LearnedScorer(prior, minSupport);
        gated.Use(model, enabled: true);
        var everywhere = new LearnedScorer(prior, 0);
        everywhere.Use(model, enabled: true);
        var scorers = new List<(string Name, IStackScorer Scorer)> { ("prior", prior), ($"model (support {minSupport})", gated), ("model everywhere", everywhere) };
        Console.WriteLine(Inv($"{path}: {training.Count} training outcomes (model error {model.Info.HoldoutError:0.000} on the newest {model.Info.HoldoutOutcomes}), {groups.Count} fixed cell groups"));
        var (earlier, cut) = inService is { } count ? Adoption(training, count) : (null, 0);
        using var inServiceModel = earlier;
        if (earlier is not null)
        {
            var scorer = new LearnedScorer(prior, minSupport);
            scorer.Use(earlier, enabled: true);
            scorers.Add(($"model on the first {cut} (support {minSupport})", scorer));
        }

        Console.WriteLine("per cell group: what the VM got on each stack (utility; outcomes), then each scorer's choice from each stack's conditions");
        var worth = scorers.ToDictionary(s => s.Name, _ => new List<double>(), StringComparer.Ordinal);
        var best = scorers.ToDictionary(s => s.Name, _ => 0, StringComparer.Ordinal);
        foreach (var group in groups.OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var workload = group.First().Outcome.Workload;
            var ran = group.GroupBy(r => r.Outcome.Stack, StringComparer.Ordinal).Where(g => catalog.ContainsKey(g.Key))
                .Select(g => g.OrderBy(r => r.Outcome.At).Skip(1).ToList()) // the first may straddle the pin or the phase change
                .Where(g => g.Count >= 2)
                .Select(g => new Ran(g[0].Outcome.Stack, g[0].Outcome.VmId, g.Average(r => r.Outcome.Utility), g.Count,
                    OutcomeFeatures.Mean([.. g.Select(r => r.Outcome.Features)]).ToConditions(g[^1].Outcome.At)))
                .ToDictionary(r => r.Stack, StringComparer.Ordinal);
            if (ran.Count < 2)
            {
                continue;
            }
            var top = ran.Values.Max(r => r.Utility);
            Console.WriteLine(Inv($"  {group.Key}: {string.Join(", ", ran.Values.OrderByDescending(r => r.Utility).Select(r => $"{r.Stack} {r.Utility:0.000} ({r.Outcomes})"))}"));
            var policy = Policy.Default with { Workload = workload };
            foreach (var (name, scorer) in scorers)
            {
                var picks = new List<string>();
                foreach (var current in ran.Values)
                {
                    // The current stack by what the VM got on it, the others by the scorer on the conditions measured on it.
                    var pick = ran.Values.Select(c => (c.Stack, Score: c.Stack == current.Stack ? current.Utility
                            : scorer.Score(catalog[c.Stack], current.Conditions, policy, current.Vm, current.Stack).Score))
                        .OrderByDescending(c => c.Score).ThenBy(c => c.Stack == current.Stack ? 0 : 1).First().Stack;
                    var share = top > 0 ? ran[pick].Utility / top : 1;
                    worth[name].Add(share);
                    best[name] += share >= 0.999 ? 1 : 0;
                    picks.Add($"{current.Stack}→{pick}");
                }
                Console.WriteLine(Inv($"      {name,-22} {string.Join(", ", picks)}"));
            }
        }
        Console.WriteLine("overall (the chosen stack's utility as a share of the best's, over every cell group and starting stack):");
        foreach (var (name, _) in scorers)
        {
            Console.WriteLine(Inv($"  {name,-22} {worth[name].Average():0.000}, the best stack chosen {best[name]} of {worth[name].Count}"));
        }
        return 0;
    }

    /// <summary>
    /// The learner's adoption rule, replayed (<see cref="LearnerGrain.TrainCandidate"/>): a version in service trained on
    /// the first <paramref name="count"/> training outcomes (judged and refitted as the learner does), against a candidate
    /// from all of them. Prints both errors and the verdict; returns the version in service, which the cells then judge
    /// beside the model on all (whether the verdict was the right one), and how many outcomes it was trained on (more than
    /// <paramref name="count"/> where later outcomes share the cut's time).
    /// </summary>
    private static (UtilityModel InService, int Count) Adoption(List<LoggedOutcome> training, int count)
    {
        // The learner tells what the version in service saw by its time: outcomes at the cut's time are its.
        while (count < training.Count - 1 && training[count].At == training[count - 1].At)
        {
            count++;
        }
        var older = training[..count];
        var inService = Served(older, older[^1].At);
        try
        {
            var (candidate, judged) = LearnerGrain.TrainCandidate(training, older[^1].At, 2, training[^1].At);
            using (candidate)
            {
                var baseline = inService.MeanAbsoluteError(judged);
                var verdict = candidate.Info.HoldoutError < baseline ? "adopted" : "not adopted";
                Console.WriteLine(Inv($"adoption: a candidate from all {training.Count} has error {candidate.Info.HoldoutError:0.0000} on {judged.Count} held-back outcomes against {baseline:0.0000} for a version on the first {count}: {verdict}"));
            }
            return (inService, count);
        }
        catch
        {
            inService.Dispose();
            throw;
        }
    }

    /// <summary>A model as the learner serves one with no version in service: judged on the newest tenth, then trained on all.</summary>
    private static UtilityModel Served(List<LoggedOutcome> outcomes, DateTimeOffset now)
    {
        var (judged, _) = LearnerGrain.TrainCandidate(outcomes, null, 1, now);
        using (judged)
        {
            return UtilityModel.Refit(outcomes, judged);
        }
    }

    private static List<Row> Read(string path)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0)
        {
            throw new FormatException($"'{path}' is empty");
        }
        var header = lines[0].Split(',');
        if (header.GroupBy(h => h, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            throw new FormatException($"'{path}' has the column '{twice.Key}' twice");
        }
        var index = header.Select((h, i) => (h, i)).ToDictionary(x => x.h, x => x.i, StringComparer.Ordinal);
        if (Columns.FirstOrDefault(c => !index.ContainsKey(c)) is { } missing)
        {
            throw new FormatException($"'{path}' has no '{missing}' column (an outcome log written before 2026-12-07 says no part or cell; run bench/learning.sh again)");
        }
        var rows = new List<Row>(lines.Length);
        for (var n = 1; n < lines.Length; n++)
        {
            if (lines[n].Length == 0)
            {
                continue;
            }
            var f = lines[n].Split(',');
            if (f.Length != header.Length)
            {
                throw new FormatException($"'{path}' line {n + 1}: {f.Length} fields where the header has {header.Length}");
            }
            string Text(string column) => f[index[column]];
            double Number(string column) => double.TryParse(Text(column), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v
                : throw new FormatException($"'{path}' line {n + 1}: {column} '{Text(column)}' is not a number");
            if (!DateTimeOffset.TryParse(Text("at"), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var at))
            {
                throw new FormatException($"'{path}' line {n + 1}: at '{Text("at")}' is not a time");
            }
            var features = new OutcomeFeatures(Number("rtt_ms"), Number("min_rtt_ms"), Number("jitter_ms"), Number("loss"), Number("burstiness"), Number("capacity_mbps"), Number("rtt_std_ms"));
            var outcome = new LoggedOutcome(at, Text("vm"), Text("remote_host"), Text("workload"), Text("stack"), "", Number("propensity"),
                Text("exploration") == "True", features, Number("goodput_mbps"), Number("delay_p99_ms"), Number("residual_loss"), Number("overhead_ratio"), Number("utility"))
            { RewardVersion = UtilityModel.SchemaVersion, Host = Text("host") is { Length: > 0 } host ? host : null };
            rows.Add(new Row(outcome, Text("part"), Text("cell")));
        }
        return rows;
    }

    private static string Inv(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
