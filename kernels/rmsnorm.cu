// RMSNorm over contiguous rows as Hugging Face's Qwen2RMSNorm computes it: statistics in
// f32, the normalised value rounded to the input type before the weight multiplies it.
// One block per row.

// 1 / sqrt(mean(x^2) + eps) of a row of `cols`, summed by the whole block.
template <class T>
__device__ __forceinline__ float row_rms_inv(const T* xr, i64 cols, float eps, int vec) {
    float ss = 0.0f;
    ROW_CHUNKS(c, cols) {
        Vec8<T> xv;
        chunk_load(xv, xr + 8 * c, vec);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            float v = to_f32(xv.e[e]);
            ss += v * v;
        }
    }
    ROW_TAIL(j, cols) {
        float v = to_f32(xr[j]);
        ss += v * v;
    }
    ss = block_sum(ss);
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

// w * round(x r), rounded to T: Qwen2RMSNorm's output element.
template <class T>
__device__ __forceinline__ T rms_out(T x, T w, float r) {
    float normed = to_f32(from_f32<T>(__fmul_rn(to_f32(x), r)));
    return from_f32<T>(__fmul_rn(to_f32(w), normed));
}

// The normalised row yr = w * round(xr r), in the row's chunks.
template <class T>
__device__ __forceinline__ void rms_write_row(const T* xr, const T* w, T* yr, i64 cols, float r, int vec) {
    ROW_CHUNKS(c, cols) {
        Vec8<T> xv, wv, yv;
        chunk_load(xv, xr + 8 * c, vec);
        chunk_load(wv, w + 8 * c, vec);
#pragma unroll
        for (int e = 0; e < 8; ++e) yv.e[e] = rms_out(xv.e[e], wv.e[e], r);
        chunk_store(yr + 8 * c, yv, vec);
    }
    ROW_TAIL(j, cols) { yr[j] = rms_out(xr[j], w[j], r); }
}

template <class T>
__device__ void rms_norm_impl(i64 rows, i64 cols, float eps, int vec, const T* x, const T* w, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        rms_write_row(xr, w, y + row * cols, cols, row_rms_inv(xr, cols, eps, vec), vec);
    }
}

#define RMS_NORM(T, S)                                                                                 \
    ROW_KERNEL rms_norm_##S(i64 rows, i64 cols, float eps, int vec, const T* x,                        \
                                            const T* w, T* y) {                                        \
        rms_norm_impl<T>(rows, cols, eps, vec, x, w, y);                                               \
    }                                                                                                  \
    ARTIST_EXPORT(rms_norm_##S)
FLOAT_TYPES(RMS_NORM)

// The residual add and the RMSNorm after it, fused (inference): sum = x + res (rounded to
// T, as the add kernel rounds it), y = rms_norm(sum, w), each as rms_norm_impl computes it
// (the same chunks, so the same sums). Each thread reads back only the sums it wrote.
template <class T>
__device__ void add_rms_norm_impl(i64 rows, i64 cols, float eps, int vec, const T* x, const T* res, const T* w,
                                  T* sum, T* y) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        const T* rr = res + row * cols;
        T* sr = sum + row * cols;
        T* yr = y + row * cols;
        float ss = 0.0f;
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv, rv, sv;
            chunk_load(xv, xr + 8 * c, vec);
            chunk_load(rv, rr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                sv.e[e] = from_f32<T>(__fadd_rn(to_f32(xv.e[e]), to_f32(rv.e[e])));
                float v = to_f32(sv.e[e]);
                ss += v * v;
            }
            chunk_store(sr + 8 * c, sv, vec);
        }
        ROW_TAIL(j, cols) {
            T s = from_f32<T>(__fadd_rn(to_f32(xr[j]), to_f32(rr[j])));
            sr[j] = s;
            float v = to_f32(s);
            ss += v * v;
        }
        ss = block_sum(ss);
        rms_write_row(sr, w, yr, cols, 1.0f / sqrtf(ss / (float)cols + eps), vec);
    }
}

#define ADD_RMS_NORM(T, S)                                                                              \
    ROW_KERNEL add_rms_norm_##S(i64 rows, i64 cols, float eps, int vec, const T* x,                     \
                                                const T* res, const T* w, T* sum, T* y) {               \
        add_rms_norm_impl<T>(rows, cols, eps, vec, x, res, w, sum, y);                                  \
    }                                                                                                   \
    ARTIST_EXPORT(add_rms_norm_##S)
FLOAT_TYPES(ADD_RMS_NORM)

// The backward of rms_norm (its gradients from the output gradient g, f32): per row
// r = 1 / sqrt(mean(x^2) + eps) as the forward computes it, xh = x r, gw = g w,
// dx = r (gw - xh mean(gw xh)), one block per row, in the forward's chunks; r is kept for
// dW. Then dW's partial sums over chunks of `chunk` rows, one thread per column (coalesced),
// partial[chunk][col]; the host adds the chunks in order.
template <class T>
__device__ void rms_norm_bwd_impl(i64 rows, i64 cols, float eps, int vec, const T* x, const T* w, const float* g,
                                  float* dx, float* rinv) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        const float* gr = g + row * cols;
        float* dr = dx + row * cols;
        float r = row_rms_inv(xr, cols, eps, vec);
        float dot = 0.0f;
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv, wv;
            Vec8<float> gv;
            chunk_load(xv, xr + 8 * c, vec);
            chunk_load(wv, w + 8 * c, vec);
            chunk_load(gv, gr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) dot += gv.e[e] * to_f32(wv.e[e]) * (to_f32(xv.e[e]) * r);
        }
        ROW_TAIL(j, cols) { dot += gr[j] * to_f32(w[j]) * (to_f32(xr[j]) * r); }
        dot = block_sum(dot);
        float m = dot / (float)cols;
        ROW_CHUNKS(c, cols) {
            Vec8<T> xv, wv;
            Vec8<float> gv, dv;
            chunk_load(xv, xr + 8 * c, vec);
            chunk_load(wv, w + 8 * c, vec);
            chunk_load(gv, gr + 8 * c, vec);
#pragma unroll
            for (int e = 0; e < 8; ++e) dv.e[e] = r * (gv.e[e] * to_f32(wv.e[e]) - to_f32(xv.e[e]) * r * m);
            chunk_store(dr + 8 * c, dv, vec);
        }
        ROW_TAIL(j, cols) { dr[j] = r * (gr[j] * to_f32(w[j]) - to_f32(xr[j]) * r * m); }
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
    ROW_KERNEL rms_norm_bwd_##S(i64 rows, i64 cols, float eps, int vec, const T* x,                     \
                                                const T* w, const float* g, float* dx, float* rinv) {   \
        rms_norm_bwd_impl<T>(rows, cols, eps, vec, x, w, g, dx, rinv);                                  \
    }                                                                                                   \
    ARTIST_EXPORT(rms_norm_bwd_##S)                                                                     \
    extern "C" __global__ void rms_norm_bwd_dw_##S(i64 rows, i64 cols, i64 chunk, const T* x,           \
                                                   const float* g, const float* rinv, float* partial) { \
        rms_norm_bwd_dw_impl<T>(rows, cols, chunk, x, g, rinv, partial);                                \
    }                                                                                                   \
    ARTIST_EXPORT(rms_norm_bwd_dw_##S)
FLOAT_TYPES(RMS_NORM_BWD)
