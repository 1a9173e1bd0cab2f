using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;
using static Fabric.Silo.Tests.Catalogs;

namespace Fabric.Silo.Tests;

/// <summary>
/// An agent's subscription to its host grain expires unless the host shows it is alive. The control-plane benchmark's
/// agents registered once and then only reported; a minute later their host grains silently stopped pushing, and 44 % of
/// the decisions of a two-minute run never reached an agent. A silo of its own, with subscriptions that last 2 s.
/// </summary>
public sealed class ObserverExpiryTests : IAsyncLifetime
{
    private static readonly TimeSpan Expiry = TimeSpan.FromSeconds(2);
    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync() => _cluster = await ClusterFixture.StartAsync(1, services => services.AddSingleton(new AgentSubscriptionOptions { Expiry = Expiry }));

    public async ValueTask DisposeAsync() => await _cluster.DisposeAsync();

    private async Task<(IHostGrain Host, RecordingAgent Agent, string A, string B)> RegisteredAsync()
    {
        var (a, b) = ($"host-a-{Guid.NewGuid():N}"[..16], $"host-b-{Guid.NewGuid():N}"[..16]);
        var client = _cluster.Client;
        var agent = new RecordingAgent();
        var host = client.GetGrain<IHostGrain>(a);
        await host.RegisterAsync(new HostInfo(a, "127.0.0.1", null, 47110, [.. HostStacks], [], "test"), client.CreateObjectReference<IAgentObserver>(agent));
        await client.GetGrain<IHostGrain>(b).RegisterAsync(new HostInfo(b, "127.0.0.1", null, 47110, [.. HostStacks], [], "test"), client.CreateObjectReference<IAgentObserver>(new RecordingAgent()));
        return (host, agent, a, b);
    }

    private static PathSample Clean(string a, string b) => new(a, b, 30, 0.5, 1000, 0, 100, DateTimeOffset.UtcNow);

    private async Task PlaceAsync(string host) =>
        await _cluster.Client.GetGrain<IVmGrain>($"vm-{Guid.NewGuid():N}"[..12]).PlaceAsync(new VmPlacement(host, "web", 100, ["52:54:00:00:00:01"], Policy()));

    [Fact]
    public async Task AnAgentThatOnlyReports_KeepsBeingToldItsDesiredState_PastTheSubscriptionsExpiry()
    {
        var (host, agent, a, b) = await RegisteredAsync();
        // Three expiries' worth of reports, no renewal and no new registration.
        var until = DateTime.UtcNow + 3 * Expiry;
        while (DateTime.UtcNow < until)
        {
            await host.ReportAsync([Clean(a, b)], []);
            await Task.Delay(Expiry / 5, TestContext.Current.CancellationToken);
        }
        // Still reporting while the VM is placed and pushed (a slow machine may take longer than an expiry for that).
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var reporting = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await host.ReportAsync([Clean(a, b)], []);
                await Task.Delay(Expiry / 5, CancellationToken.None);
            }
        }, CancellationToken.None);
        await PlaceAsync(a);
        Eventually.True(() => agent.States.Any(s => s.Upserts.Any(u => u.RemoteHost == b)), TimeSpan.FromSeconds(10), "the new VM's binding pushed to the agent",
            () => string.Join("; ", agent.States));
        await stop.CancelAsync();
        await reporting;
    }

    [Fact]
    public async Task AnAgentThatFallsSilent_IsNoLongerTold_AfterTheExpiry()
    {
        var (host, agent, a, b) = await RegisteredAsync();
        await host.ReportAsync([Clean(a, b)], []);
        await Task.Delay(Expiry + TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken);
        await PlaceAsync(a);
        // The VM is bound on the silo; only the push to a vanished agent is not made (a push arrives within milliseconds:
        // the test above).
        await Task.Delay(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken);
        Assert.Empty(agent.States);
        Assert.NotEmpty((await host.GetDesiredStateAsync()).Bindings);
    }
}
