using BenchmarkDotNet.Running;
using Fabric.Benchmarks;

return args.FirstOrDefault() switch
{
    "linkem" => LinkEmulatorBenchmark.Run(),
    "swap" => SwapBenchmark.Run(100, args.Length > 1 && double.TryParse(args[1], System.Globalization.CultureInfo.InvariantCulture, out var pps) ? pps : 20_000),
    "overlay" => OverlayBenchmark.Run(args.Length > 1 && int.TryParse(args[1], out var seconds) ? seconds : 10),
    "wire" => Wire(args[1..]),
    "stacks" => StacksBenchmark.Run(args.Contains("--full") ? "full" : args.Contains("--smoke") ? "smoke" : "quick",
        args.Skip(1).TakeWhile(a => !a.StartsWith("--", StringComparison.Ordinal)).Where(a => int.TryParse(a, out _)).Select(int.Parse).DefaultIfEmpty(5).First(),
        int.Parse(Option("--latency-seconds") ?? "10", System.Globalization.CultureInfo.InvariantCulture), Option("--csv") ?? "stacks.csv",
        Option("--testdata") ?? Path.GetFullPath(Path.Combine(Fabric.Testing.RepositoryRoot.Directory, "..", "shared", "testdata")), Option("--cells"), Option("--carriers"), args.Contains("--trace"), Option("--schedule")),
    "stacks-report" when args.Length == 2 => StacksBenchmark.Report(args[1]),
    "controlplane" => await ControlPlane(),
    "fleet" when args.Length == 1 || args is [_, "--compare-security"] => await FleetBenchmark.RunAsync(args.Length == 2),
    "rollout" => await RolloutBenchmark.RunAsync(args.Length > 1 && int.TryParse(args[1], out var rolloutVms) && rolloutVms is > 0 and <= 2000 ? rolloutVms : 64) is var rolled and not 0
        ? rolled : await RevocationBenchmark.RunAsync(),
    "stationary" => await Stationary(),
    "learning" => Learning(),
    "learning-replay" => Replay(),
    "policy-shell" when args.Length == 5 => await PolicyShell.RunAsync(args[1], args[2], args[3], args[4]),
    "learner" => Learner(),
    _ => Usage(),
};

string? Option(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();

async Task<int> Stationary()
{
    // stationary [--minutes N]
    var text = Option("--minutes") ?? "20";
    if (!double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var minutes) || minutes is < 2 or > 600)
    {
        Console.Error.WriteLine($"stationary: --minutes '{text}' is not a number of minutes from 2 to 600");
        return 2;
    }
    return await StationaryBenchmark.RunAsync(minutes);
}

async Task<int> ControlPlane()
{
    // controlplane [SECONDS] [--hosts N] [--peers N] [--changes N] [--compare-security]
    int? Count(string? text, string what, int least, int most)
    {
        if (text is null)
        {
            return null;
        }
        if (!int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) || n < least || n > most)
        {
            throw new ArgumentException($"controlplane: {what} '{text}' is not a whole number from {least} to {most}");
        }
        return n;
    }
    try
    {
        var seconds = Count(args.Length > 1 && !args[1].StartsWith("--", StringComparison.Ordinal) ? args[1] : null, "SECONDS", 1, 86_400) ?? 30;
        string[] known = ["--hosts", "--peers", "--changes"];
        for (var i = args.Length > 1 && !args[1].StartsWith("--", StringComparison.Ordinal) ? 2 : 1; i < args.Length; i++)
        {
            if (known.Contains(args[i]))
            {
                i++;
            }
            else if (args[i] != "--compare-security")
            {
                throw new ArgumentException($"controlplane: '{args[i]}' is not an argument (SECONDS first, then --hosts N, --peers N, --changes N, --compare-security)");
            }
        }
        var defaults = new ControlPlaneBenchmark.Load();
        var load = new ControlPlaneBenchmark.Load(Count(Option("--hosts"), "--hosts", 2, 100_000) ?? defaults.Hosts,
            Count(Option("--peers"), "--peers", 1, 10_000) ?? defaults.Peers, Count(Option("--changes"), "--changes", 0, 1_000_000) ?? defaults.ChangesPerSecond);
        if (load.Peers >= load.Hosts)
        {
            throw new ArgumentException($"controlplane: --peers {load.Peers} needs more than {load.Peers} hosts (--hosts {load.Hosts})");
        }
        if (args.Contains("--compare-security"))
        {
            return await ControlPlaneBenchmark.CompareSecurityAsync(seconds, load);
        }
        await ControlPlaneBenchmark.RunAsync(seconds, load);
        return 0;
    }
    catch (ArgumentException e)
    {
        Console.Error.WriteLine(e.Message);
        return 2;
    }
}

