// Causal attention with grouped-query heads, fused: scores, mask, softmax and the weighted sum
// of values in one pass per query, never materialising the [queries x keys] matrix; the
// backward recomputes the probabilities from the saved log-sum-exp (flash-attention style).
//
// Shapes: q: [t, heads, d] contiguous, k and v: [len, kv_heads, d] through row and head
// strides (a view of a KV cache), or, for attn_fwd_paged, a paged KV cache's pools
// [blocks, block_size, kv_heads, d] read through a sequence's block table (attn_fwd_paged_batch:
// many sequences, each through its own table, in one launch); the queries being the last t of
// len positions: query i
// sees keys j <= i + (len - t). Head h reads KV head h / (heads / kv_heads). One warp per
// (query, head) or (key, kv head); each lane holds d/32 of a row in registers (d <= 256).
// Statistics, accumulation and gradients in f32.
//
// This is the correct, simple version: no tiling through shared memory or tensor cores
// yet (issue "fast attention" replaces it), but one launch per sequence and no atomics,
// so results are deterministic.

#define ATTN_MAX_CHUNKS 8  // d <= 32 * 8

struct AttnShape {
    i64 t, len;
    i32 heads, kv_heads, d;
    float scale;
    i64 k_row, k_head, v_row, v_head;  // strides of k and v, in elements
};

// Loads d elements (lane's share: lane, lane + 32, ...) as f32.
template <class T>
__device__ __forceinline__ void load_row(const T* p, int d, int lane, float* r) {
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        r[c] = e < d ? to_f32(p[e]) : 0.0f;
    }
}

template <class T>
__device__ __forceinline__ float dot_row(const float* a, const T* p, int d, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        if (e < d) s += a[c] * to_f32(p[e]);
    }
    return warp_sum(s);
}

// Where position j of the keys and values sits: row j of a dense view, or row j % bs of
// block table[j / bs] of a paged KV cache's pool.
struct DenseRows {
    __device__ __forceinline__ i64 operator()(i64 j) const { return j; }
};
struct PagedRows {
    const u32* table;
    i64 block_size;
    __device__ __forceinline__ i64 operator()(i64 j) const {
        i64 b = j / block_size;
        return (i64)table[b] * block_size + (j - b * block_size);
    }
};

// One warp's (query, head): the query row at q_row attends to positions 0..=last of KV head
// g (rows(j) locates position j); writes the output row and the log-sum-exp.
template <class T, class Rows>
__device__ __forceinline__ void attn_fwd_one(const AttnShape& s, const T* q_row, const T* k, const T* v, int g,
                                             i64 last, Rows rows, T* o, float* lse_at, int lane) {
    float qr[ATTN_MAX_CHUNKS], acc[ATTN_MAX_CHUNKS];
    load_row(q_row, s.d, lane, qr);
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) acc[c] = 0.0f;
    float m = -inf_f32(), l = 0.0f;
    for (i64 j = 0; j <= last; ++j) {
        i64 r = rows(j);
        float sc = dot_row(qr, k + r * s.k_row + g * s.k_head, s.d, lane) * s.scale;
        float m_new = fmaxf(m, sc);
        float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
        float p = expf(sc - m_new);
        l = l * corr + p;
        const T* vr = v + r * s.v_row + g * s.v_head;
#pragma unroll
        for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
            int e = lane + 32 * c;
            acc[c] = acc[c] * corr + (e < s.d ? p * to_f32(vr[e]) : 0.0f);
        }
        m = m_new;
    }
    float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        if (e < s.d) o[e] = from_f32<T>(acc[c] * inv);
    }
    if (lane == 0) *lse_at = m + logf(l);
}

template <class T, class Rows>
__device__ void attn_fwd_impl(AttnShape s, const T* q, const T* k, const T* v, T* out, float* lse, Rows rows) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    i64 pairs = s.t * s.heads;
    if (warp >= pairs) return;  // whole warps leave together
    i64 i = warp / s.heads;
    int h = (int)(warp - i * s.heads);
    int g = h / (s.heads / s.kv_heads);
    i64 at = (i * s.heads + h) * s.d;
    attn_fwd_one<T>(s, q + at, k, v, g, i + (s.len - s.t), rows, out + at, lse + (i64)h * s.t + i, lane);
}

// Many sequences of a paged KV cache in one launch (a decode step, or prefills beside it):
// s.t is the total of the sequences' query rows, packed in q; row i belongs to sequence
// seq_of[i], whose meta[4 * seq ..] are (first row, rows, positions, offset of its block
// table in tables). Each (row, head) computes exactly what attn_fwd_paged computes for it.
template <class T>
__device__ void attn_fwd_paged_batch_impl(AttnShape s, const T* q, const T* k, const T* v, const u32* meta,
                                          const u32* seq_of, const u32* tables, i64 block_size, T* out,
                                          float* lse) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (warp >= s.t * s.heads) return;
    i64 i = warp / s.heads;
    int h = (int)(warp - i * s.heads);
    int g = h / (s.heads / s.kv_heads);
    const u32* m = meta + 4 * (i64)seq_of[i];
    i64 local = i - (i64)m[0], t = (i64)m[1], len = (i64)m[2];
    i64 at = (i * s.heads + h) * s.d;
    attn_fwd_one<T>(s, q + at, k, v, g, local + (len - t), PagedRows{tables + m[3], block_size}, out + at,
                    lse + (i64)h * s.t + i, lane);
}

