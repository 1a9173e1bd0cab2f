using System.Globalization;
using Fabric.LinkEmulator;

namespace Fabric.Embedded;

/// <summary>
/// One stretch of a simulated link's life: the conditions each way as the link emulator's settings (the same
/// <c>key=value</c> words <c>fabric-linkem ctl … set</c> takes), where they come from, and for how long.
/// </summary>
public sealed record LinkPhase(string Name, string Source, IReadOnlyList<string> ForwardSettings, IReadOnlyList<string> ReverseSettings, TimeSpan Duration)
{
    public LinkProfile Forward { get; } = LinkProfile.Clean.Apply(ForwardSettings);

    public LinkProfile Reverse { get; } = LinkProfile.Clean.Apply(ReverseSettings);

    public override string ToString() => $"{Name} ({Source})";
}

/// <summary>
/// The conditions simulated links cycle through: the Pantheon calibrated emulators (rate, one-way delay, drop-tail queue,
/// loss each way; with their recorded delivery trace where the test data has it), Mahimahi cellular traces (delivery
/// opportunities each way), a datacenter link and a lossy wireless link. Each link starts at a different phase, so the
/// fleet always has paths that differ and change.
/// </summary>
public static class LinkScenarios
{
    /// <summary>The synthetic phases alone (used when the test data is not beside the checkout).</summary>
    public static IReadOnlyList<LinkPhase> Synthetic(TimeSpan duration) =>
    [
        new("datacenter", "synthetic: 0.2 ms, unlimited", ["delay=0.2ms"], ["delay=0.2ms"], duration),
        new("lossy wireless", "synthetic: 15 ms one way, 3 % random loss, 50 Mbit/s", Lossy, Lossy, duration),
    ];

    private static readonly string[] Lossy = ["delay=15ms", "loss=3%", "rate=50mbit", "queue=200"];

    /// <summary>
    /// Every phase: the synthetic ones interleaved with those read from <paramref name="testData"/> (its pantheon/ and
    /// mahimahi/ folders). Throws <see cref="FormatException"/> naming the file when a file there is malformed.
    /// </summary>
    public static IReadOnlyList<LinkPhase> FromTestData(string? testData, TimeSpan duration)
    {
        var synthetic = Synthetic(duration);
        var real = Recorded(testData, duration);
        // A real phase, then a synthetic one, so that datacenter-like and lossy stretches come between the recorded ones.
        var phases = new List<LinkPhase>();
        for (var i = 0; i < Math.Max(real.Count, synthetic.Count); i++)
        {
            if (i < real.Count)
            {
                phases.Add(real[i]);
            }
            phases.Add(synthetic[i % synthetic.Count]);
        }
        return phases;
    }

    /// <summary>The phases read from the test data alone: the Pantheon calibrated emulators, then the Mahimahi traces.</summary>
    public static IReadOnlyList<LinkPhase> Recorded(string? testData, TimeSpan duration) => testData is not null && Directory.Exists(testData)
        ? [.. Pantheon(Path.Combine(testData, "pantheon"), duration), .. Mahimahi(Path.Combine(testData, "mahimahi"), duration)]
        : [];

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    private static IEnumerable<LinkPhase> Pantheon(string folder, TimeSpan duration)
    {
        var csv = Path.Combine(folder, "pantheon-calibrated-emulator-params.csv");
        if (!File.Exists(csv))
        {
            yield break;
        }
        var lines = File.ReadAllLines(csv);
        var header = lines[0].Split(',');
        int Column(string name) => Array.IndexOf(header, name) is var i and >= 0 ? i : throw new FormatException($"'{csv}': no column '{name}'");
        var (experiment, traceFile, rate, delay, queue, uplink, downlink) = (Column("experiment"), Column("trace_file"), Column("bandwidth_mbps"),
            Column("one_way_delay_ms"), Column("uplink_droptail_queue_packets"), Column("uplink_loss"), Column("downlink_loss"));
        for (var row = 1; row < lines.Length; row++)
        {
            if (lines[row].Length == 0)
            {
                continue;
            }
            var f = lines[row].Split(',');
            double Number(int column) => double.TryParse(f[column], NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v
                : throw new FormatException($"'{csv}' line {row + 1}: '{f[column]}' in column {header[column]} is not a number");
            // The recorded trace of this experiment, where the test data has it (named EXPERIMENT_RATE.trace); it replaces the rate.
            var tracePath = Path.Combine(folder, $"{f[experiment]}_{f[traceFile]}");
            var trace = File.Exists(tracePath);
            string[] Way(double loss) => [Invariant($"delay={Number(delay)}ms"), Invariant($"rate={Number(rate)}mbit"), Invariant($"queue={(int)Number(queue)}"),
                Invariant($"loss={loss * 100}%"), .. trace ? new[] { $"trace={tracePath}" } : []];
            var name = f[experiment].Split('-', 5) is { Length: 5 } parts ? parts[4].Replace("-10-runs", "", StringComparison.Ordinal) : f[experiment];
            yield return new LinkPhase($"Pantheon {name}", $"pantheon calibrated emulator {f[experiment]}{(trace ? ", recorded trace" : "")}",
                Way(Number(uplink)), Way(Number(downlink)), duration);
        }
    }

    private static IEnumerable<LinkPhase> Mahimahi(string folder, TimeSpan duration)
    {
        // Cellular traces whose gaps stay short enough for a path to stay up (the driving traces have gaps up to 78 s).
        foreach (var name in new[] { "Verizon-LTE-short", "ATT-LTE-driving-2016" })
        {
            var (up, down) = (Path.Combine(folder, name + ".up"), Path.Combine(folder, name + ".down"));
            if (!File.Exists(up) || !File.Exists(down))
            {
                continue;
            }
            static string[] Way(string path) => ["delay=25ms", "queue=300", $"trace={path}"];
            yield return new LinkPhase($"Mahimahi {name}", $"mahimahi trace {name}.up/.down, 25 ms one way", Way(up), Way(down), duration);
        }
    }
}
