using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Fabric.Programs;
using Fabric.Registration;

namespace Fabric.Cni;

/// <summary>The CNI_* variables of one invocation.</summary>
public sealed record CniEnvironment(string? Command, string? ContainerId, string? Netns, string? IfName, string? Args, string? Path)
{
    public static CniEnvironment Read(Func<string, string?> get) =>
        new(get("CNI_COMMAND"), get("CNI_CONTAINERID"), get("CNI_NETNS"), get("CNI_IFNAME"), get("CNI_ARGS"), get("CNI_PATH"));
}

/// <summary>
/// ADD, DEL, CHECK, STATUS, GC and VERSION (CNI spec 1.1.0). ADD creates a veth pair — the container end named
/// CNI_IFNAME in CNI_NETNS with the MAC, MTU and IPAM addresses, the host end "fab" + a digest of (container id, ifname) —
/// registers the host end with the local agent (which switches it in the network's vni), and remembers the attachment in
/// dataDir for CHECK, DEL and GC. Anything ADD did is undone when a later step fails. DEL is best-effort and repeatable.
/// </summary>
public sealed partial class Plugin(CniEnvironment env)
{
    private static readonly TimeSpan AgentTimeout = TimeSpan.FromSeconds(5);

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    private static partial Regex ContainerIdPattern();

