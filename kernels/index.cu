// Indexing on contiguous data viewed as [outer, size, inner] around one dimension:
// index-select (embedding), gather, scatter-add, index-add (embedding backward) and top-k.
// Indices are U32 and were checked against `size` by the host, except index-select's when they
// already live on the device (checking them would wait for the GPU): an index out of range
// there selects zeros instead of reading outside `src`. The accumulating kernels give
// each output element to one thread, which adds its contributions in index order: the same
// order as the CPU backend, so repeated indices sum to the same bits, with no atomics.

// out[o, j, c] = src[o, ids[j], c]
#define INDEX_SELECT(T, S)                                                                          \
    extern "C" __global__ void index_select_##S(i64 outer, i64 n, i64 size, i64 inner, const u32* ids, \
                                                const T* src, T* out) {                              \
        GRID_STRIDE(idx, outer * n * inner) {                                                        \
            i64 c = idx % inner, oj = idx / inner;                                                   \
            i64 o = oj / n, j = oj - o * n;                                                          \
            i64 id = (i64)ids[j];                                                                    \
            out[idx] = id < size ? src[(o * size + id) * inner + c] : T{};                           \
        }                                                                                            \
    }                                                                                                \
    ARTIST_EXPORT(index_select_##S)

// out[o, j, i] = src[o, index[o, j, i], i] for index: [outer, k, inner]
#define GATHER(T, S)                                                                                  \
    extern "C" __global__ void gather_##S(i64 outer, i64 k, i64 size, i64 inner, const u32* index,   \
                                          const T* src, T* out) {                                     \
        GRID_STRIDE(idx, outer * k * inner) {                                                         \
            i64 i = idx % inner, o = idx / (k * inner);                                               \
            out[idx] = src[(o * size + (i64)index[idx]) * inner + i];                                 \
        }                                                                                             \
    }                                                                                                 \
    ARTIST_EXPORT(gather_##S)

// dst[rows[r], c] = src[r, c]: rows written in place (a paged KV cache's new positions).
// The rows are distinct, so every element has one writer.
#define COPY_ROWS(T, S)                                                                              \
    extern "C" __global__ void copy_rows_##S(i64 n, i64 inner, const u32* rows, const T* src, T* dst) { \
        GRID_STRIDE(idx, n * inner) {                                                                 \
            i64 r = idx / inner, c = idx - r * inner;                                                 \
            dst[(i64)rows[r] * inner + c] = src[idx];                                                 \
        }                                                                                             \
    }                                                                                                 \
    ARTIST_EXPORT(copy_rows_##S)

#define BYTES(M) M(u8, b1) M(u16, b2) M(u32, b4)
BYTES(INDEX_SELECT)
BYTES(GATHER)
BYTES(COPY_ROWS)
// Rows moved as raw bytes, 16 at a time, when every row is a whole number of 16-byte units
// and the pointers are aligned (the host's choice, `row_units` in ops.rs): one vector access
// per thread instead of up to eight, and a sixteenth of the index arithmetic.
INDEX_SELECT(u32x4, b16)
COPY_ROWS(u32x4, b16)

// dst[o, index[o, j, i], i] += src[o, j, i]; one thread per (o, i), j in order.
template <class T>
__device__ void scatter_add_impl(i64 outer, i64 k, i64 size, i64 inner, const u32* index, const T* src, T* dst) {
    GRID_STRIDE(oi, outer * inner) {
        i64 o = oi / inner, i = oi - o * inner;
        for (i64 j = 0; j < k; ++j) {
            i64 at = (o * k + j) * inner + i;
            T* d = dst + (o * size + (i64)index[at]) * inner + i;
            *d = from_f32<T>(to_f32(*d) + to_f32(src[at]));
        }
    }
}

// dst[o, ids[j], c] += src[o, j, c]; one thread per (o, c), j in order.
template <class T>
__device__ void index_add_impl(i64 outer, i64 n, i64 size, i64 inner, const u32* ids, const T* src, T* dst) {
    GRID_STRIDE(oc, outer * inner) {
        i64 o = oc / inner, c = oc - o * inner;
        for (i64 j = 0; j < n; ++j) {
            T* d = dst + (o * size + (i64)ids[j]) * inner + c;
            *d = from_f32<T>(to_f32(*d) + to_f32(src[(o * n + j) * inner + c]));
        }
    }
}

// Top-k of contiguous rows in descending order (ties: lower index first; NaN counts as the
// largest, ahead of +inf), one block per row. Round r picks the element that comes first
// in that order among those after round r-1's pick: k passes over the row, no sort buffer.
__device__ __forceinline__ float topk_key(float v) { return is_nan(v) ? inf_f32() : v; }

// Whether (a, ia) comes before (b, ib) in the top-k order.
__device__ __forceinline__ bool topk_before(float a, i64 ia, float b, i64 ib) {
    float ka = topk_key(a), kb = topk_key(b);
    if (ka != kb) return ka > kb;
    bool na = is_nan(a), nb = is_nan(b);
    if (na != nb) return na;
    return ia < ib;
}

template <class T>
__device__ void topk_impl(i64 rows, i64 cols, i64 k, const T* x, T* values, u32* indices) {
    __shared__ float wv[32];
    __shared__ i64 wi[32];
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* r = x + row * cols;
        float prev = 0.0f;
        i64 prev_i = -1;
        for (i64 round = 0; round < k; ++round) {
            float best = 0.0f;
            i64 best_i = -1;
            for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
                float v = to_f32(r[j]);
                bool eligible = prev_i < 0 || topk_before(prev, prev_i, v, j);
                if (eligible && (best_i < 0 || topk_before(v, j, best, best_i))) {
                    best = v;
                    best_i = j;
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                float v = __shfl_xor_sync(FULL_MASK, best, o);
                i64 j = __shfl_xor_sync(FULL_MASK, best_i, o);
                if (j >= 0 && (best_i < 0 || topk_before(v, j, best, best_i))) {
                    best = v;
                    best_i = j;
                }
            }
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
            __syncthreads();
            if (lane == 0) {
                wv[warp] = best;
                wi[warp] = best_i;
            }
            __syncthreads();
            best = wv[0];
            best_i = wi[0];
            for (int w = 1; w < warps; ++w)
                if (wi[w] >= 0 && (best_i < 0 || topk_before(wv[w], wi[w], best, best_i))) {
                    best = wv[w];
                    best_i = wi[w];
                }
            if (threadIdx.x == 0) {
                values[row * k + round] = r[best_i];
                indices[row * k + round] = (u32)best_i;
            }
            prev = best;
            prev_i = best_i;
        }
    }
}

#define ACCUMULATE(T, S)                                                                              \
    extern "C" __global__ void scatter_add_##S(i64 outer, i64 k, i64 size, i64 inner, const u32* index, \
                                               const T* src, T* dst) {                                  \
        scatter_add_impl<T>(outer, k, size, inner, index, src, dst);                                    \
    }                                                                                                   \
    ARTIST_EXPORT(scatter_add_##S)                                                                      \
    extern "C" __global__ void index_add_##S(i64 outer, i64 n, i64 size, i64 inner, const u32* ids,     \
                                             const T* src, T* dst) {                                    \
        index_add_impl<T>(outer, n, size, inner, ids, src, dst);                                        \
    }                                                                                                   \
    ARTIST_EXPORT(index_add_##S)                                                                        \
    ROW_KERNEL topk_##S(i64 rows, i64 cols, i64 k, const T* x, T* values, u32* indices) {               \
        topk_impl<T>(rows, cols, k, x, values, indices);                                                \
    }                                                                                                   \
    ARTIST_EXPORT(topk_##S)
FLOAT_TYPES(ACCUMULATE)
