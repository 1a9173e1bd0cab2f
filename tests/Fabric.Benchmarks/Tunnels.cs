using System.Diagnostics;
using Fabric.Testing;

namespace Fabric.Benchmarks;

/// <summary>The baselines' tunnels between the two host namespaces of an <see cref="OverlayTopology"/>: wireguard-go and kcptun.</summary>
internal static class Tunnels
{
    internal static int StartWireGuard(OverlayTopology topology, string ns, string name, string address, out string publicKey)
    {
        // A socket left by a run that was killed would pass for this one's, and wg would then fall back to the kernel's
        // WireGuard ("Protocol not supported"): remove it, and wait until the new one answers. The folder is wireguard-go's
        // own (it creates it), absent before its first run on a machine: File.Delete throws for a missing folder.
        if (Directory.Exists("/var/run/wireguard"))
        {
            File.Delete($"/var/run/wireguard/{name}.sock");
        }
        var process = topology.StartIn(ns, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", name);
        Eventually.True(() => File.Exists($"/var/run/wireguard/{name}.sock") && Fabric.Programs.ProgramRunner.TryRun("ip", ["netns", "exec", ns, "wg", "show", name], null, null).Succeeded,
            TimeSpan.FromSeconds(10), $"starting wireguard-go {name}", () => "");
        var key = Privileged.Run("wg", "genkey").Trim();
        var keyFile = Path.GetTempFileName();
        File.WriteAllText(keyFile, key + "\n");
        publicKey = RunWithInput("wg", key, "pubkey").Trim();
        Privileged.Run("ip", "netns", "exec", ns, "wg", "set", name, "private-key", keyFile, "listen-port", "51820");
        File.Delete(keyFile);
        Privileged.Run("ip", "netns", "exec", ns, "ip", "addr", "add", address + "/24", "dev", name);
        Privileged.Run("ip", "netns", "exec", ns, "ip", "link", "set", name, "mtu", "1420", "up");
        return process.Id;
    }

    internal static void Peer(string ns, string name, string publicKey, string allowed, string endpoint) =>
        Privileged.Run("ip", "netns", "exec", ns, "wg", "set", name, "peer", publicKey, "allowed-ips", allowed, "endpoint", endpoint);

    internal static string RunWithInput(string program, string input, params string[] args)
    {
        var result = Fabric.Programs.ProgramRunner.TryRun(program, args, input + "\n", null);
        return result.Succeeded ? result.Stdout : throw new InvalidOperationException($"'{program}' exited {result.Code}: {result.Stderr.Trim()}");
    }

    /// <summary>
    /// A kcptun pair carrying TCP from <paramref name="localPort"/> on host A's loopback to <paramref name="target"/> on host B,
    /// over UDP port <paramref name="udpPort"/> across the underlay. KCP as kcptun ships it (mode fast, its default
    /// 10+3 FEC), windows raised to 2048 packets so long paths are not window-bound, no compression or encryption (the
    /// Fabric stacks it is compared with do neither).
    /// </summary>
    internal static (Process Client, Process Server) StartKcptun(OverlayTopology topology, int localPort, int udpPort, string target)
    {
        string[] common = ["--mode", "fast", "--nocomp", "--crypt", "none", "--sndwnd", "2048", "--rcvwnd", "2048", "--quiet"];
        var server = topology.StartIn(topology.HostB, "kcptun-server", [.. new[] { "-l", $":{udpPort}", "-t", target }, .. common]);
        var client = topology.StartIn(topology.HostA, "kcptun-client", [.. new[] { "-l", $"127.0.0.1:{localPort}", "-r", $"198.18.0.2:{udpPort}" }, .. common]);
        return (client, server);
    }
}
