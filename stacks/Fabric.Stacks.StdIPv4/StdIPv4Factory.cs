using System.Net.Sockets;

namespace Fabric.Stacks.StdIPv4;

/// <summary>The std-ipv4 plug-in's factory.</summary>
public sealed class StdIPv4Factory : IStackFactory
{
    public StackDescription Description { get; } = new("std-ipv4", "1.0.0", AddressFamily.InterNetwork, MaxStackFieldBytes: 0);

    public IStack Create(StackContext context) => new PlainEncapsulation(Description);
}
