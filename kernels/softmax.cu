// Softmax and log-softmax of contiguous rows, statistics in f32: one block per row, walked
// in chunks of eight (ROW_CHUNKS, common.cuh: whole vectors when `vec`). Two passes over the
// row, not three: each thread keeps a running maximum and a sum rescaled whenever the
// maximum grows (the online softmax), and the block merges them, so a vocabulary-sized row
// (600 KB of f32 logits, which the L2 cache does not keep for long) is read from memory
// twice. A row whose maximum is -inf (fully masked) or NaN gives NaN everywhere, as torch
// does.

// x into a thread's running maximum m and sum s of exp(x - m); `any` is the maximum with
// NaN winning, which decides a NaN row.
__device__ __forceinline__ void online_add(float x, float& m, float& s, float& any) {
    any = max_nan(any, x);
    if (x > m) {
        s = s * expf(m - x) + 1.0f;  // m = -inf: s is 0 and stays 0 before the 1
        m = x;
    } else if (x != -inf_f32()) {
        s += expf(x - m);
    }
}

template <class T>
__device__ __forceinline__ T softmax_out(T x, int log, float m, float lse, float inv) {
    return from_f32<T>(log ? to_f32(x) - lse : expf(to_f32(x) - m) * inv);
}

template <class T>
__device__ void softmax_impl(i64 rows, i64 cols, int log, int vec, const T* x, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float m = -inf_f32(), s = 0.0f, any = -inf_f32();
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv;
            chunk_load(xv, xr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) online_add(to_f32(xv.e[e]), m, s, any);
        }
        ROW_TAIL(j, cols) { online_add(to_f32(xr[j]), m, s, any); }
        any = block_max(any);
        if (any == -inf_f32() || is_nan(any)) {
            for (i64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_f32<T>(nan_f32());
            continue;
        }
        // The row's maximum is `any` (no NaN in the row); each thread's sum moves onto it.
        s = block_sum(m == -inf_f32() ? 0.0f : s * expf(m - any));
        m = any;
        float lse = m + logf(s), inv = 1.0f / s;
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv, yv;
            chunk_load(xv, xr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) yv.e[e] = softmax_out(xv.e[e], log, m, lse, inv);
            chunk_store(yr + 8 * c, yv, vec);
        }
        ROW_TAIL(j, cols) { yr[j] = softmax_out(xr[j], log, m, lse, inv); }
    }
}

#define SOFTMAX(T, S)                                                                                 \
    ROW_KERNEL softmax_##S(i64 rows, i64 cols, int log, int vec, const T* x, T* y) {                  \
        softmax_impl<T>(rows, cols, log, vec, x, y);                                                  \
    }                                                                                                 \
    ARTIST_EXPORT(softmax_##S)
FLOAT_TYPES(SOFTMAX)

// The entropy -sum p ln p of each row's softmax, one value per row in f32, in one pass over
// the row: each thread keeps a running maximum m, s = sum exp(x - m) and
// u = sum exp(x - m) (x - m), both moved onto a larger maximum as it comes (with
// r = exp(m - m'): s' = r s, u' = r (u + s (m - m'))); the block moves every thread's onto
// the row's maximum M the same way and sums them, and the entropy is ln S - U / S (the host
// backend's formula). -inf entries add nothing; a row whose maximum is -inf or NaN gives NaN.
__device__ __forceinline__ void entropy_rescale(float to, float& m, float& s, float& u) {
    if (m == -inf_f32()) {  // nothing yet: s and u are 0
        m = to;
        return;
    }
    float d = m - to, r = expf(d);
    u = r * (u + s * d);
    s = r * s;
    m = to;
}

__device__ __forceinline__ void entropy_add(float x, float& m, float& s, float& u, float& any) {
    any = max_nan(any, x);
    if (x > m) {
        entropy_rescale(x, m, s, u);
        s += 1.0f;  // exp(x - m) = 1, (x - m) = 0
    } else if (x != -inf_f32()) {
        float d = x - m, e = expf(d);
        s += e;
        u += e * d;
    }
}

template <class T>
__device__ void softmax_entropy_impl(i64 rows, i64 cols, int vec, const T* x, float* h) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        float m = -inf_f32(), s = 0.0f, u = 0.0f, any = -inf_f32();
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv;
            chunk_load(xv, xr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) entropy_add(to_f32(xv.e[e]), m, s, u, any);
        }
        ROW_TAIL(j, cols) { entropy_add(to_f32(xr[j]), m, s, u, any); }
        any = block_max(any);
        if (any == -inf_f32() || is_nan(any)) {
            if (threadIdx.x == 0) h[row] = nan_f32();
            continue;
        }
        if (m != -inf_f32()) entropy_rescale(any, m, s, u);
        float total_s = block_sum(s);
        float total_u = block_sum(u);
        if (threadIdx.x == 0) h[row] = logf(total_s) - total_u / total_s;
    }
}

#define SOFTMAX_ENTROPY(T, S)                                                                         \
    ROW_KERNEL softmax_entropy_##S(i64 rows, i64 cols, int vec, const T* x, float* h) {               \
        softmax_entropy_impl<T>(rows, cols, vec, x, h);                                               \
    }                                                                                                 \
    ARTIST_EXPORT(softmax_entropy_##S)
FLOAT_TYPES(SOFTMAX_ENTROPY)
