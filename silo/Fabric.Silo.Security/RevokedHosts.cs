using System.Collections.Frozen;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fabric.Silo.Security;

/// <summary>
/// What this silo refuses whatever else a caller proves: the hosts an operator removed from the fleet, as last read from
/// the fleet grain (their agents' calls are refused whatever certificate they hold), and the certificates the fleet's
/// authority revoked, from its revocation list file when the silo has one (<see cref="RevocationListFile"/>; refused at
/// TLS and on every call, a connection made before the revocation included). Both are read again every
/// <see cref="RefreshPeriod"/>, so a removal or a new list reaches every silo within that time.
/// </summary>
public sealed class RevokedHosts
{
    public static readonly TimeSpan RefreshPeriod = TimeSpan.FromSeconds(5);

    private volatile FrozenSet<string> _hosts = FrozenSet<string>.Empty;
    private volatile FrozenSet<string> _certificates = FrozenSet<string>.Empty;

    /// <summary>The authority's revocation list this silo reads, if it was given one.</summary>
    public RevocationListFile? List { get; init; }

    public bool Contains(string hostId) => _hosts.Contains(hostId);

    public void Set(IEnumerable<string> hosts) => _hosts = hosts.ToFrozenSet(StringComparer.Ordinal);

    /// <summary>True when the certificate with this serial number (hexadecimal, as <c>X509Certificate2.SerialNumber</c>) was revoked.</summary>
    public bool IsRevokedCertificate(string serialNumber) => _certificates.Count > 0 && _certificates.Contains(RevocationList.SerialOf(serialNumber));

    /// <summary>Takes the serials of a verified revocation list and closes the open connections whose peer presented a
    /// certificate it revokes (<see cref="Track"/>); returns how many it closed.</summary>
    public int SetCertificates(FrozenSet<string> serials)
    {
        _certificates = serials;
        return CloseRevoked();
    }

