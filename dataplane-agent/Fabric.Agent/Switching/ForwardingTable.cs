using System.Collections.Frozen;
using System.Collections.Immutable;
using Fabric.Wire;

namespace Fabric.Agent.Switching;

/// <summary>Where a (virtual network, MAC) lives: on a VM port of this host, or behind a remote host.</summary>
/// <param name="Vni">The virtual network.</param>
/// <param name="Mac">The VM's MAC.</param>
/// <param name="LocalVm">The VM id when it is attached here; null for a remote entry.</param>
/// <param name="RemoteHost">The host id when it is remote; null for a local entry.</param>
/// <param name="IPv4">The VM's IPv4 addresses (for ARP answers).</param>
/// <param name="IPv6">The VM's IPv6 addresses (for neighbour advertisements).</param>
/// <param name="Sealed">A remote VM whose policy is confidential: frames to it leave only through a stack that encrypts.</param>
public sealed record Endpoint(uint Vni, MacAddress Mac, string? LocalVm, string? RemoteHost, ImmutableArray<IPv4Address> IPv4, ImmutableArray<IPv6Address> IPv6, bool Sealed = false);

/// <summary>
/// An immutable snapshot of the forwarding state. The switch reads whichever snapshot is current without locks;
/// changes build a new snapshot and publish it at once, so a packet never sees half an update.
/// </summary>
public sealed class ForwardingTable
{
    public static ForwardingTable Empty { get; } = new([]);

    private readonly FrozenDictionary<(uint, ulong), Endpoint> _byMac;
    private readonly FrozenDictionary<(uint, uint), Endpoint> _byIPv4;
    private readonly FrozenDictionary<(uint, IPv6Address), Endpoint> _byIPv6;
    private readonly FrozenDictionary<uint, ImmutableArray<string>> _remoteHostsOfVni;
    private readonly FrozenDictionary<uint, ImmutableArray<string>> _localVmsOfVni;
    private readonly FrozenSet<(uint, string)> _sealedHosts;

    public ForwardingTable(IEnumerable<Endpoint> endpoints)
    {
        Endpoints = [.. endpoints];
        _byMac = Endpoints.ToFrozenDictionary(e => (e.Vni, e.Mac.Value));
        _byIPv4 = Endpoints.SelectMany(e => e.IPv4.Select(a => (Key: (e.Vni, a.Value), e))).ToFrozenDictionary(x => x.Key, x => x.e);
        _byIPv6 = Endpoints.SelectMany(e => e.IPv6.Select(a => (Key: (e.Vni, a), e))).ToFrozenDictionary(x => x.Key, x => x.e);
        _remoteHostsOfVni = Endpoints.Where(e => e.RemoteHost is not null).GroupBy(e => e.Vni)
            .ToFrozenDictionary(g => g.Key, g => g.Select(e => e.RemoteHost!).Distinct().Order(StringComparer.Ordinal).ToImmutableArray());
        _localVmsOfVni = Endpoints.Where(e => e.LocalVm is not null).GroupBy(e => e.Vni)
            .ToFrozenDictionary(g => g.Key, g => g.Select(e => e.LocalVm!).ToImmutableArray());
        _sealedHosts = Endpoints.Where(e => e.Sealed && e.RemoteHost is not null).Select(e => (e.Vni, e.RemoteHost!)).ToFrozenSet();
    }

    /// <summary>An address of <paramref name="candidate"/> that another entry (another MAC) of its virtual network holds, with
    /// that entry; null when none does. The table indexes each address once: such an entry must not be added.</summary>
    public (string Address, Endpoint Holder)? AddressConflict(Endpoint candidate)
    {
        // Its own lists name each address once too (the same address twice would be indexed twice): then the holder is
        // the candidate itself.
        var seen4 = new HashSet<IPv4Address>();
        foreach (var address in candidate.IPv4)
        {
            if (!seen4.Add(address))
            {
                return (address.ToString(), candidate);
            }
            if (FindByIPv4(candidate.Vni, address) is { } holder && holder.Mac != candidate.Mac)
            {
                return (address.ToString(), holder);
            }
        }
        var seen6 = new HashSet<IPv6Address>();
        foreach (var address in candidate.IPv6)
        {
            if (!seen6.Add(address))
            {
                return (address.ToString(), candidate);
            }
            if (FindByIPv6(candidate.Vni, address) is { } holder && holder.Mac != candidate.Mac)
            {
                return (address.ToString(), holder);
            }
        }
        return null;
    }

    /// <summary>Every entry.</summary>
    public ImmutableArray<Endpoint> Endpoints { get; }

    public Endpoint? FindByMac(uint vni, MacAddress mac) => _byMac.GetValueOrDefault((vni, mac.Value));

    public Endpoint? FindByIPv4(uint vni, IPv4Address address) => _byIPv4.GetValueOrDefault((vni, address.Value));

    public Endpoint? FindByIPv6(uint vni, IPv6Address address) => _byIPv6.GetValueOrDefault((vni, address));

    /// <summary>The remote hosts that have VMs in <paramref name="vni"/> (where broadcasts are replicated).</summary>
    public ImmutableArray<string> RemoteHostsOf(uint vni) => _remoteHostsOfVni.GetValueOrDefault(vni, []);

    /// <summary>True when <paramref name="host"/> has a confidential VM in <paramref name="vni"/> (its broadcasts there go encrypted where they can).</summary>
    public bool HasSealedVms(uint vni, string host) => _sealedHosts.Contains((vni, host));

    /// <summary>The local VMs in <paramref name="vni"/>.</summary>
    public ImmutableArray<string> LocalVmsOf(uint vni) => _localVmsOfVni.GetValueOrDefault(vni, []);

    /// <summary>A table with <paramref name="endpoint"/> added or replacing the entry for its (VNI, MAC).</summary>
    public ForwardingTable With(Endpoint endpoint) =>
        new(Endpoints.Where(e => !(e.Vni == endpoint.Vni && e.Mac == endpoint.Mac)).Append(endpoint));

    /// <summary>A table without the entry for (VNI, MAC).</summary>
    public ForwardingTable Without(uint vni, MacAddress mac) => new(Endpoints.Where(e => !(e.Vni == vni && e.Mac == mac)));
}
