using System.Collections.Immutable;
using System.Globalization;
using System.Text.Json;
using Fabric.Hal.Inventory;
using Fabric.Hal.Sriov;
using Fabric.Wire;

// fabric-hal: the HAL's view of this host, for operators and tests.
const string Usage = """
usage:
  fabric-hal inventory [--sysfs ROOT] [--json]
  fabric-hal vf PF [--sysfs ROOT] [--num-vfs N] [--vf I [--mac M] [--vlan V [--qos Q]] [--max-rate MBPS] [--min-rate MBPS]
                   [--trust on|off] [--spoofchk on|off]]... [--apply]
     Plans SR-IOV VF settings on physical function PF and prints the steps; --apply runs them.
""";

try
{
    return args.FirstOrDefault() switch
    {
        "inventory" => Inventory(args[1..]),
        "vf" => Vf(args[1..]),
        "-h" or "--help" => Help(0),
        _ => Help(2),
    };
}
catch (UsageException e)
{
    Console.Error.WriteLine($"fabric-hal: {e.Message}");
    return 2;
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

static int Help(int code)
{
    (code == 0 ? Console.Out : Console.Error).Write(Usage);
    return code;
}

static int Inventory(string[] args)
{
    var sysfs = "/sys";
    var json = false;
    for (var i = 0; i < args.Length; i++)
    {
        switch (args[i])
        {
            case "--sysfs":
                sysfs = Value(args, ref i);
                break;
            case "--json":
                json = true;
                break;
            default:
                throw new UsageException($"inventory: unknown argument '{args[i]}'");
        }
    }
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

static int Vf(string[] args)
{
    if (args.Length == 0 || args[0].StartsWith('-'))
    {
        throw new UsageException("vf: name the physical function first");
    }
    var pf = args[0];
    var sysfs = "/sys";
    int? numVfs = null;
    var apply = false;
    var vfs = new List<VfSettings>();
    for (var i = 1; i < args.Length; i++)
    {
        var arg = args[i];
        if (arg is "--sysfs")
        {
            sysfs = Value(args, ref i);
            continue;
        }
        if (arg is "--num-vfs")
        {
            numVfs = Int(args, ref i);
            continue;
        }
        if (arg is "--apply")
        {
            apply = true;
            continue;
        }
        if (arg is "--vf")
        {
            vfs.Add(new VfSettings(Int(args, ref i)));
            continue;
        }
        if (vfs.Count == 0)
        {
            throw new UsageException($"vf: '{arg}' must follow a --vf INDEX");
        }
        var current = vfs[^1];
        vfs[^1] = arg switch
        {
            "--mac" => current with { Mac = MacAddress.TryParse(Value(args, ref i), out var mac) ? mac : throw new UsageException($"--mac: '{args[i]}' is not a MAC address (aa:bb:cc:dd:ee:ff)") },
            "--vlan" => current with { Vlan = Int(args, ref i) },
            "--qos" => current with { VlanQos = Int(args, ref i) },
            "--max-rate" => current with { MaxTxRateMbps = Int(args, ref i) },
            "--min-rate" => current with { MinTxRateMbps = Int(args, ref i) },
            "--trust" => current with { Trust = OnOff(args, ref i) },
            "--spoofchk" => current with { SpoofCheck = OnOff(args, ref i) },
            _ => throw new UsageException($"vf: unknown argument '{arg}'"),
        };
    }
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

static string Value(string[] args, ref int i)
{
    if (i + 1 >= args.Length)
    {
        throw new UsageException($"{args[i]} needs a value");
    }
    return args[++i];
}

static int Int(string[] args, ref int i)
{
    var name = args[i];
    var text = Value(args, ref i);
    return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
        ? value : throw new UsageException($"{name}: '{text}' is not a whole number");
}

static bool OnOff(string[] args, ref int i)
{
    var name = args[i];
    return Value(args, ref i) switch
    {
        "on" => true,
        "off" => false,
        var other => throw new UsageException($"{name}: '{other}' is not on or off"),
    };
}

internal sealed class UsageException(string message) : Exception(message);
