using System.CommandLine;
using Fabric.Programs;
using Fabric.Repository;

// fabric-repo: keys, packages and trust metadata of a stack repository (a local folder or an Azure Blob container).
const string RepoHelp = "the repository: a folder, or blob:CONTAINER for an Azure Blob container whose account's connection string is in FABRIC_BLOB_CONNECTION_STRING";

Option<string> Repo() => new("--repo") { Description = RepoHelp, Required = true, HelpName = "REPO" };
Option<string> KeyFile(string name, string role) => new(name) { Description = $"the {role} key (a file from 'fabric-repo keygen')", Required = true, HelpName = "KEY" };
Option<string[]> KeyFiles(string name, string role) => new(name) { Description = $"a {role} key (repeat for several)", Required = true, HelpName = "KEY", Arity = ArgumentArity.OneOrMore };
Option<int> Threshold() => new("--threshold") { Description = "how many root keys must sign", DefaultValueFactory = _ => 1, HelpName = "N" };
Option<double> ExpiresDays() => new("--expires-days") { Description = "days until targets, snapshot and timestamp expire", DefaultValueFactory = _ => 7, HelpName = "N" };
(Option<string> Targets, Option<string> Snapshot, Option<string> Timestamp) RoleKeys() =>
    (KeyFile("--targets-key", "targets"), KeyFile("--snapshot-key", "snapshot"), KeyFile("--timestamp-key", "timestamp"));

var root = new RootCommand("fabric-repo: keys, packages and trust metadata (TUF-style) of a signed stack repository. "
    + "Exit 0 on success, 1 when the repository or a package is refused (the reason is printed), 2 for bad arguments.");

