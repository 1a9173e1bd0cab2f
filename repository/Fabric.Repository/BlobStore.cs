using Azure;
using Azure.Core;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;

namespace Fabric.Repository;

/// <summary>
/// A repository in an Azure Blob container (or Azurite). Conditional writes map onto the service's own preconditions:
/// If-Match with the blob's ETag to replace exactly what was read, If-None-Match: * to create only, so the check and the
/// write are one atomic step on the server and two publishers can never both win.
/// </summary>
public sealed class BlobStore : IRepositoryStore
{
    /// <summary>The environment variable that holds the storage connection string for "blob:CONTAINER" stores.</summary>
    public const string ConnectionVariable = "FABRIC_BLOB_CONNECTION_STRING";

    private readonly BlobContainerClient _container;
    private bool _containerExists;

    public BlobStore(BlobContainerClient container)
    {
        _container = container;
        Location = $"blob container '{container.Name}' at {container.Uri.GetLeftPart(UriPartial.Path)}";
    }

    /// <summary>A store over a connection string; retries are few and short so an unreachable account is reported in seconds.</summary>
    public static BlobStore Connect(string connectionString, string container)
    {
        var options = new BlobClientOptions
        {
            Retry = { MaxRetries = 2, Delay = TimeSpan.FromMilliseconds(200), Mode = RetryMode.Fixed, NetworkTimeout = TimeSpan.FromSeconds(10) },
        };
        try
        {
            return new BlobStore(new BlobContainerClient(connectionString, container, options));
        }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            throw new RepositoryUnavailableException($"The blob connection string is not valid ({e.Message}).", e);
        }
    }

    public string Location { get; }

    public StoredFile? Get(string name) => Call(name, () =>
    {
        try
        {
            var result = _container.GetBlobClient(name).DownloadContent();
            return new StoredFile(result.Value.Content.ToArray(), result.Value.Details.ETag.ToString());
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
    });

    public byte[]? ReadPrefix(string name, int limit) => Call(name, () =>
    {
        ArgumentOutOfRangeException.ThrowIfNegative(limit);
        ArgumentOutOfRangeException.ThrowIfEqual(limit, int.MaxValue);
        try
        {
            // A range request, so the service sends no more than asked however large the blob is; and read as a stream
            // that stops one byte beyond the limit, so an endpoint that ignores the range costs no more either.
            using var result = _container.GetBlobClient(name).DownloadStreaming(new BlobDownloadOptions { Range = new HttpRange(0, (long)limit + 1) }).Value;
            using var kept = new MemoryStream();
            var chunk = new byte[81920];
            while (kept.Length <= limit && result.Content.Read(chunk, 0, (int)Math.Min(chunk.Length, limit + 1 - kept.Length)) is var n and > 0)
            {
                kept.Write(chunk, 0, n);
            }
            return kept.ToArray();
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
        catch (RequestFailedException e) when (e.Status == 416)
        {
            // A range starting at 0 is unsatisfiable only for an empty blob.
            return [];
        }
    });

    public void Write(string name, byte[] bytes) => Upload(name, bytes, conditions: null);

    public void Delete(string name) => Call(name, () => _container.GetBlobClient(name).DeleteIfExists().Value);

    public bool TryWrite(string name, byte[] bytes, string? ifMatch)
    {
        try
        {
            Upload(name, bytes, ifMatch is null ? new BlobRequestConditions { IfNoneMatch = ETag.All } : new BlobRequestConditions { IfMatch = new ETag(ifMatch) });
            return true;
        }
        catch (RepositoryUnavailableException e) when (e.InnerException is RequestFailedException { Status: 412 or 409 })
        {
            // 412: the ETag no longer matches; 409: If-None-Match found an existing blob. Another writer got there first.
            return false;
        }
    }

    public IEnumerable<string> List(string folder)
    {
        var prefix = folder.Length == 0 ? "" : folder.TrimEnd('/') + "/";
        return Call(folder, () =>
        {
            try
            {
                // Direct children only, like a folder listing.
                return _container.GetBlobsByHierarchy(BlobTraits.None, BlobStates.None, delimiter: "/", prefix: prefix)
                    .Where(b => b.IsBlob).Select(b => b.Blob.Name).Order(StringComparer.Ordinal).ToList();
            }
            catch (RequestFailedException e) when (e.Status == 404)
            {
                return [];
            }
        });
    }

    private void Upload(string name, byte[] bytes, BlobRequestConditions? conditions) => Call(name, () =>
    {
        if (!_containerExists)
        {
            _container.CreateIfNotExists();
            _containerExists = true;
        }
        _container.GetBlobClient(name).Upload(new BinaryData(bytes), new BlobUploadOptions { Conditions = conditions });
        return true;
    });

    private T Call<T>(string name, Func<T> call)
    {
        try
        {
            return call();
        }
        catch (RequestFailedException e)
        {
            // Status 0 means no HTTP answer at all (refused, DNS, timeout).
            var what = e.Status == 0 ? "could not be reached" : $"answered {e.Status} {e.ErrorCode}";
            throw new RepositoryUnavailableException($"{name}: {Location} {what} ({FirstLine(e.Message)}).", e);
        }
        catch (AggregateException e)
        {
            throw new RepositoryUnavailableException($"{name}: {Location} could not be reached ({FirstLine(e.InnerExceptions[^1].Message)}).", e);
        }
    }

    private static string FirstLine(string message) => message.Split('\n')[0].Trim();
}

/// <summary>Opens the store a configuration names: "blob:CONTAINER" (connection string from the environment) or a folder path.</summary>
public static class RepositoryStores
{
    public const string BlobPrefix = "blob:";

    /// <summary>Opens a store; throws <see cref="RepositoryUnavailableException"/> naming what is missing.</summary>
    public static IRepositoryStore Open(string spec, Func<string, string?>? environment = null)
    {
        if (!spec.StartsWith(BlobPrefix, StringComparison.Ordinal))
        {
            return new LocalFolderStore(spec);
        }
        var container = spec[BlobPrefix.Length..];
        // Azure's container naming rule: 3-63 of lower-case letters, digits and single dashes.
        if (container.Length is < 3 or > 63 || !container.All(c => c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '-') || container.Contains("--", StringComparison.Ordinal))
        {
            throw new RepositoryUnavailableException($"'{spec}': a container name is 3-63 lower-case letters, digits and single dashes.");
        }
        var connection = (environment ?? Environment.GetEnvironmentVariable)(BlobStore.ConnectionVariable);
        if (string.IsNullOrWhiteSpace(connection))
        {
            throw new RepositoryUnavailableException($"'{spec}' needs the storage account's connection string in {BlobStore.ConnectionVariable}.");
        }
        return BlobStore.Connect(connection, container);
    }
}
