using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;

namespace Fabric.Registration;

/// <summary>
/// A VM's Fabric policy as a hypervisor hook or CNI plugin hands it over (the control plane validates it again against
/// the published stacks). Workload: general | latency | bulk. Security: standard | confidential (confidential requires an
/// encrypting stack). Family: the underlay family, ipv4 | ipv6. Allow/deny/pin name stack ids.
/// </summary>
public sealed record VmPolicy(string Workload = "general", string Security = "standard", string Family = "ipv4",
    string[]? Allow = null, string[]? Deny = null, string? Pin = null, uint Vni = VmPolicy.DefaultVni)
{
    /// <summary>The virtual network of a VM whose metadata names none.</summary>
    public const uint DefaultVni = 1;

    public static readonly string[] Workloads = ["general", "latency", "bulk"];
    public static readonly string[] SecurityLevels = ["standard", "confidential"];
    public static readonly string[] Families = ["ipv4", "ipv6"];

    /// <summary>Every problem, each naming its field under <paramref name="prefix"/>; empty when valid.</summary>
    public IEnumerable<string> Validate(string prefix)
    {
        if (!Workloads.Contains(Workload))
        {
            yield return $"{prefix}.workload: '{Workload}' is not one of {string.Join(", ", Workloads)}";
        }
        if (!SecurityLevels.Contains(Security))
        {
            yield return $"{prefix}.security: '{Security}' is not one of {string.Join(", ", SecurityLevels)}";
        }
        if (!Families.Contains(Family))
        {
            yield return $"{prefix}.family: '{Family}' is not one of {string.Join(", ", Families)}";
        }
        foreach (var (field, ids) in new[] { ("allow", Allow ?? []), ("deny", Deny ?? []), ("pin", Pin is null ? [] : new[] { Pin }) })
        {
            foreach (var id in ids.Where(id => !StackId.IsValid(id)))
            {
                yield return $"{prefix}.{field}: '{id}' is not a stack id (lower-case letters, digits and dashes, starting with a letter)";
            }
        }
        foreach (var id in (Allow ?? []).Intersect(Deny ?? [], StringComparer.Ordinal))
        {
            yield return $"{prefix}.deny: '{id}' is also allowed (contradictory)";
        }
        if (Pin is not null && (Deny ?? []).Contains(Pin))
        {
            yield return $"{prefix}.pin: '{Pin}' is denied (contradictory)";
        }
        if (Pin is not null && Allow is { Length: > 0 } && !Allow.Contains(Pin))
        {
            yield return $"{prefix}.pin: '{Pin}' is not in allow ({string.Join(", ", Allow)})";
        }
        if (Vni is 0 or > 0xFF_FFFF)
        {
            yield return $"{prefix}.vni: {Vni} is outside 1..16777215";
        }
    }
}

/// <summary>Stack ids as the repository names them.</summary>
public static partial class StackId
{
    [GeneratedRegex("^[a-z][a-z0-9-]{0,62}$")]
    private static partial Regex Pattern();

    public static bool IsValid(string id) => Pattern().IsMatch(id);
}

/// <summary>
/// One vNIC of a registered VM. Type is libvirt's interface type (ethernet, network, bridge, hostdev, vhostuser, …) or
/// "veth" for a container; Device the host-side netdev (libvirt's target dev) when there is one.
/// </summary>
public sealed record VmInterface(string Type, string? Mac, string? Device = null, string? PciAddress = null, string? VhostUserSocket = null,
    string? Source = null, uint? Vni = null, string[]? IPv4 = null, string[]? IPv6 = null);

/// <summary>
/// A VM (or container) as a hook registers it with the local agent: its id (libvirt UUID or CNI container id), name, vNICs
/// and policy. PolicySource says whether the policy came from the VM's metadata or is the default.
/// </summary>
public sealed record VmRegistration(string Id, string Name, VmInterface[] Interfaces, VmPolicy Policy, string PolicySource, string Origin)
{
    /// <summary>Every problem, each naming its field; empty when valid.</summary>
    public IEnumerable<string> Validate()
    {
        if (string.IsNullOrWhiteSpace(Id))
        {
            yield return "registration.id: required";
        }
        foreach (var problem in Policy.Validate("registration.policy"))
        {
            yield return problem;
        }
        var macs = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        for (var i = 0; i < Interfaces.Length; i++)
        {
            var mac = Interfaces[i].Mac;
            if (mac is not null && !Macs.IsUnicast(mac))
            {
                yield return $"registration.interfaces[{i}].mac: '{mac}' is not a unicast MAC address";
            }
            // Only among switched vNICs: a failover pair (libvirt <teaming>) legitimately shares one MAC between a virtio NIC
            // and a passed-through VF.
            else if (mac is not null && Interfaces[i].Type is "ethernet" or "veth" && !macs.Add(mac))
            {
                yield return $"registration.interfaces[{i}].mac: '{mac}' is used by another switched interface of this VM";
            }
            if (Interfaces[i].Vni is 0 or > 0xFF_FFFF)
            {
                yield return $"registration.interfaces[{i}].vni: {Interfaces[i].Vni} is outside 1..16777215";
            }
        }
    }

    /// <summary>The canonical JSON form (camelCase, nulls left out): equal registrations have equal text.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, RegistrationJson.Default.VmRegistration);
}

/// <summary>A request to the agent's local API as hooks send it (one JSON line).</summary>
/// <param name="Op">register-vm or deregister-vm.</param>
/// <param name="Registration">For register-vm.</param>
/// <param name="Id">For deregister-vm: the registration id.</param>
public sealed record RegistrationRequest(string Op, VmRegistration? Registration = null, string? Id = null)
{
    public string ToJson() => JsonSerializer.Serialize(this, RegistrationJson.Default.RegistrationRequest);
}

/// <summary>Source-generated JSON (hooks run once per call: no reflection warm-up on their path).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(VmRegistration))]
[JsonSerializable(typeof(RegistrationRequest))]
public sealed partial class RegistrationJson : JsonSerializerContext;

/// <summary>MAC address text checks (xx:xx:xx:xx:xx:xx).</summary>
public static class Macs
{
    public static bool IsUnicast(string text)
    {
        var parts = text.Split(':');
        return parts.Length == 6 && parts.All(p => p.Length == 2 && p.All(Uri.IsHexDigit))
            && (Convert.ToByte(parts[0], 16) & 1) == 0;
    }
}

/// <summary>Input that cannot be registered; the message names what is wrong.</summary>
public sealed class RegistrationException(string message) : Exception(message);
