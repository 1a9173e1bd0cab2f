using System.Buffers.Binary;
using System.Net.Sockets;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Fabric.Stacks;
using Fabric.Stacks.Loading;

namespace Fabric.Repository;

/// <summary>
/// What a stack costs and tolerates, as the selector reads it before the fleet has data: bytes it adds per packet, the
/// share of extra traffic it sends (redundancy), delay it adds, the loss rate it hides, whether it encrypts (only such
/// stacks serve confidential VMs) and the underlay family it runs on. Experimental: the version is published for trial
/// only — the selector gives it only to VMs whose policy admits experimental stacks, and only by exploration; promoting
/// it is publishing a version without the mark (signed like any other).
/// </summary>
public sealed record StackProfile(int HeaderBytes = 0, double Redundancy = 0, double AddedDelayMs = 0, double ToleratesLoss = 0, string Purpose = "",
    bool Encrypts = false, string Family = "ipv4", bool Experimental = false);

/// <summary>A package's manifest. <paramref name="Declares"/>: what the factory declared when it was packed (null in packages made before it was recorded).</summary>
public sealed record PackageManifest(string Id, string Version, int ContractVersion, string EntryAssembly, string EntryType, StackProfile Profile, string MinAgentVersion,
    StackDeclaration? Declares = null);

/// <summary>
/// What a plug-in's factory declares (its <see cref="StackDescription"/>), read when the package was made and signed with
/// it, so a host can register the version without running any of its code: it loads the plug-in only for a binding (a
/// host a rollout never reaches never loads it), and refuses it then if the factory declares anything else. The fields
/// are <see cref="StackDescription"/>'s; the underlay family is "ipv4" or "ipv6".
/// </summary>
public sealed record StackDeclaration(string Id, string Version, string Family, int MaxStackFieldBytes, int MaxExpansionBytes, bool Encrypts)
{
    /// <summary>The most bytes a stack may add to a packet (fields or expansion): more than any underlay datagram holds is not a declaration.</summary>
    public const int MaxBytes = 65_535;

    public static StackDeclaration Of(StackDescription description) => new(description.Id, description.Version,
        description.UnderlayFamily switch { AddressFamily.InterNetworkV6 => "ipv6", AddressFamily.InterNetwork => "ipv4", var other => other.ToString() },
        description.MaxStackFieldBytes, description.MaxExpansionBytes, description.Encrypts);

    /// <summary>The description the factory declared.</summary>
    public StackDescription ToDescription() => new(Id, Version, Family == "ipv6" ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork, MaxStackFieldBytes, MaxExpansionBytes)
    {
        Encrypts = Encrypts,
    };

    /// <summary>What is wrong with it (null: nothing).</summary>
    public string? Problem() =>
        string.IsNullOrEmpty(Id) || string.IsNullOrEmpty(Version) ? "declares no id or no version"
        : Family is not ("ipv4" or "ipv6") ? $"declares underlay family '{Family}' (ipv4 or ipv6)"
        : MaxStackFieldBytes is < 0 or > MaxBytes || MaxExpansionBytes is < 0 or > MaxBytes
            ? $"declares {MaxStackFieldBytes} stack field and {MaxExpansionBytes} expansion bytes (each 0 to {MaxBytes})"
        : null;
}

/// <summary>
/// A stack package: <c>manifest.json</c> and the plug-in's files in one deterministic archive (same input, same bytes,
/// same SHA-256). Layout: magic "FSPK1\n", then per entry sorted by path: path length (u16 BE), UTF-8 path, content
/// length (u32 BE), content.
/// </summary>
public static class StackPackage
{
    public const string ManifestName = "manifest.json";

    /// <summary>The stack contract version agents built from this tree load (Fabric.Stacks.StackDescription.ContractVersion).</summary>
    public const int SupportedContractVersion = 1;
    private static readonly byte[] Magic = "FSPK1\n"u8.ToArray();
    private static readonly string[] SharedAssemblies = ["Fabric.Stacks.Abstractions.dll", "Fabric.Wire.dll"];

