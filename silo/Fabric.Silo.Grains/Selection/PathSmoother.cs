namespace Fabric.Silo.Selection;

/// <summary>
/// Turns a path's one-second samples into conditions that survive the path changing regime, and says when they moved
/// enough to re-run selection (RTT by 20 %, loss by a factor of two on a log scale floored at 0.01 %, capacity by 25 %).
/// <list type="bullet">
/// <item>RTT, jitter and the delivered rate are smoothed exponentially (like TCP's SRTT); the RTT restarts from a sample
/// under <see cref="FloorFall"/> of the path's minimum (a shorter route). Loss is counted over the
/// newest samples that together hold at least <see cref="LossMinDatagrams"/> datagrams (and at least
/// <see cref="LossMinSamples"/> samples; at most the last <see cref="LossWindow"/>), and never from before the last
/// change of the link's loss (<see cref="LossChanged"/>): a busy path's loss follows within seconds, and so does a
/// quiet one's when the link's loss changes, an idle one's (ten probes a second, where one lost probe was 10 % of its second and kept an average near
/// 1 % for seconds) is counted over minutes. The embedded fleet's paths without traffic went std-ipv4 → fec → std-ipv4 every 20 to
/// 60 s on that noise alone.</item>
/// <item>The minimum RTT is taken over a window (two minutes) that restarts when the path changes regime: when for
/// <see cref="RegimeSamples"/> samples in a row every RTT sits more than twice above that minimum and barely moves (the
/// spread of the recent samples under half their minimum). A queue builds and drains — RTT saws up and down with the
/// sender's window — while a new route or medium holds a new floor; without the restart, a minimum from a datacenter
/// phase made every later phase look like a queue, and its loss like congestion.</item>
/// <item>A path is idle when none of the last minute's samples delivered <see cref="IdleMbps"/>.</item>
/// <item>Capacity is the median of the agent's last <see cref="TrainsKept"/> capacity trains within the last minute (the
/// bottleneck's rate, whichever stack carries the path's traffic: a VM on a stack that starves it no longer makes the
/// path look slow), or the highest rate delivered in the last minute where that is more; kept apart from what is
/// delivered now (an idle path delivers nothing and still has its capacity); 0 while neither is known. Three trains in a
/// row beyond a factor of two from the median of the minute's older trains restart both (<see cref="CapacityChanged"/>).</item>
/// <item>Burstiness of loss is the dispersion of the per-second loss counts since the last change of the link's loss (at
/// most the last minute; <see cref="Dispersion"/>): 0 with no loss, about 1 where datagrams are lost each on its own
/// (random loss), more where they are lost in runs or in bad seconds. RTT variability is the standard deviation of the
/// RTT over the last minute.</item>
/// </list>
/// </summary>
public sealed class PathSmoother(double weight = 0.3)
{
    /// <summary>The smallest loss rate taken as real (one in ten thousand).</summary>
    public const double LossResolution = 1e-4;

    /// <summary>How many samples the minimum RTT is taken over (about two minutes at one a second).</summary>
    public const int MinRttWindow = 120;

    /// <summary>Samples (about a minute) that capacity, burstiness and variability look back over.</summary>
    public const int RecentWindow = 60;

    /// <summary>Consecutive samples on a new, stable RTT floor that restart the minimum's window.</summary>
    public const int RegimeSamples = 10;

    /// <summary>
    /// The same within <see cref="RegimeSamples"/> samples of a change of the link's loss or capacity: a new floor that
    /// comes with one is a new link, not a queue (a queue's sawtooth held for three seconds would pass for a floor, which
    /// is why the window is ten without one). The learning benchmark's metro link went from 8 to 30 ms with its loss
    /// from 9 % to 0.5 %: for the ten seconds the old minimum held, the prior read the loss as congestion and put a
    /// bulk VM on std-ipv4 (5 Mbit/s where fec gave 130).
    /// </summary>
    public const int RegimeSamplesAfterChange = 3;

    // The sample number up to which a new floor needs only RegimeSamplesAfterChange samples.
    private long _quickRegimeUntil = -1;

