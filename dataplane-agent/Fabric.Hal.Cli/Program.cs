using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Fabric.Hal.Inventory;
using Fabric.Hal.Sriov;
using Fabric.Programs;
using Fabric.Wire;

// fabric-hal: the HAL's view of this host, for operators and tests.
var sysfs = new Option<string>("--sysfs") { Description = "the sysfs root to read (a fake tree in tests)", DefaultValueFactory = _ => "/sys", HelpName = "ROOT", Recursive = true };
var json = new Option<bool>("--json") { Description = "print JSON instead of one line per netdev" };
var inventory = new Command("inventory", "Every netdev with driver, speed, MTU, state and counters; SR-IOV PFs with their VFs.") { json };
inventory.SetAction(parsed => Inventory(parsed.GetValue(sysfs)!, parsed.GetValue(json)));

var pf = CommandLineConventions.RefusingOptions(new Argument<string>("PF") { Description = "the physical function's netdev name" });
var numVfs = new Option<int?>("--num-vfs") { Description = "how many VFs the PF should have", HelpName = "N" };
var apply = new Option<bool>("--apply") { Description = "run the planned steps (without it the plan is only printed)" };
// The per-VF options apply to the --vf before them, so the action reads them in command-line order (below); declaring
// them here gives them help, and type checks with errors that name the option.
var vf = new Option<int[]>("--vf") { Description = "start the settings of VF number I (the options below apply to it)", HelpName = "I", Arity = ArgumentArity.ZeroOrMore };
Option[] perVf =
[
    new Option<string[]>("--mac") { Description = "the VF's MAC address", HelpName = "aa:bb:cc:dd:ee:ff", CustomParser = CommandLineConventions.Parser(v => MacAddress.TryParse(v, out _) ? new[] { v } : throw new FormatException("is not a MAC address (aa:bb:cc:dd:ee:ff)")) },
    new Option<int[]>("--vlan") { Description = "VLAN id 0–4094 (0 removes the tag)", HelpName = "V" },
    new Option<int[]>("--qos") { Description = "802.1p priority of the VLAN tag", HelpName = "Q" },
    new Option<int[]>("--max-rate") { Description = "maximum transmit rate", HelpName = "MBPS" },
    new Option<int[]>("--min-rate") { Description = "guaranteed transmit rate", HelpName = "MBPS" },
    new Option<string[]>("--trust") { Description = "trusted VF (may change its MAC, promiscuous)", HelpName = "on|off", CustomParser = CommandLineConventions.Parser(OnOffText) },
    new Option<string[]>("--spoofchk") { Description = "drop frames whose source MAC is not the VF's", HelpName = "on|off", CustomParser = CommandLineConventions.Parser(OnOffText) },
];
var vfCommand = new Command("vf", "Plans SR-IOV VF settings on physical function PF and prints the steps; --apply runs them.") { pf, numVfs, apply, vf };
foreach (var option in perVf)
{
    option.Arity = ArgumentArity.ZeroOrMore;
    vfCommand.Options.Add(option);
}
vfCommand.SetAction(parsed => Vf(parsed.GetValue(pf)!, parsed.GetValue(sysfs)!, parsed.GetValue(numVfs), parsed.GetValue(apply), PerVf(parsed.Tokens.Select(t => t.Value).ToList())));

var root = new RootCommand("fabric-hal: the hardware abstraction layer's view of this host (netdevs, SR-IOV) and VF configuration.") { sysfs, inventory, vfCommand };
try
{
    return CommandLineConventions.Invoke(root, args);
}
catch (VfRequestException e)
{
    Console.Error.WriteLine($"fabric-hal: {e.Message}");
    return 1;
}
catch (Exception e) when (e is InvalidOperationException or DirectoryNotFoundException)
{
    Console.Error.WriteLine($"fabric-hal: {e.Message}");
    return 1;
}

static string[] OnOffText(string value) => value is "on" or "off" ? [value] : throw new FormatException("is not on or off");

// The per-VF settings in command-line order: each applies to the --vf before it.
static List<VfSettings> PerVf(List<string> tokens)
{
    var vfs = new List<VfSettings>();
    for (var i = 0; i + 1 < tokens.Count; i++)
    {
        var (name, value) = (tokens[i], tokens[i + 1]);
        int Int() => int.Parse(value, NumberStyles.Integer, CultureInfo.InvariantCulture);
        if (name == "--vf")
        {
            vfs.Add(new VfSettings(Int()));
            i++;
            continue;
        }
        if (name is not ("--mac" or "--vlan" or "--qos" or "--max-rate" or "--min-rate" or "--trust" or "--spoofchk"))
        {
            continue;
        }
        if (vfs.Count == 0)
        {
            throw new UsageException($"vf: '{name}' must follow a --vf INDEX");
        }
        var current = vfs[^1];
        vfs[^1] = name switch
        {
            "--mac" => current with { Mac = MacAddress.TryParse(value, out var mac) ? mac : null },
            "--vlan" => current with { Vlan = Int() },
            "--qos" => current with { VlanQos = Int() },
            "--max-rate" => current with { MaxTxRateMbps = Int() },
            "--min-rate" => current with { MinTxRateMbps = Int() },
            "--trust" => current with { Trust = value == "on" },
            _ => current with { SpoofCheck = value == "on" },
        };
        i++;
    }
    return vfs;
}

static int Inventory(string sysfs, bool json)
{
    var nics = new SysfsInventory(sysfs).ReadAll();
    if (json)
    {
        Console.WriteLine(JsonSerializer.Serialize(nics.Select(n => new
        {
            n.Name,
            n.IfIndex,
            Kind = n.Kind.ToString(),
            n.Driver,
            Mac = n.Mac?.ToString(),
            n.Mtu,
            n.SpeedMbps,
            n.OperState,
            n.Counters,
            n.PciAddress,
            n.Sriov,
            n.PhysicalFunction,
        }), new JsonSerializerOptions { WriteIndented = true }));
    }
    else
    {
        foreach (var nic in nics)
        {
            Console.WriteLine(nic);
        }
    }
    return 0;
}

static int Vf(string pf, string sysfs, int? numVfs, bool apply, List<VfSettings> vfs)
{
    var configurator = new VfConfigurator(new SysfsInventory(sysfs), new LinuxVfStepRunner(), sysfs);
    var plan = configurator.Plan(new VfRequest(pf, numVfs, [.. vfs]));
    foreach (var step in plan.Steps)
    {
        Console.WriteLine(step.Describe());
    }
    if (plan.Steps.IsEmpty)
    {
        Console.WriteLine($"{pf}: already as requested");
    }
    if (apply)
    {
        configurator.Apply(plan);
        Console.WriteLine($"{pf}: applied {plan.Steps.Length} steps");
    }
    return 0;
}
