using System.Globalization;
using System.Net;

namespace Fabric.Dashboard;

/// <summary>
/// The command line. Embedded (the default): silo, development repository and simulated fleet in this process, state in
/// the data folder. Cluster: an Orleans client of the silos at the given gateways, users from a file.
/// </summary>
public sealed record DashboardOptions(
    bool Embedded,
    IPEndPoint Listen,
    string DataDirectory,
    int Hosts,
    int PhaseSeconds,
    string? SourceRoot,
    string? TestData,
    IReadOnlyList<IPEndPoint> Gateways,
    string ClusterId,
    string ServiceId,
    string? UsersFile,
    bool Namespaces = false)
{
    public const string Usage = """
        usage: fabric-dashboard [--embedded] [--namespaces] [--listen ADDR:PORT] [--data DIR] [--hosts N] [--phase-seconds S] [--source-root DIR] [--testdata DIR]
               fabric-dashboard --gateway ADDR:PORT [--gateway …] --users FILE [--cluster-id ID] [--service-id ID] [--listen ADDR:PORT]
          --embedded        (default) the whole system in this process: a silo (localhost clustering, memory storage), a repository of
                            the built-in stacks signed by a development key, and a simulated fleet whose links follow real traces
          --namespaces      (root) the same fleet on real network namespaces: each host a fabric-agent process in its own namespace
                            with a veth uplink (10.251.N.2), each VM a namespace with a veth the agent attaches to, the traffic
                            real UDP from the VMs; all of it deleted when Fabric stops
          --listen          where the dashboard serves (default 127.0.0.1:5080)
          --data            the data folder: development keys, the generated credentials, run state (default ~/.local/share/fabric)
          --hosts           simulated hosts (default 4), --phase-seconds how long each link keeps its conditions (default 45)
          --source-root     the Fabric checkout whose built stacks are published (default: found above this program)
          --testdata        the traces (default SOURCE_ROOT/../shared/testdata)
          --gateway         a silo gateway to connect to instead (cluster mode); --users a file of "NAME PASSWORD admin|read-only" lines
        """;

    /// <summary>Parses arguments; throws <see cref="FormatException"/> naming the argument that is wrong.</summary>
    public static DashboardOptions Parse(IReadOnlyList<string> args)
    {
        var home = Environment.GetEnvironmentVariable("XDG_DATA_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share");
        var options = new DashboardOptions(true, new IPEndPoint(IPAddress.Loopback, 5080), Path.Combine(home, "fabric"), 4, 45, null, null, [], "fabric", "fabric", null);
        var gateways = new List<IPEndPoint>();
        var embeddedAsked = false;
        for (var i = 0; i < args.Count; i++)
        {
            string Value()
            {
                if (i + 1 >= args.Count || args[i + 1].StartsWith("--", StringComparison.Ordinal))
                {
                    throw new FormatException($"{args[i]} needs a value");
                }
                return args[++i];
            }
            int Number(string name, int min, int max)
            {
                var text = Value();
                return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max ? n
                    : throw new FormatException($"{name}: '{text}' is not a whole number in {min}..{max}");
            }
            IPEndPoint Endpoint(string name)
            {
                var text = Value();
                return IPEndPoint.TryParse(text, out var e) && e.Port != 0 ? e : throw new FormatException($"{name}: '{text}' is not ADDRESS:PORT");
            }
            if (args[i] == "--gateway")
            {
                gateways.Add(Endpoint("--gateway"));
                continue;
            }
            options = args[i] switch
            {
                "--embedded" => options with { Embedded = (embeddedAsked = true) },
                "--namespaces" => options with { Namespaces = true },
                "--listen" => options with { Listen = Endpoint("--listen") },
                "--data" => options with { DataDirectory = Path.GetFullPath(Value()) },
                "--hosts" => options with { Hosts = Number("--hosts", 2, 16) },
                "--phase-seconds" => options with { PhaseSeconds = Number("--phase-seconds", 5, 3600) },
                "--source-root" => options with { SourceRoot = Path.GetFullPath(Value()) },
                "--testdata" => options with { TestData = Path.GetFullPath(Value()) },
                "--cluster-id" => options with { ClusterId = Value() },
                "--service-id" => options with { ServiceId = Value() },
                "--users" => options with { UsersFile = Path.GetFullPath(Value()) },
                _ => throw new FormatException($"unexpected argument '{args[i]}'"),
            };
        }
        options = options with { Gateways = gateways };
        if (gateways.Count > 0)
        {
            if (embeddedAsked)
            {
                throw new FormatException("--embedded and --gateway exclude each other: embedded runs its own silo");
            }
            if (options.Namespaces)
            {
                throw new FormatException("--namespaces and --gateway exclude each other: the namespaces belong to the embedded fleet");
            }
            options = options with { Embedded = false };
            if (options.UsersFile is null)
            {
                throw new FormatException("--users FILE is required with --gateway (the dashboard does not run without login)");
            }
        }
        return options;
    }
}