    /// <summary>The fewest datagrams the loss is counted over (when the last minute holds that many).</summary>
    public const long LossMinDatagrams = 2000;

    /// <summary>The fewest samples the loss is counted over.</summary>
    public const int LossMinSamples = 3;

    /// <summary>The most samples (about five minutes) the loss is counted over.</summary>
    public const int LossWindow = 300;

    /// <summary>The fewest datagrams that show a change of the link's loss (<see cref="LossChanged"/>).</summary>
    public const long ChangeDatagrams = 300;

    /// <summary>
    /// The fewest samples that show a change of the link's loss, each on the new side. On a link with one bad second in
    /// ten, two in a row come about every two minutes and three about every twenty; the test against the minute before,
    /// widened by that minute's own spread, refuses most of those.
    /// </summary>
    public const int ChangeSamples = 3;

    /// <summary>The fewest samples between two changes of the loss: bursts of a few seconds, however often, change it at most this often.</summary>
    public const int ChangeSpacing = 20;

    /// <summary>The fewest older samples a change of the loss is judged against (so a burst is known as one).</summary>
    public const int ChangeOlderSamples = 10;

    /// <summary>How many standard errors apart the newest samples' loss and the older ones' must be to call it a change.</summary>
    public const double ChangeZ = 4;

    /// <summary>How many times the link's loss changed (the loss was counted afresh from the change on).</summary>
    public int LossChanges { get; private set; }

    // How many of the newest samples came since the last change of the loss (the count never reaches further back).
    private int _sinceLossChange = LossWindow;

    // The last samples' (sent, lost) (a ring; the newest at _countNext - 1). Per host path, not per VM path: 2.4 KB each.
    private readonly (int Sent, int Lost)[] _counts = new (int, int)[LossWindow];
    private int _countNext;
    private int _countFilled;

    /// <summary>How many capacity trains the capacity is the median of (an agent sends one every 5 s).</summary>
    public const int TrainsKept = 5;

    /// <summary>How many trains are held: a minute's (<see cref="RecentWindow"/> at one train every 5 s), what a change of the capacity is judged against.</summary>
    public const int TrainsHeld = 12;

    // The last trains' rates and the sample number each came with (a ring).
    private readonly (long N, double Mbps)[] _trains = new (long, double)[TrainsHeld];
    private int _trainCount;

    /// <summary>
    /// The smoothed conditions as values, computed from every sample (null before the first). Every sample of every path
    /// passes through here: a new <see cref="PathConditions"/> per sample, stored in a smoother that lives for the silo's
    /// life, made the garbage collector visit a hundred thousand old objects a second at 100,000 paths (a young
    /// collection paused the control plane for 170 ms, a quarter of its time); values stored in place cost it nothing.
    /// </summary>
    public SmoothedConditions? Now { get; private set; }

    /// <summary>The smoothed conditions, made once per sample and only when asked for (see <see cref="Now"/>).</summary>
    public PathConditions? Current => Now is { } now ? _current ??= now.ToConditions() : null;

    private PathConditions? _current;

    /// <summary>How many times the path changed regime (the minimum RTT's window restarted).</summary>
    public int RegimeChanges { get; private set; }

    // A monotonic queue of (sample number, RTT) in a ring that grows when full (never in the steady state): the front is
    // the window's minimum.
    private (long N, double Rtt)[] _floors = new (long, double)[4];
    private int _floorsStart;
    private int _floorsCount;
    // The last minute's samples in single precision (what variability and the delivered maximum need; 0.5 KB a path, not 1).
    private readonly Queue<(float Rtt, float Delivered)> _recent = new();
    private long _samples;
    private int _abovePlateau;

    /// <summary>The conditions the last significant change was announced with.</summary>
    private SmoothedConditions? _announced;

    private ref (long N, double Rtt) Floor(int i) => ref _floors[(_floorsStart + i) % _floors.Length];

