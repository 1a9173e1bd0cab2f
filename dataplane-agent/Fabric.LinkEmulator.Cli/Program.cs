using System.CommandLine;
using Fabric.Programs;
using System.Runtime.InteropServices;
using Fabric.Hal.Linux;
using Fabric.LinkEmulator;

// fabric-linkem: a user-space link emulator between two network interfaces (this kernel has no netem).
var a = new Option<string>("--a") { Description = "one interface (frames from it leave on --b after the a2b profile)", Required = true, HelpName = "IFACE" };
var b = new Option<string>("--b") { Description = "the other interface (frames from it leave on --a after the b2a profile)", Required = true, HelpName = "IFACE" };
var control = new Option<string?>("--control") { Description = "a unix socket for 'fabric-linkem ctl' to change the link mid-run", HelpName = "SOCKET" };
var seed = new Option<int>("--seed") { Description = "seed of the loss and jitter draws", DefaultValueFactory = _ => 1 };
(string Key, string Example, string Help)[] knobs =
[
    ("delay", "30ms", "one-way delay"),
    ("jitter", "2ms", "delay variation (uniform)"),
    ("reorder", "on|off", "let jitter reorder frames"),
    ("loss", "1%", "random loss"),
    ("ge", "P,R[,lossInBad[,lossInGood]]", "Gilbert–Elliott burst loss: good→bad P, bad→good R"),
    ("rate", "20mbit", "bottleneck rate"),
    ("queue", "100", "drop-tail queue limit, in frames"),
    ("trace", "FILE", "a Mahimahi trace: one 1500-byte delivery opportunity per line, in ms; repeats"),
];
var knobOptions = knobs.Select(k => new Option<string?>("--" + k.Key)
{
    Description = k.Help + " (both directions)",
    HelpName = k.Example,
    CustomParser = CommandLineConventions.Parser(value => Checked([$"{k.Key}={value}"], value)),
}).ToArray();
var a2b = new Option<string?>("--a2b") { Description = "settings for a→b only, applied after the above", HelpName = "\"key=value ...\"", CustomParser = CommandLineConventions.Parser(v => Checked(Words(v), v)) };
var b2a = new Option<string?>("--b2a") { Description = "settings for b→a only, applied after the above", HelpName = "\"key=value ...\"", CustomParser = CommandLineConventions.Parser(v => Checked(Words(v), v)) };
var run = new Command("run", "Bridges two interfaces through an emulated link until SIGINT or SIGTERM.") { a, b, control, seed, a2b, b2a };
foreach (var option in knobOptions)
{
    run.Options.Add(option);
}
run.SetAction(parsed =>
{
    var both = knobs.Zip(knobOptions).Select(k => (k.First.Key, Value: parsed.GetValue(k.Second))).Where(k => k.Value is not null).Select(k => $"{k.Key}={k.Value}");
    return Run(parsed.GetValue(a)!, parsed.GetValue(b)!, parsed.GetValue(control), parsed.GetValue(seed), [.. both],
        Words(parsed.GetValue(a2b)), Words(parsed.GetValue(b2a)));
});

var socket = new Argument<string>("SOCKET") { Description = "the --control socket of a running 'fabric-linkem run'" };
var words = CommandLineConventions.RefusingOptions(new Argument<string[]>("REQUEST")
{
    Description = "set a2b|b2a|both key=value ... | show | stats",
    Arity = ArgumentArity.OneOrMore,
});
var ctl = new Command("ctl", "Changes or shows a running emulator's link.") { socket, words };
ctl.SetAction(parsed => Control(parsed.GetValue(socket)!, parsed.GetValue(words)!));

var root = new RootCommand("fabric-linkem: a user-space link emulator between two network interfaces (delay, jitter, loss, burst loss, rate, queue, Mahimahi traces).") { run, ctl };
try
{
    return CommandLineConventions.Invoke(root, args);
}
catch (InvalidOperationException e)
{
    Console.Error.WriteLine($"fabric-linkem: {e.Message}");
    return 1;
}

static string[] Words(string? text) => text?.Split(' ', StringSplitOptions.RemoveEmptyEntries) ?? [];

// A setting is checked where it is parsed, so a bad one is refused before any interface is opened.
static string Checked(IReadOnlyList<string> settings, string value)
{
    LinkProfile.Clean.Apply(settings);
    return value;
}

static int Run(string a, string b, string? control, int seed, string[] both, string[] a2b, string[] b2a)
{
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

static int Control(string socket, string[] request)
{
    if (!File.Exists(socket))
    {
        throw new InvalidOperationException($"ctl: no control socket at '{socket}' (is fabric-linkem run --control {socket} running?)");
    }
    var reply = ControlServer.Send(socket, string.Join(' ', request));
    Console.WriteLine(reply);
    return reply.StartsWith("ok", StringComparison.Ordinal) ? 0 : 1;
}
