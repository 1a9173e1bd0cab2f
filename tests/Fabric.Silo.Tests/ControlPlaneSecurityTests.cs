using System.Collections.Immutable;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Fabric.Silo.Security;
using Fabric.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace Fabric.Silo.Tests;

/// <summary>
/// The control channel attacked from the outside and from inside the fleet: a real silo with TLS and the caller filter
/// (Orleans over TCP on loopback), clients with certificates of its authority (two agents, an operator), of another
/// authority and of none. Each must be able to do exactly what its role allows.
/// </summary>
[Collection(nameof(AgentLinkTests))]
public sealed class ControlPlaneSecurityTests : IAsyncLifetime
{
    private readonly DevelopmentAuthority _authority = DevelopmentAuthority.Create();
    private readonly List<IHost> _hosts = [];
    private readonly DirectoryInfo _folder = Directory.CreateTempSubdirectory("fabric-crl-");
    private int _gatewayPort;
    private IHost _silo = null!;

    /// <summary>The silo's revocation list file (the authority's CRL; it starts empty).</summary>
    private string RevocationListPath => Path.Combine(_folder.FullName, "revoked.crl.pem");

    /// <summary>Writes a revocation list of <paramref name="signer"/> naming <paramref name="revoked"/> to the silo's list file, as an operator copies a new one in (whole, then renamed).</summary>
    private void WriteRevocationList(X509Certificate2 signer, params X509Certificate2[] revoked) => WriteRevocationList(RevocationListPath, signer, revoked);

    private void WriteRevocationList(string path, X509Certificate2 signer, params X509Certificate2[] revoked)
    {
        var builder = new CertificateRevocationListBuilder();
        foreach (var certificate in revoked)
        {
            builder.AddEntry(certificate, DateTimeOffset.UtcNow);
        }
        var crl = builder.Build(signer, System.Numerics.BigInteger.One + _crlNumber++, DateTimeOffset.UtcNow.AddDays(7), HashAlgorithmName.SHA256);
        File.WriteAllText(path + ".new", PemEncoding.WriteString("X509 CRL", crl));
        File.Move(path + ".new", path, overwrite: true);
    }

    private int _crlNumber;

    private readonly ControlPlaneCredential _siloCredential;

    public ControlPlaneSecurityTests() => _siloCredential = _authority.Issue(CallerRole.Silo, "silo-1");

    public async ValueTask InitializeAsync()
    {
        var siloPort = LoopbackPorts.Free();
        _gatewayPort = LoopbackPorts.Free();
        WriteRevocationList(_authority.Certificate);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.UseOrleans(silo => silo
            .UseLocalhostClustering(siloPort, _gatewayPort, serviceId: "fabric", clusterId: "fabric")
            .AddMemoryGrainStorage(Storage.Name)
            .UseControlPlaneSecurity(_siloCredential, RevocationListPath)
            .AddFabricControlPlane(ClusterFixture.Selector));
        _silo = builder.Build();
        await _silo.StartAsync();
        // The silo's own client calls as the silo.
        foreach (var stack in Catalogs.All)
        {
            await _silo.Services.GetRequiredService<IClusterClient>().GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var host in _hosts)
        {
            await host.StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            host.Dispose();
        }
        await _silo.StopAsync();
        _silo.Dispose();
        _siloCredential.Dispose();
        _authority.Dispose();
        _folder.Delete(recursive: true);
    }