    private double TrackMinRtt(double rtt)
    {
        var n = _samples++;
        if (_floorsCount > 0 && IsNewFloor(rtt, Floor(0).Rtt))
        {
            _floorsCount = 0;
            _abovePlateau = 0;
            RegimeChanges++;
        }
        while (_floorsCount > 0 && Floor(_floorsCount - 1).Rtt >= rtt)
        {
            _floorsCount--;
        }
        if (_floorsCount == _floors.Length)
        {
            var grown = new (long, double)[_floors.Length * 2];
            for (var i = 0; i < _floorsCount; i++)
            {
                grown[i] = Floor(i);
            }
            (_floors, _floorsStart) = (grown, 0);
        }
        Floor(_floorsCount++) = (n, rtt);
        while (Floor(0).N <= n - MinRttWindow)
        {
            (_floorsStart, _floorsCount) = ((_floorsStart + 1) % _floors.Length, _floorsCount - 1);
        }
        return Floor(0).Rtt;
    }

    private bool IsNewFloor(double rtt, double minimum)
    {
        _abovePlateau = rtt > 2 * Math.Max(minimum, 0.05) ? _abovePlateau + 1 : 0;
        var needed = _samples <= _quickRegimeUntil ? RegimeSamplesAfterChange : RegimeSamples;
        if (_abovePlateau < needed)
        {
            return false;
        }
        var last = _recent.Skip(Math.Max(0, _recent.Count - (needed - 1))).Select(r => (double)r.Rtt).Append(rtt).ToList();
        return last.Max() - last.Min() < 0.5 * last.Min();
    }

    /// <summary>
    /// A sample's RTT below this share of the path's minimum so far is a new, shorter route (no queue makes a packet faster
    /// than the path's propagation): the smoothed RTT restarts from it. Mixed in, it took ten seconds to fall from 65 to
    /// 13 ms (the learning benchmark's pantheon phase 2), and every second of that was a changed link to what the VM got
    /// (<see cref="OutcomeWindow.Of"/>) while the model read a path three times its minimum.
    /// </summary>
    public const double FloorFall = 0.5;

    /// <summary>Adds a sample; true when the VMs on the path should re-evaluate.</summary>
    public bool Add(PathSample sample)
    {
        var loss = sample.Sent > 0 ? Math.Clamp((double)sample.Lost / sample.Sent, 0, 1) : Now?.Loss ?? 0;
        var floorFell = _floorsCount > 0 && sample.RttMs < FloorFall * Floor(0).Rtt;
        var minRtt = TrackMinRtt(sample.RttMs);
        _recent.Enqueue(((float)sample.RttMs, (float)sample.DeliveredMbps));
        if (_recent.Count > RecentWindow)
        {
            _recent.Dequeue();
        }
        if (sample.CapacityMbps > 0 && double.IsFinite(sample.CapacityMbps))
        {
            _trains[_trainCount++ % TrainsHeld] = (_samples, sample.CapacityMbps);
            CapacityChanged();
        }
        var (delivered, rttStd) = Recent();
        var capacity = Math.Max(DeliveredSinceCapacityChange(), TrainCapacity());
        var counted = CountedLoss(sample, loss);
        // Over its own window, as long as a minute: a link that loses one second in ten is bursty while its newest
        // seconds lose nothing.
        var burstiness = Dispersion();
        if (LossChanges + CapacityChanges != _linkChangesSeen)
        {
            // The link's loss or capacity changed with this sample: a new RTT floor with it is taken sooner.
            _linkChangesSeen = LossChanges + CapacityChanges;
            _quickRegimeUntil = _samples + RegimeSamples;
        }
        // Idle once a minute passed with nothing delivered, busy again with the first second that delivers: a tenant
        // sending now and then keeps its path busy, not flipping between the two (each flip wakes every VM on the path).
        var idle = delivered < IdleMbps;
        // Below what the datagrams counted can resolve, the loss is none: the path is clean.
        var resolved = counted < LossResolution ? 0 : counted;
        var next = Now is not { } c
            ? new SmoothedConditions(sample.RttMs, sample.JitterMs, resolved, sample.DeliveredMbps, sample.At, minRtt, capacity, burstiness, rttStd, idle)
            : new SmoothedConditions(floorFell ? sample.RttMs : Mix(c.RttMs, sample.RttMs), Mix(c.JitterMs, sample.JitterMs), resolved, Mix(c.BandwidthMbps, sample.DeliveredMbps), sample.At,
                minRtt, capacity, burstiness, rttStd, idle);
        (Now, _current) = (next, null);
        if (_announced is not { } a || Moved(a.Idle, a.RttMs, a.Loss, a.CapacityMbps, next.Idle, next.RttMs, next.Loss, next.CapacityMbps))
        {
            _announced = next;
            return true;
        }
        return false;
    }

