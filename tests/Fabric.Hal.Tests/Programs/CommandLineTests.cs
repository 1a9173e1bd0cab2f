using Fabric.Testing;

namespace Fabric.Hal.Tests.Programs;

/// <summary>Every operator command line follows the same conventions: generated help for every command, bad usage named
/// on stderr with a pointer to --help and exit code 2.</summary>
public sealed class CommandLineTests
{
    public static TheoryData<string, string, string> Tools => new()
    {
        { "dataplane-agent/Fabric.Agent.Host", "fabric-agent", "run" },
        { "repository/Fabric.Repository.Cli", "fabric-repo", "publish" },
        { "dataplane-agent/Fabric.Hal.Cli", "fabric-hal", "vf" },
        { "dataplane-agent/Fabric.LinkEmulator.Cli", "fabric-linkem", "run" },
        { "stacks/Fabric.Decode", "fabric-decode", "" },
        { "silo/Fabric.Silo.Host", "fabric-silo", "" },
        { "dashboard/Fabric.Dashboard", "fabric-dashboard", "" },
        { "dashboard/Fabric.Embedded.Host", "fabric-embedded", "" },
    };

    [Theory]
    [MemberData(nameof(Tools))]
    public void Help_IsGenerated_ForTheToolAndItsCommands(string project, string tool, string command)
    {
        var program = Processes.Built(project, tool);
        var (code, stdout, _) = Processes.Run(program, ["--help"]);
        Assert.Equal(0, code);
        Assert.Contains($"Usage:\n  {tool}", stdout, StringComparison.Ordinal);
        Assert.Contains("-h, --help", stdout, StringComparison.Ordinal);
        if (command.Length > 0)
        {
            (code, stdout, _) = Processes.Run(program, [command, "--help"]);
            Assert.Equal(0, code);
            Assert.Contains($"Usage:\n  {tool} {command}", stdout, StringComparison.Ordinal);
            Assert.Contains("Options:", stdout, StringComparison.Ordinal);
        }
    }

    [Theory]
    [MemberData(nameof(Tools))]
    public void AnUnknownOption_IsNamed_AndExitsWith2(string project, string tool, string command)
    {
        string[] args = command.Length > 0 ? [command, "--no-such-option"] : ["--no-such-option"];
        var (code, stdout, stderr) = Processes.Run(Processes.Built(project, tool), args);
        Assert.True(code == 2, $"exit {code}: {stdout} {stderr}");
        Assert.Contains("--no-such-option", stderr, StringComparison.Ordinal);
        Assert.StartsWith($"{tool}: ", stderr, StringComparison.Ordinal);
        Assert.Contains($"See '{tool}{(command.Length > 0 ? " " + command : "")} --help'.", stderr, StringComparison.Ordinal);
        Assert.Equal("", stdout);
    }

    [Theory]
    [InlineData("dataplane-agent/Fabric.LinkEmulator.Cli", "fabric-linkem", new[] { "run", "--a", "x", "--b", "y", "--loss", "150%" }, "--loss '150%'")]
    [InlineData("dataplane-agent/Fabric.LinkEmulator.Cli", "fabric-linkem", new[] { "run", "--a", "x" }, "'--b' is required")]
    [InlineData("dashboard/Fabric.Embedded.Host", "fabric-embedded", new[] { "--hosts", "99" }, "--hosts '99': is not a whole number in 2..16")]
    [InlineData("dashboard/Fabric.Embedded.Host", "fabric-embedded", new[] { "--listen", "0.0.0.0:5080" }, "--listen 0.0.0.0:5080: beyond loopback the dashboard serves only HTTPS")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new string[0], "no cluster to show: give the silos' gateways (--gateway ADDR:PORT) or --clustering azure-table")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "--hosts", "4", "--gateway", "127.0.0.1:30000" }, "--hosts")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "--gateway", "127.0.0.1:30000" }, "--users FILE is required")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "--gateway", "10.9.9.9:30000", "--users", "/nonexistent" },
        "--certificate, --key and --authority are required with a gateway beyond loopback")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "--gateway", "127.0.0.1:30000", "--users", "/nonexistent", "--key", "/k.pem" },
        "--certificate, --key and --authority go together")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "--listen", "0.0.0.0:5080" }, "--listen 0.0.0.0:5080: beyond loopback the dashboard serves only HTTPS")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "--tls-certificate", "/c.pem" }, "--tls-certificate and --tls-key go together")]
    [InlineData("dashboard/Fabric.Dashboard", "fabric-dashboard", new[] { "users", "set", "--users", "/nonexistent/users", "ops", "root" }, "role 'root': is not admin or read-only")]
    [InlineData("repository/Fabric.Repository.Cli", "fabric-repo", new[] { "pack", "--from", "x", "--id", "y", "--version", "1.0.0", "--out", "z", "--family", "ipx" }, "--family 'ipx': is not one of ipv4, ipv6")]
    [InlineData("dataplane-agent/Fabric.Hal.Cli", "fabric-hal", new[] { "vf", "eth0", "--vf", "1", "--mac", "zz" }, "--mac 'zz': is not a MAC address")]
    [InlineData("dataplane-agent/Fabric.Hal.Cli", "fabric-hal", new[] { "vf", "eth0", "--trust", "on" }, "'--trust' must follow a --vf INDEX")]
    [InlineData("dataplane-agent/Fabric.Agent.Host", "fabric-agent", new[] { "ctl", "/nonexistent.sock", "frobnicate" }, "OP 'frobnicate': is not one of status")]
    [InlineData("stacks/Fabric.Decode", "fabric-decode", new string[0], "Required argument 'CAPTURE' missing")]
    public void ABadValue_IsNamedWithTheExpectedForm_AndExitsWith2(string project, string tool, string[] args, string expected)
    {
        var (code, _, stderr) = Processes.Run(Processes.Built(project, tool), args);
        Assert.True(code == 2, $"exit {code}: {stderr}");
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
    }
}
