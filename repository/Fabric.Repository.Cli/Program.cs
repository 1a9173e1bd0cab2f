using System.Globalization;
using Fabric.Repository;

// fabric-repo: keys, packages and trust metadata of a stack repository (a local folder or an Azure Blob container).
const string Usage = """
usage:
  fabric-repo keygen --out FILE                      P-256 private key (FILE, mode 0600) and FILE.pub
  fabric-repo init --repo DIR --root-key K [--root-key K ...] [--threshold N] --targets-key K --snapshot-key K --timestamp-key K [--pin-out FILE]
  fabric-repo pack --from PLUGIN_DIR --id ID --version X.Y.Z [--purpose TEXT] [--header-bytes N] [--added-delay-ms D]
                   [--tolerates-loss P] [--redundancy R] [--encrypts yes|no] [--family ipv4|ipv6] --out FILE
  fabric-repo publish --repo DIR --package FILE --targets-key K --snapshot-key K --timestamp-key K [--expires-days N]
  fabric-repo refresh --repo DIR --targets-key K --snapshot-key K --timestamp-key K [--expires-days N]
  fabric-repo rotate-root --repo DIR --old-root-key K [...] --new-root-key K [...] [--threshold N] --targets-key K --snapshot-key K --timestamp-key K
  fabric-repo sign --repo DIR --key K                 add a root key's signature to root.json (root thresholds above one)
  fabric-repo verify --repo DIR --root PINNED_ROOT [--state DIR]
  fabric-repo list --repo DIR
REPO is a folder, or blob:CONTAINER for an Azure Blob container whose account's connection string is in the
environment variable FABRIC_BLOB_CONNECTION_STRING. (DIR above is a REPO.)
Exit 0 on success, 1 when the repository or a package is refused (the reason is printed), 2 for bad arguments.
""";

try
{
    var (command, options) = Parse(args);
    return command switch
    {
        "keygen" => Keygen(options),
        "init" => Init(options),
        "pack" => Pack(options),
        "publish" => Publish(options),
        "refresh" => Refresh(options),
        "rotate-root" => RotateRoot(options),
        "sign" => Sign(options),
        "verify" => Verify(options),
        "list" => List(options),
        "help" or "--help" or "-h" => Help(0),
        _ => Help(2),
    };
}
catch (UsageException e)
{
    Console.Error.WriteLine($"fabric-repo: {e.Message}");
    return 2;
}
catch (Exception e) when (e is TrustException or PackageException or RepositoryUnavailableException or IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"fabric-repo: {e.Message}");
    return 1;
}

static int Help(int code)
{
    (code == 0 ? Console.Out : Console.Error).Write(Usage);
    return code;
}

static (string Command, Dictionary<string, List<string>> Options) Parse(string[] args)
{
    if (args.Length == 0)
    {
        return ("", []);
    }
    var options = new Dictionary<string, List<string>>(StringComparer.Ordinal);
    for (var i = 1; i < args.Length; i++)
    {
        if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
        {
            throw new UsageException($"'{args[i]}' must be --option VALUE");
        }
        if (!options.TryGetValue(args[i], out var values))
        {
            options[args[i]] = values = [];
        }
        values.Add(args[++i]);
    }
    return (args[0], options);
}

static string One(Dictionary<string, List<string>> o, string name) =>
    o.TryGetValue(name, out var v) ? v.Count == 1 ? v[0] : throw new UsageException($"{name} given {v.Count} times") : throw new UsageException($"{name} is required");

static string? Maybe(Dictionary<string, List<string>> o, string name) => o.TryGetValue(name, out var v) ? v[^1] : null;

static double Number(Dictionary<string, List<string>> o, string name, double fallback) =>
    Maybe(o, name) is { } text ? double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) ? value : throw new UsageException($"{name}: '{text}' is not a number") : fallback;

static SigningKey Key(Dictionary<string, List<string>> o, string name) => SigningKey.Load(One(o, name));

static List<SigningKey> Keys(Dictionary<string, List<string>> o, string name) =>
    o.TryGetValue(name, out var v) ? [.. v.Select(SigningKey.Load)] : throw new UsageException($"{name} is required");

static TimeSpan Expiry(Dictionary<string, List<string>> o) => TimeSpan.FromDays(Number(o, "--expires-days", 7));

static IRepositoryStore Store(Dictionary<string, List<string>> o) => RepositoryStores.Open(One(o, "--repo"));

static Publisher Publisher(Dictionary<string, List<string>> o) => new(Store(o));

static int Keygen(Dictionary<string, List<string>> o)
{
    var path = One(o, "--out");
    if (File.Exists(path))
    {
        throw new UsageException($"{path} exists; refusing to overwrite a key");
    }
    using var key = SigningKey.Generate();
    key.Save(path);
    Console.WriteLine($"{path}: key id {key.KeyId}");
    return 0;
}

