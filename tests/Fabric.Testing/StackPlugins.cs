namespace Fabric.Testing;

/// <summary>Finds the built stack plug-ins (stacks/NAME/bin/CONFIGURATION/net10.0/NAME.dll) of this checkout.</summary>
/// <remarks>Test projects reference the plug-in projects with ReferenceOutputAssembly=false, so they are built first but
/// never copied next to the tests: they are loaded from their own folder, as the agent loads them.</remarks>
public static class StackPlugins
{
    public const string StdIPv4 = "Fabric.Stacks.StdIPv4";
    public const string StdIPv6 = "Fabric.Stacks.StdIPv6";
    public const string Fec = "Fabric.Stacks.Fec";
    public const string Secure = "Fabric.Stacks.Secure";
    public const string ArqLowLat = "Fabric.Stacks.ArqLowLat";
    public const string ArqBulk = "Fabric.Stacks.ArqBulk";
    public const string SwapTest = "Fabric.Stacks.SwapTest";
    public const string Faulty = "Fabric.Stacks.Faulty";
    public const string FaultySealed = "Fabric.Stacks.FaultySealed";
    public const string FecNoParity = "Fabric.Stacks.FecNoParity";

    /// <summary>The plug-in's main assembly; throws naming the path when it was not built.</summary>
    public static string PathOf(string project)
    {
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;
        // Product stacks live in stacks/, test-only stacks in tests/stacks/.
        var path = Path.Combine(RepositoryRoot.Directory, "stacks", project, "bin", configuration, "net10.0", project + ".dll");
        var testPath = Path.Combine(RepositoryRoot.Directory, "tests", "stacks", project, "bin", configuration, "net10.0", project + ".dll");
        return File.Exists(path) ? path : File.Exists(testPath) ? testPath
            : throw new FileNotFoundException($"Stack plug-in {project} is not built at {path} or {testPath}.", path);
    }
}
