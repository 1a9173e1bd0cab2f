using System.Text.Json;
using Fabric.Registration;

// fabric-hook: libvirt's qemu hook (deploy/libvirt/qemu runs it with libvirt's arguments and the domain XML on stdin).
//   prepare/start/started/reconnect/attach begin → register the VM with the local agent (idempotent)
//   stopped/release end                          → deregister it
//   migrate/restore begin                        → filters: the XML is passed through unchanged on stdout
// It never calls libvirt and never waits on the agent for more than FABRIC_HOOK_TIMEOUT_MS (default 60): when the agent
// is down the request is queued durably in $FABRIC_STATE_DIR/hook-spool and replayed in order by the next hook call or
// by the agent (at start and every 2 s), and the hook exits 0 so the VM starts. Exit 1: the XML or its Fabric policy is refused
// (the message says why on stderr); exit 2: bad arguments.
const string Usage = """
usage:
  fabric-hook qemu NAME OPERATION SUB-OPERATION EXTRA...   (libvirt's qemu hook arguments; domain XML on stdin)
  fabric-hook replay                                        deliver queued requests now
  fabric-hook parse FILE                                    print the registration a domain XML yields (no agent needed)
environment: FABRIC_AGENT_SOCKET (default /run/fabric/agent.sock), FABRIC_STATE_DIR (default /var/lib/fabric),
             FABRIC_HOOK_TIMEOUT_MS (default 60)
""";

var socket = Environment.GetEnvironmentVariable("FABRIC_AGENT_SOCKET") is { Length: > 0 } s ? s : "/run/fabric/agent.sock";
var state = Environment.GetEnvironmentVariable("FABRIC_STATE_DIR") is { Length: > 0 } d ? d : "/var/lib/fabric";
var timeoutText = Environment.GetEnvironmentVariable("FABRIC_HOOK_TIMEOUT_MS");
if (!int.TryParse(timeoutText ?? "60", out var timeoutMs) || timeoutMs is < 1 or > 10_000)
{
    Console.Error.WriteLine($"fabric-hook: FABRIC_HOOK_TIMEOUT_MS '{timeoutText}' is not 1..10000");
    return 2;
}
var hook = new Hook(socket, new HookSpool(Path.Combine(state, "hook-spool")), TimeSpan.FromMilliseconds(timeoutMs));
switch (args)
{
    case ["qemu", var name, var operation, _, ..]:
        return hook.Qemu(name, operation, Console.In.ReadToEnd());
    case ["replay"]:
        Console.WriteLine($"{hook.Replay()} queued request(s) delivered; {hook.Spool.Pending().Count} still queued");
        return 0;
    case ["parse", var file]:
        try
        {
            Console.WriteLine(DomainXml.Parse(File.ReadAllText(file)).ToJson());
            return 0;
        }
        catch (RegistrationException e)
        {
            Console.Error.WriteLine($"fabric-hook: {file}: {e.Message}");
            return 1;
        }
    case ["-h" or "--help"]:
        Console.Write(Usage);
        return 0;
    default:
        Console.Error.Write(Usage);
        return 2;
}

/// <summary>What one hook call does; the spool keeps requests the agent could not take.</summary>
internal sealed class Hook(string socket, HookSpool spool, TimeSpan timeout)
{
    public HookSpool Spool => spool;

    public int Qemu(string name, string operation, string xml)
    {
        switch (operation)
        {
            case "migrate" or "restore":
                // Filters: libvirt reads stdout as the (possibly modified) domain XML. Fabric changes nothing.
                Console.Out.Write(xml);
                return 0;
            case "prepare" or "start" or "started" or "reconnect" or "attach":
            case "stopped" or "release":
                break;
            default:
                return 0;
        }
        VmRegistration registration;
        try
        {
            registration = DomainXml.Parse(xml);
        }
        catch (RegistrationException e)
        {
            Console.Error.WriteLine($"fabric-hook: domain {name} ({operation}): {e.Message}");
            return 1;
        }
        var request = (operation is "stopped" or "release"
            ? new RegistrationRequest("deregister-vm", Id: registration.Id)
            : new RegistrationRequest("register-vm", registration)).ToJson();
        return Deliver(name, operation, request);
    }

    public int Replay()
    {
        try
        {
            return spool.Replay(Applied);
        }
        catch (AgentUnavailableException)
        {
            return 0;
        }
    }

    private int Deliver(string name, string operation, string request)
    {
        try
        {
            // Older queued requests first, so the agent sees them in the order libvirt made them.
            spool.Replay(Applied);
            if (spool.Pending().Count > 0)
            {
                throw new AgentUnavailableException("older requests are still queued");
            }
            var (ok, error) = Answer(AgentClient.Send(socket, request, timeout));
            if (!ok)
            {
                Console.Error.WriteLine($"fabric-hook: domain {name} ({operation}): the agent refused it: {error}");
                return 1;
            }
            return 0;
        }
        catch (AgentUnavailableException e)
        {
            spool.Enqueue(request);
            Console.Error.WriteLine($"fabric-hook: domain {name} ({operation}): queued in {spool.Directory} ({e.Message}); the agent applies it when it starts");
            return 0;
        }
    }

    /// <summary>Sends a request; true when the agent applied it (throws <see cref="AgentUnavailableException"/> when it cannot be asked).</summary>
    private bool Applied(string request) => Answer(AgentClient.Send(socket, request, timeout)).Ok;

    private static (bool Ok, string? Error) Answer(string response)
    {
        using var document = JsonDocument.Parse(response);
        var root = document.RootElement;
        return (root.GetProperty("ok").GetBoolean(), root.TryGetProperty("error", out var error) ? error.GetString() : null);
    }
}