static int Init(Dictionary<string, List<string>> o)
{
    var roots = Keys(o, "--root-key");
    var threshold = (int)Number(o, "--threshold", 1);
    Publisher(o).Initialize(roots, threshold, Key(o, "--targets-key"), Key(o, "--snapshot-key"), Key(o, "--timestamp-key"), TimeSpan.FromDays(365), Expiry(o));
    var pin = Maybe(o, "--pin-out");
    if (pin is not null)
    {
        AtomicFile.Write(pin, Store(o).Read(Fabric.Repository.Publisher.Root)!);
    }
    Console.WriteLine($"{One(o, "--repo")}: initialized (root v1, {roots.Count} root key(s), threshold {threshold}); pin {pin ?? "its root.json"} on agents");
    return 0;
}

static int Pack(Dictionary<string, List<string>> o)
{
    var family = Maybe(o, "--family") ?? "ipv4";
    if (family is not ("ipv4" or "ipv6"))
    {
        throw new UsageException($"--family: '{family}' is not ipv4 or ipv6");
    }
    var encrypts = Maybe(o, "--encrypts") switch
    {
        null or "no" => false,
        "yes" => true,
        var other => throw new UsageException($"--encrypts: '{other}' is not yes or no"),
    };
    var profile = new StackProfile((int)Number(o, "--header-bytes", 0), Number(o, "--redundancy", 0), Number(o, "--added-delay-ms", 0), Number(o, "--tolerates-loss", 0),
        Maybe(o, "--purpose") ?? "", encrypts, family);
    var bytes = StackPackage.Pack(One(o, "--from"), One(o, "--id"), One(o, "--version"), profile);
    var output = One(o, "--out");
    AtomicFile.Write(output, bytes);
    Console.WriteLine($"{output}: {bytes.Length} bytes, sha256 {StackPackage.Sha256(bytes)}");
    return 0;
}

static int Publish(Dictionary<string, List<string>> o)
{
    var package = File.ReadAllBytes(One(o, "--package"));
    var info = Publisher(o).Publish(package, Key(o, "--targets-key"), Key(o, "--snapshot-key"), Key(o, "--timestamp-key"), Expiry(o));
    Console.WriteLine($"published {info.Id} {info.Version} ({info.Length} bytes, sha256 {info.Sha256})");
    return 0;
}

static int Refresh(Dictionary<string, List<string>> o)
{
    Publisher(o).Refresh(Key(o, "--targets-key"), Key(o, "--snapshot-key"), Key(o, "--timestamp-key"), Expiry(o));
    Console.WriteLine("re-signed targets, snapshot and timestamp");
    return 0;
}

static int RotateRoot(Dictionary<string, List<string>> o)
{
    var next = Keys(o, "--new-root-key");
    Publisher(o).RotateRoot(Keys(o, "--old-root-key"), next, (int)Number(o, "--threshold", 1), Key(o, "--targets-key"), Key(o, "--snapshot-key"), Key(o, "--timestamp-key"), TimeSpan.FromDays(365));
    Console.WriteLine("rotated the root");
    return 0;
}

static int Sign(Dictionary<string, List<string>> o)
{
    var store = Store(o);
    if (Maybe(o, "--file") is { } file && file != Fabric.Repository.Publisher.Root)
    {
        throw new UsageException($"--file {file}: only {Fabric.Repository.Publisher.Root} takes extra signatures (the other roles have threshold 1)");
    }
    var current = store.Get(Fabric.Repository.Publisher.Root) ?? throw new TrustException($"{store.Location} has no root.json.");
    var signed = SignedFile.AddSignatures(current.Bytes, [Key(o, "--key")]);
    if (!store.TryWrite(Fabric.Repository.Publisher.Root, signed, current.ETag))
    {
        throw new TrustException("root.json changed while signing; sign again.");
    }
    var version = SignedFile.ReadUnverified<RootMetadata>(signed, "root.json", "root").Version;
    store.Write(Fabric.Repository.Publisher.VersionedRoot(version), signed);
    Console.WriteLine($"signed root.json v{version}");
    return 0;
}

static int Verify(Dictionary<string, List<string>> o)
{
    var state = Maybe(o, "--state") ?? Directory.CreateTempSubdirectory("fabric-repo-verify-").FullName;
    var client = new TrustClient(Store(o), state, One(o, "--root"));
    var targets = client.Refresh();
    foreach (var name in targets.Targets.Keys)
    {
        client.FetchPackage(name);
        Console.WriteLine($"ok {name}");
    }
    Console.WriteLine($"verified targets v{targets.Version} ({targets.Targets.Count} package(s)), expires {targets.Expires:u}");
    return 0;
}

static int List(Dictionary<string, List<string>> o)
{
    var store = Store(o);
    var head = new Publisher(store).Head();
    var root = SignedFile.ReadUnverified<RootMetadata>(store.Read(Fabric.Repository.Publisher.Root) ?? throw new TrustException($"{store.Location} has no root.json."), "root.json", "root");
    Console.WriteLine($"{store.Location}: root v{root.Version}; targets v{head.Targets.Version}, expires {head.Targets.Expires:u}; signer {root.Roles["targets"].KeyIds[0][..16]}…");
    foreach (var (name, info) in head.Targets.Targets)
    {
        Console.WriteLine($"{name,-24} {info.Length,9} B  sha256 {info.Sha256[..16]}…  {info.Profile.Purpose}");
    }
    return 0;
}

internal sealed class UsageException(string message) : Exception(message);
