using Fabric.Hal.Inventory;
using Fabric.Hal.Sriov;
using Fabric.Wire;

namespace Fabric.Hal.Tests;

public class VfConfiguratorTests
{
    private sealed class RecordingRunner(int failAt = -1) : IVfStepRunner
    {
        public List<string> Ran { get; } = [];

        public string? Run(VfStep step)
        {
            if (Ran.Count == failAt)
            {
                return "RTNETLINK answers: Operation not supported";
            }
            Ran.Add(step.Describe());
            return null;
        }
    }

    [Fact]
    public void Request_BecomesExactlyTheseSteps()
    {
        using var sysfs = new FakeSysfs();
        var runner = new RecordingRunner();
        var configurator = new VfConfigurator(new SysfsInventory(sysfs.Root), runner, sysfs.Root);
        MacAddress.TryParse("02:00:00:00:aa:01", out var mac);
        var plan = configurator.Plan(new VfRequest("enp3s0f0", 8,
        [
            new VfSettings(5, Mac: mac, Vlan: 100, VlanQos: 3, MaxTxRateMbps: 1000, MinTxRateMbps: 100, Trust: false, SpoofCheck: true),
            new VfSettings(0, Trust: true),
        ]));
        configurator.Apply(plan);
        var numvfs = Path.Combine(sysfs.Root, "class", "net", "enp3s0f0", "device", "sriov_numvfs");
        Assert.Equal(
        [
            $"echo 0 > {numvfs}",
            $"echo 8 > {numvfs}",
            "ip link set dev enp3s0f0 vf 0 trust on",
            "ip link set dev enp3s0f0 vf 5 mac 02:00:00:00:aa:01 vlan 100 qos 3 max_tx_rate 1000 min_tx_rate 100 trust off spoofchk on",
        ], runner.Ran);
    }

    [Fact]
    public void EnablingVfsFromZero_WritesTheCountOnce()
    {
        using var sysfs = new FakeSysfs();
        var plan = new VfConfigurator(new SysfsInventory(sysfs.Root), new RecordingRunner(), sysfs.Root).Plan(new VfRequest("enp3s0f1", 2, []));
        Assert.Equal([$"echo 2 > {Path.Combine(sysfs.Root, "class", "net", "enp3s0f1", "device", "sriov_numvfs")}"], plan.Steps.Select(s => s.Describe()));
    }

    public static TheoryData<string, int?, VfSettings, string> Impossible() => new()
    {
        { "enp3s0f0", 64, new VfSettings(0), "numVfs 64 is outside 0..63" },
        { "enp3s0f0", null, new VfSettings(4), "vf 4: index is outside 0..3" },
        { "enp3s0f0", null, new VfSettings(0, Mac: new MacAddress(0x01_00_5e_00_00_01)), "mac 01:00:5e:00:00:01 is not a unicast address" },
        { "enp3s0f0", null, new VfSettings(0, Mac: new MacAddress(0)), "is not a unicast address" },
        { "enp3s0f0", null, new VfSettings(0, Vlan: 4095), "vlan 4095 is outside 0..4094" },
        { "enp3s0f0", null, new VfSettings(0, VlanQos: 2), "qos 2 needs a vlan" },
        { "enp3s0f0", null, new VfSettings(0, MaxTxRateMbps: 100, MinTxRateMbps: 200), "min_tx_rate 200 is above max_tx_rate 100" },
        { "enp3s0f0", null, new VfSettings(0, MaxTxRateMbps: 20000), "above the link speed 10000" },
        { "veth-a", 1, new VfSettings(0), "is not an SR-IOV physical function" },
        { "eth9", 1, new VfSettings(0), "no such network device" },
    };

    [Theory]
    [MemberData(nameof(Impossible))]
    public void ImpossibleRequests_AreRefusedAndNothingRuns(string pf, int? numVfs, VfSettings vf, string expected)
    {
        using var sysfs = new FakeSysfs();
        var runner = new RecordingRunner();
        var configurator = new VfConfigurator(new SysfsInventory(sysfs.Root), runner, sysfs.Root);
        var e = Assert.Throws<VfRequestException>(() => configurator.Plan(new VfRequest(pf, numVfs, [vf])));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains(pf, e.Message, StringComparison.Ordinal);
        Assert.Empty(runner.Ran);
    }

    [Fact]
    public void EveryProblem_IsListedAtOnce()
    {
        using var sysfs = new FakeSysfs();
        var configurator = new VfConfigurator(new SysfsInventory(sysfs.Root), new RecordingRunner(), sysfs.Root);
        var e = Assert.Throws<VfRequestException>(() => configurator.Plan(new VfRequest("enp3s0f0", null, [new VfSettings(9, Vlan: -1), new VfSettings(9)])));
        Assert.Equal(4, e.Problems.Count);
    }

    [Fact]
    public void AFailingStep_IsNamedWithWhatWasAlreadyApplied()
    {
        using var sysfs = new FakeSysfs();
        var runner = new RecordingRunner(failAt: 1);
        var configurator = new VfConfigurator(new SysfsInventory(sysfs.Root), runner, sysfs.Root);
        var plan = configurator.Plan(new VfRequest("enp3s0f0", null, [new VfSettings(0, Trust: true), new VfSettings(1, SpoofCheck: false)]));
        var e = Assert.Throws<InvalidOperationException>(() => configurator.Apply(plan));
        Assert.Contains("step 2 of 2 (ip link set dev enp3s0f0 vf 1 spoofchk off)", e.Message, StringComparison.Ordinal);
        Assert.Contains("Steps 1..1 were applied", e.Message, StringComparison.Ordinal);
    }
}
