namespace Fabric.Hal.Linux;

/// <summary>Runs code inside a named network namespace (/var/run/netns/NAME, as `ip netns` makes them).</summary>
/// <remarks>
/// setns() changes only the calling thread, so the work runs on a dedicated thread that enters the namespace and
/// ends with it. Sockets and ports created there stay in that namespace after the thread ends.
/// </remarks>
public static class NetworkNamespace
{
    /// <summary>Runs <paramref name="work"/> in namespace <paramref name="name"/> and returns its result; rethrows its exception.</summary>
    public static T Run<T>(string name, Func<T> work)
    {
        var path = Path.Combine("/var/run/netns", name);
        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                var fd = Native.open(path, Native.O_RDONLY | Native.O_CLOEXEC);
                if (fd < 0)
                {
                    throw new InvalidOperationException($"Network namespace '{name}' does not exist ({path}).");
                }
                try
                {
                    if (Native.setns(fd, Native.CLONE_NEWNET) < 0)
                    {
                        throw new InvalidOperationException($"Cannot enter network namespace '{name}': errno {Native.Errno} (needs CAP_SYS_ADMIN).");
                    }
                }
                finally
                {
                    Native.close(fd);
                }
                result = work();
            }
            catch (Exception e)
            {
                failure = e;
            }
        })
        { IsBackground = true, Name = "netns:" + name };
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
        return result;
    }
}
