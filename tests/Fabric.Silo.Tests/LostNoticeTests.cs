using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// A VM migrating back to a host it had left, while a call to another host's grain fails (its silo killed under it): the
/// fleet test's CI run left the confidential VM without a stack on its old-new host for over 90 s. The network had stored
/// the move and then failed to tell one host; the VM's placement had been stored, but its first decisions never ran (the
/// migration's source, retrying its removal, was told the VM was not gone), and the VM ignored its host's notices because
/// it had decided on like conditions from the host in between. A silo of its own whose host grains refuse network changes
/// while the test says so (the fault injected at the grain call boundary; everything else is the real grains).
/// </summary>
public sealed class LostNoticeTests : IAsyncLifetime
{
    private readonly RefuseNetworkChanges _faults = new();
    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync() => _cluster = await ClusterFixture.StartAsync(1, services => services.AddSingleton<IIncomingGrainCallFilter>(_faults));

    public async ValueTask DisposeAsync() => await _cluster.DisposeAsync();

    private static string Unique(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..16];

    private static PathSample Sample(string a, string b) => new(a, b, 30, 0.5, 1000, 0, 100, DateTimeOffset.UtcNow);

    private static VmPlacement On(string host, uint vni, string mac, string ipv4) =>
        new(host, "vm", vni, [mac], Policy("general")) { Vnics = [new Vnic(mac, vni, [ipv4], [])] };

    [Fact]
    public async Task AVmBackOnAHostItLeft_GetsItsStack_AndTheHostANoticeMissedIsRepaired()
    {
        var client = _cluster.Client;
        var (a, b, c) = (Unique("host-a"), Unique("host-b"), Unique("host-c"));
        foreach (var id in new[] { a, b, c })
        {
            await client.GetGrain<IHostGrain>(id).RegisterAsync(new HostInfo(id, "127.0.0.1", null, 47110, [.. HostStacks], [], "test") { PublicKey = "key-" + id },
                client.CreateObjectReference<IAgentObserver>(new RecordingAgent()));
        }
        var vni = (uint)Random.Shared.Next(1_000, 16_000_000);
        var (vm1, vm2) = (Unique("vm1"), Unique("vm2"));
        const string mac = "52:54:00:00:00:01";
        await client.GetGrain<IVmGrain>(vm2).PlaceAsync(On(b, vni, "52:54:00:00:00:02", "10.0.0.2"));

        // The agents of host-a and host-c report their paths to host-b twice a second, as agents do, all along.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var reporting = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await client.GetGrain<IHostGrain>(a).ReportAsync([Sample(a, b)], []);
                await client.GetGrain<IHostGrain>(c).ReportAsync([Sample(c, b)], []);
                await Task.Delay(TimeSpan.FromMilliseconds(500), CancellationToken.None);
            }
        }, CancellationToken.None);
        async Task<string?> BoundAsync(string host) =>
            (await client.GetGrain<IHostGrain>(host).GetDesiredStateAsync()).Bindings.FirstOrDefault(x => x.VmId == vm1 && x.RemoteHost == b)?.Stack;
        async Task<string?> RouteAtB() => (await client.GetGrain<IHostGrain>(b).GetDesiredStateAsync()).Routes.FirstOrDefault(r => r.VmId == vm1)?.HostId;
        async Task<string> SeenAsync() => $"bound on {a}: {await BoundAsync(a)}, on {c}: {await BoundAsync(c)}; {b} routes {vm1} to {await RouteAtB()}; refused {_faults.Refused}";
        try
        {
            var vm = client.GetGrain<IVmGrain>(vm1);
            await vm.PlaceAsync(On(a, vni, mac, "10.0.0.1"));
            await Eventually.TrueAsync(async () => await BoundAsync(a) is not null, TimeSpan.FromSeconds(10), "vm1 bound on host-a", SeenAsync);
            await vm.PlaceAsync(On(c, vni, mac, "10.0.0.1"));
            await Eventually.TrueAsync(async () => await BoundAsync(c) is not null && await RouteAtB() == c, TimeSpan.FromSeconds(10), "vm1 bound on host-c", SeenAsync);

            // Back to host-a while host-b's grain refuses network changes: host-b misses that vm1 moved.
            _faults.Refusing = b;
            try
            {
                await vm.PlaceAsync(On(a, vni, mac, "10.0.0.1"));
            }
            catch (TimeoutException)
            {
                // Whether the placement's caller hears of the failure is not what is tested: that nothing stays lost is.
            }
            Assert.True(_faults.Refused > 0, "the fault was not injected");
            _faults.Refusing = null;

            await Eventually.TrueAsync(async () => await BoundAsync(a) is not null && await RouteAtB() == a, TimeSpan.FromSeconds(30),
                "vm1 bound on host-a again, and host-b routing it there", SeenAsync);
            Assert.Null(await BoundAsync(c));
        }
        finally
        {
            await stop.CancelAsync();
            await reporting;
        }
    }

    /// <summary>The host grain named by <see cref="Refusing"/> refuses <see cref="IHostGrain.NetworkChangedAsync"/>, as a call to a dead silo fails.</summary>
    private sealed class RefuseNetworkChanges : IIncomingGrainCallFilter
    {
        public volatile string? Refusing;
        private int _refused;

        public int Refused => Volatile.Read(ref _refused);

        public Task Invoke(IIncomingGrainCallContext context)
        {
            if (Refusing is { } host && context.InterfaceMethod?.Name == nameof(IHostGrain.NetworkChangedAsync) && context.TargetId.Key.ToString() == host)
            {
                Interlocked.Increment(ref _refused);
                throw new TimeoutException("injected: the host grain's silo does not answer");
            }
            return context.Invoke();
        }
    }
}
