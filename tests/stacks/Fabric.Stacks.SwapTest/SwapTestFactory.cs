using System.Net.Sockets;

namespace Fabric.Stacks.SwapTest;

/// <summary>The swap-test plug-in's factory.</summary>
public sealed class SwapTestFactory : IStackFactory
{
    public StackDescription Description { get; } = new("swap-test", "0.1.0", AddressFamily.InterNetwork, MaxStackFieldBytes: 0);

    public IStack Create(StackContext context) => new PlainEncapsulation(Description);
}