    /// <summary>Runs the command; returns what to print on stdout (null for nothing). Throws <see cref="CniException"/>.</summary>
    public string? Run(string stdin)
    {
        if (env.Command == "VERSION")
        {
            return Version(stdin);
        }
        var config = NetworkConfig.Parse(stdin);
        return env.Command switch
        {
            "ADD" => Add(config),
            "DEL" => Del(config, Require("CNI_CONTAINERID", env.ContainerId), Require("CNI_IFNAME", env.IfName)),
            "CHECK" => Check(config),
            "STATUS" => Status(config),
            "GC" => Gc(config),
            null or "" => throw new CniException(CniException.InvalidEnvironment, "CNI_COMMAND is not set"),
            var other => throw new CniException(CniException.InvalidEnvironment, $"CNI_COMMAND '{other}' is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
        };
    }

    private static string Version(string stdin)
    {
        var requested = "1.1.0";
        if (!string.IsNullOrWhiteSpace(stdin))
        {
            try
            {
                requested = JsonNode.Parse(stdin)?["cniVersion"]?.GetValue<string>() ?? requested;
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            {
                throw new CniException(CniException.DecodeFailure, "failed to decode the VERSION request", e.Message);
            }
        }
        return new JsonObject { ["cniVersion"] = requested, ["supportedVersions"] = new JsonArray([.. NetworkConfig.SupportedVersions.Select(v => (JsonNode)v)]) }.ToJsonString();
    }

    private string Add(NetworkConfig config)
    {
        var containerId = Require("CNI_CONTAINERID", env.ContainerId);
        var netns = Require("CNI_NETNS", env.Netns);
        var ifName = Require("CNI_IFNAME", env.IfName);
        if (!File.Exists(netns))
        {
            throw new CniException(CniException.InvalidEnvironment, $"CNI_NETNS '{netns}' does not exist");
        }
        if (Shell.Try("nsenter", $"--net={netns}", "ip", "link", "show", "dev", ifName).Code == 0)
        {
            throw new CniException(CniException.InterfaceExists, $"interface {ifName} already exists in {netns}");
        }
        var host = HostDevice(containerId, ifName);
        // A host end left by an ADD that died half-way: nothing else can own this name.
        Shell.Try("ip", "link", "del", "dev", host);
        var mac = config.RuntimeMac?.ToLowerInvariant() ?? DerivedMac(containerId, ifName);
        if (!Macs.IsUnicast(mac))
        {
            throw new CniException(CniException.UnsupportedField, $"unsupported value in network configuration: runtimeConfig.mac = \"{mac}\" (a unicast MAC)");
        }
        var ipam = config.IpamType is null ? null : Ipam(config, "ADD");
        try
        {
            var ips = (ipam?["ips"] as JsonArray ?? []).OfType<JsonObject>().Select(ip => ip["address"]?.GetValue<string>() ?? "").ToList();
            CreateLink(config, netns, ifName, host, mac, ipam);
            var registration = new VmRegistration($"{containerId}/{ifName}", PodName(containerId),
                [new VmInterface("veth", mac, host, Source: config.Name,
                    IPv4: [.. ips.Where(a => !a.Contains(':', StringComparison.Ordinal)).Select(a => a.Split('/')[0])],
                    IPv6: [.. ips.Where(a => a.Contains(':', StringComparison.Ordinal)).Select(a => a.Split('/')[0])])],
                config.Policy, "cni config", "cni");
            Register(config, registration);
            var result = Result(config, netns, ifName, host, mac, ipam);
            Attachment.Save(config.DataDirectory, new Attachment(containerId, ifName, netns, config.Name, host, mac, result));
            return result;
        }
        catch
        {
            Shell.Try("ip", "link", "del", "dev", host);
            if (config.IpamType is not null)
            {
                TryIpamDel(config);
            }
            throw;
        }
    }

    private string? Del(NetworkConfig config, string containerId, string ifName)
    {
        var errors = new List<string>();
        var request = new RegistrationRequest("deregister-vm", Id: $"{containerId}/{ifName}").ToJson();
        try
        {
            var answer = JsonNode.Parse(AgentClient.Send(config.AgentSocket, request, AgentTimeout));
            if (answer?["ok"]?.GetValue<bool>() != true)
            {
                errors.Add($"the agent refused to deregister: {answer?["error"]}");
            }
        }
        catch (AgentUnavailableException)
        {
            // The agent applies it when it is back (the same durable queue the libvirt hook uses).
            new HookSpool(Path.Combine(config.StateDirectory, "hook-spool")).Enqueue(request);
        }
        // Deleting the host end removes the container end too; a gone device or namespace is not an error for DEL.
        Shell.Try("ip", "link", "del", "dev", HostDevice(containerId, ifName));
        if (config.IpamType is not null && TryIpamDel(config, containerId, ifName) is { } ipamError)
        {
            // Without a recorded attachment ADD never finished, and a failed ADD already released its address: the
            // delegate's complaint (often the very configuration error that failed the ADD) must not fail this DEL.
            if (Attachment.Load(config.DataDirectory, containerId, ifName) is not null)
            {
                errors.Add(ipamError);
            }
            else
            {
                Console.Error.WriteLine($"fabric-cni: DEL of an attachment that was never completed; ignored: {ipamError}");
            }
        }
        Attachment.Delete(config.DataDirectory, containerId, ifName);
        return errors.Count == 0 ? null : throw new CniException(CniException.IoFailure, "DEL could not release everything", string.Join("; ", errors));
    }

    private string? Check(NetworkConfig config)
    {
        var containerId = Require("CNI_CONTAINERID", env.ContainerId);
        var netns = Require("CNI_NETNS", env.Netns);
        var ifName = Require("CNI_IFNAME", env.IfName);
        var attachment = Attachment.Load(config.DataDirectory, containerId, ifName)
            ?? throw new CniException(CniException.CheckFailed, $"no attachment of {containerId}/{ifName} is recorded in {config.DataDirectory}");
        if (!File.Exists($"/sys/class/net/{attachment.HostDevice}/address"))
        {
            throw new CniException(CniException.CheckFailed, $"host interface {attachment.HostDevice} is gone");
        }
        var inside = Shell.Try("nsenter", $"--net={netns}", "ip", "-o", "link", "show", "dev", ifName);
        if (inside.Code != 0)
        {
            throw new CniException(CniException.CheckFailed, $"interface {ifName} is gone from {netns}");
        }
        if (!inside.Stdout.Contains(attachment.Mac, StringComparison.OrdinalIgnoreCase))
        {
            throw new CniException(CniException.CheckFailed, $"interface {ifName} in {netns} no longer has MAC {attachment.Mac}");
        }
        var addresses = Shell.Try("nsenter", $"--net={netns}", "ip", "-o", "addr", "show", "dev", ifName).Stdout;
        foreach (var ip in (JsonNode.Parse(attachment.Result)?["ips"] as JsonArray ?? []).OfType<JsonObject>().Where(ip => ip["interface"]?.GetValue<int>() == Index(attachment)))
        {
            var address = ip["address"]!.GetValue<string>();
            if (!addresses.Contains(" " + address + " ", StringComparison.Ordinal))
            {
                throw new CniException(CniException.CheckFailed, $"interface {ifName} in {netns} lost its address {address}");
            }
        }
        var status = AgentStatus(config);
        var registration = (status?["registrations"] as JsonArray ?? []).OfType<JsonObject>().FirstOrDefault(r => r["id"]?.GetValue<string>() == $"{containerId}/{ifName}");
        var state = registration?["interfaces"]?[0]?["state"]?.GetValue<string>();
        return state == "attached" ? null
            : throw new CniException(CniException.CheckFailed, $"the agent has {containerId}/{ifName} {(registration is null ? "not registered" : $"in state {state}: {registration["interfaces"]?[0]?["detail"]}")}");
    }

    private string? Status(NetworkConfig config)
    {
        try
        {
            AgentStatus(config);
            return null;
        }
        catch (CniException e) when (e.Code == CniException.TryAgainLater)
        {
            throw new CniException(CniException.NotAvailable, "the Fabric agent is not available", e.Details);
        }
    }

    private string? Gc(NetworkConfig config)
    {
        var valid = (config.Json["cni.dev/valid-attachments"] as JsonArray ?? [])
            .OfType<JsonObject>().Select(a => ($"{a["containerID"]}", $"{a["ifname"]}")).ToHashSet();
        var errors = new List<string>();
        foreach (var attachment in Attachment.All(config.DataDirectory).Where(a => a.Network == config.Name && !valid.Contains((a.ContainerId, a.IfName))))
        {
            try
            {
                Del(config, attachment.ContainerId, attachment.IfName);
            }
            catch (CniException e)
            {
                // GC collects errors and goes on with the rest.
                errors.Add($"{attachment.ContainerId}/{attachment.IfName}: {e.Message} {e.Details}");
            }
        }
        return errors.Count == 0 ? null : throw new CniException(CniException.IoFailure, "GC could not release every stale attachment", string.Join("; ", errors));
    }

    private void CreateLink(NetworkConfig config, string netns, string ifName, string host, string mac, JsonObject? ipam)
    {
        var temporary = "fabp" + Digest($"{env.ContainerId}/{ifName}")[..11];
        var mtu = config.Mtu.ToString(System.Globalization.CultureInfo.InvariantCulture);
        Shell.Must("ip", "link", "add", "dev", host, "mtu", mtu, "type", "veth", "peer", "name", temporary, "mtu", mtu);
        Shell.Must("ip", "link", "set", "dev", temporary, "netns", netns);
        Shell.Must("nsenter", $"--net={netns}", "ip", "link", "set", "dev", temporary, "name", ifName, "address", mac);
        // The veth keeps its offloads, as a VM's virtio NIC does: the agent's port reads virtio-net headers, finishes
        // checksums and cuts large segments. An agent with vmPortOffloads off reads frames as a NIC sends them — complete
        // checksums, no 64 KiB segments — so for it ("offloads": false) they go off on both ends.
        if (!config.Offloads)
        {
            Shell.Must("nsenter", $"--net={netns}", "ethtool", "-K", ifName, "tx", "off", "tso", "off", "gso", "off", "gro", "off");
            Shell.Must("ethtool", "-K", host, "tx", "off", "tso", "off", "gso", "off", "gro", "off");
        }
        foreach (var ip in ipam?["ips"] as JsonArray ?? [])
        {
            Shell.Must("nsenter", $"--net={netns}", "ip", "addr", "add", ip!["address"]!.GetValue<string>(), "dev", ifName);
        }
        Shell.Must("nsenter", $"--net={netns}", "ip", "link", "set", "dev", ifName, "up");
        Shell.Must("ip", "link", "set", "dev", host, "up");
        foreach (var route in ipam?["routes"] as JsonArray ?? [])
        {
            var dst = route!["dst"]!.GetValue<string>();
            var gateway = route["gw"]?.GetValue<string>() ?? Gateway(ipam!, dst.Contains(':', StringComparison.Ordinal));
            Shell.Must(["nsenter", $"--net={netns}", "ip", "route", "add", dst, .. gateway is null ? Array.Empty<string>() : ["via", gateway], "dev", ifName]);
        }
    }

    private static string? Gateway(JsonObject ipam, bool v6) => (ipam["ips"] as JsonArray ?? []).OfType<JsonObject>()
        .Where(ip => ip["address"]!.GetValue<string>().Contains(':', StringComparison.Ordinal) == v6)
        .Select(ip => ip["gateway"]?.GetValue<string>()).FirstOrDefault(g => g is not null);

    private void Register(NetworkConfig config, VmRegistration registration)
    {
        JsonNode? answer;
        try
        {
            answer = JsonNode.Parse(AgentClient.Send(config.AgentSocket, new RegistrationRequest("register-vm", registration).ToJson(), AgentTimeout));
        }
        catch (AgentUnavailableException e)
        {
            throw new CniException(CniException.TryAgainLater, "the Fabric agent cannot be reached; try again later", e.Message);
        }
        if (answer?["ok"]?.GetValue<bool>() != true)
        {
            throw new CniException(CniException.AgentRefused, "the Fabric agent refused the attachment", answer?["error"]?.ToString() ?? "");
        }
    }

    private static JsonObject? AgentStatus(NetworkConfig config)
    {
        try
        {
            return JsonNode.Parse(AgentClient.Send(config.AgentSocket, new RegistrationRequest("status").ToJson(), AgentTimeout))?["result"] as JsonObject;
        }
        catch (AgentUnavailableException e)
        {
            throw new CniException(CniException.TryAgainLater, "the Fabric agent cannot be reached; try again later", e.Message);
        }
    }

    private string Result(NetworkConfig config, string netns, string ifName, string host, string mac, JsonObject? ipam)
    {
        var result = config.PrevResult?.DeepClone() as JsonObject ?? [];
        result["cniVersion"] = config.CniVersion;
        var interfaces = result["interfaces"] as JsonArray ?? [];
        result["interfaces"] = interfaces;
        var hostMac = File.ReadAllText($"/sys/class/net/{host}/address").Trim();
        interfaces.Add((JsonNode)new JsonObject { ["name"] = host, ["mac"] = hostMac });
        interfaces.Add((JsonNode)new JsonObject { ["name"] = ifName, ["mac"] = mac, ["mtu"] = config.Mtu, ["sandbox"] = netns });
        var index = interfaces.Count - 1;
        var ips = result["ips"] as JsonArray ?? [];
        result["ips"] = ips;
        foreach (var ip in (ipam?["ips"] as JsonArray ?? []).OfType<JsonObject>())
        {
            var copy = (JsonObject)ip.DeepClone();
            copy["interface"] = index;
            if (config.CniVersion.StartsWith("0.", StringComparison.Ordinal))
            {
                // Results before 1.0.0 carry the address family.
                copy["version"] = copy["address"]!.GetValue<string>().Contains(':', StringComparison.Ordinal) ? "6" : "4";
            }
            ips.Add((JsonNode)copy);
        }
        if (ipam?["routes"] is JsonArray routes)
        {
            var all = result["routes"] as JsonArray ?? [];
            result["routes"] = all;
            foreach (var route in routes)
            {
                all.Add(route!.DeepClone());
            }
        }
        if (result["dns"] is null && (ipam?["dns"] ?? config.Json["dns"]) is { } dns)
        {
            result["dns"] = dns.DeepClone();
        }
        return result.ToJsonString();
    }

    private static int Index(Attachment attachment) => (JsonNode.Parse(attachment.Result)?["interfaces"] as JsonArray ?? []).Count - 1;

    /// <summary>Runs the IPAM plugin named by ipam.type from CNI_PATH with this call's environment and the whole config.</summary>
    private JsonObject Ipam(NetworkConfig config, string command, string? containerId = null, string? ifName = null)
    {
        var program = (env.Path ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries).Select(dir => Path.Combine(dir, config.IpamType!)).FirstOrDefault(File.Exists)
            ?? throw new CniException(CniException.InvalidConfig, $"invalid network configuration: ipam plugin '{config.IpamType}' is not in CNI_PATH ({env.Path})");
        var delegateEnvironment = new Dictionary<string, string> { ["CNI_COMMAND"] = command };
        // GC releases attachments other than this call's own: the delegate must hear which one.
        if (containerId is not null && ifName is not null)
        {
            (delegateEnvironment["CNI_CONTAINERID"], delegateEnvironment["CNI_IFNAME"]) = (containerId, ifName);
        }
        var (code, stdout, stderr) = Shell.Try([program], DelegatedConfig(config, program), delegateEnvironment);
        if (code != 0)
        {
            // The delegate's own error, code and all, with its name in front (it may print it on stdout or stderr).
            var error = TryParse(stdout) ?? TryParse(stderr);
            throw new CniException(error?["code"]?.GetValue<int>() ?? CniException.IoFailure, $"ipam {config.IpamType}: {error?["msg"]?.GetValue<string>() ?? stderr.Trim()}", error?["details"]?.GetValue<string>() ?? "");
        }
        return command == "ADD" ? TryParse(stdout) ?? throw new CniException(CniException.DecodeFailure, $"ipam {config.IpamType} returned no result", stdout) : [];
    }

    /// <summary>
    /// The whole configuration for the delegate, at a version it speaks: an IPAM plugin older than this configuration
    /// (Debian 12's host-local stops at 1.0.0) gets the newest version both support — IPAM results are the same shape from
    /// 1.0.0 on, and for older versions the result is normalized when it is copied.
    /// </summary>
    private static string DelegatedConfig(NetworkConfig config, string program)
    {
        var (code, stdout, _) = Shell.Try([program], $$"""{"cniVersion":"{{config.CniVersion}}"}""", new Dictionary<string, string> { ["CNI_COMMAND"] = "VERSION" });
        var supported = code == 0 ? (TryParse(stdout)?["supportedVersions"] as JsonArray ?? []).Select(v => v?.GetValue<string>()).OfType<string>().ToList() : [];
        if (supported.Count == 0 || supported.Contains(config.CniVersion))
        {
            return config.Text;
        }
        var ours = System.Version.Parse(config.CniVersion);
        var best = supported.Where(v => NetworkConfig.SupportedVersions.Contains(v) && System.Version.Parse(v) <= ours).MaxBy(System.Version.Parse)
            ?? throw new CniException(CniException.IncompatibleVersion, $"ipam {config.IpamType} supports none of this plugin's CNI versions up to {config.CniVersion}", string.Join(", ", supported));
        var copy = (JsonObject)config.Json.DeepClone();
        copy["cniVersion"] = best;
        return copy.ToJsonString();
    }

    private string? TryIpamDel(NetworkConfig config, string? containerId = null, string? ifName = null)
    {
        try
        {
            Ipam(config, "DEL", containerId, ifName);
            return null;
        }
        catch (CniException e)
        {
            return $"{e.Message} {e.Details}".Trim();
        }
    }

    private static JsonObject? TryParse(string text)
    {
        try
        {
            return string.IsNullOrWhiteSpace(text) ? null : JsonNode.Parse(text) as JsonObject;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private string Require(string name, string? value)
    {
        var problem = value switch
        {
            null or "" => "is not set",
            _ when name == "CNI_CONTAINERID" && !ContainerIdPattern().IsMatch(value) => $"'{value}' must start with a letter or digit and hold only letters, digits, '_', '.', '-'",
            _ when name == "CNI_IFNAME" && (value.Length > 15 || value is "." or ".." || value.Any(c => c is '/' or ':' || char.IsWhiteSpace(c))) => $"'{value}' is not a valid interface name (1-15 characters, no '/', ':' or spaces)",
            _ => null,
        };
        return problem is null ? value! : throw new CniException(CniException.InvalidEnvironment, $"{name} {problem}");
    }

    private string PodName(string containerId)
    {
        var args = (env.Args ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries).Select(p => p.Split('=', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1], StringComparer.Ordinal);
        return args.TryGetValue("K8S_POD_NAME", out var pod) ? (args.TryGetValue("K8S_POD_NAMESPACE", out var ns) ? $"{ns}/{pod}" : pod) : containerId[..Math.Min(12, containerId.Length)];
    }

    /// <summary>The host end's name: "fab" and 12 hex digits of a digest of (container id, ifname): stable, at most 15 characters.</summary>
    public static string HostDevice(string containerId, string ifName) => "fab" + Digest($"{containerId}/{ifName}")[..12];

    private static string DerivedMac(string containerId, string ifName)
    {
        var d = Convert.FromHexString(Digest($"mac/{containerId}/{ifName}")[..12]);
        d[0] = (byte)((d[0] & 0xFC) | 0x02); // locally administered, unicast
        return string.Join(':', d.Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
    }

    private static string Digest(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
}

/// <summary>What ADD did, kept in dataDir for CHECK, DEL and GC.</summary>
public sealed record Attachment(string ContainerId, string IfName, string Netns, string Network, string HostDevice, string Mac, string Result)
{
    private static string PathOf(string directory, string containerId, string ifName) => Path.Combine(directory, $"{containerId}-{ifName}.json");

    public static void Save(string directory, Attachment attachment)
    {
        Directory.CreateDirectory(directory);
        var path = PathOf(directory, attachment.ContainerId, attachment.IfName);
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(attachment, AttachmentJson.Default.Attachment));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    public static Attachment? Load(string directory, string containerId, string ifName)
    {
        var path = PathOf(directory, containerId, ifName);
        return File.Exists(path) ? JsonSerializer.Deserialize(File.ReadAllText(path), AttachmentJson.Default.Attachment) : null;
    }

    public static IEnumerable<Attachment> All(string directory) => Directory.Exists(directory)
        ? Directory.EnumerateFiles(directory, "*.json").Select(f => JsonSerializer.Deserialize(File.ReadAllText(f), AttachmentJson.Default.Attachment)).OfType<Attachment>().ToList()
        : [];

    public static void Delete(string directory, string containerId, string ifName)
    {
        if (Directory.Exists(directory))
        {
            File.Delete(PathOf(directory, containerId, ifName));
        }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Attachment))]
internal sealed partial class AttachmentJson : System.Text.Json.Serialization.JsonSerializerContext;

/// <summary>Runs ip, nsenter, ethtool and IPAM delegates through the one program runner (no shell).</summary>
internal static class Shell
{
    public static ProgramResult Try(params string[] command) => ProgramRunner.TryRun(command[0], command[1..]);

    public static ProgramResult Try(string[] command, string? stdin, IReadOnlyDictionary<string, string>? environment) =>
        ProgramRunner.TryRun(command[0], command[1..], stdin, environment);

    public static void Must(params string[] command)
    {
        var (code, _, stderr) = Try(command);
        if (code != 0)
        {
            throw new CniException(CniException.LinkFailure, $"'{string.Join(' ', command)}' failed (exit {code})", stderr.Trim());
        }
    }
}
