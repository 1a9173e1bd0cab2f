using System.CommandLine;
using Fabric.Programs;
using Fabric.Wire;

// fabric-decode: one line per frame of a pcap or pcapng capture, in the spirit of `tcpdump -n -e -v`.
var captures = CommandLineConventions.RefusingOptions(new Argument<FileInfo[]>("CAPTURE")
{
    Description = "pcap or pcapng files to decode, in order",
    Arity = ArgumentArity.OneOrMore,
});
var root = new RootCommand(
    "Prints one line per frame: number, time, addresses, protocols, ports, lengths and flags; Fabric overlay datagrams (UDP port "
    + FabricHeader.DefaultUdpPort + ") are decoded through to the inner frame. A frame a layer refuses ends with [invalid LAYER: reason]. "
    + "Exit 0: all read; 1: a file was unreadable; 2: bad arguments.")
{
    captures,
};
root.SetAction(parsed => Decode(parsed.GetValue(captures)!));
return CommandLineConventions.Invoke(root, args);

static int Decode(FileInfo[] captures)
{
    var status = 0;
    foreach (var path in captures.Select(c => c.ToString()))
    {
        if (!File.Exists(path))
        {
            Console.Error.WriteLine($"fabric-decode: {path}: no such file");
            status = 1;
            continue;
        }
        var frames = 0;
        var refused = 0;
        try
        {
            using var reader = CaptureReader.Open(path);
            while (reader.TryReadNext(out var record))
            {
                var decoded = FrameDecoder.Decode(record);
                frames++;
                refused += decoded.IsValid ? 0 : 1;
                Console.Out.WriteLine($"{record.Index,5}  {decoded.Text}");
            }
        }
        catch (Exception e) when (e is CaptureFormatException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"fabric-decode: {path}: {e.Message}");
            status = 1;
        }
        Console.Error.WriteLine($"{path}: {frames} frames, {refused} refused");
    }
    return status;
}
