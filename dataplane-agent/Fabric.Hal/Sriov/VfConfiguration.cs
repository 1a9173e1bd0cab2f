using System.Collections.Immutable;
using Fabric.Programs;
using System.Globalization;
using Fabric.Hal.Inventory;
using Fabric.Wire;

namespace Fabric.Hal.Sriov;

/// <summary>Desired settings of one VF; null fields are left as they are.</summary>
/// <param name="Index">The VF index on its physical function.</param>
/// <param name="Mac">Administrative MAC (unicast, not zero).</param>
/// <param name="Vlan">VLAN id 0–4094 (0 removes the tag).</param>
/// <param name="VlanQos">802.1p priority 0–7; needs <paramref name="Vlan"/>.</param>
/// <param name="MaxTxRateMbps">Transmit rate cap in Mbit/s; 0 removes it.</param>
/// <param name="MinTxRateMbps">Guaranteed transmit rate in Mbit/s; not above the cap.</param>
/// <param name="Trust">Trusted VFs may change their MAC and enter promiscuous mode.</param>
/// <param name="SpoofCheck">Drop frames whose source MAC is not the VF's.</param>
public sealed record VfSettings(int Index, MacAddress? Mac = null, int? Vlan = null, int? VlanQos = null, int? MaxTxRateMbps = null,
    int? MinTxRateMbps = null, bool? Trust = null, bool? SpoofCheck = null);

/// <summary>A VF configuration request for one physical function: an optional VF count and per-VF settings.</summary>
public sealed record VfRequest(string PhysicalFunction, int? NumVfs, ImmutableArray<VfSettings> Vfs);

/// <summary>One step of a plan: a sysfs write or a command.</summary>
public abstract record VfStep
{
    /// <summary>What the step does, as an operator would type it.</summary>
    public abstract string Describe();
}

/// <summary>Write <see cref="Value"/> to the sysfs file <see cref="Path"/>.</summary>
public sealed record SysfsWrite(string Path, string Value) : VfStep
{
    public override string Describe() => $"echo {Value} > {Path}";
}

/// <summary>Run <see cref="Arguments"/> (argv[0] is the program).</summary>
public sealed record CommandStep(ImmutableArray<string> Arguments) : VfStep
{
    public override string Describe() => string.Join(' ', Arguments);
}

/// <summary>The validated steps that bring a PF to the requested state, in order.</summary>
public sealed record VfPlan(string PhysicalFunction, ImmutableArray<VfStep> Steps);

/// <summary>Why a request was refused (every problem found, each naming its field).</summary>
public sealed class VfRequestException(string physicalFunction, IReadOnlyList<string> problems)
    : Exception($"VF request for '{physicalFunction}' refused: {string.Join("; ", problems)}")
{
    public IReadOnlyList<string> Problems { get; } = problems;
}

/// <summary>Runs the steps of a plan; the Linux implementation writes sysfs and runs <c>ip</c>.</summary>
public interface IVfStepRunner
{
    /// <summary>Runs one step; returns null on success or the failure text.</summary>
    string? Run(VfStep step);
}

