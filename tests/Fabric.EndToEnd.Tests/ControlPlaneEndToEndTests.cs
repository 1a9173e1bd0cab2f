using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Fabric.Hal.Linux;
using Fabric.Repository;
using Fabric.Testing;

namespace Fabric.EndToEnd.Tests;

/// <summary>
/// The whole loop with real processes: a fabric-silo, two fabric-agents installing signed stacks from a repository, the
/// VMs' kernel TCP over a fabric-linkem link. Loss on the link is measured by the agents, smoothed and judged by the
/// control plane, and the VM's path moves to fec and back, each move applied hitlessly on both hosts.
/// </summary>
public class ControlPlaneEndToEndTests
{
    [Fact]
    public void LossOnTheLink_MovesThePathToFec_GoodputRecovers_AndItMovesBackWhenTheLossEnds()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        var folder = Directory.CreateTempSubdirectory("fabric-cp-e2e-").FullName;
        try
        {
            var (repository, root) = SignedRepository(folder);
            using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4", controlPlane: new ControlPlaneSetup(repository, root));
            topology.Emulator("set both delay=10ms");
            // vm2 is re-registered as a hook would, with a policy pinning std-ipv4: the control flow beside vm1's.
            var vm2 = ReRegister(topology, "vm2", new { pin = "std-ipv4", vni = 100 });
            Eventually.True(() => Connected(topology, "host-a") && Connected(topology, "host-b") && topology.SiloApi("/api/vms/vm1").Contains("\"host-a\"", StringComparison.Ordinal)
                && topology.SiloApi("/api/vms/vm2").Contains("\"pin\":\"std-ipv4\"", StringComparison.Ordinal),
                TimeSpan.FromSeconds(60), "agents registered and VMs placed", topology.Logs);
            Assert.Equal(0, topology.Ping("vm1", "10.100.0.3", 2).Code);
            Assert.Equal(0, topology.Ping("vm2", "10.100.0.3", 2).Code);

            using var controlled = new TcpFlow(topology.Vm("vm1").Namespace, topology.Vm("vm3").Namespace, IPAddress.Parse("10.100.0.3"), 5301);
            using var pinned = new TcpFlow(vm2.Namespace, topology.Vm("vm3").Namespace, IPAddress.Parse("10.100.0.3"), 5302);
            var clock = Stopwatch.StartNew();
            // Both flows under way (a megabyte each) before the clean rate is measured.
            Eventually.True(() => controlled.Received > 1_000_000 && pinned.Received > 1_000_000, TimeSpan.FromSeconds(20), "both flows under way",
                () => $"vm1 {controlled.Received} B, vm2 {pinned.Received} B; {controlled.Error} {pinned.Error}");
            Assert.Equal("std-ipv4", topology.BoundStack("host-a", "vm1", "host-b"));
            var (clean, cleanPinned) = TcpFlow.Rates(controlled, pinned, TimeSpan.FromSeconds(2));

            // 3 % loss both ways: TCP over std-ipv4 collapses; the control plane moves vm1's path to fec, vm2 stays pinned.
            topology.Emulator("set both loss=3%");
            var lossAt = clock.Elapsed;
            var lossBegan = DateTimeOffset.UtcNow;
            Eventually.True(() => topology.BoundStack("host-a", "vm1", "host-b") == "fec", TimeSpan.FromSeconds(20), "moved to fec under loss",
                () => $"{topology.Status("host-a")}\n{topology.SiloApi("/api/vms/vm1")}\n{topology.Logs()}");
            var movedAfter = clock.Elapsed - lossAt;
            // The flow on fec under way again (a megabyte more) before the lossy rates are measured.
            var atMove = controlled.Received;
            Eventually.True(() => controlled.Received > atMove + 1_000_000, TimeSpan.FromSeconds(20), "vm1's flow moving on fec",
                () => $"vm1 {controlled.Received - atMove} B since the move; {controlled.Error}");
            var (lossyFec, lossyStd) = TcpFlow.Rates(controlled, pinned, TimeSpan.FromSeconds(4));
            Assert.Equal("std-ipv4", topology.BoundStack("host-a", "vm2/0", "host-b"));
            // vm2 is pinned, so it leads: its std-ipv4 is in a slot of host-a's leaders' half (64-127: host-a's range is the
            // lower one), and vm3 (general: it follows) sends its acknowledgements back in it, not in the slot both ends share.
            var toB = topology.Status("host-a").GetProperty("paths").EnumerateArray().Single(p => p.GetProperty("host").GetString() == "host-b");
            var vm2Slot = toB.GetProperty("bindings").EnumerateArray().First(b => b.GetProperty("vm").GetString() == "vm2/0").GetProperty("slot").GetInt32();
            Assert.True(vm2Slot is >= 64 and <= 127, toB.ToString());
            Eventually.True(() => topology.Status("host-a").GetProperty("paths").EnumerateArray().Single(p => p.GetProperty("host").GetString() == "host-b")
                .GetProperty("slots").EnumerateArray().Any(s => s.GetProperty("slot").GetInt32() == vm2Slot && s.GetProperty("framesDelivered").GetInt64() > 0),
                TimeSpan.FromSeconds(5), "vm3's acknowledgements to vm2 arrive in vm2's slot", () => topology.Status("host-a").ToString());

            // The loss ends: after the hysteresis time the path moves back to the cheaper std-ipv4.
            topology.Emulator("set both loss=0%");
            var cleanAt = clock.Elapsed;
            Eventually.True(() => topology.BoundStack("host-a", "vm1", "host-b") == "std-ipv4", TimeSpan.FromSeconds(40), "moved back to std-ipv4",
                () => $"{topology.Status("host-a")}\n{topology.SiloApi("/api/vms/vm1")}");
            var backAfter = clock.Elapsed - cleanAt;
            var report = $"TCP goodput, clean: vm1 {clean:0.0} Mbit/s, vm2 {cleanPinned:0.0}; at 3 % loss: vm1 on fec {lossyFec:0.0}, vm2 pinned to std-ipv4 {lossyStd:0.0} "
                + $"({lossyFec / Math.Max(lossyStd, 0.01):0.0}x); vm1 moved to fec {movedAfter.TotalSeconds:0.0} s after the loss began and back {backAfter.TotalSeconds:0.0} s after it ended";
            TestContext.Current.SendDiagnosticMessage(report);
            Console.WriteLine(report);
            // How much fec gains is the benchmarks' to measure (bench/stacks.sh, bench/learning.sh); that it gains is this test's.
            Assert.True(lossyFec > lossyStd, report);
            Assert.True(controlled.Error is null && pinned.Error is null, $"{controlled.Error} {pinned.Error}; {report}");

            // The decision log says why: a switch to fec under loss, and back, each with the conditions and every candidate's score.
            using var view = JsonDocument.Parse(topology.SiloApi("/api/vms/vm1"));
            var log = view.RootElement.GetProperty("log").EnumerateArray().Where(d => d.GetProperty("remoteHost").GetString() == "host-b").ToList();
            var toFec = log.Last(d => d.GetProperty("stack").GetString() == "fec" && d.GetProperty("changed").GetBoolean());
            // Decided after the loss began, on measured loss (a clean path measures none; the smoothed figure is still rising
            // towards the emulated 3 % when the switch is decided: 1.0 % was seen, and 0.15 % in a loaded CI run).
            Assert.True(toFec.GetProperty("conditions").GetProperty("loss").GetDouble() > 0, toFec.ToString());
            Assert.True(toFec.GetProperty("at").GetDateTimeOffset() > lossBegan, toFec.ToString());
            Assert.Contains(toFec.GetProperty("candidates").EnumerateArray(), c => c.GetProperty("stack").GetString() == "std-ipv4");
            Assert.False(string.IsNullOrWhiteSpace(toFec.GetProperty("reason").GetString()));
            Assert.Contains(log, d => d.GetProperty("stack").GetString() == "std-ipv4" && d.GetProperty("changed").GetBoolean()
                && d.GetProperty("at").GetDateTimeOffset() > toFec.GetProperty("at").GetDateTimeOffset());
            // Both hosts acknowledged what they were told.
            foreach (var host in new[] { "host-a", "host-b" })
            {
                using var state = JsonDocument.Parse(topology.SiloApi($"/api/hosts/{host}"));
                Eventually.True(() => Acknowledged(topology, host), TimeSpan.FromSeconds(10), $"{host} acknowledged its desired state", () => topology.SiloApi($"/api/hosts/{host}"));
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static JsonElement Link(OverlayTopology topology, string host) => topology.Status(host).GetProperty("controlPlane");

    private static JsonElement PathOf(OverlayTopology topology, string host, string remote) =>
        topology.Status(host).GetProperty("paths").EnumerateArray().Single(p => p.GetProperty("host").GetString() == remote);

    private static (int Keys, bool SealsWithCurrentKey) KeyState(OverlayTopology topology, string host, string remote) =>
        PathOf(topology, host, remote) is var path ? (path.GetProperty("keys").GetInt32(), path.GetProperty("sealsWithCurrentKey").GetBoolean()) : default;

    private static (string? Stack, int Slot) Binding(OverlayTopology topology, string host, string vm, string remote) =>
        PathOf(topology, host, remote).GetProperty("bindings").EnumerateArray().Where(b => b.GetProperty("vm").GetString() == vm)
            .Select(b => (b.GetProperty("stack").GetString(), b.GetProperty("slot").GetInt32())).SingleOrDefault((null, -1));

    private static long PathDrops(OverlayTopology topology, string host, string remote, string reason) =>
        PathOf(topology, host, remote).GetProperty("drops") is var drops && drops.ValueKind == JsonValueKind.Object
            && drops.EnumerateObject().FirstOrDefault(d => d.Name.Equals(reason, StringComparison.OrdinalIgnoreCase)) is { Value.ValueKind: JsonValueKind.Number } found ? found.Value.GetInt64() : 0;

    private static bool Acknowledged(OverlayTopology topology, string host)
    {
        using var state = JsonDocument.Parse(topology.SiloApi($"/api/hosts/{host}"));
        return state.RootElement.GetProperty("acknowledged").GetInt64() == state.RootElement.GetProperty("desired").GetProperty("version").GetInt64();
    }

    [Fact]
    public void AgentsWhoseConfigurationsNameNoPeerRouteOrKey_AreProgrammedByTheSilo_CarryTcp_SealAConfidentialVm_AndRotateTheirKeysUnderItsTcp()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        var folder = Directory.CreateTempSubdirectory("fabric-programmed-e2e-").FullName;
        try
        {
            var (repository, root) = SignedRepository(folder, withSecure: true);
            using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4", controlPlane: new ControlPlaneSetup(repository, root, Programmed: true, KeyOverlapSeconds: 10));
            // vm2 is re-registered as a hook would, confidential: only secure may carry it, under keys the agents derived.
            ReRegister(topology, "vm2", new { security = "confidential", vni = 100 });

            // Nothing in either configuration names the other host: the silo tells each where the other's VMs are.
            Eventually.True(() => topology.Ping("vm1", "10.100.0.3", 1).Code == 0, TimeSpan.FromSeconds(60), "vm1 reaches vm3 through programmed routes",
                () => $"{topology.Status("host-a")}\n{topology.Logs()}");
            Eventually.True(() => topology.BoundStack("host-a", "vm2/0", "host-b") == "secure", TimeSpan.FromSeconds(30), "the confidential VM on secure",
                () => $"{topology.Status("host-a")}\n{topology.Logs()}");
            Assert.Equal(0, topology.Ping("vm2", "10.100.0.3", 2).Code);
            using (var flow = new TcpFlow(topology.Vm("vm1").Namespace, topology.Vm("vm3").Namespace, IPAddress.Parse("10.100.0.3"), 5311))
            {
                var (rate, _) = TcpFlow.Rates(flow, flow, TimeSpan.FromSeconds(2));
                Assert.True(rate > 1, $"vm1's TCP to vm3 moved {rate:0.0} Mbit/s");
            }

            // host-a rotates its key pair (asked through its local API, as its schedule would) under the confidential VM's
            // kernel TCP through secure: host-b learns the new public key from the silo, both paths take the pair's new
            // keys in place, and once the overlap (10 s here) ends the previous key is gone and vm2's secure slot renewed.
            using (var sealedFlow = new TcpFlow(topology.Vm("vm2").Namespace, topology.Vm("vm3").Namespace, IPAddress.Parse("10.100.0.3"), 5312, mbps: 20))
            {
                Eventually.True(() => sealedFlow.Received > 1_000_000, TimeSpan.FromSeconds(20), "vm2's TCP under way through secure", () => $"{sealedFlow.Received} B; {sealedFlow.Error}");
                var since = Link(topology, "host-a").GetProperty("keySince").GetDateTimeOffset();
                var slot = Binding(topology, "host-a", "vm2/0", "host-b").Slot;
                var (rotatedAt, bytesAtRotation) = (Stopwatch.StartNew(), sealedFlow.Received);
                Assert.Equal((0, "ok\n"), topology.Ctl("host-a", "rotate-key"));
                // A second rotation while this one is under way would drop a key the peer may still use: refused.
                var again = topology.Ctl("host-a", "rotate-key");
                Assert.True(again.Code != 0 && again.Output.Contains("refused: rotate-key: a rotation is under way", StringComparison.Ordinal), again.Output);
                Assert.True(Link(topology, "host-a").GetProperty("keySince").GetDateTimeOffset() > since);
                Eventually.True(() => KeyState(topology, "host-b", "host-a") == (2, true) && KeyState(topology, "host-a", "host-b") == (2, true),
                    TimeSpan.FromSeconds(20), "both paths hold the pair's new keys and seal under them", () => $"{topology.Status("host-a")}\n{topology.Status("host-b")}");
                Eventually.True(() => KeyState(topology, "host-a", "host-b") == (1, true) && KeyState(topology, "host-b", "host-a") == (1, true)
                    && !Link(topology, "host-a").GetProperty("previousKeyKept").GetBoolean() && Binding(topology, "host-a", "vm2/0", "host-b") is ("secure", var renewed) && renewed != slot,
                    TimeSpan.FromSeconds(40), "the previous key retired and vm2's secure slot renewed", () => $"{topology.Status("host-a")}\n{topology.Status("host-b")}");
                var (atRetirement, retiredAfter) = (sealedFlow.Received, rotatedAt.Elapsed);
                Eventually.True(() => sealedFlow.Received > atRetirement + 1_000_000, TimeSpan.FromSeconds(20), "vm2's TCP going on after the rotation",
                    () => $"{sealedFlow.Received - atRetirement} B since; {sealedFlow.Error}");
                Assert.Null(sealedFlow.Error);
                var report = $"rotation: vm2's TCP through secure moved {(atRetirement - bytesAtRotation) / 1e6:0.0} MB from host-a's rotate-key to the previous key's "
                    + $"retirement ({retiredAfter.TotalSeconds:0.0} s, overlap 10 s) and the slot's renewal, and {(sealedFlow.Received - atRetirement) / 1e6:0.0} MB after";
                TestContext.Current.SendDiagnosticMessage(report);
                Console.WriteLine(report);
                Assert.Equal(0, PathDrops(topology, "host-b", "host-a", "unauthenticated"));
                Assert.Equal(0, PathDrops(topology, "host-a", "host-b", "unauthenticated"));
            }

            // vm4 is in another virtual network: no host was told a route to it, and it is unreachable.
            Assert.NotEqual(0, topology.Ping("vm1", "10.100.0.4", 2).Code);
            var routes = topology.Status("host-a").GetProperty("paths").EnumerateArray().Select(p => p.GetProperty("host").GetString()).ToList();
            Assert.Equal(["host-b"], routes);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void AWorseFecOnALossyLink_FailsOnTheCanaryAndComesBackByItself_ThenAGoodOneReachesBothHosts_WithNoFrameLost()
    {
        Assert.SkipUnless(Privileged.IsRoot, Privileged.SkipReason);
        var folder = Directory.CreateTempSubdirectory("fabric-rollout-e2e-").FullName;
        try
        {
            using var repository = new SignedStackRepository(folder);
            repository.Publish(StackPlugins.StdIPv4, "std-ipv4", "1.0.0", new StackProfile(16, 0, 0, 0, "default; clean paths"));
            repository.Publish(StackPlugins.Fec, "fec", "1.0.0", FecProfile);
            // The canary is the pair whose VM paths carry fec (host-a and host-b), so the previous version's baseline is its
            // outcomes of the bake before the rollout began (four VM paths a version; the gate judges on three or more).
            // host-c runs an agent with no VM: it installs every version as the others do, and is the ring after the canary.
            using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4", moreVmsOnA: 2, controlPlane: new ControlPlaneSetup(repository.Path,
                repository.Root, LearningStore: Path.Combine(folder, "learning"), AgentRefreshSeconds: 2, RolloutBakeSeconds: 60, RolloutMinPaths: 3));
            topology.AddBystander();
            Eventually.True(() => Connected(topology, "host-c") && Loads(topology, "host-c", "fec@1.0.0") == 0, TimeSpan.FromSeconds(60), "host-c connected, with fec installed",
                () => $"{topology.Status("host-c")}\n{topology.Logs()}");
            topology.Emulator("set both delay=10ms");
            topology.Emulator("set both loss=3%");
            string[] senders = ["vm1", "vm2", "vm5", "vm6"];
            foreach (var vm in senders)
            {
                ReRegister(topology, vm, new { pin = "fec", vni = 100 });
            }
            // The receiver's acknowledgements go on std-ipv4: fec's outcomes are the senders' alone (four VM paths a version).
            ReRegister(topology, "vm3", new { pin = "std-ipv4", vni = 100 });
            string Versions() => string.Join(" ", senders.Select(vm => $"{vm}={BoundVersion(topology, vm)}"));
            bool AllOn(string version) => senders.All(vm => BoundVersion(topology, vm) == version);
            string Rollouts() => topology.SiloApi("/api/rollouts");
            JsonElement? FecRollout()
            {
                using var view = JsonDocument.Parse(Rollouts() is { Length: > 0 } text ? text : "{}");
                return view.RootElement.TryGetProperty("rollouts", out var all)
                    ? all.EnumerateArray().Where(r => r.GetProperty("stackId").GetString() == "fec").Select(r => (JsonElement?)r.Clone()).LastOrDefault() : null;
            }
            string Gate(JsonElement rollout, string name, string field) =>
                rollout.GetProperty("gates").EnumerateArray().Single(g => g.GetProperty("gate").GetString() == name).GetProperty(field).GetString()!;
            // Polled every 200 ms, not every 10: four agent status calls a poll on two cores that also carry the flows.
            void Until(Func<bool> condition, int seconds, string what)
            {
                Eventually.True(() =>
                {
                    if (condition())
                    {
                        return true;
                    }
                    Thread.Sleep(200);
                    return false;
                }, TimeSpan.FromSeconds(seconds), what, () => $"{Versions()}\n{Rollouts()}");
            }
            Until(() => AllOn("fec@1.0.0"), 60, "the senders pinned to fec 1.0.0");

            // 20 Mbit/s each, so four flows leave the agents' two cores room (what varies is the stack, not the machine's load).
            var flows = senders.Select((vm, i) => new TcpFlow(topology.Vm(vm).Namespace, topology.Vm("vm3").Namespace, IPAddress.Parse("10.100.0.3"), 5331 + i, mbps: 20)).ToList();
            double onFirst, onBad, onGood;
            TimeSpan canaryAfter, backAfter;
            string badEvidence, goodEvidence;
            var carriedLossy = new List<string>();
            var clock = Stopwatch.StartNew();
            try
            {
                Eventually.True(() => flows.All(f => f.Received > 500_000), TimeSpan.FromSeconds(30), "the four flows under way",
                    () => string.Join(", ", flows.Select(f => $"{f.Received} B {f.Error}")));
                // fec 1.0.0's baseline: a few seconds of outcomes on each path.
                onFirst = Goodput(flows, TimeSpan.FromSeconds(8));

                // fec 1.0.1 is fec with its parity disabled: at 3 % loss the guests' TCP loses what fec used to rebuild.
                repository.Publish(StackPlugins.FecNoParity, "fec", "1.0.1", FecProfile);
                var published = clock.Elapsed;
                Until(() => AllOn("fec@1.0.1"), 60, "the canary's senders on fec 1.0.1");
                canaryAfter = clock.Elapsed - published;
                onBad = Goodput(flows, TimeSpan.FromSeconds(3));
                Until(() => FecRollout()?.GetProperty("status").GetString() == "RolledBack", 90, "fec 1.0.1's rollout rolled back by its gate");
                var failedAt = clock.Elapsed;
                Until(() => AllOn("fec@1.0.0"), 30, "every sender back on fec 1.0.0");
                backAfter = clock.Elapsed - failedAt;
                var rolledBack = FecRollout()!.Value;
                Assert.Equal(["host-a", "host-b"], rolledBack.GetProperty("rings")[0].GetProperty("hosts").EnumerateArray().Select(h => h.GetString()).Order(StringComparer.Ordinal));
                // host-c installed 1.0.1 (its signed package verified and unpacked) but never ran any of its code; the canary did.
                Assert.Equal(0, Loads(topology, "host-c", "fec@1.0.1"));
                Assert.True(Loads(topology, "host-a", "fec@1.0.1") > 0 && Loads(topology, "host-b", "fec@1.0.1") > 0);
                Assert.Equal("Failed", Gate(rolledBack, "utility", "verdict"));
                badEvidence = Gate(rolledBack, "utility", "evidence");
                Assert.Contains("worse beyond the margin", badEvidence, StringComparison.Ordinal);
                Assert.Contains(rolledBack.GetProperty("steps").EnumerateArray(),
                    s => s.GetProperty("action").GetString() == "roll back" && s.GetProperty("by").GetString() == "the rollout's gates");
                using (var view = JsonDocument.Parse(Rollouts()))
                {
                    var bad = view.RootElement.GetProperty("bad").EnumerateArray().Single(b => b.GetProperty("stackId").GetString() == "fec");
                    Assert.Equal("1.0.1", bad.GetProperty("version").GetString());
                    Assert.Contains("utility", bad.GetProperty("evidence").GetString(), StringComparison.Ordinal);
                }

                // The control: the real fec again as 1.0.2, on the same lossy link, after a fresh baseline on 1.0.0. Its gate
                // judges it (both versions' paths compared) and does not fail it.
                Thread.Sleep(TimeSpan.FromSeconds(10));
                repository.Publish(StackPlugins.Fec, "fec", "1.0.2", FecProfile);
                Until(() => AllOn("fec@1.0.2"), 60, "the senders on fec 1.0.2");
                // What 1.0.0's instance had learned of the lossy path (the peer's loss, so the parity) went on to 1.0.2's.
                carriedLossy = Carried(topology, "1.0.2");
                onGood = Goodput(flows, TimeSpan.FromSeconds(4));
                Until(() => FecRollout() is { } r && r.GetProperty("to").GetString() == "1.0.2" && Gate(r, "utility", "evidence").Contains("difference", StringComparison.Ordinal),
                    60, "fec 1.0.2's utility judged against 1.0.0's");
                Thread.Sleep(TimeSpan.FromSeconds(15));
                var good = FecRollout()!.Value;
                goodEvidence = string.Join("; ", new[] { "utility", "cpu", "drops" }.Select(g => $"{g}: {Gate(good, g, "evidence")}"));
                Assert.True(Gate(good, "utility", "verdict") != "Failed" && good.GetProperty("status").GetString() != "RolledBack", $"{Rollouts()}\n{Versions()}");
                // The operator takes 1.0.2 to its last ring, host-c: it is released there, and still not loaded (no binding takes it).
                Assert.Contains("promote fec: done; fec 1.0.0 -> 1.0.2: running, ring 2 of 2", Promote(topology, "1.0.2 holds up on the canary"), StringComparison.Ordinal);
                Until(() => topology.Status("host-c").GetProperty("releases").TryGetProperty("fec", out var released) && released.GetString() == "1.0.2", 30, "fec 1.0.2 released to host-c");
            }
            finally
            {
                flows.ForEach(f => f.Dispose());
            }

            // On a clean link, the real fec once more as 1.0.3: it reaches both hosts, every path swapped with no frame lost,
            // and the operator promotes it to done with fabric-repo from a host (its ring bakes a minute).
            topology.Emulator("set both loss=0%");
            using var datagrams = new DatagramCount(topology.Vm("vm1").Namespace, topology.Vm("vm3").Namespace, IPAddress.Parse("10.100.0.3"), 5341);
            repository.Publish(StackPlugins.Fec, "fec", "1.0.3", FecProfile);
            Until(() => AllOn("fec@1.0.3"), 60, "every sender on fec 1.0.3");
            var (sent, received, failure) = datagrams.Stop();
            // What 1.0.2's instance had learned of the path (the peer's loss, so the parity) went on to 1.0.3's.
            var carried = Carried(topology, "1.0.3");
            Assert.Equal("Running", FecRollout()?.GetProperty("status").GetString());
            Assert.Contains("promote fec: done; fec 1.0.2 -> 1.0.3: running, ring 2 of 2", Promote(topology, "the canary holds"), StringComparison.Ordinal);
            Assert.Contains("promote fec: done; fec 1.0.2 -> 1.0.3: completed", Promote(topology, "every ring reached"), StringComparison.Ordinal);
            var neverLoaded = topology.Status("host-c").GetProperty("stacks").EnumerateArray().Where(e => e.GetProperty("id").GetString() == "fec")
                .Select(e => $"{e.GetProperty("version").GetString()}: {e.GetProperty("loads").GetInt32()}").ToList();

            var report = $"fec at 3 % loss, 10 ms each way, four CUBIC guests at most 20 Mbit/s each: {onFirst:0.0} Mbit/s on 1.0.0, {onBad:0.0} on 1.0.1 (no parity), {onGood:0.0} on 1.0.2; "
                + $"1.0.1 on the canary {canaryAfter.TotalSeconds:0.0} s after its publish, every binding back {backAfter.TotalSeconds:0.0} s after the gate failed ({badEvidence}); "
                + $"1.0.2 not failed ({goodEvidence}); fec 1.0.3 reached both hosts with {sent - received} of {sent} datagrams lost, state carried to 1.0.2 at 3 % loss: {string.Join("; ", carriedLossy)}, and to 1.0.3: {string.Join("; ", carried)}; "
                + $"host-c (outside the canary) loads of each fec version it installed: {string.Join(", ", neverLoaded)}";
            TestContext.Current.SendDiagnosticMessage(report);
            Console.WriteLine(report);
            Assert.True(onBad < onFirst && onBad < onGood, report);
            Assert.True(failure is null, $"{failure}; {report}");
            Assert.True(sent > 1000 && received == sent, report);
            Assert.True(carried.Concat(carriedLossy).All(e => e.Contains("state-resumed: peer loss", StringComparison.Ordinal)) && carried.Count > 0 && carriedLossy.Count > 0, report);
            Assert.All(neverLoaded, e => Assert.EndsWith(": 0", e, StringComparison.Ordinal));
            Assert.Contains("1.0.1: 0", neverLoaded);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>How many times <paramref name="host"/>'s agent loaded a stack version (id@version); -1 when it has not installed it.</summary>
    private static int Loads(OverlayTopology topology, string host, string key) =>
        topology.Status(host).GetProperty("stacks").EnumerateArray().Where(e => $"{e.GetProperty("id").GetString()}@{e.GetProperty("version").GetString()}" == key)
            .Select(e => e.GetProperty("loads").GetInt32()).DefaultIfEmpty(-1).First();

    /// <summary>What host-a's fec instances of <paramref name="version"/> said of the state they were handed (events).</summary>
    private static List<string> Carried(OverlayTopology topology, string version) =>
        [.. topology.Status("host-a").GetProperty("events").EnumerateArray().Select(e => e.GetString()!)
            .Where(e => e.Contains($"stack fec@{version} on the path to host-b: state-", StringComparison.Ordinal))];

    /// <summary>fec's rollout to its next ring, with fabric-repo from host-a's namespace as an operator; returns what it printed.</summary>
    private static string Promote(OverlayTopology topology, string reason)
    {
        var (certificate, key, authority) = topology.OperatorCredential("ops-1");
        var (code, stdout, stderr) = Processes.Run("ip", ["netns", "exec", topology.HostA, Processes.Built("repository/Fabric.Repository.Cli", "fabric-repo"),
            "rollout", "promote", "--stack", "fec", "--reason", reason, "--by", "the e2e test", "--gateway", $"{OverlayTopology.SiloAddress}:30000",
            "--certificate", certificate, "--key", key, "--authority", authority], timeout: TimeSpan.FromSeconds(60));
        Assert.True(code == 0, $"{stdout}{stderr}");
        return stdout;
    }

    /// <summary>vm's binding towards host-b on host-a, as STACK@VERSION.</summary>
    private static string? BoundVersion(OverlayTopology topology, string vm) =>
        topology.Status("host-a").GetProperty("paths").EnumerateArray().Where(p => p.GetProperty("host").GetString() == "host-b")
            .SelectMany(p => p.GetProperty("bindings").EnumerateArray()).Where(b => b.GetProperty("vm").GetString() == vm + "/0")
            .Select(b => $"{b.GetProperty("stack").GetString()}@{b.GetProperty("version").GetString()}").FirstOrDefault();

    /// <summary>The flows' summed goodput over the next <paramref name="window"/>, in Mbit/s.</summary>
    private static double Goodput(IReadOnlyList<TcpFlow> flows, TimeSpan window)
    {
        var before = flows.Sum(f => f.Received);
        var watch = Stopwatch.StartNew();
        Thread.Sleep(window);
        return (flows.Sum(f => f.Received) - before) * 8 / watch.Elapsed.TotalSeconds / 1e6;
    }

    /// <summary>Numbered UDP datagrams from one VM to another, one a millisecond, until stopped: how many were sent and how many arrived.</summary>
    private sealed class DatagramCount : IDisposable
    {
        private readonly Socket _sender;
        private readonly Socket _receiver;
        private readonly Thread _send;
        private readonly Thread _receive;
        private readonly HashSet<long> _seen = [];
        private long _sent;
        private volatile bool _stop;
        private volatile bool _drained;
        private string? _failure;

        public DatagramCount(string senderNamespace, string receiverNamespace, IPAddress receiver, int port)
        {
            _receiver = NetworkNamespace.Run(receiverNamespace, () => new Socket(SocketType.Dgram, ProtocolType.Udp));
            _receiver.Bind(new IPEndPoint(receiver, port));
            _receiver.ReceiveTimeout = 200;
            _sender = NetworkNamespace.Run(senderNamespace, () => new Socket(SocketType.Dgram, ProtocolType.Udp));
            _sender.Connect(new IPEndPoint(receiver, port));
            _receive = new Thread(() =>
            {
                var buffer = new byte[64];
                while (!_drained)
                {
                    try
                    {
                        if (_receiver.Receive(buffer) == 8)
                        {
                            lock (_seen)
                            {
                                _seen.Add(BitConverter.ToInt64(buffer));
                            }
                        }
                    }
                    catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut)
                    {
                    }
                }
            }) { IsBackground = true };
            _send = new Thread(() =>
            {
                try
                {
                    while (!_stop)
                    {
                        _sender.Send(BitConverter.GetBytes(Interlocked.Increment(ref _sent)));
                        Thread.Sleep(1);
                    }
                }
                catch (SocketException e)
                {
                    // Said by Stop (an unhandled exception here would end the test process).
                    _failure = e.Message;
                }
            }) { IsBackground = true };
            _receive.Start();
            _send.Start();
        }

        /// <summary>Stops sending, waits a second for what is in flight, and counts; the send error that stopped it early, if any.</summary>
        public (long Sent, long Received, string? Failure) Stop()
        {
            _stop = true;
            _send.Join();
            Thread.Sleep(TimeSpan.FromSeconds(1));
            _drained = true;
            _receive.Join();
            lock (_seen)
            {
                return (Interlocked.Read(ref _sent), _seen.Count, _failure);
            }
        }

        public void Dispose()
        {
            (_stop, _drained) = (true, true);
            _send.Join(TimeSpan.FromSeconds(5));
            _receive.Join(TimeSpan.FromSeconds(5));
            _sender.Dispose();
            _receiver.Dispose();
        }
    }

    /// <summary>Detaches a VM and registers it again on its host as a hook would, with <paramref name="policy"/>.</summary>
    private static TestVm ReRegister(OverlayTopology topology, string name, object policy)
    {
        var vm = topology.Vm(name);
        Assert.Equal(0, topology.Ctl(vm.Host, "detach-vm", name).Code);
        var registration = JsonSerializer.Serialize(new
        {
            op = "register-vm",
            registration = new
            {
                id = name, name, policySource = "metadata", origin = "test",
                interfaces = new[] { new { type = "veth", mac = vm.Mac, device = vm.HostDevice, vni = vm.Vni, ipv4 = new[] { vm.IPv4 } } },
                policy,
            },
        });
        Assert.Contains("\"ok\":true", AgentApi.Send(vm.Host == "host-a" ? topology.SocketA : topology.SocketB, registration), StringComparison.Ordinal);
        return vm;
    }

    private static bool Connected(OverlayTopology topology, string host) =>
        topology.Status(host).TryGetProperty("controlPlane", out var link) && link.ValueKind == JsonValueKind.Object && link.GetProperty("connected").GetBoolean();

    /// <summary>
    /// A repository like an operator's: std-ipv4 and fec, signed, with the profiles the selector reads. Returns its folder
    /// and the pinned root.
    /// </summary>
    private static (string Repository, string Root) SignedRepository(string folder, bool withSecure = false)
    {
        using var repository = new SignedStackRepository(folder);
        repository.Publish(StackPlugins.StdIPv4, "std-ipv4", "1.0.0", new StackProfile(16, 0, 0, 0, "default; clean paths"));
        repository.Publish(StackPlugins.Fec, "fec", "1.0.0", FecProfile);
        if (withSecure)
        {
            repository.Publish(StackPlugins.Secure, "secure", "1.0.0", new StackProfile(40, 0, 0, 0, "sensitive tenants", Encrypts: true));
        }
        return (repository.Path, repository.Root);
    }

    private static readonly StackProfile FecProfile = new(30, 0.25, 5, 0.05, "low latency on lossy paths");

    /// <summary>One kernel TCP connection from a VM to another, sending as fast as its pacing allows; counts what arrives.</summary>
    private sealed class TcpFlow : IDisposable
    {
        private readonly Socket _listener;
        private readonly Socket _sender;
        private readonly Thread _send;
        private readonly Thread _receive;
        private long _received;
        private volatile bool _stop;

        public TcpFlow(string senderNamespace, string receiverNamespace, IPAddress receiver, int port, uint mbps = 50)
        {
            _listener = NetworkNamespace.Run(receiverNamespace, () => new Socket(SocketType.Stream, ProtocolType.Tcp));
            _listener.Bind(new IPEndPoint(receiver, port));
            _listener.Listen(1);
            _sender = NetworkNamespace.Run(senderNamespace, () => new Socket(SocketType.Stream, ProtocolType.Tcp));
            // The guest's TCP is CUBIC, Linux's default: loss-based, so random loss hurts it. (This machine's own default is
            // BBR, which models bandwidth and barely notices 3 % random loss: with it, fec buys no goodput.)
            _sender.SetRawSocketOption(6 /* IPPROTO_TCP */, 13 /* TCP_CONGESTION */, "cubic"u8);
            // Paced to 50 Mbit/s (SO_MAX_PACING_RATE, bytes a second), well below what two agents on this machine carry:
            // the clean phase has no loss of its own making, so what the test varies is the link's loss alone. (Unpaced,
            // the flows filled the agents' queues, the prior read their drops as random loss and chose fec before the
            // loss began; at 100 Mbit/s each a loaded CI run still measured 0.12 % and did the same.)
            _sender.SetRawSocketOption(1 /* SOL_SOCKET */, 47 /* SO_MAX_PACING_RATE */, BitConverter.GetBytes(mbps * 125_000u));
            _sender.Connect(new IPEndPoint(receiver, port));
            var accepted = _listener.Accept();
            _receive = new Thread(() =>
            {
                var buffer = new byte[65536];
                try
                {
                    int n;
                    while (!_stop && (n = accepted.Receive(buffer)) > 0)
                    {
                        Interlocked.Add(ref _received, n);
                    }
                }
                catch (SocketException e) when (!_stop)
                {
                    Error = e.Message;
                }
                catch (SocketException)
                {
                }
                accepted.Dispose();
            }) { IsBackground = true };
            _send = new Thread(() =>
            {
                var buffer = new byte[65536];
                try
                {
                    while (!_stop)
                    {
                        _sender.Send(buffer);
                    }
                }
                catch (SocketException e) when (!_stop)
                {
                    Error = e.Message;
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                }
            }) { IsBackground = true };
            _receive.Start();
            _send.Start();
        }

        public string? Error { get; private set; }

        /// <summary>Bytes the receiver has read so far.</summary>
        public long Received => Interlocked.Read(ref _received);

        /// <summary>Both flows' goodput over the same next <paramref name="window"/>, in Mbit/s.</summary>
        public static (double A, double B) Rates(TcpFlow a, TcpFlow b, TimeSpan window)
        {
            var (beforeA, beforeB) = (Interlocked.Read(ref a._received), Interlocked.Read(ref b._received));
            var watch = Stopwatch.StartNew();
            Thread.Sleep(window);
            var seconds = watch.Elapsed.TotalSeconds;
            return ((Interlocked.Read(ref a._received) - beforeA) * 8 / seconds / 1e6, (Interlocked.Read(ref b._received) - beforeB) * 8 / seconds / 1e6);
        }

        public void Dispose()
        {
            _stop = true;
            _sender.Dispose();
            _listener.Dispose();
            _send.Join(TimeSpan.FromSeconds(5));
            _receive.Join(TimeSpan.FromSeconds(5));
        }
    }
}
