namespace Fabric.Stacks.Fec;

/// <summary>
/// Arithmetic in GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D), table-driven: a full 256×256
/// multiplication table (64 KiB) so the per-byte work of encoding and decoding is one lookup and one XOR.
/// </summary>
public static class GaloisField
{
    private static readonly byte[] Exp = new byte[512];
    private static readonly byte[] Log = new byte[256];

    /// <summary>Mul[a * 256 + b] = a·b.</summary>
    internal static readonly byte[] Mul = new byte[256 * 256];

    static GaloisField()
    {
        var x = 1;
        for (var i = 0; i < 255; i++)
        {
            Exp[i] = (byte)x;
            Log[x] = (byte)i;
            x <<= 1;
            if ((x & 0x100) != 0)
            {
                x ^= 0x11D;
            }
        }
        for (var i = 255; i < Exp.Length; i++)
        {
            Exp[i] = Exp[i - 255];
        }
        for (var a = 1; a < 256; a++)
        {
            for (var b = 1; b < 256; b++)
            {
                Mul[(a << 8) | b] = Exp[Log[a] + Log[b]];
            }
        }
    }

    public static byte Multiply(byte a, byte b) => Mul[(a << 8) | b];

    public static byte Inverse(byte a) => a == 0 ? throw new DivideByZeroException("0 has no inverse in GF(2^8)") : Exp[255 - Log[a]];

    /// <summary>destination ^= coefficient · source, byte by byte.</summary>
    public static void MultiplyAdd(Span<byte> destination, ReadOnlySpan<byte> source, byte coefficient)
    {
        if (coefficient == 0)
        {
            return;
        }
        if (coefficient == 1)
        {
            for (var i = 0; i < source.Length; i++)
            {
                destination[i] ^= source[i];
            }
            return;
        }
        var row = Mul.AsSpan(coefficient << 8, 256);
        for (var i = 0; i < source.Length; i++)
        {
            destination[i] ^= row[source[i]];
        }
    }
}

/// <summary>
/// A systematic Reed–Solomon erasure code: k data shards are sent as they are, m parity shards are combinations of them
/// by a Cauchy matrix, so [I; C] has every k×k submatrix invertible and any k of the k+m shards give back the data —
/// any m losses in a group are recovered.
/// </summary>
public sealed class ReedSolomon
{
    public const int MaxShards = 255;
    private readonly byte[,] _parity;

    public ReedSolomon(int dataShards, int parityShards)
    {
        if (dataShards < 1 || parityShards < 0 || dataShards + parityShards > MaxShards)
        {
            throw new ArgumentOutOfRangeException(nameof(dataShards), $"k={dataShards}, m={parityShards}: need k ≥ 1, m ≥ 0, k + m ≤ {MaxShards}");
        }
        DataShards = dataShards;
        ParityShards = parityShards;
        // Cauchy: C[i, j] = 1 / (x_i + y_j) with x_i = k + i, y_j = j — all distinct, so x_i + y_j (XOR) is never 0.
        _parity = new byte[parityShards, dataShards];
        for (var i = 0; i < parityShards; i++)
        {
            for (var j = 0; j < dataShards; j++)
            {
                _parity[i, j] = GaloisField.Inverse((byte)((dataShards + i) ^ j));
            }
        }
    }

    public int DataShards { get; }

    public int ParityShards { get; }

    /// <summary>Computes the parity shards from the data shards (all of one length).</summary>
    public void Encode(IReadOnlyList<byte[]> data, IReadOnlyList<byte[]> parity, int length)
    {
        for (var i = 0; i < ParityShards; i++)
        {
            var output = parity[i].AsSpan(0, length);
            output.Clear();
            for (var j = 0; j < DataShards; j++)
            {
                GaloisField.MultiplyAdd(output, data[j].AsSpan(0, length), _parity[i, j]);
            }
        }
    }

    /// <summary>
    /// Rebuilds missing data shards. <paramref name="shards"/> has k+m entries (data then parity), null where lost;
    /// missing data entries are filled with new arrays. Returns false when fewer than k shards are present.
    /// </summary>
    public bool Reconstruct(byte[]?[] shards, int length)
    {
        var present = new List<int>(DataShards);
        for (var i = 0; i < shards.Length && present.Count < DataShards; i++)
        {
            if (shards[i] is not null)
            {
                present.Add(i);
            }
        }
        if (present.Count < DataShards)
        {
            return false;
        }
        var missing = Enumerable.Range(0, DataShards).Where(i => shards[i] is null).ToList();
        if (missing.Count == 0)
        {
            return true;
        }
        // Rows of [I; C] for the shards we have, inverted: data = inverse · present.
        var matrix = new byte[DataShards, DataShards];
        for (var r = 0; r < DataShards; r++)
        {
            var row = present[r];
            for (var c = 0; c < DataShards; c++)
            {
                matrix[r, c] = row < DataShards ? (byte)(row == c ? 1 : 0) : _parity[row - DataShards, c];
            }
        }
        var inverse = Invert(matrix, DataShards);
        foreach (var target in missing)
        {
            var output = new byte[length];
            for (var r = 0; r < DataShards; r++)
            {
                GaloisField.MultiplyAdd(output, shards[present[r]].AsSpan(0, length), inverse[target, r]);
            }
            shards[target] = output;
        }
        return true;
    }

    private static byte[,] Invert(byte[,] matrix, int n)
    {
        var a = (byte[,])matrix.Clone();
        var inverse = new byte[n, n];
        for (var i = 0; i < n; i++)
        {
            inverse[i, i] = 1;
        }
        for (var column = 0; column < n; column++)
        {
            var pivot = column;
            while (a[pivot, column] == 0)
            {
                pivot++;
            }
            if (pivot != column)
            {
                for (var c = 0; c < n; c++)
                {
                    (a[pivot, c], a[column, c]) = (a[column, c], a[pivot, c]);
                    (inverse[pivot, c], inverse[column, c]) = (inverse[column, c], inverse[pivot, c]);
                }
            }
            var scale = GaloisField.Inverse(a[column, column]);
            for (var c = 0; c < n; c++)
            {
                a[column, c] = GaloisField.Multiply(a[column, c], scale);
                inverse[column, c] = GaloisField.Multiply(inverse[column, c], scale);
            }
            for (var r = 0; r < n; r++)
            {
                if (r != column && a[r, column] is var factor and not 0)
                {
                    for (var c = 0; c < n; c++)
                    {
                        a[r, c] ^= GaloisField.Multiply(factor, a[column, c]);
                        inverse[r, c] ^= GaloisField.Multiply(factor, inverse[column, c]);
                    }
                }
            }
        }
        return inverse;
    }
}
