using System.Runtime.InteropServices;

namespace Fabric.LinkEmulator;

/// <summary>Sub-millisecond sleeps through nanosleep(2); .NET's own sleeps round to whole milliseconds.</summary>
internal static partial class PreciseSleep
{
    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern unsafe int nanosleep(TimeSpec* request, TimeSpec* remaining);

    public static unsafe void Sleep(long nanoseconds)
    {
        if (nanoseconds <= 0)
        {
            return;
        }
        var request = new TimeSpec { Seconds = nanoseconds / 1_000_000_000, Nanoseconds = nanoseconds % 1_000_000_000 };
        nanosleep(&request, null);
    }
}
