using System.Net.Sockets;

namespace Fabric.Stacks.Fec;

/// <summary>
/// The fec plug-in's factory. Configuration (all optional): k (frames per group, 8), deadlineMicroseconds (how long a
/// group waits for k frames before its parity goes, 5000), targetResidualPpm (the share of frames parity may leave lost
/// for good, in ppm: 3; a path whose queue stands may bear more), initialParity (2, until the peer's first loss report).
/// Version 1.1.0: its loss reports carry a round trip's echo and the standing queue (20 bytes), and a group may close
/// without parity (kind 3); 1.0.0 read neither, so the two do not share a slot. Version 1.1.1 (the same wire as 1.1.0):
/// the receiver's one-way delay minimum starts anew after a second without shards, so a path whose delay rose while it
/// carried none is not taken for a standing, overflowing queue.
/// </summary>
public sealed class FecFactory : IStackFactory
{
    /// <summary>Stack fields, plus the parity shard's length and network prefix beyond the longest frame.</summary>
    public StackDescription Description { get; } = new("fec", "1.1.1", AddressFamily.InterNetwork, MaxStackFieldBytes: FecStack.FieldLength, MaxExpansionBytes: FecStack.ShardHeader);

    public IStack Create(StackContext context) => new FecStack(context.Configuration).Resume(context);
}
