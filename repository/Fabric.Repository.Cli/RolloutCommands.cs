using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Text;
using Fabric.Programs;
using Fabric.Silo;
using Fabric.Silo.Security;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Repository.Cli;

/// <summary>
/// <c>fabric-repo rollout</c>: what the control plane's staged rollouts of stack versions are doing, and an operator's
/// steps on them (pause, resume, promote, roll back). The repository decides what may run; a rollout only chooses among
/// its signed versions, so these commands talk to the silos, as an Orleans client holding an operator's certificate.
/// </summary>
internal static class RolloutCommands
{
    private static readonly string[] Steps = ["pause", "resume", "promote", "rollback"];

    public static Command Create()
    {
        var rollout = new Command("rollout", "Shows the control plane's staged rollouts of stack versions and steps them by hand (an operator's "
            + "certificate, OU=operator; each step is recorded with the certificate's name, --by and --reason). Exit 1 when the cluster "
            + "refuses the step or cannot be reached.");
        {
            var connection = new ConnectionOptions();
            var command = new Command("list", "Lists every rollout (rings, bake time, each gate's evidence, every step) and the versions judged bad.");
            connection.AddTo(command);
            command.SetAction(p => Run(connection.From(p), List));
            rollout.Subcommands.Add(command);
        }
        foreach (var step in Steps)
        {
            var connection = new ConnectionOptions();
            var stack = new Option<string>("--stack") { Description = "the stack id whose rollout to step", Required = true, HelpName = "ID" };
            var reason = new Option<string>("--reason") { Description = "why (recorded with the step)", Required = true, HelpName = "TEXT" };
            var by = new Option<string>("--by")
            {
                Description = "who takes the step (recorded beside the certificate's name)",
                DefaultValueFactory = _ => Environment.UserName,
                HelpName = "NAME",
            };
            var command = new Command(step, step switch
            {
                "pause" => "Stops the rollout's bake and promotion where it is (gates still judge, and a failing one still rolls back).",
                "resume" => "Lets a paused rollout bake and go on.",
                "promote" => "Takes the rollout to its next ring now, without waiting for the bake or the gates.",
                _ => "Returns every host to the previous version and marks this one bad.",
            }) { stack, reason, by };
            connection.AddTo(command);
            command.SetAction(p =>
            {
                var (id, why, who) = (p.GetValue(stack)!, p.GetValue(reason)!, p.GetValue(by)!);
                if (string.IsNullOrWhiteSpace(why))
                {
                    throw new UsageException("--reason is empty: say why");
                }
                return Run(connection.From(p), grains => StepAsync(grains, id, step, who, why));
            });
            rollout.Subcommands.Add(command);
        }
        return rollout;
    }

    private static async Task<int> List(IGrainFactory grains)
    {
        var catalog = grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        var rollouts = await catalog.ListRolloutsAsync();
        var bad = await catalog.ListBadAsync();
        Console.Write(Describe(rollouts, bad, DateTimeOffset.UtcNow));
        return 0;
    }