    /// <summary>
    /// Over the recent samples: the highest delivered rate and the RTT's standard deviation. Two passes over the queue
    /// without enumerators or lists: this runs for every sample of every path (at 100,000 paths, LINQ's enumerators and
    /// lists here were 5 % of the control plane's time).
    /// </summary>
    private (double MaxDelivered, double RttStd) Recent()
    {
        var (capacity, rttSum) = (double.MinValue, 0.0);
        foreach (var r in _recent)
        {
            // Not Math.Max: a NaN rate is skipped, as LINQ's Max skipped it.
            if (r.Delivered > capacity)
            {
                capacity = r.Delivered;
            }
            rttSum += r.Rtt;
        }
        var rttMean = rttSum / _recent.Count;
        var rttSquares = 0.0;
        foreach (var r in _recent)
        {
            rttSquares += (r.Rtt - rttMean) * (r.Rtt - rttMean);
        }
        return (capacity, Math.Sqrt(rttSquares / _recent.Count));
    }

    /// <summary>
    /// The loss over the newest samples holding <see cref="LossMinDatagrams"/> datagrams, never reaching back past the
    /// last change of the link's loss (<see cref="LossChanged"/>; see the class summary).
    /// </summary>
    private double CountedLoss(PathSample sample, double loss)
    {
        if (sample.Sent <= 0)
        {
            // Nothing sent, nothing learned: the last estimate stands.
            return loss;
        }
        var sent1 = (int)Math.Min(sample.Sent, int.MaxValue);
        _counts[_countNext] = (sent1, (int)Math.Clamp(sample.Lost, 0, sent1));
        _countNext = (_countNext + 1) % LossWindow;
        _countFilled = Math.Min(_countFilled + 1, LossWindow);
        _sinceLossChange = Math.Min(_sinceLossChange + 1, LossWindow);
        if (LossChanged() is { } newest)
        {
            _sinceLossChange = newest;
            LossChanges++;
        }
        var (sent, lost) = (0L, 0L);
        for (var k = 0; k < Math.Min(_countFilled, _sinceLossChange); k++)
        {
            var (s, l) = Count(k);
            (sent, lost) = (sent + s, lost + l);
            if (k + 1 >= LossMinSamples && sent >= LossMinDatagrams)
            {
                break;
            }
        }
        return (double)lost / sent;
    }

    /// <summary>The most <see cref="Dispersion"/> reads (what a path's history keeps at half precision holds it).</summary>
    public const double MaxBurstiness = 1000;