{
    var output = new Option<string>("--out") { Description = "the private key file to write (mode 0600; the public key goes to FILE.pub)", Required = true, HelpName = "FILE" };
    var command = new Command("keygen", "Makes a P-256 signing key.") { output };
    command.SetAction(p => Keygen(p.GetValue(output)!));
    root.Subcommands.Add(command);
}
{
    var (repo, roots, threshold, (targets, snapshot, timestamp), expires) = (Repo(), KeyFiles("--root-key", "root"), Threshold(), RoleKeys(), ExpiresDays());
    var pin = new Option<string?>("--pin-out") { Description = "also write the new root.json here, to pin on agents", HelpName = "FILE" };
    var command = new Command("init", "Creates an empty repository: root v1, empty targets, snapshot and timestamp.") { repo, roots, threshold, targets, snapshot, timestamp, expires, pin };
    command.SetAction(p => Init(p.GetValue(repo)!, p.GetValue(roots)!, p.GetValue(threshold), p.GetValue(targets)!, p.GetValue(snapshot)!, p.GetValue(timestamp)!, p.GetValue(expires), p.GetValue(pin)));
    root.Subcommands.Add(command);
}
{
    var from = new Option<string>("--from") { Description = "the stack plug-in's build folder", Required = true, HelpName = "PLUGIN_DIR" };
    var id = new Option<string>("--id") { Description = "the stack id (e.g. fec)", Required = true };
    var version = new Option<string>("--version") { Description = "the package version", Required = true, HelpName = "X.Y.Z" };
    var purpose = new Option<string>("--purpose") { Description = "what the stack is for, in a few words", DefaultValueFactory = _ => "", HelpName = "TEXT" };
    var header = new Option<int>("--header-bytes") { Description = "profile: bytes the stack adds to each packet", HelpName = "N" };
    var delay = new Option<double>("--added-delay-ms") { Description = "profile: delay the stack adds", HelpName = "D" };
    var loss = new Option<double>("--tolerates-loss") { Description = "profile: loss rate the stack hides (0–1)", HelpName = "P" };
    var redundancy = new Option<double>("--redundancy") { Description = "profile: extra bytes sent per byte delivered", HelpName = "R" };
    var encrypts = new Option<string>("--encrypts") { Description = "profile: whether the stack encrypts", DefaultValueFactory = _ => "no", HelpName = "yes|no", CustomParser = CommandLineConventions.OneOf("yes", "no") };
    var family = new Option<string>("--family") { Description = "profile: the underlay address family", DefaultValueFactory = _ => "ipv4", HelpName = "ipv4|ipv6", CustomParser = CommandLineConventions.OneOf("ipv4", "ipv6") };
    var experimental = new Option<string>("--experimental")
    {
        Description = "publish for trial only: given only to VMs whose policy admits experimental stacks, and only by exploration (promote by packing a new version without it)",
        DefaultValueFactory = _ => "no", HelpName = "yes|no", CustomParser = CommandLineConventions.OneOf("yes", "no"),
    };
    var output = new Option<string>("--out") { Description = "the package file to write", Required = true, HelpName = "FILE" };
    var command = new Command("pack", "Packs a built stack plug-in and its manifest (profile) into a deterministic package.")
        { from, id, version, purpose, header, delay, loss, redundancy, encrypts, family, experimental, output };
    command.SetAction(p => Pack(p.GetValue(from)!, p.GetValue(id)!, p.GetValue(version)!, new StackProfile(p.GetValue(header), p.GetValue(redundancy), p.GetValue(delay),
        p.GetValue(loss), p.GetValue(purpose)!, p.GetValue(encrypts) == "yes", p.GetValue(family)!, p.GetValue(experimental) == "yes"), p.GetValue(output)!));
    root.Subcommands.Add(command);
}
{
    var (repo, (targets, snapshot, timestamp), expires) = (Repo(), RoleKeys(), ExpiresDays());
    var package = new Option<string>("--package") { Description = "a package from 'fabric-repo pack'", Required = true, HelpName = "FILE" };
    var command = new Command("publish", "Adds a package to the repository and re-signs targets, snapshot and timestamp.") { repo, package, targets, snapshot, timestamp, expires };
    command.SetAction(p => Publish(p.GetValue(repo)!, p.GetValue(package)!, p.GetValue(targets)!, p.GetValue(snapshot)!, p.GetValue(timestamp)!, p.GetValue(expires)));
    root.Subcommands.Add(command);
}
{
    var (repo, (targets, snapshot, timestamp), expires) = (Repo(), RoleKeys(), ExpiresDays());
    var id = new Option<string>("--id") { Description = "the stack id to withdraw", Required = true, HelpName = "ID" };
    var version = new Option<string?>("--version") { Description = "only this version (default: every version of the id)", HelpName = "VERSION" };
    var command = new Command("withdraw", "Removes a stack (every version, or one) from the signed targets: agents unbind and unload it, and the catalog drops it, at their next refresh.")
        { repo, id, version, targets, snapshot, timestamp, expires };
    command.SetAction(p => Withdraw(p.GetValue(repo)!, p.GetValue(id)!, p.GetValue(version), p.GetValue(targets)!, p.GetValue(snapshot)!, p.GetValue(timestamp)!, p.GetValue(expires)));
    root.Subcommands.Add(command);
}
{
    var (repo, (targets, snapshot, timestamp), expires) = (Repo(), RoleKeys(), ExpiresDays());
    var command = new Command("refresh", "Re-signs targets, snapshot and timestamp with new expiry dates.") { repo, targets, snapshot, timestamp, expires };
    command.SetAction(p => Refresh(p.GetValue(repo)!, p.GetValue(targets)!, p.GetValue(snapshot)!, p.GetValue(timestamp)!, p.GetValue(expires)));
    root.Subcommands.Add(command);
}
{
    var (repo, old, next, threshold, (targets, snapshot, timestamp)) = (Repo(), KeyFiles("--old-root-key", "current root"), KeyFiles("--new-root-key", "new root"), Threshold(), RoleKeys());
    var command = new Command("rotate-root", "Replaces the root keys: the new root is signed by the old keys and the new.") { repo, old, next, threshold, targets, snapshot, timestamp };
    command.SetAction(p => RotateRoot(p.GetValue(repo)!, p.GetValue(old)!, p.GetValue(next)!, p.GetValue(threshold), p.GetValue(targets)!, p.GetValue(snapshot)!, p.GetValue(timestamp)!));
    root.Subcommands.Add(command);
}
{
    var (repo, key) = (Repo(), KeyFile("--key", "root"));
    var file = new Option<string?>("--file") { Description = "the metadata file to sign (only root.json takes extra signatures)", HelpName = "NAME" };
    var command = new Command("sign", "Adds a root key's signature to root.json (root thresholds above one).") { repo, key, file };
    command.SetAction(p => Sign(p.GetValue(repo)!, p.GetValue(key)!, p.GetValue(file)));
    root.Subcommands.Add(command);
}
{
    var repo = Repo();
    var pinned = new Option<string>("--root") { Description = "the pinned root.json agents trust", Required = true, HelpName = "PINNED_ROOT" };
    var state = new Option<string?>("--state") { Description = "where the client keeps what it last trusted (default: a new temporary folder)", HelpName = "DIR" };
    var command = new Command("verify", "Checks the repository as an agent would: every signature, version, expiry and package digest.") { repo, pinned, state };
    command.SetAction(p => Verify(p.GetValue(repo)!, p.GetValue(pinned)!, p.GetValue(state)));
    root.Subcommands.Add(command);
}
{
    var repo = Repo();
    var command = new Command("list", "Lists the published packages.") { repo };
    command.SetAction(p => List(p.GetValue(repo)!));
    root.Subcommands.Add(command);
}
root.Subcommands.Add(Fabric.Repository.Cli.RolloutCommands.Create());