    internal static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        WriteIndented = false,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Packs a plug-in's build folder; throws naming what is wrong with it.</summary>
    public static byte[] Pack(string pluginDirectory, string id, string version, StackProfile profile, string minAgentVersion = "0.1.0")
    {
        if (!Directory.Exists(pluginDirectory))
        {
            throw new PackageException($"Plug-in folder '{pluginDirectory}' does not exist.");
        }
        if (!SemanticVersion.TryParse(version, out _))
        {
            throw new PackageException($"Version '{version}' is not a semantic version (MAJOR.MINOR.PATCH).");
        }
        var files = Directory.EnumerateFiles(pluginDirectory).Where(f => f.EndsWith(".dll", StringComparison.Ordinal) || f.EndsWith(".deps.json", StringComparison.Ordinal))
            .Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        foreach (var shared in SharedAssemblies)
        {
            if (files.Contains(shared))
            {
                throw new PackageException($"'{pluginDirectory}' contains {shared}: the contract must come from the agent; reference it with Private=false and ExcludeAssets=runtime.");
            }
        }
        var (entryAssembly, entryType) = FindFactory(pluginDirectory, files);
        var entries = new SortedDictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var file in files)
        {
            entries[file] = File.ReadAllBytes(Path.Combine(pluginDirectory, file));
        }
        // Loaded as agents load it: only these bytes (a file changed since it was read is refused), no file beside them.
        var declaration = Declaration(Path.Combine(pluginDirectory, entryAssembly), entries.ToDictionary(e => e.Key, e => Sha256(e.Value), StringComparer.Ordinal));
        var manifest = new PackageManifest(id, version, SupportedContractVersion, entryAssembly, entryType, profile, minAgentVersion, declaration);
        entries[ManifestName] = JsonSerializer.SerializeToUtf8Bytes(manifest, Json);
        using var output = new MemoryStream();
        output.Write(Magic);
        Span<byte> header = stackalloc byte[4];
        foreach (var (path, content) in entries)
        {
            var name = Encoding.UTF8.GetBytes(path);
            BinaryPrimitives.WriteUInt16BigEndian(header, (ushort)name.Length);
            output.Write(header[..2]);
            output.Write(name);
            BinaryPrimitives.WriteUInt32BigEndian(header, (uint)content.Length);
            output.Write(header);
            output.Write(content);
        }
        return output.ToArray();
    }

    /// <summary>Reads a package's entries; throws <see cref="PackageException"/> on any inconsistency.</summary>
    public static (PackageManifest Manifest, IReadOnlyDictionary<string, byte[]> Files) Read(ReadOnlySpan<byte> package)
    {
        if (!package.StartsWith(Magic))
        {
            throw new PackageException("Not a Fabric stack package (bad magic).");
        }
        var at = Magic.Length;
        var files = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        while (at < package.Length)
        {
            if (at + 2 > package.Length)
            {
                throw new PackageException($"Package truncated at byte {at} (entry name length).");
            }
            var nameLength = BinaryPrimitives.ReadUInt16BigEndian(package[at..]);
            at += 2;
            if (at + nameLength + 4 > package.Length)
            {
                throw new PackageException($"Package truncated at byte {at} (entry name).");
            }
            var name = Encoding.UTF8.GetString(package.Slice(at, nameLength));
            at += nameLength;
            var length = (int)BinaryPrimitives.ReadUInt32BigEndian(package[at..]);
            at += 4;
            if (length < 0 || at + length > package.Length)
            {
                throw new PackageException($"Package entry '{name}' claims {length} bytes beyond the end.");
            }
            if (name.Length == 0 || name.Contains('/', StringComparison.Ordinal) || name.Contains('\\', StringComparison.Ordinal) || name is "." or ".." || !files.TryAdd(name, package.Slice(at, length).ToArray()))
            {
                throw new PackageException($"Package entry name '{name}' is invalid or repeated.");
            }
            at += length;
        }
        if (!files.TryGetValue(ManifestName, out var manifestBytes))
        {
            throw new PackageException("Package has no manifest.json.");
        }
        PackageManifest manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<PackageManifest>(manifestBytes, Json) ?? throw new PackageException("manifest.json is empty.");
        }
        catch (JsonException e)
        {
            throw new PackageException($"manifest.json: {e.Message}");
        }
        if (!files.ContainsKey(manifest.EntryAssembly))
        {
            throw new PackageException($"manifest.json: entryAssembly '{manifest.EntryAssembly}' is not in the package.");
        }
        if (string.IsNullOrWhiteSpace(manifest.EntryType))
        {
            throw new PackageException("manifest.json: entryType is missing.");
        }
        if (manifest.ContractVersion != SupportedContractVersion)
        {
            throw new PackageException($"manifest.json: contract version {manifest.ContractVersion} is not supported (this agent speaks {SupportedContractVersion}).");
        }
        if (manifest.Declares?.Problem() is { } problem)
        {
            throw new PackageException($"manifest.json: the factory's declaration {problem}.");
        }
        return (manifest, files);
    }

    /// <summary>Lower-case hex SHA-256.</summary>
    public static string Sha256(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>The version of the agent this build is, which a package's minAgentVersion is checked against.</summary>
    public const string AgentVersion = "0.1.0";

    /// <summary>
    /// Writes a package's files into <paramref name="directory"/> through a temporary folder renamed at the end: never
    /// half-written. A package that needs a newer agent than this one (its manifest's minAgentVersion) is refused. A folder
    /// unpacked before is used only if it holds exactly the package's files, byte for byte; otherwise (altered or damaged
    /// on disk since) it is unpacked again from the verified package and <see cref="UnpackedPackage.Repaired"/> says so.
    /// The digests returned are the package's, so whoever loads the files can check what it loads against them.
    /// </summary>
    public static UnpackedPackage Extract(ReadOnlySpan<byte> package, string directory)
    {
        var (manifest, files) = Read(package);
        if (!SemanticVersion.TryParse(manifest.MinAgentVersion, out var needed))
        {
            throw new PackageException($"manifest.json: minAgentVersion '{manifest.MinAgentVersion}' is not MAJOR.MINOR.PATCH.");
        }
        if (SemanticVersion.TryParse(AgentVersion, out var agent) && needed.CompareTo(agent) > 0)
        {
            throw new PackageException($"{manifest.Id} {manifest.Version} needs agent {manifest.MinAgentVersion} or newer; this agent is {AgentVersion}.");
        }
        var digests = files.ToDictionary(f => f.Key, f => Sha256(f.Value), StringComparer.Ordinal);
        var entry = Path.Combine(directory, manifest.EntryAssembly);
        if (Directory.Exists(directory))
        {
            if (Differs(directory, digests) is not { } difference)
            {
                return new UnpackedPackage(entry, digests, Repaired: null) { Declares = manifest.Declares };
            }
            Directory.Delete(directory, recursive: true);
            Write(files, directory);
            return new UnpackedPackage(entry, digests, difference) { Declares = manifest.Declares };
        }
        Write(files, directory);
        return new UnpackedPackage(entry, digests, Repaired: null) { Declares = manifest.Declares };
    }

    /// <summary>What in <paramref name="directory"/> is not exactly the package's files, by their <paramref name="digests"/> (null: nothing).</summary>
    public static string? Differs(string directory, IReadOnlyDictionary<string, string> digests)
    {
        var present = Directory.EnumerateFileSystemEntries(directory).Select(Path.GetFileName).OfType<string>().ToHashSet(StringComparer.Ordinal);
        if (present.Except(digests.Keys).Order(StringComparer.Ordinal).FirstOrDefault() is { } extra)
        {
            return $"'{extra}' is not in the signed package";
        }
        foreach (var (name, sha) in digests.OrderBy(d => d.Key, StringComparer.Ordinal))
        {
            if (!present.Contains(name))
            {
                return $"'{name}' is missing";
            }
            if (Sha256(File.ReadAllBytes(Path.Combine(directory, name))) != sha)
            {
                return $"'{name}' does not match the signed package";
            }
        }
        return null;
    }

    private static void Write(IReadOnlyDictionary<string, byte[]> files, string directory)
    {
        var temporary = directory + ".partial-" + Environment.ProcessId;
        if (Directory.Exists(temporary))
        {
            Directory.Delete(temporary, recursive: true);
        }
        Directory.CreateDirectory(temporary);
        foreach (var (name, content) in files)
        {
            File.WriteAllBytes(Path.Combine(temporary, name), content);
        }
        Directory.Move(temporary, directory);
    }

    /// <summary>
    /// What the plug-in's factory declares: the plug-in is loaded here, where it is packed (its publisher's build), into a
    /// collectible context that is let go at once, so the hosts need not load it to know.
    /// </summary>
    private static StackDeclaration Declaration(string entryAssembly, IReadOnlyDictionary<string, string> digests)
    {
        LoadedStack loaded;
        try
        {
            loaded = StackLoader.Load(entryAssembly, digests);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new PackageException($"'{entryAssembly}' could not be loaded to read what its factory declares: {e.GetType().Name}: {e.Message}");
        }
        var declaration = StackDeclaration.Of(loaded.Description);
        if (loaded.Context.Target is System.Runtime.Loader.AssemblyLoadContext context)
        {
            context.Unload();
        }
        return declaration.Problem() is { } problem ? throw new PackageException($"'{entryAssembly}': its factory {problem}.") : declaration;
    }

    /// <summary>Finds the one public class implementing Fabric.Stacks.IStackFactory by reading metadata (nothing is loaded).</summary>
    private static (string Assembly, string Type) FindFactory(string directory, List<string> files)
    {
        var found = new List<(string, string)>();
        foreach (var file in files.Where(f => f.EndsWith(".dll", StringComparison.Ordinal)))
        {
            using var stream = File.OpenRead(Path.Combine(directory, file));
            using var pe = new PEReader(stream);
            if (!pe.HasMetadata)
            {
                continue;
            }
            var reader = pe.GetMetadataReader();
            foreach (var handle in reader.TypeDefinitions)
            {
                var type = reader.GetTypeDefinition(handle);
                if ((type.Attributes & System.Reflection.TypeAttributes.Public) == 0 || (type.Attributes & System.Reflection.TypeAttributes.Abstract) != 0)
                {
                    continue;
                }
                foreach (var implementation in type.GetInterfaceImplementations())
                {
                    var iface = reader.GetInterfaceImplementation(implementation).Interface;
                    if (iface.Kind == HandleKind.TypeReference)
                    {
                        var reference = reader.GetTypeReference((TypeReferenceHandle)iface);
                        if (reader.GetString(reference.Name) == "IStackFactory" && reader.GetString(reference.Namespace) == "Fabric.Stacks")
                        {
                            found.Add((file, $"{reader.GetString(type.Namespace)}.{reader.GetString(type.Name)}"));
                        }
                    }
                }
            }
        }
        return found.Count == 1 ? found[0]
            : throw new PackageException($"'{directory}' must have exactly one public IStackFactory class; it has {found.Count}.");
    }
}

