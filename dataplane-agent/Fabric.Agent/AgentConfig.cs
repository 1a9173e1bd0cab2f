using System.Collections.Immutable;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization;
using Fabric.Agent.Switching;
using Fabric.Wire;

namespace Fabric.Agent;

/// <summary>A VM as the config file and the local API describe it.</summary>
public sealed record VmConfig(string Id, string Device, uint Vni, string Mac, string[]? IPv4 = null, string[]? IPv6 = null, bool Confidential = false);

/// <summary>A remote VM entry of the forwarding table. <paramref name="Confidential"/>: the VM takes frames only as they
/// crossed the underlay encrypted, so this host sends them to it only through a stack that encrypts.</summary>
public sealed record RouteConfig(uint Vni, string Mac, string Host, string[]? IPv4 = null, string[]? IPv6 = null, bool Confidential = false);

/// <summary>
/// A remote host: its underlay addresses, the stack its path uses, per stack id the configuration its instances on
/// this path get (e.g. <c>"secure": { "key": "64 hex digits" }</c>, the same at both ends), and the host pair's overlay
/// key (64 hex digits, the same at both ends) that authenticates the agents' probes and control messages on the path.
/// </summary>
public sealed record RemoteHostConfig(string Id, string? IPv4, string? IPv6, string Stack = "std-ipv4", int Port = FabricHeader.DefaultUdpPort,
    Dictionary<string, Dictionary<string, string>>? Settings = null, string? OverlayKey = null);

/// <summary>
/// Where signed stacks come from: a repository (a folder, or "blob:CONTAINER" with the storage connection string in the
/// environment variable FABRIC_BLOB_CONNECTION_STRING), the root this agent pins, and its state folder (the metadata it
/// last trusted, the verified packages cached by digest, and those packages unpacked), and how often it reads the
/// targets again (a stack withdrawn from them is unbound within that period and the drain time).
/// </summary>
public sealed record RepositoryConfig(string Path, string TrustRoot, string StateDirectory, int RefreshSeconds = 60);

/// <summary>
/// The control plane this agent obeys: the silo gateways it connects to ("ADDRESS:PORT"; or none with clustering
/// "azure-table", the membership table's connection string in FABRIC_TABLE_CONNECTION_STRING), the cluster's ids, and how
/// often it reports telemetry. Certificate, Key and Authority (PEM files): this host's certificate from the fleet's
/// authority (OU=agent, CN=the host id), its private key and the authority's certificate — TLS to the silos and the
/// identity every call carries. Only a control plane on loopback may be reached without them. RevocationList: the
/// authority's CRL (fabric-pki revoke); a silo whose certificate it revokes is refused at connection. KeyRotationHours: how
/// old the host's key-agreement key may grow before the agent makes a new one (0: never); KeyOverlapSeconds: how long the
/// previous key (this host's, or a peer's) still verifies after the new one is registered, so nothing in flight is lost.
/// </summary>
public sealed record ControlPlaneConfig(string[]? Gateways = null, string ClusterId = "fabric", string ServiceId = "fabric", string Clustering = "static",
    int ReportMilliseconds = 1000, string? Certificate = null, string? Key = null, string? Authority = null, string? RevocationList = null,
    double KeyRotationHours = 24, int KeyOverlapSeconds = 600)
{
    /// <summary>Whether the configuration names a certificate (Validate checks that it names all three files).</summary>
    public bool Secured => Certificate is not null || Key is not null || Authority is not null;
}

/// <summary>This host's underlay: where the agent's UDP sockets bind, and the uplink MTU.</summary>
public sealed record UnderlayConfig(string? IPv4, string? IPv6, int Port = FabricHeader.DefaultUdpPort, int Mtu = 1500);

