using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Fabric.Embedded;
using Fabric.LinkEmulator;
using Fabric.Repository;
using Fabric.Silo.Learning;
using Fabric.Testing;

namespace Fabric.Benchmarks;

/// <summary>
/// The proof of the learned selector: link-condition schedules run through two real fabric-agent processes, the link
/// emulator between them, the VMs' kernel TCP (CUBIC) in their namespaces and a real fabric-silo that chooses the stacks.
/// <list type="number">
/// <item>A silo with an empty outcome log runs the training schedules alone: in each phase the bulk VM (vm1) is pinned to
/// each stack a standard VM may run in turn, then four latency VMs (vm2, vm5, vm6, vm7: low-rate traffic, so they can share
/// the path) each run the whole phase on another of those stacks, so the fleet's outcome log holds every stack on every
/// training condition; the silo's learner trains on its own schedule and the benchmark waits for a version in service.</item>
/// <item>The pins are lifted and the evaluation schedules run live, the bulk VM then the latency VM, the silo choosing
/// (and learning on) from what the agents measure and report — it never sees the schedule, the emulator's settings or
/// the phase boundaries.</item>
/// <item>A CUBIC and a BBR guest on one lossy path, pinned to std-ipv4 and fec in turn, then chosen for (<see cref="Guests"/>).</item>
/// <item>Then every phase of every evaluation schedule is measured on every stack a standard VM may run, by pinning the
/// same VMs (hitless swaps of their bindings; <see cref="MeasureFixed"/>): bulk = iperf3 goodput, latency = sockperf's
/// 64-byte request/response p99 over TCP; a phase that plays a trace for its whole length from the trace's start, as the
/// learned selector played it. (Until 2026-12-06 this came first, on a topology of its own without a control plane, each
/// stack swapped on the whole path.)</item>
/// </list>
/// Utility per phase: bulk = goodput / the best fixed stack's goodput; latency = the best fixed stack's p99 / p99;
/// general = their geometric mean. Printed per schedule and overall, time-weighted.
/// </summary>
internal static class LearningBenchmark
{
    private static readonly string[] Workloads = ["bulk", "latency"];

    /// <summary>
    /// The stacks the evaluated (standard) VMs' policy admits (PolicyValidator.Eligible): every phase is measured on each
    /// as a fixed stack, and the training pins each in turn. secure is not among them: it encrypts, so a standard VM is
    /// offered it only when its policy names it, and a fixed stack the selector may not choose is no yardstick for it
    /// (until 2026-12-03 it was measured too, and was the best fixed stack of one phase).
    /// </summary>
    private static readonly string[] Stacks = ["std-ipv4", "fec", "arq-lowlat", "arq-bulk"];
    private const int IperfPort = 5301;

    /// <summary>The evaluated VMs' exploration share: what an operator who lets the fleet keep learning would give.</summary>
    private const double Exploration = 0.05;

    /// <summary>
    /// Training outcomes near a context the model needs before it decides there (the silo's default is 30, for a fleet).
    /// Training pins the bulk VM to each stack in turn for 6 s of a 20 s phase's conditions, so a bulk context the
    /// training saw in one phase has about 5 outcomes of each stack on its own conditions and, from the stacks next to
    /// it in that phase's order (see <see cref="BulkOrders"/>), as many on theirs (the pairing); a latency context,
    /// with every stack on its own VM for the whole phase, about 20 of each stack. With 10 (until 2026-12-02, when the
    /// latency VM also took the stacks in turn) the model needed two training phases alike and the prior decided nearly
    /// everywhere ("model v7 has 3 similar outcomes, needs 10"); 5 lets it decide where the training saw the context
    /// once.
    /// </summary>
    internal const int MinSupport = 5;

    /// <summary>
    /// The bulk VM's time on each training phase, over all its stacks in turn, as a multiple of the phase's length: 6 s
    /// on each of 4 stacks for a 20 s phase, before the latency VMs run for the phase's length (so each training phase's
    /// conditions hold for about 24 + 20 s and the pins).
    /// </summary>
    private const double BulkTimeFactor = 1.2;

    /// <summary>
    /// The orders (indexes into <see cref="Stacks"/>) the bulk VM takes the stacks in, one phase after the other. Only
    /// neighbouring slices fall within the learner's pairing window, and each stack is next to every other in one of
    /// these: in one fixed order arq-bulk (last) was never paired with std-ipv4 (first), and the model knew arq-bulk on a
    /// path measured on std-ipv4 from 11 outcomes of 124.
    /// </summary>
    private static readonly int[][] BulkOrders = [[0, 1, 2, 3], [2, 0, 3, 1]];

    private sealed record Measured(string Schedule, int Phase, string Workload, string Carrier, double Seconds, double Value);

    private sealed record Track(DateTimeOffset At, string? Stack);

    /// <summary>One fixed cell: <paramref name="Vm"/> pinned to <paramref name="Stack"/> on a phase (schedule/phase/workload) from <paramref name="From"/> to <paramref name="To"/>.</summary>
    private sealed record Cell(string Label, string Vm, string Stack, DateTimeOffset From, DateTimeOffset To);

    /// <summary>A decision that changed a VM's stack: when, how long into its phase, and whether it explored.</summary>
    private sealed record Change(string Vm, DateTimeOffset At, TimeSpan IntoPhase, bool Exploration, bool Guided = false);

