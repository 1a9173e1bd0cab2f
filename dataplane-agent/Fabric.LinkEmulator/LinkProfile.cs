using System.Globalization;
using System.Text;

namespace Fabric.LinkEmulator;

/// <summary>Gilbert–Elliott burst loss: a two-state Markov chain stepped once per packet.</summary>
/// <param name="P">Probability of moving from Good to Bad.</param>
/// <param name="R">Probability of moving from Bad to Good (mean burst length is 1/R packets).</param>
/// <param name="LossInBad">Loss probability in Bad (1 − h in the usual notation).</param>
/// <param name="LossInGood">Loss probability in Good (1 − k).</param>
public sealed record GilbertElliott(double P, double R, double LossInBad = 1.0, double LossInGood = 0.0)
{
    /// <summary>The long-run loss rate: πG·LossInGood + πB·LossInBad with πB = P/(P+R).</summary>
    public double StationaryLossRate => P + R == 0 ? LossInGood : ((R * LossInGood) + (P * LossInBad)) / (P + R);
}

/// <summary>
/// What one direction of an emulated link does to frames. Order of effects: loss (random or Gilbert–Elliott) on
/// arrival, then the bottleneck (rate or trace) with a drop-tail queue, then propagation delay with jitter.
/// Rates count Ethernet frame bytes (no preamble or FCS), as the kernel's tbf counts L2 bytes.
/// </summary>
public sealed record LinkProfile
{
    /// <summary>One-way propagation delay.</summary>
    public TimeSpan Delay { get; init; }

    /// <summary>Each frame's delay varies uniformly in [Delay − Jitter, Delay + Jitter] (never below zero).</summary>
    public TimeSpan Jitter { get; init; }

    /// <summary>Let jitter reorder frames (netem's default); off keeps delivery in arrival order.</summary>
    public bool AllowReorder { get; init; }

    /// <summary>Independent random loss probability, 0–1.</summary>
    public double LossRate { get; init; }

    /// <summary>Burst loss; when set it replaces <see cref="LossRate"/>.</summary>
    public GilbertElliott? BurstLoss { get; init; }

    /// <summary>Bottleneck rate in bit/s; 0 = unlimited.</summary>
    public long RateBitsPerSecond { get; init; }

    /// <summary>Frames the bottleneck may hold waiting (drop-tail beyond that).</summary>
    public int QueuePackets { get; init; } = 1000;

    /// <summary>A delivery-opportunity trace for the bottleneck; when set it replaces <see cref="RateBitsPerSecond"/>.</summary>
    public MahimahiTrace? Trace { get; init; }

    /// <summary>A perfect link.</summary>
    public static LinkProfile Clean { get; } = new();

