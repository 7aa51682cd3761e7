// Softmax and log-softmax of contiguous rows, statistics in f32: one block per row. A row
// whose maximum is -inf (fully masked) or NaN gives NaN everywhere, as torch does.

template <class T>
__device__ void softmax_impl(i64 rows, i64 cols, int log, const T* x, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float m = -inf_f32();
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) m = max_nan(m, to_f32(xr[j]));
        m = block_max(m);
        if (m == -inf_f32() || is_nan(m)) {
            for (i64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_f32<T>(nan_f32());
            continue;
        }
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) s += expf(to_f32(xr[j]) - m);
        s = block_sum(s);
        if (log) {
            float lse = m + logf(s);
            for (i64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_f32<T>(to_f32(xr[j]) - lse);
        } else {
            float inv = 1.0f / s;
            for (i64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_f32<T>(expf(to_f32(xr[j]) - m) * inv);
        }
    }
}

#define SOFTMAX(T, S)                                                                        \
    extern "C" __global__ void softmax_##S(i64 rows, i64 cols, int log, const T* x, T* y) { \
        softmax_impl<T>(rows, cols, log, x, y);                                              \
    }                                                                                        \
    ARTIST_EXPORT(softmax_##S)
FLOAT_TYPES(SOFTMAX)
