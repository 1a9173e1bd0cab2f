using System.CommandLine;
using System.Text.Json;
using Fabric.Agent;
using Fabric.Agent.Api;
using Fabric.Programs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;

// fabric-agent: the dataplane agent of one host, and a small CLI over its local API.
var config = new Option<string>("--config") { Description = "the agent's configuration (example: deploy/agent.example.json)", Required = true, HelpName = "FILE" };
var logFormat = new Option<string>("--log-format") { Description = "how log lines are written", DefaultValueFactory = _ => "text", HelpName = "json|text", CustomParser = CommandLineConventions.OneOf("json", "text") };
var run = new Command("run", "Runs the agent until SIGINT or SIGTERM (as a systemd service: deploy/systemd/fabric-agent.service).") { config, logFormat };
run.SetAction((parsed, _) => RunAsync(parsed.GetValue(config)!, parsed.GetValue(logFormat) == "json"));

string[] operations = ["status", "rotate-key", "attach-vm", "detach-vm", "deregister-vm", "add-host", "set-route", "remove-route", "prepare-swap", "commit-swap", "abort-swap"];
var socket = new Argument<string>("SOCKET") { Description = "the agent's API socket (apiSocket in its configuration)" };
var operation = new Argument<string>("OP") { Description = string.Join(" | ", operations), CustomParser = CommandLineConventions.OneOf(operations) };
var settings = CommandLineConventions.RefusingOptions(new Argument<string[]>("SETTINGS") { Description = "the operation's key=value settings, or an id", Arity = ArgumentArity.ZeroOrMore });
var ctl = new Command("ctl", """
    Calls a running agent's local API. Operations and their settings:
      status
      rotate-key           (a new host key pair now, as its schedule does: controlPlane.keyRotationHours)
      attach-vm id=ID device=DEV vni=N mac=MAC [ipv4=A,B] [ipv6=A,B]
      detach-vm ID
      deregister-vm ID     (registrations come from fabric-hook and fabric-cni; status lists them)
      add-host id=ID [ipv4=A] [ipv6=A] [stack=std-ipv4] [port=47110]
      set-route vni=N mac=MAC host=ID [ipv4=A,B] [ipv6=A,B] [confidential=true]   (frames to it leave only encrypted)
      remove-route vni=N mac=MAC
      prepare-swap host=ID stack=STACK [slot=N] | commit-swap host=ID slot=N | abort-swap host=ID slot=N
    """) { socket, operation, settings };
ctl.SetAction(parsed => Control(parsed.GetValue(socket)!, parsed.GetValue(operation)!, parsed.GetValue(settings) ?? []));

var socketA = new Argument<string>("SOCKET_A") { Description = "host A's agent API socket" };
var hostB = new Argument<string>("HOST_B") { Description = "host B's id (as host A knows it)" };
var socketB = new Argument<string>("SOCKET_B") { Description = "host B's agent API socket" };
var hostA = new Argument<string>("HOST_A") { Description = "host A's id (as host B knows it)" };
var stack = new Argument<string>("STACK") { Description = "the stack to swap the path to" };
var swap = new Command("swap", "Hitless swap of the path between two agents: prepare on both ends, then commit on both; a failed prepare aborts both and leaves the old stack in place.")
{
    socketA, hostB, socketB, hostA, stack,
};
swap.SetAction(parsed => Swap(parsed.GetValue(socketA)!, parsed.GetValue(hostB)!, parsed.GetValue(socketB)!, parsed.GetValue(hostA)!, parsed.GetValue(stack)!));

var root = new RootCommand("fabric-agent: the dataplane agent of one host, and a small CLI over its local API.") { run, ctl, swap };
return await CommandLineConventions.InvokeAsync(root, args);

