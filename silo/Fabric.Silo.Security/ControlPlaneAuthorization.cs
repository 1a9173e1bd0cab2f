namespace Fabric.Silo.Security;

/// <summary>
/// What each caller may do, per grain interface and method (deny unless listed). A silo may do anything: it is the
/// cluster. An operator reads everything and changes what operators own (policies, the catalog, named policies,
/// learning) but never speaks for a host — it cannot register one, report its telemetry or place a VM. An agent speaks
/// only for its own host: its host grain, its own telemetry, placing and removing VMs on itself, reading the catalog.
/// </summary>
public static class ControlPlaneAuthorization
{
    private static readonly HashSet<string> AgentHostMethods =
    [
        nameof(IHostGrain.RegisterAsync), nameof(IHostGrain.RenewAsync), nameof(IHostGrain.AcknowledgeAsync), nameof(IHostGrain.ReportAsync),
        nameof(IHostGrain.GetDesiredStateAsync), nameof(IHostGrain.GetAcknowledgedAsync), nameof(IHostGrain.GetInfoAsync),
    ];

    private static readonly Dictionary<Type, HashSet<string>?> OperatorMethods = new()
    {
        [typeof(ICatalogGrain)] =
        [
            nameof(ICatalogGrain.PublishAsync), nameof(ICatalogGrain.SyncAsync), nameof(ICatalogGrain.ListAsync), nameof(ICatalogGrain.ListWithdrawnAsync),
            nameof(ICatalogGrain.HoldVersionAsync), nameof(ICatalogGrain.ListHoldsAsync), nameof(ICatalogGrain.GetHostReleaseAsync),
            nameof(ICatalogGrain.ListRolloutsAsync), nameof(ICatalogGrain.ListBadAsync), nameof(ICatalogGrain.StepRolloutAsync),
        ],
        [typeof(IPolicyLibraryGrain)] = null,
        [typeof(ILearnerGrain)] = null,
        [typeof(IFleetGrain)] = [nameof(IFleetGrain.GetAsync), nameof(IFleetGrain.RemoveHostAsync), nameof(IFleetGrain.ReadmitHostAsync), nameof(IFleetGrain.ListRemovedAsync)],
        [typeof(INetworkGrain)] = [nameof(INetworkGrain.GetAsync)],
        [typeof(IVmGrain)] = [nameof(IVmGrain.SetPolicyAsync), nameof(IVmGrain.GetAsync)],
        [typeof(IPathGrain)] = [nameof(IPathGrain.GetConditionsAsync), nameof(IPathGrain.GetHistoryAsync)],
        [typeof(IHostGrain)] =
        [
            nameof(IHostGrain.GetDesiredStateAsync), nameof(IHostGrain.GetAcknowledgedAsync), nameof(IHostGrain.GetInfoAsync),
            nameof(IHostGrain.GetOutcomesAsync), nameof(IHostGrain.ListVmsAsync), nameof(IHostGrain.ListPeersAsync),
            nameof(IHostGrain.GetPathAsync), nameof(IHostGrain.GetPathHistoryAsync),
        ],
    };

    /// <summary>Orleans' own interfaces a client must reach to work at all (the cluster's type manifest).</summary>
    private static readonly HashSet<string> ClientSystemInterfaces = ["Orleans.Runtime.IClusterManifestSystemTarget"];

    /// <summary>Whether <paramref name="grainInterface"/> is one of Fabric's grains (the control plane's contract).</summary>
    public static bool IsFabric(Type grainInterface) => grainInterface.Assembly == typeof(IHostGrain).Assembly;

    /// <summary>
    /// Null when <paramref name="caller"/> may call <paramref name="method"/> of <paramref name="grainInterface"/> on the
    /// grain keyed <paramref name="grainKey"/> with these arguments; otherwise why not.
    /// </summary>
    public static string? Check(Caller caller, Type grainInterface, string method, string grainKey, Func<int, object?> argument)
    {
        if (caller.Role != CallerRole.Silo && !IsFabric(grainInterface))
        {
            return ClientSystemInterfaces.Contains(grainInterface.FullName!) ? null : $"{caller} may not call Orleans' {grainInterface.Name}.{method}";
        }
        switch (caller.Role)
        {
            case CallerRole.Silo:
                return null;
            case CallerRole.Operator:
                return OperatorMethods.TryGetValue(grainInterface, out var allowed) && (allowed is null || allowed.Contains(method))
                    ? null
                    : $"{caller} may not call {grainInterface.Name}.{method} (an operator never acts as a host or a silo)";
            default:
                return AgentCheck(caller.Name, grainInterface, method, grainKey, argument);
        }
    }

    private static string? AgentCheck(string host, Type grainInterface, string method, string grainKey, Func<int, object?> argument)
    {
        if (grainInterface == typeof(IHostGrain) && AgentHostMethods.Contains(method))
        {
            if (grainKey != host)
            {
                return $"agent '{host}' may not call {method} on host '{grainKey}': only on its own";
            }
            return method switch
            {
                nameof(IHostGrain.RegisterAsync) when argument(0) is HostInfo info && info.HostId != host
                    => $"agent '{host}' may not register as host '{info.HostId}'",
                nameof(IHostGrain.ReportAsync) when argument(0) is IEnumerable<PathSample> samples && samples.FirstOrDefault(s => s.FromHost != host) is { } foreign
                    => $"agent '{host}' may not report the path from '{foreign.FromHost}'",
                _ => null,
            };
        }
        if (grainInterface == typeof(IVmGrain) && method == nameof(IVmGrain.PlaceAsync))
        {
            return argument(0) is VmPlacement placement && placement.HostId == host ? null : $"agent '{host}' may place VM '{grainKey}' only on itself";
        }
        if (grainInterface == typeof(IVmGrain) && method == nameof(IVmGrain.RemoveAsync))
        {
            return argument(0) is string from && from == host ? null : $"agent '{host}' may remove VM '{grainKey}' only from itself";
        }
        if (grainInterface == typeof(ICatalogGrain) && method == nameof(ICatalogGrain.ListAsync))
        {
            return null;
        }
        return $"agent '{host}' may not call {grainInterface.Name}.{method}";
    }
}
