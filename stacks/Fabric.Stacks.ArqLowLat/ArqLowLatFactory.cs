using System.Net.Sockets;

namespace Fabric.Stacks.ArqLowLat;

/// <summary>
/// The arq-lowlat plug-in's factory. Configuration (all optional): window (packets in flight and held early, 512),
/// minRtoMs (10), maxRtoMs (500), maxRetransmissions (20).
/// </summary>
public sealed class ArqLowLatFactory : IStackFactory
{
    public StackDescription Description { get; } = new("arq-lowlat", "1.0.0", AddressFamily.InterNetwork, MaxStackFieldBytes: ArqLowLatStack.FieldLength);

    public IStack Create(StackContext context) => new ArqLowLatStack(context.Configuration);
}