    /// <summary>
    /// Reads the revocation list file again if it changed; throws <see cref="InvalidDataException"/> naming the file when it
    /// cannot be used (the last good list stands). Returns how many open connections a new list closed.
    /// </summary>
    public int RefreshCertificates()
    {
        lock (_reading)
        {
            return List?.ReadIfChanged() is { } list ? SetCertificates(list.Serials) : 0;
        }
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<Microsoft.AspNetCore.Connections.ConnectionContext, bool> _connections = new();

    /// <summary>
    /// Keeps a TLS connection (from the start of its handshake until it closes) so that a list revoking the certificate
    /// its peer presented closes it: without this, a connection opened before the revocation (a revoked silo's with the
    /// others, an agent's or an operator's with a gateway) would stay open until either end dropped it.
    /// </summary>
    public void Track(Microsoft.AspNetCore.Connections.ConnectionContext connection)
    {
        _connections[connection] = true;
        connection.ConnectionClosed.UnsafeRegister(static (state, _) =>
        {
            var (connections, closed) = ((System.Collections.Concurrent.ConcurrentDictionary<Microsoft.AspNetCore.Connections.ConnectionContext, bool>, Microsoft.AspNetCore.Connections.ConnectionContext))state!;
            connections.TryRemove(KeyValuePair.Create(closed, true));
        }, (_connections, connection));
    }

    /// <summary>The tracked connections still open whose peer presented the certificate with this serial (hexadecimal).</summary>
    public int OpenWith(string serialNumber) =>
        _connections.Keys.Count(c => !c.ConnectionClosed.IsCancellationRequested
            && c.Features.Get<Orleans.Connections.Security.ITlsConnectionFeature>()?.RemoteCertificate is { } certificate
            && RevocationList.SerialOf(certificate.SerialNumber) == RevocationList.SerialOf(serialNumber));

    /// <summary>How many connections are tracked (closed ones leave at once).</summary>
    public int Tracked => _connections.Count;

    /// <summary>Whether any tracked connection, open or not, presented the certificate with this serial.</summary>
    public bool Tracks(string serialNumber) =>
        _connections.Keys.Any(c => c.Features.Get<Orleans.Connections.Security.ITlsConnectionFeature>()?.RemoteCertificate is { } certificate
            && RevocationList.SerialOf(certificate.SerialNumber) == RevocationList.SerialOf(serialNumber));

    private int CloseRevoked()
    {
        var closed = 0;
        foreach (var connection in _connections.Keys)
        {
            if (connection.ConnectionClosed.IsCancellationRequested)
            {
                _connections.TryRemove(connection, out _);
            }
            else if (connection.Features.Get<Orleans.Connections.Security.ITlsConnectionFeature>()?.RemoteCertificate is { } certificate
                && IsRevokedCertificate(certificate.SerialNumber))
            {
                _connections.TryRemove(connection, out _);
                connection.Abort(new Microsoft.AspNetCore.Connections.ConnectionAbortedException(
                    $"the certificate {certificate.Subject} (serial {RevocationList.SerialOf(certificate.SerialNumber)}) was revoked by the fleet's authority"));
                closed++;
            }
        }
        return closed;
    }

    private readonly Lock _reading = new();
    private long _readAt = Environment.TickCount64;

    /// <summary>
    /// For a process with no refresher (an agent's or a dashboard's client, at each TLS handshake): reads the list again
    /// when <see cref="RefreshPeriod"/> has passed since the last read. A list that cannot be used leaves the last good one
    /// (and <see cref="Problem"/> says why).
    /// </summary>
    public void RefreshCertificatesIfDue()
    {
        var now = Environment.TickCount64;
        var last = Interlocked.Read(ref _readAt);
        if (List is null || now - last < RefreshPeriod.TotalMilliseconds || Interlocked.CompareExchange(ref _readAt, now, last) != last)
        {
            return;
        }
        try
        {
            RefreshCertificates();
            Problem = List.KeepProblem;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // In a TLS callback: nothing may escape; the last good list stands.
            Problem = e.Message;
        }
    }

    /// <summary>Why the last read of the list on a handshake failed; null when it worked.</summary>
    public string? Problem { get; private set; }

    /// <summary>
    /// For a client's status (an agent's, a dashboard's): reads the list again when due, as a handshake would (a client
    /// with its connections open makes none), and says why it could not be used; null when it could, or there is none.
    /// </summary>
    public string? ListProblem()
    {
        RefreshCertificatesIfDue();
        return Problem is { } problem ? $"{problem}; the last good list stands" : null;
    }
}

/// <summary>
/// The authority's revocation list as a file an operator replaces (<c>fabric-pki revoke</c>, then copied to each silo);
/// read when its time or length changed. A list issued before the one in force is refused (an old backup copied in would
/// un-revoke what was revoked since). The issue time of the list in force is kept beside it (<see cref="InForceFileOf"/>),
/// so a restart refuses an older list too; where that file cannot be written, the read says so (the list is still taken).
/// </summary>
public sealed class RevocationListFile
{
    private readonly string _path;
    private readonly System.Security.Cryptography.X509Certificates.X509Certificate2 _authority;
    private (DateTime Written, long Length)? _seen;
    private DateTimeOffset? _inForce;