    /// <summary>
    /// The loss counts' dispersion over the newest samples since the last change of the link's loss (at most
    /// <see cref="RecentWindow"/>): their squared deviations from what the pooled rate expects of each, over what a
    /// binomial count at that rate would show. Datagrams lost each on its own read about 1 whatever the rate and the
    /// traffic; lost in runs of L, about 2L − 1 (a Gilbert–Elliott link whose bad state lasts three datagrams, about 5);
    /// 0 with no loss. It replaced the coefficient of variation of the per-second loss rate over the last minute, which
    /// read 1.8 both on the learning benchmark's Pantheon path (3 % random loss, after a minute at 0.3 %) and on a
    /// training link losing 3 % in bursts: the minute spanned the change, and at a few hundred datagrams a second a
    /// binomial count's own spread is that large. The model could not tell the two apart, and fec, the best latency
    /// stack at random loss and a poor one at bursty loss, was judged by the bursty link.
    /// </summary>
    private double Dispersion()
    {
        // One pass: the sum of (l - s p)^2 is the sum of l^2 - 2 p s l + p^2 s^2.
        var samples = Math.Min(Math.Min(_countFilled, _sinceLossChange), RecentWindow);
        var (sent, lost, lostSquares, products, sentSquares) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (var k = 0; k < samples; k++)
        {
            var (s, l) = Count(k);
            (sent, lost, lostSquares, products, sentSquares) = (sent + s, lost + l, lostSquares + ((double)l * l), products + ((double)s * l), sentSquares + ((double)s * s));
        }
        if (lost == 0 || samples < 2)
        {
            // No loss: none to be bursty. One sample alone says nothing of its spread: the last estimate stands.
            return lost == 0 ? 0 : Now?.LossBurstiness ?? 0;
        }
        var p = lost / sent;
        var binomial = sent * p * (1 - p);
        // The pooled rate is fitted to these samples: their squares over n - 1, not n (three samples after a change would
        // read random loss as 0.67). At most MaxBurstiness: one second of a busy path lost whole reads in the hundred thousands.
        return binomial <= 0 ? 0 : Math.Min(MaxBurstiness, Math.Max(0, lostSquares - (2 * p * products) + (p * p * sentSquares)) / binomial * samples / (samples - 1));
    }

    /// <summary>The k-th newest sample's (sent, lost).</summary>
    private (int Sent, int Lost) Count(int k) => _counts[(_countNext - 1 - k + LossWindow) % LossWindow];

    /// <summary>
    /// How many of the newest samples show a loss rate the ones before them (since the last change) cannot have come
    /// from, or null. The newest samples holding <see cref="ChangeDatagrams"/> datagrams (at least <see cref="ChangeSamples"/>) are set against
    /// the minute before them (at least <see cref="ChangeOlderSamples"/> samples, since the last change): a change when their rates differ by a factor of two (on the scale
    /// <see cref="Significant"/> uses) and by <see cref="ChangeZ"/> standard errors of a binomial count, widened by how much
    /// more the older samples' loss varies from second to second than a binomial count would (bursty loss, where a bad
    /// second is no news). Counting only since the change, a path whose loss goes from 0.2 % to 4 % shows it within
    /// three seconds even at a few hundred datagrams a second, where 2,000 datagrams took a latency VM's path seven, each
    /// of them retransmission timeouts for its requests on a stack that recovers nothing.
    /// </summary>
    private int? LossChanged()
    {
        var limit = Math.Min(_countFilled, _sinceLossChange);
        if (limit < Math.Max(ChangeSamples + ChangeOlderSamples, ChangeSpacing))
        {
            return null;
        }
        var (k, newSent, newLost) = (0, 0L, 0L);
        for (; k < limit && (k < ChangeSamples || newSent < ChangeDatagrams); k++)
        {
            var (s, l) = Count(k);
            (newSent, newLost) = (newSent + s, newLost + l);
        }
        var split = k;
        var (oldSent, oldLost) = (0L, 0L);
        for (; k < limit && k - split < RecentWindow; k++)
        {
            var (s, l) = Count(k);
            (oldSent, oldLost) = (oldSent + s, oldLost + l);
        }
        var olderSamples = k - split;
        if (newSent < ChangeDatagrams || oldSent < ChangeDatagrams || olderSamples < ChangeOlderSamples)
        {
            return null;
        }
        var (pNew, pOld) = ((double)newLost / newSent, (double)oldLost / oldSent);
        if (Math.Abs(Math.Log2(pNew + 1e-4) - Math.Log2(pOld + 1e-4)) < 1)
        {
            return null;
        }
        // Every one of the newest samples on the new side: one bad second beside a good one is a burst, not a change.
        for (var j = 0; j < split; j++)
        {
            var (s, l) = Count(j);
            if (Math.Abs(Math.Log2(((double)l / s) + 1e-4) - Math.Log2(pOld + 1e-4)) < 1 || (pNew > pOld) != ((double)l / s > pOld))
            {
                return null;
            }
        }
        // Dispersion of the older samples around their own rate, against a binomial count's (at least 1).
        var pooled = (double)(newLost + oldLost) / (newSent + oldSent);
        var chi = 0.0;
        for (var j = split; j < k; j++)
        {
            var (s, l) = Count(j);
            var expected = s * pOld;
            chi += (l - expected) * (l - expected) / Math.Max(s * Math.Max(pOld, 1.0 / oldSent) * (1 - pOld), 1e-9);
        }
        var dispersion = Math.Max(1, chi / (olderSamples - 1));
        var se = Math.Sqrt(dispersion * Math.Max(pooled * (1 - pooled), 1.0 / (newSent + oldSent)) * ((1.0 / newSent) + (1.0 / oldSent)));
        return Math.Abs(pNew - pOld) > ChangeZ * se ? split : null;
    }

