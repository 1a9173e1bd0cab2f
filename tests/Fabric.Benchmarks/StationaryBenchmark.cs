using System.Globalization;
using System.Net;
using Fabric.Embedded;
using Fabric.Repository;
using Fabric.Silo;
using Fabric.Silo.Learning;
using Fabric.Silo.Security;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Benchmarks;

/// <summary>
/// Switches on stationary paths, on the embedded default: the dashboard's control plane
/// (<c>SiloBuilderExtensions.AddEmbeddedControlPlane</c>, with a learning store that starts empty) and its
/// simulated fleet (4 hosts, 12 VMs, every VM deciding for each of the 3 other hosts: 36 VM paths, traffic on all of
/// them) with link phases an hour long instead of 45 s. Each link starts in another phase and the first phase of link
/// <c>i</c> of 6 lasts <c>i/6</c> of an hour, so a 20-minute run also sees links change. Every VM's decision log is
/// read from its grain; a switch counts as stationary when its path's link has held its phase for at least
/// <see cref="Settle"/> (the fleet's start counts as a change). Prints the switches per stationary path-hour (the goal is
/// at most 1), each one with its reason, and the model versions the learner adopted meanwhile.
/// </summary>
internal static class StationaryBenchmark
{
    /// <summary>How long after a link changes phase (or the fleet starts) its paths count as settled.</summary>
    public static readonly TimeSpan Settle = TimeSpan.FromSeconds(60);

    private sealed record Switch(string Vm, string RemoteHost, DateTimeOffset At, string From, string To, string Reason, bool Exploration, PathConditions Conditions);

