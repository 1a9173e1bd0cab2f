namespace Fabric.Silo;

/// <summary>
/// A host's desired-state version, as <see cref="DesiredState.Version"/> and <see cref="DesiredStateChange"/> carry it: an
/// epoch in the high 32 bits (a new one each time the host grain is activated, so versions keep growing across silo
/// restarts without a write per change) and a counter in the low 32 bits (+1 per change). Within an epoch versions order
/// by counter; a version of another epoch means the control plane started over, and replaces whatever an agent holds.
/// </summary>
public readonly record struct DesiredStateVersion(long Value)
{
    /// <summary>What an agent holds before it heard of any desired state.</summary>
    public static DesiredStateVersion None { get; } = new(-1);

    /// <summary>The first version of <paramref name="epoch"/> (0 to 2^31 - 1).</summary>
    public static DesiredStateVersion Start(long epoch) =>
        epoch is >= 0 and <= int.MaxValue ? new(epoch << 32) : throw new ArgumentOutOfRangeException(nameof(epoch), epoch, "an epoch is 0 to 2^31 - 1");

    /// <summary>The epoch: which activation of the host grain issued the version (-1 for <see cref="None"/>).</summary>
    public long Epoch => Value >> 32;

    /// <summary>The version after this one, in the same epoch.</summary>
    public DesiredStateVersion Next => new(Value + 1);

    /// <summary>True when a whole desired state of this version replaces one held at <paramref name="held"/>: it is not older, or it is of another epoch.</summary>
    public bool Replaces(DesiredStateVersion held) => Value >= held.Value || Epoch != held.Epoch;

    public override string ToString() => Value.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
