// RMSNorm over contiguous rows as Hugging Face's Qwen2RMSNorm computes it: statistics in
// f32, the normalised value rounded to the input type before the weight multiplies it.
// One block per row.

// 1 / sqrt(mean(x^2) + eps) of a row of `cols`, summed by the whole block.
template <class T>
__device__ __forceinline__ float row_rms_inv(const T* xr, i64 cols, float eps) {
    float ss = 0.0f;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = to_f32(xr[j]);
        ss += v * v;
    }
    ss = block_sum(ss);
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

template <class T>
__device__ void rms_norm_impl(i64 rows, i64 cols, float eps, const T* x, const T* w, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float r = row_rms_inv(xr, cols, eps);
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float normed = to_f32(from_f32<T>(__fmul_rn(to_f32(xr[j]), r)));
            yr[j] = from_f32<T>(__fmul_rn(to_f32(w[j]), normed));
        }
    }
}

#define RMS_NORM(T, S)                                                                                  \
    extern "C" __global__ void rms_norm_##S(i64 rows, i64 cols, float eps, const T* x, const T* w, T* y) { \
        rms_norm_impl<T>(rows, cols, eps, x, w, y);                                                     \
    }                                                                                                   \
    ARTIST_EXPORT(rms_norm_##S)
FLOAT_TYPES(RMS_NORM)

// The residual add and the RMSNorm after it, fused (inference): sum = x + res (rounded to
// T, as the add kernel rounds it), y = rms_norm(sum, w), each as rms_norm_impl computes it.
template <class T>
__device__ void add_rms_norm_impl(i64 rows, i64 cols, float eps, const T* x, const T* res, const T* w, T* sum,
                                  T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        const T* rr = res + row * cols;
        T* sr = sum + row * cols;
        T* yr = y + row * cols;
        float ss = 0.0f;
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
            T s = from_f32<T>(__fadd_rn(to_f32(xr[j]), to_f32(rr[j])));
            sr[j] = s;
            float v = to_f32(s);
            ss += v * v;
        }
        ss = block_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)cols + eps);
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {  // the thread that wrote sr[j]
            float normed = to_f32(from_f32<T>(__fmul_rn(to_f32(sr[j]), r)));
            yr[j] = from_f32<T>(__fmul_rn(to_f32(w[j]), normed));
        }
    }
}

#define ADD_RMS_NORM(T, S)                                                                              \
    extern "C" __global__ void add_rms_norm_##S(i64 rows, i64 cols, float eps, const T* x, const T* res, \
                                                const T* w, T* sum, T* y) {                             \
        add_rms_norm_impl<T>(rows, cols, eps, x, res, w, sum, y);                                       \
    }                                                                                                   \
    ARTIST_EXPORT(add_rms_norm_##S)
FLOAT_TYPES(ADD_RMS_NORM)

// The backward of rms_norm (its gradients from the output gradient g, f32): per row
// r = 1 / sqrt(mean(x^2) + eps) as the forward computes it, xh = x r, gw = g w,
// dx = r (gw - xh mean(gw xh)), one block per row; r is kept for dW. Then dW's partial sums
// over chunks of `chunk` rows, one thread per column (coalesced), partial[chunk][col]; the
// host adds the chunks in order.
template <class T>
__device__ void rms_norm_bwd_impl(i64 rows, i64 cols, float eps, const T* x, const T* w, const float* g, float* dx,
                                  float* rinv) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        const float* gr = g + row * cols;
        float* dr = dx + row * cols;
        float r = row_rms_inv(xr, cols, eps);
        float dot = 0.0f;
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) dot += gr[j] * to_f32(w[j]) * (to_f32(xr[j]) * r);
        dot = block_sum(dot);
        float m = dot / (float)cols;
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
            dr[j] = r * (gr[j] * to_f32(w[j]) - to_f32(xr[j]) * r * m);
        if (threadIdx.x == 0) rinv[row] = r;
    }
}

template <class T>
__device__ void rms_norm_bwd_dw_impl(i64 rows, i64 cols, i64 chunk, const T* x, const float* g, const float* rinv,
                                     float* partial) {
    i64 col = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    i64 r0 = (i64)blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    float acc = 0.0f;
    for (i64 row = r0; row < r1; ++row) acc += g[row * cols + col] * (to_f32(x[row * cols + col]) * rinv[row]);
    partial[(i64)blockIdx.y * cols + col] = acc;
}

#define RMS_NORM_BWD(T, S)                                                                              \
    extern "C" __global__ void rms_norm_bwd_##S(i64 rows, i64 cols, float eps, const T* x, const T* w,  \
                                                const float* g, float* dx, float* rinv) {               \
        rms_norm_bwd_impl<T>(rows, cols, eps, x, w, g, dx, rinv);                                       \
    }                                                                                                   \
    ARTIST_EXPORT(rms_norm_bwd_##S)                                                                     \
    extern "C" __global__ void rms_norm_bwd_dw_##S(i64 rows, i64 cols, i64 chunk, const T* x,           \
                                                   const float* g, const float* rinv, float* partial) { \
        rms_norm_bwd_dw_impl<T>(rows, cols, chunk, x, g, rinv, partial);                                \
    }                                                                                                   \
    ARTIST_EXPORT(rms_norm_bwd_dw_##S)
FLOAT_TYPES(RMS_NORM_BWD)
