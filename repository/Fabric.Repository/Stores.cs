using System.Security.Cryptography;

namespace Fabric.Repository;

/// <summary>A file read from a store with the tag a conditional write must name to replace exactly this content.</summary>
public sealed record StoredFile(byte[] Bytes, string ETag);

/// <summary>
/// Where a repository's files live: a local folder (the embedded default) or an Azure Blob container. Names are relative
/// paths with '/'. Every member throws <see cref="RepositoryUnavailableException"/> when the store cannot be reached, so
/// callers can tell "not there" (null, false) from "could not ask".
/// </summary>
public interface IRepositoryStore
{
    /// <summary>Where this store is, for messages (never a secret).</summary>
    string Location { get; }

    /// <summary>The file and its tag, or null when it does not exist.</summary>
    StoredFile? Get(string name);

    /// <summary>
    /// At most the first <paramref name="limit"/> + 1 bytes of the file (null when it does not exist): a reader that
    /// knows how large a file may be gets a file that is larger without fetching or holding all of it.
    /// </summary>
    byte[]? ReadPrefix(string name, int limit);

    /// <summary>Writes a file whole, unconditionally: readers see the old bytes or the new, never a mix.</summary>
    void Write(string name, byte[] bytes);

    /// <summary>
    /// Writes a file whole only if it still has the tag <paramref name="ifMatch"/> (or, when that is null, only if it does
    /// not exist yet). False when another writer got there first; nothing was written then.
    /// </summary>
    bool TryWrite(string name, byte[] bytes, string? ifMatch);

    /// <summary>Every file name under a folder name ("" for the root), in ordinal order.</summary>
    IEnumerable<string> List(string folder);

    /// <summary>Deletes a file; nothing happens when it does not exist. (Retention of logs; trust metadata is never deleted.)</summary>
    void Delete(string name);
}

/// <summary>Reading helpers shared by every store.</summary>
public static class RepositoryStoreExtensions
{
    /// <summary>The file's bytes, or null when it does not exist.</summary>
    public static byte[]? Read(this IRepositoryStore store, string name) => store.Get(name)?.Bytes;
}

/// <summary>The store could not be reached or answered with an error that is not about the file: nothing was changed by the call.</summary>
public sealed class RepositoryUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// A repository in a local folder. Writes go to a temporary file renamed over the target; a conditional write holds an
/// exclusive lock file while it compares and renames, so two publishers on one machine serialize. The tag is the
/// content's SHA-256.
/// </summary>
public sealed class LocalFolderStore(string root) : IRepositoryStore
{
    private const string LockName = ".lock";

    public string Root { get; } = Path.GetFullPath(root);

    public string Location => Root;

    public StoredFile? Get(string name)
    {
        var path = PathOf(name);
        try
        {
            var bytes = File.ReadAllBytes(path);
            return new StoredFile(bytes, Tag(bytes));
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
    }

    public byte[]? ReadPrefix(string name, int limit)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(limit);
        ArgumentOutOfRangeException.ThrowIfEqual(limit, int.MaxValue);
        try
        {
            using var file = File.OpenRead(PathOf(name));
            var buffer = new byte[(int)Math.Min(file.Length, (long)limit + 1)];
            file.ReadExactly(buffer);
            return buffer;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
    }

    public void Write(string name, byte[] bytes) => AtomicFile.Write(PathOf(name), bytes);

    public void Delete(string name)
    {
        var path = PathOf(name);
        if (File.Exists(path))
        {
            File.Delete(path);
        }
    }

    public bool TryWrite(string name, byte[] bytes, string? ifMatch)
    {
        var path = PathOf(name);
        Directory.CreateDirectory(Root);
        using var gate = AcquireLock();
        var current = File.Exists(path) ? Tag(File.ReadAllBytes(path)) : null;
        if (current != ifMatch)
        {
            return false;
        }
        AtomicFile.Write(path, bytes);
        return true;
    }

    public IEnumerable<string> List(string folder)
    {
        var dir = PathOf(folder);
        return Directory.Exists(dir)
            ? Directory.EnumerateFiles(dir).Select(f => Path.GetRelativePath(Root, f).Replace('\\', '/')).Where(f => f != LockName).Order(StringComparer.Ordinal)
            : [];
    }

    private static string Tag(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    private FileStream AcquireLock()
    {
        // FileShare.None on a lock file is an exclusive lock between processes; a holder that dies releases it.
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                return new FileStream(Path.Combine(Root, LockName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (attempt < 500)
            {
                Thread.Sleep(10);
            }
        }
    }

    private string PathOf(string name)
    {
        var path = Path.GetFullPath(Path.Combine(Root, name));
        return path.StartsWith(Root, StringComparison.Ordinal) ? path : throw new ArgumentException($"'{name}' leaves the repository folder.", nameof(name));
    }
}

/// <summary>Whole-file writes through a temporary file and a rename (atomic on one file system).</summary>
public static class AtomicFile
{
    public static void Write(string path, byte[] bytes)
    {
        path = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var temporary = $"{path}.tmp-{Environment.ProcessId}-{Environment.CurrentManagedThreadId}";
        File.WriteAllBytes(temporary, bytes);
        File.Move(temporary, path, overwrite: true);
    }
}