int Learner()
{
    if (args.Length > 2)
    {
        Console.Error.WriteLine("learner: one argument at most, N[,N…] outcomes to train on");
        return 2;
    }
    var sizes = args.Length == 2 ? args[1].Split(',') : ["100000", "1000000"];
    if (sizes.FirstOrDefault(n => !int.TryParse(n, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var v) || v is < 100 or > 10_000_000) is { } bad)
    {
        Console.Error.WriteLine($"learner: '{bad}' is not a number of outcomes from 100 to 10000000");
        return 2;
    }
    return LearnerBenchmark.Run([.. sizes.Select(n => int.Parse(n, System.Globalization.CultureInfo.InvariantCulture))]);
}

int Learning()
{
    string[] known = ["--schedules", "--train", "--phase-seconds", "--measure-seconds", "--csv"];
    for (var i = 1; i < args.Length; i += 2)
    {
        if (!known.Contains(args[i]) || i + 1 >= args.Length)
        {
            Console.Error.WriteLine($"learning: '{args[i]}' is not one of {string.Join(", ", known)} followed by its value");
            return 2;
        }
    }
    double? phase = null;
    if (Option("--phase-seconds") is { } p)
    {
        if (!double.TryParse(p, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var s) || !(s >= 2) || s > 86_400)
        {
            Console.Error.WriteLine($"learning: --phase-seconds '{p}' is not a number of seconds from 2 to 86400");
            return 2;
        }
        phase = s;
    }
    var measure = 5;
    if (Option("--measure-seconds") is { } m && (!int.TryParse(m, out measure) || measure is < 2 or > 600))
    {
        Console.Error.WriteLine($"learning: --measure-seconds '{m}' is not a whole number of seconds from 2 to 600");
        return 2;
    }
    var root = Fabric.Testing.RepositoryRoot.Directory;
    return LearningBenchmark.Run(Option("--schedules") ?? Path.Combine(root, "bench", "schedules", "eval"), Option("--train") ?? Path.Combine(root, "bench", "schedules", "train"),
        phase, measure, Option("--csv") ?? "learning.csv");
}

int Replay()
{
    // learning-replay OUTCOMES.csv [--min-support N] [--in-service N]
    const string Usage = "learning-replay: give one outcome CSV (a learning run's -outcomes.csv), then optionally --min-support N and --in-service N";
    if (args.Length < 2 || args.Length % 2 != 0 || args[1].StartsWith("--", StringComparison.Ordinal))
    {
        Console.Error.WriteLine(Usage);
        return 2;
    }
    var support = LearningBenchmark.MinSupport;
    int? inService = null;
    for (var i = 2; i < args.Length; i += 2)
    {
        if (args[i] is not ("--min-support" or "--in-service") || args.AsSpan(2, i - 2).Contains(args[i]))
        {
            Console.Error.WriteLine($"learning-replay: '{args[i]}' is not an option here, or is given twice. {Usage}");
            return 2;
        }
        if (!int.TryParse(args[i + 1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value) || value > 1_000_000)
        {
            Console.Error.WriteLine($"learning-replay: {args[i]} '{args[i + 1]}' is not a whole number from 0 to 1000000");
            return 2;
        }
        (support, inService) = args[i] == "--min-support" ? (value, inService) : (support, value);
    }
    return LearningReplay.Run(args[1], support, inService);
}

static int Wire(string[] rest)
{
    BenchmarkSwitcher.FromAssembly(typeof(WireBenchmarks).Assembly).Run(rest.Length == 0 ? ["--filter", "*WireBenchmarks*"] : rest);
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine("usage: Fabric.Benchmarks linkem | overlay [SECONDS] | swap [FRAMES_PER_SECOND] | wire [BenchmarkDotNet args] | controlplane [SECONDS] [--hosts N] [--peers N] [--changes N] [--compare-security] | fleet [--compare-security] | rollout [VMS] | stationary [--minutes N] | stacks [SECONDS] [--full|--smoke] [--latency-seconds N] [--csv FILE] [--testdata DIR] [--cells REGEX] [--carriers A,B] [--trace] | stacks-report CSV | learner [N,N…outcomes] | learning [--schedules DIR] [--train DIR] [--phase-seconds N] [--measure-seconds N] [--csv FILE] | learning-replay OUTCOMES.csv [--min-support N] [--in-service N]");
    return 2;
}
