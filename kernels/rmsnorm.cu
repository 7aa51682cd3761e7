// RMSNorm over contiguous rows as Hugging Face's Qwen2RMSNorm computes it: statistics in
// f32, the normalised value rounded to the input type before the weight multiplies it.
// One block per row.

template <class T>
__device__ void rms_norm_impl(i64 rows, i64 cols, float eps, const T* x, const T* w, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float ss = 0.0f;
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = to_f32(xr[j]);
            ss += v * v;
        }
        ss = block_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)cols + eps);
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
