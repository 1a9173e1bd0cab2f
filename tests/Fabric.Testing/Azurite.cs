using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Fabric.Testing;

/// <summary>
/// A real Azurite (blob, queue and table services) for one test assembly: started from tests/azurite/node_modules
/// (installed by `./fabric test` with npm ci from the committed lock file) on free loopback ports, in-memory, and
/// killed on dispose.
/// </summary>
public sealed class Azurite : IDisposable
{
    /// <summary>Azurite's documented development account and key (public; works only against the emulator).</summary>
    private const string Account = "devstoreaccount1";
    private const string Key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    private readonly Process _process;

    public Azurite()
    {
        var executable = Path.Combine(RepositoryRoot.Directory, "tests", "azurite", "node_modules", ".bin", "azurite");
        if (!File.Exists(executable))
        {
            throw new InvalidOperationException($"{executable} is missing: run `./fabric test` (it runs npm ci in tests/azurite) or `npm ci --prefix tests/azurite`.");
        }
        (Port, TablePort, var queuePort) = (LoopbackPorts.Free(), LoopbackPorts.Free(), LoopbackPorts.Free());
        string Text(int port) => port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var start = new ProcessStartInfo(executable)
        {
            ArgumentList =
            {
                "--blobHost", "127.0.0.1", "--blobPort", Text(Port), "--tableHost", "127.0.0.1", "--tablePort", Text(TablePort),
                "--queueHost", "127.0.0.1", "--queuePort", Text(queuePort), "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--silent",
            },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        _process = Process.Start(start) ?? throw new InvalidOperationException("Azurite did not start.");
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { Errors.Add(e.Data); } };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = Stopwatch.StartNew();
        while (!LoopbackPorts.Listening(Port) || !LoopbackPorts.Listening(TablePort))
        {
            if (_process.HasExited || deadline.Elapsed > TimeSpan.FromSeconds(30))
            {
                Dispose();
                throw new InvalidOperationException($"Azurite did not listen on 127.0.0.1:{Port} and {TablePort} within 30 s: {string.Join(" | ", Errors)}");
            }
            Thread.Sleep(50);
        }
    }

    /// <summary>The blob service's port.</summary>
    public int Port { get; }

    public int TablePort { get; }

    private List<string> Errors { get; } = [];

    /// <summary>The connection string of the emulator's development account.</summary>
    public string ConnectionString =>
        $"DefaultEndpointsProtocol=http;AccountName={Account};AccountKey={Key};BlobEndpoint=http://127.0.0.1:{Port}/{Account};TableEndpoint=http://127.0.0.1:{TablePort}/{Account};";

    /// <summary>The same account through other loopback ports (a <see cref="TcpCut"/> in front of each service).</summary>
    public static string ConnectionStringThrough(int blobPort, int tablePort) =>
        $"DefaultEndpointsProtocol=http;AccountName={Account};AccountKey={Key};BlobEndpoint=http://127.0.0.1:{blobPort}/{Account};TableEndpoint=http://127.0.0.1:{tablePort}/{Account};";

    /// <summary>The same account on a loopback port where nothing listens: "storage unreachable".</summary>
    public static string UnreachableConnectionString =>
        $"DefaultEndpointsProtocol=http;AccountName={Account};AccountKey={Key};BlobEndpoint=http://127.0.0.1:{LoopbackPorts.Free()}/{Account};TableEndpoint=http://127.0.0.1:{LoopbackPorts.Free()}/{Account};";

    /// <summary>A container name no other test uses.</summary>
    public static string NewContainer() => "t" + Guid.NewGuid().ToString("N")[..20];


    public void Dispose()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(5000);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        _process.Dispose();
    }
}

/// <summary>The repository's root folder (the one holding Fabric.sln), found above the test binaries.</summary>
public static class RepositoryRoot
{
    private static readonly Lazy<string> Root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Fabric.sln")))
            {
                return dir.FullName;
            }
        }
        throw new DirectoryNotFoundException($"No Fabric.sln above {AppContext.BaseDirectory}.");
    });

    public static string Directory => Root.Value;
}
