using System.Reflection;
using System.Runtime.Loader;
using Fabric.Stacks;

namespace Fabric.Agent.Stacks;

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
    public static LoadedStack Load(string assemblyPath)
    {
        if (!File.Exists(assemblyPath))
        {
            throw new FileNotFoundException($"Stack plug-in '{assemblyPath}' does not exist.", assemblyPath);
        }
        var context = new StackLoadContext(assemblyPath);
        try
        {
            var assembly = context.LoadFromAssemblyPath(Path.GetFullPath(assemblyPath));
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
            return new LoadedStack(factory, context);
        }
        catch
        {
            context.Unload();
            throw;
        }
    }
}

/// <summary>One plug-in's collectible load context. Shared assemblies resolve to the default context.</summary>
internal sealed class StackLoadContext(string mainAssemblyPath) : AssemblyLoadContext($"stack:{Path.GetFileNameWithoutExtension(mainAssemblyPath)}", isCollectible: true)
{
    private readonly AssemblyDependencyResolver _resolver = new(mainAssemblyPath);

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
        return path is null ? null : LoadFromAssemblyPath(path);
    }

    protected override IntPtr LoadUnmanagedDll(string unmanagedDllName)
    {
        var path = _resolver.ResolveUnmanagedDllToPath(unmanagedDllName);
        return path is null ? IntPtr.Zero : LoadUnmanagedDllFromPath(path);
    }
}