    public static async Task<int> RunAsync(double minutes)
    {
        var work = Directory.CreateTempSubdirectory("fabric-stationary-").FullName;
        try
        {
            return await RunCoreAsync(minutes, work);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static async Task<int> RunCoreAsync(double minutes, string work)
    {
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;
        var repository = DevelopmentRepository.Create(Path.Combine(work, "keys"), Path.Combine(work, "run"), RepositoryRoot.Directory, configuration);
        using var authority = DevelopmentAuthority.LoadOrCreate(Path.Combine(work, "authority"));
        var learning = Path.Combine(work, "learning");
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders().AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning)
            // Grains still writing their logs while the silo stops fill stderr with placement retries: noise here.
            .AddFilter("Orleans", LogLevel.Critical).AddFilter("Polly", LogLevel.None).AddFilter("Fabric.Embedded", LogLevel.Error);
        builder.UseOrleans(silo => silo
            .UseDevelopmentClustering(new IPEndPoint(IPAddress.Loopback, siloPort))
            .UseControlPlaneSecurity(authority.Issue(CallerRole.Silo, "embedded"))
            .ConfigureEndpoints(IPAddress.Loopback, siloPort, gatewayPort)
            // The cluster the fleet's agents join (the dashboard's default --cluster-id and --service-id).
            .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = ("fabric", "fabric"))
            .AddEmbeddedControlPlane(learning));
        builder.Services.AddSingleton(new CatalogSource(repository.Path, repository.TrustRoot, Path.Combine(work, "run", "silo"), 30));
        builder.Services.AddHostedService<CatalogSync>();
        using var host = builder.Build();
        await host.StartAsync();
        var grains = host.Services.GetRequiredService<IGrainFactory>();
        var testData = Path.GetFullPath(Path.Combine(RepositoryRoot.Directory, "..", "shared", "testdata"));
        var fleet = SimulatedFleet.Start(new FleetOptions(PhaseSeconds: 3600, TestData: testData), repository, $"127.0.0.1:{gatewayPort}",
            Path.Combine(work, "run", "fleet"), host.Services.GetRequiredService<ILoggerFactory>(), authority);
        var started = DateTimeOffset.UtcNow;
        Console.WriteLine(Invariant($"embedded fleet: {fleet.Hosts.Count} hosts, {fleet.Vms.Count} VMs, {fleet.Vms.Count * (fleet.Hosts.Count - 1)} VM paths, link phases of 3600 s; {minutes:0.#} min; a path is settled {Settle.TotalSeconds:0} s after its link changed phase"));
        try
        {
            // Each link's phase changes, polled every second.
            var changes = fleet.Links.ToDictionary(l => Key(l.HostA, l.HostB), _ => new List<DateTimeOffset> { started });
            var current = fleet.Links.ToDictionary(l => Key(l.HostA, l.HostB), l => l.Current.Phase);
            foreach (var link in fleet.Links)
            {
                Console.Error.WriteLine(Invariant($"+  0.0 min link {link.HostA}-{link.HostB} starts in {link.Current.Phase.Name}: forward {string.Join(" ", link.Current.Phase.ForwardSettings)}"));
            }
            var seen = new Dictionary<(string Vm, string Remote, DateTimeOffset At), Switch>();
            var logged = new HashSet<(string Vm, string Remote, DateTimeOffset At)>();
            var hostOf = new Dictionary<string, string>(StringComparer.Ordinal);
            VmView[] views = [];
            var until = started + TimeSpan.FromMinutes(minutes);
            var nextRead = started;
            while (DateTimeOffset.UtcNow < until)
            {
                await Task.Delay(1000);
                var now = DateTimeOffset.UtcNow;
                foreach (var link in fleet.Links)
                {
                    var phase = link.Current.Phase;
                    if (!ReferenceEquals(phase, current[Key(link.HostA, link.HostB)]))
                    {
                        current[Key(link.HostA, link.HostB)] = phase;
                        changes[Key(link.HostA, link.HostB)].Add(now);
                        Console.Error.WriteLine(Invariant($"+{(now - started).TotalMinutes,5:0.0} min link {link.HostA}-{link.HostB} now {phase.Name}"));
                    }
                }
                if (now >= nextRead || now >= until)
                {
                    // A VM's log keeps its last 100 decisions (changes and switches begun): read well before it turns over.
                    nextRead = now + TimeSpan.FromSeconds(20);
                    // The VMs as the control plane knows them (the fleet's registrations, by the ids the agents placed).
                    var listed = (await grains.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync()).Vms.Keys;
                    views = await Task.WhenAll(listed.Select(id => grains.GetGrain<IVmGrain>(id).GetAsync().AsTask()));
                    foreach (var view in views.Where(v => v.Placement is not null))
                    {
                        hostOf[view.VmId] = view.Placement!.HostId;
                        logged.UnionWith(view.Log.Where(d => d.At >= started).Select(d => (view.VmId, d.RemoteHost, d.At)));
                        foreach (var d in view.Log.Where(d => d.Changed && d.Previous is { Length: > 0 } && d.Stack.Length > 0 && d.At >= started))
                        {
                            seen.TryAdd((view.VmId, d.RemoteHost, d.At), new Switch(view.VmId, d.RemoteHost, d.At, d.Previous!, d.Stack, d.Reason, d.Exploration, d.Conditions));
                        }
                    }
                }
            }
            var end = DateTimeOffset.UtcNow;
            if (hostOf.Count == 0)
            {
                Console.Error.WriteLine("stationary: no VM of the fleet was placed in the control plane: nothing was measured");
                return 1;
            }
            bool Settled(string a, string b, DateTimeOffset at) => at - changes[Key(a, b)].Last(c => c <= at) >= Settle;
            var stationary = seen.Values.Where(s => Settled(hostOf[s.Vm], s.RemoteHost, s.At)).OrderBy(s => s.At).ToList();
            // Settled path-hours: every VM path, over the stretches its link held a phase, less each stretch's first minute.
            var pathHours = 0.0;
            foreach (var (vm, vmHost) in hostOf)
            {
                foreach (var remote in fleet.Hosts.Select(h => h.HostId).Where(h => h != vmHost))
                {
                    var marks = changes[Key(vmHost, remote)].Append(end).ToList();
                    pathHours += marks.Zip(marks.Skip(1)).Sum(p => Math.Max(0, (p.Second - p.First - Settle).TotalHours));
                }
            }
            var model = UtilityModel.ReadInService(new LocalFolderStore(learning));
            // What shows the fleet was deciding at all: paths with a stack, and the decisions the VMs logged.
            var stacks = views.SelectMany(v => v.Stacks.Values).Where(x => x.Length > 0).ToList();
            Console.WriteLine(Invariant($"VMs placed in the control plane: {hostOf.Count} of {fleet.Vms.Count}; VM paths with a stack at the end: {stacks.Count}; decisions logged (a stack chosen or changed, a switch begun or called off): {logged.Count}; stacks in use: {string.Join(", ", stacks.GroupBy(x => x).OrderByDescending(g => g.Count()).Select(g => $"{g.Key} {g.Count()}"))}"));
            Console.WriteLine(Invariant($"switches: {seen.Count} in {minutes:0.#} min; on settled paths {stationary.Count} in {pathHours:0.00} path-hours = {stationary.Count / Math.Max(pathHours, 1e-9):0.00} per path-hour (goal ≤ 1); of which exploring {stationary.Count(s => s.Exploration)}"));
            var outcomes = new OutcomeLog(new LocalFolderStore(learning), TimeProvider.System, 7).ReadRecent(1_000_000).Count;
            Console.WriteLine(model is null
                ? $"model: none adopted during the run (the prior decided throughout); outcomes logged: {outcomes}"
                : Invariant($"model in service at the end: v{model.Version}, trained on {model.Outcomes} outcomes; outcomes logged: {outcomes}"));
            // Why the learner adopted what it did (or nothing): its last training rounds.
            foreach (var round in (await grains.GetGrain<ILearnerGrain>(ILearnerGrain.Key).GetAsync()).Recent.TakeLast(3))
            {
                Console.WriteLine($"  learner: {round.Reason}");
            }
            foreach (var s in stationary)
            {
                Console.WriteLine(Invariant($"  +{(s.At - started).TotalMinutes,5:0.0} min {s.Vm} -> {s.RemoteHost}: {s.From} -> {s.To}: {s.Reason}; on {s.Conditions}"));
            }
            return 0;
        }
        finally
        {
            await fleet.DisposeAsync();
            await host.StopAsync();
        }
    }

    private static (string, string) Key(string a, string b) => string.CompareOrdinal(a, b) < 0 ? (a, b) : (b, a);

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