    /// <summary>
    /// When the <see cref="ChangeTrains"/> newest trains all lie more than a factor of two from the median of the older
    /// trains of the last minute (at least two), on the same side, the link's bottleneck changed: the older trains, and
    /// what was delivered before the first of the three, no longer count. A dip of one or two trains (cross traffic for a
    /// few seconds) does not, nor does the return after it: the median of the minute before is the link's, not the dip's.
    /// Otherwise a link that fell from 150 to 5.6 Mbit/s was taken for 150 for up to a minute (the most delivered in the
    /// last minute) — every stack on it then looked as if it starved the VM, and a left stack's memory was lost as the
    /// figure fell (the learning benchmark's pantheon phase 3 went fec → std-ipv4 → fec → std-ipv4).
    /// </summary>
    private void CapacityChanged()
    {
        if (_trainCount <= ChangeTrains + 1 || Train(ChangeTrains).N <= _samples - RecentWindow)
        {
            return;
        }
        Span<double> older = stackalloc double[TrainsHeld - ChangeTrains];
        var n = 0;
        for (var k = ChangeTrains + 1; k <= Math.Min(_trainCount, TrainsHeld); k++)
        {
            var t = Train(k);
            if (t.N > _samples - RecentWindow)
            {
                older[n++] = t.Mbps;
            }
        }
        if (n < 2)
        {
            return;
        }
        var median = Median(older[..n]);
        var side = 0;
        for (var k = 1; k <= ChangeTrains; k++)
        {
            var ratio = Math.Log2(Train(k).Mbps / median);
            if (Math.Abs(ratio) <= 1 || (side != 0 && Math.Sign(ratio) != side))
            {
                return;
            }
            side = Math.Sign(ratio);
        }
        for (var k = ChangeTrains + 1; k <= Math.Min(_trainCount, TrainsHeld); k++)
        {
            _trains[TrainIndex(k)].N = long.MinValue / 2;
        }
        _capacitySince = Train(ChangeTrains).N - 1;
        CapacityChanges++;
    }

    // The k-th newest train (1: the newest; k at most the trains received and TrainsHeld).
    private (long N, double Mbps) Train(int k) => _trains[TrainIndex(k)];

    private int TrainIndex(int k) => (_trainCount - k) % TrainsHeld;

    private static double Median(Span<double> rates)
    {
        rates.Sort();
        var n = rates.Length;
        return n % 2 == 1 ? rates[n / 2] : (rates[(n / 2) - 1] + rates[n / 2]) / 2;
    }

    /// <summary>How many trains in a row, each beyond a factor of two from the median before them, change the capacity.</summary>
    public const int ChangeTrains = 3;

    /// <summary>How many times the path's bottleneck rate changed (<see cref="CapacityChanged"/>).</summary>
    public int CapacityChanges { get; private set; }

    // LossChanges + CapacityChanges as the last sample left them.
    private int _linkChangesSeen;

    // The sample number from which delivered rates count towards the capacity (since the last change of the bottleneck).
    private long _capacitySince;

