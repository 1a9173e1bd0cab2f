using System.Collections.Immutable;
using Bunit;
using Fabric.Dashboard.Components.Pages;
using Fabric.Dashboard.Components.Shared;
using Fabric.Dashboard.Services;
using Fabric.Silo;
using Microsoft.Extensions.DependencyInjection;
using MudBlazor;
using MudBlazor.Services;
using Orleans.TestingHost;

namespace Fabric.Dashboard.Tests;

/// <summary>A real one-silo cluster in this process (memory storage, Fabric's grains) with a small catalog.</summary>
public sealed class GrainsFixture : IAsyncLifetime
{
    public static readonly ImmutableArray<StackInfo> Catalog =
    [
        new("std-ipv4", "1.0.0", "ipv4", 16, 0, 0, 0, false, "default; clean paths"),
        new("fec", "1.0.0", "ipv4", 24, 0.25, 5, 0.05, false, "low latency on lossy paths"),
        new("secure", "1.0.0", "ipv4", 40, 0, 0, 0, true, "sensitive tenants"),
    ];

    public InProcessTestCluster Cluster { get; private set; } = null!;

    public IClusterClient Client => Cluster.Client;

    public async ValueTask InitializeAsync()
    {
        var builder = new InProcessTestClusterBuilder(1);
        builder.ConfigureSilo((_, silo) => silo.AddMemoryGrainStorage(Storage.Name).AddFabricControlPlane());
        Cluster = builder.Build();
        await Cluster.DeployAsync();
        foreach (var stack in Catalog)
        {
            await Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(stack);
        }
    }

    public async ValueTask DisposeAsync() => await Cluster.DisposeAsync();
}

/// <summary>The dashboard's components rendered by bUnit against real grains: what they show, and what they let a user do.</summary>
public sealed class ComponentTests : BunitContext, IClassFixture<GrainsFixture>
{
    private readonly GrainsFixture _grains;
    private readonly string _usersFolder = Directory.CreateTempSubdirectory("fabric-component-users-").FullName;

