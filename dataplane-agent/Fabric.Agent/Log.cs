using Microsoft.Extensions.Logging;

namespace Fabric.Agent;

/// <summary>The agent's log events (never per packet).</summary>
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "VM {VmId} attached on {Device} (vni {Vni}, mac {Mac})")]
    public static partial void VmAttached(ILogger logger, string vmId, string device, uint vni, string mac);

    [LoggerMessage(2, LogLevel.Information, "VM {VmId} detached")]
    public static partial void VmDetached(ILogger logger, string vmId);

    [LoggerMessage(3, LogLevel.Information, "Path to {HostId} at {Destination} uses {Stack} in slot {Slot}")]
    public static partial void PathBound(ILogger logger, string hostId, string destination, string stack, int slot);

    [LoggerMessage(4, LogLevel.Information, "Stack {StackId} {Version} registered from {Directory}")]
    public static partial void StackRegistered(ILogger logger, string stackId, string version, string directory);

    [LoggerMessage(5, LogLevel.Error, "VM port {VmId} stopped: {Result}")]
    public static partial void VmPortStopped(ILogger logger, string vmId, string result);

    [LoggerMessage(6, LogLevel.Information, "Underlay listening on {Endpoint}")]
    public static partial void UnderlayListening(ILogger logger, string endpoint);

    [LoggerMessage(EventId = 8, Message = "{Event}")]
    public static partial void StackEvent(ILogger logger, LogLevel level, string @event);

    [LoggerMessage(7, LogLevel.Warning, "Local API request refused: {Reason}")]
    public static partial void ApiRefused(ILogger logger, string reason);

    [LoggerMessage(9, LogLevel.Warning, "Stack repository unreachable, running on the {Count} stack(s) cached from targets v{Version}: {Reason}")]
    public static partial void RepositoryOffline(ILogger logger, int count, int version, string reason);

    [LoggerMessage(15, LogLevel.Warning, "Stack package {Name} unpacked again from the verified package: the files on disk had changed ({Damage})")]
    public static partial void UnpackedRepaired(ILogger logger, string name, string damage);

    [LoggerMessage(11, LogLevel.Warning, "Stack repository not read again, running the {Count} stack(s) verified before: {Reason}")]
    public static partial void RepositoryRefreshFailed(ILogger logger, int count, string reason);

    [LoggerMessage(12, LogLevel.Error, "Stack {StackId} {Version} published but not registered: {Reason}")]
    public static partial void StackRefused(ILogger logger, string stackId, string version, string reason);

    [LoggerMessage(13, LogLevel.Information, "{Count} VM binding(s) moved to the stack version they are to run (the newest both ends have, or the one the control plane holds)")]
    public static partial void BindingsUpgraded(ILogger logger, int count);

    [LoggerMessage(14, LogLevel.Error, "Housekeeping round failed (tried again in 250 ms): {Reason}")]
    public static partial void HousekeepingFailed(ILogger logger, string reason);

    [LoggerMessage(10, LogLevel.Error, "Registration file {File} cannot be read and was set aside as {SetAside}; its VM is not registered until its hook registers it again: {Reason}")]
    public static partial void RegistrationUnreadable(ILogger logger, string file, string setAside, string reason);
}