    private static async Task<int> StepAsync(IGrainFactory grains, string stack, string step, string by, string why)
    {
        var catalog = grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key);
        if (await catalog.StepRolloutAsync(stack, step, by, why) is { } refusal)
        {
            Console.Error.WriteLine(Printable($"fabric-repo: {step} {stack}: refused: {refusal}"));
            return 1;
        }
        var rollout = (await catalog.ListRolloutsAsync()).FirstOrDefault(r => r.StackId == stack);
        Console.WriteLine(Printable($"{step} {stack}: done{(rollout is null ? "" : "; " + Headline(rollout, DateTimeOffset.UtcNow))}"));
        return 0;
    }

    /// <summary>
    /// <paramref name="text"/> with control and format characters (C0, DEL, C1; bidirectional overrides) shown as \uXXXX:
    /// gate evidence and quarantine reasons carry what agents and plug-ins wrote, which must neither drive the operator's
    /// terminal nor reorder what it shows.
    /// </summary>
    internal static string Printable(string text)
    {
        static bool Hidden(char c) => char.IsControl(c) || CharUnicodeInfo.GetUnicodeCategory(c) == UnicodeCategory.Format;
        if (!text.Any(Hidden))
        {
            return text;
        }
        var printable = new StringBuilder(text.Length + 16);
        foreach (var c in text)
        {
            if (Hidden(c))
            {
                printable.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}");
            }
            else
            {
                printable.Append(c);
            }
        }
        return printable.ToString();
    }

    /// <summary>The rollouts and bad versions as the list command prints them.</summary>
    internal static string Describe(IReadOnlyList<Rollout> rollouts, IReadOnlyList<BadVersion> bad, DateTimeOffset now)
    {
        var text = new StringBuilder();
        if (rollouts.Count == 0)
        {
            text.AppendLine("no rollouts");
        }
        foreach (var rollout in rollouts.OrderBy(r => r.StackId, StringComparer.Ordinal))
        {
            text.AppendLine(Printable(Headline(rollout, now)));
            for (var i = 0; i < rollout.Rings.Length; i++)
            {
                var ring = rollout.Rings[i];
                var mark = i < rollout.Ring || (i == rollout.Ring && rollout.Status != RolloutStatus.RolledBack) ? "reached" : "waiting";
                text.AppendLine(Printable($"  ring {ring.Name} ({mark}): {string.Join(", ", ring.Hosts)}"));
            }
            foreach (var gate in rollout.Gates)
            {
                text.AppendLine(Printable($"  gate {gate.Gate} {gate.Verdict.ToString().ToLowerInvariant()}: {gate.Evidence}"));
            }
            foreach (var step in rollout.Steps)
            {
                text.AppendLine(Printable($"  {step.At:u} {step.Action} by {step.By}: {step.Why}"));
            }
        }
        foreach (var version in bad.OrderBy(b => b.StackId, StringComparer.Ordinal))
        {
            text.AppendLine(Printable($"bad {version.StackId} {version.Version} since {version.At:u} by {version.By}: {version.Evidence}"));
        }
        return text.ToString();
    }

    private static string Headline(Rollout rollout, DateTimeOffset now)
    {
        var where = rollout.Ring < 0 ? "no ring reached yet"
            : $"ring {rollout.Ring + 1} of {rollout.Rings.Length} ({rollout.Rings[rollout.Ring].Name})"
                + (rollout.Active ? $", baked {Span(rollout.Baked(now))} of {Span(rollout.Bake)}" : "");
        return $"{rollout.StackId} {rollout.From} -> {rollout.To}: {rollout.Status.ToString().ToLowerInvariant()}, {where}, started {rollout.Started:u}";
    }

    private static string Span(TimeSpan span) => span.TotalHours >= 1 ? $"{span.TotalHours:F1} h" : span.TotalMinutes >= 1 ? $"{span.TotalMinutes:F1} min" : $"{span.TotalSeconds:F0} s";

    private static int Run(Connection connection, Func<IGrainFactory, Task<int>> action) => RunAsync(connection, action).GetAwaiter().GetResult();

    private static async Task<int> RunAsync(Connection connection, Func<IGrainFactory, Task<int>> action)
    {
        ControlPlaneCredential? credential = null;
        if (connection.Certificate is not null)
        {
            try
            {
                credential = ControlPlaneCredential.Load(connection.Certificate, connection.Key!, connection.Authority!);
            }
            catch (FormatException e)
            {
                throw new UsageException(e.Message);
            }
            if (credential.Caller.Role != CallerRole.Operator)
            {
                credential.Dispose();
                throw new UsageException($"--certificate '{connection.Certificate}' is {credential.Caller}'s; rollout steps need an operator's (OU=operator)");
            }
            if (connection.RevocationList is { } list)
            {
                try
                {
                    new RevocationListFile(list, credential.Authority).ReadIfChanged();
                }
                catch (InvalidDataException e)
                {
                    credential.Dispose();
                    throw new UsageException($"--revocation-list: {e.Message}");
                }
            }
        }
        using var _ = credential;
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        var deadline = DateTimeOffset.UtcNow + connection.Timeout;
        string? lastError = null;
        builder.UseOrleansClient(client =>
        {
            client.UseStaticClustering([.. connection.Gateways])
                .Configure<Orleans.Configuration.ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (connection.ClusterId, connection.ServiceId))
                .Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = connection.Timeout)
                .UseConnectionRetryFilter(async (e, cancellationToken) =>
                {
                    lastError = e.Message;
                    if (DateTimeOffset.UtcNow + TimeSpan.FromSeconds(1) > deadline)
                    {
                        return false;
                    }
                    await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
                    return true;
                });
            if (credential is not null)
            {
                client.UseControlPlaneSecurity(credential, connection.RevocationList);
            }
        });
        using var host = builder.Build();
        var where = string.Join(", ", connection.Gateways);
        try
        {
            await host.StartAsync();
        }
        catch (Exception e) when (e is not UsageException)
        {
            var hint = credential is null ? " (a cluster with TLS needs --certificate, --key and --authority)" : "";
            Console.Error.WriteLine(Printable($"fabric-repo: cannot reach the cluster at {where} within {Span(connection.Timeout)}{hint}: {lastError ?? e.Message}"));
            return 1;
        }
        try
        {
            return await action(host.Services.GetRequiredService<IClusterClient>());
        }
        catch (Exception e) when (e is UnauthorizedAccessException or TimeoutException or OrleansException or InvalidOperationException)
        {
            Console.Error.WriteLine(Printable($"fabric-repo: the cluster at {where} refused or failed the call: {e.Message}"));
            return 1;
        }
        finally
        {
            // A gateway gone meanwhile must not hold the command: the client gets 5 s to close.
            using var stopping = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await host.StopAsync(stopping.Token);
        }
    }

    private sealed record Connection(IPEndPoint[] Gateways, string ClusterId, string ServiceId, string? Certificate, string? Key, string? Authority, string? RevocationList,
        TimeSpan Timeout);

    /// <summary>How to reach the cluster: its gateways, ids, and the operator's certificate (required beyond loopback).</summary>
    private sealed class ConnectionOptions
    {
        private readonly Option<IPEndPoint[]> _gateway = new("--gateway")
        {
            Description = "a silo gateway; repeat for several",
            HelpName = "ADDR:PORT",
            Required = true,
            Arity = ArgumentArity.OneOrMore,
            CustomParser = result =>
            {
                var endpoints = new List<IPEndPoint>();
                foreach (var token in result.Tokens)
                {
                    if (IPEndPoint.TryParse(token.Value, out var endpoint) && endpoint.Port != 0)
                    {
                        endpoints.Add(endpoint);
                    }
                    else
                    {
                        result.AddError($"--gateway '{token.Value}': is not ADDR:PORT (an IP address and a port)");
                    }
                }
                return [.. endpoints];
            },
        };

        private readonly Option<string> _clusterId = new("--cluster-id") { Description = "the cluster's Orleans cluster id", DefaultValueFactory = _ => "fabric", HelpName = "ID" };
        private readonly Option<string> _serviceId = new("--service-id") { Description = "the cluster's Orleans service id", DefaultValueFactory = _ => "fabric", HelpName = "ID" };
        private readonly Option<string?> _certificate = new("--certificate") { Description = "an operator's certificate from the fleet's authority (PEM; OU=operator)", HelpName = "FILE" };
        private readonly Option<string?> _key = new("--key") { Description = "the certificate's private key (PEM)", HelpName = "FILE" };
        private readonly Option<string?> _authority = new("--authority") { Description = "the fleet's authority's certificate (PEM)", HelpName = "FILE" };
        private readonly Option<string?> _revocationList = new("--revocation-list")
        {
            Description = "the fleet's authority's certificate revocation list: a silo whose certificate it revokes is refused",
            HelpName = "FILE",
        };

        private readonly Option<TimeSpan> _timeout = new("--timeout")
        {
            Description = "how long to wait for the cluster, in seconds",
            DefaultValueFactory = _ => TimeSpan.FromSeconds(30),
            HelpName = "SECONDS",
            CustomParser = CommandLineConventions.Parser(text => double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var s) && s > 0 && s <= 3600
                ? TimeSpan.FromSeconds(s) : throw new FormatException("is not a number of seconds between 0 and 3600")),
        };

        public void AddTo(Command command)
        {
            foreach (var option in new Option[] { _gateway, _clusterId, _serviceId, _certificate, _key, _authority, _revocationList, _timeout })
            {
                command.Options.Add(option);
            }
        }

        public Connection From(ParseResult result)
        {
            var gateways = result.GetValue(_gateway)!;
            string?[] files = [result.GetValue(_certificate), result.GetValue(_key), result.GetValue(_authority)];
            if (files.Any(f => f is null) && files.Any(f => f is not null))
            {
                throw new UsageException("--certificate, --key and --authority go together");
            }
            if (files[0] is null && gateways.Any(g => !IPAddress.IsLoopback(g.Address)))
            {
                throw new UsageException("--certificate, --key and --authority are required with a gateway beyond loopback (the control channel is TLS with "
                    + "an operator's certificate)");
            }
            var revocationList = result.GetValue(_revocationList);
            if (revocationList is not null && files[0] is null)
            {
                throw new UsageException("--revocation-list needs --certificate, --key and --authority (it is the authority's list)");
            }
            if (revocationList is not null && !File.Exists(revocationList))
            {
                throw new UsageException($"--revocation-list '{revocationList}' does not exist");
            }
            return new Connection(gateways, result.GetValue(_clusterId)!, result.GetValue(_serviceId)!, files[0], files[1], files[2], revocationList, result.GetValue(_timeout));
        }
    }
}
