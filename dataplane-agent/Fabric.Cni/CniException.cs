using System.Text.Json.Nodes;

namespace Fabric.Cni;

/// <summary>A CNI error result (SPEC "Error"): a well-known code below 100, or one of this plugin's own from 100.</summary>
public sealed class CniException(int code, string message, string details = "") : Exception(message)
{
    public const int IncompatibleVersion = 1;
    public const int UnsupportedField = 2;
    public const int UnknownContainer = 3;
    public const int InvalidEnvironment = 4;
    public const int IoFailure = 5;
    public const int DecodeFailure = 6;
    public const int InvalidConfig = 7;
    public const int TryAgainLater = 11;
    public const int NotAvailable = 50;

    /// <summary>This plugin's own codes.</summary>
    public const int InterfaceExists = 100;
    public const int AgentRefused = 101;
    public const int CheckFailed = 102;
    public const int LinkFailure = 103;

    public int Code { get; } = code;

    public string Details { get; } = details;

    public string ToJson(string cniVersion) => new JsonObject
    {
        ["cniVersion"] = cniVersion,
        ["code"] = Code,
        ["msg"] = Message,
        ["details"] = Details,
    }.ToJsonString(Relaxed);

    // Error text reaches people through the runtime's logs: keep quotes readable instead of \u0027.
    private static readonly System.Text.Json.JsonSerializerOptions Relaxed = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}
