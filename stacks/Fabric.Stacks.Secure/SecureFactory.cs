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

    /// <summary>
    /// Runs the cryptography once when the plug-in loads: the first use of the platform's HKDF, HMAC and ChaCha20-Poly1305
    /// costs tens of milliseconds, which would otherwise fall on the first session's hellos while frames wait for it.
    /// </summary>
    public SecureFactory()
    {
        var key = new string('0', 64);
        using var a = new SecureStack(new StackContext("warm-a", "warm-b", new Dictionary<string, string> { ["key"] = key }, Quiet.Instance));
        using var b = new SecureStack(new StackContext("warm-b", "warm-a", new Dictionary<string, string> { ["key"] = key }, Quiet.Instance));
        a.Warm(b);
    }

    public IStack Create(StackContext context) => new SecureStack(context);

    private sealed class Quiet : IStackTelemetry
    {
        public static readonly Quiet Instance = new();

        public void Event(string name, string detail)
        {
        }
    }
}
