using System.Text.RegularExpressions;
using Fabric.Testing;

namespace Fabric.Registration.Tests;

public partial class DomainXmlTests
{
    private static string Folder => TestData.PathOf("libvirt-domain-xml");

    private static string Read(string name) => File.ReadAllText(Path.Combine(Folder, name));

    public static TheoryData<string> Domains => [.. Directory.EnumerateFiles(TestData.PathOf("libvirt-domain-xml"), "*.xml")
        .Where(f => !File.Exists(Path.ChangeExtension(f, ".err"))).Select(f => Path.GetFileName(f)).Order(StringComparer.Ordinal)];

    public static TheoryData<string> Refused => [.. Directory.EnumerateFiles(TestData.PathOf("libvirt-domain-xml"), "*.err")
        .Select(f => Path.GetFileName(Path.ChangeExtension(f, ".xml"))).Order(StringComparer.Ordinal)!];

    [GeneratedRegex(@"<interface\s+type='(?<type>[a-z-]+)'[^>]*>(?<body>.*?)</interface>", RegexOptions.Singleline)]
    private static partial Regex InterfaceElement();

    [GeneratedRegex(@"<mac\s+address='(?<mac>[0-9A-Fa-f:]+)'")]
    private static partial Regex MacElement();

    [GeneratedRegex(@"<uuid>\s*(?<uuid>[^<]+?)\s*</uuid>")]
    private static partial Regex UuidElement();

    [Theory]
    [MemberData(nameof(Domains))]
    public void EveryDomain_YieldsItsUuidInterfacesAndMacs_AsTheFileHasThem(string file)
    {
        var text = Read(file);
        var registration = DomainXml.Parse(text);
        // Read the file a second, independent way (text patterns) and compare.
        var expected = InterfaceElement().Matches(text).Select(m => (m.Groups["type"].Value, MacElement().Match(m.Groups["body"].Value) is { Success: true } mac ? mac.Groups["mac"].Value.ToLowerInvariant() : null)).ToList();
        Assert.Equal(expected, registration.Interfaces.Select(i => (i.Type, i.Mac)));
        Assert.Equal(Guid.Parse(UuidElement().Match(text).Groups["uuid"].Value), Guid.Parse(registration.Id));
        Assert.Equal("libvirt", registration.Origin);
        Assert.Equal("default", registration.PolicySource);
    }

    [Fact]
    public void InterfaceDetails_TapsVfsAndVhostUserSockets_AreRead()
    {
        var hostdev = DomainXml.Parse(Read("qemuxml2argvdata__net-hostdev.xml")).Interfaces.Single();
        Assert.Equal(("hostdev", "00:11:22:33:44:55", "0000:03:07.1"), (hostdev.Type, hostdev.Mac, hostdev.PciAddress));
        Assert.Equal("2424:21:1c.6", DomainXml.Parse(Read("qemuxml2argvdata__net-hostdev-multidomain.xml")).Interfaces.Single().PciAddress);
        var vhost = DomainXml.Parse(Read("qemuxml2argvdata__net-vhostuser.xml")).Interfaces;
        Assert.Equal(["/tmp/vhost0.sock", "/tmp/vhost1.sock", null], vhost.Select(i => i.VhostUserSocket));
        Assert.Equal("nic02", DomainXml.Parse(Read("qemuxml2argvdata__net-eth-ifname.xml")).Interfaces.Single().Device);
        Assert.Equal("mytap0", DomainXml.Parse(Read("qemuxml2argvdata__net-eth-unmanaged-tap.xml")).Interfaces.Single().Device);
        var live = DomainXml.Parse(Read("qemuhotplugtestdomains__qemuhotplug-console-compat-2-live.xml"));
        Assert.Equal(("network", "default"), (live.Interfaces.Single().Type, live.Interfaces.Single().Source));
        // libvirt's status file wraps the domain; the hook reads the domain inside.
        var status = DomainXml.Parse(Read("qemustatusxml2xmldata__modern-in.xml"));
        Assert.Equal("upstream", status.Name);
        Assert.Equal(["br0", "br1", "br2"], DomainXml.Parse(Read("genericxml2xmlindata__network-interface-mac-check.xml")).Interfaces.Select(i => i.Source));
    }

