using Fabric.Repository;

namespace Fabric.Agent.Stacks;

/// <summary>
/// How the dataplane names one version of a stack: <c>id@version</c> ("fec@1.0.2"). Every slot, binding, quarantine and
/// withdrawal on a host is of one version, so two versions of a stack id can run side by side and a path can move from
/// one to the other like from one stack to another. A bare id ("fec") names the id's newest usable version on the host.
/// </summary>
public static class StackKey
{
    public const char Separator = '@';

    /// <summary>The key of <paramref name="version"/> of <paramref name="id"/>.</summary>
    public static string Of(string id, string version) => $"{id}{Separator}{version}";

    /// <summary>The stack id a key (or a bare id) names.</summary>
    public static string IdOf(string name)
    {
        var at = name.IndexOf(Separator);
        return at < 0 ? name : name[..at];
    }

    /// <summary>The version a key names; null for a bare id.</summary>
    public static string? VersionOf(string name)
    {
        var at = name.IndexOf(Separator);
        return at < 0 ? null : name[(at + 1)..];
    }

    /// <summary>True when <paramref name="name"/> names one version, not an id's newest.</summary>
    public static bool IsVersioned(string name) => name.Contains(Separator);

    /// <summary>Orders versions as the repository does (<see cref="SemanticVersion"/>; one that does not parse before every one that does, then by text).</summary>
    public static int CompareVersions(string a, string b) => SemanticVersion.Compare(a, b);
}
