using System.Net.Sockets;

namespace Fabric.Stacks.ArqLowLat;

/// <summary>
/// The arq-lowlat plug-in's factory: <see cref="SelectiveRepeat"/> tuned for latency — every packet acknowledged at once,
/// no pacing. Version 1.0.1 (the same wire as 1.0.0): the retransmission timeout backs off until the next RTT sample. Version 1.0.2 (the same wire):
/// an acknowledgement costs a walk over the gaps and the sequences it newly covers, not over every sequence of every range
/// it repeats, and one whose ranges lie outside what was sent is refused whole.
/// Configuration (all optional): window (512), minRtoMs (10), maxRtoMs (500), maxRetransmissions (20).
/// </summary>
public sealed class ArqLowLatFactory : IStackFactory
{
    public StackDescription Description { get; } = new("arq-lowlat", "1.0.2", AddressFamily.InterNetwork, MaxStackFieldBytes: SelectiveRepeat.FieldLength);

    public IStack Create(StackContext context) => new SelectiveRepeat(new SelectiveRepeatOptions("arq-lowlat",
        Window: (int)SelectiveRepeatOptions.Setting(context.Configuration, "window", 512, 16, 65536),
        AckEvery: 1,
        AckDelayNanoseconds: 0,
        Pacing: false,
        MinRtoNanoseconds: SelectiveRepeatOptions.Setting(context.Configuration, "minRtoMs", 10, 1, 10_000) * 1_000_000,
        MaxRtoNanoseconds: SelectiveRepeatOptions.Setting(context.Configuration, "maxRtoMs", 500, 1, 60_000) * 1_000_000,
        MaxRetransmissions: (int)SelectiveRepeatOptions.Setting(context.Configuration, "maxRetransmissions", 20, 1, 1000))).Resume(context);
}