    /// <summary>The most delivered in the recent samples that came since the bottleneck's last change.</summary>
    private double DeliveredSinceCapacityChange()
    {
        var (most, number) = (0.0, _samples - _recent.Count);
        foreach (var r in _recent)
        {
            if (number++ >= _capacitySince && r.Delivered > most)
            {
                most = r.Delivered;
            }
        }
        return most;
    }

    /// <summary>The median of the newest <see cref="TrainsKept"/> trains within the last minute (0: none).</summary>
    private double TrainCapacity()
    {
        Span<double> rates = stackalloc double[TrainsKept];
        var n = 0;
        for (var k = 1; k <= Math.Min(_trainCount, TrainsKept); k++)
        {
            var t = Train(k);
            if (t.N > _samples - RecentWindow)
            {
                rates[n++] = t.Mbps;
            }
        }
        return n == 0 ? 0 : Median(rates[..n]);
    }

    private double Mix(double old, double sample) => old + weight * (sample - old);

    /// <summary>
    /// Whether the link itself changed between <paramref name="a"/> and <paramref name="b"/>: its capacity (by 25 %), its
    /// minimum RTT (by 20 %) or its loss (by a factor of two on a log scale floored at 0.1 %, where loss starts to cost a
    /// VM anything: <see cref="ProfileScorer.NoiseFloor"/>), which the stack in use does not move — unlike the RTT above the
    /// minimum (its queue) and the jitter. What a VM got on a stack holds only while the link has not changed, so a floor
    /// at 0.01 % let one lost datagram on a clean path void it.
    /// </summary>
    public static bool LinkChanged(PathConditions a, PathConditions b) =>
        (a.CapacityMbps > 0 && b.CapacityMbps > 0 && Math.Abs(b.CapacityMbps - a.CapacityMbps) > 0.25 * a.CapacityMbps)
        || (a.MinRttMs > 0 && b.MinRttMs > 0 && Math.Abs(b.MinRttMs - a.MinRttMs) > 0.2 * Math.Max(a.MinRttMs, 0.5))
        || Math.Abs(Math.Log2(b.Loss + ProfileScorer.NoiseFloor) - Math.Log2(a.Loss + ProfileScorer.NoiseFloor)) >= 1;

    /// <summary>
    /// A path whose seconds of the last minute all delivered less than this carries no VM traffic (its agents' probes and
    /// trains are not counted: an idle path delivers 0).
    /// </summary>
    public const double IdleMbps = 0.001;

    /// <summary>Whether <paramref name="b"/> differs from <paramref name="a"/> enough to run select_stack again (traffic starting or stopping does too).</summary>
    public static bool Significant(PathConditions a, PathConditions b) =>
        Moved(a.Idle, a.RttMs, a.Loss, a.CapacityMbps, b.Idle, b.RttMs, b.Loss, b.CapacityMbps);

    private static bool Moved(bool idleA, double rttA, double lossA, double capacityA, bool idleB, double rttB, double lossB, double capacityB) =>
        idleA != idleB ||
        Math.Abs(rttB - rttA) > 0.2 * Math.Max(rttA, 0.5)
        || Math.Abs(Math.Log2(lossB + 1e-4) - Math.Log2(lossA + 1e-4)) >= 1
        || Math.Abs(capacityB - capacityA) > 0.25 * Math.Max(capacityA, 1);
}

/// <summary>A path's smoothed conditions as values, as <see cref="PathSmoother"/> keeps them (see <see cref="PathConditions"/> for each figure).</summary>
public readonly record struct SmoothedConditions(double RttMs, double JitterMs, double Loss, double BandwidthMbps, DateTimeOffset At, double MinRttMs,
    double CapacityMbps, double LossBurstiness, double RttStdMs, bool Idle)
{
    public PathConditions ToConditions() => new(RttMs, JitterMs, Loss, BandwidthMbps, At, MinRttMs, CapacityMbps, LossBurstiness, RttStdMs, Idle);

    public static SmoothedConditions Of(PathConditions c) => new(c.RttMs, c.JitterMs, c.Loss, c.BandwidthMbps, c.At, c.MinRttMs, c.CapacityMbps, c.LossBurstiness, c.RttStdMs, c.Idle);
}
