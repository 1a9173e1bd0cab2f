using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// A switch pending on a path whose recheck fails. A VM on a path that turns lossy gets a pending switch; its recheck,
/// when the sustain is over, reads the path from the host grain. A silo's kill -9 fails such calls for seconds, and the
/// cluster-fault test's CI run once had one VM of 1,000 not decided again 90 s after the kill: a failed recheck armed no
/// other, and the host grain, whose notice had been answered, told the path again only after a minute. A silo of its own
/// whose host grains fail the next path read while the test says so (the fault injected at the grain call boundary;
/// everything else is the real grains).
/// </summary>
public sealed class StrandedSwitchTests : IAsyncLifetime
{
    private readonly FailPathReads _faults = new();
    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync() => _cluster = await ClusterFixture.StartAsync(1, services => services.AddSingleton<IIncomingGrainCallFilter>(_faults));

    public async ValueTask DisposeAsync() => await _cluster.DisposeAsync();

    private static string Unique(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..16];

    [Fact]
    public async Task ASwitchWhoseRecheckFailed_IsCheckedAgain_NotAMinuteLater()
    {
        var client = _cluster.Client;
        var (a, b) = (Unique("host-a"), Unique("host-b"));
        foreach (var id in new[] { a, b })
        {
            await client.GetGrain<IHostGrain>(id).RegisterAsync(new HostInfo(id, "127.0.0.1", null, 47110, [.. HostStacks], [], "test") { PublicKey = "key-" + id },
                client.CreateObjectReference<IAgentObserver>(new RecordingAgent()));
        }
        var vni = (uint)Random.Shared.Next(1_000, 16_000_000);
        var vm1 = Unique("vm1");
        await client.GetGrain<IVmGrain>(Unique("vm2")).PlaceAsync(new VmPlacement(b, "vm", vni, ["52:54:00:00:00:02"], Policy("general"))
        { Vnics = [new Vnic("52:54:00:00:00:02", vni, ["10.0.0.2"], [])] });

        // host-a's agent reports its path to host-b twice a second: clean, then 5 % loss, which holds. The lossy seconds
        // carry a hundred times the datagrams, so the path's loss (counted over its last three samples at least) is 5 %
        // from the first of them: one notice, and no later one that would decide the pending switch in its stead.
        var lossy = 0;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var reporting = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var (sent, lost) = Volatile.Read(ref lossy) == 0 ? (1_000, 0) : (100_000, 5_000);
                await client.GetGrain<IHostGrain>(a).ReportAsync([new PathSample(a, b, 30, 0.5, sent, lost, 100, DateTimeOffset.UtcNow)], []);
                await Task.Delay(TimeSpan.FromMilliseconds(500), CancellationToken.None);
            }
        }, CancellationToken.None);
        async Task<string?> BoundAsync() =>
            (await client.GetGrain<IHostGrain>(a).GetDesiredStateAsync()).Bindings.FirstOrDefault(x => x.VmId == vm1 && x.RemoteHost == b)?.Stack;
        async Task<string> SeenAsync() =>
            $"bound {await BoundAsync()}; path reads failed {_faults.Failed}; last decision: {(await client.GetGrain<IVmGrain>(vm1).GetAsync()).Last.GetValueOrDefault(b)?.Reason}";
        try
        {
            await client.GetGrain<IVmGrain>(vm1).PlaceAsync(new VmPlacement(a, "vm", vni, ["52:54:00:00:00:01"], Policy("general"))
            { Vnics = [new Vnic("52:54:00:00:00:01", vni, ["10.0.0.1"], [])] });
            await Eventually.TrueAsync(async () => await BoundAsync() == "std-ipv4", TimeSpan.FromSeconds(15), "vm1 on std-ipv4 on the clean path", SeenAsync);

            // The next read of host-a's paths fails (the recheck of the switch the loss makes pending).
            _faults.Failing = a;
            Volatile.Write(ref lossy, 1);
            await Eventually.TrueAsync(() => Task.FromResult(_faults.Failed > 0), TimeSpan.FromSeconds(15), "a recheck read the path (the fault injected)", SeenAsync);
            await Eventually.TrueAsync(async () => await BoundAsync() is { } stack && stack != "std-ipv4", TimeSpan.FromSeconds(15),
                "vm1 off std-ipv4 on the lossy path within 15 s of its failed recheck (the host tells the path again only after a minute)", SeenAsync);
        }
        finally
        {
            await stop.CancelAsync();
            await reporting;
        }
    }

    /// <summary>The host grain named by <see cref="Failing"/> fails the next <see cref="IHostGrain.GetPathAsync"/>, as a call to a dead silo fails.</summary>
    private sealed class FailPathReads : IIncomingGrainCallFilter
    {
        public volatile string? Failing;
        private int _failed;

        public int Failed => Volatile.Read(ref _failed);

        public Task Invoke(IIncomingGrainCallContext context)
        {
            if (Failing is { } host && context.InterfaceMethod?.Name == nameof(IHostGrain.GetPathAsync) && context.TargetId.Key.ToString() == host)
            {
                Failing = null;
                Interlocked.Increment(ref _failed);
                throw new TimeoutException("injected: the host grain's silo does not answer");
            }
            return context.Invoke();
        }
    }
}
