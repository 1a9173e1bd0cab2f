using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Net;
using Fabric.Programs;

namespace Fabric.Dashboard;

/// <summary>What the web server of a dashboard takes, whoever hosts it: where it listens, its data folder and its HTTPS certificate.</summary>
public sealed record WebOptions(IPEndPoint Listen, string DataDirectory, string? TlsCertificate, string? TlsKey)
{
    public static readonly Option<IPEndPoint> ListenOption = new("--listen")
    {
        Description = "where the dashboard serves",
        HelpName = "ADDR:PORT",
        DefaultValueFactory = _ => new IPEndPoint(IPAddress.Loopback, 5080),
        CustomParser = CommandLineConventions.Parser(Endpoint),
    };

    public static readonly Option<string> DataOption = new("--data")
    {
        Description = "the data folder: the sign-in cookies' keys, and on the embedded default the development keys, the generated credentials and run state",
        HelpName = "DIR",
        DefaultValueFactory = _ => Path.Combine(Environment.GetEnvironmentVariable("XDG_DATA_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share"), "fabric"),
    };

    public static readonly Option<string?> TlsCertificateOption = new("--tls-certificate")
    {
        Description = "serve HTTPS with this certificate (PEM; its chain after it); required with a --listen address beyond loopback",
        HelpName = "FILE",
    };

    public static readonly Option<string?> TlsKeyOption = new("--tls-key") { Description = "the HTTPS certificate's private key (PEM)", HelpName = "FILE" };

    /// <summary>The web options of a parse without errors; throws <see cref="FormatException"/> when they contradict each other.</summary>
    public static WebOptions From(ParseResult result)
    {
        var options = new WebOptions(result.GetValue(ListenOption)!, Path.GetFullPath(result.GetValue(DataOption)!), Full(result.GetValue(TlsCertificateOption)),
            Full(result.GetValue(TlsKeyOption)));
        if ((options.TlsCertificate is null) != (options.TlsKey is null))
        {
            throw new FormatException("--tls-certificate and --tls-key go together");
        }
        if (options.TlsCertificate is null && !IPAddress.IsLoopback(options.Listen.Address))
        {
            throw new FormatException($"--listen {options.Listen}: beyond loopback the dashboard serves only HTTPS (passwords and session cookies "
                + "would cross the network in clear): give --tls-certificate FILE and --tls-key FILE");
        }
        return options;
    }

    /// <summary>The page's address as a browser on this machine reaches it.</summary>
    public string Url => $"{(TlsCertificate is null ? "http" : "https")}://{(Listen.Address.Equals(IPAddress.Any) ? "127.0.0.1" : Listen.Address)}:{Listen.Port}/";

    /// <summary>A path option made absolute (null stays null).</summary>
    public static string? Full(string? path) => path is null ? null : Path.GetFullPath(path);

    /// <summary>A whole number in a range, for an option's parser.</summary>
    public static int Number(string text, int min, int max) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max ? n
            : throw new FormatException($"is not a whole number in {min}..{max}");

    private static IPEndPoint Endpoint(string text) =>
        IPEndPoint.TryParse(text, out var e) && e.Port != 0 ? e : throw new FormatException("is not ADDRESS:PORT");
}

