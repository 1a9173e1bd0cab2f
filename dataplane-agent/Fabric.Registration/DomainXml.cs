using System.Globalization;
using System.Xml;
using System.Xml.Linq;

namespace Fabric.Registration;

/// <summary>
/// Reads a libvirt domain XML (as the qemu hook receives it on stdin, or wrapped in &lt;domstatus&gt;) into a
/// <see cref="VmRegistration"/>: the UUID and name, every &lt;interface&gt; (type, MAC, target dev, SR-IOV VF PCI address,
/// vhost-user socket) and the Fabric policy from &lt;metadata&gt; in the <see cref="Namespace"/> namespace (the default
/// policy when absent). Refuses what libvirt itself refuses for these interfaces, malformed or truncated XML and a
/// malformed policy, with a message that names the element and the problem. DTDs are never processed.
/// </summary>
/// <example>
/// <code>
/// &lt;metadata&gt;
///   &lt;fabric:vm xmlns:fabric="urn:fabric:libvirt:1"&gt;
///     &lt;fabric:policy workload="latency" security="standard" family="ipv4" allow="fec,arq-lowlat,std-ipv4" vni="42"/&gt;
///     &lt;fabric:interface mac="52:54:00:ea:35:6f" ipv4="10.42.0.5" vni="43"/&gt;
///   &lt;/fabric:vm&gt;
/// &lt;/metadata&gt;
/// </code>
/// </example>
public static class DomainXml
{
    /// <summary>The XML namespace of Fabric's domain metadata.</summary>
    public const string Namespace = "urn:fabric:libvirt:1";

    private static readonly XNamespace Fabric = Namespace;

    public static VmRegistration Parse(string xml)
    {
        XDocument document;
        try
        {
            using var reader = XmlReader.Create(new StringReader(xml), new XmlReaderSettings { DtdProcessing = DtdProcessing.Prohibit, XmlResolver = null });
            document = XDocument.Load(reader, LoadOptions.SetLineInfo);
        }
        catch (XmlException e)
        {
            throw new RegistrationException($"domain XML is malformed or truncated: {e.Message}");
        }
        var domain = document.Root switch
        {
            { Name.LocalName: "domain" } root => root,
            { Name.LocalName: "domstatus" } status => status.Element("domain") ?? throw new RegistrationException("<domstatus> holds no <domain>"),
            var other => throw new RegistrationException($"the root element is <{other?.Name.LocalName}>, not <domain>"),
        };
        var uuidText = domain.Element("uuid")?.Value.Trim() ?? throw new RegistrationException("<domain> has no <uuid>");
        if (!Guid.TryParse(uuidText, out var uuid))
        {
            throw new RegistrationException($"<uuid> '{uuidText}' is not a UUID");
        }
        var name = domain.Element("name")?.Value.Trim();
        if (string.IsNullOrEmpty(name))
        {
            throw new RegistrationException("<domain> has no <name>");
        }
        var interfaces = (domain.Element("devices")?.Elements("interface") ?? []).Select(Interface).ToList();
        var (policy, source) = Policy(domain, interfaces);
        var registration = new VmRegistration(uuid.ToString("D"), name, [.. interfaces], policy, source, "libvirt");
        var problems = registration.Validate().ToList();
        return problems.Count == 0 ? registration : throw new RegistrationException(string.Join("; ", problems));
    }

