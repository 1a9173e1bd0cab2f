using System.Collections.Immutable;
using Fabric.Repository;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo;

/// <summary>Where the silo reads the published stacks: a repository (folder or blob:CONTAINER), the root it pins, its trust state.</summary>
public sealed record CatalogSource(string Path, string TrustRoot, string StateDirectory, int RefreshSeconds = 60);

/// <summary>
/// Feeds the catalog grain from the signed repository: the trust metadata is verified exactly as agents verify it
/// (TrustClient), and each stack id's newest version is published with the profile its manifest declares and the list of
/// every version the targets publish (agents run up to three of them side by side). A repository
/// that cannot be reached leaves the catalog as it was (and says so in the log); it is tried again at the next refresh.
/// </summary>
public sealed partial class CatalogSync(CatalogSource source, IGrainFactory grains, ILogger<CatalogSync> logger) : BackgroundService
{
    /// <summary>One verification and publication; returns the stacks published (what the catalog withdrew is logged by the caller).</summary>
    public static async Task<IReadOnlyList<StackInfo>> SyncOnceAsync(CatalogSource source, IGrainFactory grains) => (await SyncAsync(source, grains)).Published;

    /// <summary>One verification and publication: the stacks published, and the ids the catalog withdrew because the signed targets no longer publish them.</summary>
    public static async Task<(IReadOnlyList<StackInfo> Published, ImmutableArray<string> Withdrawn)> SyncAsync(CatalogSource source, IGrainFactory grains)
    {
        var client = new TrustClient(RepositoryStores.Open(source.Path), System.IO.Path.Combine(source.StateDirectory, "trust"), source.TrustRoot);
        var targets = client.Refresh();
        var versions = targets.Targets.Values.GroupBy(t => t.Id, StringComparer.Ordinal).ToDictionary(g => g.Key,
            g => g.Select(t => t.Version).OrderByDescending(v => SemanticVersion.TryParse(v, out var parsed) ? parsed : default).ThenByDescending(v => v, StringComparer.Ordinal).ToImmutableArray(),
            StringComparer.Ordinal);
        var newest = targets.Newest().Select(n => n.Value)
            .Select(t => InfoOf(t.Id, t.Version, t.Profile) with { PublishedVersions = versions[t.Id] })
            .ToList();
        var withdrawn = await grains.GetGrain<ICatalogGrain>(ICatalogGrain.Key).SyncAsync([.. newest], targets.Version, SourceOf(source));
        return (newest, withdrawn);
    }

    /// <summary>What the selector knows of a stack version: the profile its manifest declares.</summary>
    public static StackInfo InfoOf(string id, string version, StackProfile profile) => new(id, version, profile.Family, profile.HeaderBytes,
        profile.Redundancy, profile.AddedDelayMs, profile.ToleratesLoss, profile.Encrypts, profile.Purpose, profile.Experimental);

    /// <summary>The repository as a silo knows it: where it is and the root it pins (a repository initialized again under
    /// new root keys starts its versions over, and is another source).</summary>
    public static string SourceOf(CatalogSource source) =>
        $"{source.Path}#{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(source.TrustRoot)))[..16]}";

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // Off the host's start-up path: verification does blocking I/O.
        await Task.Yield();
        // What was last said to be published: a refresh that finds the same stacks says nothing (every 5 s from each silo,
        // the same line crowded everything else out of a test's log tail).
        string? published = null;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                var (stacks, withdrawn) = await SyncAsync(source, grains);
                var now = string.Join(", ", stacks.Select(s => $"{s.Id}@{s.Version}").Order(StringComparer.Ordinal));
                if (now != published)
                {
                    Synced(logger, stacks.Count, source.Path, now);
                    published = now;
                }
                foreach (var id in withdrawn)
                {
                    Withdrawn(logger, id, source.Path);
                }
            }
            catch (Exception e) when (e is TrustException or PackageException or RepositoryUnavailableException or IOException or OrleansException)
            {
                SyncFailed(logger, source.Path, e.Message);
                published = null;
            }
            await Task.Delay(TimeSpan.FromSeconds(source.RefreshSeconds), stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    [LoggerMessage(1, LogLevel.Information, "Catalog: {Count} stack(s) published from {Repository}: {Stacks}")]
    private static partial void Synced(ILogger logger, int count, string repository, string stacks);

    [LoggerMessage(3, LogLevel.Warning, "Catalog: stack {StackId} withdrawn (the signed targets of {Repository} no longer publish it); VMs on it move at their next decision")]
    private static partial void Withdrawn(ILogger logger, string stackId, string repository);

    [LoggerMessage(2, LogLevel.Warning, "Catalog: repository {Repository} not read, the catalog stays as it was: {Reason}")]
    private static partial void SyncFailed(ILogger logger, string repository, string reason);
}
