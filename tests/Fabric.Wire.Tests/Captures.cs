using Fabric.Testing;
using Fabric.Wire;

namespace Fabric.Wire.Tests;

/// <summary>Loads frames from the shared captures.</summary>
internal static class Captures
{
    public static string PcapDirectory => TestData.PathOf("pcaps");

    public static IEnumerable<string> All() =>
        Directory.EnumerateFiles(PcapDirectory).Where(p => p.EndsWith(".pcap", StringComparison.Ordinal) || p.EndsWith(".pcapng", StringComparison.Ordinal)).Order();

    public static List<CaptureRecord> Read(string name)
    {
        using var reader = CaptureReader.Open(Path.Combine(PcapDirectory, name));
        return reader.ReadAll().ToList();
    }

    public static byte[] Frame(string name, int index) => Read(name)[index].Data.ToArray();

    /// <summary>A buffer pre-filled with 0xA5, so bytes a writer forgot to set show up.</summary>
    public static byte[] Poisoned(int length) => Enumerable.Repeat((byte)0xA5, length).ToArray();
}
