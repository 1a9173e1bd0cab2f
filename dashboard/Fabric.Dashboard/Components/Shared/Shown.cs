using Fabric.Silo;
using MudBlazor;

namespace Fabric.Dashboard.Components.Shared;

/// <summary>How pages word and colour what they show.</summary>
public static class Shown
{
    public static string Conditions(PathConditions? c) => c is null ? "not measured yet"
        : $"{c.RttMs:0.#} ms, loss {c.Loss * 100:0.##} %, jitter {c.JitterMs:0.#} ms, {c.BandwidthMbps:0.#} Mbit/s";

    public static Color StackColor(string stack) => stack switch
    {
        "secure" => Color.Secondary,
        "fec" => Color.Info,
        "arq-lowlat" or "arq-bulk" => Color.Success,
        _ => Color.Default,
    };

    public static string Ago(DateTimeOffset at)
    {
        var age = DateTimeOffset.UtcNow - at;
        return age.TotalSeconds < 60 ? $"{Math.Max(0, age.TotalSeconds):0} s ago" : age.TotalMinutes < 60 ? $"{age.TotalMinutes:0} min ago" : at.ToString("u", System.Globalization.CultureInfo.InvariantCulture);
    }
}
