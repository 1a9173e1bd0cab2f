using System.Collections.Concurrent;
using Orleans.Serialization;
using Orleans.Storage;

namespace Fabric.Silo;

/// <summary>
/// Grain state in this process's memory, for a control plane of one silo (the embedded default): gone when the process
/// ends, as Orleans' memory storage is, but held in a dictionary rather than in storage grains. Those are grains
/// themselves, so a silo shutting down deactivated them before the grains that flush their state on deactivation (every
/// VM's decision log), and each such write failed with a page of errors at every Ctrl+C. One silo only: another silo's
/// grains would not see this process's state. State is kept as a deep copy (a grain's later changes reach it only by a
/// write) and writes are checked by ETag, as any Orleans storage does.
/// </summary>
public sealed class ProcessGrainStorage(DeepCopier copier) : IGrainStorage
{
    private readonly ConcurrentDictionary<(string State, GrainId Grain), (object State, string ETag)> _states = new();
    private long _version;

    public Task ReadStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        if (_states.TryGetValue((stateName, grainId), out var stored))
        {
            grainState.State = copier.Copy((T)stored.State);
            grainState.ETag = stored.ETag;
            grainState.RecordExists = true;
        }
        else
        {
            // The state stays as Orleans made it (its own activator knows the grain's state type).
            grainState.ETag = null;
            grainState.RecordExists = false;
        }
        return Task.CompletedTask;
    }

    public Task WriteStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        var etag = Interlocked.Increment(ref _version).ToString(System.Globalization.CultureInfo.InvariantCulture);
        Replace((stateName, grainId), grainState.ETag, (copier.Copy(grainState.State)!, etag));
        grainState.ETag = etag;
        grainState.RecordExists = true;
        return Task.CompletedTask;
    }

    public Task ClearStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        Replace((stateName, grainId), grainState.ETag, null);
        grainState.ETag = null;
        grainState.RecordExists = false;
        return Task.CompletedTask;
    }

    /// <summary>
    /// Puts <paramref name="next"/> (null: removes) where the stored ETag is <paramref name="expected"/> ("*": whatever it
    /// is); else throws as Orleans' storages do.
    /// </summary>
    private void Replace((string, GrainId) key, string? expected, (object State, string ETag)? next)
    {
        lock (_states)
        {
            var current = _states.TryGetValue(key, out var stored) ? stored.ETag : null;
            if (current != expected && expected != "*")
            {
                throw new InconsistentStateException($"state {key.Item1} of {key.Item2} was written meanwhile", current ?? "none", expected ?? "none");
            }
            if (next is { } value)
            {
                _states[key] = value;
            }
            else
            {
                _states.TryRemove(key, out _);
            }
        }
    }
}
