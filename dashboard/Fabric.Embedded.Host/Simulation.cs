using System.Collections.Immutable;
using Fabric.Dashboard.Services;

namespace Fabric.Embedded.Host;

/// <summary>
/// The embedded default's simulated fleet and development repository, and what the dashboard's pages are shown of them
/// (through <see cref="IDeployment"/>: the pages never see the simulation itself).
/// </summary>
public sealed class Simulation(EmbeddedOptions options, DevelopmentRepository repository) : IDeployment
{
    public EmbeddedOptions Options { get; } = options;

    public DevelopmentRepository DevelopmentRepository { get; } = repository;

    public string? Gateway { get; set; }

    public SimulatedFleet? Running { get; set; }

    /// <summary>The namespaces and veths of the fleet with --namespaces (root), and the agent program it runs there.</summary>
    public FleetNetwork? Network { get; init; }

    public string? AgentProgram { get; init; }

    /// <summary>The embedded system's certificate authority: the fleet's agents get their certificates from it.</summary>
    public Fabric.Silo.Security.DevelopmentAuthority? Authority { get; set; }

    /// <summary>Why the fleet is not running, when it failed to start.</summary>
    public string? FleetError { get; set; }

    public string Title => $"embedded default · {Options.Hosts} simulated hosts{(Network is null ? "" : " on network namespaces")}";

    public string ProcessLabel => "This process (all of the embedded default)";

    public string? Error => FleetError is null ? null : $"The simulated fleet did not start: {FleetError}";

    public SimulatedFleetView? Fleet => Running is not { } fleet ? null : new(
        [.. fleet.Hosts.Select(h => (h.HostId, h.Where))],
        [.. fleet.Links.Select(link =>
        {
            var (phase, remaining) = link.Current;
            var (ab, ba) = link.Stats;
            return new SimulatedLinkView(link.HostA, link.HostB, phase.Name, phase.Source, remaining, ab.Lost + ba.Lost, ab.QueueDrops + ba.QueueDrops);
        })]);

    public RepositoryView? Repository => new(DevelopmentRepository.Path, DevelopmentRepository.TrustRoot, DevelopmentRepository.TargetsKeyId,
        [.. DevelopmentRepository.Published.Select(t => (t.Id, t.Version, t.Length, t.Sha256))]);
}

/// <summary>Starts the simulated fleet once the silo is up, and stops it before the silo goes.</summary>
public sealed class SimulationRunner(Simulation simulation, ILoggerFactory loggers, ILogger<SimulationRunner> logger) : IHostedService, IDisposable
{
    public void Dispose() => _stopping.Dispose();

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var options = simulation.Options;
        var root = options.SourceRoot ?? BuiltInStacks.FindSourceRoot(AppContext.BaseDirectory);
        var testData = options.TestData ?? (root is null ? null : Path.GetFullPath(Path.Combine(root, "..", "shared", "testdata")));
        if (options.TestData is null && testData is not null && !Directory.Exists(testData))
        {
            logger.LogWarning("No test data at {Path}: the simulated links use the synthetic phases only", testData);
        }
        // In the background: the agents verify and unpack the signed stacks, which takes a few seconds.
        _starting = Task.Run(() =>
        {
            try
            {
                simulation.Running = SimulatedFleet.Start(new FleetOptions(options.Hosts, options.PhaseSeconds, testData, Network: simulation.Network,
                    AgentProgram: simulation.AgentProgram), simulation.DevelopmentRepository,
                    simulation.Gateway!, Path.Combine(options.Web.DataDirectory, "run", "fleet"), loggers, simulation.Authority, _stopping.Token);
            }
            catch (OperationCanceledException)
            {
                // Stopped while starting: what was started has been stopped.
            }
            catch (Exception e)
            {
                simulation.FleetError = e.Message;
                logger.LogError(e, "The simulated fleet did not start");
            }
        }, CancellationToken.None);
        return Task.CompletedTask;
    }

    private readonly CancellationTokenSource _stopping = new();
    private Task _starting = Task.CompletedTask;

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        // A fleet still starting stops at its next step; the network goes only after nothing uses it.
        await _stopping.CancelAsync();
        await _starting;
        if (simulation.Running is { } fleet)
        {
            simulation.Running = null;
            await fleet.DisposeAsync();
        }
        simulation.Network?.Dispose();
    }
}