    public RevocationListFile(string path, System.Security.Cryptography.X509Certificates.X509Certificate2 authority)
    {
        (_path, _authority) = (path, authority);
        var inForce = InForceFileOf(path);
        string? text;
        try
        {
            text = File.Exists(inForce) ? File.ReadAllText(inForce).Trim() : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"revocation list {path}: {inForce} (the issue time of the list in force) cannot be read: {e.Message}", e);
        }
        if (text is not null)
        {
            _inForce = DateTimeOffset.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AssumeUniversal, out var at)
                ? at
                : throw new InvalidDataException($"revocation list {path}: {inForce} (the issue time of the list in force) is unreadable; "
                    + "delete it only if the list beside it is the newest the authority issued");
        }
    }

    public string Path => _path;

    /// <summary>Where the issue time of the list in force is kept: beside the list, "LIST.in-force".</summary>
    public static string InForceFileOf(string path) => path + ".in-force";

    /// <summary>The list when the file changed since the last good read, else null; throws <see cref="InvalidDataException"/> naming the file and the problem.</summary>
    public RevocationList? ReadIfChanged()
    {
        var info = new FileInfo(_path);
        if (!info.Exists)
        {
            throw new InvalidDataException($"revocation list {_path}: the file does not exist");
        }
        var now = (info.LastWriteTimeUtc, info.Length);
        if (_seen == now)
        {
            return null;
        }
        RevocationList list;
        try
        {
            list = RevocationList.Parse(File.ReadAllBytes(_path), _authority);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"revocation list {_path}: {e.Message}", e);
        }
        if (_inForce is { } inForce && list.ThisUpdate < inForce)
        {
            throw new InvalidDataException($"revocation list {_path}: issued {list.ThisUpdate:u}, before the list in force ({inForce:u}); the list in force stands");
        }
        (_seen, _inForce) = (now, list.ThisUpdate);
        KeepInForce(list.ThisUpdate);
        return list;
    }

    /// <summary>The last failure to keep the issue time of the list in force (null: kept).</summary>
    public string? KeepProblem { get; private set; }

    private void KeepInForce(DateTimeOffset issued)
    {
        var file = InForceFileOf(_path);
        try
        {
            var text = issued.UtcDateTime.ToString("O", System.Globalization.CultureInfo.InvariantCulture);
            if (!File.Exists(file) || File.ReadAllText(file).Trim() != text)
            {
                var temporary = file + ".tmp";
                File.WriteAllText(temporary, text);
                File.Move(temporary, file, overwrite: true);
            }
            KeepProblem = null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            KeepProblem = $"revocation list {_path}: the issue time of the list in force cannot be kept in {file} ({e.Message}); "
                + "after a restart an older list would be taken";
        }
    }
}

/// <summary>
/// A client's reader of its revocation list (an agent's, a dashboard's): every <see cref="RevokedHosts.RefreshPeriod"/>,
/// so that a list revoking a silo's certificate closes the connections to it even while no new one is made.
/// </summary>
internal sealed class ClientRevocationRefresher(RevokedHosts revoked) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (revoked.List is null)
        {
            return;
        }
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                // Half the period: the read is due at most that much after its time.
                await Task.Delay(RevokedHosts.RefreshPeriod / 2, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            // What cannot be used is said by ListProblem (the client's status); the last good list stands.
            revoked.RefreshCertificatesIfDue();
        }
    }
}

/// <summary>Reads the removed hosts from the fleet grain every <see cref="RevokedHosts.RefreshPeriod"/> (as the silo, through its own filters).</summary>
public sealed partial class RevokedHostsRefresher(RevokedHosts revoked, IGrainFactory grains, ILogger<RevokedHostsRefresher> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var failing = false;
        string? listProblem = null;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (revoked.RefreshCertificates() is > 0 and var closed)
                {
                    Log.Closed(logger, closed);
                }
                if (revoked.List?.KeepProblem is { } keep && keep != listProblem)
                {
                    Log.ListUnread(logger, keep);
                }
                listProblem = revoked.List?.KeepProblem;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // A list being copied in, or a bad one: the last good list stands (said once per problem); never the end of the refresher.
                if (e.Message != listProblem)
                {
                    Log.ListUnread(logger, e.Message);
                }
                listProblem = e.Message;
            }
            try
            {
                revoked.Set(await grains.GetGrain<IFleetGrain>(IFleetGrain.Key).ListRemovedAsync());
                failing = false;
            }
            catch (Exception e) when (e is not OperationCanceledException && !stoppingToken.IsCancellationRequested)
            {
                // The silo is starting, or the fleet grain is moving: the last list stands.
                if (!failing)
                {
                    Log.Unread(logger, e.Message);
                }
                failing = true;
            }
            try
            {
                await Task.Delay(RevokedHosts.RefreshPeriod, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private static partial class Log
    {
        [LoggerMessage(LogLevel.Information, "The removed hosts could not be read ({Reason}); the last list stands")]
        public static partial void Unread(ILogger logger, string reason);

        [LoggerMessage(LogLevel.Warning, "Closed {Count} open connections whose peer's certificate the new revocation list revokes")]
        public static partial void Closed(ILogger logger, int count);

        [LoggerMessage(LogLevel.Error, "{Reason}; the last good revocation list stands")]
        public static partial void ListUnread(ILogger logger, string reason);
    }
}
