namespace Fabric.Silo.Selection;

/// <summary>
/// Hands out one instance of a value the control plane produces again and again — a decision's reasons, a candidate's
/// score — so that what the grains keep is shared, not repeated. A host's VMs decide the same path on the same
/// conditions within milliseconds of each other and write the same words; at 100,000 paths a million (VM, path) pairs
/// each kept its own copy of them.
/// </summary>
/// <remarks>
/// A fixed table of <see cref="Slots"/> references indexed by the value's hash: a value is shared with an equal one
/// that still sits in its slot, and otherwise takes the slot. So it costs a hash and a comparison, holds a bounded amount
/// (values the grains dropped leave the table when their slot is taken), and may miss sharing (two values that keep
/// taking one slot), never more. Reading and writing a reference is atomic, so threads need no lock: a race loses a
/// sharing, not a value.
/// </remarks>
/// <typeparam name="T">A value compared by content (strings, records).</typeparam>
public static class Shared<T> where T : class, IEquatable<T>
{
    /// <summary>How many values the table holds at most (half a megabyte of references).</summary>
    public const int Slots = 1 << 16;

    private static readonly T?[] Table = new T?[Slots];

    /// <summary>An instance equal to <paramref name="value"/>: one the table holds, or <paramref name="value"/> itself.</summary>
    public static T Of(T value)
    {
        ref var slot = ref Table[value.GetHashCode() & (Slots - 1)];
        var held = Volatile.Read(ref slot);
        if (held is not null && (ReferenceEquals(held, value) || held.Equals(value)))
        {
            return held;
        }
        Volatile.Write(ref slot, value);
        return value;
    }
}