try
{
    return CommandLineConventions.Invoke(root, args);
}
catch (Exception e) when (e is TrustException or PackageException or RepositoryUnavailableException or IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"fabric-repo: {e.Message}");
    return 1;
}

static TimeSpan Expiry(double days) => TimeSpan.FromDays(days);

static List<SigningKey> Keys(string[] files) => [.. files.Select(SigningKey.Load)];

static int Keygen(string path)
{
    if (File.Exists(path))
    {
        throw new UsageException($"{path} exists; refusing to overwrite a key");
    }
    using var key = SigningKey.Generate();
    key.Save(path);
    Console.WriteLine($"{path}: key id {key.KeyId}");
    return 0;
}

static int Init(string repo, string[] rootKeys, int threshold, string targets, string snapshot, string timestamp, double expiresDays, string? pin)
{
    var roots = Keys(rootKeys);
    var store = RepositoryStores.Open(repo);
    new Publisher(store).Initialize(roots, threshold, SigningKey.Load(targets), SigningKey.Load(snapshot), SigningKey.Load(timestamp), TimeSpan.FromDays(365), Expiry(expiresDays));
    if (pin is not null)
    {
        AtomicFile.Write(pin, store.Read(Fabric.Repository.Publisher.Root)!);
    }
    Console.WriteLine($"{repo}: initialized (root v1, {roots.Count} root key(s), threshold {threshold}); pin {pin ?? "its root.json"} on agents");
    return 0;
}

static int Pack(string from, string id, string version, StackProfile profile, string output)
{
    var bytes = StackPackage.Pack(from, id, version, profile);
    AtomicFile.Write(output, bytes);
    Console.WriteLine($"{output}: {bytes.Length} bytes, sha256 {StackPackage.Sha256(bytes)}");
    return 0;
}

static int Publish(string repo, string packageFile, string targets, string snapshot, string timestamp, double expiresDays)
{
    var package = File.ReadAllBytes(packageFile);
    var info = new Publisher(RepositoryStores.Open(repo)).Publish(package, SigningKey.Load(targets), SigningKey.Load(snapshot), SigningKey.Load(timestamp), Expiry(expiresDays));
    Console.WriteLine($"published {info.Id} {info.Version} ({info.Length} bytes, sha256 {info.Sha256})");
    return 0;
}

