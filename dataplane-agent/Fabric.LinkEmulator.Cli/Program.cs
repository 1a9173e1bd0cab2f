using System.Globalization;
using System.Runtime.InteropServices;
using Fabric.Hal.Linux;
using Fabric.LinkEmulator;

// fabric-linkem: a user-space link emulator between two network interfaces (this kernel has no netem).
const string Usage = """
usage:
  fabric-linkem run --a IFACE --b IFACE [--control SOCKET] [--seed N]
                    [--delay 30ms] [--jitter 2ms] [--reorder on|off] [--loss 1%] [--ge P,R[,lossInBad[,lossInGood]]]
                    [--rate 20mbit] [--queue 100] [--trace FILE]      (these apply to both directions)
                    [--a2b "key=value ..."] [--b2a "key=value ..."]   (per direction, applied after the above)
  fabric-linkem ctl SOCKET set a2b|b2a|both key=value ...
  fabric-linkem ctl SOCKET show|stats

Frames from --a leave on --b after the a2b profile, and back after b2a. Keys: delay, jitter, reorder, loss, ge, rate,
queue, trace (a Mahimahi trace: one delivery opportunity of 1500 bytes per line, in ms; repeats).
""";

try
{
    return args.FirstOrDefault() switch
    {
        "run" => Run(args[1..]),
        "ctl" => Control(args[1..]),
        "-h" or "--help" => Help(0),
        _ => Help(2),
    };
}
catch (FormatException e)
{
    Console.Error.WriteLine($"fabric-linkem: {e.Message}");
    return 2;
}
catch (InvalidOperationException e)
{
    Console.Error.WriteLine($"fabric-linkem: {e.Message}");
    return 1;
}

static int Help(int code)
{
    (code == 0 ? Console.Out : Console.Error).Write(Usage);
    return code;
}

static int Run(string[] args)
{
    string? a = null, b = null, control = null;
    var seed = 1;
    var both = new List<string>();
    var a2b = new List<string>();
    var b2a = new List<string>();
    for (var i = 0; i < args.Length; i++)
    {
        var arg = args[i];
        string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{arg} needs a value.");
        switch (arg)
        {
            case "--a": a = Next(); break;
            case "--b": b = Next(); break;
            case "--control": control = Next(); break;
            case "--seed":
                var text = Next();
                seed = int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var s) ? s : throw new FormatException($"--seed: '{text}' is not a whole number.");
                break;
            case "--a2b": a2b.AddRange(Next().Split(' ', StringSplitOptions.RemoveEmptyEntries)); break;
            case "--b2a": b2a.AddRange(Next().Split(' ', StringSplitOptions.RemoveEmptyEntries)); break;
            case "--delay" or "--jitter" or "--reorder" or "--loss" or "--ge" or "--rate" or "--queue" or "--trace":
                both.Add($"{arg[2..]}={Next()}");
                break;
            default:
                throw new FormatException($"run: unknown argument '{arg}'.");
        }
    }
    if (a is null || b is null)
    {
        throw new FormatException("run: both --a and --b interfaces are required.");
    }
    var common = LinkProfile.Clean.Apply(both);
    var profileA2B = common.Apply(a2b);
    var profileB2A = common.Apply(b2a);

    using var portA = AfPacketPort.Open(a);
    using var portB = AfPacketPort.Open(b);
    using var emulator = new LinkEmulator(portA, portB, profileA2B, profileB2A, SystemClock.Instance, seed);
    using var server = control is null ? null : new ControlServer(emulator, control);
    using var stopped = new ManualResetEventSlim();
    using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stopped.Set(); });
    using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stopped.Set(); });
    emulator.Start();
    Console.WriteLine($"fabric-linkem: bridging {a} <-> {b}; a2b: {profileA2B}; b2a: {profileB2A}" + (control is null ? "" : $"; control {control}"));
    stopped.Wait();
    var (statsA2B, failA2B) = emulator.GetStats(Direction.AToB);
    var (statsB2A, failB2A) = emulator.GetStats(Direction.BToA);
    Console.WriteLine($"fabric-linkem: stopped; a2b {statsA2B} tx-failures={failA2B}; b2a {statsB2A} tx-failures={failB2A}");
    return 0;
}

static int Control(string[] args)
{
    if (args.Length < 2)
    {
        throw new FormatException("ctl: usage: fabric-linkem ctl SOCKET set|show|stats ...");
    }
    if (!File.Exists(args[0]))
    {
        throw new InvalidOperationException($"ctl: no control socket at '{args[0]}' (is fabric-linkem run --control {args[0]} running?)");
    }
    var reply = ControlServer.Send(args[0], string.Join(' ', args[1..]));
    Console.WriteLine(reply);
    return reply.StartsWith("ok", StringComparison.Ordinal) ? 0 : 1;
}
