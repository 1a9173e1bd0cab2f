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
}
