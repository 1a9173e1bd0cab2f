using System.Collections.Concurrent;
using Fabric.Stacks;

namespace Fabric.Agent.Switching;

/// <summary>
/// Disposes stack instances taken out of their slots, each on a pool thread: never under a path's gate or on the
/// caller's thread, so a stack whose Dispose never returns costs that thread, not a path, housekeeping or the agent's
/// API. It keeps what is being disposed, so the switch's watchdog can quarantine a stack whose Dispose has run too long
/// (none of its instances is made again, so it cannot take thread after thread); what Dispose throws is counted.
/// Thread-safe.
/// </summary>
internal sealed class StackDisposer(TimeProvider time)
{
    private sealed class Running(string stackId)
    {
        public string StackId { get; } = stackId;

        /// <summary>When Dispose began (0 while it waits for a pool thread: time in the queue is not the stack's).</summary>
        public long Since;

        public bool Said;
    }

    private readonly ConcurrentDictionary<IStack, Running> _running = new(ReferenceEqualityComparer.Instance);
    private long _faults;

    /// <summary>Exceptions instances threw from Dispose.</summary>
    public long Faults => Interlocked.Read(ref _faults);

    /// <summary>Disposes <paramref name="instance"/> (of <paramref name="stackId"/>) on a pool thread.</summary>
    public void Discard(IStack instance, string stackId)
    {
        var running = new Running(stackId);
        _running[instance] = running;
        ThreadPool.UnsafeQueueUserWorkItem(static state => state.Self.Dispose(state.Instance, state.Running), (Self: this, Instance: instance, Running: running), preferLocal: false);
    }

    private void Dispose(IStack instance, Running running)
    {
        Volatile.Write(ref running.Since, time.GetTimestamp());
        try
        {
            instance.Dispose();
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _faults);
        }
        finally
        {
            _running.TryRemove(instance, out _);
        }
    }

    /// <summary>The stacks one of whose instances has been in Dispose for longer than <paramref name="limit"/>, each instance said once.</summary>
    public IReadOnlyList<string> NewlyHung(TimeSpan limit)
    {
        var now = time.GetTimestamp();
        var hung = new List<string>();
        foreach (var running in _running.Values)
        {
            var since = Volatile.Read(ref running.Since);
            if (since != 0 && time.GetElapsedTime(since, now) > limit && !running.Said)
            {
                running.Said = true;
                hung.Add(running.StackId);
            }
        }
        return hung;
    }
}
