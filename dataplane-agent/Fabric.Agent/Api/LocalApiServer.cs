using System.Text.Json;
using Fabric.Hal.Linux;

namespace Fabric.Agent.Api;

/// <summary>
/// The agent's local API on a unix socket (mode 0600): one JSON <see cref="ApiRequest"/> per line in, one JSON
/// <see cref="ApiResponse"/> per line out. Hooks (libvirt, CNI) and the CLI talk to it.
/// </summary>
public sealed class LocalApiServer : IDisposable
{
    private readonly UnixLineServer _server;

    public LocalApiServer(Agent agent, string path) => _server = new UnixLineServer(path, line =>
    {
        ApiResponse response;
        try
        {
            response = agent.Handle(AgentConfig.Parse<ApiRequest>(line));
        }
        catch (Exception e) when (e is JsonException or FormatException)
        {
            response = new ApiResponse(false, Error: $"bad request: {e.Message}");
        }
        return AgentConfig.Serialize(response);
    });

    /// <summary>Sends one request line and returns the response line.</summary>
    public static string Send(string path, string requestJson) =>
        UnixLineServer.Send(path, requestJson) ?? """{"ok":false,"error":"the agent closed the connection"}""";

    public void Dispose() => _server.Dispose();
}