/// <summary>The agent's configuration file (JSON). <see cref="Validate"/> names every field that is wrong.</summary>
public sealed record AgentConfig(
    string HostId,
    UnderlayConfig Underlay,
    string[] Stacks,
    string ApiSocket,
    string? MetricsListen = null,
    RemoteHostConfig[]? RemoteHosts = null,
    VmConfig[]? Vms = null,
    RouteConfig[]? Routes = null,
    int DrainMilliseconds = 2000,
    RepositoryConfig? Repository = null,
    string? StateDirectory = null,
    ControlPlaneConfig? ControlPlane = null,
    int PeerSlotIdleSeconds = 600,
    bool VmPortOffloads = true,
    int? VmReceiveThreads = null)
{
    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        PropertyNameCaseInsensitive = true,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        // Replies are read by people through the CLI: keep quotes and non-ASCII as they are.
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Reads and validates a config file; throws <see cref="FormatException"/> listing every problem.</summary>
    public static AgentConfig Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new FormatException($"Config file '{path}' does not exist.");
        }
        AgentConfig? config;
        try
        {
            config = JsonSerializer.Deserialize<AgentConfig>(File.ReadAllText(path), Json);
        }
        catch (JsonException e)
        {
            throw new FormatException($"Config file '{path}': {e.Message}", e);
        }
        if (config is null)
        {
            throw new FormatException($"Config file '{path}' is empty.");
        }
        var problems = config.Validate();
        if (problems.Count > 0)
        {
            throw new FormatException($"Config file '{path}': {string.Join("; ", problems)}");
        }
        return config;
    }

    public static T Parse<T>(string json) => JsonSerializer.Deserialize<T>(json, Json) ?? throw new FormatException("empty JSON");

    public static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Json);

    /// <summary>Every problem, each naming its field.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(HostId))
        {
            problems.Add("hostId: required");
        }
        if (Underlay is null)
        {
            problems.Add("underlay: required");
        }
        else
        {
            if (Underlay.IPv4 is null && Underlay.IPv6 is null)
            {
                problems.Add("underlay: give ipv4, ipv6 or both");
            }
            CheckAddress(problems, "underlay.ipv4", Underlay.IPv4, AddressFamily.InterNetwork);
            CheckAddress(problems, "underlay.ipv6", Underlay.IPv6, AddressFamily.InterNetworkV6);
            if (Underlay.Port is < 0 or > 65535)
            {
                problems.Add($"underlay.port: {Underlay.Port} is not a UDP port (0 takes any free one)");
            }
            if (Underlay.Mtu is < 1280 or > 65535)
            {
                problems.Add($"underlay.mtu: {Underlay.Mtu} is outside 1280..65535");
            }
        }
        if (MetricsListen is not null && (!IPEndPoint.TryParse(MetricsListen, out var metrics) || metrics.Port == 0 || !IPAddress.IsLoopback(metrics.Address)))
        {
            problems.Add($"metricsListen: '{MetricsListen}' is not a loopback address with a port (e.g. 127.0.0.1:9464)");
        }
        if (DrainMilliseconds is < 0 or > 600_000)
        {
            problems.Add($"drainMilliseconds: {DrainMilliseconds} is outside 0..600000");
        }
        if (VmReceiveThreads is < 0 or > 64)
        {
            problems.Add($"vmReceiveThreads: {VmReceiveThreads} is outside 0..64 (0: a thread per VM)");
        }
        if (PeerSlotIdleSeconds is < 1 or > 86_400)
        {
            problems.Add($"peerSlotIdleSeconds: {PeerSlotIdleSeconds} is outside 1..86400");
        }
        if (string.IsNullOrWhiteSpace(ApiSocket))
        {
            problems.Add("apiSocket: required");
        }
        if (ControlPlane is { } control)
        {
            if (control.Clustering is not ("static" or "azure-table"))
            {
                problems.Add($"controlPlane.clustering: '{control.Clustering}' is not static or azure-table");
            }
            if (control.Clustering == "static" && (control.Gateways is null || control.Gateways.Length == 0))
            {
                problems.Add("controlPlane.gateways: give at least one silo gateway ADDRESS:PORT");
            }
            for (var i = 0; i < (control.Gateways?.Length ?? 0); i++)
            {
                if (!IPEndPoint.TryParse(control.Gateways![i], out var gateway) || gateway.Port == 0)
                {
                    problems.Add($"controlPlane.gateways[{i}]: '{control.Gateways[i]}' is not ADDRESS:PORT");
                }
            }
            if (control.Secured)
            {
                foreach (var (field, path) in new[] { ("certificate", control.Certificate), ("key", control.Key), ("authority", control.Authority) })
                {
                    if (path is null)
                    {
                        problems.Add($"controlPlane.{field}: required with the other two (certificate, key, authority)");
                    }
                    else if (!File.Exists(path))
                    {
                        problems.Add($"controlPlane.{field}: '{path}' does not exist");
                    }
                }
                if (control.RevocationList is { } list && !File.Exists(list))
                {
                    problems.Add($"controlPlane.revocationList: '{list}' does not exist (the fleet authority's CRL: fabric-pki revoke writes it)");
                }
            }
            else if (control.Clustering != "static" || control.Gateways?.Any(g => !IPEndPoint.TryParse(g, out var e) || !IPAddress.IsLoopback(e.Address)) == true)
            {
                problems.Add("controlPlane.certificate: required (with key and authority) unless every gateway is on loopback: the control channel is TLS with this host's certificate");
            }
            if (control.ReportMilliseconds is < 100 or > 60_000)
            {
                problems.Add($"controlPlane.reportMilliseconds: {control.ReportMilliseconds} is outside 100..60000");
            }
            if (control.KeyOverlapSeconds is < 10 or > 86_400)
            {
                problems.Add($"controlPlane.keyOverlapSeconds: {control.KeyOverlapSeconds} is outside 10..86400");
            }
            else if (control.KeyOverlapSeconds * 1000L < 3L * control.ReportMilliseconds)
            {
                problems.Add($"controlPlane.keyOverlapSeconds: {control.KeyOverlapSeconds} is shorter than three report periods ({3 * control.ReportMilliseconds} ms): peers could not hear a new key in time");
            }
            if (control.KeyRotationHours is < 0 or > 87_600 || double.IsNaN(control.KeyRotationHours)
                || (control.KeyRotationHours > 0 && control.KeyRotationHours * 3600 < 2 * control.KeyOverlapSeconds))
            {
                problems.Add($"controlPlane.keyRotationHours: {control.KeyRotationHours} must be 0 (never) or from twice the overlap ({control.KeyOverlapSeconds} s) to 87600 (ten years), in hours");
            }
        }
        if (Repository is not null && Repository.RefreshSeconds is < 1 or > 86_400)
        {
            problems.Add($"repository.refreshSeconds: {Repository.RefreshSeconds} is outside 1..86400");
        }
        if (Repository is not null && !File.Exists(Repository.TrustRoot))
        {
            problems.Add($"repository.trustRoot: '{Repository.TrustRoot}' does not exist");
        }
        for (var i = 0; i < (Stacks?.Length ?? 0); i++)
        {
            if (!File.Exists(Stacks![i]))
            {
                problems.Add($"stacks[{i}]: '{Stacks[i]}' does not exist");
            }
        }
        for (var i = 0; i < (RemoteHosts?.Length ?? 0); i++)
        {
            problems.AddRange(RemoteHosts![i].Validate($"remoteHosts[{i}]"));
        }
        for (var i = 0; i < (Vms?.Length ?? 0); i++)
        {
            problems.AddRange(Vms![i].Validate($"vms[{i}]"));
        }
        for (var i = 0; i < (Routes?.Length ?? 0); i++)
        {
            problems.AddRange(Routes![i].Validate($"routes[{i}]"));
        }
        return problems;
    }

    internal static void CheckAddress(List<string> problems, string field, string? text, AddressFamily family)
    {
        if (text is not null && (!IPAddress.TryParse(text, out var address) || address.AddressFamily != family))
        {
            problems.Add($"{field}: '{text}' is not an {(family == AddressFamily.InterNetwork ? "IPv4" : "IPv6")} address");
        }
    }
}

