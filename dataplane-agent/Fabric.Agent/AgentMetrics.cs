using System.Diagnostics.Metrics;
using Fabric.Agent.Switching;

namespace Fabric.Agent;

/// <summary>
/// The agent's counters as <c>fabric.*</c> instruments on the "Fabric.Agent" meter. They are observed (read from the
/// switch's counters when an exporter collects), so the data path never touches the metrics API.
/// </summary>
public sealed class AgentMetrics : IDisposable
{
    public const string MeterName = "Fabric.Agent";
    private readonly Meter _meter;

    public AgentMetrics(Switch @switch)
    {
        _meter = new Meter(MeterName);
        _meter.CreateObservableCounter("fabric.vm.packets", () => @switch.Vms.Values.SelectMany(v => new[]
        {
            new Measurement<long>(v.Counters.RxPackets, new("vm", v.Spec.VmId), new("direction", "from_vm")),
            new Measurement<long>(v.Counters.TxPackets, new("vm", v.Spec.VmId), new("direction", "to_vm")),
        }), description: "Frames from and to each VM");
        _meter.CreateObservableCounter("fabric.vm.bytes", () => @switch.Vms.Values.SelectMany(v => new[]
        {
            new Measurement<long>(v.Counters.RxBytes, new("vm", v.Spec.VmId), new("direction", "from_vm")),
            new Measurement<long>(v.Counters.TxBytes, new("vm", v.Spec.VmId), new("direction", "to_vm")),
        }), unit: "By");
        _meter.CreateObservableCounter("fabric.vm.drops", () => @switch.Vms.Values.SelectMany(v =>
            Enum.GetValues<DropReason>().Select(r => new Measurement<long>(v.Counters.Drops(r), new("vm", v.Spec.VmId), new("reason", r.ToString())))),
            description: "Frames dropped per VM by reason");
        _meter.CreateObservableCounter("fabric.path.datagrams", () => @switch.Paths.Values.SelectMany(p => new[]
        {
            new Measurement<long>(p.Counters.TxPackets, new("host", p.Spec.HostId), new("stack", p.TransmitStack), new("direction", "sent")),
            new Measurement<long>(p.Counters.RxPackets, new("host", p.Spec.HostId), new("stack", p.TransmitStack), new("direction", "received")),
        }));
        _meter.CreateObservableCounter("fabric.path.bytes", () => @switch.Paths.Values.SelectMany(p => new[]
        {
            new Measurement<long>(p.Counters.TxBytes, new("host", p.Spec.HostId), new("stack", p.TransmitStack), new("direction", "sent")),
            new Measurement<long>(p.Counters.RxBytes, new("host", p.Spec.HostId), new("stack", p.TransmitStack), new("direction", "received")),
        }), unit: "By");
        _meter.CreateObservableCounter("fabric.path.drops", () => @switch.Paths.Values.SelectMany(p =>
            Enum.GetValues<DropReason>().Select(r => new Measurement<long>(p.Counters.Drops(r), new("host", p.Spec.HostId), new("reason", r.ToString())))));
        _meter.CreateObservableCounter("fabric.stack.drops", () => @switch.Paths.Values.SelectMany(p => p.StackStats().SelectMany(s =>
            s.Value.Stats.Drops.Select(d => new Measurement<long>(d.Value, new("host", p.Spec.HostId), new("stack", s.Value.Stack), new("slot", s.Key), new("reason", d.Key.ToString()))))));
        _meter.CreateObservableCounter("fabric.underlay.drops", () =>
            Enum.GetValues<DropReason>().Select(r => new Measurement<long>(@switch.UnderlayCounters.Drops(r), new KeyValuePair<string, object?>("reason", r.ToString()))));
        _meter.CreateObservableCounter("fabric.underlay.offloads", () => @switch.UnderlayOffloads.SelectMany(u => new[]
        {
            new Measurement<long>(u.Figures.Sends, new("family", u.Family), new("what", "segmented_sends")),
            new Measurement<long>(u.Figures.Datagrams, new("family", u.Family), new("what", "segmented_datagrams")),
            new Measurement<long>(u.Figures.Coalesced, new("family", u.Family), new("what", "coalesced_receives")),
            new Measurement<long>(u.Figures.Truncated, new("family", u.Family), new("what", "truncated")),
        }), description: "What the underlay's UDP offloads did");
        _meter.CreateObservableCounter("fabric.vm.offloads", () => @switch.Vms.Values.SelectMany(v => new[]
        {
            new Measurement<long>(Volatile.Read(ref v.LargeSegmentsCut), new("vm", v.Spec.VmId), new("what", "large_segments_cut")),
            new Measurement<long>(Volatile.Read(ref v.FramesCut), new("vm", v.Spec.VmId), new("what", "frames_cut")),
            new Measurement<long>(v.Port is Fabric.Hal.Linux.AfPacketPort p ? p.JoinedSends : 0, new("vm", v.Spec.VmId), new("what", "joined_sends")),
            new Measurement<long>(v.Port is Fabric.Hal.Linux.AfPacketPort q ? q.JoinedFrames : 0, new("vm", v.Spec.VmId), new("what", "joined_frames")),
        }), description: "Segments cut from each VM and joined for it");
    }

    public void Dispose() => _meter.Dispose();
}
