namespace Fabric.Agent.Switching;

/// <summary>
/// The peer's path sequence as this end received it (the Fabric header numbers every datagram on a path, across slots):
/// how many arrived, and the span from the first to the highest, so loss and reordering are measured whatever the stack.
/// Written under the path's gate; <see cref="Gaps"/> may be read without it (a read between two writes is off by one at most).
/// </summary>
internal sealed class PathSequence
{
    private long _highest = -1;
    private long _first = -1;
    private long _received;

    /// <summary>Datagrams received so far.</summary>
    public long Received => Volatile.Read(ref _received);

    /// <summary>Sequence numbers from the first received to the highest (0 before the first).</summary>
    public long Span
    {
        get
        {
            var first = Volatile.Read(ref _first);
            return first < 0 ? 0 : Volatile.Read(ref _highest) - first + 1;
        }
    }

    /// <summary>Sequence numbers missing so far.</summary>
    public long Gaps => Span - Received;

    /// <summary>Counts a datagram's sequence number. A 32-bit counter is unwrapped against the highest seen: a small
    /// negative step is reordering, not a wrap; a number from before the first is not counted.</summary>
    public void Track(uint sequence)
    {
        if (_first < 0)
        {
            Volatile.Write(ref _highest, sequence);
            Volatile.Write(ref _received, 1);
            Volatile.Write(ref _first, sequence);
            return;
        }
        var unwrapped = _highest + (int)(sequence - (uint)_highest);
        if (unwrapped < _first)
        {
            return;
        }
        Volatile.Write(ref _received, _received + 1);
        Volatile.Write(ref _highest, Math.Max(_highest, unwrapped));
    }
}