static async Task<int> RunAsync(string configPath, bool json)
{
    AgentConfig config;
    try
    {
        config = AgentConfig.Load(configPath);
    }
    catch (FormatException e)
    {
        throw new UsageException(e.Message);
    }
    var builder = Host.CreateApplicationBuilder();
    builder.Logging.ClearProviders();
    if (json)
    {
        builder.Logging.AddJsonConsole();
    }
    else
    {
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
    }
    builder.Services.AddSystemd();
    builder.Services.AddSingleton(config);
    builder.Services.AddHostedService<AgentService>();
    if (config.MetricsListen is { } listen)
    {
        var endpoint = System.Net.IPEndPoint.Parse(listen);
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics
            .AddMeter(AgentMetrics.MeterName)
            .AddPrometheusHttpListener(o =>
            {
                o.Host = endpoint.Address.ToString();
                o.Port = endpoint.Port;
            }));
    }
    using var host = builder.Build();
    try
    {
        await host.RunAsync();
    }
    catch (Exception e) when (e is InvalidOperationException or Fabric.Repository.TrustException or Fabric.Repository.PackageException)
    {
        Console.Error.WriteLine($"fabric-agent: {e.Message}");
        return 1;
    }
    return 0;
}

static int Slot(string text) => int.TryParse(text, out var slot) ? slot : throw new UsageException($"slot '{text}' is not a number.");

static int Swap(string socketA, string hostB, string socketB, string hostA, string stack)
{
    var watch = System.Diagnostics.Stopwatch.StartNew();
    var prepareA = Call(socketA, new ApiRequest("prepare-swap", Id: hostB, Stack: stack));
    if (!prepareA.RootElement.GetProperty("ok").GetBoolean())
    {
        return Fail("prepare on A", prepareA);
    }
    var slot = prepareA.RootElement.GetProperty("result").GetProperty("slot").GetInt32();
    var prepareB = Call(socketB, new ApiRequest("prepare-swap", Id: hostA, Stack: stack, Slot: slot));
    if (!prepareB.RootElement.GetProperty("ok").GetBoolean())
    {
        Call(socketA, new ApiRequest("abort-swap", Id: hostB, Slot: slot));
        return Fail("prepare on B (A aborted; the old stack stays)", prepareB);
    }
    // Both ends receive on the new slot now: commit the senders one after the other.
    foreach (var (socket, peer) in new[] { (socketA, hostB), (socketB, hostA) })
    {
        var commit = Call(socket, new ApiRequest("commit-swap", Id: peer, Slot: slot));
        if (!commit.RootElement.GetProperty("ok").GetBoolean())
        {
            return Fail($"commit towards {peer}", commit);
        }
    }
    Console.WriteLine($"swapped {hostA} <-> {hostB} to {stack} in slot {slot} ({watch.Elapsed.TotalMilliseconds:0.0} ms)");
    return 0;

    static JsonDocument Call(string socket, ApiRequest request) => JsonDocument.Parse(LocalApiServer.Send(socket, AgentConfig.Serialize(request)));

    static int Fail(string phase, JsonDocument reply)
    {
        Console.Error.WriteLine($"fabric-agent: swap failed at {phase}: {reply.RootElement.GetProperty("error").GetString()}");
        return 1;
    }
}

