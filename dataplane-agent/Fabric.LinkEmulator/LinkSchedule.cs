using System.Globalization;

namespace Fabric.LinkEmulator;

/// <summary>
/// One phase of a <see cref="LinkSchedule"/>: how long it lasts and what each direction of the link does during it.
/// The settings are the emulator's <c>key=value</c> words with trace paths made absolute; a setting a phase leaves out is
/// the clean default, never the previous phase's.
/// </summary>
public sealed record SchedulePhase(int Line, TimeSpan Duration, IReadOnlyList<string> ForwardSettings, IReadOnlyList<string> ReverseSettings, LinkProfile Forward, LinkProfile Reverse)
{
    /// <summary>What resets every setting to the clean default before a phase's own words are applied.</summary>
    public static IReadOnlyList<string> Reset { get; } = ["delay=0ms", "jitter=0ms", "reorder=off", "loss=0%", "ge=off", "rate=unlimited", "queue=1000", "trace=off"];

    /// <summary>The words to send the emulator for one direction: the reset, then the phase's own.</summary>
    public IReadOnlyList<string> EmulatorWords(bool forward) => [.. Reset, .. forward ? ForwardSettings : ReverseSettings];

    /// <summary>
    /// Whether the link changes within the phase: a recorded trace plays its delivery opportunities from the moment it is
    /// set, so two measurements compare only over the same stretch of it (set again, from its start).
    /// </summary>
    public bool VariesInTime => Forward.Trace is not null || Reverse.Trace is not null;

    /// <summary>The phase as its schedule wrote it (trace paths absolute).</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{Duration.TotalSeconds:0.###} s: {string.Join(' ', ForwardSettings)} | {string.Join(' ', ReverseSettings)}");
}

/// <summary>
/// A link-condition schedule, the format <c>bench/learning.sh</c> runs: a text file <c>NAME.sched</c>; <c>#</c> starts a
/// comment; every other non-blank line is one phase, <c>SECONDS FORWARD-SETTINGS | REVERSE-SETTINGS</c>, the settings
/// being the link emulator's words (<c>delay=90ms jitter=2ms loss=1% ge=0.005,0.25 rate=50mbit queue=400
/// trace=FILE</c>). A trace path is relative to the schedule's folder; a missing setting means the clean default. Phases
/// run in order. A malformed file is refused with a <see cref="FormatException"/> naming the file, the line and the word.
/// </summary>
public sealed record LinkSchedule(string Name, string Path, IReadOnlyList<SchedulePhase> Phases)
{
    /// <summary>The longest phase a schedule may hold (a day): a typo such as 60000 is refused, not run for 16 hours.</summary>
    public static readonly TimeSpan MaxPhase = TimeSpan.FromDays(1);

    /// <summary>The schedule's length.</summary>
    public TimeSpan Duration => Phases.Aggregate(TimeSpan.Zero, (total, p) => total + p.Duration);

    /// <summary>Reads and checks <paramref name="path"/>; throws <see cref="FormatException"/> naming the file, line and word.</summary>
    public static LinkSchedule Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new FormatException($"{path}: no such schedule file");
        }
        if (!path.EndsWith(".sched", StringComparison.Ordinal))
        {
            throw new FormatException($"{path}: a schedule's file name ends in .sched");
        }
        var full = System.IO.Path.GetFullPath(path);
        return Parse(System.IO.Path.GetFileNameWithoutExtension(full), full, File.ReadAllLines(full));
    }

    /// <summary>Every <c>*.sched</c> in <paramref name="directory"/>, by name; refuses a folder without one.</summary>
    public static IReadOnlyList<LinkSchedule> LoadAll(string directory)
    {
        if (!Directory.Exists(directory))
        {
            throw new FormatException($"{directory}: no such schedule folder");
        }
        var files = Directory.GetFiles(directory, "*.sched").Order(StringComparer.Ordinal).ToList();
        return files.Count == 0 ? throw new FormatException($"{directory}: holds no *.sched file") : [.. files.Select(Load)];
    }

    /// <summary>Parses a schedule's lines; <paramref name="path"/> names it in errors and anchors relative trace paths.</summary>
    public static LinkSchedule Parse(string name, string path, IEnumerable<string> lines)
    {
        var folder = System.IO.Path.GetDirectoryName(path) ?? ".";
        var phases = new List<SchedulePhase>();
        var number = 0;
        foreach (var raw in lines)
        {
            number++;
            var hash = raw.IndexOf('#', StringComparison.Ordinal);
            var line = (hash >= 0 ? raw[..hash] : raw).Trim();
            if (line.Length == 0)
            {
                continue;
            }
            FormatException Refuse(string word, string why) => new($"{path}:{number}: '{word}': {why}");
            var bar = line.IndexOf('|', StringComparison.Ordinal);
            if (bar < 0)
            {
                throw Refuse(line, "a phase is 'SECONDS FORWARD-SETTINGS | REVERSE-SETTINGS' and this line has no '|'");
            }
            if (line.IndexOf('|', bar + 1) >= 0)
            {
                throw Refuse(line, "a phase has exactly one '|'");
            }
            var left = line[..bar].Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
            var right = line[(bar + 1)..].Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
            if (left.Length == 0)
            {
                throw Refuse(line, "the phase's length in seconds is missing");
            }
            if (!double.TryParse(left[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) || !double.IsFinite(seconds) || seconds <= 0)
            {
                throw Refuse(left[0], "is not a positive number of seconds (the phase's length comes first)");
            }
            if (TimeSpan.FromSeconds(seconds) > MaxPhase)
            {
                throw Refuse(left[0], $"a phase lasts at most {MaxPhase.TotalSeconds:0} s");
            }
            var (forwardWords, forward) = Settings(left[1..], folder, Refuse);
            var (reverseWords, reverse) = Settings(right, folder, Refuse);
            phases.Add(new SchedulePhase(number, TimeSpan.FromSeconds(seconds), forwardWords, reverseWords, forward, reverse));
        }
        return phases.Count == 0 ? throw new FormatException($"{path}: holds no phase") : new LinkSchedule(name, path, phases);
    }

    private static (IReadOnlyList<string> Words, LinkProfile Profile) Settings(string[] words, string folder, Func<string, string, FormatException> refuse)
    {
        var profile = LinkProfile.Clean;
        var written = new List<string>();
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var word in words)
        {
            var eq = word.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0 || eq == word.Length - 1)
            {
                throw refuse(word, "is not key=value (e.g. delay=30ms)");
            }
            var key = word[..eq].ToLowerInvariant();
            if (!keys.Add(key))
            {
                throw refuse(word, $"'{key}' is set twice in one direction");
            }
            var setting = key == "trace" && word[(eq + 1)..] is var file && file != "off" && !System.IO.Path.IsPathRooted(file)
                ? $"trace={System.IO.Path.GetFullPath(System.IO.Path.Combine(folder, file))}"
                : word;
            try
            {
                profile = profile.Apply([setting]);
            }
            catch (FormatException e)
            {
                throw refuse(word, e.Message);
            }
            catch (IOException e)
            {
                throw refuse(word, e.Message);
            }
            written.Add(setting);
        }
        return (written, profile);
    }
}
