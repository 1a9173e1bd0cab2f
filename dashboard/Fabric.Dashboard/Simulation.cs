using Fabric.Embedded;

namespace Fabric.Dashboard;

/// <summary>The embedded default's simulated fleet and development repository, for the pages that show them (null parts in cluster mode).</summary>
public sealed class Simulation(DashboardOptions options, DevelopmentRepository? repository)
{
    public DashboardOptions Options { get; } = options;

    public DevelopmentRepository? Repository { get; } = repository;

    public string? Gateway { get; set; }

    public SimulatedFleet? Fleet { get; set; }

    /// <summary>The namespaces and veths of the fleet with --namespaces (root), and the agent program it runs there.</summary>
    public FleetNetwork? Network { get; init; }

    public string? AgentProgram { get; init; }

    /// <summary>The embedded system's certificate authority: the fleet's agents get their certificates from it.</summary>
    public Fabric.Silo.Security.DevelopmentAuthority? Authority { get; set; }

    /// <summary>Why the fleet is not running, when it failed to start.</summary>
    public string? Error { get; set; }
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
                simulation.Fleet = SimulatedFleet.Start(new FleetOptions(options.Hosts, options.PhaseSeconds, testData, Network: simulation.Network,
                    AgentProgram: simulation.AgentProgram), simulation.Repository!,
                    simulation.Gateway!, Path.Combine(options.DataDirectory, "run", "fleet"), loggers, simulation.Authority, _stopping.Token);
            }
            catch (OperationCanceledException)
            {
                // Stopped while starting: what was started has been stopped.
            }
            catch (Exception e)
            {
                simulation.Error = e.Message;
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
        if (simulation.Fleet is { } fleet)
        {
            simulation.Fleet = null;
            await fleet.DisposeAsync();
        }
        simulation.Network?.Dispose();
    }
}