static int Control(string socket, string op, string[] rest)
{
    if (!File.Exists(socket))
    {
        Console.Error.WriteLine($"fabric-agent: no agent socket at '{socket}' (is fabric-agent running with apiSocket {socket}?)");
        return 1;
    }
    var values = rest.Where(a => a.Contains('=', StringComparison.Ordinal)).ToDictionary(a => a[..a.IndexOf('=', StringComparison.Ordinal)], a => a[(a.IndexOf('=', StringComparison.Ordinal) + 1)..]);
    string? Get(string key) => values.GetValueOrDefault(key);
    string Need(string key) => Get(key) ?? throw new UsageException($"{op}: {key}=... is required.");
    uint Vni() => uint.TryParse(Need("vni"), out var v) ? v : throw new UsageException($"{op}: vni '{Get("vni")}' is not a number.");
    string[]? List(string key) => Get(key)?.Split(',', StringSplitOptions.RemoveEmptyEntries);
    var request = op switch
    {
        "status" or "rotate-key" => new ApiRequest(op),
        "attach-vm" => new ApiRequest(op, Vm: new VmConfig(Need("id"), Need("device"), Vni(), Need("mac"), List("ipv4"), List("ipv6"))),
        "detach-vm" => new ApiRequest(op, Id: rest.FirstOrDefault() ?? throw new UsageException("detach-vm: the VM id is required.")),
        "deregister-vm" => new ApiRequest(op, Id: rest.FirstOrDefault() ?? throw new UsageException("deregister-vm: the registration id is required.")),
        "add-host" => new ApiRequest(op, Host: new RemoteHostConfig(Need("id"), Get("ipv4"), Get("ipv6"), Get("stack") ?? "std-ipv4",
            int.TryParse(Get("port") ?? "47110", out var port) ? port : throw new UsageException($"add-host: port '{Get("port")}' is not a number."))),
        "set-route" => new ApiRequest(op, Route: new RouteConfig(Vni(), Need("mac"), Need("host"), List("ipv4"), List("ipv6"),
            bool.TryParse(Get("confidential") ?? "false", out var confidential) ? confidential : throw new UsageException($"set-route: confidential '{Get("confidential")}' is neither true nor false."))),
        "remove-route" => new ApiRequest(op, Route: new RouteConfig(Vni(), Need("mac"), "")),
        "prepare-swap" => new ApiRequest(op, Id: Need("host"), Stack: Need("stack"), Slot: Get("slot") is { } s ? Slot(s) : null),
        "commit-swap" or "abort-swap" => new ApiRequest(op, Id: Need("host"), Slot: Slot(Need("slot"))),
        _ => throw new UsageException($"ctl: unknown operation '{op}'."),
    };
    var reply = LocalApiServer.Send(socket, AgentConfig.Serialize(request));
    using var document = JsonDocument.Parse(reply);
    if (!document.RootElement.GetProperty("ok").GetBoolean())
    {
        Console.Error.WriteLine($"fabric-agent: {op} refused: {document.RootElement.GetProperty("error").GetString()}");
        return 1;
    }
    Console.WriteLine(document.RootElement.TryGetProperty("result", out var result)
        ? JsonSerializer.Serialize(result, new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })
        : "ok");
    return 0;
}

/// <summary>Runs the agent for the host's lifetime; stopping releases every port and socket.</summary>
internal sealed class AgentService(AgentConfig config, ILogger<AgentService> logger, IHostApplicationLifetime lifetime) : IHostedService, IDisposable
{
    private Agent? _agent;
    private LocalApiServer? _api;
    private AgentMetrics? _metrics;
    private Fabric.Agent.ControlPlane.ControlPlaneLink? _link;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _agent = new Agent(config, logger);
        try
        {
            _agent.Start();
            // A certificate or host key that is unusable stops the agent too: it does not run half-connected.
            _link = config.ControlPlane is { } controlPlane ? new Fabric.Agent.ControlPlane.ControlPlaneLink(_agent, controlPlane, logger) : null;
        }
        catch (Exception e) when (e is InvalidOperationException or FileNotFoundException or FormatException or IOException or UnauthorizedAccessException)
        {
            AgentServiceLog.CouldNotStart(logger, e.Message);
            _agent.Dispose();
            _agent = null;
            lifetime.StopApplication();
            Environment.ExitCode = 1;
            return Task.CompletedTask;
        }
        _metrics = new AgentMetrics(_agent.Switch);
        _api = new LocalApiServer(_agent, config.ApiSocket);
        if (_link is { } link)
        {
            _agent.ControlPlaneStatus = () => link.Status;
            _agent.RotateHostKey = () => link.RotateKeyAsync();
            _link.Start();
        }
        AgentServiceLog.Ready(logger, config.HostId, config.ApiSocket);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_link is { } link)
        {
            _link = null;
            await link.DisposeAsync();
        }
        Dispose();
    }

    public void Dispose()
    {
        _api?.Dispose();
        _api = null;
        _metrics?.Dispose();
        _metrics = null;
        _agent?.Dispose();
        _agent = null;
    }
}

internal static partial class AgentServiceLog
{
    [LoggerMessage(100, LogLevel.Critical, "Agent could not start: {Reason}")]
    public static partial void CouldNotStart(ILogger logger, string reason);

    [LoggerMessage(101, LogLevel.Information, "fabric-agent {HostId} ready; API on {Socket}")]
    public static partial void Ready(ILogger logger, string hostId, string socket);
}
