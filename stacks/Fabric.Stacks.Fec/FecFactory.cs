using System.Net.Sockets;

namespace Fabric.Stacks.Fec;

/// <summary>
/// The fec plug-in's factory. Configuration (all optional): k (frames per group, 8), deadlineMicroseconds (how long a
/// group waits for k frames before its parity goes, 5000), targetResidualPpm (acceptable chance of a group losing more
/// than its parity, in ppm: 10), initialParity (2, until the peer's first loss report).
/// </summary>
public sealed class FecFactory : IStackFactory
{
    /// <summary>Stack fields, plus the parity shard's length and network prefix beyond the longest frame.</summary>
    public StackDescription Description { get; } = new("fec", "1.0.0", AddressFamily.InterNetwork, MaxStackFieldBytes: FecStack.FieldLength, MaxExpansionBytes: FecStack.ShardHeader);

    public IStack Create(StackContext context) => new FecStack(context.Configuration).Resume(context);
}
