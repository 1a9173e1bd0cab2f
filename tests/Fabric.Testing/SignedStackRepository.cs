using Fabric.Repository;

namespace Fabric.Testing;

/// <summary>
/// A signed stack repository in a folder, as its publisher sees it: root, targets, snapshot and timestamp keys of its
/// own, kept to publish and withdraw more, and the root.json agents and silos pin. Deleted with its folder when this
/// made the folder.
/// </summary>
public sealed class SignedStackRepository : IDisposable
{
    private readonly SigningKey _root = SigningKey.Generate();
    private readonly bool _ownsFolder;

    /// <param name="folder">Where it lives (repo/ and root.json inside); null: a new temporary folder, deleted on dispose.</param>
    public SignedStackRepository(string? folder = null)
    {
        _ownsFolder = folder is null;
        Folder = folder ?? Directory.CreateTempSubdirectory("fabric-repository-").FullName;
        Store = new LocalFolderStore(System.IO.Path.Combine(Folder, "repo"));
        Publisher = new Publisher(Store);
        Publisher.Initialize([_root], 1, Targets, Snapshot, Timestamp, TimeSpan.FromDays(365), TimeSpan.FromDays(7));
        Root = System.IO.Path.Combine(Folder, "root.json");
        File.WriteAllBytes(Root, Store.Read(Publisher.Root)!);
    }

    public string Folder { get; }

    public LocalFolderStore Store { get; }

    public Publisher Publisher { get; }

    /// <summary>The repository's folder (what an agent's and a silo's <c>repository.path</c> name).</summary>
    public string Path => Store.Root;

    /// <summary>The root.json to pin.</summary>
    public string Root { get; }

    public SigningKey Targets { get; } = SigningKey.Generate();

    public SigningKey Snapshot { get; } = SigningKey.Generate();

    public SigningKey Timestamp { get; } = SigningKey.Generate();

    /// <summary>Packs the built plug-in <paramref name="project"/> (a <see cref="StackPlugins"/> name) as <paramref name="id"/>
    /// <paramref name="version"/> with <paramref name="profile"/> and publishes it.</summary>
    public void Publish(string project, string id, string version, StackProfile profile) =>
        Publisher.Publish(StackPackage.Pack(System.IO.Path.GetDirectoryName(StackPlugins.PathOf(project))!, id, version, profile), Targets, Snapshot, Timestamp,
            TimeSpan.FromDays(7));

    /// <summary>Withdraws every version of <paramref name="id"/>, or only <paramref name="version"/>, from the signed targets.</summary>
    public void Withdraw(string id, string? version = null) => Publisher.Withdraw(id, version, Targets, Snapshot, Timestamp, TimeSpan.FromDays(7));

    public void Dispose()
    {
        foreach (var key in new[] { _root, Targets, Snapshot, Timestamp })
        {
            key.Dispose();
        }
        if (_ownsFolder)
        {
            Directory.Delete(Folder, recursive: true);
        }
    }
}
