using System.Collections.Frozen;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo.Security;

/// <summary>
/// The hosts an operator removed from the fleet, as this silo last read them from the fleet grain: their agents' calls
/// are refused whatever certificate they hold. Read again every <see cref="RefreshPeriod"/>, so a removal reaches every
/// silo within that time.
/// </summary>
public sealed class RevokedHosts
{
    public static readonly TimeSpan RefreshPeriod = TimeSpan.FromSeconds(5);

    private volatile FrozenSet<string> _hosts = FrozenSet<string>.Empty;

    public bool Contains(string hostId) => _hosts.Contains(hostId);

    public void Set(IEnumerable<string> hosts) => _hosts = hosts.ToFrozenSet(StringComparer.Ordinal);
}

/// <summary>Reads the removed hosts from the fleet grain every <see cref="RevokedHosts.RefreshPeriod"/> (as the silo, through its own filters).</summary>
public sealed partial class RevokedHostsRefresher(RevokedHosts revoked, IGrainFactory grains, ILogger<RevokedHostsRefresher> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var failing = false;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                revoked.Set(await grains.GetGrain<IFleetGrain>(IFleetGrain.Key).ListRemovedAsync());
                failing = false;
            }
            catch (Exception e) when (e is not OperationCanceledException && !stoppingToken.IsCancellationRequested)
            {
                // The silo is starting, or the fleet grain is moving: the last list stands.
                if (!failing)
                {
                    Log.Unread(logger, e.Message);
                }
                failing = true;
            }
            try
            {
                await Task.Delay(RevokedHosts.RefreshPeriod, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private static partial class Log
    {
        [LoggerMessage(LogLevel.Information, "The removed hosts could not be read ({Reason}); the last list stands")]
        public static partial void Unread(ILogger logger, string reason);
    }
}
