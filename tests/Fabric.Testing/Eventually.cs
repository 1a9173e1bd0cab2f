namespace Fabric.Testing;

/// <summary>Waits on an explicit condition with a deadline; the failure names the phase and what was seen.</summary>
public static class Eventually
{
    /// <summary>Polls <paramref name="condition"/> until it holds or <paramref name="timeout"/> passes, then fails with <paramref name="describe"/>'s text.</summary>
    public static void True(Func<bool> condition, TimeSpan timeout, string phase, Func<string> describe)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"{phase}: not reached within {timeout.TotalSeconds:0.#} s; {describe()}");
            }
            Thread.Sleep(10);
        }
    }

    /// <summary>The same for a condition that must be awaited (grain calls); exceptions count as "not yet" and are shown on failure.</summary>
    public static async Task TrueAsync(Func<Task<bool>> condition, TimeSpan timeout, string phase, Func<Task<string>> describe)
    {
        var deadline = DateTime.UtcNow + timeout;
        string? lastError = null;
        while (true)
        {
            try
            {
                if (await condition().ConfigureAwait(false))
                {
                    return;
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                lastError = e.Message;
            }
            if (DateTime.UtcNow > deadline)
            {
                string seen;
                try
                {
                    seen = await describe().ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    seen = $"(describing failed: {e.Message})";
                }
                throw new TimeoutException($"{phase}: not reached within {timeout.TotalSeconds:0.#} s; {seen}{(lastError is null ? "" : $"; last error: {lastError}")}");
            }
            await Task.Delay(20).ConfigureAwait(false);
        }
    }
}
