using System.Collections.Frozen;

namespace Fabric.Programs;

/// <summary>
/// The external programs Fabric, its tests and its benchmarks start, each with the Debian package that provides it — read
/// from <c>programs.tsv</c> at the repository root (embedded in this assembly), which <c>./fabric test</c> installs from.
/// </summary>
public static class ExternalPrograms
{
    private static readonly Lazy<FrozenDictionary<string, string>> Table = new(Load);

    /// <summary>Program (a name looked up on PATH, or an absolute path) → Debian package.</summary>
    public static IReadOnlyDictionary<string, string> PackageByProgram => Table.Value;

    /// <summary>The Debian package that provides <paramref name="program"/>, or null when the program is not on the list.</summary>
    public static string? PackageOf(string program) => Table.Value.GetValueOrDefault(program);

    /// <summary>Parses the list's text: <c>#</c> comments, then <c>program TAB package TAB who</c> per line.</summary>
    public static FrozenDictionary<string, string> Parse(string text)
    {
        var table = new Dictionary<string, string>(StringComparer.Ordinal);
        var number = 0;
        foreach (var raw in text.Split('\n'))
        {
            number++;
            var line = raw.TrimEnd('\r');
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }
            var fields = line.Split('\t');
            if (fields.Length < 2 || fields[0].Length == 0 || fields[1].Length == 0)
            {
                throw new FormatException($"programs.tsv line {number}: expected 'program<TAB>package<TAB>who starts it', got '{line}'");
            }
            if (!table.TryAdd(fields[0], fields[1]))
            {
                throw new FormatException($"programs.tsv line {number}: '{fields[0]}' is listed twice");
            }
        }
        return table.ToFrozenDictionary(StringComparer.Ordinal);
    }

    private static FrozenDictionary<string, string> Load()
    {
        using var stream = typeof(ExternalPrograms).Assembly.GetManifestResourceStream("programs.tsv")
            ?? throw new InvalidOperationException("programs.tsv is not embedded in Fabric.Programs");
        using var reader = new StreamReader(stream);
        return Parse(reader.ReadToEnd());
    }
}
