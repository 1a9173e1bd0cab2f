namespace Fabric.Wire;

/// <summary>Why a view refused its bytes. Every value names the field or rule that failed.</summary>
public enum WireError
{
    /// <summary>The bytes were accepted.</summary>
    None = 0,
    /// <summary>Fewer bytes than the fixed header needs.</summary>
    Truncated,
    /// <summary>The version field is not the one this view reads.</summary>
    BadVersion,
    /// <summary>A header-length field is below its minimum.</summary>
    BadHeaderLength,
    /// <summary>A header-length field points past the received bytes.</summary>
    HeaderLengthExceedsBuffer,
    /// <summary>A total/payload length field is smaller than the header it must contain.</summary>
    TotalLengthTooSmall,
    /// <summary>A total/payload length field claims more bytes than were received.</summary>
    TotalLengthExceedsBuffer,
    /// <summary>An option (IPv4, TCP, ICMPv6 ND) has a zero or overrunning length.</summary>
    BadOption,
    /// <summary>An IPv6 extension header runs past the payload length.</summary>
    ExtensionHeaderOverrun,
    /// <summary>Too many IPv6 extension headers or VLAN tags to walk.</summary>
    TooManyHeaders,
    /// <summary>The hardware/protocol types or sizes of an ARP packet are not Ethernet/IPv4.</summary>
    UnsupportedAddressFormat,
    /// <summary>A length field inside a capture record or block is inconsistent.</summary>
    BadCaptureRecord,
}

/// <summary>Human-readable text for <see cref="WireError"/>.</summary>
public static class WireErrorText
{
    /// <summary>A short sentence saying what is wrong with the bytes.</summary>
    public static string Describe(this WireError error) => error switch
    {
        WireError.None => "ok",
        WireError.Truncated => "truncated: fewer bytes than the header needs",
        WireError.BadVersion => "unexpected version field",
        WireError.BadHeaderLength => "header length field below the minimum",
        WireError.HeaderLengthExceedsBuffer => "header length field points past the received bytes",
        WireError.TotalLengthTooSmall => "total length field smaller than the header",
        WireError.TotalLengthExceedsBuffer => "total length field larger than the received bytes",
        WireError.BadOption => "malformed option (zero or overrunning length)",
        WireError.ExtensionHeaderOverrun => "extension header runs past the payload length",
        WireError.TooManyHeaders => "too many stacked headers",
        WireError.UnsupportedAddressFormat => "unsupported hardware or protocol address format",
        WireError.BadCaptureRecord => "inconsistent capture record length",
        _ => error.ToString(),
    };
}
