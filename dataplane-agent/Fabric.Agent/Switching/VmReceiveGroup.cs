using System.Collections.Concurrent;
using Fabric.Hal;
using Fabric.Hal.Linux;

namespace Fabric.Agent.Switching;

/// <summary>
/// VMs whose ports one thread receives from (their descriptors in one epoll set): a batch from each ready port in turn,
/// then one flush for the round. With many VMs busy, one wake-up serves many ports and the underlay's output of a round
/// leaves together; a thread per port would wake for a few frames each. The <see cref="Forwarder"/> runs the thread.
/// A stack that holds the thread in a call holds every member's frames until the watchdog starts another thread, as it
/// does for a VM's own thread.
/// </summary>
internal sealed class VmReceiveGroup(int index) : IDisposable
{
    private readonly ConcurrentDictionary<long, VmPort> _members = new();
    private long _nextToken;

    /// <summary>Which of the switch's groups this is (for the thread's name).</summary>
    public int Index { get; } = index;

    public EpollSet Epoll { get; } = new();

    /// <summary>Which receive thread is the current one; one that comes back from a stack's call after a newer one started ends.</summary>
    internal int Generation;

    /// <summary>The current receive thread.</summary>
    public Thread? Thread { get; set; }

    public bool Disposed { get; private set; }

    /// <summary>How many VMs the group receives for.</summary>
    public int Count => _members.Count;

    public IEnumerable<VmPort> Members => _members.Values;

    /// <summary>Adds the VM; false when its port's descriptor cannot join the set (it then needs a thread of its own).</summary>
    public bool TryJoin(VmPort vm, IPollablePort port)
    {
        var token = Interlocked.Increment(ref _nextToken);
        vm.GroupToken = token;
        vm.Group = this;
        _members[token] = vm;
        try
        {
            Epoll.Add(port.ReadinessDescriptor, token);
            return true;
        }
        catch (InvalidOperationException)
        {
            _members.TryRemove(token, out _);
            vm.Group = null;
            return false;
        }
    }

    /// <summary>The member a ready token names; false when it has left since the wait reported it.</summary>
    public bool TryGet(long token, out VmPort vm) => _members.TryGetValue(token, out vm!);

    /// <summary>
    /// Takes the VM (which is stopping) out: its descriptor leaves the set, a read of its port the thread is in ends before
    /// this returns, so the caller may close the port (the thread reads a port only under its gate, and never one that is
    /// stopping), and so does the switching of a batch it read before, within <paramref name="wait"/> (as long as a
    /// thread of the VM's own would be waited for: a stack may hold it), so nothing it sent reaches a path after it left.
    /// </summary>
    public void Leave(VmPort vm, TimeSpan wait)
    {
        lock (vm.ReceiveGate)
        {
            Forget(vm);
        }
        var until = Environment.TickCount64 + (long)wait.TotalMilliseconds;
        while (Volatile.Read(ref vm.HandlingSince) != 0 && Environment.TickCount64 < until && Thread?.IsAlive == true)
        {
            System.Threading.Thread.Sleep(1);
        }
    }

    /// <summary>Takes the VM out without waiting (the group's own thread, under the VM's gate, when its port closed or failed).</summary>
    public void Forget(VmPort vm)
    {
        if (_members.TryRemove(vm.GroupToken, out _) && vm.Port is IPollablePort port)
        {
            try
            {
                Epoll.Remove(port.ReadinessDescriptor);
            }
            catch (ObjectDisposedException)
            {
                // The switch is shutting down: the set is gone already.
            }
        }
    }

    public void Dispose()
    {
        Disposed = true;
        Epoll.Dispose();
    }
}
