using System.Diagnostics;
using System.Globalization;
using Fabric.Silo;
using Fabric.Silo.Learning;
using Fabric.Silo.Selection;

namespace Fabric.Benchmarks;

/// <summary>
/// What the learner costs: Microsoft.ML FastTree training time, managed allocation and working set at 100k and 1M
/// logged outcomes (tree models retrain from scratch), and the price of scoring one candidate on the decision path
/// with the model against the profile prior alone, measured in the same run, on one thread and on every core at once.
/// The outcomes are generated (seeded) over five stacks, three workloads and the full range of path conditions.
/// </summary>
internal static class LearnerBenchmark
{
    private static readonly string[] Stacks = ["std-ipv4", "fec", "arq-lowlat", "arq-bulk", "secure"];
    private static readonly string[] Workloads = ["bulk", "latency", "general"];

    public static int Run(IReadOnlyList<int> sizes)
    {
        Console.WriteLine($"{Environment.ProcessorCount} cores; Microsoft.ML FastTree; outcomes: generated, 5 stacks x 3 workloads");
        Console.WriteLine("  outcomes   training s   allocated MiB   working set MiB (before, with the outcomes in memory -> peak)   held-back error");
        UtilityModel? model = null;
        foreach (var size in sizes)
        {
            var outcomes = Generate(size, seed: 7);
            var holdout = outcomes[^(size / 10)..];
            var training = outcomes[..^holdout.Count];
            GC.Collect();
            GC.WaitForPendingFinalizers();
            using var process = Process.GetCurrentProcess();
            process.Refresh();
            var before = process.WorkingSet64;
            var allocated = GC.GetTotalAllocatedBytes(precise: true);
            var peak = before;
            using var sampling = new Timer(_ =>
            {
                using var p = Process.GetCurrentProcess();
                Interlocked.Exchange(ref peak, Math.Max(Interlocked.Read(ref peak), p.WorkingSet64));
            }, null, 0, 50);
            var clock = Stopwatch.StartNew();
            var trained = UtilityModel.Train(training, holdout, version: 1, DateTimeOffset.UtcNow);
            var seconds = clock.Elapsed.TotalSeconds;
            var allocatedMiB = (GC.GetTotalAllocatedBytes(precise: true) - allocated) / 1048576.0;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {size,8:N0}   {seconds,10:0.0}   {allocatedMiB,13:N0}   {before / 1048576.0,15:N0} -> {Interlocked.Read(ref peak) / 1048576.0,6:N0}             {trained.Info.HoldoutError,8:0.0000}"));
            model?.Dispose();
            model = trained;
        }
        Console.WriteLine($"  (the learner grain reads at most the newest {LearnerGrain.MaxTrainingOutcomes:N0} outcomes per training)");
        if (model is not null)
        {
            Scoring(model);
            model.Dispose();
        }
        Meter();
        return 0;
    }

