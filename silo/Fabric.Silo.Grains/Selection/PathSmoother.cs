namespace Fabric.Silo.Selection;

/// <summary>
/// Smooths a path's samples (exponentially weighted, like TCP's SRTT) and says when the smoothed conditions moved
/// enough to re-run selection: RTT by 20 %, loss by a factor of two (on a log scale floored at 0.01 %, so a loss that
/// fades away keeps being announced until it is gone), bandwidth by 25 %.
/// </summary>
public sealed class PathSmoother(double weight = 0.3)
{
    /// <summary>The smallest loss rate taken as real (one in ten thousand).</summary>
    public const double LossResolution = 1e-4;

    public PathConditions? Current { get; private set; }

    /// <summary>How many samples the minimum RTT is taken over (about two minutes at one a second).</summary>
    public const int MinRttWindow = 120;

    // A monotonic queue of (sample number, RTT): the front is the window's minimum.
    private readonly LinkedList<(long N, double Rtt)> _minRtt = new();
    private long _samples;

    private double TrackMinRtt(double rtt)
    {
        var n = _samples++;
        while (_minRtt.Last is { } last && last.Value.Rtt >= rtt)
        {
            _minRtt.RemoveLast();
        }
        _minRtt.AddLast((n, rtt));
        while (_minRtt.First!.Value.N <= n - MinRttWindow)
        {
            _minRtt.RemoveFirst();
        }
        return _minRtt.First.Value.Rtt;
    }

    /// <summary>The conditions the last significant change was announced with.</summary>
    private PathConditions? _announced;

    /// <summary>Adds a sample; true when the VMs on the path should re-evaluate.</summary>
    public bool Add(PathSample sample)
    {
        var loss = sample.Sent > 0 ? Math.Clamp((double)sample.Lost / sample.Sent, 0, 1) : Current?.Loss ?? 0;
        var minRtt = TrackMinRtt(sample.RttMs);
        var next = Current is not { } c
            ? new PathConditions(sample.RttMs, sample.JitterMs, loss, sample.DeliveredMbps, sample.At, minRtt)
            : new PathConditions(Mix(c.RttMs, sample.RttMs), Mix(c.JitterMs, sample.JitterMs), Mix(c.Loss, loss), Mix(c.BandwidthMbps, sample.DeliveredMbps), sample.At, minRtt);
        if (loss == 0 && next.Loss < LossResolution)
        {
            // Below what a second of probes can resolve, a fading average is noise: call the path clean again.
            next = next with { Loss = 0 };
        }
        Current = next;
        if (_announced is not { } a || Significant(a, next))
        {
            _announced = next;
            return true;
        }
        return false;
    }

    private double Mix(double old, double sample) => old + weight * (sample - old);

    private static bool Significant(PathConditions a, PathConditions b) =>
        Math.Abs(b.RttMs - a.RttMs) > 0.2 * Math.Max(a.RttMs, 0.5)
        || Math.Abs(Math.Log2(b.Loss + 1e-4) - Math.Log2(a.Loss + 1e-4)) >= 1
        || Math.Abs(b.BandwidthMbps - a.BandwidthMbps) > 0.25 * Math.Max(a.BandwidthMbps, 1);
}
