namespace Fabric.Testing;

/// <summary>Finds the shared, read-only test data (../shared/testdata beside the repository).</summary>
public static class TestData
{
    private static readonly Lazy<string> Root = new(Locate);

    /// <summary>The testdata folder; FABRIC_TESTDATA overrides the search.</summary>
    public static string Directory => Root.Value;

    /// <summary>A path inside the testdata folder.</summary>
    public static string PathOf(params string[] parts) => Path.Combine([Directory, .. parts]);

    private static string Locate()
    {
        var fromEnvironment = Environment.GetEnvironmentVariable("FABRIC_TESTDATA");
        if (!string.IsNullOrEmpty(fromEnvironment))
        {
            return fromEnvironment;
        }
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "testdata");
            if (System.IO.Directory.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new DirectoryNotFoundException(
            $"No shared/testdata folder above {AppContext.BaseDirectory}; clone the repository beside shared/ or set FABRIC_TESTDATA.");
    }
}