    [Theory]
    [MemberData(nameof(Refused))]
    public void WhatLibvirtRefuses_IsRefusedWithTheSameReason(string file)
    {
        var reason = File.ReadAllText(Path.Combine(Folder, Path.ChangeExtension(file, ".err"))).Trim();
        // libvirt: "unsupported configuration: interface MAC - reason" or "unsupported configuration: reason".
        reason = reason[(reason.IndexOf(": ", StringComparison.Ordinal) + 2)..];
        var dash = reason.IndexOf(" - ", StringComparison.Ordinal);
        var e = Assert.Throws<RegistrationException>(() => DomainXml.Parse(Read(file)));
        Assert.Contains(dash < 0 ? reason : reason[(dash + 3)..], e.Message, StringComparison.Ordinal);
        if (dash >= 0)
        {
            Assert.StartsWith(reason[..dash], e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void MalformedTruncatedAndForeignXml_IsRefusedNamingTheProblem()
    {
        var text = Read("qemuxml2argvdata__net-eth-ifname.xml");
        foreach (var cut in new[] { text.Length / 2, text.Length - 12, 40 })
        {
            Assert.Contains("malformed or truncated", Assert.Throws<RegistrationException>(() => DomainXml.Parse(text[..cut])).Message, StringComparison.Ordinal);
        }
        Assert.Contains("malformed or truncated", Assert.Throws<RegistrationException>(() => DomainXml.Parse("")).Message, StringComparison.Ordinal);
        Assert.Contains("the root element is <network>", Assert.Throws<RegistrationException>(() => DomainXml.Parse("<network><name>x</name></network>")).Message, StringComparison.Ordinal);
        Assert.Contains("has no <uuid>", Assert.Throws<RegistrationException>(() => DomainXml.Parse("<domain><name>x</name></domain>")).Message, StringComparison.Ordinal);
        Assert.Contains("'nope' is not a UUID", Assert.Throws<RegistrationException>(() => DomainXml.Parse("<domain><name>x</name><uuid>nope</uuid></domain>")).Message, StringComparison.Ordinal);
        // An external entity must never be resolved (the hook runs as root).
        var entity = "<!DOCTYPE domain [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><domain><name>&x;</name><uuid>6f1c1b2e-5d0a-4c4e-9a51-0d9c3f6a2b11</uuid></domain>";
        Assert.Contains("DTD", Assert.Throws<RegistrationException>(() => DomainXml.Parse(entity)).Message, StringComparison.Ordinal);
        var multicast = text.Replace("00:11:22:33:44:55", "01:00:5e:00:00:01", StringComparison.Ordinal);
        Assert.Contains("not a unicast MAC", Assert.Throws<RegistrationException>(() => DomainXml.Parse(multicast)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void FabricMetadata_GivesThePolicy_AndOtherMetadataIsIgnored()
    {
        var example = DomainXml.Parse(File.ReadAllText(Path.Combine(RepositoryRoot.Directory, "deploy", "libvirt", "example-domain.xml")));
        Assert.Equal("metadata", example.PolicySource);
        Assert.Equal(("latency", "standard", "ipv4", 42u), (example.Policy.Workload, example.Policy.Security, example.Policy.Family, example.Policy.Vni));
        Assert.Equal(["fec", "arq-lowlat", "std-ipv4"], example.Policy.Allow!);
        Assert.Equal(["arq-bulk"], example.Policy.Deny!);
        Assert.Equal(["10.42.0.5"], example.Interfaces[0].IPv4!);
        Assert.Equal(("ethernet", "fab-web1"), (example.Interfaces[0].Type, example.Interfaces[0].Device));
        Assert.Equal("0000:3b:02.3", example.Interfaces[1].PciAddress);
        Assert.Equal("default", DomainXml.Parse(Read("qemuxml2argvdata__metadata-duplicate.xml")).PolicySource);
    }

    [Theory]
    [InlineData("<fabric:policy workload='gaming'/>", "policy.workload: 'gaming' is not one of general, latency, bulk")]
    [InlineData("<fabric:policy security='secret'/>", "policy.security: 'secret' is not one of standard, confidential")]
    [InlineData("<fabric:policy allow='fec' deny='fec'/>", "policy.deny: 'fec' is also allowed (contradictory)")]
    [InlineData("<fabric:policy allow='fec' pin='secure'/>", "policy.pin: 'secure' is not in allow (fec)")]
    [InlineData("<fabric:policy deny='secure' pin='secure'/>", "policy.pin: 'secure' is denied (contradictory)")]
    [InlineData("<fabric:policy allow='Fec!'/>", "policy.allow: 'Fec!' is not a stack id")]
    [InlineData("<fabric:policy vni='0'/>", "policy.vni: 0 is outside 1..16777215")]
    [InlineData("<fabric:policy vni='x'/>", "<fabric:policy> vni 'x' is not a number")]
    [InlineData("<fabric:policy colour='red'/>", "<fabric:policy> has an unknown attribute 'colour'")]
    [InlineData("<fabric:policy/><fabric:policy/>", "holds 2 <policy> elements")]
    [InlineData("<fabric:interface mac='52:54:00:00:00:99'/>", "<fabric:interface mac='52:54:00:00:00:99'> names no interface")]
    [InlineData("<fabric:route/>", "unknown element <route>")]
    public void ABadPolicy_IsRefusedNamingTheField(string inner, string expected)
    {
        var xml = $"""
            <domain type='kvm'><name>vm</name><uuid>6f1c1b2e-5d0a-4c4e-9a51-0d9c3f6a2b11</uuid>
              <metadata><fabric:vm xmlns:fabric="{DomainXml.Namespace}">{inner}</fabric:vm></metadata>
              <devices><interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='t0'/></interface></devices>
            </domain>
            """;
        Assert.Contains(expected, Assert.Throws<RegistrationException>(() => DomainXml.Parse(xml)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TwoFabricBlocks_AreRefused()
    {
        var xml = $"""
            <domain><name>vm</name><uuid>6f1c1b2e-5d0a-4c4e-9a51-0d9c3f6a2b11</uuid><metadata>
              <a:vm xmlns:a="{DomainXml.Namespace}"/><b:vm xmlns:b="{DomainXml.Namespace}"/></metadata></domain>
            """;
        Assert.Contains("holds 2 <vm> elements", Assert.Throws<RegistrationException>(() => DomainXml.Parse(xml)).Message, StringComparison.Ordinal);
    }
}
