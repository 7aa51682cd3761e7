// Softmax and log-softmax of contiguous rows, statistics in f32: one block per row, walked
// in chunks of eight (ROW_CHUNKS, common.cuh: whole vectors when `vec`). A row whose maximum
// is -inf (fully masked) or NaN gives NaN everywhere, as torch does.

template <class T>
__device__ __forceinline__ T softmax_out(T x, int log, float m, float lse, float inv) {
    return from_f32<T>(log ? to_f32(x) - lse : expf(to_f32(x) - m) * inv);
}

template <class T>
__device__ void softmax_impl(i64 rows, i64 cols, int log, int vec, const T* x, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float m = -inf_f32();
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv;
            chunk_load(xv, xr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) m = max_nan(m, to_f32(xv.e[e]));
        }
        ROW_TAIL(j, cols) { m = max_nan(m, to_f32(xr[j])); }
        m = block_max(m);
        if (m == -inf_f32() || is_nan(m)) {
            for (i64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_f32<T>(nan_f32());
            continue;
        }
        float s = 0.0f;
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv;
            chunk_load(xv, xr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) s += expf(to_f32(xv.e[e]) - m);
        }
        ROW_TAIL(j, cols) { s += expf(to_f32(xr[j]) - m); }
        s = block_sum(s);
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
    extern "C" __global__ void softmax_##S(i64 rows, i64 cols, int log, int vec, const T* x, T* y) { \
        softmax_impl<T>(rows, cols, log, vec, x, y);                                                  \
    }                                                                                                 \
    ARTIST_EXPORT(softmax_##S)
FLOAT_TYPES(SOFTMAX)