    public static int Run(string evaluationFolder, string trainingFolder, double? phaseSeconds, int measureSeconds, string csv)
    {
        if (!Privileged.IsRoot)
        {
            Console.Error.WriteLine($"learning benchmark: {Privileged.SkipReason}");
            return 2;
        }
        IReadOnlyList<LinkSchedule> evaluation, training;
        try
        {
            evaluation = Shorten(LinkSchedule.LoadAll(evaluationFolder), phaseSeconds);
            training = Shorten(LinkSchedule.LoadAll(trainingFolder), phaseSeconds);
        }
        catch (FormatException e)
        {
            Console.Error.WriteLine($"learning benchmark: {e.Message}");
            return 2;
        }
        if (training.Select(s => s.Name).Intersect(evaluation.Select(s => s.Name)).ToList() is { Count: > 0 } shared)
        {
            Console.Error.WriteLine($"learning benchmark: {string.Join(", ", shared)} is both a training and an evaluation schedule; evaluate on schedules the model never saw");
            return 2;
        }
        Console.WriteLine($"training schedules ({trainingFolder}): {string.Join(", ", training.Select(s => $"{s.Name} ({s.Phases.Count} phases, {s.Duration.TotalSeconds:0} s)"))}");
        Console.WriteLine(Invariant($"the silo: selector margin 10 %, sustain 5 s (2 s for a gain 2.5 times what a switch needs); learner trains every 60 s once 200 outcomes are logged, decides where it has {MinSupport} similar outcomes; the evaluated VMs explore {Exploration:0%} of their decisions, a path at most once per {new Fabric.Silo.Selection.SelectorOptions().ExploreSpacing.TotalMinutes:0.#} min, on conditions it explored on once per {new Fabric.Silo.Selection.SelectorOptions().ExploreSameConditionsSpacing.TotalHours:0.#} h"));
        Console.WriteLine($"fixed stacks (those a standard VM's policy admits): {string.Join(", ", Stacks)}; after the live runs, the same VMs pinned to each in turn, bulk then latency, {measureSeconds} s each; a phase that plays a trace is measured on each for its whole length, from the trace's start");
        Console.WriteLine($"evaluation schedules, never trained on ({evaluationFolder}): {string.Join(", ", evaluation.Select(s => $"{s.Name} ({s.Phases.Count} phases, {s.Duration.TotalSeconds:0} s)"))}");
        var clock = Stopwatch.StartNew();
        var secureKey = new Dictionary<string, Dictionary<string, string>> { ["secure"] = new() { ["key"] = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)) } };

        var fixedRows = new List<Measured>();
        // 1 and 2: a silo that learns from nothing but the training schedules, then chooses live; 3: guests; 4: the fixed stacks.
        var work = Directory.CreateTempSubdirectory("fabric-learning-bench-").FullName;
        var liveRows = new List<Measured>();
        var tracks = new Dictionary<(string Schedule, string Workload), List<Track>>();
        var phaseStarts = new List<DateTimeOffset>();
        var changes = new List<Change>();
        var passive = new List<(double Iperf, DateTimeOffset From, DateTimeOffset To)>();
        // When each part began (outcomes before the live runs are the training's), and which VM ran which stack in each
        // fixed cell: the outcome CSV says both, so `learning-replay` can judge a scorer on the cells offline.
        var (liveStart, guestsStart, fixedStart) = (DateTimeOffset.MaxValue, DateTimeOffset.MaxValue, DateTimeOffset.MaxValue);
        var cells = new List<Cell>();
        string modelLine;
        var guests = "";
        int decisions, explored, outsidePolicy;
        var learning = Path.Combine(work, "learning");
        try
        {
            var repository = DevelopmentRepository.Create(Path.Combine(work, "keys"), work, RepositoryRoot.Directory, Configuration);
            using var topology = new OverlayTopology(AppContext.BaseDirectory, "std-ipv4",
                controlPlane: new ControlPlaneSetup(repository.Path, repository.TrustRoot, SelectorSustainMilliseconds: 5000, LearningStore: learning, TrainEverySeconds: 60, MinOutcomes: 200, MinSupport: MinSupport),
                settings: secureKey, moreVmsOnA: Stacks.Length - 1);
            var (vm1, vm2, vm3) = (topology.Vm("vm1"), topology.Vm("vm2"), topology.Vm("vm3"));
            Eventually.True(() => topology.SiloApi("/api/vms/vm1").Contains("\"host-a\"", StringComparison.Ordinal), TimeSpan.FromSeconds(60), "vm1 placed in the control plane", topology.Logs);
            WarmUp(topology, vm3);
            Eventually.True(() => topology.SiloApi("/api/vms/vm2").Contains("\"host-a\"", StringComparison.Ordinal), TimeSpan.FromSeconds(60), "vm2 placed in the control plane", topology.Logs);
            var vms = new Dictionary<string, TestVm> { ["bulk"] = vm1, ["latency"] = vm2 };
            // vm2 and the latency VMs that train beside it, one per trained stack.
            TestVm[] latencyVms = [vm2, .. Enumerable.Range(5, Stacks.Length - 1).Select(n => topology.Vm($"vm{n}"))];
            foreach (var vm in latencyVms.Skip(1))
            {
                Eventually.True(() => topology.SiloApi($"/api/vms/{vm.Name}").Contains("\"host-a\"", StringComparison.Ordinal), TimeSpan.FromSeconds(60), $"{vm.Name} placed in the control plane", topology.Logs);
            }
            var trainedPhases = 0;
            using var policies = new PolicyClient(topology);

            // 1. Training: every stack on every training phase, pinned in turn.
            foreach (var schedule in training)
            {
                foreach (var (phase, index) in schedule.Phases.Select((p, i) => (p, i)))
                {
                    Emulate(topology, phase);
                    // Bulk: one stack after another (bulk VMs share the bottleneck, so one at a time).
                    var slice = Math.Max(2, (int)(phase.Duration.TotalSeconds * BulkTimeFactor / Stacks.Length));
                    foreach (var stack in BulkOrders[trainedPhases % BulkOrders.Length].Select(i => Stacks[i]))
                    {
                        Pin(topology, policies, "bulk", [(vm1, stack)]);
                        Bulk(vm1, vm3, slice);
                    }
                    // Latency: every stack at once for the whole phase, one latency VM each, the stacks rotated over the
                    // VMs from phase to phase (so no VM's own effect stands for a stack's, and each VM's window starts
                    // anew on its new stack rather than carrying the last phase's tail).
                    var pins = latencyVms.Select((vm, i) => (Vm: vm, Stack: Stacks[(i + trainedPhases) % Stacks.Length])).ToList();
                    Pin(topology, policies, "latency", pins);
                    var seconds = (int)phase.Duration.TotalSeconds;
                    Task.WaitAll([.. pins.Select(p => Task.Run(() => Latency(p.Vm, vm3, seconds)))]);
                    trainedPhases++;
                    Console.Error.WriteLine($"trained on {schedule.Name} phase {index + 1}: {phase}");
                }
            }
            foreach (var workload in Workloads)
            {
                policies.Set(vms[workload].Name, workload, pin: null, Exploration);
            }
            foreach (var vm in latencyVms.Skip(1))
            {
                policies.Set(vm.Name, "latency", pin: "std-ipv4", 0); // idle from now on: held where they cost the selector nothing
            }
            var store = new LocalFolderStore(learning);
            // Train now on what the training logged (the VMs flush their outcomes every 2 s), as an operator would after
            // a change; the learner also trains every 60 s, so a version not adopted now may be within two more rounds.
            // Without one the prior decides, and it says so.
            Thread.Sleep(3000);
            Console.Error.WriteLine($"train now: {policies.Train()}");
            WaitForVersionAbove(store, 0);
            Thread.Sleep(2 * (int)ModelRefresher.Period.TotalMilliseconds);
            var trainingLog = string.Join("; ", topology.Logs().Split('\n').Where(l => l.Contains("Learner trained", StringComparison.Ordinal)).TakeLast(2));
            modelLine = UtilityModel.ReadInService(store) is { } inService
                ? Invariant($"model in service before evaluation: v{inService.Version}, trained on {inService.Outcomes} outcomes in {inService.TrainingSeconds:0.0} s, held-back error {inService.HoldoutError:0.000} vs {inService.BaselineError:0.000} for {inService.Baseline}; importance {string.Join(", ", inService.Importance.Take(4).Select(i => Invariant($"{i.Feature} {i.Importance:0.000}")))}")
                : $"no model in service after training: the prior decides ({trainingLog})";
            Console.WriteLine(modelLine);
            Console.WriteLine(Invariant($"training took {clock.Elapsed.TotalMinutes:0.0} min"));
            var liveFrom = liveStart = DateTimeOffset.UtcNow;

            // 2. Live: the silo chooses.
            foreach (var schedule in evaluation)
            {
                foreach (var workload in Workloads)
                {
                    var track = tracks[(schedule.Name, workload)] = [];
                    using var poll = new Timer(_ =>
                    {
                        var sample = new Track(DateTimeOffset.UtcNow, Bound(topology, vms[workload].Name));
                        lock (track)
                        {
                            track.Add(sample);
                        }
                    }, null, 0, 500);
                    foreach (var (phase, index) in schedule.Phases.Select((p, i) => (p, i)))
                    {
                        Emulate(topology, phase);
                        var from = DateTimeOffset.UtcNow;
                        phaseStarts.Add(from);
                        var value = Drive(vms[workload], vm3, workload, (int)phase.Duration.TotalSeconds);
                        liveRows.Add(new(schedule.Name, index, workload, "learned", phase.Duration.TotalSeconds, value));
                        if (workload == "bulk")
                        {
                            passive.Add((value, from, DateTimeOffset.UtcNow));
                        }
                        Console.Error.WriteLine(Invariant($"learned {schedule.Name} phase {index + 1} {workload}: {value:0.00} {(workload == "bulk" ? "Mbit/s" : "ms p99")}, on {Bound(topology, vms[workload].Name)}"));
                        changes.AddRange(PrintDecisions(topology, vms[workload].Name, from));
                    }
                }
            }
            (decisions, explored, outsidePolicy) = Decisions(topology, vms.Values, liveFrom);
            Console.WriteLine(Invariant($"live runs took {(DateTimeOffset.UtcNow - liveFrom).TotalMinutes:0.0} min"));
            // 3. Per-VM effects: a CUBIC and a BBR guest on one lossy path.
            guestsStart = DateTimeOffset.UtcNow;
            guests = Guests(topology, policies, vm1, vm2, vm3, store);

            // 4. Every stack on every evaluation phase, with the same VMs and the same pair roles as the live runs (vm3
            // answers a pinned VM on its stack). After the live runs, so the outcomes the pinned VMs log are never
            // learned from before the selector is judged.
            var fixedFrom = Stopwatch.StartNew();
            fixedStart = DateTimeOffset.UtcNow;
            fixedRows.AddRange(MeasureFixed(topology, policies, evaluation, measureSeconds, vms, vm3, cells));
            Console.WriteLine(Invariant($"fixed stacks measured in {fixedFrom.Elapsed.TotalMinutes:0.0} min"));
            Thread.Sleep(3000); // the silo's outcome log flushes every 2 s
        }
        catch
        {
            Directory.Delete(work, recursive: true);
            throw;
        }
        var logged = new OutcomeLog(new LocalFolderStore(learning), TimeProvider.System, 7).ReadRecent(1_000_000);
        Directory.Delete(work, recursive: true);

        var text = new StringBuilder("schedule,phase,workload,carrier,seconds,value\n");
        foreach (var r in fixedRows.Concat(liveRows))
        {
            text.AppendLine(Invariant($"{r.Schedule},{r.Phase + 1},{r.Workload},{r.Carrier},{r.Seconds},{r.Value:0.###}"));
        }
        File.WriteAllText(csv, text.ToString());
        // Every outcome the silo logged (training, live, guests, fixed stacks; the model learned from the first two before the
        // selector was judged): to check a reading against.
        var outcomes = new StringBuilder($"{string.Join(',', LearningReplay.Columns)}\n");
        foreach (var o in logged)
        {
            var f = o.Features;
            var part = o.At < liveStart ? "training" : o.At < guestsStart ? "live" : o.At < fixedStart ? "guests" : "fixed";
            var cell = cells.LastOrDefault(c => c.Vm == o.VmId && c.Stack == o.Stack && o.At >= c.From && o.At <= c.To)?.Label ?? "";
            outcomes.AppendLine(Invariant($"{o.At:O},{o.VmId},{o.Host},{o.RemoteHost},{o.Workload},{o.Stack},{o.Exploration},{f.RttMs:0.###},{f.MinRttMs:0.###},{f.Loss:0.#####},{f.LossBurstiness:0.###},{f.CapacityMbps:0.#},{o.GoodputMbps:0.###},{o.DelayP99Ms:0.###},{o.ResidualLoss:0.#####},{o.OverheadRatio:0.###},{o.Utility:0.####},{f.JitterMs:0.###},{f.RttStdMs:0.###},{o.Propensity:0.####},{part},{cell}"));
        }
        var outcomesCsv = Path.ChangeExtension(csv, null) + "-outcomes.csv";
        File.WriteAllText(outcomesCsv, outcomes.ToString());
        Console.WriteLine();
        Console.WriteLine(modelLine);
        Report(evaluation, fixedRows, liveRows, tracks, phaseStarts, decisions, explored, outsidePolicy, changes);
        Tracking(passive, logged);
        Console.WriteLine(guests);
        Console.WriteLine($"\nCSV: {csv} (outcomes the silo logged: {outcomesCsv})\nran {clock.Elapsed.TotalMinutes:0.0} min");
        return 0;
    }

    /// <summary>
    /// Every stack a standard VM may run on every evaluation phase, each measured alone as the learned VMs ran: the bulk VM
    /// pinned to each stack in turn, then the latency VM, for <paramref name="measureSeconds"/> on a steady link; a phase
    /// that plays a trace for its whole length from the trace's start, as the learned selector met it. (The four latency
    /// VMs at once, one per stack, were tried on 2026-12-06 and dropped: each p99 came out worse than alone, by up to 8 %
    /// on the 6–8 ms paths and from 1.3–3.7 s to 5.9 s on Verizon's EVDO trace, and the learned VM runs alone.)
    /// </summary>
    private static List<Measured> MeasureFixed(OverlayTopology topology, PolicyClient policies, IReadOnlyList<LinkSchedule> evaluation, int measureSeconds,
        IReadOnlyDictionary<string, TestVm> vms, TestVm server, List<Cell> cells)
    {
        var rows = new List<Measured>();
        foreach (var schedule in evaluation)
        {
            foreach (var (phase, index) in schedule.Phases.Select((p, i) => (p, i)))
            {
                Emulate(topology, phase);
                var seconds = (int)Math.Max(2, phase.VariesInTime ? phase.Duration.TotalSeconds : Math.Min(measureSeconds, phase.Duration.TotalSeconds));
                foreach (var workload in Workloads)
                {
                    foreach (var stack in Stacks)
                    {
                        double value;
                        var from = DateTimeOffset.UtcNow;
                        try
                        {
                            Pin(topology, policies, workload, [(vms[workload], stack)]);
                            value = Measure(topology, phase, () => Drive(vms[workload], server, workload, seconds));
                        }
                        catch (Exception e) when (e is not OutOfMemoryException)
                        {
                            // Measured last, a failure here must not cost the live runs before it: the cell is left out
                            // (NaN: the report skips it) and said.
                            Console.Error.WriteLine($"fixed {schedule.Name} phase {index + 1} {workload} {stack}: not measured: {e.Message}");
                            value = double.NaN;
                        }
                        rows.Add(new(schedule.Name, index, workload, stack, seconds, value));
                        // Its outcomes may be reported a report interval after the traffic stopped.
                        cells.Add(new(Invariant($"{schedule.Name}/{index + 1}/{workload}"), vms[workload].Name, stack, from, DateTimeOffset.UtcNow + TimeSpan.FromSeconds(1)));
                        Console.Error.WriteLine(Invariant($"fixed {schedule.Name} phase {index + 1} {workload,-7} {stack,-10} {value,8:0.00} {(workload == "bulk" ? "Mbit/s" : "ms p99")}"));
                    }
                }
            }
        }
        return rows;
    }

    /// <summary>Pins each VM to its stack (its workload as given, no exploration) and waits until host-a's agent carries it there.</summary>
    private static void Pin(OverlayTopology topology, PolicyClient policies, string workload, IReadOnlyList<(TestVm Vm, string Stack)> pins)
    {
        foreach (var (vm, stack) in pins)
        {
            policies.Set(vm.Name, workload, stack, 0);
        }
        foreach (var (vm, stack) in pins)
        {
            Eventually.True(() => Bound(topology, vm.Name) == stack, TimeSpan.FromSeconds(20), $"{vm.Name} pinned to {stack}", topology.Logs);
        }
    }

    private static string Configuration => new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    private static IReadOnlyList<LinkSchedule> Shorten(IReadOnlyList<LinkSchedule> schedules, double? seconds) => seconds is not { } s
        ? schedules
        : [.. schedules.Select(x => x with { Phases = [.. x.Phases.Select(p => p with { Duration = TimeSpan.FromSeconds(s) })] })];

    /// <summary>Runs one measurement of a phase: a phase that plays a trace is set again first, so it plays from its start.</summary>
    private static double Measure(OverlayTopology topology, SchedulePhase phase, Func<double> measure)
    {
        if (phase.VariesInTime)
        {
            Emulate(topology, phase);
        }
        return measure();
    }

    private static void Emulate(OverlayTopology topology, SchedulePhase phase)
    {
        topology.Emulator($"set a2b {string.Join(' ', phase.EmulatorWords(forward: true))}");
        topology.Emulator($"set b2a {string.Join(' ', phase.EmulatorWords(forward: false))}");
    }

    /// <summary>Warms the path with one ping (the servers are started per run, see <see cref="Bulk"/> and <see cref="Latency"/>).</summary>
    private static void WarmUp(OverlayTopology topology, TestVm server) =>
        Privileged.Run("ip", "netns", "exec", topology.Vm("vm1").Namespace, "ping", "-c", "1", "-W", "2", server.IPv4);

    /// <summary>Runs the workload's traffic for <paramref name="seconds"/>: bulk returns goodput (Mbit/s), latency the p99 (ms).</summary>
    private static double Drive(TestVm client, TestVm server, string workload, int seconds) => workload == "bulk"
        ? Bulk(client, server, seconds)
        : Latency(client, server, seconds);

    private static int _iperfRuns;

    /// <summary>
    /// iperf3 goodput (Mbit/s) against a server started for this run alone (-1: it serves one test) on a port of its own:
    /// a server serving run after run refused the next test ("unable to receive control message: Connection reset by
    /// peer", 0 Mbit/s for a whole phase) once a test of an earlier run was cut short by a lossy phase.
    /// </summary>
    private static double Bulk(TestVm client, TestVm server, int seconds, string congestion = "cubic")
    {
        var port = IperfPort + 1 + (Interlocked.Increment(ref _iperfRuns) % 2000);
        using var listener = new ServerSet([Privileged.StartInNamespace(server.Namespace, "iperf3", "-s", "-1", "-p", $"{port}")]);
        Thread.Sleep(300);
        return StacksBenchmark.Iperf(client.Namespace, server.IPv4, port, seconds, congestion).Mbit;
    }

    /// <summary>sockperf's 64-byte request/response p99 over TCP (ms), against a server started for this run alone
    /// (<see cref="StacksBenchmark.SockperfOnFreshServer"/>).</summary>
    private static double Latency(TestVm client, TestVm server, int seconds)
    {
        return StacksBenchmark.Percentile(StacksBenchmark.SockperfOnFreshServer(client, server, seconds), "99.000") / 1000;
    }

    /// <summary>
    /// Sets the VMs' policies in the silo as an operator would: this program's <c>policy-shell</c>, an Orleans client
    /// started in the silo's namespace (where its gateway is), one line per change.
    /// </summary>
    private sealed class PolicyClient : IDisposable
    {
        private readonly Process _process;

        public PolicyClient(OverlayTopology topology)
        {
            var start = new ProcessStartInfo("ip") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            var (certificate, key, authority) = topology.OperatorCredential("learning-benchmark");
            foreach (var arg in new[] { "netns", "exec", topology.SiloNamespace, Path.Combine(AppContext.BaseDirectory, "Fabric.Benchmarks"), "policy-shell", $"{OverlayTopology.SiloAddress}:30000", certificate, key, authority })
            {
                start.ArgumentList.Add(arg);
            }
            _process = Process.Start(start)!;
            _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { Console.Error.WriteLine($"[policy-shell] {e.Data}"); } };
            _process.BeginErrorReadLine();
            var ready = Read(TimeSpan.FromSeconds(60));
            if (ready != "ready")
            {
                throw new InvalidOperationException($"policy-shell did not start: {ready}");
            }
        }

        private string? Read(TimeSpan timeout) => _process.StandardOutput.ReadLineAsync().WaitAsync(timeout).GetAwaiter().GetResult();

        /// <summary>Asks the learner to train now; returns what it said (adopted or not, and why).</summary>
        public string Train()
        {
            _process.StandardInput.WriteLine("train");
            _process.StandardInput.Flush();
            return Read(TimeSpan.FromSeconds(120)) ?? "no answer";
        }

        /// <summary>Sets the VM's policy: its workload, a pinned stack (null: the selector chooses) and its exploration share.</summary>
        public void Set(string vm, string workload, string? pin, double exploration)
        {
            _process.StandardInput.WriteLine(Invariant($"{vm} {workload} {pin ?? "-"} {exploration}"));
            _process.StandardInput.Flush();
            var reply = Read(TimeSpan.FromSeconds(30));
            if (reply is null || !reply.StartsWith("ok", StringComparison.Ordinal))
            {
                throw new InvalidOperationException($"setting {vm}'s policy ({workload}, pin {pin ?? "none"}): {reply ?? "no answer"}");
            }
        }

        public void Dispose()
        {
            _process.StandardInput.Close();
            if (!_process.WaitForExit(10_000))
            {
                _process.Kill(entireProcessTree: true);
            }
            _process.Dispose();
        }
    }

    /// <summary>Waits up to 150 s (the learner trains every 60 s) for a version in service above <paramref name="version"/>; returns the one in service then (0: none).</summary>
    private static long WaitForVersionAbove(LocalFolderStore store, long version)
    {
        var waited = Stopwatch.StartNew();
        while ((UtilityModel.ReadInService(store)?.Version ?? 0) <= version && waited.Elapsed < TimeSpan.FromSeconds(150))
        {
            Thread.Sleep(1000);
        }
        return UtilityModel.ReadInService(store)?.Version ?? 0;
    }

    /// <summary>The stack host-a's agent carries the VM's traffic to host-b on (its binding, else the path's).</summary>
    private static string? Bound(OverlayTopology topology, string vm)
    {
        try
        {
            return topology.BoundStack("host-a", vm, "host-b");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or IOException)
        {
            // An answer cut short while the agent is busy: no sample.
        }
        return null;
    }

    /// <summary>
    /// What the silo decided for <paramref name="vm"/> since <paramref name="since"/> (to standard error): every switch with
    /// its reason, and the last decision's candidates — what a reader needs to see why a phase went as it did.
    /// </summary>
    private static List<Change> PrintDecisions(OverlayTopology topology, string vm, DateTimeOffset since)
    {
        var changes = new List<Change>();
        try
        {
            using var view = JsonDocument.Parse(topology.SiloApi($"/api/vms/{vm}"));
            foreach (var decision in view.RootElement.GetProperty("log").EnumerateArray().Where(d => d.GetProperty("at").GetDateTimeOffset() >= since))
            {
                var at = decision.GetProperty("at").GetDateTimeOffset();
                if (decision.GetProperty("changed").GetBoolean())
                {
                    changes.Add(new Change(vm, at, at - since, decision.GetProperty("exploration").GetBoolean(),
                        decision.GetProperty("reason").GetString()?.StartsWith("guided exploration:", StringComparison.Ordinal) == true));
                }
                Console.Error.WriteLine(Invariant($"    +{(decision.GetProperty("at").GetDateTimeOffset() - since).TotalSeconds,5:0.0} s {decision.GetProperty("previous")} -> {decision.GetProperty("stack").GetString()}: {decision.GetProperty("reason").GetString()}"));
            }
            if (view.RootElement.GetProperty("last").TryGetProperty("host-b", out var last))
            {
                var c = last.GetProperty("conditions");
                var candidates = string.Join("; ", last.GetProperty("candidates").EnumerateArray().Select(x => Invariant($"{x.GetProperty("stack").GetString()} {x.GetProperty("score").GetDouble():0.000} [{x.GetProperty("why").GetString()}]")));
                Console.Error.WriteLine(Invariant($"    last: rtt {c.GetProperty("rttMs").GetDouble():0.0} ms (min {c.GetProperty("minRttMs").GetDouble():0.0}), loss {c.GetProperty("loss").GetDouble():0.####}, burstiness {c.GetProperty("lossBurstiness").GetDouble():0.00}, capacity {c.GetProperty("capacityMbps").GetDouble():0.0}; {candidates}"));
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or IOException)
        {
            Console.Error.WriteLine($"    (decisions unreadable: {e.Message})");
        }
        return changes;
    }

    /// <summary>The silo's decisions for the VMs since <paramref name="since"/>: how many, how many explored, how many chose a stack its policy does not allow.</summary>
    private static (int Decisions, int Explored, int OutsidePolicy) Decisions(OverlayTopology topology, IEnumerable<TestVm> vms, DateTimeOffset since)
    {
        var (count, explored, outside) = (0, 0, 0);
        foreach (var vm in vms)
        {
            using var view = JsonDocument.Parse(topology.SiloApi($"/api/vms/{vm.Name}"));
            foreach (var decision in view.RootElement.GetProperty("log").EnumerateArray().Where(d => d.GetProperty("at").GetDateTimeOffset() >= since))
            {
                count++;
                explored += decision.GetProperty("exploration").GetBoolean() ? 1 : 0;
                var policy = decision.GetProperty("policy");
                var stack = decision.GetProperty("stack").GetString();
                var allow = policy.GetProperty("allow").EnumerateArray().Select(a => a.GetString()).ToList();
                var deny = policy.GetProperty("deny").EnumerateArray().Select(a => a.GetString()).ToList();
                var pin = policy.GetProperty("pin").ValueKind == JsonValueKind.String ? policy.GetProperty("pin").GetString() : null;
                outside += (pin is not null && stack != pin) || (allow.Count > 0 && !allow.Contains(stack)) || deny.Contains(stack) || !Stacks.Contains(stack) ? 1 : 0;
            }
        }
        return (count, explored, outside);
    }

    private static void Report(IReadOnlyList<LinkSchedule> evaluation, List<Measured> fixedRows, List<Measured> liveRows,
        Dictionary<(string Schedule, string Workload), List<Track>> tracks, List<DateTimeOffset> phaseStarts, int decisions, int explored, int outsidePolicy, List<Change> changes)
    {
        // Utility of a value in a phase against the best fixed stack there (1 for the best by construction).
        double Utility(string schedule, int phase, string workload, double value)
        {
            var fixedValues = fixedRows.Where(r => r.Schedule == schedule && r.Phase == phase && r.Workload == workload && double.IsFinite(r.Value) && r.Value > 0).Select(r => r.Value).ToList();
            if (fixedValues.Count == 0 || !double.IsFinite(value) || value <= 0)
            {
                return 0;
            }
            return workload == "bulk" ? value / fixedValues.Max() : fixedValues.Min() / value;
        }
        double Weighted(IEnumerable<(double Seconds, double Utility)> parts)
        {
            var list = parts.ToList();
            return list.Sum(p => p.Seconds) is var total && total > 0 ? list.Sum(p => p.Seconds * p.Utility) / total : double.NaN;
        }
        // cap: the most a phase's utility counts (a live run above every fixed stack's cell is often the cells' noise:
        // 5-s p99 cells under bursty loss vary 1.5 times between runs, and on Verizon's EVDO trace up to 6 times).
        (double Learned, string BestFixed, double BestFixedUtility) Score(IEnumerable<LinkSchedule> schedules, string workload, double cap = double.PositiveInfinity)
        {
            var phases = schedules.SelectMany(s => s.Phases.Select((p, i) => (Schedule: s.Name, Index: i, p.Duration.TotalSeconds))).ToList();
            double UtilityOf(string carrier, string w, string schedule, int index)
            {
                var rows = carrier == "learned" ? liveRows : fixedRows;
                var row = rows.FirstOrDefault(r => r.Schedule == schedule && r.Phase == index && r.Workload == w && r.Carrier == carrier);
                return row is null ? 0 : Math.Min(cap, Utility(schedule, index, w, row.Value));
            }
            double General(string carrier, string schedule, int index) =>
                Math.Sqrt(UtilityOf(carrier, "bulk", schedule, index) * UtilityOf(carrier, "latency", schedule, index));
            double Carrier(string carrier) => workload == "general"
                ? Weighted(phases.Select(p => (p.TotalSeconds, General(carrier, p.Schedule, p.Index))))
                : Weighted(phases.Select(p => (p.TotalSeconds, UtilityOf(carrier, workload, p.Schedule, p.Index))));
            var best = Stacks.Select(s => (Stack: s, Utility: Carrier(s))).MaxBy(x => x.Utility);
            return (Carrier("learned"), best.Stack, best.Utility);
        }
        Console.WriteLine("\nper phase (utility against the best fixed stack there; the oracle is 1):");
        foreach (var schedule in evaluation)
        {
            foreach (var (phase, index) in schedule.Phases.Select((p, i) => (p, i)))
            {
                foreach (var workload in Workloads)
                {
                    var best = fixedRows.Where(r => r.Schedule == schedule.Name && r.Phase == index && r.Workload == workload && r.Value > 0)
                        .OrderBy(r => workload == "bulk" ? -r.Value : r.Value).FirstOrDefault();
                    var live = liveRows.FirstOrDefault(r => r.Schedule == schedule.Name && r.Phase == index && r.Workload == workload);
                    var track = tracks.GetValueOrDefault((schedule.Name, workload)) ?? [];
                    Console.WriteLine(Invariant($"  {schedule.Name,-18} {index + 1} {workload,-7} best fixed {best?.Carrier,-10} {best?.Value,8:0.00}  learned {live?.Value,8:0.00}  utility {(live is null ? 0 : Utility(schedule.Name, index, workload, live.Value)),5:0.00}"));
                }
            }
        }
        Console.WriteLine("\n                         learned   best fixed stack       regret  gain over best fixed");
        foreach (var group in evaluation.Select(s => (Name: s.Name, Schedules: (IEnumerable<LinkSchedule>)[s])).Append(("overall", evaluation)))
        {
            foreach (var workload in Workloads.Append("general"))
            {
                var (learned, bestStack, bestUtility) = Score(group.Schedules, workload);
                Console.WriteLine(Invariant($"  {group.Name,-18} {workload,-7} {learned,6:0.000}   {bestStack,-10} {bestUtility,6:0.000}   {1 - learned,7:0.0%}  {learned / bestUtility - 1,8:+0.0%;-0.0%}"));
            }
        }
        var (overallGeneral, _, overallBest) = Score(evaluation, "general");
        var switches = tracks.Values.Sum(t => t.Select(x => x.Stack).Where(s => s is not null).Zip(t.Select(x => x.Stack).Where(s => s is not null).Skip(1)).Count(p => p.First != p.Second));
        var hours = tracks.Values.Sum(t => t.Count > 1 ? (t[^1].At - t[0].At).TotalHours : 0);
        Console.WriteLine(Invariant($"\nswitches: {switches} in {hours * 60:0.0} path-minutes = {switches / Math.Max(hours, 1e-9):0.0} per path-hour"));
        // Stationary: more than 15 s into a phase (the selector's 5 s sustain and the smoothing have had their time).
        var settle = TimeSpan.FromSeconds(15);
        DateTimeOffset StartOf(DateTimeOffset at) => phaseStarts.Where(s => s <= at).DefaultIfEmpty(DateTimeOffset.MinValue).Max();
        var samples = tracks.Values.SelectMany(t => t.Where(x => x.Stack is not null).Zip(t.Where(x => x.Stack is not null).Skip(1))).ToList();
        var stationarySwitches = samples.Count(p => p.First.Stack != p.Second.Stack && p.Second.At - StartOf(p.Second.At) >= settle);
        var stationaryHours = samples.Where(p => p.First.At - StartOf(p.First.At) >= settle).Sum(p => (p.Second.At - p.First.At).TotalHours);
        Console.WriteLine(Invariant($"switches on a stationary phase (more than {settle.TotalSeconds:0} s after a change): {stationarySwitches} in {stationaryHours * 60:0.0} path-minutes = {stationarySwitches / Math.Max(stationaryHours, 1e-9):0.0} per path-hour (goal ≤ 1)"));
        // The same from the decisions themselves, apart by cause: an exploration and the return from it are what the exploration
        // share buys; the rest are the selector changing its mind on a path whose conditions did not change.
        var byCause = changes.GroupBy(c => c.Vm).SelectMany(g => g.OrderBy(c => c.At).Prepend(null).Zip(g.OrderBy(c => c.At), (before, c) => (c, Before: before)))
            .Where(x => x.c.IntoPhase >= settle).ToList();
        var exploring = byCause.Count(x => x.c.Exploration || x.Before?.Exploration == true);
        var decided = byCause.Count - exploring;
        Console.WriteLine(Invariant($"  of which exploring or returning from it {exploring} (guided explorations of a candidate predicted better within its uncertainty, and returns from them: {byCause.Count(x => x.c.Guided || x.Before?.Guided == true)}), decided {decided} = {decided / Math.Max(stationaryHours, 1e-9):0.0} per path-hour (goal ≤ 1)"));
        Console.WriteLine(Invariant($"guided explorations while live: {changes.Count(c => c.Guided)} (the model's prediction chose the stack to try, see StackSelector)"));
        // The VMs' logs keep the decisions that changed a stack or began a switch, not those that left everything as it was.
        Console.WriteLine(Invariant($"decisions logged while live (a stack changed or a switch began): {decisions}, exploring {explored}, outside the VM's policy {outsidePolicy}; explorations per path-hour {explored / Math.Max(hours, 1e-9):0.0}"));
        var (cappedGeneral, _, cappedBest) = Score(evaluation, "general", cap: 1);
        Console.WriteLine(Invariant($"each phase's utility capped at the oracle's 1: general {cappedGeneral:0.000}, regret {1 - cappedGeneral:0.0%}, {cappedGeneral / cappedBest - 1:+0.0%;-0.0%} against the best fixed stack"));
        Console.WriteLine(Invariant($"goal regret ≤ 5 %: {1 - overallGeneral:0.0%} ({(1 - overallGeneral <= 0.05 ? "met" : "missed")}); goal ≥ 15 % above the best fixed stack: {overallGeneral / overallBest - 1:+0.0%;-0.0%} ({(overallGeneral / overallBest - 1 >= 0.15 ? "met" : "missed")}); goal no decision outside a policy: {outsidePolicy} ({(outsidePolicy == 0 ? "met" : "missed")})"));
    }

    /// <summary>
    /// Per-VM effects with real guests: vm1's TCP is CUBIC, vm2's BBR, both bulk, both sending to vm3 at once over one
    /// lossy path (10 ms RTT, 3 % random loss each way, 100 Mbit/s). Each is pinned to std-ipv4 and to fec in turn
    /// (twice, 10 s each), the learner is left to train a new version on what they got, then both are unpinned and the
    /// silo chooses for each. Returns what it saw.
    /// </summary>
    private static string Guests(OverlayTopology topology, PolicyClient policies, TestVm cubic, TestVm bbr, TestVm server, LocalFolderStore store)
    {
        if (!File.ReadAllText("/proc/sys/net/ipv4/tcp_available_congestion_control").Split(' ', '\n').Contains("bbr"))
        {
            return "guests: not measured, this kernel has no bbr (net.ipv4.tcp_available_congestion_control)";
        }
        string[] lossy = ["delay=5ms", "loss=3%", "rate=100mbit", "queue=300"];
        topology.Emulator($"set a2b {string.Join(' ', [.. SchedulePhase.Reset, .. lossy])}");
        topology.Emulator($"set b2a {string.Join(' ', [.. SchedulePhase.Reset, .. lossy])}");
        (double Cubic, double Bbr) Both(int seconds)
        {
            var c = Task.Run(() => Bulk(cubic, server, seconds, "cubic"));
            var b = Task.Run(() => Bulk(bbr, server, seconds, "bbr"));
            return (c.GetAwaiter().GetResult(), b.GetAwaiter().GetResult());
        }
        var pinned = new Dictionary<string, List<(double Cubic, double Bbr)>> { ["std-ipv4"] = [], ["fec"] = [] };
        for (var round = 0; round < 2; round++)
        {
            foreach (var stack in pinned.Keys)
            {
                Pin(topology, policies, "bulk", [(cubic, stack), (bbr, stack)]);
                pinned[stack].Add(Both(10));
            }
        }
        // Train now on what the pinned rounds logged, as an operator would (waiting up to 150 s for the learner's own
        // round cost the default run two minutes and mostly ended in "no new model version").
        var before = UtilityModel.ReadInService(store)?.Version ?? 0;
        Thread.Sleep(3000); // the VMs flush their outcomes every 2 s
        var trained = policies.Train();
        Thread.Sleep(2 * (int)ModelRefresher.Period.TotalMilliseconds);
        var after = UtilityModel.ReadInService(store)?.Version ?? 0;
        foreach (var vm in new[] { cubic, bbr })
        {
            policies.Set(vm.Name, "bulk", pin: null, 0);
        }
        Thread.Sleep(3000);
        var chosen = Both(20);
        var (onCubic, onBbr) = (Bound(topology, cubic.Name), Bound(topology, bbr.Name));
        string Reason(TestVm vm)
        {
            using var view = JsonDocument.Parse(topology.SiloApi($"/api/vms/{vm.Name}"));
            return view.RootElement.GetProperty("last").TryGetProperty("host-b", out var last)
                ? string.Join("; ", last.GetProperty("candidates").EnumerateArray().Select(c => $"{c.GetProperty("stack").GetString()}: {c.GetProperty("why").GetString()}"))
                : "no decision";
        }
        double Mean(string stack, Func<(double Cubic, double Bbr), double> pick) => pinned[stack].Average(pick);
        return Invariant($"""

            guests on one lossy path (10 ms, 3 % loss each way, 100 Mbit/s), both bulk, sending at once:
              pinned:  CUBIC guest std-ipv4 {Mean("std-ipv4", x => x.Cubic),6:0.0} Mbit/s, fec {Mean("fec", x => x.Cubic),6:0.0};  BBR guest std-ipv4 {Mean("std-ipv4", x => x.Bbr),6:0.0}, fec {Mean("fec", x => x.Bbr),6:0.0}
              {(after > before ? $"model v{after} trained on what they got (v{before} before)" : $"v{before} stays ({trained})")}; then the silo chose:
              CUBIC guest ({cubic.Name}) on {onCubic}: {chosen.Cubic:0.0} Mbit/s;  BBR guest ({bbr.Name}) on {onBbr}: {chosen.Bbr:0.0} Mbit/s
              {cubic.Name}'s candidates: {Reason(cubic)}
              {bbr.Name}'s candidates: {Reason(bbr)}
            """);
    }

    /// <summary>How well the agents' passive goodput (from the VM's own TCP, logged as outcomes) tracks iperf3's figure.</summary>
    private static void Tracking(List<(double Iperf, DateTimeOffset From, DateTimeOffset To)> phases, IReadOnlyList<LoggedOutcome> logged)
    {
        var ratios = new List<double>();
        foreach (var (iperf, from, to) in phases)
        {
            var inside = logged.Where(o => o.VmId == "vm1" && o.At > from.AddSeconds(1) && o.At <= to).Select(o => o.GoodputMbps).ToList();
            if (inside.Count > 0 && iperf > 0)
            {
                ratios.Add(inside.Average() / iperf);
            }
        }
        if (ratios.Count == 0)
        {
            Console.WriteLine("passive goodput vs iperf3: no bulk phase had logged outcomes");
            return;
        }
        ratios.Sort();
        Console.WriteLine(Invariant($"passive goodput / iperf3 goodput over {ratios.Count} bulk phases: median {ratios[ratios.Count / 2]:0.00}, min {ratios[0]:0.00}, max {ratios[^1]:0.00}"));
    }
}