/// <summary>Validation and conversion of the API/config records.</summary>
public static class ConfigChecks
{
    public static IEnumerable<string> Validate(this VmConfig vm, string at)
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(vm.Id))
        {
            problems.Add($"{at}.id: required");
        }
        if (string.IsNullOrWhiteSpace(vm.Device) || vm.Device.Length > 15)
        {
            problems.Add($"{at}.device: '{vm.Device}' is not an interface name (1 to 15 characters)");
        }
        CheckCommon(problems, at, vm.Vni, vm.Mac, vm.IPv4, vm.IPv6);
        return problems;
    }

    public static IEnumerable<string> Validate(this RouteConfig route, string at)
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(route.Host))
        {
            problems.Add($"{at}.host: required");
        }
        CheckCommon(problems, at, route.Vni, route.Mac, route.IPv4, route.IPv6);
        return problems;
    }

    public static IEnumerable<string> Validate(this RemoteHostConfig host, string at)
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(host.Id))
        {
            problems.Add($"{at}.id: required");
        }
        if (host.IPv4 is null && host.IPv6 is null)
        {
            problems.Add($"{at}: give ipv4, ipv6 or both");
        }
        AgentConfig.CheckAddress(problems, $"{at}.ipv4", host.IPv4, AddressFamily.InterNetwork);
        AgentConfig.CheckAddress(problems, $"{at}.ipv6", host.IPv6, AddressFamily.InterNetworkV6);
        if (host.Port is < 1 or > 65535)
        {
            problems.Add($"{at}.port: {host.Port} is not a UDP port");
        }
        if (host.OverlayKey is { } key && (key.Length != 64 || !key.All(Uri.IsHexDigit)))
        {
            problems.Add($"{at}.overlayKey: not 64 hex digits (32 bytes)");
        }
        return problems;
    }

    private static void CheckCommon(List<string> problems, string at, uint vni, string mac, string[]? ipv4, string[]? ipv6)
    {
        if (vni > FabricHeader.MaxVirtualNetworkId)
        {
            problems.Add($"{at}.vni: {vni} does not fit 24 bits");
        }
        if (!MacAddress.TryParse(mac, out var parsed) || parsed.IsMulticast || parsed.Value == 0)
        {
            problems.Add($"{at}.mac: '{mac}' is not a unicast MAC address");
        }
        for (var i = 0; i < (ipv4?.Length ?? 0); i++)
        {
            AgentConfig.CheckAddress(problems, $"{at}.ipv4[{i}]", ipv4![i], AddressFamily.InterNetwork);
        }
        for (var i = 0; i < (ipv6?.Length ?? 0); i++)
        {
            AgentConfig.CheckAddress(problems, $"{at}.ipv6[{i}]", ipv6![i], AddressFamily.InterNetworkV6);
        }
    }

    public static VmSpec ToSpec(this VmConfig vm)
    {
        MacAddress.TryParse(vm.Mac, out var mac);
        return new VmSpec(vm.Id, vm.Device, vm.Vni, mac, V4(vm.IPv4), V6(vm.IPv6), vm.Confidential);
    }

    public static RemoteHostSpec ToSpec(this RemoteHostConfig host) =>
        new(host.Id, host.IPv4 is null ? null : IPAddress.Parse(host.IPv4), host.IPv6 is null ? null : IPAddress.Parse(host.IPv6), host.Stack)
        {
            Settings = host.Settings?.ToDictionary(s => s.Key, s => (IReadOnlyDictionary<string, string>)s.Value.AsReadOnly(), StringComparer.Ordinal),
            OverlayKey = host.OverlayKey is null ? null : Convert.FromHexString(host.OverlayKey),
        };

    public static ImmutableArray<IPv4Address> V4(string[]? addresses) => [.. (addresses ?? []).Select(IPv4Address.Parse)];

    public static ImmutableArray<IPv6Address> V6(string[]? addresses) => [.. (addresses ?? []).Select(IPv6Address.Parse)];
}
