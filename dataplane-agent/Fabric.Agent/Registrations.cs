using Fabric.Registration;
using Fabric.Repository;

namespace Fabric.Agent;

/// <summary>What became of one vNIC of a registered VM.</summary>
/// <param name="Port">The switch port id (registration id/index).</param>
/// <param name="State">attached, pending (waiting for its netdev) or not-switched.</param>
/// <param name="Detail">Why it is pending or not switched.</param>
public sealed record InterfaceState(string Port, string State, string Detail);

/// <summary>
/// VMs and containers registered by hooks (libvirt, CNI). Each vNIC Fabric can switch — a tap (libvirt type
/// 'ethernet') or a veth, with a MAC and a device — becomes a switch port as soon as its netdev exists; the others are
/// recorded with the reason they are not switched. Registering the same registration again changes nothing; a changed
/// one replaces the old (its ports are detached first). With a state folder, registrations survive agent restarts.
/// Not thread-safe: the agent calls it under its API lock.
/// </summary>
internal sealed class Registrations(Func<VmConfig, string?> attach, Func<string, bool> detach, string? stateDirectory)
{
    private readonly Dictionary<string, (VmRegistration Registration, string Json, InterfaceState[] Interfaces)> _entries = new(StringComparer.Ordinal);

    private string? Folder => stateDirectory is null ? null : Path.Combine(stateDirectory, "vms");

    /// <summary>
    /// Registers; returns "registered", "replaced" or "unchanged". Throws <see cref="InvalidOperationException"/> naming
    /// every problem. With <paramref name="persist"/> false (a registration read back from its own file) nothing is written.
    /// </summary>
    public string Register(VmRegistration registration, bool persist = true)
    {
        var problems = registration.Validate().ToList();
        if (problems.Count > 0)
        {
            throw new InvalidOperationException(string.Join("; ", problems));
        }
        var json = registration.ToJson();
        var outcome = "registered";
        if (_entries.TryGetValue(registration.Id, out var existing))
        {
            if (existing.Json == json)
            {
                AttachPending();
                return "unchanged";
            }
            Release(existing.Interfaces);
            outcome = "replaced";
        }
        var interfaces = registration.Interfaces.Select((nic, i) => Plan(registration.Id, i, nic)).ToArray();
        _entries[registration.Id] = (registration, json, interfaces);
        if (persist && Folder is { } folder)
        {
            AtomicFile.Write(Path.Combine(folder, FileName(registration.Id)), System.Text.Encoding.UTF8.GetBytes(json));
        }
        AttachPending();
        return outcome;
    }

    /// <summary>Removes a registration and its ports; false when it was not registered (deregistering twice is fine).</summary>
    public bool Deregister(string id)
    {
        if (Folder is { } folder && Directory.Exists(folder))
        {
            File.Delete(Path.Combine(folder, FileName(id)));
        }
        if (!_entries.Remove(id, out var entry))
        {
            return false;
        }
        Release(entry.Interfaces);
        return true;
    }

    /// <summary>Attaches every pending vNIC whose netdev now exists.</summary>
    /// <returns>How many were attached.</returns>
    public int AttachPending()
    {
        var attached = 0;
        foreach (var (registration, _, interfaces) in _entries.Values)
        {
            for (var i = 0; i < interfaces.Length; i++)
            {
                if (interfaces[i].State != "pending")
                {
                    continue;
                }
                var nic = registration.Interfaces[i];
                var config = new VmConfig(interfaces[i].Port, nic.Device!, nic.Vni ?? registration.Policy.Vni, nic.Mac!, nic.IPv4, nic.IPv6,
                    Confidential: registration.Policy.Security == "confidential");
                var error = attach(config);
                interfaces[i] = error is null ? interfaces[i] with { State = "attached", Detail = $"{nic.Device} in vni {config.Vni}" } : interfaces[i] with { Detail = error };
                attached += error is null ? 1 : 0;
            }
        }
        return attached;
    }

    /// <summary>Registration files that could not be read at start: each set aside (renamed), with why.</summary>
    public List<(string File, string SetAside, string Reason)> Unreadable { get; } = [];