// dq for each (query, head), and delta = sum(dout * out) per (query, head) for the dk/dv
// pass.
template <class T>
__device__ void attn_bwd_dq_impl(AttnShape s, const T* q, const T* k, const T* v, const T* out, const float* dout,
                                 const float* lse, float* delta, float* dq) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (warp >= s.t * s.heads) return;
    i64 i = warp / s.heads;
    int h = (int)(warp - i * s.heads);
    int g = h / (s.heads / s.kv_heads);
    i64 row = (i * s.heads + h) * s.d;
    float qr[ATTN_MAX_CHUNKS], dor[ATTN_MAX_CHUNKS], acc[ATTN_MAX_CHUNKS];
    load_row(q + row, s.d, lane, qr);
    load_row(dout + row, s.d, lane, dor);
    float dsum = dot_row(dor, out + row, s.d, lane);
    float lse_i = lse[(i64)h * s.t + i];
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) acc[c] = 0.0f;
    i64 last = i + (s.len - s.t);
    for (i64 j = 0; j <= last; ++j) {
        const T* kr = k + j * s.k_row + g * s.k_head;
        float p = expf(dot_row(qr, kr, s.d, lane) * s.scale - lse_i);
        float dp = dot_row(dor, v + j * s.v_row + g * s.v_head, s.d, lane);
        float ds = p * (dp - dsum);
#pragma unroll
        for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
            int e = lane + 32 * c;
            if (e < s.d) acc[c] += ds * to_f32(kr[e]);
        }
    }
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        if (e < s.d) dq[row + e] = acc[c] * s.scale;
    }
    if (lane == 0) delta[(i64)h * s.t + i] = dsum;
}

// dk and dv for each (key, kv head): the sum over every query that sees the key and every
// head of the group, in a fixed order.
template <class T>
__device__ void attn_bwd_dkv_impl(AttnShape s, const T* q, const T* k, const T* v, const float* dout,
                                  const float* lse, const float* delta, float* dk, float* dv) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (warp >= s.len * s.kv_heads) return;
    i64 j = warp / s.kv_heads;
    int g = (int)(warp - j * s.kv_heads);
    int rep = s.heads / s.kv_heads;
    float kr[ATTN_MAX_CHUNKS], vr[ATTN_MAX_CHUNKS], ak[ATTN_MAX_CHUNKS], av[ATTN_MAX_CHUNKS];
    load_row(k + j * s.k_row + g * s.k_head, s.d, lane, kr);
    load_row(v + j * s.v_row + g * s.v_head, s.d, lane, vr);
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) ak[c] = av[c] = 0.0f;
    i64 first = j - (s.len - s.t);  // the first query that sees key j
    if (first < 0) first = 0;
    for (int r = 0; r < rep; ++r) {
        int h = g * rep + r;
        for (i64 i = first; i < s.t; ++i) {
            i64 row = (i * s.heads + h) * s.d;
            const T* qr = q + row;
            const float* dr = dout + row;
            float p = expf(dot_row(kr, qr, s.d, lane) * s.scale - lse[(i64)h * s.t + i]);
            float dp = dot_row(vr, dr, s.d, lane);
            float ds = p * (dp - delta[(i64)h * s.t + i]);
#pragma unroll
            for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
                int e = lane + 32 * c;
                if (e < s.d) {
                    av[c] += p * dr[e];
                    ak[c] += ds * to_f32(qr[e]);
                }
            }
        }
    }
    i64 at = (j * s.kv_heads + g) * s.d;
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        if (e < s.d) {
            dk[at + e] = ak[c] * s.scale;
            dv[at + e] = av[c];
        }
    }
}

#define ATTENTION(T, S)                                                                                   \
    extern "C" __global__ void attn_fwd_##S(AttnShape s, const T* q, const T* k, const T* v, T* out,       \
                                            float* lse) {                                                 \
        attn_fwd_impl<T>(s, q, k, v, out, lse, DenseRows{});                                              \
    }                                                                                                     \
    ARTIST_EXPORT(attn_fwd_##S)                                                                           \
    extern "C" __global__ void attn_fwd_paged_##S(AttnShape s, const T* q, const T* k, const T* v,        \
                                                  const u32* table, i64 block_size, T* out, float* lse) { \
        attn_fwd_impl<T>(s, q, k, v, out, lse, PagedRows{table, block_size});                             \
    }                                                                                                     \
    ARTIST_EXPORT(attn_fwd_paged_##S)                                                                     \
    extern "C" __global__ void attn_fwd_paged_batch_##S(AttnShape s, const T* q, const T* k, const T* v,  \
                                                        const u32* meta, const u32* seq_of,               \
                                                        const u32* tables, i64 block_size, T* out,        \
                                                        float* lse) {                                     \
        attn_fwd_paged_batch_impl<T>(s, q, k, v, meta, seq_of, tables, block_size, out, lse);             \
    }                                                                                                     \
    ARTIST_EXPORT(attn_fwd_paged_batch_##S)                                                               \
    extern "C" __global__ void attn_bwd_dq_##S(AttnShape s, const T* q, const T* k, const T* v,           \
                                               const T* out, const float* dout, const float* lse,         \
                                               float* delta, float* dq) {                                 \
        attn_bwd_dq_impl<T>(s, q, k, v, out, dout, lse, delta, dq);                                       \
    }                                                                                                     \
    ARTIST_EXPORT(attn_bwd_dq_##S)                                                                        \
    extern "C" __global__ void attn_bwd_dkv_##S(AttnShape s, const T* q, const T* k, const T* v,          \
                                                const float* dout, const float* lse, const float* delta,  \
                                                float* dk, float* dv) {                                   \
        attn_bwd_dkv_impl<T>(s, q, k, v, dout, lse, delta, dk, dv);                                       \
    }                                                                                                     \
    ARTIST_EXPORT(attn_bwd_dkv_##S)
FLOAT_TYPES(ATTENTION)