    /// <summary>
    /// The passive TCP meter's cost per frame on the switch's path: a captured conversation's 13 frames (the client's as
    /// egress, the server's as ingress) fed again and again, against parsing the same frames' Ethernet, IP and TCP
    /// headers alone, in the same run.
    /// </summary>
    private static void Meter()
    {
        var path = Path.Combine(Fabric.Testing.TestData.Directory, "pcaps", "ppp__one_tcp_stream_fin_rst_close_packet.pcap");
        using var reader = Fabric.Wire.CaptureReader.Open(path);
        var frames = reader.ReadAll().Select(r => (Data: r.Data.ToArray(), Egress: r.Data.Span[6] == 0x00 && r.Data.Span[7] == 0x0c)).ToArray();
        const int Rounds = 200_000;
        double Run(Action<byte[], bool, long> each)
        {
            var clock = Stopwatch.StartNew();
            for (var round = 0; round < Rounds; round++)
            {
                foreach (var (data, egress) in frames)
                {
                    each(data, egress, round);
                }
            }
            return clock.Elapsed.TotalNanoseconds / (Rounds * frames.Length);
        }
        var meter = new Fabric.Agent.Switching.TcpMeter();
        var parsed = 0L;
        void Parse(byte[] data, bool egress, long round)
        {
            if (Fabric.Wire.EthernetFrame.TryCreate(data, out var eth) && Fabric.Wire.IPv4Packet.TryCreate(eth.Payload, out var ip)
                && Fabric.Wire.TcpSegment.TryCreate(ip.Payload, out var tcp))
            {
                parsed += tcp.SourcePort;
            }
        }
        void Measure(byte[] data, bool egress, long round)
        {
            if (egress)
            {
                meter.OnEgress(data, round * 1_000_000);
            }
            else
            {
                meter.OnIngress(data, round * 1_000_000);
            }
            if (round % 1000 == 0)
            {
                meter.Take(round * 1_000_000);
            }
        }
        Run(Parse);
        Run(Measure);
        var parse = Run(Parse);
        var measure = Run(Measure);
        GC.KeepAlive(parsed);
        var allocated = GC.GetAllocatedBytesForCurrentThread();
        Run(Measure);
        allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"""

            passive TCP meter, per frame ({frames.Length} captured frames x {Rounds:N0}; flows open and close every round):
              parsing Ethernet, IPv4 and TCP alone   {parse,7:0.0} ns
              TcpMeter.OnEgress / OnIngress          {measure,7:0.0} ns ({measure / parse:0.0}x), {allocated / (double)(Rounds * frames.Length):0.0} bytes allocated per frame
            """));
    }

    private static void Scoring(UtilityModel model)
    {
        var prior = new ProfileScorer();
        var learned = new LearnedScorer(prior);
        learned.Use(model, enabled: true);
        var catalog = Stacks.Select((s, i) => new StackInfo(s, "1.0.0", "ipv4", 16 + (8 * i), i == 1 ? 0.25 : 0.05 * i, i, i == 1 ? 0.05 : 0.02, s == "secure", s)).ToArray();
        var random = new Random(3);
        var contexts = Enumerable.Range(0, 4096).Select(_ => (Conditions(random), Policy.Default with { Workload = Workloads[random.Next(3)] })).ToArray();
        double PerCandidate(IStackScorer scorer, int threads)
        {
            const int Decisions = 40_000;
            var clock = Stopwatch.StartNew();
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                var sum = 0.0;
                for (var d = 0; d < Decisions; d++)
                {
                    var (conditions, policy) = contexts[(d + (t * 997)) % contexts.Length];
                    foreach (var stack in catalog)
                    {
                        sum += scorer.Score(stack, conditions, policy).Score;
                    }
                }
                GC.KeepAlive(sum);
            });
            return clock.Elapsed.TotalMicroseconds / (Decisions * catalog.Length);
        }
        // Warm both up first (JIT, the model's first prediction engine).
        PerCandidate(prior, 1);
        PerCandidate(learned, 1);
        var priorOne = PerCandidate(prior, 1);
        var learnedOne = PerCandidate(learned, 1);
        var threads = Environment.ProcessorCount;
        var priorAll = PerCandidate(prior, threads) / threads;
        var learnedAll = PerCandidate(learned, threads) / threads;
        var sample = learned.Score(catalog[1], contexts[0].Item1, contexts[0].Item2);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"""

            scoring one candidate (5 candidates per decision, 40,000 decisions per thread):
              profile prior alone      {priorOne,8:0.00} µs on 1 thread   {priorAll,8:0.00} µs of wall time per candidate with {threads} threads scoring at once
              model (and its prior)    {learnedOne,8:0.00} µs on 1 thread   {learnedAll,8:0.00} µs of wall time per candidate with {threads} threads scoring at once
              model / prior            {learnedOne / priorOne,8:0.0}x          goal: model ≤ 50 µs per candidate: {(learnedOne <= 50 ? "met" : "missed")}
              a reason it gives: "{sample.Why}"
            """));
    }

    private static PathConditions Conditions(Random random)
    {
        var minRtt = 0.2 + (random.NextDouble() * 150);
        var rtt = minRtt * (1 + (random.NextDouble() * 0.5));
        var loss = random.NextDouble() < 0.5 ? 0 : random.NextDouble() * 0.06;
        return new PathConditions(rtt, random.NextDouble() * 5, loss, random.NextDouble() * 500, DateTimeOffset.UtcNow, minRtt,
            random.NextDouble() < 0.2 ? 0 : 5 + (random.NextDouble() * 1000), random.NextDouble() * 2, random.NextDouble() * 5);
    }

    /// <summary>A seeded log whose utilities follow a rule with interactions (loss, RTT, capacity, workload) and noise.</summary>
    private static List<LoggedOutcome> Generate(int count, int seed)
    {
        var random = new Random(seed);
        var start = DateTimeOffset.UtcNow.AddHours(-1);
        var outcomes = new List<LoggedOutcome>(count);
        // As a fleet logs them: each (VM, remote host) path one outcome a second for ten minutes; its conditions change
        // every minute and its stack every 30 s — far more often than a fleet switches, so that nearly every outcome is
        // also learned with another stack's conditions (UtilityModel.PairingWindow): the most rows a log this size makes.
        var (stack, workload, c) = ("", "", Conditions(random));
        for (var i = 0; i < count; i++)
        {
            var (path, second) = Math.DivRem(i, 600);
            if (second % 30 == 0)
            {
                stack = Stacks[random.Next(Stacks.Length)];
            }
            if (second % 60 == 0)
            {
                c = Conditions(random);
            }
            if (second == 0)
            {
                workload = Workloads[random.Next(Workloads.Length)];
            }
            var lossPenalty = stack switch { "fec" => 2.0, "arq-lowlat" => 4.0, "arq-bulk" => 3.0, _ => 15.0 } * c.Loss;
            var cost = stack switch { "std-ipv4" => 0.0, "secure" => 0.03, "fec" => 0.2, _ => 0.1 };
            var latency = workload == "bulk" ? 0 : Math.Min(0.3, c.RttMs / 500);
            var utility = Math.Clamp(0.9 - lossPenalty - cost - latency + ((random.NextDouble() - 0.5) * 0.05), 0, 1);
            outcomes.Add(new LoggedOutcome(start.AddSeconds(second), $"vm{path}", "host-b", workload, stack, "1.0.0",
                0.9, false, OutcomeFeatures.Of(c), 10, c.RttMs, 0, cost, utility));
        }
        return outcomes;
    }
}