/// <summary>
/// Plans and applies SR-IOV VF configuration. <see cref="Plan"/> validates the whole request against the inventory
/// and returns the steps; <see cref="Apply"/> runs them, stopping at the first failure and saying which step failed.
/// Validation and application are separate so a refused request changes nothing.
/// </summary>
public sealed class VfConfigurator(SysfsInventory inventory, IVfStepRunner runner, string sysfsRoot = "/sys")
{
    /// <summary>Validates <paramref name="request"/> and returns the steps; throws <see cref="VfRequestException"/> listing every problem.</summary>
    public VfPlan Plan(VfRequest request)
    {
        var problems = new List<string>();
        var pf = inventory.TryRead(request.PhysicalFunction);
        if (pf is null)
        {
            throw new VfRequestException(request.PhysicalFunction, ["no such network device"]);
        }
        if (pf.Sriov is null)
        {
            throw new VfRequestException(request.PhysicalFunction, [$"is not an SR-IOV physical function (kind {pf.Kind}, no sriov_totalvfs)"]);
        }
        var numVfs = request.NumVfs ?? pf.Sriov.NumVfs;
        if (request.NumVfs is { } wanted && (wanted < 0 || wanted > pf.Sriov.TotalVfs))
        {
            problems.Add($"numVfs {wanted} is outside 0..{pf.Sriov.TotalVfs} (sriov_totalvfs)");
        }
        var seen = new HashSet<int>();
        foreach (var vf in request.Vfs)
        {
            var at = $"vf {vf.Index}";
            if (!seen.Add(vf.Index))
            {
                problems.Add($"{at}: listed twice");
            }
            if (vf.Index < 0 || vf.Index >= numVfs)
            {
                problems.Add($"{at}: index is outside 0..{numVfs - 1} ({numVfs} VFs enabled)");
            }
            if (vf.Mac is { } mac && (mac.IsMulticast || mac.Value == 0))
            {
                problems.Add($"{at}: mac {mac} is not a unicast address");
            }
            if (vf.Vlan is < 0 or > 4094)
            {
                problems.Add($"{at}: vlan {vf.Vlan} is outside 0..4094");
            }
            if (vf.VlanQos is { } qos && (qos is < 0 or > 7 || vf.Vlan is null))
            {
                problems.Add($"{at}: qos {qos} needs a vlan and must be 0..7");
            }
            if (vf.MaxTxRateMbps is < 0 || vf.MinTxRateMbps is < 0)
            {
                problems.Add($"{at}: rates must not be negative");
            }
            if (vf.MinTxRateMbps is { } min && vf.MaxTxRateMbps is { } max && max > 0 && min > max)
            {
                problems.Add($"{at}: min_tx_rate {min} is above max_tx_rate {max}");
            }
            if (pf.SpeedMbps is { } speed && vf.MaxTxRateMbps > speed)
            {
                problems.Add($"{at}: max_tx_rate {vf.MaxTxRateMbps} is above the link speed {speed} Mbit/s");
            }
        }
        if (problems.Count > 0)
        {
            throw new VfRequestException(request.PhysicalFunction, problems);
        }

        var steps = ImmutableArray.CreateBuilder<VfStep>();
        if (request.NumVfs is { } count && count != pf.Sriov.NumVfs)
        {
            var path = Path.Combine(sysfsRoot, "class", "net", pf.Name, "device", "sriov_numvfs");
            // The kernel refuses to change a non-zero VF count to another non-zero count (EBUSY): go through zero.
            if (pf.Sriov.NumVfs != 0 && count != 0)
            {
                steps.Add(new SysfsWrite(path, "0"));
            }
            steps.Add(new SysfsWrite(path, count.ToString(CultureInfo.InvariantCulture)));
        }
        foreach (var vf in request.Vfs.OrderBy(v => v.Index))
        {
            var args = new List<string> { "ip", "link", "set", "dev", pf.Name, "vf", vf.Index.ToString(CultureInfo.InvariantCulture) };
            if (vf.Mac is { } mac)
            {
                args.AddRange(["mac", mac.ToString()]);
            }
            if (vf.Vlan is { } vlan)
            {
                args.AddRange(["vlan", vlan.ToString(CultureInfo.InvariantCulture)]);
                if (vf.VlanQos is { } qos)
                {
                    args.AddRange(["qos", qos.ToString(CultureInfo.InvariantCulture)]);
                }
            }
            if (vf.MaxTxRateMbps is { } maxRate)
            {
                args.AddRange(["max_tx_rate", maxRate.ToString(CultureInfo.InvariantCulture)]);
            }
            if (vf.MinTxRateMbps is { } minRate)
            {
                args.AddRange(["min_tx_rate", minRate.ToString(CultureInfo.InvariantCulture)]);
            }
            if (vf.Trust is { } trust)
            {
                args.AddRange(["trust", trust ? "on" : "off"]);
            }
            if (vf.SpoofCheck is { } spoof)
            {
                args.AddRange(["spoofchk", spoof ? "on" : "off"]);
            }
            if (args.Count > 7)
            {
                steps.Add(new CommandStep([.. args]));
            }
        }
        return new VfPlan(pf.Name, steps.ToImmutable());
    }

    /// <summary>Runs the plan's steps in order; throws naming the step that failed and the steps already done.</summary>
    public void Apply(VfPlan plan)
    {
        for (var i = 0; i < plan.Steps.Length; i++)
        {
            var failure = runner.Run(plan.Steps[i]);
            if (failure is not null)
            {
                throw new InvalidOperationException(
                    $"VF configuration of '{plan.PhysicalFunction}' stopped at step {i + 1} of {plan.Steps.Length} ({plan.Steps[i].Describe()}): {failure}. "
                    + (i == 0 ? "Nothing was changed." : $"Steps 1..{i} were applied."));
            }
        }
    }
}

/// <summary>Runs VF steps on this machine: sysfs writes and <c>ip</c> commands.</summary>
public sealed class LinuxVfStepRunner : IVfStepRunner
{
    public string? Run(VfStep step)
    {
        switch (step)
        {
            case SysfsWrite write:
                try
                {
                    File.WriteAllText(write.Path, write.Value);
                    return null;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    return e.Message;
                }
            case CommandStep command:
                var result = ProgramRunner.TryRun(command.Arguments[0], [.. command.Arguments.Skip(1)]);
                return result.Succeeded ? null : result.Code == ProgramResult.NotFound ? result.Stderr : $"exit {result.Code}: {result.Stderr.Trim()}";
            default:
                return $"unknown step {step.GetType().Name}";
        }
    }
}
