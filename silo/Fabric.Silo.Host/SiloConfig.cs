using System.Net;
using System.Text.Json;
using System.Text.Json.Serialization;
using Fabric.Silo.Learning;

namespace Fabric.Silo.Host;

/// <summary>
/// fabric-silo's configuration file (JSON, comments allowed); every field has the embedded default. Storage and
/// clustering: "memory"/"localhost" (one machine), "azure-table" (a cluster; the account's connection string in the
/// environment variable FABRIC_TABLE_CONNECTION_STRING) or "redis" (a cluster; the server's StackExchange.Redis
/// configuration string in FABRIC_REDIS_CONNECTION_STRING).
/// </summary>
public sealed record SiloConfig(
    string ClusterId = "fabric",
    string ServiceId = "fabric",
    string Clustering = "localhost",
    string Storage = "memory",
    int SiloPort = 11111,
    int GatewayPort = 30000,
    string? AdvertisedAddress = null,
    string HealthListen = "127.0.0.1:8081",
    string? MetricsListen = null,
    double SelectorMargin = 0.10,
    int SelectorSustainMilliseconds = 1000,
    CatalogSource? Repository = null,
    LearningOptions? Learning = null,
    SecurityConfig? Security = null,
    int ShutdownSeconds = 60,
    int ProbeSeconds = 2,
    int MissedProbes = 3,
    bool Ephemeral = false,
    int RolloutBakeSeconds = 600,
    int RolloutMinPaths = 8)
{
    public const string ConnectionVariable = "FABRIC_TABLE_CONNECTION_STRING";

    /// <summary>Where clustering or storage "redis" finds the server (a StackExchange.Redis configuration string, e.g. "10.0.0.9:6379,password=…").</summary>
    public const string RedisVariable = "FABRIC_REDIS_CONNECTION_STRING";

    /// <summary>Whether the silos share a membership table (any clustering but one machine's).</summary>
    public bool Clustered => Clustering is "azure-table" or "redis";

    /// <summary>Overrides advertisedAddress (a pod's address comes from its environment, not from a shared file).</summary>
    public const string AdvertisedAddressVariable = "FABRIC_ADVERTISED_ADDRESS";

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    /// <summary>
    /// Reads <paramref name="path"/> (null: the embedded default) and checks it, naming every problem. A configuration file
    /// on memory storage is refused unless it says <c>"ephemeral": true</c> or the silo is started with
    /// <paramref name="ephemeral"/> (<c>--ephemeral</c>): a silo on memory storage forgets operators' policies when it stops.
    /// </summary>
    public static SiloConfig Load(string? path, bool ephemeral = false)
    {
        SiloConfig config;
        if (path is null)
        {
            config = new SiloConfig();
        }
        else
        {
            try
            {
                config = JsonSerializer.Deserialize<SiloConfig>(File.ReadAllText(path), Json) ?? throw new FormatException($"{path}: empty");
            }
            catch (JsonException e)
            {
                throw new FormatException($"{path}: {e.Message}");
            }
        }
        if (Environment.GetEnvironmentVariable(AdvertisedAddressVariable) is { Length: > 0 } advertised)
        {
            config = config with { AdvertisedAddress = advertised };
        }
        config = ephemeral ? config with { Ephemeral = true } : config;
        var problems = config.Validate().ToList();
        if (path is not null && config.Storage == "memory" && !config.Ephemeral)
        {
            problems.Insert(0, "storage: memory forgets every policy, decision and catalog entry when the silo stops; set storage to azure-table or redis, "
                + "or say \"ephemeral\": true (or start with --ephemeral) to run without durable storage");
        }
        return problems.Count == 0 ? config : throw new FormatException($"{path ?? "defaults"}: {string.Join("; ", problems)}");
    }

    public IEnumerable<string> Validate()
    {
        if (Clustering is not ("localhost" or "azure-table" or "redis"))
        {
            yield return $"clustering: '{Clustering}' is not localhost, azure-table or redis";
        }
        if (Storage is not ("memory" or "azure-table" or "redis"))
        {
            yield return $"storage: '{Storage}' is not memory, azure-table or redis";
        }
        if (Clustering == "redis" || Storage == "redis")
        {
            var redis = Environment.GetEnvironmentVariable(RedisVariable);
            if (string.IsNullOrWhiteSpace(redis))
            {
                yield return $"clustering/storage redis: set {RedisVariable} to the Redis server's configuration string (HOST:PORT[,password=…])";
            }
            else
            {
                string? problem = null;
                try
                {
                    if (StackExchange.Redis.ConfigurationOptions.Parse(redis).EndPoints.Count == 0)
                    {
                        problem = "names no server (HOST:PORT)";
                    }
                }
                catch (Exception e) when (e is ArgumentException or FormatException)
                {
                    problem = e.Message;
                }
                if (problem is not null)
                {
                    yield return $"{RedisVariable}: {problem}";
                }
            }
        }
        if ((Clustering == "azure-table" || Storage == "azure-table") && string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(ConnectionVariable)))
        {
            yield return $"clustering/storage azure-table: set {ConnectionVariable} to the storage account's connection string";
        }
        foreach (var (name, port) in new[] { ("siloPort", SiloPort), ("gatewayPort", GatewayPort) })
        {
            if (port is < 1 or > 65535)
            {
                yield return $"{name}: {port} is outside 1..65535";
            }
        }
        if (!IPEndPoint.TryParse(HealthListen, out _))
        {
            yield return $"healthListen: '{HealthListen}' is not ADDRESS:PORT";
        }
        if (MetricsListen is not null && !IPEndPoint.TryParse(MetricsListen, out _))
        {
            yield return $"metricsListen: '{MetricsListen}' is not ADDRESS:PORT";
        }
        if (AdvertisedAddress is not null && !IPAddress.TryParse(AdvertisedAddress, out _))
        {
            yield return $"advertisedAddress: '{AdvertisedAddress}' is not an IP address";
        }
        if (ProbeSeconds is < 1 or > 60)
        {
            yield return $"probeSeconds: {ProbeSeconds} is outside 1..60";
        }
        if (MissedProbes is < 2 or > 10)
        {
            yield return $"missedProbes: {MissedProbes} is outside 2..10";
        }
        if (ShutdownSeconds is < 5 or > 600)
        {
            yield return $"shutdownSeconds: {ShutdownSeconds} is outside 5..600";
        }
        if (SelectorMargin is < 0 or > 1)
        {
            yield return $"selectorMargin: {SelectorMargin} is outside 0..1";
        }
        if (SelectorSustainMilliseconds is < 0 or > 600_000)
        {
            yield return $"selectorSustainMilliseconds: {SelectorSustainMilliseconds} is outside 0..600000";
        }
        if (Repository is not null && !File.Exists(Repository.TrustRoot))
        {
            yield return $"repository.trustRoot: '{Repository.TrustRoot}' does not exist";
        }
        if (RolloutBakeSeconds is < 10 or > 7 * 86_400)
        {
            yield return $"rolloutBakeSeconds: {RolloutBakeSeconds} is outside 10..604800 (how long each ring of a stack version's rollout bakes)";
        }
        if (RolloutMinPaths is < 3 or > 100_000)
        {
            yield return $"rolloutMinPaths: {RolloutMinPaths} is outside 3..100000 (the VM paths each version needs before the utility gate judges)";
        }
        if (Learning is null && Clustered)
        {
            yield return $"learning.store: required with {Clustering} clustering (every silo must read the same outcome log and models: blob:CONTAINER, or a folder they share)";
        }
        if (Learning is { } learning)
        {
            if (string.IsNullOrWhiteSpace(learning.Store))
            {
                yield return "learning.store: required (a folder, or blob:CONTAINER)";
            }
            if (learning.RetentionDays is < 1 or > 3650)
            {
                yield return $"learning.retentionDays: {learning.RetentionDays} is outside 1..3650";
            }
            if (learning.TrainEverySeconds is < 0 or > 86_400)
            {
                yield return $"learning.trainEverySeconds: {learning.TrainEverySeconds} is outside 0..86400";
            }
            if (!(learning.TrainingShare is > 0 and <= 1))
            {
                yield return $"learning.trainingShare: {learning.TrainingShare} is outside (0, 1] (the most of one core scheduled trainings take; 1: no limit)";
            }
            if (learning.MinSupport is < 1 or > 1_000_000)
            {
                yield return $"learning.minSupport: {learning.MinSupport} is outside 1..1000000";
            }
            if (learning.MinOutcomes is < 10 or > 10_000_000)
            {
                yield return $"learning.minOutcomes: {learning.MinOutcomes} is outside 10..10000000";
            }
        }
        if (Security is { } security)
        {
            foreach (var (field, path) in new[] { ("certificate", security.Certificate), ("key", security.Key), ("authority", security.Authority) })
            {
                if (string.IsNullOrWhiteSpace(path))
                {
                    yield return $"security.{field}: required (PEM files: the silo's certificate, its key, the fleet's authority)";
                }
                else if (!File.Exists(path))
                {
                    yield return $"security.{field}: '{path}' does not exist";
                }
            }
            if (security.RevocationList is { } list && !File.Exists(list))
            {
                yield return $"security.revocationList: '{list}' does not exist (the authority's CRL: fabric-pki revoke writes it)";
            }
        }
        else if (AdvertisedAddress is not null && (!IPAddress.TryParse(AdvertisedAddress, out var advertised) || !IPAddress.IsLoopback(advertised)))
        {
            yield return "security: required when advertisedAddress is not loopback (the silo's certificate, key and the fleet's authority): "
                + "without it any process that reaches the gateway could act as any host";
        }
        if (Repository is { RefreshSeconds: < 1 or > 86_400 })
        {
            yield return $"repository.refreshSeconds: {Repository.RefreshSeconds} is outside 1..86400";
        }
    }
}

/// <summary>The control channel's trust (PEM files): the silo's certificate from the fleet's authority (OU=silo), its key, and the authority's certificate.</summary>
/// <param name="Certificate">The silo's certificate (PEM, OU=silo).</param>
/// <param name="Key">Its private key (PEM).</param>
/// <param name="Authority">The fleet's authority's certificate (PEM).</param>
/// <param name="RevocationList">The fleet authority's certificate revocation list (X.509 CRL file, PEM or DER; <c>fabric-pki revoke</c>), read again whenever it changes; null: none.</param>
public sealed record SecurityConfig(string Certificate, string Key, string Authority, string? RevocationList = null);
