using Fabric.Cni;

// fabric-cni: Fabric's CNI plugin. The runtime sets CNI_COMMAND and friends and writes the configuration on stdin;
// success prints the result on stdout and exits 0, failure prints the spec's error JSON on stdout and exits 1.
var env = CniEnvironment.Read(Environment.GetEnvironmentVariable);
string stdin;
try
{
    stdin = Console.In.ReadToEnd();
}
catch (IOException e)
{
    Console.Out.Write(new CniException(CniException.IoFailure, "could not read the configuration from stdin", e.Message).ToJson("1.1.0"));
    return 1;
}
try
{
    var output = new Plugin(env).Run(stdin);
    if (output is not null)
    {
        Console.Out.Write(output);
    }
    return 0;
}
catch (CniException e)
{
    Console.Out.Write(e.ToJson(TryVersion(stdin)));
    return 1;
}
catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException or InvalidOperationException)
{
    Console.Out.Write(new CniException(CniException.IoFailure, $"{env.Command} failed: {e.Message}", e.GetType().Name).ToJson(TryVersion(stdin)));
    return 1;
}

static string TryVersion(string stdin)
{
    try
    {
        return System.Text.Json.Nodes.JsonNode.Parse(stdin)?["cniVersion"]?.GetValue<string>() ?? "1.1.0";
    }
    catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException)
    {
        return "1.1.0";
    }
}