    /// <summary>Text form, the same keys <see cref="Apply"/> reads.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"delay={Delay.TotalMilliseconds}ms jitter={Jitter.TotalMilliseconds}ms reorder={(AllowReorder ? "on" : "off")} ");
        text.Append(CultureInfo.InvariantCulture, $"loss={LossRate * 100}% ");
        if (BurstLoss is { } ge)
        {
            text.Append(CultureInfo.InvariantCulture, $"ge={ge.P},{ge.R},{ge.LossInBad},{ge.LossInGood} ");
        }
        text.Append(CultureInfo.InvariantCulture, $"rate={(RateBitsPerSecond == 0 ? "unlimited" : RateBitsPerSecond + "bit")} queue={QueuePackets}");
        if (Trace is not null)
        {
            text.Append(CultureInfo.InvariantCulture, $" trace={Trace.Name} ({Trace.AverageBitsPerSecond / 1e6:0.00} Mbit/s avg)");
        }
        return text.ToString();
    }

    /// <summary>
    /// Returns this profile with the given <c>key=value</c> settings changed: delay=30ms, jitter=2ms, reorder=on|off,
    /// loss=1% (or 0.01), ge=P,R[,lossInBad[,lossInGood]] or ge=off, rate=20mbit|500kbit|1gbit|unlimited, queue=100,
    /// trace=PATH|off. Throws <see cref="FormatException"/> naming the setting; nothing is applied when any setting is bad.
    /// </summary>
    public LinkProfile Apply(IEnumerable<string> settings)
    {
        var profile = this;
        foreach (var setting in settings)
        {
            var eq = setting.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new FormatException($"'{setting}' is not key=value.");
            }
            var key = setting[..eq].Trim().ToLowerInvariant();
            var value = setting[(eq + 1)..].Trim();
            profile = key switch
            {
                "delay" => profile with { Delay = ParseDuration(key, value) },
                "jitter" => profile with { Jitter = ParseDuration(key, value) },
                "reorder" => profile with { AllowReorder = ParseOnOff(key, value) },
                "loss" => profile with { LossRate = ParseProbability(key, value), BurstLoss = null },
                "ge" => profile with { BurstLoss = value == "off" ? null : ParseGilbertElliott(value) },
                "rate" => profile with { RateBitsPerSecond = ParseRate(value) },
                "queue" => profile with { QueuePackets = int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var q) && q > 0 ? q : throw new FormatException($"queue: '{value}' is not a positive number of packets.") },
                "trace" => profile with { Trace = value == "off" ? null : LoadTrace(value) },
                _ => throw new FormatException($"Unknown setting '{key}' (known: delay, jitter, reorder, loss, ge, rate, queue, trace)."),
            };
        }
        return profile;
    }

    private static MahimahiTrace LoadTrace(string path)
    {
        try
        {
            return MahimahiTrace.Load(path);
        }
        catch (FileNotFoundException e)
        {
            throw new FormatException($"trace: {e.Message}", e);
        }
    }

    private static TimeSpan ParseDuration(string key, string value)
    {
        var (number, unit) = SplitUnit(value);
        var scale = unit switch
        {
            "us" => 0.001,
            "ms" or "" => 1.0,
            "s" => 1000.0,
            _ => throw new FormatException($"{key}: unit '{unit}' is not us, ms or s."),
        };
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var amount) || amount < 0 || double.IsInfinity(amount))
        {
            throw new FormatException($"{key}: '{value}' is not a non-negative duration (e.g. 30ms).");
        }
        return TimeSpan.FromMilliseconds(amount * scale);
    }

    private static double ParseProbability(string key, string value)
    {
        var percent = value.EndsWith('%');
        if (!double.TryParse(percent ? value[..^1] : value, NumberStyles.Float, CultureInfo.InvariantCulture, out var amount))
        {
            throw new FormatException($"{key}: '{value}' is not a probability (e.g. 1% or 0.01).");
        }
        amount = percent ? amount / 100 : amount;
        return amount is >= 0 and <= 1 ? amount : throw new FormatException($"{key}: '{value}' is outside 0–100%.");
    }

    private static GilbertElliott ParseGilbertElliott(string value)
    {
        var parts = value.Split(',');
        if (parts.Length is < 2 or > 4)
        {
            throw new FormatException($"ge: '{value}' must be P,R[,lossInBad[,lossInGood]].");
        }
        var numbers = parts.Select(p => ParseProbability("ge", p)).ToArray();
        return new GilbertElliott(numbers[0], numbers[1], numbers.Length > 2 ? numbers[2] : 1.0, numbers.Length > 3 ? numbers[3] : 0.0);
    }

    private static long ParseRate(string value)
    {
        if (value is "unlimited" or "0")
        {
            return 0;
        }
        var (number, unit) = SplitUnit(value.ToLowerInvariant());
        var scale = unit switch
        {
            "bit" or "bps" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            _ => throw new FormatException($"rate: unit '{unit}' is not bit, kbit, mbit or gbit."),
        };
        return double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var amount) && amount > 0
            ? (long)(amount * scale)
            : throw new FormatException($"rate: '{value}' is not a positive rate (e.g. 20mbit).");
    }

    private static bool ParseOnOff(string key, string value) => value switch
    {
        "on" or "true" or "1" => true,
        "off" or "false" or "0" => false,
        _ => throw new FormatException($"{key}: '{value}' is not on or off."),
    };

    private static (string Number, string Unit) SplitUnit(string value)
    {
        var i = value.Length;
        while (i > 0 && char.IsLetter(value[i - 1]))
        {
            i--;
        }
        return (value[..i], value[i..]);
    }
}
