using System.Net.Sockets;

namespace Fabric.Stacks.Secure;

/// <summary>
/// The secure plug-in's factory. Configuration: key (the path's key, 64 hex digits, the same at both ends; without it
/// every packet is dropped and counted), rekeyPackets (1,048,576), rekeySeconds (120).
/// </summary>
public sealed class SecureFactory : IStackFactory
{
    public StackDescription Description { get; } = new("secure", "2.0.0", AddressFamily.InterNetwork, MaxStackFieldBytes: SecureStack.FieldLength, MaxExpansionBytes: SecureStack.TagLength)
    {
        Encrypts = true,
    };

    public IStack Create(StackContext context) => new SecureStack(context);
}
