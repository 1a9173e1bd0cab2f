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
/// The line <c>train</c> asks the fleet's learner to train now (<c>ILearnerGrain.TrainAsync</c>, the dashboard's "train
/// now") and answers <c>ok adopted …</c> or <c>ok not adopted …</c>.
/// The learning benchmark starts it inside the silo's network namespace, where the gateway is, with an operator's
/// certificate (the gateway admits no one without one from the fleet's authority).
/// </summary>
internal static class PolicyShell
{
    public static async Task<int> RunAsync(string gateway, string certificate, string key, string authority)
    {
        if (!IPEndPoint.TryParse(gateway, out var endpoint))
        {
            Console.Error.WriteLine($"policy-shell: '{gateway}' is not ADDRESS:PORT");
            return 2;
        }
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        var credential = Fabric.Silo.Security.ControlPlaneCredential.Load(certificate, key, authority);
        builder.UseOrleansClient(client => Fabric.Silo.Security.SecurityHosting.UseControlPlaneSecurity(client.UseStaticClustering(endpoint)
            .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = ("fabric", "fabric")), credential));
        using var host = builder.Build();
        await host.StartAsync();
        var grains = host.Services.GetRequiredService<IGrainFactory>();
        Console.WriteLine("ready");
        while (Console.ReadLine() is { } line)
        {
            var words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (words is ["train"])
            {
                try
                {
                    var trained = await grains.GetGrain<ILearnerGrain>(ILearnerGrain.Key).TrainAsync();
                    Console.WriteLine($"ok {(trained.Adopted ? "adopted" : "not adopted")}: {trained.Reason}");
                }
                catch (Exception e) when (e is OrleansException or TimeoutException)
                {
                    Console.WriteLine($"error: {e.Message}");
                }
                continue;
            }
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
