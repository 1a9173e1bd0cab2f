using Fabric.Wire;

namespace Fabric.Wire.Tests;

public class MalformedCaptureTests
{
    [Theory]
    [InlineData("ppp__ipv4-malformed.pcap", "IPv4")]
    [InlineData("ppp__tcp-malformed.pcap", "TCP")]
    [InlineData("tcpdump__ipv4_invalid_total_length.pcap", "IPv4")]
    [InlineData("tcpdump__ipv6_frag6_negative_len.pcap", "IPv6")]
    public void MalformedFrames_AreRefusedPerFrameWithAReason(string capture, string layer)
    {
        var records = Captures.Read(capture);
        Assert.NotEmpty(records);
        foreach (var record in records)
        {
            var decoded = FrameDecoder.Decode(record);
            Assert.False(decoded.IsValid, decoded.Text);
            Assert.Equal(layer, decoded.RefusedLayer);
            Assert.Contains($"[invalid {layer}: {decoded.Error.Describe()}", decoded.Text, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void InvalidTotalLength_NamesBothLengths()
    {
        var decoded = FrameDecoder.Decode(Captures.Read("tcpdump__ipv4_invalid_total_length.pcap")[0]);
        Assert.Equal(WireError.TotalLengthExceedsBuffer, decoded.Error);
        Assert.Contains("total length 85 > length 84", decoded.Text, StringComparison.Ordinal);
    }

    [Fact]
    public void NegativeFragmentLength_IsAnExtensionHeaderOverrun()
    {
        var decoded = FrameDecoder.Decode(Captures.Read("tcpdump__ipv6_frag6_negative_len.pcap")[0]);
        Assert.Equal(WireError.ExtensionHeaderOverrun, decoded.Error);
    }
}