/// <summary>
/// fabric-dashboard's command line: an Orleans client of a running cluster (its gateways, or its membership table), users
/// from a file. The embedded default (silo, repository and simulated fleet with this dashboard) is fabric-embedded's.
/// </summary>
public sealed record DashboardOptions(
    WebOptions Web,
    IReadOnlyList<IPEndPoint> Gateways,
    string ClusterId,
    string ServiceId,
    string UsersFile,
    string? Certificate = null,
    string? Key = null,
    string? Authority = null,
    string Clustering = "static",
    string? RevocationList = null)
{
    private static readonly Option<IPEndPoint[]> GatewayOption = new("--gateway")
    {
        Description = "a silo gateway to connect to; repeat for several",
        HelpName = "ADDR:PORT",
        Arity = ArgumentArity.ZeroOrMore,
        CustomParser = result =>
        {
            var endpoints = new List<IPEndPoint>();
            foreach (var token in result.Tokens)
            {
                if (IPEndPoint.TryParse(token.Value, out var e) && e.Port != 0)
                {
                    endpoints.Add(e);
                }
                else
                {
                    result.AddError($"--gateway '{token.Value}': is not ADDRESS:PORT");
                }
            }
            return [.. endpoints];
        },
    };

    private static readonly Option<string> ClusterIdOption = new("--cluster-id") { Description = "the cluster's Orleans cluster id", DefaultValueFactory = _ => "fabric", HelpName = "ID" };

    private static readonly Option<string> ServiceIdOption = new("--service-id") { Description = "the cluster's Orleans service id", DefaultValueFactory = _ => "fabric", HelpName = "ID" };

    private static readonly Option<string?> UsersOption = new("--users")
    {
        Description = "(required) a file of 'NAME HASH admin|read-only' lines as 'fabric-dashboard users set' writes them; read again whenever it "
            + "changes",
        HelpName = "FILE",
    };

    private static readonly Option<string> ClusteringOption = new("--clustering")
    {
        Description = "how the dashboard finds the silos: static (the --gateway list) or azure-table (the cluster's membership "
            + "table; its connection string in FABRIC_TABLE_CONNECTION_STRING)",
        HelpName = "static|azure-table",
        DefaultValueFactory = _ => "static",
        CustomParser = CommandLineConventions.Parser(text => text is "static" or "azure-table" ? text : throw new FormatException("is not static or azure-table")),
    };

    private static readonly Option<string?> CertificateOption = new("--certificate")
    {
        Description = "the dashboard's certificate from the fleet's authority, OU=operator (PEM; required unless every gateway is on loopback)",
        HelpName = "FILE",
    };

    private static readonly Option<string?> KeyOption = new("--key") { Description = "the certificate's private key (PEM)", HelpName = "FILE" };

    private static readonly Option<string?> AuthorityOption = new("--authority") { Description = "the fleet's authority's certificate (PEM)", HelpName = "FILE" };
    private static readonly Option<string?> RevocationListOption = new("--revocation-list")
    {
        Description = "the fleet's authority's certificate revocation list (fabric-pki revoke): a silo whose certificate it revokes is refused",
        HelpName = "FILE",
    };

    /// <summary>The command line: every option with its help.</summary>
    public static RootCommand Command { get; } = new("fabric-dashboard: the operator UI of a Fabric cluster, an Orleans client of its silos (--gateway, "
        + "or --clustering azure-table). The embedded default, with its own silo and simulated fleet, is fabric-embedded ('./fabric run').")
    {
        WebOptions.ListenOption, WebOptions.DataOption, GatewayOption, ClusterIdOption, ServiceIdOption, UsersOption, CertificateOption, KeyOption,
        AuthorityOption, RevocationListOption, ClusteringOption, WebOptions.TlsCertificateOption, WebOptions.TlsKeyOption,
    };

    /// <summary>
    /// <c>fabric-dashboard users …</c>, a command line of its own (the dashboard's runs without a subcommand, which
    /// System.CommandLine would otherwise require once one exists): the program picks it when the first argument is "users".
    /// </summary>
    public static RootCommand UsersCommandLine { get; } = new("fabric-dashboard users: manages the dashboard's users file") { UsersCommand() };

    /// <summary><c>fabric-dashboard users set --users FILE NAME ROLE</c>: the password from standard input, stored as its hash.</summary>
    private static Command UsersCommand()
    {
        var file = new Option<string>("--users") { Description = "the users file (created owner-only if it does not exist)", HelpName = "FILE", Required = true };
        var name = new Argument<string>("NAME") { Description = "the user's name (one word)" };
        var role = new Argument<string>("ROLE") { Description = "admin or read-only" };
        var set = new Command("set", "sets a user's password and role in the users file, adding the user if new; the password (at least "
            + $"{Users.MinimumPassword} characters) is read from standard input and only its salted PBKDF2 hash is stored. A running dashboard "
            + "applies the change at the user's next request.") { file, name, role };
        set.SetAction(result =>
        {
            var path = Path.GetFullPath(result.GetValue(file)!);
            try
            {
                // What is wrong with the arguments is said before a password is asked for.
                Users.CheckNameAndRole(result.GetValue(name)!, result.GetValue(role)!);
                if (!Console.IsInputRedirected)
                {
                    Console.Error.Write("password: ");
                }
                var password = Console.IsInputRedirected ? Console.In.ReadLine() : ReadHidden();
                if (string.IsNullOrEmpty(password))
                {
                    throw new FormatException("no password on standard input");
                }
                Users.Set(path, result.GetValue(name)!, password, result.GetValue(role)!);
                Console.WriteLine($"{result.GetValue(name)} ({result.GetValue(role)}) set in {path}");
                return 0;
            }
            catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"fabric-dashboard users set: {e.Message}");
                return 2;
            }
        });
        return new Command("users", "manages the dashboard's users file") { set };
    }

    private static string ReadHidden()
    {
        var text = new System.Text.StringBuilder();
        for (var key = Console.ReadKey(intercept: true); key.Key != ConsoleKey.Enter; key = Console.ReadKey(intercept: true))
        {
            if (key.Key == ConsoleKey.Backspace && text.Length > 0)
            {
                text.Length--;
            }
            else if (!char.IsControl(key.KeyChar))
            {
                text.Append(key.KeyChar);
            }
        }
        Console.Error.WriteLine();
        return text.ToString();
    }

    /// <summary>The options of a parse without errors; throws <see cref="FormatException"/> when options contradict each other.</summary>
    public static DashboardOptions From(ParseResult result)
    {
        var web = WebOptions.From(result);
        var gateways = result.GetValue(GatewayOption) ?? [];
        var clustering = result.GetValue(ClusteringOption)!;
        string?[] credentials = [WebOptions.Full(result.GetValue(CertificateOption)), WebOptions.Full(result.GetValue(KeyOption)), WebOptions.Full(result.GetValue(AuthorityOption))];
        if (clustering == "azure-table" && gateways.Length > 0)
        {
            throw new FormatException("--clustering azure-table and --gateway exclude each other: the gateways come from the membership table");
        }
        if (clustering == "static" && gateways.Length == 0)
        {
            throw new FormatException("no cluster to show: give the silos' gateways (--gateway ADDR:PORT) or --clustering azure-table; the embedded default "
                + "(a silo and a simulated fleet in one process) is fabric-embedded, which './fabric run' starts");
        }
        if (clustering == "azure-table" && string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable("FABRIC_TABLE_CONNECTION_STRING")))
        {
            throw new FormatException("--clustering azure-table: set FABRIC_TABLE_CONNECTION_STRING to the membership table's connection string");
        }
        var users = WebOptions.Full(result.GetValue(UsersOption))
            ?? throw new FormatException("--users FILE is required (the dashboard does not run without login)");
        if (credentials.Any(c => c is null) && credentials.Any(c => c is not null))
        {
            throw new FormatException("--certificate, --key and --authority go together");
        }
        if (credentials[0] is null && (clustering != "static" || gateways.Any(g => !IPAddress.IsLoopback(g.Address))))
        {
            throw new FormatException("--certificate, --key and --authority are required with a gateway beyond loopback (the control channel is TLS "
                + "with the dashboard's operator certificate)");
        }
        var revocationList = WebOptions.Full(result.GetValue(RevocationListOption));
        if (revocationList is not null && credentials[0] is null)
        {
            throw new FormatException("--revocation-list goes with --certificate, --key and --authority (it is checked against the authority)");
        }
        return new DashboardOptions(web, gateways, result.GetValue(ClusterIdOption)!, result.GetValue(ServiceIdOption)!, users, credentials[0], credentials[1],
            credentials[2], clustering, revocationList);
    }
}
