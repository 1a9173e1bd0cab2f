using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Fabric.Registration;

namespace Fabric.Cni;

/// <summary>
/// The plugin's configuration as the runtime sends it on stdin: the spec's keys (cniVersion, name, type, ipam, dns,
/// runtimeConfig, prevResult, args) and Fabric's own — vni, mtu, policy, agentSocket, stateDir, dataDir, offloads. Unknown keys
/// are allowed and ignored (the spec requires runtimes to pass them through). The original JSON is kept for delegation.
/// </summary>
public sealed partial class NetworkConfig
{
    public static readonly string[] SupportedVersions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

    private NetworkConfig(JsonObject json, string text) => (Json, Text) = (json, text);

    public JsonObject Json { get; }

    /// <summary>The exact text received, handed to IPAM delegates unchanged.</summary>
    public string Text { get; }

    public string CniVersion { get; private init; } = "1.1.0";
    public string Name { get; private init; } = "";
    public uint Vni { get; private init; } = VmPolicy.DefaultVni;
    public int Mtu { get; private init; } = DefaultMtu;
    public VmPolicy Policy { get; private init; } = new();
    public string AgentSocket { get; private init; } = "/run/fabric/agent.sock";
    public string StateDirectory { get; private init; } = "/var/lib/fabric";
    public string DataDirectory { get; private init; } = "/var/lib/cni/fabric";
    public string? IpamType { get; private init; }

    /// <summary>
    /// Whether the veth keeps its checksum and segmentation offloads (default true): the agent's port reads virtio-net
    /// headers and finishes what they leave. False for an agent with <c>vmPortOffloads</c> off, whose ports need frames
    /// complete and no larger than the MTU.
    /// </summary>
    public bool Offloads { get; private init; } = true;

    /// <summary>The inner MTU of a std-ipv4 path on a 1500-byte underlay (dataplane-agent/Fabric.Agent/README.md).</summary>
    public const int DefaultMtu = 1442;

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    private static partial Regex NamePattern();

    /// <summary>Reads and validates; throws <see cref="CniException"/> with the spec's code and the offending key.</summary>
    public static NetworkConfig Parse(string text)
    {
        JsonNode? node;
        try
        {
            // Strict JSON, as the spec requires: comments and trailing commas are decode failures.
            node = JsonNode.Parse(text);
        }
        catch (JsonException e)
        {
            throw new CniException(CniException.DecodeFailure, "failed to decode the network configuration", e.Message);
        }
        if (node is not JsonObject json)
        {
            throw new CniException(CniException.DecodeFailure, "failed to decode the network configuration", "it is not a JSON object");
        }
        var version = String(json, "cniVersion") ?? throw new CniException(CniException.InvalidConfig, "invalid network configuration: cniVersion is missing");
        if (!SupportedVersions.Contains(version))
        {
            throw new CniException(CniException.IncompatibleVersion, $"incompatible CNI version {version}", $"this plugin supports {string.Join(", ", SupportedVersions)}");
        }
        var name = String(json, "name") ?? throw new CniException(CniException.InvalidConfig, "invalid network configuration: name is missing");
        if (!NamePattern().IsMatch(name))
        {
            throw new CniException(CniException.InvalidConfig, $"invalid network configuration: name '{name}' must start with a letter or digit and hold only letters, digits, '_', '.', '-'");
        }
        var policy = new VmPolicy();
        if (json["policy"] is { } policyNode)
        {
            if (policyNode is not JsonObject p)
            {
                throw Unsupported("policy", policyNode);
            }
            policy = new VmPolicy(String(p, "workload", "policy.") ?? policy.Workload, String(p, "security", "policy.") ?? policy.Security, String(p, "family", "policy.") ?? policy.Family,
                Strings(p, "allow"), Strings(p, "deny"), String(p, "pin", "policy."));
        }
        var vni = Number(json, "vni", 1, 0xFF_FFFF) is { } v ? (uint)v : VmPolicy.DefaultVni;
        policy = policy with { Vni = vni };
        if (policy.Validate("policy").FirstOrDefault() is { } problem)
        {
            throw new CniException(CniException.UnsupportedField, $"unsupported value in network configuration: {problem}");
        }
        string? ipamType = null;
        if (json["ipam"] is { } ipam)
        {
            ipamType = ipam is JsonObject o ? String(o, "type", "ipam.") : throw Unsupported("ipam", ipam);
            if (ipamType is null || ipamType.Contains('/', StringComparison.Ordinal))
            {
                throw new CniException(CniException.InvalidConfig, $"invalid network configuration: ipam.type must name a plugin in CNI_PATH (is '{ipamType}')");
            }
        }
        return new NetworkConfig(json, text)
        {
            CniVersion = version,
            Name = name,
            Vni = vni,
            Mtu = Number(json, "mtu", 68, 65535) is { } mtu ? (int)mtu : DefaultMtu,
            Policy = policy,
            AgentSocket = String(json, "agentSocket") ?? "/run/fabric/agent.sock",
            StateDirectory = String(json, "stateDir") ?? "/var/lib/fabric",
            DataDirectory = String(json, "dataDir") ?? "/var/lib/cni/fabric",
            IpamType = ipamType,
            Offloads = json["offloads"] switch
            {
                null => true,
                JsonValue value when value.TryGetValue<bool>(out var on) => on,
                var other => throw Unsupported("offloads", other),
            },
        };
    }

    /// <summary>The MAC the runtime asked for (runtimeConfig.mac, capability "mac"), if any.</summary>
    public string? RuntimeMac => Json["runtimeConfig"] is JsonObject rc ? String(rc, "mac", "runtimeConfig.") : null;

    public JsonObject? PrevResult => Json["prevResult"] as JsonObject;

    private static CniException Unsupported(string key, JsonNode? value) =>
        new(CniException.UnsupportedField, $"unsupported value in network configuration: {key} = {value?.ToJsonString() ?? "null"}");

    private static string? String(JsonObject json, string key, string prefix = "") => json[key] switch
    {
        null => null,
        JsonValue value when value.TryGetValue<string>(out var text) => text,
        var other => throw Unsupported(prefix + key, other),
    };

    private static string[]? Strings(JsonObject json, string key) => json[key] switch
    {
        null => null,
        JsonArray array when array.All(i => i is JsonValue v && v.TryGetValue<string>(out _)) => [.. array.Select(i => i!.GetValue<string>())],
        var other => throw Unsupported("policy." + key, other),
    };

    private static long? Number(JsonObject json, string key, long min, long max) => json[key] switch
    {
        null => null,
        JsonValue value when value.TryGetValue<long>(out var n) && n >= min && n <= max => n,
        var other => throw new CniException(CniException.UnsupportedField,
            $"unsupported value in network configuration: {key} = {other?.ToJsonString()} (a number in {min.ToString(CultureInfo.InvariantCulture)}..{max.ToString(CultureInfo.InvariantCulture)})"),
    };
}
