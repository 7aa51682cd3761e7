// Reductions of contiguous data viewed as [outer, k, inner] over k: sum, max, min (f32
// accumulation, NaN wins), argmax and argmin (first index on ties, the first NaN wins), and
// the f64 sum of squares behind the gradient norm.

#define R_SUM 0
#define R_MAX 1
#define R_MIN 2

__device__ __forceinline__ float reduce_identity(int op) {
    return op == R_SUM ? 0.0f : (op == R_MAX ? -inf_f32() : inf_f32());
}

__device__ __forceinline__ float reduce_combine(int op, float acc, float x) {
    return op == R_SUM ? acc + x : (op == R_MAX ? max_nan(acc, x) : min_nan(acc, x));
}

// inner == 1: one block per row.
template <class T>
__device__ void reduce_rows_impl(int op, i64 rows, i64 k, const T* x, T* out) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* r = x + row * k;
        float acc = reduce_identity(op);
        for (i64 j = threadIdx.x; j < k; j += blockDim.x) acc = reduce_combine(op, acc, to_f32(r[j]));
        float v = op == R_SUM ? block_sum(acc) : (op == R_MAX ? block_max(acc) : block_min(acc));
        if (threadIdx.x == 0) out[row] = from_f32<T>(v);
    }
}

// inner > 1: one thread per output element, reading down the k rows (coalesced across i).
template <class T>
__device__ void reduce_cols_impl(int op, i64 outer, i64 k, i64 inner, const T* x, T* out) {
    GRID_STRIDE(idx, outer * inner) {
        i64 o = idx / inner, i = idx - o * inner;
        const T* base = x + o * k * inner + i;
        float acc = reduce_identity(op);
        for (i64 j = 0; j < k; ++j) acc = reduce_combine(op, acc, to_f32(base[j * inner]));
        out[idx] = from_f32<T>(acc);
    }
}

// Whether candidate (x, j) beats (best, best_j) for argmax (max = 1) or argmin: a NaN beats
// everything but an earlier NaN; otherwise the strictly better value, the lower index on ties.
__device__ __forceinline__ bool arg_better(int max, float x, i64 j, float best, i64 best_j) {
    bool xn = is_nan(x), bn = is_nan(best);
    if (xn || bn) return xn && (!bn || j < best_j);
    if (x == best) return j < best_j;
    return max ? x > best : x < best;
}

template <class T>
__device__ void arg_rows_impl(int max, i64 rows, i64 k, const T* x, u32* out) {
    __shared__ float vals[32];
    __shared__ i64 idxs[32];
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* r = x + row * k;
        float best = to_f32(r[0]);
        i64 best_j = 0;
        for (i64 j = threadIdx.x; j < k; j += blockDim.x) {
            float v = to_f32(r[j]);
            if (arg_better(max, v, j, best, best_j)) {
                best = v;
                best_j = j;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float v = __shfl_xor_sync(FULL_MASK, best, o);
            i64 j = __shfl_xor_sync(FULL_MASK, best_j, o);
            if (arg_better(max, v, j, best, best_j)) {
                best = v;
                best_j = j;
            }
        }
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
        __syncthreads();
        if (lane == 0) {
            vals[warp] = best;
            idxs[warp] = best_j;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < warps; ++w)
                if (arg_better(max, vals[w], idxs[w], best, best_j)) {
                    best = vals[w];
                    best_j = idxs[w];
                }
            out[row] = (u32)best_j;
        }
    }
}

template <class T>
__device__ void arg_cols_impl(int max, i64 outer, i64 k, i64 inner, const T* x, u32* out) {
    GRID_STRIDE(idx, outer * inner) {
        i64 o = idx / inner, i = idx - o * inner;
        const T* base = x + o * k * inner + i;
        float best = to_f32(base[0]);
        i64 best_j = 0;
        for (i64 j = 1; j < k && !is_nan(best); ++j) {
            float v = to_f32(base[j * inner]);
            if (arg_better(max, v, j, best, best_j)) {
                best = v;
                best_j = j;
            }
        }
        out[idx] = (u32)best_j;
    }
}

#define REDUCE(T, S)                                                                                       \
    ROW_KERNEL reduce_rows_##S(int op, i64 rows, i64 k, const T* x, T* out) {                              \
        reduce_rows_impl<T>(op, rows, k, x, out);                                                          \
    }                                                                                                      \
    ARTIST_EXPORT(reduce_rows_##S)                                                                         \
    extern "C" __global__ void reduce_cols_##S(int op, i64 outer, i64 k, i64 inner, const T* x, T* out) { \
        reduce_cols_impl<T>(op, outer, k, inner, x, out);                                                  \
    }                                                                                                      \
    ARTIST_EXPORT(reduce_cols_##S)                                                                         \
    ROW_KERNEL arg_rows_##S(int max, i64 rows, i64 k, const T* x, u32* out) {                              \
        arg_rows_impl<T>(max, rows, k, x, out);                                                            \
    }                                                                                                      \
    ARTIST_EXPORT(arg_rows_##S)                                                                            \
    extern "C" __global__ void arg_cols_##S(int max, i64 outer, i64 k, i64 inner, const T* x, u32* out) { \
        arg_cols_impl<T>(max, outer, k, inner, x, out);                                                    \
    }                                                                                                      \
    ARTIST_EXPORT(arg_cols_##S)
FLOAT_TYPES(REDUCE)

// Partial sums of x^2 in f64, one per block (the host adds them in block order, so the same
// tensor always gives the same bits).
extern "C" __global__ void sum_squares_f32(i64 n, const float* x, double* partial) {
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
ARTIST_EXPORT(sum_squares_f32)
