using System.Net.Sockets;

namespace Fabric.Stacks.ArqBulk;

/// <summary>
/// The arq-bulk plug-in's factory: <see cref="SelectiveRepeat"/> tuned for throughput on long lossy paths — every
/// second packet acknowledged (or after 1 ms; out-of-order ones at once), first transmissions paced at twice the
/// acknowledged delivery rate within 1.25 times the bandwidth-delay product on the path's minimum RTT plus 2 ms of the
/// rate (1.1.0; 1.0.0 kept twice the product on the smoothed RTT, and overflowed a clean fast link's queue for good), up
/// to 16,384 packets in flight. A single loss is
/// repaired about one RTT after it happened: the packets behind it are acknowledged with ranges and the gap resent at
/// once. Version 1.1.1 (the same wire as 1.1.0): the retransmission timeout backs off until the next RTT sample, the
/// delivery rate falls by half the difference while frames wait for the window, and a floor that rose is measured again
/// within one or two seconds (or four to eight SRTTs), not 10 (in a simulation of a path that turned from 150 Mbit/s and
/// 12 ms to 5.65 Mbit/s and 176 ms: 1.0 Mbit/s before, 5.3 after). Version 1.1.2 (the same wire): an acknowledgement costs a walk over the
/// gaps and the sequences it newly covers, not over every sequence of every range it repeats, and the receiver keeps
/// what it holds as runs (on a 300 Mbit/s link with 0.5 % loss, which the agent carries on the CPU's limit, 178–219
/// Mbit/s where 1.1.1 carried 131–138). An acknowledgement whose ranges lie outside what was sent is refused whole. Configuration (all optional): window (16384), minRtoMs (30), maxRtoMs (2000), maxRetransmissions (30).
/// </summary>
public sealed class ArqBulkFactory : IStackFactory
{
    public StackDescription Description { get; } = new("arq-bulk", "1.1.2", AddressFamily.InterNetwork, MaxStackFieldBytes: SelectiveRepeat.FieldLength);

    public IStack Create(StackContext context) => new SelectiveRepeat(new SelectiveRepeatOptions("arq-bulk",
        Window: (int)SelectiveRepeatOptions.Setting(context.Configuration, "window", 16384, 64, 65536),
        AckEvery: 2,
        AckDelayNanoseconds: 1_000_000,
        Pacing: true,
        MinRtoNanoseconds: SelectiveRepeatOptions.Setting(context.Configuration, "minRtoMs", 30, 1, 10_000) * 1_000_000,
        MaxRtoNanoseconds: SelectiveRepeatOptions.Setting(context.Configuration, "maxRtoMs", 2000, 1, 60_000) * 1_000_000,
        MaxRetransmissions: (int)SelectiveRepeatOptions.Setting(context.Configuration, "maxRetransmissions", 30, 1, 1000))).Resume(context);
}
