using Fabric.Wire;

// fabric-decode: one line per frame of a pcap or pcapng capture, in the spirit of `tcpdump -n -e -v`.
if (args.Length == 0 || args[0] is "-h" or "--help")
{
    Console.WriteLine("usage: fabric-decode CAPTURE [CAPTURE...]");
    Console.WriteLine("Prints one line per frame: number, time, addresses, protocols, ports, lengths and flags;");
    Console.WriteLine("Fabric overlay datagrams (UDP port " + FabricHeader.DefaultUdpPort + ") are decoded through to the inner frame.");
    Console.WriteLine("A frame a layer refuses ends with [invalid LAYER: reason]. Exit 0: all read; 1: a file was unreadable; 2: bad arguments.");
    return args.Length == 0 ? 2 : 0;
}

var status = 0;
foreach (var path in args)
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
    catch (CaptureFormatException e)
    {
        Console.Error.WriteLine($"fabric-decode: {path}: {e.Message}");
        status = 1;
    }
    catch (IOException e)
    {
        Console.Error.WriteLine($"fabric-decode: {path}: {e.Message}");
        status = 1;
    }
    Console.Error.WriteLine($"{path}: {frames} frames, {refused} refused");
}
return status;
