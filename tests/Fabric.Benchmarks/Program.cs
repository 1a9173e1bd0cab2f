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
        Option("--testdata") ?? Path.GetFullPath(Path.Combine(Fabric.Testing.RepositoryRoot.Directory, "..", "shared", "testdata")), Option("--cells"), Option("--carriers")),
    "stacks-report" when args.Length == 2 => StacksBenchmark.Report(args[1]),
    "controlplane" => await ControlPlaneBenchmark.RunAsync(args.Length > 1 && int.TryParse(args[1], out var ticks) ? ticks : 30,
        args.Length > 2 && double.TryParse(args[2], System.Globalization.CultureInfo.InvariantCulture, out var share) ? share : 0.01),
    _ => Usage(),
};

string? Option(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();

static int Wire(string[] rest)
{
    BenchmarkSwitcher.FromAssembly(typeof(WireBenchmarks).Assembly).Run(rest.Length == 0 ? ["--filter", "*WireBenchmarks*"] : rest);
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine("usage: Fabric.Benchmarks linkem | overlay [SECONDS] | swap [FRAMES_PER_SECOND] | wire [BenchmarkDotNet args] | controlplane [SECONDS [CHANGING_SHARE]] | stacks [SECONDS] [--full|--smoke] [--latency-seconds N] [--csv FILE] [--testdata DIR] [--cells REGEX] [--carriers A,B] | stacks-report CSV");
    return 2;
}
