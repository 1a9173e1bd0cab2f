using Fabric.Silo.Selection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Orleans.Storage;

namespace Fabric.Silo;

/// <summary>What every Fabric silo needs besides clustering and storage: the selector and a time source.</summary>
public static class SiloBuilderExtensions
{
    public static ISiloBuilder AddFabricControlPlane(this ISiloBuilder silo, SelectorOptions? selector = null)
    {
        silo.Services.TryAddSingleton(TimeProvider.System);
        silo.Services.TryAddSingleton<IStackScorer, ProfileScorer>();
        silo.Services.TryAddSingleton(selector ?? new SelectorOptions());
        silo.Services.TryAddSingleton<StackSelector>(sp => new StackSelector(sp.GetRequiredService<IStackScorer>(), sp.GetRequiredService<SelectorOptions>()));
        // Grain state in Orleans' own version-tolerant binary format (the records' [Id]s), not the default Newtonsoft
        // JSON: profiling the control-plane benchmark showed JSON serialization of grain state as its largest CPU cost.
        silo.Services.Replace(ServiceDescriptor.Singleton<IGrainStorageSerializer, OrleansGrainStorageSerializer>());
        return silo;
    }
}
