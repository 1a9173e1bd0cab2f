using System.CommandLine;
using Fabric.Dashboard;
using Fabric.Programs;

namespace Fabric.Embedded.Host;

/// <summary>
/// fabric-embedded's command line: the whole system in this process (a silo with localhost clustering and grain state in
/// memory, a repository of the built-in stacks signed by a development key, a simulated fleet whose links follow real
/// traces, the dashboard), state in the data folder.
/// </summary>
public sealed record EmbeddedOptions(WebOptions Web, int Hosts, int PhaseSeconds, string? SourceRoot, string? TestData, bool Namespaces = false,
    string ClusterId = "fabric", string ServiceId = "fabric")
{
    private static readonly Option<bool> NamespacesOption = new("--namespaces")
    {
        Description = "(root) the same fleet on real network namespaces: each host a fabric-agent process in its own namespace with a veth "
            + "uplink (10.251.N.2), each VM a namespace with a veth the agent attaches to, the traffic real UDP from the VMs; all of it "
            + "deleted when Fabric stops",
    };

    private static readonly Option<int> HostsOption = new("--hosts")
    {
        Description = "simulated hosts (2–16)",
        HelpName = "N",
        DefaultValueFactory = _ => 4,
        CustomParser = CommandLineConventions.Parser(text => WebOptions.Number(text, 2, 16)),
    };

    private static readonly Option<int> PhaseSecondsOption = new("--phase-seconds")
    {
        Description = "how long each simulated link keeps its conditions (5–3600)",
        HelpName = "S",
        DefaultValueFactory = _ => 45,
        CustomParser = CommandLineConventions.Parser(text => WebOptions.Number(text, 5, 3600)),
    };

    private static readonly Option<string?> SourceRootOption = new("--source-root")
    {
        Description = "the Fabric checkout whose built stacks are published (default: found above this program)",
        HelpName = "DIR",
    };

    private static readonly Option<string?> TestDataOption = new("--testdata") { Description = "the traces (default SOURCE_ROOT/../shared/testdata)", HelpName = "DIR" };

    /// <summary>The command line: every option with its help.</summary>
    public static RootCommand Command { get; } = new("fabric-embedded: Fabric on its embedded default, in this process: a silo, a repository of the "
        + "built-in stacks signed by a development key, a simulated fleet whose links follow real traces, and the dashboard. (The dashboard of a "
        + "running cluster is fabric-dashboard.)")
    {
        NamespacesOption, WebOptions.ListenOption, WebOptions.DataOption, HostsOption, PhaseSecondsOption, SourceRootOption, TestDataOption,
        WebOptions.TlsCertificateOption, WebOptions.TlsKeyOption,
    };

    /// <summary>The options of a parse without errors; throws <see cref="FormatException"/> when options contradict each other.</summary>
    public static EmbeddedOptions From(ParseResult result) => new(WebOptions.From(result), result.GetValue(HostsOption), result.GetValue(PhaseSecondsOption),
        WebOptions.Full(result.GetValue(SourceRootOption)), WebOptions.Full(result.GetValue(TestDataOption)), result.GetValue(NamespacesOption));
}
