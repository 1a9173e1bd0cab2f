using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// A VM's decision must reach its host even when the call that carries it fails (the host grain's silo killed under it).
/// A CI run of the cluster fault test left one VM of 1,000 on its old stack for over a minute after a kill -9: the VM had
/// taken the decision, its bind failed, and it ignored the same conditions told again. A silo of its own whose host grains
/// refuse binds while the test says so (the fault injected at the grain call boundary; everything else is the real grain).
/// </summary>
public sealed class BindingRetryTests : IAsyncLifetime
{
    private readonly RefuseBinds _faults = new();
    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync() => _cluster = await ClusterFixture.StartAsync(1, services => services.AddSingleton<IIncomingGrainCallFilter>(_faults));

    public async ValueTask DisposeAsync() => await _cluster.DisposeAsync();

    private static PathSample Sample(string a, string b, long lost) => new(a, b, 30, 0.5, 1000, lost, 100, DateTimeOffset.UtcNow);

    [Fact]
    public async Task ADecisionWhoseBindFailed_ReachesTheHostOnceItTakesBindsAgain_ThoughThePathTellsNothingNew()
    {
        var client = _cluster.Client;
        var (a, b) = ($"host-a-{Guid.NewGuid():N}"[..16], $"host-b-{Guid.NewGuid():N}"[..16]);
        var host = client.GetGrain<IHostGrain>(a);
        await host.RegisterAsync(new HostInfo(a, "127.0.0.1", null, 47110, [.. HostStacks], [], "test"), client.CreateObjectReference<IAgentObserver>(new RecordingAgent()));
        await client.GetGrain<IHostGrain>(b).RegisterAsync(new HostInfo(b, "127.0.0.1", null, 47110, [.. HostStacks], [], "test"), client.CreateObjectReference<IAgentObserver>(new RecordingAgent()));
        await host.ReportAsync([Sample(a, b, 0)], []);
        var vmId = $"vm-{Guid.NewGuid():N}"[..12];
        var vm = client.GetGrain<IVmGrain>(vmId);
        await vm.PlaceAsync(new VmPlacement(a, "bulk", 100, ["52:54:00:00:00:01"], Policy("bulk")));
        async Task<string?> BoundAsync() => (await host.GetDesiredStateAsync()).Bindings.FirstOrDefault(x => x.VmId == vmId && x.RemoteHost == b)?.Stack;
        await Eventually.TrueAsync(async () => await BoundAsync() == "std-ipv4", TimeSpan.FromSeconds(10), "std-ipv4 bound on the clean path",
            async () => $"bound {await BoundAsync()}");

        // The path turns lossy while the host refuses binds: the VM decides, its bind fails.
        _faults.Refusing = true;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var reporting = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await host.ReportAsync([Sample(a, b, 50)], []);
                await Task.Delay(TimeSpan.FromMilliseconds(500), CancellationToken.None);
            }
        }, CancellationToken.None);
        try
        {
            await Eventually.TrueAsync(async () => (await vm.GetAsync()).Stacks.GetValueOrDefault(b) is { } s && s != "std-ipv4", TimeSpan.FromSeconds(60),
                "the VM decided to leave std-ipv4 on the lossy path", async () => $"the VM has {(await vm.GetAsync()).Stacks.GetValueOrDefault(b)}");
            var decided = (await vm.GetAsync()).Stacks[b];
            // The VM records its decision before its bind reaches the host: the refusal may come a moment after (a CI run
            // read the count between the two).
            await Eventually.TrueAsync(() => Task.FromResult(_faults.Refused > 0), TimeSpan.FromSeconds(10), "the host refused the VM's bind",
                () => Task.FromResult($"refused {_faults.Refused}"));
            Assert.Equal("std-ipv4", await BoundAsync());

            // The host takes binds again; the path's conditions stay as they were (nothing significant to tell).
            _faults.Refusing = false;
            await Eventually.TrueAsync(async () => await BoundAsync() == decided, TimeSpan.FromSeconds(30), $"{decided} bound on the host once it took binds again",
                async () => $"bound {await BoundAsync()}, the VM has {(await vm.GetAsync()).Stacks.GetValueOrDefault(b)}");
        }
        finally
        {
            await stop.CancelAsync();
            await reporting;
        }
    }

    /// <summary>Host grains refuse <see cref="IHostGrain.BindAsync"/> while <see cref="Refusing"/>, as a call to a dead silo fails.</summary>
    private sealed class RefuseBinds : IIncomingGrainCallFilter
    {
        public volatile bool Refusing;
        private int _refused;

        public int Refused => Volatile.Read(ref _refused);

        public Task Invoke(IIncomingGrainCallContext context)
        {
            if (Refusing && context.InterfaceMethod?.Name == nameof(IHostGrain.BindAsync))
            {
                Interlocked.Increment(ref _refused);
                throw new TimeoutException("injected: the host grain's silo does not answer");
            }
            return context.Invoke();
        }
    }
}