static int Withdraw(string repo, string id, string? version, string targets, string snapshot, string timestamp, double expiresDays)
{
    var withdrawn = new Publisher(RepositoryStores.Open(repo)).Withdraw(id, version, SigningKey.Load(targets), SigningKey.Load(snapshot), SigningKey.Load(timestamp), Expiry(expiresDays));
    Console.WriteLine($"withdrew {string.Join(", ", withdrawn)}; re-signed targets, snapshot and timestamp");
    return 0;
}

static int Refresh(string repo, string targets, string snapshot, string timestamp, double expiresDays)
{
    new Publisher(RepositoryStores.Open(repo)).Refresh(SigningKey.Load(targets), SigningKey.Load(snapshot), SigningKey.Load(timestamp), Expiry(expiresDays));
    Console.WriteLine("re-signed targets, snapshot and timestamp");
    return 0;
}

static int RotateRoot(string repo, string[] oldKeys, string[] newKeys, int threshold, string targets, string snapshot, string timestamp)
{
    new Publisher(RepositoryStores.Open(repo)).RotateRoot(Keys(oldKeys), Keys(newKeys), threshold, SigningKey.Load(targets), SigningKey.Load(snapshot), SigningKey.Load(timestamp), TimeSpan.FromDays(365));
    Console.WriteLine("rotated the root");
    return 0;
}

static int Sign(string repo, string key, string? file)
{
    var store = RepositoryStores.Open(repo);
    if (file is not null && file != Fabric.Repository.Publisher.Root)
    {
        throw new UsageException($"--file {file}: only {Fabric.Repository.Publisher.Root} takes extra signatures (the other roles have threshold 1)");
    }
    var current = store.Get(Fabric.Repository.Publisher.Root) ?? throw new TrustException($"{store.Location} has no root.json.");
    var signed = SignedFile.AddSignatures(current.Bytes, [SigningKey.Load(key)]);
    if (!store.TryWrite(Fabric.Repository.Publisher.Root, signed, current.ETag))
    {
        throw new TrustException("root.json changed while signing; sign again.");
    }
    var version = SignedFile.ReadUnverified<RootMetadata>(signed, "root.json", "root").Version;
    store.Write(Fabric.Repository.Publisher.VersionedRoot(version), signed);
    Console.WriteLine($"signed root.json v{version}");
    return 0;
}

static int Verify(string repo, string pinnedRoot, string? state)
{
    state ??= Directory.CreateTempSubdirectory("fabric-repo-verify-").FullName;
    var client = new TrustClient(RepositoryStores.Open(repo), state, pinnedRoot);
    var targets = client.Refresh();
    foreach (var name in targets.Targets.Keys)
    {
        client.FetchPackage(name);
        Console.WriteLine($"ok {name}");
    }
    Console.WriteLine($"verified targets v{targets.Version} ({targets.Targets.Count} package(s)), expires {targets.Expires:u}");
    return 0;
}

static int List(string repo)
{
    var store = RepositoryStores.Open(repo);
    var head = new Publisher(store).Head();
    var root = SignedFile.ReadUnverified<RootMetadata>(store.Read(Fabric.Repository.Publisher.Root) ?? throw new TrustException($"{store.Location} has no root.json."), "root.json", "root");
    Console.WriteLine($"{store.Location}: root v{root.Version}; targets v{head.Targets.Version}, expires {head.Targets.Expires:u}; signer {root.Roles["targets"].KeyIds[0][..16]}…");
    foreach (var (name, info) in head.Targets.Targets)
    {
        Console.WriteLine($"{name,-24} {info.Length,9} B  sha256 {info.Sha256[..16]}…  {(info.Profile.Experimental ? "[experimental] " : "")}{info.Profile.Purpose}");
    }
    return 0;
}