    private async Task<IClusterClient> ConnectAsync(ControlPlaneCredential? credential, Action<IServiceCollection>? extra = null, string? revocationList = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.UseOrleansClient(client =>
        {
            client.UseLocalhostClustering(_gatewayPort, serviceId: "fabric", clusterId: "fabric");
            client.Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(10));
            client.UseConnectionRetryFilter((_, _) => Task.FromResult(false));
            if (credential is not null)
            {
                client.UseControlPlaneSecurity(credential, revocationList);
            }
            extra?.Invoke(client.Services);
        });
        var host = builder.Build();
        try
        {
            await host.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        }
        catch
        {
            host.Dispose();
            throw;
        }
        _hosts.Add(host);
        return host.Services.GetRequiredService<IClusterClient>();
    }

    private static HostInfo Info(string host) => new(host, "127.0.0.1", null, 4789, ["std-ipv4"], [], "test") { PublicKey = "AAAA" };

    private static VmPlacement Placement(string host, string vm) => new(host, vm, 7, ["02:00:00:00:09:01"], null)
    {
        Vnics = [new Vnic("02:00:00:00:09:01", 7, ["10.9.0.1"], [])],
    };

    [Fact]
    public async Task AnAgent_ActsAsItsOwnHost_AndNothingElse()
    {
        var a = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-a"));
        var observer = new RecordingObserver();
        var reference = a.CreateObjectReference<IAgentObserver>(observer);
        await a.GetGrain<IHostGrain>("host-a").RegisterAsync(Info("host-a"), reference);
        await a.GetGrain<IVmGrain>("vm-a").PlaceAsync(Placement("host-a", "vm-a"));
        await a.GetGrain<IHostGrain>("host-a").ReportAsync([], []);
        Assert.NotEmpty(await a.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync());

        // Another host's grain, its VMs, its identity, and everything only the cluster or an operator does: refused.
        var refusals = new Func<Task>[]
        {
            () => a.GetGrain<IHostGrain>("host-b").RegisterAsync(Info("host-b"), reference).AsTask(),
            () => a.GetGrain<IHostGrain>("host-a").RegisterAsync(Info("host-b"), reference).AsTask(),
            () => a.GetGrain<IHostGrain>("host-b").ReportAsync([], []).AsTask(),
            () => a.GetGrain<IHostGrain>("host-b").GetDesiredStateAsync().AsTask(),
            () => a.GetGrain<IHostGrain>("host-a").BindAsync([new Binding("vm-a", "host-b", "std-ipv4")]).AsTask(),
            () => a.GetGrain<IHostGrain>("host-b").NetworkChangedAsync(7, true, [], [], []).AsTask(),
            () => a.GetGrain<IVmGrain>("vm-b").PlaceAsync(Placement("host-b", "vm-b")).AsTask(),
            () => a.GetGrain<IVmGrain>("vm-a").RemoveAsync("host-b").AsTask(),
            () => a.GetGrain<IVmGrain>("vm-a").SetPolicyAsync(new Policy("general", "standard", "ipv4", [], [], null, 0)).AsTask(),
            () => a.GetGrain<IVmGrain>("vm-a").GetAsync().AsTask(),
            () => a.GetGrain<INetworkGrain>(INetworkGrain.KeyOf(7)).SetMemberAsync("vm-x", new Peer("host-a", "127.0.0.1", null, 4789, "BBBB"), [], false).AsTask(),
            () => a.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(Catalogs.StdIPv4 with { Version = "9.9.9" }).AsTask(),
            // An agent cannot hold its peers (or itself) to a stack version: rolling back is an operator's.
            () => a.GetGrain<ICatalogGrain>(ICatalogGrain.Key).HoldVersionAsync(new VersionHold("std-ipv4", "1.0.0", ["host-b"], "agent", "x", DateTimeOffset.UtcNow)).AsTask(),
            // Nor step a rollout, nor pass off a judgement of one, nor run a judge.
            () => a.GetGrain<ICatalogGrain>(ICatalogGrain.Key).StepRolloutAsync("std-ipv4", "promote", "agent", "x").AsTask(),
            () => a.GetGrain<ICatalogGrain>(ICatalogGrain.Key).JudgedAsync(new RolloutJudgement("std-ipv4", "9.9.9", [], [])).AsTask(),
            () => a.GetGrain<IRolloutJudgeGrain>("std-ipv4").JudgeAsync(null!).AsTask(),
            () => a.GetGrain<ILearnerGrain>(ILearnerGrain.Key).SetLearningEnabledAsync(false).AsTask(),
            () => a.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync().AsTask(),
            () => a.GetGrain<IManagementGrain>(0).GetHosts(),
        };
        foreach (var attempt in refusals)
        {
            await Assert.ThrowsAsync<UnauthorizedAccessException>(attempt);
        }
        var silo = _silo.Services.GetRequiredService<IClusterClient>();
        Assert.Null(await silo.GetGrain<IHostGrain>("host-b").GetInfoAsync());
        Assert.Equal("host-a", (await silo.GetGrain<IVmGrain>("vm-a").GetAsync()).Placement?.HostId);
        Assert.DoesNotContain(await silo.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync(), s => s.Version == "9.9.9");
    }

    [Fact]
    public async Task AnOperator_ChangesPolicies_ButNeverSpeaksForAHost()
    {
        var a = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-a"));
        var observer = new RecordingObserver();
        await a.GetGrain<IHostGrain>("host-a").RegisterAsync(Info("host-a"), a.CreateObjectReference<IAgentObserver>(observer));
        await a.GetGrain<IVmGrain>("vm-o").PlaceAsync(Placement("host-a", "vm-o"));

        var op = await ConnectAsync(_authority.Issue(CallerRole.Operator, "dashboard"));
        Assert.True((await op.GetGrain<IVmGrain>("vm-o").SetPolicyAsync(new Policy("general", "standard", "ipv4", [], [], "std-ipv4", 0))).Accepted);
        Assert.Equal("host-a", (await op.GetGrain<IVmGrain>("vm-o").GetAsync()).Placement?.HostId);
        Assert.Contains("host-a", (await op.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync()).Hosts);
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => op.GetGrain<IHostGrain>("host-a").RegisterAsync(Info("host-a"), null!).AsTask());
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => op.GetGrain<IVmGrain>("vm-o").PlaceAsync(Placement("host-z", "vm-o")).AsTask());
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => op.GetGrain<IHostGrain>("host-a").ReportAsync([], []).AsTask());
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => op.GetGrain<IHostGrain>("host-a").BindAsync([]).AsTask());
        // An operator steps rollouts but never judges one: a forged verdict could roll a good version back or push a bad one out.
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => op.GetGrain<ICatalogGrain>(ICatalogGrain.Key)
            .JudgedAsync(new RolloutJudgement("std-ipv4", "9.9.9", [new GateResult("utility", GateVerdict.Passed, "forged")], [])).AsTask());
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => op.GetGrain<IRolloutJudgeGrain>("std-ipv4").JudgeAsync(null!).AsTask());
        Assert.Equal("stack 'std-ipv4' has no rollout", await op.GetGrain<ICatalogGrain>(ICatalogGrain.Key).StepRolloutAsync("std-ipv4", "pause", "someone else", "x"));
        // Who holds a version is the verified operator, and whom the call says it acts for (a dashboard's signed-in admin) as said by it.
        Assert.Null(await op.GetGrain<ICatalogGrain>(ICatalogGrain.Key).HoldVersionAsync(new VersionHold("std-ipv4", Catalogs.StdIPv4.Version, ["host-z"], "someone else", "a test hold", DateTimeOffset.UtcNow)));
        Assert.Equal("someone else via operator 'dashboard'", (await op.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListHoldsAsync()).Single(h => h.StackId == "std-ipv4").By);
        Assert.Null(await op.GetGrain<ICatalogGrain>(ICatalogGrain.Key).HoldVersionAsync(new VersionHold("std-ipv4", "", [], "x", "done", DateTimeOffset.UtcNow)));

        // host-b's VM joins host-a's network: host-a's agent hears of the route through the cluster's push, made on behalf of
        // host-b's call, and sees neither host-b's token nor the silo's (either could be replayed).
        var b = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-b"));
        await b.GetGrain<IHostGrain>("host-b").RegisterAsync(Info("host-b"), b.CreateObjectReference<IAgentObserver>(new RecordingObserver()));
        await b.GetGrain<IVmGrain>("vm-ob").PlaceAsync(Placement("host-b", "vm-ob") with { Macs = ["02:00:00:00:09:02"], Vnics = [new Vnic("02:00:00:00:09:02", 7, ["10.9.0.2"], [])] });
        await Eventually.TrueAsync(() => Task.FromResult(observer.Changes > 0), TimeSpan.FromSeconds(20), "host-a hears of vm-ob's route",
            () => Task.FromResult($"{observer.Changes} changes"));
        Assert.Equal(0, observer.TokensSeen);
    }

    [Fact]
    public async Task AClaimOnAnotherHostsVm_WaitsForItsHost_IsDroppedWhenTheClaimantLetsGo_AndARemovedHostIsRefusedAtOnce()
    {
        var a = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-ca"));
        var b = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-cb"));
        await a.GetGrain<IHostGrain>("host-ca").RegisterAsync(Info("host-ca"), a.CreateObjectReference<IAgentObserver>(new RecordingObserver()));
        await b.GetGrain<IHostGrain>("host-cb").RegisterAsync(Info("host-cb"), b.CreateObjectReference<IAgentObserver>(new RecordingObserver()));
        var silo = _silo.Services.GetRequiredService<IClusterClient>();
        await a.GetGrain<IVmGrain>("vm-claimed").PlaceAsync(Placement("host-ca", "vm-claimed"));

        // host-cb claims it while host-ca has it: recorded, nothing moves; host-cb lets go: the claim is gone.
        await b.GetGrain<IVmGrain>("vm-claimed").PlaceAsync(Placement("host-cb", "vm-claimed"));
        var view = await silo.GetGrain<IVmGrain>("vm-claimed").GetAsync();
        Assert.Equal(("host-ca", "host-cb"), (view.Placement?.HostId, view.Claim?.HostId));
        await b.GetGrain<IVmGrain>("vm-claimed").RemoveAsync("host-cb");
        view = await silo.GetGrain<IVmGrain>("vm-claimed").GetAsync();
        Assert.Equal(("host-ca", null), (view.Placement?.HostId, view.Claim?.HostId));

        // Claimed again, then host-ca lets go (the end of a migration): the VM is host-cb's.
        await b.GetGrain<IVmGrain>("vm-claimed").PlaceAsync(Placement("host-cb", "vm-claimed"));
        await a.GetGrain<IVmGrain>("vm-claimed").RemoveAsync("host-ca");
        view = await silo.GetGrain<IVmGrain>("vm-claimed").GetAsync();
        Assert.Equal(("host-cb", null), (view.Placement?.HostId, view.Claim?.HostId));

        // Removed by an operator, host-cb is refused at once — before any silo's list of removed hosts is read again — and
        // its VM is gone from it.
        var op = await ConnectAsync(_authority.Issue(CallerRole.Operator, "ops"));
        await op.GetGrain<IFleetGrain>(IFleetGrain.Key).RemoveHostAsync("host-cb");
        Assert.Contains("removed from the fleet", (await Assert.ThrowsAnyAsync<Exception>(() =>
            b.GetGrain<IHostGrain>("host-cb").RegisterAsync(Info("host-cb"), b.CreateObjectReference<IAgentObserver>(new RecordingObserver())).AsTask())).Message);
        Assert.Contains("removed from the fleet", (await Assert.ThrowsAnyAsync<Exception>(() =>
            b.GetGrain<IVmGrain>("vm-other").PlaceAsync(Placement("host-cb", "vm-other")).AsTask())).Message);
        Assert.Null((await silo.GetGrain<IVmGrain>("vm-claimed").GetAsync()).Placement);
        Assert.Null((await silo.GetGrain<IVmGrain>("vm-other").GetAsync()).Placement);
        Assert.DoesNotContain("host-cb", (await op.GetGrain<IFleetGrain>(IFleetGrain.Key).GetAsync()).Hosts);
    }

    [Fact]
    public async Task ATokenForAnotherName_AnotherAuthority_NoTokenOrNoTls_AreRefused()
    {
        // host-b signs a token that names host-a: the certificate in it is host-b's, or the signature fails.
        using var b = _authority.Issue(CallerRole.Agent, "host-b");
        var forged = await ConnectAsync(b, services => services.AddSingleton<IOutgoingGrainCallFilter>(new RewriteToken(token =>
        {
            var parts = token.Split('~');
            return parts[0].Replace("|host-b|", "|host-a|", StringComparison.Ordinal) + "~" + parts[1] + "~" + parts[2];
        })));
        var error = await Assert.ThrowsAsync<UnauthorizedAccessException>(() => forged.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync().AsTask());
        Assert.Contains("host-b", error.Message);

        // A token is not needed to be a valid one to be sent: without one, every grain refuses.
        var bare = await ConnectAsync(b, services => services.AddSingleton<IOutgoingGrainCallFilter>(new RewriteToken(_ => null)));
        error = await Assert.ThrowsAsync<UnauthorizedAccessException>(() => bare.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync().AsTask());
        Assert.Contains("no caller token", error.Message);

        // A token that expired (signed with a clock 20 minutes back).
        var stale = CallerToken.Sign(b, DateTimeOffset.UtcNow.AddMinutes(-20));
        var replayed = await ConnectAsync(b, services => services.AddSingleton<IOutgoingGrainCallFilter>(new RewriteToken(_ => stale)));
        error = await Assert.ThrowsAsync<UnauthorizedAccessException>(() => replayed.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync().AsTask());
        Assert.Contains("expired", error.Message);

        // Another authority's certificate with the right name: no client connects (TheSilosPorts_… shows the silo itself refuses it).
        using var other = DevelopmentAuthority.Create("not the fleet's");
        await Assert.ThrowsAnyAsync<Exception>(() => ConnectAsync(other.Issue(CallerRole.Agent, "host-a")));
        // No TLS at all.
        await Assert.ThrowsAnyAsync<Exception>(() => ConnectAsync(null));
        // An agent's certificate cannot join the cluster as a silo: its port admits silos only.
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        Assert.Throws<ArgumentException>(() => builder.UseOrleans(silo => silo.UseControlPlaneSecurity(_authority.Issue(CallerRole.Agent, "host-a"))));
    }

    [Fact]
    public async Task TwoSecuredSilos_WorkTogether_WithoutARefusal_AndTheCallerFilterRefusesAForgedSenderWithoutAToken()
    {
        // A second silo joins the first (silo port: silos' certificates only); an agent on it places VMs and networks whose
        // grains land on both silos, so Orleans' own calls between them (membership, directory, placement) and Fabric's
        // cross-silo calls all pass the filters.
        using var second = await JoinSecondSiloAsync(_authority.Issue(CallerRole.Silo, "silo-2"));
        try
        {
            var a = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-a"));
            await a.GetGrain<IHostGrain>("host-a").RegisterAsync(Info("host-a"), a.CreateObjectReference<IAgentObserver>(new RecordingObserver()));
            for (var i = 0; i < 40; i++)
            {
                var mac = $"02:00:00:00:0a:{i:x2}";
                await a.GetGrain<IVmGrain>($"vm-two-{i}").PlaceAsync(new VmPlacement("host-a", $"vm-two-{i}", (uint)(100 + i), [mac], null)
                {
                    Vnics = [new Vnic(mac, (uint)(100 + i), [$"10.10.0.{i + 1}"], [])],
                });
            }
            var grains = _silo.Services.GetRequiredService<IClusterClient>();
            for (var i = 0; i < 40; i++)
            {
                Assert.Equal("host-a", (await grains.GetGrain<IVmGrain>($"vm-two-{i}").GetAsync()).Placement?.HostId);
            }
            foreach (var host in new[] { _silo, second })
            {
                Assert.Equal(0, host.Services.GetServices<IIncomingGrainCallFilter>().OfType<CallerAuthorizationFilter>().Single().Refused);
            }
        }
        finally
        {
            await second.StopAsync(CancellationToken.None);
        }

        // A client can write any sender into a message; without a token, it is refused whatever the sender says.
        var filter = _silo.Services.GetServices<IIncomingGrainCallFilter>().OfType<CallerAuthorizationFilter>().Single();
        var forged = new ForgedCall(typeof(IManagementGrain).GetMethods().First(m => m.Name == nameof(IManagementGrain.GetHosts)), GrainId.Create("sys.svc.membership", "0"));
        RequestContext.Clear();
        await Assert.ThrowsAsync<UnauthorizedAccessException>(() => filter.Invoke(forged));
        Assert.False(forged.Invoked);
    }

    /// <summary>
    /// A silo's certificate is revoked while it is a member: the other silo closes the connections it has open with it (both
    /// directions) and refuses new ones at TLS, so the revoked silo is cut off instead of keeping its open connections, and
    /// the cluster declares it dead.
    /// </summary>
    [Fact]
    public async Task ARevokedSilo_HasItsOpenConnectionsClosedByTheOthers_AndLeavesTheCluster()
    {
        using var leaked = _authority.Issue(CallerRole.Silo, "silo-2");
        using var second = await JoinSecondSiloAsync(leaked);
        var management = _silo.Services.GetRequiredService<IClusterClient>().GetGrain<IManagementGrain>(0);
        try
        {
            var revocations = _silo.Services.GetRequiredService<RevokedHosts>();
            var serial = leaked.Certificate.SerialNumber;
            Assert.True(revocations.OpenWith(serial) > 0, "no connection with silo-2 is tracked");

            WriteRevocationList(_authority.Certificate, leaked.Certificate);
            Eventually.True(() => revocations.IsRevokedCertificate(serial) && revocations.OpenWith(serial) == 0, TimeSpan.FromSeconds(15),
                "silo-1's connections with silo-2 closed", () => $"{revocations.OpenWith(serial)} still open");
            // It stays cut off: silo-2's attempts to connect again are refused at TLS, and the cluster declares it dead.
            await Eventually.TrueAsync(async () => (await management.GetHosts(onlyActive: true)).Count == 1, TimeSpan.FromSeconds(90), "silo-2 declared dead",
                async () => string.Join(", ", await management.GetHosts()));
            Assert.Equal(0, revocations.OpenWith(serial));
        }
        finally
        {
            await second.StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30), CancellationToken.None).ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    /// <summary>A second secured silo joined to the first (memory storage, the same selector), once both are active.</summary>
    private async Task<IHost> JoinSecondSiloAsync(ControlPlaneCredential credential)
    {
        var (siloPort, gatewayPort) = (LoopbackPorts.Free(), LoopbackPorts.Free());
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        var firstSiloPort = ((System.Net.IPEndPoint)_silo.Services.GetRequiredService<ILocalSiloDetails>().SiloAddress.Endpoint).Port;
        builder.UseOrleans(silo => silo
            .UseLocalhostClustering(siloPort, gatewayPort, new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, firstSiloPort), serviceId: "fabric", clusterId: "fabric")
            .AddMemoryGrainStorage(Storage.Name)
            .UseControlPlaneSecurity(credential)
            .AddFabricControlPlane(ClusterFixture.Selector));
        var second = builder.Build();
        await second.StartAsync(TestContext.Current.CancellationToken);
        var management = _silo.Services.GetRequiredService<IClusterClient>().GetGrain<IManagementGrain>(0);
        await Eventually.TrueAsync(async () => (await management.GetHosts(onlyActive: true)).Count == 2, TimeSpan.FromSeconds(30), "two active silos",
            async () => string.Join(", ", await management.GetHosts()));
        return second;
    }

    /// <summary>What the silo keeps of each connection for revocation leaves with the connection (no growth with reconnects).</summary>
    [Fact]
    public async Task ATrackedConnection_IsForgottenWhenItCloses()
    {
        var revocations = _silo.Services.GetRequiredService<RevokedHosts>();
        using var credential = _authority.Issue(CallerRole.Agent, "host-t");
        var client = await ConnectAsync(credential);
        Assert.NotEmpty(await client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync());
        Assert.True(revocations.OpenWith(credential.Certificate.SerialNumber) > 0);
        var host = _hosts[^1];
        _hosts.RemoveAt(_hosts.Count - 1);
        await host.StopAsync(TestContext.Current.CancellationToken);
        host.Dispose();
        Eventually.True(() => revocations.OpenWith(credential.Certificate.SerialNumber) == 0 && !revocations.Tracks(credential.Certificate.SerialNumber),
            TimeSpan.FromSeconds(15), "the closed connection forgotten", () => $"{revocations.Tracked} tracked");
    }

    [Fact]
    public async Task TheSilosPorts_AdmitOnlyTheAuthoritysCertificates_AndTheClusterPortOnlySilos()
    {
        var siloPort = ((System.Net.IPEndPoint)_silo.Services.GetRequiredService<ILocalSiloDetails>().SiloAddress.Endpoint).Port;
        using var other = DevelopmentAuthority.Create("not the fleet's");
        using var stranger = other.Issue(CallerRole.Agent, "host-a");
        using var agent = _authority.Issue(CallerRole.Agent, "host-a");
        using var silo = _authority.Issue(CallerRole.Silo, "silo-9");
        var revocations = _silo.Services.GetRequiredService<RevokedHosts>();
        var tracked = revocations.Tracked;
        // Clients that accept any server: only the silo's judgement of their certificate stands between them and it.
        Assert.False(await AdmittedAsync(_gatewayPort, stranger.Certificate), "a stranger's certificate at the gateway");
        Assert.False(await AdmittedAsync(_gatewayPort, null), "no certificate at the gateway");
        Assert.False(await AdmittedAsync(siloPort, agent.Certificate), "an agent's certificate at the cluster port");
        Assert.True(await AdmittedAsync(_gatewayPort, agent.Certificate), "an agent's certificate at the gateway");
        Assert.True(await AdmittedAsync(siloPort, silo.Certificate), "a silo's certificate at the cluster port");
        // Connections refused at the handshake, or closed by the stranger, leave nothing behind in what the silo keeps for
        // revocation: anyone who reaches a port could otherwise grow it without end.
        for (var i = 0; i < 20; i++)
        {
            Assert.False(await AdmittedAsync(_gatewayPort, stranger.Certificate));
        }
        Eventually.True(() => revocations.Tracked <= tracked, TimeSpan.FromSeconds(20), "refused connections forgotten",
            () => $"{revocations.Tracked} tracked, {tracked} before");
    }

    /// <summary>Whether the silo keeps a TLS connection open after the handshake (TLS 1.3: a server refuses a client's certificate by closing).</summary>
    private static async Task<bool> AdmittedAsync(int port, System.Security.Cryptography.X509Certificates.X509Certificate2? certificate)
    {
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(System.Net.IPAddress.Loopback, port);
#pragma warning disable CA5359 // An attacker's client: it trusts any server, so only the silo's judgement of the client's certificate is tested.
        using var tls = new System.Net.Security.SslStream(tcp.GetStream(), false, (_, _, _, _) => true);
#pragma warning restore CA5359
        try
        {
            await tls.AuthenticateAsClientAsync(new System.Net.Security.SslClientAuthenticationOptions
            {
                TargetHost = "silo",
                ClientCertificates = certificate is null ? null : [certificate],
                EnabledSslProtocols = System.Security.Authentication.SslProtocols.Tls13,
            });
            // The silo waits for the client's preamble, so an admitted connection stays silent; a refused one ends.
            using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(3));
            return await tls.ReadAsync(new byte[1], wait.Token) > 0;
        }
        catch (OperationCanceledException)
        {
            return true;
        }
        catch (Exception e) when (e is System.Security.Authentication.AuthenticationException or IOException)
        {
            return false;
        }
    }

    [Fact]
    public void Tokens_AreCheckedForSignatureAuthorityAndTime()
    {
        using var a = _authority.Issue(CallerRole.Agent, "host-a");
        var now = DateTimeOffset.UtcNow;
        var token = CallerToken.Sign(a, now);
        Assert.Equal(new Caller(CallerRole.Agent, "host-a"), CallerToken.Verify(token, _authority.Certificate, now));
        Assert.Equal(new Caller(CallerRole.Agent, "host-a"), CallerToken.Verify(token, _authority.Certificate, now + TimeSpan.FromMinutes(11)));
        Assert.Contains("expired", Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(token, _authority.Certificate, now + TimeSpan.FromMinutes(13))).Message);
        Assert.Contains("not yet valid", Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(token, _authority.Certificate, now - TimeSpan.FromMinutes(3))).Message);
        var parts = token.Split('~');
        var tampered = parts[0].Replace("|agent|", "|silo|", StringComparison.Ordinal) + "~" + parts[1] + "~" + parts[2];
        Assert.Contains("certificate is agent 'host-a'", Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(tampered, _authority.Certificate, now)).Message);
        var stretched = parts[0][..parts[0].LastIndexOf('|')] + "|" + (now.ToUnixTimeSeconds() + 86_400) + "~" + parts[1] + "~" + parts[2];
        Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(stretched, _authority.Certificate, now));
        var resigned = parts[0] + "~" + parts[1] + "~" + Convert.ToBase64String(new byte[64]);
        Assert.Contains("signature", Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(resigned, _authority.Certificate, now)).Message);
        using var other = DevelopmentAuthority.Create("not the fleet's");
        Assert.Contains("certificate", Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(token, other.Certificate, now)).Message);
        Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify("garbage", _authority.Certificate, now));
        // A certificate past its validity signs nothing that is accepted.
        using var old = _authority.Issue(CallerRole.Agent, "host-old", TimeSpan.FromDays(1), now.AddDays(-2));
        Assert.Contains("certificate", Assert.Throws<UnauthorizedAccessException>(() => CallerToken.Verify(CallerToken.Sign(old, now), _authority.Certificate, now)).Message);
    }

    [Fact]
    public void TheVerifier_RemembersOneTokenPerCertificate_AndNoneBeyondItsExpiry()
    {
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var verifier = new CallerVerifier(_authority.Certificate, time);
        using var a = _authority.Issue(CallerRole.Agent, "host-a");
        using var b = _authority.Issue(CallerRole.Agent, "host-b");
        // ECDSA signatures are randomised: one key makes as many distinct valid tokens as it likes.
        for (var i = 0; i < 50; i++)
        {
            Assert.Equal("host-a", verifier.Verify(CallerToken.Sign(a, time.GetUtcNow())).Name);
        }
        var token = CallerToken.Sign(b, time.GetUtcNow());
        Assert.Equal("host-b", verifier.Verify(token).Name);
        Assert.Equal(2, verifier.Remembered);
        time.Advance(TimeSpan.FromMinutes(13));
        Assert.Contains("expired", Assert.Throws<UnauthorizedAccessException>(() => verifier.Verify(token)).Message);
    }

    [Fact]
    public void Credentials_NameWhatIsWrong()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-pki-");
        try
        {
            var files = _authority.IssueFiles(folder.FullName, CallerRole.Agent, "host-a");
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(files.Key));
            using (var loaded = ControlPlaneCredential.Load(files.Certificate, files.Key, files.Authority))
            {
                Assert.Equal(new Caller(CallerRole.Agent, "host-a"), loaded.Caller);
            }
            Assert.Contains("authority.pem", Assert.Throws<FormatException>(() => ControlPlaneCredential.Load(files.Certificate, files.Key, files.Certificate + ".missing")).Message
                .Replace(".pem.missing", "authority.pem", StringComparison.Ordinal));
            using var other = DevelopmentAuthority.Create("not the fleet's");
            var foreign = other.IssueFiles(Path.Combine(folder.FullName, "other"), CallerRole.Agent, "host-a");
            Assert.Contains("fleet's authority", Assert.Throws<FormatException>(() => ControlPlaneCredential.Load(foreign.Certificate, foreign.Key, files.Authority)).Message);
            Assert.Contains(foreign.Key, Assert.Throws<FormatException>(() => ControlPlaneCredential.Load(files.Certificate, foreign.Key, files.Authority)).Message);
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }

    /// <summary>
    /// A stolen agent certificate: the authority revokes it and the silo's list is replaced. Within the silo's refresh
    /// period every call made with it is refused — on the connection it already has, which TLS admitted before — and a new
    /// connection is refused at TLS; that connection is told nothing more either (a VM placed in a network it shares
    /// reaches the other hosts' agents, not its); the other agents go on.
    /// </summary>
    [Fact]
    public async Task ACertificateTheAuthorityRevokes_IsRefusedOnItsOpenConnectionAndAtTls_TheOthersGoOn()
    {
        var stolen = _authority.Issue(CallerRole.Agent, "host-a");
        var a = await ConnectAsync(stolen);
        var b = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-b"));
        var c = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-c"));
        var (seenA, seenC) = (new RecordingObserver(), new RecordingObserver());
        var reference = a.CreateObjectReference<IAgentObserver>(seenA);
        await a.GetGrain<IHostGrain>("host-a").RegisterAsync(Info("host-a"), reference);
        await c.GetGrain<IHostGrain>("host-c").RegisterAsync(Info("host-c"), c.CreateObjectReference<IAgentObserver>(seenC));
        static VmPlacement InNetwork7(string host, string vm, int n) => new(host, vm, 7, [$"02:00:00:00:09:0{n}"], null)
        {
            Vnics = [new Vnic($"02:00:00:00:09:0{n}", 7, [$"10.9.0.{n}"], [])],
        };
        await a.GetGrain<IVmGrain>("vm-a").PlaceAsync(InNetwork7("host-a", "vm-a", 1));
        await c.GetGrain<IVmGrain>("vm-c").PlaceAsync(InNetwork7("host-c", "vm-c", 3));
        await Eventually.TrueAsync(() => Task.FromResult(seenA.Changes > 0 && seenC.Changes > 0), TimeSpan.FromSeconds(15), "host-a and host-c told of each other's VM",
            () => Task.FromResult($"host-a heard {seenA.Changes}, host-c {seenC.Changes}"));

        // The silo keeps host-a's connection from its handshake on; when it reads a list revoking host-a's certificate, it
        // closes it, and every call of host-a's fails from then on: refused by the caller filter if it raced the close, or
        // with no connection (a new one is refused at TLS).
        var silosRevocations = _silo.Services.GetRequiredService<RevokedHosts>();
        Assert.True(silosRevocations.OpenWith(stolen.Certificate.SerialNumber) > 0, "host-a's connection is not tracked");
        WriteRevocationList(_authority.Certificate, stolen.Certificate);
        Eventually.True(() => silosRevocations.IsRevokedCertificate(stolen.Certificate.SerialNumber) && silosRevocations.OpenWith(stolen.Certificate.SerialNumber) == 0,
            TimeSpan.FromSeconds(15), "host-a's open connection closed", () => $"{silosRevocations.OpenWith(stolen.Certificate.SerialNumber)} still open");
        var refused = await Record.ExceptionAsync(() => a.GetGrain<IHostGrain>("host-a").GetDesiredStateAsync().AsTask());
        Assert.NotNull(refused);
        if (refused is UnauthorizedAccessException)
        {
            Assert.Contains($"the certificate of agent 'host-a' (serial {RevocationList.SerialOf(stolen.Certificate.SerialNumber)}) was revoked by the fleet's authority", refused.Message, StringComparison.Ordinal);
        }
        Assert.Equal(0, silosRevocations.OpenWith(stolen.Certificate.SerialNumber));
        await b.GetGrain<IHostGrain>("host-b").RegisterAsync(Info("host-b"), b.CreateObjectReference<IAgentObserver>(new RecordingObserver()));
        var (heardA, heardC) = (seenA.Changes, seenC.Changes);
        await b.GetGrain<IVmGrain>("vm-b").PlaceAsync(InNetwork7("host-b", "vm-b", 2));
        await Eventually.TrueAsync(() => Task.FromResult(seenC.Changes > heardC), TimeSpan.FromSeconds(15), "host-c told of vm-b",
            () => Task.FromResult($"host-c heard {seenC.Changes}"));
        // host-a's grain had the same news to give (vm-b is in its network too): a push would have come with host-c's.
        await Task.Delay(TimeSpan.FromSeconds(2), TestContext.Current.CancellationToken);
        Assert.Equal(heardA, seenA.Changes);
        await Assert.ThrowsAsync<Orleans.Runtime.Messaging.ConnectionFailedException>(() => ConnectAsync(stolen));
    }

    /// <summary>
    /// A silo's certificate leaks (someone could stand up a silo that agents would trust): with the authority's list, an
    /// agent's or a dashboard's client refuses to connect to a silo presenting it, and connects as before with a list
    /// that does not name it.
    /// </summary>
    [Fact]
    public async Task AClientWithTheRevocationList_RefusesASiloWhoseCertificateWasRevoked()
    {
        var clientList = Path.Combine(_folder.FullName, "client.crl.pem");
        using var other = _authority.Issue(CallerRole.Agent, "host-z");
        WriteRevocationList(clientList, _authority.Certificate, other.Certificate);
        var a = await ConnectAsync(_authority.Issue(CallerRole.Agent, "host-a"), revocationList: clientList);
        Assert.NotEmpty(await a.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListAsync());
        // A newer list that cannot be used (another authority signed it) is said, not swallowed: the client's status (an
        // agent's controlPlane.revocationList, the dashboard's fleet page) reads it, and the last good list stands.
        var revocations = a.ServiceProvider.GetRequiredService<RevokedHosts>();
        Assert.Null(revocations.ListProblem());
        using (var forger = DevelopmentAuthority.Create())
        {
            WriteRevocationList(clientList, forger.Certificate);
        }
        Eventually.True(() => revocations.ListProblem() is { } problem && problem.Contains("its signature does not verify", StringComparison.Ordinal)
            && problem.EndsWith("the last good list stands", StringComparison.Ordinal), TimeSpan.FromSeconds(20), "the client says its list is unusable",
            () => revocations.ListProblem() ?? "no problem said");
        Assert.True(revocations.IsRevokedCertificate(other.Certificate.SerialNumber));

        WriteRevocationList(clientList, _authority.Certificate, other.Certificate, _siloCredential.Certificate);
        await Assert.ThrowsAsync<Orleans.Runtime.Messaging.ConnectionFailedException>(() => ConnectAsync(_authority.Issue(CallerRole.Agent, "host-b"), revocationList: clientList));
        // A list the authority did not sign is refused before any connection, naming the file.
        using var rogue = DevelopmentAuthority.Create();
        WriteRevocationList(clientList, rogue.Certificate);
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => ConnectAsync(_authority.Issue(CallerRole.Agent, "host-b"), revocationList: clientList));
        Assert.Contains($"revocation list {clientList}: its signature does not verify", refused.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A revocation list someone other than the authority signed, one altered after signing, or not a list at all: a
    /// silo refuses to start on it, naming the file, and a running silo keeps the last good list (it revokes what it did).
    /// </summary>
    [Fact]
    public async Task ARevocationListTheAuthorityDidNotSign_IsRefused_AndTheLastGoodOneStands()
    {
        var stolen = _authority.Issue(CallerRole.Agent, "host-a");
        // The list the silo started with (revoking nothing), kept as an old backup would be; the next is issued later.
        var older = File.ReadAllBytes(RevocationListPath);
        Thread.Sleep(1100);
        WriteRevocationList(_authority.Certificate, stolen.Certificate);
        var good = File.ReadAllBytes(RevocationListPath);
        Assert.Contains(RevocationList.SerialOf(stolen.Certificate.SerialNumber), (IReadOnlySet<string>)RevocationList.Parse(good, _authority.Certificate).Serials);

        using var other = DevelopmentAuthority.Create();
        var forged = new CertificateRevocationListBuilder().Build(other.Certificate, 1, DateTimeOffset.UtcNow.AddDays(1), HashAlgorithmName.SHA256);
        Assert.Contains("does not verify under the fleet's authority", Assert.Throws<InvalidDataException>(() => RevocationList.Parse(forged, _authority.Certificate)).Message, StringComparison.Ordinal);
        var altered = System.Text.Encoding.ASCII.GetBytes(PemEncoding.WriteString("X509 CRL", Altered(PemDer(good))));
        Assert.Throws<InvalidDataException>(() => RevocationList.Parse(altered, _authority.Certificate));
        Assert.Contains("not an X.509 CRL", Assert.Throws<InvalidDataException>(() => RevocationList.Parse("no list"u8, _authority.Certificate)).Message, StringComparison.Ordinal);
        // A list caught while it is being copied in (no end line yet) is a bad list, never an exception that stops a refresher.
        var half = System.Text.Encoding.ASCII.GetString(good);
        Assert.Contains("not an X.509 CRL", Assert.Throws<InvalidDataException>(() => RevocationList.Parse(System.Text.Encoding.ASCII.GetBytes(half[..(half.Length / 2)]), _authority.Certificate)).Message, StringComparison.Ordinal);

        // A silo given the forged list does not start.
        var forgedPath = Path.Combine(_folder.FullName, "forged.crl");
        File.WriteAllBytes(forgedPath, forged);
        var start = Assert.Throws<InvalidOperationException>(() => Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true })
            .UseOrleans(silo => silo.UseLocalhostClustering(LoopbackPorts.Free(), LoopbackPorts.Free()).UseControlPlaneSecurity(_authority.Issue(CallerRole.Silo, "silo-2"), forgedPath)));
        Assert.Contains($"revocation list {forgedPath}: its signature does not verify", start.Message, StringComparison.Ordinal);

        // The running silo meets a forged replacement: the revocation it had stands.
        var revoked = _silo.Services.GetRequiredService<RevokedHosts>();
        Eventually.True(() => revoked.IsRevokedCertificate(stolen.Certificate.SerialNumber), TimeSpan.FromSeconds(15), "the silo read the good list", () => "not yet");
        // The TLS handshake is refused: the client cannot connect at all.
        await Assert.ThrowsAsync<Orleans.Runtime.Messaging.ConnectionFailedException>(() => ConnectAsync(stolen));
        File.Copy(forgedPath, RevocationListPath, overwrite: true);
        await Task.Delay(RevokedHosts.RefreshPeriod * 2, TestContext.Current.CancellationToken);
        Assert.True(revoked.IsRevokedCertificate(stolen.Certificate.SerialNumber));
        await Assert.ThrowsAsync<Orleans.Runtime.Messaging.ConnectionFailedException>(() => ConnectAsync(stolen));
        // Nor does an older list, signed by the authority, copied back in (a backup): it would un-revoke.
        File.WriteAllBytes(RevocationListPath, older);
        await Task.Delay(RevokedHosts.RefreshPeriod * 2, TestContext.Current.CancellationToken);
        Assert.True(revoked.IsRevokedCertificate(stolen.Certificate.SerialNumber));
        // Nor after a restart: the issue time of the list in force was kept beside it, and a silo starting on the older
        // list refuses to start, naming it.
        Assert.True(File.Exists(RevocationListFile.InForceFileOf(RevocationListPath)));
        Assert.Contains("before the list in force", Assert.Throws<InvalidDataException>(() => new RevocationListFile(RevocationListPath, _authority.Certificate).ReadIfChanged()).Message,
            StringComparison.Ordinal);
        var restart = Assert.Throws<InvalidOperationException>(() => Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true })
            .UseOrleans(silo => silo.UseLocalhostClustering(LoopbackPorts.Free(), LoopbackPorts.Free()).UseControlPlaneSecurity(_authority.Issue(CallerRole.Silo, "silo-2"), RevocationListPath)));
        Assert.Contains("before the list in force", restart.Message, StringComparison.Ordinal);
        // A kept issue time that cannot be read is no reason to take any list: it is refused, naming the file.
        var elsewhere = Path.Combine(_folder.FullName, "elsewhere.crl");
        File.WriteAllBytes(elsewhere, good);
        File.WriteAllText(RevocationListFile.InForceFileOf(elsewhere), "not a time");
        Assert.Contains($"{RevocationListFile.InForceFileOf(elsewhere)} (the issue time of the list in force) is unreadable",
            Assert.Throws<InvalidDataException>(() => new RevocationListFile(elsewhere, _authority.Certificate)).Message, StringComparison.Ordinal);
    }

    private static byte[] PemDer(byte[] pem)
    {
        var text = System.Text.Encoding.ASCII.GetString(pem);
        return Convert.FromBase64String(text[PemEncoding.Find(text).Base64Data]);
    }

    /// <summary>The DER list with one byte inside its signed body changed.</summary>
    private static byte[] Altered(byte[] der)
    {
        var copy = der.ToArray();
        copy[copy.Length / 2] ^= 0x01;
        return copy;
    }

    [Fact]
    public void CertificatesFromTheOperatorsScript_AreAccepted_WithTheRoleTheAuthorityGave()
    {
        var folder = Directory.CreateTempSubdirectory("fabric-pki-script-");
        var script = Path.Combine(RepositoryRoot.Directory, "deploy", "pki", "fabric-pki");
        try
        {
            Assert.Equal(0, Processes.Run("sh", [script, "authority", folder.FullName]).Code);
            // The host makes its key and request; the authority signs it as an agent (the request's subject counts for nothing).
            Assert.Equal(0, Processes.Run("sh", [script, "request", folder.FullName, "host-a"]).Code);
            Assert.Equal(0, Processes.Run("sh", [script, "sign", folder.FullName, "agent", "host-a", "30"]).Code);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(folder.FullName, "host-a-key.pem")));
            using var credential = ControlPlaneCredential.Load(Path.Combine(folder.FullName, "host-a.pem"), Path.Combine(folder.FullName, "host-a-key.pem"),
                Path.Combine(folder.FullName, "authority.pem"));
            Assert.Equal(new Caller(CallerRole.Agent, "host-a"), credential.Caller);
            Assert.Equal(credential.Caller, CallerToken.Verify(credential.Token(DateTimeOffset.UtcNow), credential.Authority, DateTimeOffset.UtcNow));
            var (code, _, stderr) = Processes.Run("sh", [script, "issue", folder.FullName, "root", "host-b"]);
            Assert.Equal(2, code);
            Assert.Contains("role 'root': expected silo, operator or agent", stderr, StringComparison.Ordinal);
            Assert.Contains("name 'host b'", Processes.Run("sh", [script, "issue", folder.FullName, "agent", "host b"]).Stderr, StringComparison.Ordinal);
            Assert.Contains("an authority is made once", Processes.Run("sh", [script, "authority", folder.FullName]).Stderr, StringComparison.Ordinal);

            // The authority revokes host-a's certificate: its list names the serial and verifies under the authority.
            var (revoked, said, _) = Processes.Run("sh", [script, "revoke", folder.FullName, Path.Combine(folder.FullName, "host-a.pem")]);
            Assert.True(revoked == 0, said);
            var list = RevocationList.Parse(File.ReadAllBytes(Path.Combine(folder.FullName, "revoked.crl.pem")), credential.Authority);
            Assert.Equal([RevocationList.SerialOf(credential.Certificate.SerialNumber)], list.Serials);
            Assert.Contains("not a certificate of the authority", Processes.Run("sh", [script, "revoke", folder.FullName, script]).Stderr, StringComparison.Ordinal);
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task TheRolloutCommand_StepsARolloutAsTheOperatorItsCertificateNames_AndNoOtherCertificateSteps()
    {
        // A newer fec is published: the catalog starts its rollout (the silo's own client syncs, as the silo's repository reader does).
        var siloClient = _silo.Services.GetRequiredService<IClusterClient>().GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        const string source = "the rollout command's repository";
        Assert.Empty(await siloClient.SyncAsync([Catalogs.Fec with { PublishedVersions = ["1.0.0"] }], 1, source));
        Assert.Empty(await siloClient.SyncAsync([Catalogs.Fec with { Version = "1.0.2", PublishedVersions = ["1.0.2", "1.0.0"] }], 2, source));
        var cli = Processes.Built("repository/Fabric.Repository.Cli", "fabric-repo");
        var files = Path.Combine(_folder.FullName, "pki");
        var (certificate, key, authority) = _authority.IssueFiles(files, CallerRole.Operator, "ops-1");
        string[] Connect(string certificateFile, string keyFile, string authorityFile, int timeoutSeconds = 20, bool withRevocationList = true) =>
            ["--gateway", $"127.0.0.1:{_gatewayPort}", "--certificate", certificateFile, "--key", keyFile, "--authority", authorityFile, "--timeout", $"{timeoutSeconds}",
                .. withRevocationList ? new[] { "--revocation-list", RevocationListPath } : []];
        (int Code, string Stdout, string Stderr) Rollout(params string[] args) => Processes.Run(cli, ["rollout", .. args], timeout: TimeSpan.FromSeconds(60));

        // The reason carries a terminal escape (as a plug-in's quarantine reason may): what the command prints shows it escaped.
        var (code, stdout, stderr) = Rollout(["pause", "--stack", "fec", "--reason", "the canary's owners are away\u001b]52;c;Zm9v\u0007", "--by", "alice",
            .. Connect(certificate, key, authority)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("pause fec: done; fec 1.0.0 -> 1.0.2: paused", stdout, StringComparison.Ordinal);
        (code, stdout, stderr) = Rollout(["list", .. Connect(certificate, key, authority)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("fec 1.0.0 -> 1.0.2: paused", stdout, StringComparison.Ordinal);
        Assert.Contains("pause by alice via operator 'ops-1': the canary's owners are away\\u001b]52;c;Zm9v\\u0007", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain(stdout, c => char.IsControl(c) && c != '\n');

        // The machine's refusals come back as they are, exit 1; bad usage is named, exit 2.
        (code, _, stderr) = Rollout(["pause", "--stack", "fec", "--reason", "again", .. Connect(certificate, key, authority)]);
        Assert.Equal(1, code);
        Assert.Contains("pause fec: refused:", stderr, StringComparison.Ordinal);
        (code, _, stderr) = Rollout(["rollback", "--stack", "nosuch", "--reason", "x", .. Connect(certificate, key, authority)]);
        Assert.Equal((1, true), (code, stderr.Contains("stack 'nosuch' has no rollout", StringComparison.Ordinal)));
        (code, _, stderr) = Rollout(["rollback", "--stack", "fec", "--reason", " ", .. Connect(certificate, key, authority)]);
        Assert.Equal((2, true), (code, stderr.Contains("--reason is empty", StringComparison.Ordinal)));
        (code, _, stderr) = Rollout(["list", "--gateway", "10.1.2.3:30000"]);
        Assert.Equal((2, true), (code, stderr.Contains("required with a gateway beyond loopback", StringComparison.Ordinal)));

        using var stranger = DevelopmentAuthority.Create();
        var forged = stranger.IssueFiles(Path.Combine(files, "stranger"), CallerRole.Operator, "ops-1");
        // A revocation list that is not the authority's is named, not trusted.
        (code, _, stderr) = Rollout(["list", .. Connect(forged.Certificate, forged.Key, forged.Authority)]);
        Assert.Equal((2, true), (code, stderr.Contains("--revocation-list:", StringComparison.Ordinal)));
        // An agent's certificate is not an operator's: refused before it connects.
        var agent = _authority.IssueFiles(Path.Combine(files, "agent"), CallerRole.Agent, "host-a");
        (code, _, stderr) = Rollout(["rollback", "--stack", "fec", "--reason", "a host's say", .. Connect(agent.Certificate, agent.Key, agent.Authority)]);
        Assert.Equal((2, true), (code, stderr.Contains("rollout steps need an operator's", StringComparison.Ordinal)));
        // An operator's certificate of another authority, presented with that authority: the silo's TLS refuses it.
        (code, _, stderr) = Rollout(["rollback", "--stack", "fec", "--reason", "a stranger's say", .. Connect(forged.Certificate, forged.Key, forged.Authority, 5, withRevocationList: false)]);
        Assert.Equal(1, code);
        Assert.Contains($"cannot reach the cluster at 127.0.0.1:{_gatewayPort}", stderr, StringComparison.Ordinal);
        // Nothing a refused caller said reached the rollout; the operator's own rollback does, and marks the version bad.
        (code, _, stderr) = Rollout(["rollback", "--stack", "fec", "--reason", "seen enough", "--by", "alice", .. Connect(certificate, key, authority)]);
        Assert.True(code == 0, stderr);
        var rollout = Assert.Single(await siloClient.ListRolloutsAsync(), r => r.StackId == "fec");
        Assert.Equal(RolloutStatus.RolledBack, rollout.Status);
        Assert.Equal(["start", "pause", "roll back"], rollout.Steps.Select(s => s.Action));
        Assert.All(rollout.Steps.Skip(1), s => Assert.Equal("alice via operator 'ops-1'", s.By));
        (code, stdout, _) = Rollout(["list", .. Connect(certificate, key, authority)]);
        Assert.Equal(0, code);
        Assert.Contains("bad fec 1.0.2 since ", stdout, StringComparison.Ordinal);
    }

    private sealed class RecordingObserver : IAgentObserver
    {
        private int _changes;
        private int _tokens;

        public int Changes => Volatile.Read(ref _changes);

        public int TokensSeen => Volatile.Read(ref _tokens);

        public Task DesiredStateChangedAsync(DesiredStateChange change)
        {
            if (RequestContext.Get(CallerToken.ContextKey) is not null)
            {
                Interlocked.Increment(ref _tokens);
            }
            Interlocked.Increment(ref _changes);
            return Task.CompletedTask;
        }
    }

    /// <summary>A call as a forged message would arrive: any sender, no token (only what the filter reads is real).</summary>
    private sealed class ForgedCall(System.Reflection.MethodInfo method, GrainId source) : IIncomingGrainCallContext
    {
        public bool Invoked { get; private set; }
        public Orleans.Serialization.Invocation.IInvokable Request => throw new NotSupportedException();
        public object Grain => throw new NotSupportedException();
        public GrainId? SourceId => source;
        public GrainId TargetId => GrainId.Create("management", "0");
        public GrainInterfaceType InterfaceType => default;
        public string InterfaceName => method.DeclaringType!.FullName!;
        public string MethodName => method.Name;
        public System.Reflection.MethodInfo InterfaceMethod => method;
        public object? Result { get; set; }
        public Orleans.Serialization.Invocation.Response? Response { get; set; }
        public IGrainContext TargetContext => throw new NotSupportedException();
        public System.Reflection.MethodInfo ImplementationMethod => method;

        public Task Invoke()
        {
            Invoked = true;
            return Task.CompletedTask;
        }
    }

    /// <summary>An attacker's client filter, after the honest one: rewrites (or drops) the token each call carries.</summary>
    private sealed class RewriteToken(Func<string, string?> rewrite) : IOutgoingGrainCallFilter
    {
        public async Task Invoke(IOutgoingGrainCallContext context)
        {
            if (!ControlPlaneAuthorization.IsFabric(context.InterfaceMethod.DeclaringType!))
            {
                // The cluster's manifest, which the client needs to start at all.
            }
            else if (rewrite((string)RequestContext.Get(CallerToken.ContextKey)!) is { } token)
            {
                RequestContext.Set(CallerToken.ContextKey, token);
            }
            else
            {
                RequestContext.Remove(CallerToken.ContextKey);
            }
            await context.Invoke();
        }
    }
}

/// <summary>Agents' certificates for tests that run real agents against a secured silo.</summary>
internal static class Credentials
{
    /// <summary><paramref name="control"/> with <paramref name="host"/>'s certificate from <paramref name="authority"/> (unchanged without one).</summary>
    public static Fabric.Agent.ControlPlaneConfig Secured(Fabric.Agent.ControlPlaneConfig control, DevelopmentAuthority? authority, string folder, string host)
    {
        if (authority is null)
        {
            return control;
        }
        var (certificate, key, authorityFile) = authority.IssueFiles(folder, CallerRole.Agent, host);
        return control with { Certificate = certificate, Key = key, Authority = authorityFile };
    }
}
