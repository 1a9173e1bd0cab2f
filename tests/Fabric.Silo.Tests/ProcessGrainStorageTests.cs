using Microsoft.Extensions.DependencyInjection;
using Orleans.Serialization;
using Orleans.Storage;

namespace Fabric.Silo.Tests;

/// <summary>The embedded default's grain storage keeps what was written, as written, and refuses a write over one it did not read.</summary>
public sealed class ProcessGrainStorageTests
{
    private static readonly GrainId Vm = GrainId.Create("vm", "web-1");

    private static ProcessGrainStorage Storage() => new(new ServiceCollection().AddSerializer().BuildServiceProvider().GetRequiredService<DeepCopier>());

    [Fact]
    public async Task AWrite_IsReadBackAsWritten_NotAsTheGrainChangedItAfter()
    {
        var storage = Storage();
        var fresh = new GrainState<List<string>>();
        await storage.ReadStateAsync("log", Vm, fresh);
        Assert.False(fresh.RecordExists);
        Assert.Null(fresh.ETag);

        var written = new GrainState<List<string>> { State = ["fec"] };
        await storage.WriteStateAsync("log", Vm, written);
        written.State.Add("changed after the write");
        var read = new GrainState<List<string>>();
        await storage.ReadStateAsync("log", Vm, read);
        Assert.True(read.RecordExists);
        Assert.Equal(["fec"], read.State);
        Assert.Equal(written.ETag, read.ETag);
        // Another state name, or another grain, is another record.
        var other = new GrainState<List<string>>();
        await storage.ReadStateAsync("log", GrainId.Create("vm", "web-2"), other);
        Assert.False(other.RecordExists);
    }

    [Fact]
    public async Task AWriteOverAStateItDidNotRead_IsRefused_AndAClearForgetsIt()
    {
        var storage = Storage();
        var first = new GrainState<List<string>> { State = ["std-ipv4"] };
        await storage.WriteStateAsync("log", Vm, first);
        var stale = new GrainState<List<string>> { State = ["secure"] };
        await Assert.ThrowsAsync<InconsistentStateException>(() => storage.WriteStateAsync("log", Vm, stale));
        await storage.WriteStateAsync("log", Vm, first);
        await Assert.ThrowsAsync<InconsistentStateException>(() => storage.ClearStateAsync("log", Vm, stale));
        // "*" is Orleans' "whatever is stored".
        await storage.WriteStateAsync("log", Vm, new GrainState<List<string>> { State = ["arq-bulk"], ETag = "*" });
        var forced = new GrainState<List<string>>();
        await storage.ReadStateAsync("log", Vm, forced);
        Assert.Equal(["arq-bulk"], forced.State);
        first.ETag = forced.ETag;

        await storage.ClearStateAsync("log", Vm, first);
        var read = new GrainState<List<string>>();
        await storage.ReadStateAsync("log", Vm, read);
        Assert.False(read.RecordExists);
        Assert.Null(first.ETag);
    }
}
