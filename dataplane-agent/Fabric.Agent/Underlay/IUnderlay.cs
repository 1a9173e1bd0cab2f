using System.Net;
using Fabric.Hal.Linux;

namespace Fabric.Agent.Underlay;

/// <summary>Called for each datagram received, on the underlay's receive thread; the span is valid only during the call.</summary>
public delegate void UnderlayHandler(ReadOnlySpan<byte> datagram, UdpPeer source);

/// <summary>
/// Makes the underlay for one local address: <paramref name="handler"/> is called per datagram on its receive thread,
/// <paramref name="afterBatch"/> after each batch (to flush what the handlers queued), <paramref name="fault"/> with any
/// exception either let escape (the thread goes on); <paramref name="time"/> is the agent's clock (how long a batch's
/// handling has run is read from it). Throws naming the address when it cannot bind.
/// </summary>
public delegate IUnderlay UnderlayFactory(IPEndPoint local, UnderlayHandler handler, Action afterBatch, Action<Exception>? fault, TimeProvider time);

/// <summary>
/// The underlay as the switch and its paths use it: one local address, a receive thread that hands each datagram to
/// the handler it was made with, and a per-thread outbox. <see cref="UdpUnderlay"/> is the kernel's UDP socket;
/// <see cref="InMemoryUnderlay"/> a wire in memory, for tests that need no sockets and a wire they can tap.
/// </summary>
public interface IUnderlay : IDisposable
{
    /// <summary>The local address and port datagrams come from.</summary>
    IPEndPoint Local { get; }

    /// <summary>The largest datagram <see cref="NextBuffer"/> holds.</summary>
    int MaxDatagram { get; }

    /// <summary>The calling thread's buffer for its next datagram, valid until it calls <see cref="Commit"/>.</summary>
    Span<byte> NextBuffer();

    /// <summary>Queues the first <paramref name="length"/> bytes written into <see cref="NextBuffer"/> for <paramref name="destination"/>.</summary>
    void Commit(int length, UdpPeer destination);

    /// <summary>Sends what the calling thread has queued.</summary>
    void Flush();

    /// <summary>Exceptions the receive thread caught and survived.</summary>
    long Faults { get; }

    /// <summary>How long the receive thread has been handling its current batch (zero while it waits).</summary>
    TimeSpan HandlingFor { get; }

    /// <summary>Starts a new receive thread in place of one stuck in a handler; returns how many were replaced so far.</summary>
    int ReplaceReceiver();

    /// <summary>What the underlay's offloads did (segmented sends, coalesced receives).</summary>
    UdpOffloads Offloads { get; }

    /// <summary>
    /// Called from the handler: when the datagram being handled reached the host (nanoseconds; only differences mean
    /// anything), or 0 when the underlay cannot say. A receive thread busy with a batch reads the next one late, all
    /// at once; this is the time the wire delivered each datagram.
    /// </summary>
    long Arrival => 0;
}