    private static VmInterface Interface(XElement element, int index)
    {
        var type = element.Attribute("type")?.Value ?? throw new RegistrationException($"<interface> #{index + 1} has no type");
        var mac = element.Element("mac")?.Attribute("address")?.Value.ToLowerInvariant();
        var label = $"interface {mac ?? $"#{index + 1}"}";
        // The same configurations libvirt refuses (tests/qemuxml2argvdata/*-fail.err): a Fabric registration must never
        // accept a VM its hypervisor will not run.
        if (element.Element("backend")?.Attribute("tap") is not null && type is "hostdev" or "vhostuser")
        {
            throw new RegistrationException($"{label}: custom tap device path is not supported for network interfaces of type {type}");
        }
        foreach (var queue in new[] { "rx_queue_size", "tx_queue_size" })
        {
            if (element.Element("driver")?.Attribute(queue)?.Value is { } text
                && (!uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var size) || size == 0 || (size & (size - 1)) != 0))
            {
                throw new RegistrationException($"{label}: {queue} has to be a power of two (is '{text}')");
            }
        }
        if (mac is not null && !Macs.IsUnicast(mac))
        {
            throw new RegistrationException($"{label}: '{mac}' is not a unicast MAC address");
        }
        var source = element.Element("source");
        string? pci = null;
        if (type == "hostdev" && source?.Element("address") is { } address)
        {
            if (address.Attribute("type")?.Value is { } addressType and not "pci")
            {
                throw new RegistrationException($"{label}: hostdev source address type '{addressType}' is not pci");
            }
            pci = string.Create(CultureInfo.InvariantCulture,
                $"{Hex(address, "domain", 4, label)}:{Hex(address, "bus", 2, label)}:{Hex(address, "slot", 2, label)}.{Hex(address, "function", 1, label)}");
        }
        return new VmInterface(type, mac,
            Device: element.Element("target")?.Attribute("dev")?.Value,
            PciAddress: pci,
            VhostUserSocket: type == "vhostuser" ? source?.Attribute("path")?.Value : null,
            Source: source?.Attribute("network")?.Value ?? source?.Attribute("bridge")?.Value ?? source?.Attribute("dev")?.Value);
    }

    private static string Hex(XElement address, string attribute, int digits, string label)
    {
        var text = address.Attribute(attribute)?.Value ?? (attribute == "domain" ? "0x0" : throw new RegistrationException($"{label}: PCI address has no {attribute}"));
        var digitsText = text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? text[2..] : text;
        return uint.TryParse(digitsText, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var value) && value < (1u << (4 * digits))
            ? value.ToString("x" + digits, CultureInfo.InvariantCulture)
            : throw new RegistrationException($"{label}: PCI {attribute} '{text}' is not a {digits}-digit hex number");
    }

    private static (VmPolicy Policy, string Source) Policy(XElement domain, List<VmInterface> interfaces)
    {
        var blocks = domain.Element("metadata")?.Elements(Fabric + "vm").ToList() ?? [];
        if (blocks.Count == 0)
        {
            return (new VmPolicy(), "default");
        }
        if (blocks.Count > 1)
        {
            throw new RegistrationException($"<metadata> holds {blocks.Count} <vm> elements in {Namespace}; one is allowed");
        }
        var policyElement = blocks[0].Elements(Fabric + "policy").ToList() switch
        {
            [] => null,
            [var one] => one,
            var many => throw new RegistrationException($"<fabric:vm> holds {many.Count} <policy> elements; one is allowed"),
        };
        var policy = new VmPolicy();
        if (policyElement is not null)
        {
            Known(policyElement, "policy", "workload", "security", "family", "allow", "deny", "pin", "vni");
            policy = new VmPolicy(
                policyElement.Attribute("workload")?.Value ?? policy.Workload,
                policyElement.Attribute("security")?.Value ?? policy.Security,
                policyElement.Attribute("family")?.Value ?? policy.Family,
                List(policyElement.Attribute("allow")),
                List(policyElement.Attribute("deny")),
                policyElement.Attribute("pin")?.Value,
                policyElement.Attribute("vni") is { } vni ? Vni(vni, "policy") : VmPolicy.DefaultVni);
        }
        foreach (var element in blocks[0].Elements(Fabric + "interface"))
        {
            Known(element, "interface", "mac", "vni", "ipv4", "ipv6");
            var mac = element.Attribute("mac")?.Value.ToLowerInvariant() ?? throw new RegistrationException("<fabric:interface> has no mac");
            var index = interfaces.FindIndex(i => i.Mac == mac);
            if (index < 0)
            {
                throw new RegistrationException($"<fabric:interface mac='{mac}'> names no interface of this domain");
            }
            interfaces[index] = interfaces[index] with
            {
                Vni = element.Attribute("vni") is { } vni ? Vni(vni, "interface") : null,
                IPv4 = List(element.Attribute("ipv4")),
                IPv6 = List(element.Attribute("ipv6")),
            };
        }
        var unknown = blocks[0].Elements().FirstOrDefault(e => e.Name != Fabric + "policy" && e.Name != Fabric + "interface");
        return unknown is null ? (policy, "metadata") : throw new RegistrationException($"<fabric:vm> holds an unknown element <{unknown.Name.LocalName}> (policy, interface)");
    }

    private static void Known(XElement element, string name, params string[] attributes)
    {
        if (element.Attributes().FirstOrDefault(a => !a.IsNamespaceDeclaration && !attributes.Contains(a.Name.LocalName)) is { } unknown)
        {
            throw new RegistrationException($"<fabric:{name}> has an unknown attribute '{unknown.Name.LocalName}' ({string.Join(", ", attributes)})");
        }
    }

    private static uint Vni(XAttribute attribute, string element) =>
        uint.TryParse(attribute.Value, NumberStyles.None, CultureInfo.InvariantCulture, out var vni) ? vni
        : throw new RegistrationException($"<fabric:{element}> vni '{attribute.Value}' is not a number");

    private static string[]? List(XAttribute? attribute) =>
        attribute?.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
