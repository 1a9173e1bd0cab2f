using System.Net.Sockets;

namespace Fabric.Stacks.StdIPv6;

/// <summary>The std-ipv6 plug-in's factory.</summary>
public sealed class StdIPv6Factory : IStackFactory
{
    public StackDescription Description { get; } = new("std-ipv6", "1.0.0", AddressFamily.InterNetworkV6, MaxStackFieldBytes: 0);

    public IStack Create(StackContext context) => new PlainEncapsulation(Description);
}
