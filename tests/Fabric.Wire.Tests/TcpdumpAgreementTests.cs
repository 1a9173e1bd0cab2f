using System.Text.RegularExpressions;
using Fabric.Wire;

namespace Fabric.Wire.Tests;

/// <summary>
/// For every capture with a tcpdump <c>.out</c> beside it, the decode agrees with tcpdump frame by frame on addresses,
/// ports, protocols and lengths. tcpdump's detail lines (tab-indented option dumps, HTTP bodies) are not compared.
/// </summary>
public partial class TcpdumpAgreementTests
{
    public static TheoryData<string> Outputs() =>
        new(Directory.EnumerateFiles(Captures.PcapDirectory, "*.out").Select(Path.GetFileName).Order()!);

    [Theory]
    [MemberData(nameof(Outputs))]
    public void Decode_AgreesWithTcpdump(string outName)
    {
        var capture = CaptureFor(outName);
        var expected = SplitFrames(File.ReadAllText(Path.Combine(Captures.PcapDirectory, outName)));
        var records = Captures.Read(capture);
        Assert.Equal(expected.Count, records.Count);
        for (var i = 0; i < records.Count; i++)
        {
            var ours = FrameDecoder.Decode(records[i]);
            var theirs = expected[i];
            var phase = $"{capture} frame {i + 1}\n tcpdump: {theirs}\n ours:    {ours.Text}";
            var tcpdumpSaysInvalid = theirs.Contains("(invalid)", StringComparison.Ordinal);
            Assert.True(tcpdumpSaysInvalid == !ours.IsValid, $"validity differs: {phase}");

            var ourPairs = Pairs(ours.Text);
            foreach (var (a, b) in Pairs(theirs))
            {
                var pair = ours.IsValid ? (a, b) : (StripPort(a), StripPort(b));
                Assert.True(ourPairs.Contains(pair), $"address pair {pair.Item1} > {pair.Item2} missing: {phase}");
            }
            foreach (Match m in IPv4Regex().Matches(theirs))
            {
                Assert.True(ours.Text.Contains(m.Groups[1].Value, StringComparison.Ordinal), $"address {m.Groups[1].Value} missing: {phase}");
            }
            foreach (Match m in MacRegex().Matches(theirs))
            {
                Assert.True(ours.Text.Contains(m.Value, StringComparison.Ordinal), $"MAC {m.Value} missing: {phase}");
            }
            foreach (var keyword in new[] { "ARP", "IP6", "ICMP6", "UDP", "TCP" })
            {
                if (Regex.IsMatch(theirs, $@"\b{keyword}\b", RegexOptions.IgnoreCase))
                {
                    Assert.True(Regex.IsMatch(ours.Text, $@"\b{keyword}\b", RegexOptions.IgnoreCase), $"protocol {keyword} missing: {phase}");
                }
            }
            if (ours.IsValid)
            {
                var ourLengths = Lengths(ours.Text);
                foreach (var length in Lengths(theirs))
                {
                    Assert.True(ourLengths.Contains(length), $"length {length} missing: {phase}");
                }
            }
        }
    }

    [Fact]
    public void Comparison_NoticesADisagreement()
    {
        // The comparison itself must be able to fail: a line with another port is caught.
        var pairs = Pairs("IP 10.0.0.1.80 > 10.0.0.2.5767: Flags [P.], length 605");
        Assert.Contains(("10.0.0.1.80", "10.0.0.2.5767"), pairs);
        Assert.DoesNotContain(("10.0.0.1.81", "10.0.0.2.5767"), pairs);
        Assert.Equal([605], Lengths("x length 605, [total length 9 > length 8]"));
    }

    private static string CaptureFor(string outName)
    {
        var stem = outName[..^4];
        while (true)
        {
            foreach (var ext in new[] { ".pcap", ".pcapng" })
            {
                if (File.Exists(Path.Combine(Captures.PcapDirectory, stem + ext)))
                {
                    return stem + ext;
                }
            }
            // tcpdump names outputs of the same capture under other flags "-v", "-v2".
            var dash = stem.LastIndexOf('-');
            Assert.True(dash > 0, $"no capture for {outName}");
            stem = stem[..dash];
        }
    }

    /// <summary>tcpdump's header lines per frame: the numbered line plus continuation lines indented by four spaces.</summary>
    private static List<string> SplitFrames(string output)
    {
        var frames = new List<string>();
        foreach (var line in output.Split('\n'))
        {
            if (FrameStart().IsMatch(line))
            {
                frames.Add(line.Trim());
            }
            else if (line.StartsWith("    ", StringComparison.Ordinal) && frames.Count > 0)
            {
                frames[^1] += " " + line.Trim();
            }
        }
        return frames;
    }

    private static HashSet<(string, string)> Pairs(string text) =>
        PairRegex().Matches(text).Select(m => (m.Groups["a"].Value, m.Groups["b"].Value)).ToHashSet();

    private static string StripPort(string address)
    {
        var dots = address.Count(c => c == '.');
        return (dots == 4 || (address.Contains(':', StringComparison.Ordinal) && dots == 1)) ? address[..address.LastIndexOf('.')] : address;
    }

    private static List<int> Lengths(string text)
    {
        var outsideBrackets = Regex.Replace(text, @"\[[^\]]*\]", "");
        var lengths = Regex.Matches(outsideBrackets, @"\blength (\d+)").Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        // tcpdump -q prints "tcp N" / "udp N" for the payload length.
        lengths.AddRange(Regex.Matches(outsideBrackets, @"\b(?:tcp|udp) (\d+)$").Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)));
        return lengths;
    }

    [GeneratedRegex(@"^\s+\d+\s{2}")]
    private static partial Regex FrameStart();

    [GeneratedRegex(@"(?<a>[0-9A-Fa-f:.]+) > (?<b>[0-9A-Fa-f:.]+?)[:,]?(?=\s|$)")]
    private static partial Regex PairRegex();

    [GeneratedRegex(@"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?:\.\d+)?(?![\d.])")]
    private static partial Regex IPv4Regex();

    [GeneratedRegex(@"\b(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\b")]
    private static partial Regex MacRegex();
}
