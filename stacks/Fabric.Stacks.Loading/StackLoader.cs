using System.Reflection;
using System.Runtime.Loader;
using System.Security.Cryptography;

namespace Fabric.Stacks.Loading;

/// <summary>A stack plug-in loaded into its own collectible context.</summary>
public sealed class LoadedStack
{
    internal LoadedStack(IStackFactory factory, StackLoadContext context)
    {
        Factory = factory;
        Context = new WeakReference(context);
        Description = factory.Description;
    }

    /// <summary>The plug-in's factory.</summary>
    public IStackFactory Factory { get; }

    /// <summary>What the factory says the stack is.</summary>
    public StackDescription Description { get; }

    /// <summary>
    /// The version's key in the stack host that loaded it (<c>id@version</c>): what slots and bindings name. The version is
    /// the one its signed target publishes it as, for a signed plug-in (the repository is the authority on versions), else
    /// the one its factory declares. Empty until a host has set it.
    /// </summary>
    public string Key { get; internal set; } = "";

    /// <summary>The load context, weakly: it must be collectable once the stack is released.</summary>
    public WeakReference Context { get; }
}

/// <summary>
/// Loads stack plug-ins: each into its own collectible <see cref="AssemblyLoadContext"/>, with the contract
/// (Fabric.Stacks.Abstractions, Fabric.Wire) and the framework shared from the default context so their types keep one
/// identity. The factory is the one public, non-abstract <see cref="IStackFactory"/> in the plug-in assembly.
/// </summary>
public static class StackLoader
{
    /// <summary>Loads the plug-in whose main assembly is <paramref name="assemblyPath"/>; throws naming the file and the problem.</summary>
    /// <param name="assemblyPath">The plug-in's entry assembly.</param>
    /// <param name="digests">
    /// For a plug-in unpacked from a signed package: the SHA-256 of each of its files, from the verified package. Every
    /// assembly of the plug-in is then read once, checked against its digest and loaded from the bytes checked, so what
    /// runs is what was signed even if the files on disk change after they were verified (between a load and the next
    /// after an idle unload, say). A file not in the package is never loaded. Null: a plug-in the operator configured by
    /// path, loaded from its files as they are.
    /// </param>
    public static LoadedStack Load(string assemblyPath, IReadOnlyDictionary<string, string>? digests = null)
    {
        if (!File.Exists(assemblyPath))
        {
            throw new FileNotFoundException($"Stack plug-in '{assemblyPath}' does not exist.", assemblyPath);
        }
        var context = new StackLoadContext(assemblyPath, digests);
        try
        {
            var assembly = digests is null
                ? context.LoadFromAssemblyPath(Path.GetFullPath(assemblyPath))
                : context.LoadChecked(Path.GetFullPath(assemblyPath));
            var factories = assembly.GetExportedTypes()
                .Where(t => t is { IsClass: true, IsAbstract: false } && typeof(IStackFactory).IsAssignableFrom(t))
                .ToList();
            if (factories.Count != 1)
            {
                throw new InvalidOperationException(
                    $"Stack plug-in '{assemblyPath}' must have exactly one public IStackFactory class; it has {factories.Count}"
                    + (factories.Count == 0 && assembly.GetTypes().Any(t => t.GetInterfaces().Any(i => i.FullName == typeof(IStackFactory).FullName))
                        ? " (it implements a different copy of Fabric.Stacks.Abstractions: do not ship the contract inside the plug-in)." : "."));
            }
            if (Activator.CreateInstance(factories[0]) is not IStackFactory factory)
            {
                throw new InvalidOperationException($"Stack plug-in '{assemblyPath}': {factories[0].FullName} could not be created.");
            }
            try
            {
                return new LoadedStack(factory, context);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidOperationException($"Stack plug-in '{assemblyPath}': its factory's description threw {e.GetType().Name}: {e.Message}", e);
            }
        }
        catch
        {
            context.Unload();
            throw;
        }
    }
}

/// <summary>
/// One plug-in's collectible load context. Shared assemblies resolve to the default context; with digests (a signed
/// plug-in) the plug-in's own assemblies are loaded only from checked bytes of files in its package.
/// </summary>
internal sealed class StackLoadContext(string mainAssemblyPath, IReadOnlyDictionary<string, string>? digests) : AssemblyLoadContext($"stack:{Path.GetFileNameWithoutExtension(mainAssemblyPath)}", isCollectible: true)
{
    private readonly AssemblyDependencyResolver _resolver = new(mainAssemblyPath);
    private readonly string _folder = Path.GetDirectoryName(Path.GetFullPath(mainAssemblyPath))!;

    /// <summary>Reads <paramref name="path"/> once, checks it against the signed package and loads those bytes.</summary>
    public Assembly LoadChecked(string path)
    {
        var name = Path.GetFileName(path);
        if (digests is null || Path.GetDirectoryName(path) != _folder || !digests.TryGetValue(name, out var signed))
        {
            throw new InvalidDataException($"'{path}' is not a file of the stack's signed package; it is not loaded.");
        }
        var bytes = File.ReadAllBytes(path);
        var actual = Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (actual != signed)
        {
            throw new InvalidDataException($"'{path}' does not match the stack's signed package (SHA-256 {actual[..16]}…, signed {signed[..16]}…): the unpacked plug-in changed on disk; it is not loaded.");
        }
        using var stream = new MemoryStream(bytes, writable: false);
        return LoadFromStream(stream);
    }

    protected override Assembly? Load(AssemblyName assemblyName)
    {
        // Anything the host can load (the contract, Fabric.Wire, the framework) is shared from the default context,
        // so a plug-in's IStackFactory is the host's IStackFactory. Only the plug-in's private dependencies load here.
        try
        {
            return Default.LoadFromAssemblyName(assemblyName);
        }
        catch (FileNotFoundException)
        {
        }
        var path = _resolver.ResolveAssemblyToPath(assemblyName);
        return path is null ? null : digests is null ? LoadFromAssemblyPath(path) : LoadChecked(Path.GetFullPath(path));
    }

    protected override IntPtr LoadUnmanagedDll(string unmanagedDllName)
    {
        if (digests is not null)
        {
            // A package carries only managed assemblies and their deps.json (StackPackage.Pack): nothing native of the plug-in's own.
            return IntPtr.Zero;
        }
        var path = _resolver.ResolveUnmanagedDllToPath(unmanagedDllName);
        return path is null ? IntPtr.Zero : LoadUnmanagedDllFromPath(path);
    }
}