    /// <summary>
    /// Registrations persisted by an earlier run of the agent. One that cannot be read (damaged, truncated, or no longer
    /// valid) does not stop the agent: it is renamed to <c>*.json.unreadable</c> (kept for the operator, not read again)
    /// and reported in <see cref="Unreadable"/>; the others are registered.
    /// </summary>
    public List<(string File, string SetAside, string Reason)> Load()
    {
        var unreadable = new List<(string, string, string)>();
        if (Folder is not { } folder || !Directory.Exists(folder))
        {
            return unreadable;
        }
        foreach (var file in Directory.EnumerateFiles(folder, "*.json").Order(StringComparer.Ordinal))
        {
            VmRegistration registration;
            try
            {
                registration = AgentConfig.Parse<VmRegistration>(File.ReadAllText(file));
                // JSON that parses may still lack what every registration has (the serializer leaves missing members null).
                if (registration.Id is null || registration.Policy is null || registration.Interfaces is null || registration.Interfaces.Any(i => i is null))
                {
                    throw new FormatException("the registration has no id, policy or interfaces");
                }
                var problems = registration.Validate().ToList();
                if (problems.Count > 0)
                {
                    throw new FormatException(string.Join("; ", problems));
                }
            }
            catch (Exception e) when (e is FormatException or System.Text.Json.JsonException or IOException or UnauthorizedAccessException or ArgumentException)
            {
                var aside = file + ".unreadable";
                try
                {
                    File.Move(file, aside, overwrite: true);
                }
                catch (Exception move) when (move is IOException or UnauthorizedAccessException)
                {
                    aside = $"(not moved: {move.Message})";
                }
                unreadable.Add((file, aside, e.Message));
                continue;
            }
            // Read back, not written again: a disk that cannot be written must not cost a registration that reads.
            Register(registration, persist: false);
        }
        Unreadable.AddRange(unreadable);
        return unreadable;
    }

    /// <summary>Each registration with the switch ports of its attached vNICs.</summary>
    public List<(VmRegistration Registration, string[] Ports)> Snapshot() =>
        [.. _entries.Values.Select(e => (e.Registration, e.Interfaces.Where(i => i.State == "attached").Select(i => i.Port).ToArray()))];

    public object Status() => _entries.Values.OrderBy(e => e.Registration.Name, StringComparer.Ordinal).Select(e => new
    {
        e.Registration.Id,
        e.Registration.Name,
        e.Registration.Origin,
        e.Registration.Policy,
        e.Registration.PolicySource,
        Interfaces = e.Registration.Interfaces.Zip(e.Interfaces, (nic, state) => new { nic.Type, nic.Mac, nic.Device, nic.PciAddress, nic.VhostUserSocket, state.Port, state.State, state.Detail }),
    }).ToList();

    private static InterfaceState Plan(string id, int index, VmInterface nic)
    {
        var port = $"{id}/{index}";
        string? reason = nic.Type switch
        {
            "hostdev" => $"SR-IOV VF {nic.PciAddress ?? "(no PCI address)"} is passed through to the VM: its traffic bypasses the host switch (configure the VF with fabric-hal vf)",
            "vhostuser" => $"vhost-user socket {nic.VhostUserSocket}: this agent has no vhost-user backend",
            "ethernet" or "veth" when nic.Mac is null => "no MAC address",
            "ethernet" or "veth" when nic.Device is null => "no target dev yet (libvirt names the tap when the VM starts; the 'started' call brings it)",
            "ethernet" or "veth" => null,
            var other => $"type '{other}'{(nic.Source is null ? "" : $" (source {nic.Source})")} is connected by libvirt itself; Fabric switches type='ethernet' interfaces (a tap)",
        };
        return reason is null ? new InterfaceState(port, "pending", $"waiting for {nic.Device}") : new InterfaceState(port, "not-switched", reason);
    }

    private void Release(InterfaceState[] interfaces)
    {
        foreach (var state in interfaces.Where(s => s.State == "attached"))
        {
            detach(state.Port);
        }
    }

    // Registration ids are UUIDs or CNI container ids (alphanumerics, '_', '.', '-'); keep the file name safe anyway.
    private static string FileName(string id) => string.Concat(id.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_')) + ".json";
}
