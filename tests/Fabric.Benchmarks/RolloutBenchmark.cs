using System.Diagnostics;
using Fabric.Agent;
using Fabric.Agent.ControlPlane;
using Fabric.Agent.Stacks;
using Fabric.Hal;
using Fabric.Registration;
using Fabric.Silo;
using Fabric.Silo.Rollouts;
using Fabric.Silo.Selection;
using Fabric.Testing;
using Fabric.Wire;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Fabric.Benchmarks;

/// <summary>
/// How long a rollout's decisions take to move real bindings: a silo in this process and two real agents over a
/// loopback UDP underlay, each with its control-plane link; <c>vms</c> VMs on host-a pinned to swap-test, each bound on
/// its path to host-b. Measured for three versions in turn: from the catalog's sync of a newer version to the last
/// binding on it (the canary is both hosts), and from the catalog's roll back (an operator's step; a failed gate's takes the same
/// path from the catalog on) to the last binding back on the previous version. The baseline of the same run: the same
/// bindings moved by the agent told directly (its releases set and a conformance round run at once), which is what is
/// left when the control plane's part (registrations every 5 s) is taken away.
/// </summary>
internal static class RolloutBenchmark
{
    public static async Task<int> RunAsync(int vms)
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.UseOrleans(silo => silo.UseLocalhostClustering(siloPort, gatewayPort, serviceId: "fabric", clusterId: "fabric")
            .AddMemoryGrainStorage(Storage.Name)
            .AddFabricControlPlane(new SelectorOptions(0.10, TimeSpan.FromSeconds(1)), rollouts: new RolloutOptions(TimeSpan.FromMinutes(30), TimeSpan.FromSeconds(1))));
        using var app = builder.Build();
        await app.StartAsync();
        var catalog = app.Services.GetRequiredService<IClusterClient>().GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        var source = "rollout benchmark";
        var targets = 1;
        var std = new StackInfo("std-ipv4", "1.0.0", "ipv4", 0, 0, 0, 0, false, "standard");
        StackInfo Swap(string version, string[] published) => new("swap-test", version, "ipv4", 16, 0.25, 1, 0.1, false, "test stack") { PublishedVersions = [.. published] };
        await catalog.SyncAsync([std, Swap("0.1.0", ["0.1.0"])], targets++, source);