/// <summary>
/// A package unpacked on disk: its entry assembly and the SHA-256 of each of its files, taken from the verified package's
/// bytes (never from the disk); <paramref name="Repaired"/> says what was wrong with an earlier unpacking that was
/// replaced (null: nothing was).
/// </summary>
public sealed record UnpackedPackage(string EntryPath, IReadOnlyDictionary<string, string> Digests, string? Repaired)
{
    /// <summary>What the factory declared when the package was made (null: the package does not say).</summary>
    public StackDeclaration? Declares { get; init; }
}

/// <summary>A package or its manifest is unusable; the message says why.</summary>
public sealed class PackageException(string message) : Exception(message);

/// <summary>MAJOR.MINOR.PATCH[-pre] compared by number.</summary>
public readonly record struct SemanticVersion(int Major, int Minor, int Patch, string Prerelease) : IComparable<SemanticVersion>
{
    /// <summary>Orders two version strings: by number where both parse, a parsed one above one that does not, else ordinally.</summary>
    public static int Compare(string a, string b)
    {
        var (okA, okB) = (TryParse(a, out var va), TryParse(b, out var vb));
        return okA && okB ? va.CompareTo(vb) : okA != okB ? (okA ? 1 : -1) : string.CompareOrdinal(a, b);
    }

    public static bool TryParse(string? text, out SemanticVersion version)
    {
        version = default;
        if (text is null)
        {
            return false;
        }
        var dash = text.IndexOf('-', StringComparison.Ordinal);
        var core = dash < 0 ? text : text[..dash];
        var parts = core.Split('.');
        if (parts.Length != 3 || !int.TryParse(parts[0], out var major) || !int.TryParse(parts[1], out var minor) || !int.TryParse(parts[2], out var patch)
            || major < 0 || minor < 0 || patch < 0)
        {
            return false;
        }
        version = new SemanticVersion(major, minor, patch, dash < 0 ? "" : text[(dash + 1)..]);
        return true;
    }

    public int CompareTo(SemanticVersion other)
    {
        var c = (Major, Minor, Patch).CompareTo((other.Major, other.Minor, other.Patch));
        if (c != 0)
        {
            return c;
        }
        // A pre-release sorts before its release.
        return (Prerelease.Length == 0, other.Prerelease.Length == 0) switch
        {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => -1,
            _ => string.CompareOrdinal(Prerelease, other.Prerelease),
        };
    }

    public override string ToString() => Prerelease.Length == 0 ? $"{Major}.{Minor}.{Patch}" : $"{Major}.{Minor}.{Patch}-{Prerelease}";

    public static bool operator <(SemanticVersion left, SemanticVersion right) => left.CompareTo(right) < 0;

    public static bool operator >(SemanticVersion left, SemanticVersion right) => left.CompareTo(right) > 0;

    public static bool operator <=(SemanticVersion left, SemanticVersion right) => left.CompareTo(right) <= 0;

    public static bool operator >=(SemanticVersion left, SemanticVersion right) => left.CompareTo(right) >= 0;
}
