using System.Globalization;
using Fabric.Silo.Selection;

namespace Fabric.Silo.Learning;

/// <summary>
/// The scorer every selector in this silo uses: the fleet's model where it has seen enough outcomes like the one at
/// hand, the profile prior everywhere else (no model yet, learning switched off, or too few similar outcomes). The model
/// in use is swapped atomically by <see cref="ModelRefresher"/>; scoring is thread-safe.
/// </summary>
/// <param name="prior">The profile scorer, which decides where the model cannot.</param>
/// <param name="minSupport">Fewer training outcomes near a context than this: the prior decides there.</param>
public sealed class LearnedScorer(ProfileScorer prior, int minSupport = UtilityModel.DefaultMinSupport) : IStackScorer
{
    private volatile Installed? _installed;

    private sealed record Installed(UtilityModel? Model, bool Enabled);

    /// <summary>The model version scoring now (0: none).</summary>
    public long Version => _installed?.Model?.Version ?? 0;

    public bool Enabled => _installed?.Enabled ?? true;

    /// <summary>The model installed (null: none).</summary>
    public UtilityModel? Model => _installed?.Model;

    /// <summary>Installs a model (or none) and whether learning is on; the previous model is left to the collector
    /// (a concurrent scoring may still hold it).</summary>
    public void Use(UtilityModel? model, bool enabled) => _installed = new Installed(model, enabled);

    public StackScore Score(StackInfo stack, PathConditions conditions, Policy policy, string? vmId = null, string? current = null)
    {
        var installed = _installed;
        var fromPrior = prior.Score(stack, conditions, policy);
        if (installed is not { Model: { } model })
        {
            return fromPrior with { Why = $"prior (no model yet): {fromPrior.Why}" };
        }
        if (!installed.Enabled)
        {
            return fromPrior with { Why = $"prior (learning switched off): {fromPrior.Why}" };
        }
        var (utility, support, uncertainty, effect, vmOutcomes) = model.Predict(stack.Id, policy.Workload, conditions, vmId, current);
        if (support < minSupport)
        {
            // Beside candidates the model scores (StackScore.BesideModel), taken to be about as far off as the model is on
            // one held-back outcome: the least a guess where the model knows too little can be.
            return fromPrior with { BesideModel = model.Info.HoldoutError,
                Why = $"prior (model v{model.Version} has {support} similar outcomes, needs {minSupport}): {fromPrior.Why}" };
        }
        // Rounded first: an effect just below zero would read "-+0.00" (its sign kept, its digits rounded away).
        var shown = Math.Round(effect, 2) is var rounded && rounded == 0 ? 0 : rounded;
        // No stack answers a request sooner than a round trip: a prediction above what the path's least RTT allows is the
        // model carrying another path's outcomes over (in a learning benchmark run, arq-bulk 0.74 for a latency VM on a
        // 64 ms path, where 0.51 is the most a p99 of one round trip scores; the VM moved there and stayed).
        var ceiling = Utility.Ceiling(policy.Workload, conditions);
        var capped = utility > ceiling ? string.Create(CultureInfo.InvariantCulture, $"; at most {ceiling:0.00} over the path's {Utility.RoundTripFloorMs(conditions):0.#} ms round trip") : "";
        return new StackScore(Math.Min(utility, ceiling), string.Create(CultureInfo.InvariantCulture,
            $"model v{model.Version}: {utility:0.00} ± {uncertainty:0.00} from {support:N0} similar outcomes{(vmOutcomes > 0 ? $", this VM {shown:+0.00;-0.00} from {vmOutcomes:N0} of its own" : "")} (prior {fromPrior.Score:0.00}){capped}"), uncertainty, $"model v{model.Version}");
    }
}
