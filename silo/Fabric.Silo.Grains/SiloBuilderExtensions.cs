using Fabric.Repository;
using Fabric.Silo.Learning;
using Fabric.Silo.Selection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Orleans.Runtime.Hosting;
using Orleans.Serialization;
using Orleans.Storage;

namespace Fabric.Silo;

/// <summary>What every Fabric silo needs besides clustering and storage: the selector, the learner's log and scorer, a time source.</summary>
public static class SiloBuilderExtensions
{
    /// <param name="silo">The silo.</param>
    /// <param name="selector">How eager selection is (defaults: <see cref="SelectorOptions"/>).</param>
    /// <param name="learning">Where the outcome log and the models live; when not given (and none registered), a temporary
    /// folder deleted when the silo's services are disposed.</param>
    /// <param name="rollouts">How new stack versions go out (defaults: <see cref="Rollouts.RolloutOptions"/>).</param>
    public static ISiloBuilder AddFabricControlPlane(this ISiloBuilder silo, SelectorOptions? selector = null, LearningOptions? learning = null,
        Rollouts.RolloutOptions? rollouts = null)
    {
        silo.Services.TryAddSingleton(TimeProvider.System);
        if (learning is not null)
        {
            silo.Services.TryAddSingleton(learning);
        }
        else if (!silo.Services.Any(service => service.ServiceType == typeof(LearningOptions)))
        {
            var temporary = LearningOptions.Temporary();
            silo.Services.AddSingleton(temporary);
            // Before the learner's services: hosted services stop in reverse order, and the folder goes when all are disposed.
            silo.Services.AddHostedService(_ => new TemporaryLearningFolder(temporary.Store));
        }
        silo.Services.TryAddSingleton(sp =>
        {
            var options = sp.GetRequiredService<LearningOptions>();
            return new OutcomeLog(RepositoryStores.Open(options.Store), sp.GetRequiredService<TimeProvider>(), options.RetentionDays);
        });
        silo.Services.TryAddSingleton<ProfileScorer>();
        silo.Services.TryAddSingleton(sp => new LearnedScorer(sp.GetRequiredService<ProfileScorer>(), sp.GetRequiredService<LearningOptions>().MinSupport));
        silo.Services.TryAddSingleton<IStackScorer>(sp => sp.GetRequiredService<LearnedScorer>());
        silo.Services.AddHostedService<ModelRefresher>();
        silo.Services.AddHostedService<OutcomeLogFlusher>();
        silo.Services.TryAddSingleton(selector ?? new SelectorOptions());
        silo.Services.TryAddSingleton(new AgentSubscriptionOptions());
        silo.Services.TryAddSingleton(rollouts ?? new Rollouts.RolloutOptions());
        silo.Services.TryAddSingleton<StackSelector>(sp => new StackSelector(sp.GetRequiredService<IStackScorer>(), sp.GetRequiredService<SelectorOptions>()));
        // Grain state in Orleans' own version-tolerant binary format (the records' [Id]s), not the default Newtonsoft
        // JSON: profiling the control-plane benchmark showed JSON serialization of grain state as its largest CPU cost.
        silo.Services.Replace(ServiceDescriptor.Singleton<IGrainStorageSerializer, OrleansGrainStorageSerializer>());
        return silo;
    }

    /// <summary>Grain state in this process's memory, for a control plane of one silo (see <see cref="ProcessGrainStorage"/>).</summary>
    public static ISiloBuilder AddProcessGrainStorage(this ISiloBuilder silo) =>
        silo.ConfigureServices(services => services.AddGrainStorage(Storage.Name, (provider, _) => new ProcessGrainStorage(provider.GetRequiredService<DeepCopier>())));

    /// <summary>
    /// The embedded default's control plane (fabric-embedded's own silo, and the one <c>bench/stationary.sh</c> measures):
    /// grain state in this process's memory (<see cref="ProcessGrainStorage"/>), the selector's defaults, the outcome log and
    /// the models in <paramref name="learningStore"/> (a folder kept across runs, so the fleet keeps what it learned), the learner every 60 s
    /// while its trainings take at most 1 % of a core on average (a training that took 3 s puts the next off for 5 min; the larger the
    /// log, the longer a training, so the schedule spaces out as the log grows).
    /// </summary>
    public static ISiloBuilder AddEmbeddedControlPlane(this ISiloBuilder silo, string learningStore) => silo
        .AddProcessGrainStorage()
        .AddFabricControlPlane(new SelectorOptions(), new LearningOptions(learningStore, TrainEverySeconds: 60, TrainingShare: 0.01));
}
