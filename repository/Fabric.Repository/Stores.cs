namespace Fabric.Repository;

/// <summary>Where a repository's files live (a local folder; Azure Blob storage later). Names are relative paths.</summary>
public interface IRepositoryStore
{
    /// <summary>The file's bytes, or null when it does not exist.</summary>
    byte[]? Read(string name);

    /// <summary>Writes a file whole: readers see the old bytes or the new, never a mix.</summary>
    void Write(string name, byte[] bytes);

    /// <summary>Every file name under a folder name ("" for the root).</summary>
    IEnumerable<string> List(string folder);
}

/// <summary>A repository in a local folder (the embedded default). Writes go to a temporary file renamed over the target.</summary>
public sealed class LocalFolderStore(string root) : IRepositoryStore
{
    public string Root { get; } = Path.GetFullPath(root);

    public byte[]? Read(string name)
    {
        var path = PathOf(name);
        return File.Exists(path) ? File.ReadAllBytes(path) : null;
    }

    public void Write(string name, byte[] bytes) => AtomicFile.Write(PathOf(name), bytes);

    public IEnumerable<string> List(string folder)
    {
        var dir = PathOf(folder);
        return Directory.Exists(dir) ? Directory.EnumerateFiles(dir).Select(f => Path.GetRelativePath(Root, f)).Order(StringComparer.Ordinal) : [];
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
