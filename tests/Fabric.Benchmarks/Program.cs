using BenchmarkDotNet.Running;
using Fabric.Benchmarks;

return args.FirstOrDefault() switch
{
    "linkem" => LinkEmulatorBenchmark.Run(),
    "wire" => Wire(args[1..]),
    _ => Usage(),
};

static int Wire(string[] rest)
{
    BenchmarkSwitcher.FromAssembly(typeof(WireBenchmarks).Assembly).Run(rest.Length == 0 ? ["--filter", "*WireBenchmarks*"] : rest);
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine("usage: Fabric.Benchmarks linkem | wire [BenchmarkDotNet args]");
    return 2;
}
