using System.Diagnostics;

namespace Fabric.Benchmarks;

/// <summary>Servers a measurement started for itself (iperf3, sockperf): killed, with their children, when it ends.</summary>
internal sealed class ServerSet(List<Process> processes) : IDisposable
{
    public void Dispose()
    {
        foreach (var process in processes)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // Already gone.
            }
        }
    }
}