        var state = Directory.CreateTempSubdirectory("fabric-rollout-bench-").FullName;
        var vmEnds = new Dictionary<string, ChannelPort>();
        IFramePort Open(string device)
        {
            var (agentEnd, vmEnd) = ChannelPort.CreatePair(device, device + "-vm");
            lock (vmEnds)
            {
                vmEnds[device] = vmEnd;
            }
            return agentEnd;
        }
        string[] stacks = [StackPlugins.PathOf(StackPlugins.StdIPv4), StackPlugins.PathOf(StackPlugins.SwapTest)];
        var control = new ControlPlaneConfig([$"127.0.0.1:{gatewayPort}"], ReportMilliseconds: 1000);
        using var a = new Agent.Agent(new AgentConfig("host-a", new UnderlayConfig("127.0.0.1", null, Port: 0), stacks, "unused", DrainMilliseconds: 200,
            StateDirectory: Path.Combine(state, "a"), ControlPlane: control), NullLogger.Instance, Open);
        using var b = new Agent.Agent(new AgentConfig("host-b", new UnderlayConfig("127.0.0.1", null, Port: 0), stacks, "unused", DrainMilliseconds: 200,
            StateDirectory: Path.Combine(state, "b"), ControlPlane: control), NullLogger.Instance, Open);
        a.Start();
        b.Start();
        Check(a.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-b", "127.0.0.1", null, "std-ipv4", b.Switch.UnderlayEndpoints.IPv4!.Port))));
        Check(b.Handle(new ApiRequest("add-host", Host: new RemoteHostConfig("host-a", "127.0.0.1", null, "std-ipv4", a.Switch.UnderlayEndpoints.IPv4!.Port))));
        string[] versions = ["0.2.0", "0.3.0", "0.4.0"];
        foreach (var (agent, version) in new[] { a, b }.SelectMany(agent => versions.Select(v => (agent, v))))
        {
            agent.Switch.RegisterStack(StackPlugins.PathOf(StackPlugins.SwapTest), "swap-test", signedVersion: version);
        }
        var linkA = new ControlPlaneLink(a, control, NullLogger.Instance);
        var linkB = new ControlPlaneLink(b, control, NullLogger.Instance);
        linkA.Start();
        linkB.Start();
        try
        {
            for (var i = 0; i < vms; i++)
            {
                Check(a.Handle(new ApiRequest("register-vm", Registration: new VmRegistration($"vm{i}", $"vm-{i}",
                    [new VmInterface("ethernet", new MacAddress(0x02_00_00_00_10_00UL + (ulong)i).ToString(), $"tap-vm{i}", Vni: 100, IPv4: [$"10.1.{i / 250}.{i % 250 + 1}"])],
                    new VmPolicy(Pin: "swap-test", Vni: 100), "metadata", "libvirt"))));
            }
            // A VM on host-b in the same network: the control plane binds host-a's VMs on the paths to hosts their networks reach.
            Check(b.Handle(new ApiRequest("register-vm", Registration: new VmRegistration("peer", "peer",
                [new VmInterface("ethernet", new MacAddress(0x02_00_00_00_20_01UL).ToString(), "tap-peer", Vni: 100, IPv4: ["10.2.0.1"])],
                new VmPolicy(Vni: 100), "metadata", "libvirt"))));
            int On(string version) => a.Switch.Paths.TryGetValue("host-b", out var path)
                ? path.VmBindingKeys().Values.Count(k => k.Stack == StackKey.Of("swap-test", version)) : 0;
            await Until(() => On("0.1.0") == vms, TimeSpan.FromMinutes(2), $"{vms} VMs bound to swap-test 0.1.0",
                () => string.Join(", ", a.Switch.Paths.Select(p => $"{p.Key}: {string.Join(",", p.Value.VmBindingKeys().Values.Select(k => k.Stack).Distinct())} releases {string.Join(",", a.Switch.StackHost.Releases)}")));

            Console.WriteLine($"Rollout benchmark: {vms} VM bindings on host-a's path to host-b, agents registering every 5 s, the catalog judging every 1 s");
            var (forward, back, direct) = (new List<double>(), new List<double>(), new List<double>());
            // Each round publishes a newer version (a rolled-back one is bad for good) and rolls it back.
            foreach (var version in versions)
            {
                var clock = Stopwatch.StartNew();
                await catalog.SyncAsync([std, Swap(version, [version, .. versions.TakeWhile(v => v != version).Reverse(), "0.1.0"])], targets++, source);
                await Until(() => On(version) == vms, TimeSpan.FromMinutes(2), $"every binding on {version} after the sync");
                forward.Add(clock.Elapsed.TotalSeconds);
                clock.Restart();
                var refused = await catalog.StepRolloutAsync("swap-test", "rollback", "the rollout benchmark", "timing a roll back");
                if (refused is not null)
                {
                    throw new InvalidOperationException(refused);
                }
                await Until(() => On("0.1.0") == vms, TimeSpan.FromMinutes(2), $"every binding back on 0.1.0 after {version}'s roll back");
                back.Add(clock.Elapsed.TotalSeconds);
            }
            // The baseline: the control plane gone (the agents keep what they run), both agents told directly, one round.
            await linkA.DisposeAsync();
            await linkB.DisposeAsync();
            for (var round = 0; round < 3; round++)
            {
                var target = round % 2 == 0 ? "0.2.0" : "0.1.0";
                var watch = Stopwatch.StartNew();
                foreach (var agent in new[] { b, a })
                {
                    agent.Switch.StackHost.SetHolds(new Dictionary<string, string> { ["swap-test"] = target });
                }
                await a.Switch.ConformBindingsAsync();
                await Until(() => On(target) == vms, TimeSpan.FromMinutes(1), $"the direct move to {target}");
                direct.Add(watch.Elapsed.TotalSeconds);
            }
            static string Figures(List<double> seconds) => seconds.Count == 0 ? "-" : $"{seconds.Average():0.00} s (max {seconds.Max():0.00})";
            Console.WriteLine($"  sync of a newer version -> last binding on it:   {Figures(forward)}");
            Console.WriteLine($"  roll back -> last binding back on the previous:  {Figures(back)}");
            Console.WriteLine($"  baseline, the agents told directly:              {Figures(direct)} over {direct.Count} moves");
            Console.WriteLine($"  ratio (roll back / direct):                      {back.Average() / Math.Max(direct.Average(), 1e-3):0.0}x; the registration period (5 s) bounds the difference");
            return 0;
        }
        finally
        {
            await app.StopAsync();
            Directory.Delete(state, recursive: true);
        }
    }

    internal static void Check(ApiResponse response)
    {
        if (!response.Ok)
        {
            throw new InvalidOperationException(response.Error);
        }
    }

    internal static async Task Until(Func<bool> condition, TimeSpan timeout, string what, Func<string>? describe = null)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"{what}: not within {timeout.TotalSeconds:0} s{(describe is null ? "" : "; " + describe())}");
            }
            await Task.Delay(20);
        }
    }
}
