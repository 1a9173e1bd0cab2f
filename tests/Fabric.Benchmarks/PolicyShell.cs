using System.Globalization;
using System.Net;
using Fabric.Silo;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Benchmarks;

/// <summary>
/// Sets VMs' policies in a silo as an operator would (<c>IVmGrain.SetPolicyAsync</c>, what the dashboard calls), one
/// line of standard input each: <c>VM WORKLOAD PIN|- EXPLORATION-SHARE</c>; answers <c>ok VERSION</c> or <c>error …</c>.
/// The learning benchmark starts it inside the silo's network namespace, where the gateway is.
/// </summary>
internal static class PolicyShell
{
    public static async Task<int> RunAsync(string gateway)
    {
        if (!IPEndPoint.TryParse(gateway, out var endpoint))
        {
            Console.Error.WriteLine($"policy-shell: '{gateway}' is not ADDRESS:PORT");
            return 2;
        }
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        builder.UseOrleansClient(client => client.UseStaticClustering(endpoint)
            .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = ("fabric", "fabric")));
        using var host = builder.Build();
        await host.StartAsync();
        var grains = host.Services.GetRequiredService<IGrainFactory>();
        Console.WriteLine("ready");
        while (Console.ReadLine() is { } line)
        {
            var words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (words.Length != 4 || !double.TryParse(words[3], NumberStyles.Float, CultureInfo.InvariantCulture, out var share))
            {
                Console.WriteLine($"error: '{line}' is not 'VM WORKLOAD PIN|- EXPLORATION-SHARE'");
                continue;
            }
            try
            {
                var result = await grains.GetGrain<IVmGrain>(words[0]).SetPolicyAsync(Policy.Default with
                {
                    Workload = words[1], Pin = words[2] == "-" ? null : words[2], ExplorationShare = share,
                });
                Console.WriteLine(result.Accepted ? $"ok {result.Version}" : $"error: {string.Join("; ", result.Errors)}");
            }
            catch (Exception e) when (e is OrleansException or TimeoutException)
            {
                Console.WriteLine($"error: {e.Message}");
            }
        }
        await host.StopAsync();
        return 0;
    }
}
