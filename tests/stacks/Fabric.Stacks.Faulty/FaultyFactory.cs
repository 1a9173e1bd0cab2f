using System.Net.Sockets;
using Fabric.Wire;

namespace Fabric.Stacks.Faulty;

/// <summary>
/// A stack that misbehaves on purpose: plain encapsulation, except that a frame whose payload starts with "TXFAULT"
/// makes Transmit throw, "RXFAULT" makes Receive throw, "TXHANG" makes Transmit block for five seconds, "TXSTUCK" and "RXSTUCK" make Transmit and Receive never return, and
/// "TIMERFAULT" makes the path monitor's next read of its timer throw, "NEXTTIMERFAULT" makes every read of it that the
/// path makes when planning the monitor's sleep (RemotePath.NextTimer) throw; "TIMERSTUCK" makes its timer due at once and the
/// call never return, "STATSSTUCK" makes the next GetStats never return, "DISPOSESTUCK" makes Dispose never return;
/// configured with failToStartAt = a host id, it throws when asked for an instance on that host, with slowStartAt = a
/// host id it takes slowStartMilliseconds (500) to create one there, with stuckStartAt = a host id it never returns
/// from creating one there, with stuckArmAt = a host id its instances there never return from the first read of their
/// timer. Built a second time as "faulty-sealed"
/// (Fabric.Stacks.FaultySealed), which declares that it encrypts.
/// </summary>
public sealed class FaultyFactory : IStackFactory
{
#if SEALED
    public StackDescription Description { get; } = new("faulty-sealed", "0.0.1", AddressFamily.InterNetwork, MaxStackFieldBytes: 0) { Encrypts = true };
#else
    public StackDescription Description { get; } = new("faulty", "0.0.1", AddressFamily.InterNetwork, MaxStackFieldBytes: 0);
#endif

    public IStack Create(StackContext context)
    {
        if (context.Configuration.TryGetValue("failToStartAt", out var host) && host == context.LocalHost)
        {
            throw new InvalidOperationException($"faulty stack: asked not to start on {host}");
        }
        if (context.Configuration.TryGetValue("slowStartAt", out var slow) && slow == context.LocalHost)
        {
            Thread.Sleep(int.Parse(context.Configuration.GetValueOrDefault("slowStartMilliseconds", "500"), System.Globalization.CultureInfo.InvariantCulture));
        }
        if (context.Configuration.TryGetValue("stuckStartAt", out var stuck) && stuck == context.LocalHost)
        {
            Thread.Sleep(Timeout.Infinite);
        }
        return new FaultyStack(context.Configuration.TryGetValue("stuckArmAt", out var arm) && arm == context.LocalHost);
    }

    private sealed class FaultyStack(bool stuckArm) : IStack
    {
        private readonly StackCounters _counters = new();
        private bool _timerFault;
        private volatile bool _nextTimerFault;
        private volatile bool _timerStuck;
        private volatile bool _statsStuck;
        private volatile bool _disposeStuck;

        public long NextTimerNanoseconds
        {
            get
            {
                if (stuckArm)
                {
                    Thread.Sleep(Timeout.Infinite);
                }
                // Only the agent's path monitor trips it, so the fault lands where nothing else would catch it.
                if (_timerFault && Thread.CurrentThread.Name == "path-monitor")
                {
                    _timerFault = false;
                    throw new InvalidOperationException("faulty stack: timer fault requested");
                }
                if (_nextTimerFault && new System.Diagnostics.StackTrace().GetFrames().Any(f => f.GetMethod()?.Name == "NextTimer"))
                {
                    throw new InvalidOperationException("faulty stack: timer fault requested while the monitor plans its sleep");
                }
                return _timerStuck ? 0 : long.MaxValue;
            }
        }

        public void Transmit(ReadOnlySpan<byte> frame, long nowNanoseconds, IUnderlayOutput underlay)
        {
            _counters.FramesIn++;
            _timerFault |= Marked(frame, "TIMERFAULT"u8);
            _nextTimerFault |= Marked(frame, "NEXTTIMERFAULT"u8);
            _timerStuck |= Marked(frame, "TIMERSTUCK"u8);
            _statsStuck |= Marked(frame, "STATSSTUCK"u8);
            _disposeStuck |= Marked(frame, "DISPOSESTUCK"u8);
            if (Marked(frame, "TXFAULT"u8))
            {
                throw new InvalidOperationException("faulty stack: transmit fault requested");
            }
            if (Marked(frame, "TXHANG"u8))
            {
                Thread.Sleep(TimeSpan.FromSeconds(5));
            }
            if (Marked(frame, "TXSTUCK"u8))
            {
                Thread.Sleep(Timeout.Infinite);
            }
            var buffer = underlay.Begin(frame.Length);
            frame.CopyTo(buffer);
            underlay.Commit(FabricPayloadType.Ethernet, 0, frame.Length);
            _counters.DatagramsOut++;
        }

        public void Receive(in StackDatagram datagram, long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
        {
            _counters.DatagramsIn++;
            if (Marked(datagram.Payload, "RXFAULT"u8))
            {
                throw new InvalidOperationException("faulty stack: receive fault requested");
            }
            if (Marked(datagram.Payload, "RXSTUCK"u8))
            {
                Thread.Sleep(Timeout.Infinite);
            }
            vm.Deliver(datagram.Payload);
            _counters.FramesDelivered++;
        }

        private static bool Marked(ReadOnlySpan<byte> frame, ReadOnlySpan<byte> marker) =>
            frame.Length >= EthernetFrame.HeaderLength + marker.Length && frame.Slice(EthernetFrame.HeaderLength, marker.Length).SequenceEqual(marker);

        public void OnTimer(long nowNanoseconds, IVmOutput vm, IUnderlayOutput underlay)
        {
            if (_timerStuck)
            {
                Thread.Sleep(Timeout.Infinite);
            }
        }

        public StackStats GetStats()
        {
            if (_statsStuck)
            {
                Thread.Sleep(Timeout.Infinite);
            }
            return _counters.Snapshot();
        }

        public StackState ExportState() => StackState.Empty("faulty");

        public void ApplyPolicy(StackPolicy policy)
        {
        }

        public void Dispose()
        {
            if (_disposeStuck)
            {
                Thread.Sleep(Timeout.Infinite);
            }
        }
    }
}