    public ComponentTests(GrainsFixture grains)
    {
        _grains = grains;
        JSInterop.Mode = JSRuntimeMode.Loose;
        Services.AddMudServices();
        Services.AddSingleton<IDeployment>(new ClusterDeployment("components"));
        // The grains only through the dashboard's services: a component that injected them itself would fail here.
        Services.AddDashboardServices(_ => grains.Client);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && Directory.Exists(_usersFolder))
        {
            Directory.Delete(_usersFolder, recursive: true);
        }
        base.Dispose(disposing);
    }

    /// <summary>xunit disposes asynchronously, which does not pass through <see cref="Dispose(bool)"/>.</summary>
    protected override async ValueTask DisposeAsyncCore()
    {
        if (Directory.Exists(_usersFolder))
        {
            Directory.Delete(_usersFolder, recursive: true);
        }
        await base.DisposeAsyncCore();
    }

    private static string Unique(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..20];

    /// <summary>
    /// Signs a user in with a role, then renders as Blazor Server does: interactive, so pages refresh themselves. The users
    /// file names the user with <paramref name="fileRole"/> (the role now; by default the one signed in with).
    /// </summary>
    private void SignIn(string role, string? fileRole = null)
    {
        var file = Path.Combine(_usersFolder, "users");
        Users.Set(file, "someone", "a-long-enough-password", fileRole ?? role);
        var users = Users.Load(file);
        Services.AddSingleton(users);
        var stamp = users.ClaimsOf(new DashboardUser("someone", fileRole ?? role)).Single(c => c.Type == Users.StampClaim);
        AddAuthorization().SetAuthorized("someone").SetRoles(role).SetClaims(stamp);
        Renderer.SetRendererInfo(new Microsoft.AspNetCore.Components.RendererInfo("Server", isInteractive: true));
        Render<MudPopoverProvider>();
    }

    private IRenderedComponent<PolicyEditor> Editor(string vmId, Policy policy, bool canEdit, string role, string? fileRole = null)
    {
        SignIn(role, fileRole);
        return Render<PolicyEditor>(p => p.Add(e => e.VmId, vmId).Add(e => e.Current, policy).Add(e => e.PolicyVersion, 0)
            .Add(e => e.Catalog, GrainsFixture.Catalog).Add(e => e.CanEdit, canEdit));
    }

    [Fact]
    public void ReadOnly_EveryFieldAndTheButtonAreDisabled_AndThePageSaysWhy()
    {
        var editor = Editor(Unique("vm"), Policy.Default, canEdit: false, DashboardUser.ReadOnly);
        Assert.NotEmpty(editor.FindAll("[data-testid=read-only-note]"));
        Assert.All(editor.FindAll("input"), input => Assert.True(input.HasAttribute("disabled"), input.OuterHtml));
        Assert.True(editor.Find("[data-testid=save-policy]").HasAttribute("disabled"));
    }

    [Fact]
    public async Task AContradictoryPolicy_IsShownNextToItsField_AndNothingChanges()
    {
        var vmId = Unique("vm");
        var editor = Editor(vmId, Policy.Default with { Deny = ["fec"], Pin = "fec" }, canEdit: true, DashboardUser.Admin);
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.Contains("pin: 'fec' is denied", editor.Markup, StringComparison.Ordinal));
        // Next to the pin field (MudSelect's helper line), not in the general error box.
        Assert.Empty(editor.FindAll("[data-testid=policy-errors]"));
        Assert.Contains(editor.FindAll(".mud-input-helper-text"), e => e.TextContent.Contains("pin: 'fec' is denied", StringComparison.Ordinal));
        Assert.Equal(0, (await _grains.Client.GetGrain<IVmGrain>(vmId).GetAsync()).PolicyVersion);
    }

    [Fact]
    public async Task AnAdminsValidPolicy_IsAcceptedAndPersisted()
    {
        var vmId = Unique("vm");
        var editor = Editor(vmId, Policy.Default with { Security = "confidential" }, canEdit: true, DashboardUser.Admin);
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.NotEmpty(editor.FindAll("[data-testid=policy-accepted]")));
        var view = await _grains.Client.GetGrain<IVmGrain>(vmId).GetAsync();
        Assert.Equal(("confidential", 1L), (view.Policy.Security, view.PolicyVersion));
    }

    [Fact]
    public async Task ANamedPolicy_WithABadName_IsRefusedNextToTheNameField_AndAGoodOneIsSavedToTheLibrary()
    {
        SignIn(DashboardUser.Admin);
        var saved = new List<string>();
        var editor = Render<PolicyEditor>(p => p.Add(e => e.Named, true).Add(e => e.VmId, "").Add(e => e.Current, Policy.Default with { Workload = "latency" })
            .Add(e => e.Catalog, GrainsFixture.Catalog).Add(e => e.CanEdit, true).Add(e => e.OnNamedSaved, name => saved.Add(name)));
        Assert.Equal("Save named policy", editor.Find("[data-testid=save-policy]").TextContent.Trim());

        await editor.Find("input[data-testid=policy-name], [data-testid=policy-name] input").ChangeAsync(new() { Value = "Voice Calls" });
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.Contains(editor.FindAll(".mud-input-helper-text"),
            e => e.TextContent.Contains("name: 'Voice Calls' is not a policy name", StringComparison.Ordinal)));
        Assert.Empty(editor.FindAll("[data-testid=policy-errors]"));

        var name = Unique("voice");
        await editor.Find("input[data-testid=policy-name], [data-testid=policy-name] input").ChangeAsync(new() { Value = name });
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.Contains($"Saved '{name}' as version 1", editor.Find("[data-testid=policy-accepted]").TextContent, StringComparison.Ordinal));
        Assert.Equal([name], saved);
        var stored = (await _grains.Client.GetGrain<IPolicyLibraryGrain>(IPolicyLibraryGrain.Key).ListAsync()).Single(p => p.Name == name);
        Assert.Equal("latency", stored.Policy.Workload);
    }

    /// <summary>An admin whose page is open when the operator demotes them: the form still shows, the server refuses.</summary>
    [Fact]
    public async Task AnAdminDemotedInTheUsersFile_IsRefusedByTheServer_ThoughTheirPageStillShowsTheForm()
    {
        var vmId = Unique("vm");
        var editor = Editor(vmId, Policy.Default with { Workload = "bulk" }, canEdit: true, DashboardUser.Admin, fileRole: DashboardUser.ReadOnly);
        Assert.False(editor.Find("[data-testid=save-policy]").HasAttribute("disabled"));
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.Contains("only an admin can change policies", editor.Find("[data-testid=policy-errors]").TextContent, StringComparison.Ordinal));
        Assert.Equal(0, (await _grains.Client.GetGrain<IVmGrain>(vmId).GetAsync()).PolicyVersion);
    }

    [Fact]
    public async Task TheServerChecksTheRole_EvenWhenTheFormIsEnabled()
    {
        var vmId = Unique("vm");
        var editor = Editor(vmId, Policy.Default with { Workload = "bulk" }, canEdit: true, DashboardUser.ReadOnly);
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.Contains("only an admin can change policies", editor.Find("[data-testid=policy-errors]").TextContent, StringComparison.Ordinal));
        Assert.Equal(0, (await _grains.Client.GetGrain<IVmGrain>(vmId).GetAsync()).PolicyVersion);
    }

    /// <summary>
    /// A dashboard given the authority's revocation list whose newer list cannot be used (another authority signed it):
    /// the fleet page says so, and that the last good list stands, instead of trusting on in silence.
    /// </summary>
    [Fact]
    public void TheFleetPage_SaysWhenANewerRevocationListCannotBeUsed()
    {
        using var authority = Fabric.Silo.Security.DevelopmentAuthority.Create("components");
        using var forger = Fabric.Silo.Security.DevelopmentAuthority.Create("forger");
        var list = Path.Combine(_usersFolder, "fleet.crl");
        static void Write(string path, System.Security.Cryptography.X509Certificates.X509Certificate2 signer) =>
            File.WriteAllText(path, System.Security.Cryptography.PemEncoding.WriteString("X509 CRL", new System.Security.Cryptography.X509Certificates.CertificateRevocationListBuilder()
                .Build(signer, 1, DateTimeOffset.UtcNow.AddDays(7), System.Security.Cryptography.HashAlgorithmName.SHA256)));
        Write(list, authority.Certificate);
        var revocations = new Fabric.Silo.Security.RevokedHosts { List = new Fabric.Silo.Security.RevocationListFile(list, authority.Certificate) };
        revocations.RefreshCertificates();
        Services.AddSingleton<IDeployment>(new ClusterDeployment("components", revocations.ListProblem));
        SignIn(DashboardUser.ReadOnly);
        var page = Render<Fleet>();
        Assert.Empty(page.FindAll("[data-testid=deployment-error]"));

        Write(list, forger.Certificate);
        page.WaitForAssertion(() =>
        {
            var error = page.Find("[data-testid=deployment-error]").TextContent;
            Assert.Contains($"revocation list {list}: its signature does not verify", error, StringComparison.Ordinal);
            Assert.Contains("the last good list stands", error, StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(20));
    }

    [Fact]
    public async Task TheFleetPage_ListsRegisteredHostsAndPlacedVms()
    {
        var (host, vmId) = (Unique("host"), Unique("vm"));
        var observer = _grains.Client.CreateObjectReference<IAgentObserver>(new IgnoringAgent());
        await _grains.Client.GetGrain<IHostGrain>(host).RegisterAsync(new HostInfo(host, "192.0.2.1", null, 4789, ["std-ipv4", "secure"], [], "test"), observer);
        await _grains.Client.GetGrain<IVmGrain>(vmId).PlaceAsync(new VmPlacement(host, "web", 100, ["52:54:00:00:00:01"], null));
        SignIn(DashboardUser.ReadOnly);
        var page = Render<Fleet>();
        page.WaitForAssertion(() =>
        {
            Assert.Contains(page.FindAll("a"), a => a.GetAttribute("href") == $"hosts/{host}");
            Assert.NotEmpty(page.FindAll($"[data-testid=vm-row-{vmId}]"));
        });
        Assert.Contains("192.0.2.1:4789", page.Markup, StringComparison.Ordinal);
        // The process's own cost: this test process's, which has used CPU and holds memory.
        Assert.Matches(@"^[0-9.]+ % of one core$", page.Find("[data-testid=process-cpu]").TextContent);
        Assert.Matches(@"^[1-9][0-9]* MB resident, GC heap [1-9][0-9]* MB$", page.Find("[data-testid=process-memory]").TextContent);

        // Live: a VM placed while the page is open appears without anything re-rendering it from outside.
        var later = Unique("vm");
        await _grains.Client.GetGrain<IVmGrain>(later).PlaceAsync(new VmPlacement(host, "db", 100, ["52:54:00:00:00:02"], null));
        page.WaitForAssertion(() => Assert.NotEmpty(page.FindAll($"[data-testid=vm-row-{later}]")), TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task TheStacksPage_ShowsAStackTheRepositoryWithdrew_AndWhichHostsStillRunIt()
    {
        var (host, gone) = (Unique("host"), Unique("wd"));
        var catalog = _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        var stack = new StackInfo(gone, "2.0.0", "ipv4", 16, 0, 0, 0, false, "withdrawn in this test");
        await catalog.SyncAsync([stack], 1, "repository of " + gone);
        var observer = _grains.Client.CreateObjectReference<IAgentObserver>(new IgnoringAgent());
        await _grains.Client.GetGrain<IHostGrain>(host).RegisterAsync(new HostInfo(host, "192.0.2.9", null, 4789, ["std-ipv4", gone], [], "test"), observer);
        SignIn(DashboardUser.ReadOnly);
        var page = Render<Fabric.Dashboard.Components.Pages.Stacks>();
        page.WaitForAssertion(() => Assert.NotEmpty(page.FindAll($"[data-testid=stack-{gone}]")));
        Assert.Empty(page.FindAll("[data-testid=withdrawn-stacks]"));

        Assert.Equal([gone], await catalog.SyncAsync([], 2, "repository of " + gone));
        page.WaitForAssertion(() =>
        {
            Assert.Empty(page.FindAll($"[data-testid=stack-{gone}]"));
            var row = page.Find($"[data-testid=withdrawn-{gone}]").TextContent;
            Assert.Contains("2.0.0", row, StringComparison.Ordinal);
            Assert.Contains(host, row, StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(10));
    }

    /// <summary>
    /// Every version of a stack on the Stacks page: the versions the catalog lists as published and one a host still runs
    /// that is not, with the hosts running each and the VM paths each carries there.
    /// </summary>
    [Fact]
    public async Task TheStacksPage_ShowsEveryVersion_WhereItRuns_AndTheVmPathsOnIt()
    {
        var (host, id) = (Unique("host"), Unique("ver"));
        var catalog = _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        await catalog.SyncAsync([new StackInfo(id, "1.1.0", "ipv4", 16, 0, 0, 0, false, "two versions") { PublishedVersions = ["1.1.0", "1.0.0"] }], 1, "repository of " + id);
        var observer = _grains.Client.CreateObjectReference<IAgentObserver>(new IgnoringAgent());
        await _grains.Client.GetGrain<IHostGrain>(host).RegisterAsync(new HostInfo(host, "192.0.2.10", null, 4789, ["std-ipv4", id], [], "test")
        {
            StackVersions = [new(id, "1.1.0", 2), new(id, "1.0.0", 1), new(id, "0.9.0", 0)],
        }, observer);
        SignIn(DashboardUser.ReadOnly);
        var page = Render<Fabric.Dashboard.Components.Pages.Stacks>();
        page.WaitForAssertion(() =>
        {
            var cells = (string version) => page.FindAll($"[data-testid='version-{id}-{version}'] td").Select(c => c.TextContent).ToArray();
            Assert.Equal([id, "1.1.0", "yes", host, "2", ""], cells("1.1.0"));
            Assert.Equal([id, "1.0.0", "yes", host, "1", ""], cells("1.0.0"));
            Assert.Equal([id, "0.9.0", "no", host, "0", ""], cells("0.9.0"));
        }, TimeSpan.FromSeconds(10));
        Assert.Empty(page.FindAll("[data-testid=hold-save]"));
        Assert.Empty(page.FindAll("[data-testid=rollout-rollback]"));
    }

    /// <summary>
    /// An admin holds a stack to its older version on one host (a roll back): a version the signed targets do not publish
    /// is refused with the catalog's reason, the hold is kept with who and why and shown on the version's row, and a hold
    /// with no version releases it.
    /// </summary>
    [Fact]
    public async Task AnAdmin_HoldsAStackToAnOlderVersion_OnTheStacksPage_AndReleasesIt()
    {
        var id = Unique("hold");
        await _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).SyncAsync(
            [new StackInfo(id, "1.1.0", "ipv4", 16, 0, 0, 0, false, "two versions") { PublishedVersions = ["1.1.0", "1.0.0"] }], 1, "repository of " + id);
        SignIn(DashboardUser.Admin);
        var page = Render<Fabric.Dashboard.Components.Pages.Stacks>();
        page.WaitForAssertion(() => Assert.NotEmpty(page.FindAll($"[data-testid='version-{id}-1.0.0']")));
        async Task Hold(string version, string hosts)
        {
            await page.Find("input[data-testid=hold-stack], [data-testid=hold-stack] input").ChangeAsync(new() { Value = id });
            await page.Find("input[data-testid=hold-version], [data-testid=hold-version] input").ChangeAsync(new() { Value = version });
            await page.Find("input[data-testid=hold-hosts], [data-testid=hold-hosts] input").ChangeAsync(new() { Value = hosts });
            await page.Find("input[data-testid=hold-reason], [data-testid=hold-reason] input").ChangeAsync(new() { Value = "1.1.0 drops on the canary" });
            await page.Find("[data-testid=hold-save]").ClickAsync(new());
        }

        await Hold("3.0.0", "");
        page.WaitForAssertion(() => Assert.Contains($"stack '{id}' 3.0.0 is not published", page.Find("[data-testid=hold-result]").TextContent, StringComparison.Ordinal));
        await Hold("1.0.0", "host-c1");
        page.WaitForAssertion(() => Assert.Contains($"{id} held at 1.0.0 on host-c1", page.Find("[data-testid=hold-result]").TextContent, StringComparison.Ordinal));
        var hold = Assert.Single(await _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListHoldsAsync(), h => h.StackId == id);
        Assert.Equal(("1.0.0", "host-c1", "admin 'someone'", "1.1.0 drops on the canary"), (hold.Version, Assert.Single(hold.Hosts), hold.By, hold.Reason));
        page.WaitForAssertion(() => Assert.Contains("on host-c1 by admin 'someone'", page.Find($"[data-testid='version-{id}-1.0.0']").TextContent, StringComparison.Ordinal));

        await Hold("", "");
        page.WaitForAssertion(() => Assert.Contains($"{id}: hold released", page.Find("[data-testid=hold-result]").TextContent, StringComparison.Ordinal));
        Assert.DoesNotContain(await _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).ListHoldsAsync(), h => h.StackId == id);
    }

    /// <summary>
    /// A newer version published starts a rollout the Stacks page shows; an admin pauses it and rolls it back with a reason
    /// (a step without one is refused with the catalog's reason), and the version is then listed as bad, by that admin.
    /// </summary>
    [Fact]
    public async Task AnAdmin_PausesAndRollsBackARollout_OnTheStacksPage()
    {
        var id = Unique("roll");
        var catalog = _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        await catalog.SyncAsync([new StackInfo(id, "1.0.0", "ipv4", 16, 0, 0, 0, false, "old") { PublishedVersions = ["1.0.0"] }], 1, "repository of " + id);
        await catalog.SyncAsync([new StackInfo(id, "1.1.0", "ipv4", 16, 0, 0, 0, false, "new") { PublishedVersions = ["1.1.0", "1.0.0"] }], 2, "repository of " + id);
        SignIn(DashboardUser.Admin);
        var page = Render<Fabric.Dashboard.Components.Pages.Stacks>();
        page.WaitForAssertion(() => Assert.Equal("running", page.Find($"[data-testid='rollout-status-{id}']").TextContent));
        Assert.Contains("1.0.0 → 1.1.0", page.Find($"[data-testid='rollout-{id}']").TextContent, StringComparison.Ordinal);
        async Task Step(string action, string why)
        {
            await page.Find("input[data-testid=rollout-stack], [data-testid=rollout-stack] input").ChangeAsync(new() { Value = id });
            await page.Find("input[data-testid=rollout-reason], [data-testid=rollout-reason] input").ChangeAsync(new() { Value = why });
            await page.Find($"[data-testid=rollout-{action}]").ClickAsync(new());
        }

        await Step("pause", "");
        page.WaitForAssertion(() => Assert.Equal("a rollout step says who takes it and why", page.Find("[data-testid=rollout-result]").TextContent));
        await Step("pause", "a tenant's migration tonight");
        page.WaitForAssertion(() => Assert.Equal("paused", page.Find($"[data-testid='rollout-status-{id}']").TextContent));
        await Step("rollback", "resets on the canary");
        page.WaitForAssertion(() => Assert.Equal("rolled back", page.Find($"[data-testid='rollout-status-{id}']").TextContent));
        page.WaitForAssertion(() => Assert.Contains("admin 'someone'", page.Find($"[data-testid='bad-{id}-1.1.0']").TextContent, StringComparison.Ordinal));
        var rollout = (await catalog.ListRolloutsAsync()).Single(r => r.StackId == id);
        Assert.Equal([("pause", "admin 'someone'", "a tenant's migration tonight"), ("roll back", "admin 'someone'", "resets on the canary")],
            rollout.Steps.Skip(rollout.Steps.Length - 2).Select(x => (x.Action, x.By, x.Why)));
    }

    /// <summary>
    /// An experimental stack: the Stacks page marks it; a policy that names it without admitting experimental stacks is
    /// refused next to its field, and one that admits them is accepted and persisted with the admission.
    /// </summary>
    [Fact]
    public async Task AnExperimentalStack_IsMarkedOnTheStacksPage_AndOnlyAPolicyThatAdmitsItMayNameIt()
    {
        var trial = Unique("trial");
        await _grains.Client.GetGrain<ICatalogGrain>(ICatalogGrain.Key).PublishAsync(new StackInfo(trial, "0.1.0", "ipv4", 16, 0, 0, 0, false, "on trial", Experimental: true));

        var refused = Unique("vm");
        var editor = Editor(refused, Policy.Default with { Allow = ["std-ipv4", trial] }, canEdit: true, DashboardUser.Admin);
        await editor.Find("[data-testid=save-policy]").ClickAsync(new());
        editor.WaitForAssertion(() => Assert.Contains(editor.FindAll(".mud-input-helper-text"),
            e => e.TextContent.Contains($"allow: '{trial}' 0.1.0 is experimental and the policy does not admit experimental stacks", StringComparison.Ordinal)));
        Assert.Equal(0, (await _grains.Client.GetGrain<IVmGrain>(refused).GetAsync()).PolicyVersion);

        var admitted = Unique("vm");
        var admitting = Render<PolicyEditor>(p => p.Add(e => e.VmId, admitted).Add(e => e.Current, Policy.Default with { Allow = ["std-ipv4", trial], ExplorationShare = 0.05, Experimental = true })
            .Add(e => e.PolicyVersion, 0).Add(e => e.Catalog, GrainsFixture.Catalog).Add(e => e.CanEdit, true));
        await admitting.Find("[data-testid=save-policy]").ClickAsync(new());
        admitting.WaitForAssertion(() => Assert.NotEmpty(admitting.FindAll("[data-testid=policy-accepted]")));
        var view = await _grains.Client.GetGrain<IVmGrain>(admitted).GetAsync();
        Assert.Equal((true, 1L), (view.Policy.Experimental, view.PolicyVersion));

        var page = Render<Fabric.Dashboard.Components.Pages.Stacks>();
        page.WaitForAssertion(() => Assert.NotEmpty(page.FindAll($"[data-testid=experimental-{trial}]")));
        Assert.Empty(page.FindAll("[data-testid=experimental-std-ipv4]"));
    }

    private sealed class IgnoringAgent : IAgentObserver
    {
        public Task DesiredStateChangedAsync(DesiredStateChange change) => Task.CompletedTask;
    }
}
