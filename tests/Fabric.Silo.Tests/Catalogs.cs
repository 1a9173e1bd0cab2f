using System.Collections.Immutable;

namespace Fabric.Silo.Tests;

/// <summary>A catalog like the built-in stacks' manifests declare them.</summary>
internal static class Catalogs
{
    public static readonly StackInfo StdIPv4 = new("std-ipv4", "1.0.0", "ipv4", 16, 0, 0, 0, false, "default; clean paths");
    public static readonly StackInfo StdIPv6 = new("std-ipv6", "1.0.0", "ipv6", 16, 0, 0, 0, false, "default; clean IPv6 paths");
    public static readonly StackInfo Fec = new("fec", "1.0.0", "ipv4", 24, 0.25, 4, 0.05, false, "low latency on lossy paths");
    public static readonly StackInfo ArqLowLat = new("arq-lowlat", "1.0.0", "ipv4", 28, 0.02, 2, 0.1, false, "low latency under loss");
    public static readonly StackInfo ArqBulk = new("arq-bulk", "1.0.0", "ipv4", 28, 0.03, 10, 0.1, false, "throughput on long lossy paths");
    public static readonly StackInfo Secure = new("secure", "1.0.0", "ipv4", 40, 0, 0, 0, true, "sensitive tenants");

    public static readonly ImmutableArray<StackInfo> All = [StdIPv4, StdIPv6, Fec, ArqLowLat, ArqBulk, Secure];

    public static readonly IReadOnlySet<string> HostStacks = All.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);

    public static PathConditions Path(double rttMs, double loss, double mbps = 200, double jitterMs = 0.5) => new(rttMs, jitterMs, loss, mbps, DateTimeOffset.UnixEpoch, CapacityMbps: mbps);

    public static Policy Policy(string workload = "general", string security = "standard", string[]? allow = null, string[]? deny = null, string? pin = null, double explore = 0) =>
        new(workload, security, "ipv4", [.. allow ?? []], [.. deny ?? []], pin, explore);
}
