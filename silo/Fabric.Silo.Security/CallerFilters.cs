using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace Fabric.Silo.Security;

/// <summary>
/// Puts the holder's caller token on every grain call it makes. In a silo it also strips it from calls to clients (an
/// agent's observer): a silo's token must never reach a host, which could otherwise replay it as a silo's. The token of a
/// client a grain was called by is replaced by the silo's on each onward call, so a grain acting for an agent calls
/// other grains as the cluster, never as that agent, and no client's token travels beyond the silo it called.
/// </summary>
public sealed class CallerTokenFilter(ControlPlaneCredential credential, TimeProvider time) : IOutgoingGrainCallFilter
{
    public async Task Invoke(IOutgoingGrainCallContext context)
    {
        // An async method: what it sets in the request context is not seen by the caller after it returns.
        if (context.TargetId.IsClient())
        {
            RequestContext.Remove(CallerToken.ContextKey);
        }
        else
        {
            RequestContext.Set(CallerToken.ContextKey, credential.Token(time.GetUtcNow()));
        }
        await context.Invoke().ConfigureAwait(false);
    }
}

/// <summary>
/// A silo's gate: every call to a grain must carry a caller token from the fleet's authority, and the caller's role and
/// name must allow the method (<see cref="ControlPlaneAuthorization"/>); otherwise the call fails with
/// <see cref="UnauthorizedAccessException"/> saying why, before the grain runs.
/// </summary>
public sealed partial class CallerAuthorizationFilter(CallerVerifier verifier, RevokedHosts revoked, ILogger<CallerAuthorizationFilter> logger) : IIncomingGrainCallFilter
{
    private const string TimerInvoker = "Orleans.Runtime.IGrainTimerInvoker";
    private long _refused;

    /// <summary>Calls refused since the silo started.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    public async Task Invoke(IIncomingGrainCallContext context)
    {
        var grainInterface = context.InterfaceMethod.DeclaringType!;
        var token = RequestContext.Get(CallerToken.ContextKey) as string;
        if (token is null && (grainInterface.FullName == TimerInvoker || context.TargetId.IsClient()))
        {
            // A timer's tick: queued inside the activation, never a message (a client could write any sender into a
            // message, so the sender proves nothing); or a call to an object of this silo's own hosted client (an
            // observer silo code made), which carries no token because calls to clients never do. Every other call —
            // Orleans' own between silos included, which the sending silo's outgoing filter signs — needs a token.
            CallerContext.AgentHost = null;
            CallerContext.Operator = null;
            CallerContext.Revoked = null;
            await context.Invoke();
            return;
        }
        string? refusal;
        Caller? caller = null;
        var serial = "";
        try
        {
            caller = verifier.Verify(token, out serial);
            refusal = caller.Role == CallerRole.Agent && revoked.Contains(caller.Name)
                ? $"host '{caller.Name}' was removed from the fleet"
                : ControlPlaneAuthorization.Check(caller, grainInterface, context.InterfaceMethod.Name, context.TargetId.Key.ToString()!, context.Request.GetArgument);
        }
        catch (UnauthorizedAccessException e)
        {
            refusal = e.Message;
        }
        if (refusal is null)
        {
            // For the grain (an async method: the caller's context is restored when it returns).
            CallerContext.AgentHost = caller!.Role == CallerRole.Agent ? caller.Name : null;
            CallerContext.Operator = caller.Role == CallerRole.Operator ? caller.Name : null;
            var host = caller.Name;
            CallerContext.Revoked = caller.Role == CallerRole.Agent ? () => revoked.IsRevokedCertificate(serial) || revoked.Contains(host) : null;
            await context.Invoke();
            return;
        }
        if (Interlocked.Increment(ref _refused) % 1000 == 1)
        {
            Log.Refused(logger, context.InterfaceName, context.MethodName, refusal, Refused);
        }
        throw new UnauthorizedAccessException($"{context.InterfaceMethod.DeclaringType!.Name}.{context.InterfaceMethod.Name} refused: {refusal}");
    }

    private static partial class Log
    {
        [LoggerMessage(LogLevel.Warning, "Refused a call to {Interface}.{Method}: {Refusal} ({Count} refused so far; one in 1,000 is logged)")]
        public static partial void Refused(ILogger logger, string @interface, string method, string refusal, long count);
    }
}
