using Fabric.Repository;

namespace Fabric.Embedded;

/// <summary>
/// The embedded default's stack repository: a local folder holding the built-in stacks, signed by development keys
/// generated on first run and kept in the data folder (mode 0600, never in the source tree). The repository itself is
/// rebuilt at every start from the current build, so a rebuilt plug-in is never refused as a changed package; the keys
/// and so the trusted root stay the same.
/// </summary>
public sealed record DevelopmentRepository(string Path, string TrustRoot, IReadOnlyList<TargetInfo> Published, string TargetsKeyId)
{
    private static readonly string[] Roles = ["root", "targets", "snapshot", "timestamp"];

    /// <summary>Creates the keys if missing, then a fresh repository under <paramref name="runDirectory"/> with every built-in stack.</summary>
    public static DevelopmentRepository Create(string keyDirectory, string runDirectory, string sourceRoot, string configuration)
    {
        var stacks = BuiltInStacks.Load(sourceRoot);
        Directory.CreateDirectory(keyDirectory);
        File.SetUnixFileMode(keyDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var keys = Roles.ToDictionary(role => role, role =>
        {
            var path = System.IO.Path.Combine(keyDirectory, role + ".pem");
            if (File.Exists(path))
            {
                return SigningKey.Load(path);
            }
            var key = SigningKey.Generate();
            key.Save(path);
            return key;
        });
        try
        {
            var repository = System.IO.Path.Combine(runDirectory, "repository");
            if (Directory.Exists(repository))
            {
                Directory.Delete(repository, recursive: true);
            }
            var store = new LocalFolderStore(repository);
            var publisher = new Publisher(store);
            var expiry = TimeSpan.FromDays(365);
            publisher.Initialize([keys["root"]], 1, keys["targets"], keys["snapshot"], keys["timestamp"], expiry, expiry);
            var published = stacks.Select(s => publisher.Publish(
                StackPackage.Pack(BuiltInStacks.PluginDirectory(sourceRoot, s, configuration), s.Id, s.Version, s.Profile),
                keys["targets"], keys["snapshot"], keys["timestamp"], expiry)).ToList();
            var root = System.IO.Path.Combine(runDirectory, "root.json");
            File.WriteAllBytes(root, store.Read(Publisher.Root)!);
            return new DevelopmentRepository(repository, root, published, keys["targets"].KeyId);
        }
        finally
        {
            foreach (var key in keys.Values)
            {
                key.Dispose();
            }
        }
    }
}
