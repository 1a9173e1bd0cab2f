using System.Collections.Concurrent;
using System.Collections.Immutable;
using Fabric.Repository;
using Fabric.Silo.Learning;
using Fabric.Silo.Rollouts;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests.Rollouts;

/// <summary>
/// Rollouts in a real two-silo cluster persisting to Azure Table storage (Azurite): a new version published to the signed
/// repository goes out ring by ring, judged by the outcomes its hosts report through their host grains (the outcome log
/// in a folder every silo shares), and comes back on a failed gate. Agents are played by clients that run what their
/// desired state releases to them; the agent's side is in the agent link tests.
/// </summary>
public sealed class RolloutClusterTests(Azurite azurite) : IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(90);
    private static readonly RolloutOptions Fast = new(TimeSpan.FromSeconds(2), TimeSpan.FromMilliseconds(500));

    /// <summary>VMs per host: the canary pair's VM paths must reach the gate's minimum (<see cref="RolloutOptions.MinSamples"/>).</summary>
    private const int VmsPerHost = 6;
    private readonly string _learning = Directory.CreateTempSubdirectory("fabric-rollout-").FullName;
    private readonly List<RecordingAgent> _agents = [];
    private readonly Dictionary<string, RecordingAgent> _agentOf = new(StringComparer.Ordinal);

    public void Dispose() => Directory.Delete(_learning, recursive: true);

    private async Task<InProcessTestCluster> StartAsync()
    {
        var table = "fabric" + Guid.NewGuid().ToString("N")[..12];
        var builder = new InProcessTestClusterBuilder(2);
        builder.ConfigureSilo((_, silo) =>
        {
            silo.Services.AddSingleton(Fast);
            silo.Services.AddSingleton(new LearningOptions(_learning, TrainEverySeconds: 0));
            silo.AddAzureTableGrainStorage(Storage.Name, options =>
            {
                options.TableName = table;
                options.TableServiceClient = new Azure.Data.Tables.TableServiceClient(azurite.ConnectionString);
            }).AddFabricControlPlane(ClusterFixture.Selector);
        });
        var cluster = builder.Build();
        await cluster.DeployAsync(TestContext.Current.CancellationToken);
        return cluster;
    }

    private static string Unique(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..16];

    /// <summary>Registers <paramref name="hosts"/> running version 1.0.0 of <paramref name="stacks"/>, a VM on each, and a measured path from each to the next.</summary>
    private async Task RegisterAsync(IClusterClient client, IReadOnlyList<string> hosts, IReadOnlyList<string> stacks)
    {
        for (var i = 0; i < hosts.Count; i++)
        {
            var agent = new RecordingAgent();
            _agents.Add(agent);
            _agentOf[hosts[i]] = agent;
            await client.GetGrain<IHostGrain>(hosts[i]).RegisterAsync(Info(hosts[i], stacks, "1.0.0"), client.CreateObjectReference<IAgentObserver>(agent));
            for (var v = 0; v < VmsPerHost; v++)
            {
                await client.GetGrain<IVmGrain>($"vm{v}-{hosts[i]}").PlaceAsync(new VmPlacement(hosts[i], "web", 100, [$"52:54:00:00:{i:x2}:{v:x2}"], null));
            }
        }
    }

    private static HostInfo Info(string host, IEnumerable<string> stacks, string version) =>
        new(host, "127.0.0.1", null, 47110, [.. HostStacks, .. stacks], [], "test") { StackVersions = [.. stacks.Select(s => new StackVersionUse(s, version, 1))] };

    /// <summary>A host's registration as an agent's says what each version's slots counted: 1.0.0's (the slots it had)
    /// and the released version's, 0.1 % of their packets dropped as duplicates, 10 µs a timed call.</summary>
    private static HostInfo Info(string host, IEnumerable<string> stacks, ImmutableDictionary<string, string> releases) =>
        new(host, "127.0.0.1", null, 47110, [.. HostStacks, .. stacks], [], "test")
        {
            StackVersions = [.. stacks.SelectMany(s => new[] { "1.0.0", releases.GetValueOrDefault(s, "1.0.0") }.Distinct().Select(v => new StackVersionUse(s, v, 1)
            {
                Packets = 10_000,
                Drops = ImmutableDictionary<string, long>.Empty.Add("Duplicate", 10),
                CallNanoseconds = 2_000_000,
                CallsTimed = 200,
            }))],
        };

    /// <summary>
    /// One interval of every host's telemetry: the path to the next host (30 ms, 2 % loss), and what its VM got on each
    /// stack at the version its desired state releases to it — worse (5 % residual loss) on <paramref name="worse"/>.
    /// Returns each host's releases.
    /// </summary>
    private async Task<Dictionary<string, ImmutableDictionary<string, string>>> ReportAsync(IClusterClient client, IReadOnlyList<string> hosts,
        IReadOnlyList<string> stacks, Random random, (string Stack, string Version)? worse = null)
    {
        var releases = new Dictionary<string, ImmutableDictionary<string, string>>(StringComparer.Ordinal);
        for (var i = 0; i < hosts.Count; i++)
        {
            var (host, next) = (hosts[i], hosts[(i + 1) % hosts.Count]);
            var grain = client.GetGrain<IHostGrain>(host);
            releases[host] = (await grain.GetDesiredStateAsync()).Releases;
            await grain.RegisterAsync(Info(host, stacks, releases[host]), client.CreateObjectReference<IAgentObserver>(_agentOf[host]));
            var conditions = new PathConditions(30, 0.02, 1, 100, DateTimeOffset.UtcNow);
            var outcomes = ImmutableArray.CreateBuilder<Outcome>();
            foreach (var (stack, v) in stacks.SelectMany(s => Enumerable.Range(0, VmsPerHost).Select(v => (s, v))))
            {
                var version = releases[host].GetValueOrDefault(stack, "1.0.0");
                outcomes.Add(new Outcome($"vm{v}-{host}", next, stack, conditions, 45 + random.NextDouble() * 10, 30, 35 + random.NextDouble() * 5,
                    worse == (stack, version) ? 0.05 : 0, 0, TimeSpan.FromSeconds(1), Passive: true, Flows: 1, Shape: "bulk", StackVersion: version));
            }
            await grain.ReportAsync([new PathSample(host, next, 30, 1, 1000, 20, 100, DateTimeOffset.UtcNow)], outcomes.ToImmutable());
        }
        return releases;
    }

    private static async Task<Rollout> RolloutOf(IClusterClient client, string stack) =>
        (await client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListRolloutsAsync()).Single(r => r.StackId == stack);

    private static string Describe(Rollout r) =>
        $"{r.StackId} {r.From}->{r.To} {r.Status} ring {r.Ring}/{r.Rings.Length}; gates: {string.Join("; ", r.Gates.Select(g => $"{g.Gate} {g.Verdict}: {g.Evidence}"))}";

    [Fact]
    public async Task AWorseVersion_FailsOnTheCanaryAndComesBack_WhileAGoodOneOfAnotherStackReachesEveryRing()
    {
        await using var cluster = await StartAsync();
        var client = cluster.Client;
        using var repo = new SignedRepository();
        var (bad, good) = (Unique("roll-bad"), Unique("roll-good"));
        repo.Publish(bad, "1.0.0", new StackProfile(Purpose: "fec as it was"));
        repo.Publish(good, "1.0.0", new StackProfile(Purpose: "arq as it was"));
        await CatalogSync.SyncOnceAsync(repo.Source, client);
        var hosts = Enumerable.Range(1, 4).Select(i => Unique($"rh{i}")).ToList();
        string[] stacks = [bad, good];
        await RegisterAsync(client, hosts, stacks);
        var catalog = client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        Assert.Empty((await catalog.ListRolloutsAsync()).Where(r => r.StackId == bad || r.StackId == good));

        // Two rollouts at once, of different stacks.
        repo.Publish(bad, "1.0.1", new StackProfile(Purpose: "fec without parity"));
        repo.Publish(good, "1.1.0", new StackProfile(Purpose: "arq, better"));
        await CatalogSync.SyncOnceAsync(repo.Source, client);
        Assert.Equal(("1.0.0", "1.0.1", RolloutStatus.Running), (await RolloutOf(client, bad)) is var b ? (b.From, b.To, b.Status) : default);
        Assert.Equal(("1.0.0", "1.1.0"), (await RolloutOf(client, good)) is var g ? (g.From, g.To) : default);

        var random = new Random(11);
        var ranBad = new ConcurrentDictionary<string, bool>(StringComparer.Ordinal);
        await Eventually.TrueAsync(async () =>
        {
            foreach (var (host, released) in await ReportAsync(client, hosts, stacks, random, worse: (bad, "1.0.1")))
            {
                if (released.GetValueOrDefault(bad) == "1.0.1")
                {
                    ranBad[host] = true;
                }
            }
            await Task.Delay(100, TestContext.Current.CancellationToken);
            return (await RolloutOf(client, bad)).Status == RolloutStatus.RolledBack && (await RolloutOf(client, good)).Status == RolloutStatus.Completed;
        }, Wait, "the bad version rolled back and the good one everywhere", async () => $"{Describe(await RolloutOf(client, bad))} | {Describe(await RolloutOf(client, good))}");

        // The bad version reached the canary only, came back everywhere, and the catalog says why.
        var badRollout = await RolloutOf(client, bad);
        Assert.Equal(0, badRollout.Ring);
        Assert.Subset(badRollout.Rings[0].Hosts.ToHashSet(), ranBad.Keys.ToHashSet());
        Assert.Equal(2, ranBad.Count);
        Assert.Equal(("roll back", RolloutMachine.Gates), (badRollout.Steps[^1].Action, badRollout.Steps[^1].By));
        var judged = Assert.Single(await catalog.ListBadAsync(), x => x.StackId == bad);
        Assert.Equal("1.0.1", judged.Version);
        Assert.Contains("utility: utility", judged.Evidence, StringComparison.Ordinal);
        Assert.Contains("worse beyond the margin", judged.Evidence, StringComparison.Ordinal);
        foreach (var host in hosts)
        {
            var desired = await client.GetGrain<IHostGrain>(host).GetDesiredStateAsync();
            Assert.Equal(("1.0.0", "1.1.0"), (desired.Releases[bad], desired.Releases[good]));
        }
        // The good one went through every ring, each reached by its gates.
        var goodRollout = await RolloutOf(client, good);
        Assert.Equal(["start", .. goodRollout.Rings.Select(r => "reach " + r.Name), "complete"], goodRollout.Steps.Select(s => s.Action));
        Assert.Contains("utility: utility", goodRollout.Steps[^1].Why, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Operators_PauseResumePromoteAndRollBack_AndEachStepSaysWhoAndWhy_AndNoOneButASiloJudges()
    {
        await using var cluster = await StartAsync();
        var client = cluster.Client;
        using var repo = new SignedRepository();
        var stack = Unique("roll-op");
        repo.Publish(stack, "1.0.0", new StackProfile(Purpose: "old"));
        await CatalogSync.SyncOnceAsync(repo.Source, client);
        var hosts = Enumerable.Range(1, 4).Select(i => Unique($"oh{i}")).ToList();
        await RegisterAsync(client, hosts, [stack]);
        repo.Publish(stack, "2.0.0", new StackProfile(Purpose: "new"));
        await CatalogSync.SyncOnceAsync(repo.Source, client);
        var catalog = client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        await Eventually.TrueAsync(async () => (await RolloutOf(client, stack)).Ring == 0, Wait, "the rings planned", async () => Describe(await RolloutOf(client, stack)));

        Assert.Equal("'jump' is not a rollout step (pause, resume, promote or rollback)", await catalog.StepRolloutAsync(stack, "jump", "operator 'ana'", "why"));
        Assert.Equal("a rollout step says who takes it and why", await catalog.StepRolloutAsync(stack, "pause", "operator 'ana'", " "));
        Assert.Equal($"stack '{stack}-x' has no rollout", await catalog.StepRolloutAsync(stack + "-x", "pause", "operator 'ana'", "why"));
        Assert.Null(await catalog.StepRolloutAsync(stack, "pause", "operator 'ana'", "investigating"));
        // No outcomes arrive, so the utility gate stays pending and nothing would move anyway; promote by hand, ring by ring.
        Assert.Null(await catalog.StepRolloutAsync(stack, "promote", "operator 'ana'", "the canary looks fine"));
        var promoted = await RolloutOf(client, stack);
        Assert.Equal((1, RolloutStatus.Paused), (promoted.Ring, promoted.Status));
        var reached = promoted.Rings.Take(2).SelectMany(r => r.Hosts).ToHashSet(StringComparer.Ordinal);
        foreach (var host in hosts)
        {
            Assert.Equal(reached.Contains(host) ? "2.0.0" : "1.0.0", (await client.GetGrain<IHostGrain>(host).GetDesiredStateAsync()).Releases[stack]);
        }
        // A forged judgement from a client reaching the catalog directly is only refused on a secured cluster (see the
        // security tests); here: a judgement of another version changes nothing.
        await catalog.JudgedAsync(new RolloutJudgement(stack, "9.9.9", [new GateResult("utility", GateVerdict.Failed, "forged")], []));
        Assert.Equal(RolloutStatus.Paused, (await RolloutOf(client, stack)).Status);

        Assert.Null(await catalog.StepRolloutAsync(stack, "resume", "operator 'ana'", "done investigating"));
        // Rolled back while a ring is half applied: every host back to 1.0.0 at its next read, 2.0.0 marked bad by the operator.
        Assert.Null(await catalog.StepRolloutAsync(stack, "rollback", "operator 'ben'", "tenants report resets"));
        Assert.Contains("already rolled back", await catalog.StepRolloutAsync(stack, "rollback", "operator 'ben'", "again"), StringComparison.Ordinal);
        foreach (var host in hosts)
        {
            Assert.Equal("1.0.0", (await client.GetGrain<IHostGrain>(host).GetDesiredStateAsync()).Releases[stack]);
        }
        var rollout = await RolloutOf(client, stack);
        Assert.Equal(["start", "reach canary", "pause", $"reach {rollout.Rings[1].Name}", "resume", "roll back"], rollout.Steps.Select(s => s.Action));
        Assert.Equal(("operator 'ben'", "tenants report resets"), (rollout.Steps[^1].By, rollout.Steps[^1].Why));
        var badVersion = Assert.Single(await catalog.ListBadAsync(), x => x.StackId == stack);
        Assert.Equal(("2.0.0", "operator 'ben'", "tenants report resets"), (badVersion.Version, badVersion.By, badVersion.Evidence));
    }

    [Fact]
    public async Task ASiloStoppedMidRollout_LosesNoStep_AndTheRolloutCompletesOnTheOther()
    {
        await using var cluster = await StartAsync();
        var client = cluster.Client;
        using var repo = new SignedRepository();
        var stack = Unique("roll-fo");
        repo.Publish(stack, "1.0.0", new StackProfile(Purpose: "old"));
        await CatalogSync.SyncOnceAsync(repo.Source, client);
        var hosts = Enumerable.Range(1, 4).Select(i => Unique($"fh{i}")).ToList();
        await RegisterAsync(client, hosts, [stack]);
        repo.Publish(stack, "1.0.1", new StackProfile(Purpose: "new"));
        await CatalogSync.SyncOnceAsync(repo.Source, client);
        var random = new Random(5);
        await Eventually.TrueAsync(async () =>
        {
            await ReportAsync(client, hosts, [stack], random);
            return (await RolloutOf(client, stack)).Ring >= 1;
        }, Wait, "the second ring reached", async () => Describe(await RolloutOf(client, stack)));
        var before = await RolloutOf(client, stack);

        // Stop the silo the catalog lives on (its rollout state is in Azure Table storage, its timer with it).
        var catalog = client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        var address = await client.GetGrain<IManagementGrain>(0).GetActivationAddress(catalog, TestContext.Current.CancellationToken);
        var stopped = cluster.Silos.Single(s => s.SiloAddress.Equals(address));
        await cluster.StopSiloAsync(stopped, TestContext.Current.CancellationToken);
        Assert.Single(cluster.Silos);

        await Eventually.TrueAsync(async () =>
        {
            try
            {
                foreach (var host in hosts)
                {
                    // Agents register again every few seconds; a host grain that lived on the stopped silo comes back so.
                    await client.GetGrain<IHostGrain>(host).RegisterAsync(Info(host, [stack], "1.0.0"), client.CreateObjectReference<IAgentObserver>(_agents[0]));
                }
                await ReportAsync(client, hosts, [stack], random);
                return (await RolloutOf(client, stack)).Status == RolloutStatus.Completed;
            }
            catch (Exception e) when (e is OrleansException or TimeoutException or SiloUnavailableException)
            {
                return false;
            }
        }, Wait, "the rollout completed on the remaining silo", async () => Describe(await RolloutOf(client, stack)));
        var after = await RolloutOf(client, stack);
        Assert.Equal(before.Steps, after.Steps.Take(before.Steps.Length));
        Assert.Equal(before.Rings.SelectMany(r => r.Hosts), after.Rings.SelectMany(r => r.Hosts));
        foreach (var host in hosts)
        {
            Assert.Equal("1.0.1", (await client.GetGrain<IHostGrain>(host).GetDesiredStateAsync()).Releases[stack]);
        }
    }
}
