using System.Collections.Concurrent;
using Fabric.Agent.Stacks;
using Fabric.Agent.Underlay;
using Fabric.Hal.Linux;
using Microsoft.Extensions.Logging;

namespace Fabric.Agent.Switching;

/// <summary>
/// What the parts of one host's switch share: the attached VMs, the forwarding table, the paths to remote hosts, the
/// stack host, the underlay sockets, the clock and the operators' event list. The <see cref="Switch"/> owns it and
/// changes the VMs, the table and the paths; its parts — forwarding (<see cref="Forwarder"/>), the slot protocol
/// (<see cref="SlotNegotiation"/>), the path monitor (<see cref="MonitorThread"/>) and quarantine
/// (<see cref="Quarantine"/>) — read it and act through it.
/// </summary>
internal sealed class SwitchState(SwitchOptions options, ILogger logger)
{
    public SwitchOptions Options { get; } = options;

    /// <summary>Monotonic nanoseconds since the switch was made, read from <see cref="SwitchOptions.Time"/>: what the
    /// paths, their stacks, the monitor and the watchdog measure time with.</summary>
    public Func<long> Clock { get; } = Nanoseconds(options.Time);

    public ILogger Logger { get; } = logger;

    public string HostId => Options.HostId;

    public StackHost StackHost { get; } = new(options.Drain, options.Time);

    public ConcurrentDictionary<string, VmPort> Vms { get; } = new();

    public ConcurrentDictionary<string, RemotePath> Paths { get; } = new();

    public ConcurrentDictionary<UdpPeer, RemotePath> PathsByAddress { get; } = new();

    private volatile ForwardingTable _table = ForwardingTable.Empty;

    /// <summary>The forwarding table: an immutable snapshot, replaced whole (under the switch's table lock) on every change.</summary>
    public ForwardingTable Table
    {
        get => _table;
        set => _table = value;
    }

    /// <summary>Datagrams from unknown peers and other underlay-level drops.</summary>
    public TrafficCounters UnderlayCounters { get; } = new();

    public IUnderlay? Underlay4 { get; set; }

    public IUnderlay? Underlay6 { get; set; }

    /// <summary>Disposes the instances paths take out of their slots, and watches for Dispose calls that hang.</summary>
    public StackDisposer Disposer { get; } = new(options.Time);

    private readonly ConcurrentQueue<string> _events = new();

    /// <summary>Recent events operators should see (quarantines, hangs), newest last, at most 100.</summary>
    public IReadOnlyList<string> Events => [.. _events];

    /// <summary>
    /// Logs an event operators should see and keeps it in <see cref="Events"/>. A fault (a quarantine, a hang, a throw) is
    /// an error; a refusal or a fallback a warning; a change an operator or the control plane asked for is information.
    /// </summary>
    public void Report(string text, LogLevel level = LogLevel.Warning)
    {
        _events.Enqueue($"{Options.Time.GetUtcNow().UtcDateTime:O} {text}");
        while (_events.Count > 100)
        {
            _events.TryDequeue(out _);
        }
        Log.StackEvent(Logger, level, text);
    }

    /// <summary>Sends what the calling thread queued on the underlay and the VM ports during its batch.</summary>
    public void Flush()
    {
        Underlay4?.Flush();
        Underlay6?.Flush();
        VmPort.FlushThread();
    }

    /// <summary>Until when a slot left now keeps receiving (the drain time from now).</summary>
    public long DrainDeadline() => Clock() + (long)(Options.Drain.TotalMilliseconds * 1_000_000);

    /// <summary>The path to <paramref name="hostId"/>; throws naming the host when there is none.</summary>
    public RemotePath PathTo(string hostId) =>
        Paths.TryGetValue(hostId, out var path) ? path : throw new InvalidOperationException($"No path to host '{hostId}'.");

    /// <summary>A monotonic nanosecond clock from <paramref name="time"/>, 0 now.</summary>
    private static Func<long> Nanoseconds(TimeProvider time)
    {
        var start = time.GetTimestamp();
        var scale = 1e9 / time.TimestampFrequency;
        return () => (long)((time.GetTimestamp() - start) * scale);
    }

    /// <summary>The family's std stack, which every path keeps open in its fallback slot.</summary>
    public static string FallbackStack(System.Net.Sockets.AddressFamily family) =>
        family == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "std-ipv6" : "std-ipv4";
}
