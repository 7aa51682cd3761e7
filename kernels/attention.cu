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
// These are the correct, simple versions: no tiling through shared memory or tensor cores,
// but one launch per sequence and no atomics, so results are deterministic. For bf16 with
// head dim 64 or 128 the forward has a tiled tensor-core version (attn_fwd_mma_*, at the
// end of this file).

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

// One warp's online softmax of the query row at q_row over positions j0 .. j1 - 1 of KV head g
// (rows(j) locates position j): the unnormalised output in acc (the lane's share), the
// running maximum m (-inf when the range is empty) and sum l. Keys and values may be of
// another float type than the queries (a bf16 KV cache under f32 activations): each
// element is widened exactly as it is read.
template <class T, class KV, class Rows>
__device__ __forceinline__ void attn_accumulate(const AttnShape& s, const T* q_row, const KV* k, const KV* v, int g,
                                                i64 j0, i64 j1, Rows rows, float* acc, float& m, float& l,
                                                int lane) {
    float qr[ATTN_MAX_CHUNKS];
    load_row(q_row, s.d, lane, qr);
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) acc[c] = 0.0f;
    m = -inf_f32();
    l = 0.0f;
    for (i64 j = j0; j < j1; ++j) {
        i64 r = rows(j);
        float sc = dot_row(qr, k + r * s.k_row + g * s.k_head, s.d, lane) * s.scale;
        float m_new = fmaxf(m, sc);
        float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
        float p = expf(sc - m_new);
        l = l * corr + p;
        const KV* vr = v + r * s.v_row + g * s.v_head;
#pragma unroll
        for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
            int e = lane + 32 * c;
            acc[c] = acc[c] * corr + (e < s.d ? p * to_f32(vr[e]) : 0.0f);
        }
        m = m_new;
    }
}

// One warp's (query, head): the query row at q_row attends to positions 0..=last of KV head
// g (rows(j) locates position j); writes the output row and the log-sum-exp.
template <class T, class KV, class Rows>
__device__ __forceinline__ void attn_fwd_one(const AttnShape& s, const T* q_row, const KV* k, const KV* v, int g,
                                             i64 last, Rows rows, T* o, float* lse_at, int lane) {
    float acc[ATTN_MAX_CHUNKS], m, l;
    attn_accumulate(s, q_row, k, v, g, 0, last + 1, rows, acc, m, l, lane);
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
template <class T, class KV>
__device__ void attn_fwd_paged_batch_impl(AttnShape s, const T* q, const KV* k, const KV* v, const u32* meta,
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

// Split keys (flash decoding): with few (row, head) pairs, as in a decode step of a few
// sequences, one warp per pair leaves the GPU almost idle and walks a long context alone.
// attn_fwd_paged_batch_split gives each (row, head) `splits` warps, each over one contiguous
// share of the positions the row sees, and writes its unnormalised partial output with its
// running maximum and sum; attn_combine_splits merges the shares in order (the log-sum-exp
// rule) into the output and the log-sum-exp. The split count is the host's and fixed for a
// launch; the shares follow each row's current length, read on the device, so a captured
// graph stays valid as sequences grow.
// Share `sp` of `splits` contiguous shares of positions 0 .. n - 1: [*j0, *j1), empty past n.
__device__ __forceinline__ void key_share(i64 n, int splits, int sp, i64* j0, i64* j1) {
    i64 share = (n + splits - 1) / splits;
    *j0 = sp * share;
    *j1 = *j0 + share < n ? *j0 + share : n;
}

template <class T, class KV>
__device__ void attn_fwd_paged_split_impl(AttnShape s, const T* q, const KV* k, const KV* v, const u32* meta,
                                          const u32* seq_of, const u32* tables, i64 block_size, int splits,
                                          float* part_out, float* part_ml) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (warp >= s.t * s.heads * splits) return;
    i64 pair = warp / splits;
    int sp = (int)(warp - pair * splits);
    i64 i = pair / s.heads;
    int h = (int)(pair - i * s.heads);
    int g = h / (s.heads / s.kv_heads);
    const u32* m = meta + 4 * (i64)seq_of[i];
    i64 local = i - (i64)m[0], t = (i64)m[1], len = (i64)m[2];
    i64 n = local + (len - t) + 1;  // positions row i sees
    i64 j0, j1;
    key_share(n, splits, sp, &j0, &j1);
    float acc[ATTN_MAX_CHUNKS], mx, l;
    attn_accumulate(s, q + (i * s.heads + h) * s.d, k, v, g, j0, j1, PagedRows{tables + m[3], block_size}, acc, mx,
                    l, lane);
    i64 at = (i64)sp * s.t * s.heads + pair;
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        if (e < s.d) part_out[at * s.d + e] = acc[c];
    }
    if (lane == 0) {
        part_ml[2 * at] = mx;  // -inf for an empty share
        part_ml[2 * at + 1] = l;
    }
}

template <class T>
__device__ void attn_combine_splits_impl(AttnShape s, int splits, const float* part_out, const float* part_ml,
                                         T* out, float* lse) {
    int lane = threadIdx.x & 31;
    i64 pair = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (pair >= s.t * s.heads) return;
    i64 stride = s.t * s.heads;
    float mx = -inf_f32();
    for (int sp = 0; sp < splits; ++sp) mx = fmaxf(mx, part_ml[2 * (sp * stride + pair)]);
    float l = 0.0f, acc[ATTN_MAX_CHUNKS];
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) acc[c] = 0.0f;
    for (int sp = 0; sp < splits; ++sp) {
        i64 at = sp * stride + pair;
        float m = part_ml[2 * at];
        if (m == -inf_f32()) continue;  // an empty share
        float w = expf(m - mx);
        l += part_ml[2 * at + 1] * w;
#pragma unroll
        for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
            int e = lane + 32 * c;
            if (e < s.d) acc[c] += part_out[at * s.d + e] * w;
        }
    }
    float inv = 1.0f / l;
    i64 i = pair / s.heads;
    int h = (int)(pair - i * s.heads);
#pragma unroll
    for (int c = 0; c < ATTN_MAX_CHUNKS; ++c) {
        int e = lane + 32 * c;
        if (e < s.d) out[pair * s.d + e] = from_f32<T>(acc[c] * inv);
    }
    if (lane == 0) lse[(i64)h * s.t + i] = mx + logf(l);
}

#define ATTENTION_SPLIT(T, S)                                                                              \
    extern "C" __global__ void attn_fwd_paged_split_##S(AttnShape s, const T* q, const T* k, const T* v,   \
                                                        const u32* meta, const u32* seq_of,                \
                                                        const u32* tables, i64 block_size, int splits,     \
                                                        float* part_out, float* part_ml) {                 \
        attn_fwd_paged_split_impl<T, T>(s, q, k, v, meta, seq_of, tables, block_size, splits, part_out,    \
                                     part_ml);                                                             \
    }                                                                                                      \
    ARTIST_EXPORT(attn_fwd_paged_split_##S)                                                                \
    extern "C" __global__ void attn_combine_splits_##S(AttnShape s, int splits, const float* part_out,     \
                                                       const float* part_ml, T* out, float* lse) {         \
        attn_combine_splits_impl<T>(s, splits, part_out, part_ml, out, lse);                               \
    }                                                                                                      \
    ARTIST_EXPORT(attn_combine_splits_##S)
FLOAT_TYPES(ATTENTION_SPLIT)

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
        attn_fwd_paged_batch_impl<T, T>(s, q, k, v, meta, seq_of, tables, block_size, out, lse);          \
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

// f32 queries over a bf16 paged KV cache (KvCache's bf16 dtype): the decode kernels with
// keys and values widened as they are read; the output and log-sum-exp as for f32 pools.
#define ATTENTION_PAGED_KV(T, S, KV, SK)                                                                  \
    extern "C" __global__ void attn_fwd_paged_batch_##S##_##SK##kv(                                       \
        AttnShape s, const T* q, const KV* k, const KV* v, const u32* meta, const u32* seq_of,            \
        const u32* tables, i64 block_size, T* out, float* lse) {                                          \
        attn_fwd_paged_batch_impl<T, KV>(s, q, k, v, meta, seq_of, tables, block_size, out, lse);         \
    }                                                                                                     \
    ARTIST_EXPORT(attn_fwd_paged_batch_##S##_##SK##kv)                                                    \
    extern "C" __global__ void attn_fwd_paged_split_##S##_##SK##kv(                                       \
        AttnShape s, const T* q, const KV* k, const KV* v, const u32* meta, const u32* seq_of,            \
        const u32* tables, i64 block_size, int splits, float* part_out, float* part_ml) {                 \
        attn_fwd_paged_split_impl<T, KV>(s, q, k, v, meta, seq_of, tables, block_size, splits, part_out,  \
                                         part_ml);                                                        \
    }                                                                                                     \
    ARTIST_EXPORT(attn_fwd_paged_split_##S##_##SK##kv)
ATTENTION_PAGED_KV(float, f32, bf16, bf16)

// Grouped-query decode: one warp per (row, KV head) serves the rep = heads / kv_heads query
// heads that share the KV head, so each key and value row is read once per group rather
// than once per head (Qwen2.5's groups are 5 to 8 heads). Each head's dot products, online
// softmax and accumulation are the per-head kernels' (attn_accumulate), term for term and
// in the same order, so the results are theirs to the bit. With splits > 1 a warp takes one
// share of the positions (flash decoding) and writes partials for attn_combine_splits;
// with 1 it writes the output and log-sum-exp. CH: d <= 32 * CH (2 or 4, head dim up to
// 64 or 128: registers hold rep x CH query and accumulator values per lane).
#define GROUP_MAX_REP 8

template <class T, class KV, int CH>
__device__ void attn_fwd_paged_group_impl(AttnShape s, const T* q, const KV* k, const KV* v, const u32* meta,
                                          const u32* seq_of, const u32* tables, i64 block_size, int splits, T* out,
                                          float* lse, float* part_out, float* part_ml) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (warp >= s.t * s.kv_heads * splits) return;
    i64 unit = warp / splits;
    int sp = (int)(warp - unit * splits);
    i64 i = unit / s.kv_heads;
    int g = (int)(unit - i * s.kv_heads);
    int rep = s.heads / s.kv_heads;
    const u32* m = meta + 4 * (i64)seq_of[i];
    i64 local = i - (i64)m[0], t = (i64)m[1], len = (i64)m[2];
    i64 n = local + (len - t) + 1;  // positions row i sees
    i64 j0, j1;
    key_share(n, splits, sp, &j0, &j1);  // all of 0 .. n - 1 with one share
    PagedRows rows{tables + m[3], block_size};
    float qr[GROUP_MAX_REP][CH], acc[GROUP_MAX_REP][CH], mx[GROUP_MAX_REP], l[GROUP_MAX_REP];
#pragma unroll
    for (int r = 0; r < GROUP_MAX_REP; ++r) {
        const T* q_row = q + (i * s.heads + g * rep + r) * s.d;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            int e = lane + 32 * c;
            qr[r][c] = r < rep && e < s.d ? to_f32(q_row[e]) : 0.0f;
            acc[r][c] = 0.0f;
        }
        mx[r] = -inf_f32();
        l[r] = 0.0f;
    }
    for (i64 j = j0; j < j1; ++j) {
        i64 row = rows(j);
        const KV* kp = k + row * s.k_row + g * s.k_head;
        const KV* vp = v + row * s.v_row + g * s.v_head;
        float kr[CH], vr[CH];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            int e = lane + 32 * c;
            kr[c] = e < s.d ? to_f32(kp[e]) : 0.0f;
            vr[c] = e < s.d ? to_f32(vp[e]) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < GROUP_MAX_REP; ++r) {
            if (r >= rep) break;  // the same for every lane of the warp
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < CH; ++c)
                if (lane + 32 * c < s.d) dot += qr[r][c] * kr[c];
            float sc = warp_sum(dot) * s.scale;
            float m_new = fmaxf(mx[r], sc);
            float corr = expf(mx[r] - m_new);
            float p = expf(sc - m_new);
            l[r] = l[r] * corr + p;
#pragma unroll
            for (int c = 0; c < CH; ++c) acc[r][c] = acc[r][c] * corr + (lane + 32 * c < s.d ? p * vr[c] : 0.0f);
            mx[r] = m_new;
        }
    }
#pragma unroll
    for (int r = 0; r < GROUP_MAX_REP; ++r) {
        if (r >= rep) break;
        i64 pair = i * s.heads + g * rep + r;
        int h = g * rep + r;
        if (splits == 1) {
            float inv = 1.0f / l[r];
#pragma unroll
            for (int c = 0; c < CH; ++c) {
                int e = lane + 32 * c;
                if (e < s.d) out[pair * s.d + e] = from_f32<T>(acc[r][c] * inv);
            }
            if (lane == 0) lse[(i64)h * s.t + i] = mx[r] + logf(l[r]);
        } else {
            i64 at = (i64)sp * s.t * s.heads + pair;
#pragma unroll
            for (int c = 0; c < CH; ++c) {
                int e = lane + 32 * c;
                if (e < s.d) part_out[at * s.d + e] = acc[r][c];
            }
            if (lane == 0) {
                part_ml[2 * at] = mx[r];  // -inf for an empty share
                part_ml[2 * at + 1] = l[r];
            }
        }
    }
}

#define ATTENTION_GROUP(T, S, KV, SK, D, CH)                                                               \
    extern "C" __global__ void attn_fwd_paged_group_d##D##_##S##SK(                                       \
        AttnShape s, const T* q, const KV* k, const KV* v, const u32* meta, const u32* seq_of,            \
        const u32* tables, i64 block_size, int splits, T* out, float* lse, float* part_out, float* part_ml) { \
        attn_fwd_paged_group_impl<T, KV, CH>(s, q, k, v, meta, seq_of, tables, block_size, splits, out, lse, \
                                             part_out, part_ml);                                          \
    }                                                                                                     \
    ARTIST_EXPORT(attn_fwd_paged_group_d##D##_##S##SK)
#define ATTENTION_GROUPS(T, S) ATTENTION_GROUP(T, S, T, , 64, 2) ATTENTION_GROUP(T, S, T, , 128, 4)
FLOAT_TYPES(ATTENTION_GROUPS)
ATTENTION_GROUP(float, f32, bf16, _bf16kv, 64, 2)
ATTENTION_GROUP(float, f32, bf16, _bf16kv, 128, 4)

// ---- the forward on tensor cores: bf16, head dim 64 or 128 ----------------------------------
//
// Flash-attention-2 style. A block of four warps takes 64 query rows of one head (16 rows per
// warp, held as mma A fragments for the whole pass) and walks the keys its rows can see in
// tiles of 64 keys and values, staged in shared memory. Per tile each warp computes its
// 16 x 64 scores with `mma.sync` (Q K^T), masks them, updates the running row maximum and
// sum (f32), rescales its f32 output accumulator, and adds P V with `mma.sync`, P rounded to
// bf16 as the A operand. The output row is divided by the sum at the end, and the
// log-sum-exp is written for the backward. The [t x len] scores never leave registers.
//
// Host conditions (ops.rs): q, k, v bf16; k and v rows at 16-byte aligned addresses (row and
// head strides multiples of 8 elements); an sm_80 or later GPU.

#define MMA_BQ 64  // query rows per block (16 per warp)
#define MMA_BK 64  // keys per tile
#define MMA_PAD 8  // bf16 of padding per shared row: rows land on different banks

// The pieces the tensor-core kernels share (g = lane / 4, c = lane % 4, as mma_bf16_16816's
// fragment layout; SR = D + MMA_PAD, the shared tiles' row stride).

// A fragments of rows row0 + g and row0 + g + 8 of a bf16 matrix whose row r starts at
// base + r * stride, for each 16-column step of D; zeros from row `rows` on.
template <int D>
__device__ __forceinline__ void load_a_rows(u32 (*a)[4], const u16* base, i64 stride, i64 row0, i64 rows, int g,
                                            int c) {
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            i64 row = row0 + g + 8 * (r & 1);
            int col = kc * 16 + 2 * c + 8 * (r >> 1);
            a[kc][r] = row < rows ? *reinterpret_cast<const u32*>(base + row * stride + col) : 0u;
        }
    }
}

// Rows first .. first + ROWS of a bf16 matrix (row r at a + r * sa) into the shared tile t
// with cp.async, 16 bytes per copy by the whole block; zeros from row `end` on. The caller
// commits and waits.
template <int D, int ROWS>
__device__ __forceinline__ void stage_tile_async(u16* t, const u16* a, i64 sa, i64 first, i64 end) {
    constexpr int SR = D + MMA_PAD, CH = D / 8;
    for (int i = (int)threadIdx.x; i < ROWS * CH; i += (int)blockDim.x) {
        int r = i / CH, ch = i - r * CH;
        i64 row = first + r;
        bool in = row < end;
        cp_async_16(t + r * SR + ch * 8, a + (in ? row : 0) * sa + ch * 8, in ? 16 : 0);
    }
}

// The B fragment (16 deep, 8 wide) whose columns are rows of a shared tile T of row stride
// SR (B[k][n] = T[n0 + n][k0 + k]): `t` points at T[n0][k0]. One ldmatrix: lane l names
// row l % 8 of the 8-column block l / 8.
template <int SR>
__device__ __forceinline__ void b_from_row(u32 b[2], const u16* t) {
    const int lane = (int)(threadIdx.x & 31);
    ldmatrix_x2(b, t + (lane & 7) * SR + 8 * ((lane >> 3) & 1));
}

// The B fragment whose rows are a shared tile's rows (B[k][n] = T[k0 + k][n0 + n]): `t`
// points at T[k0][n0]. One transposing ldmatrix: lane l names tile row l % 16.
template <int SR>
__device__ __forceinline__ void b_from_rows(u32 b[2], const u16* t) {
    const int lane = (int)(threadIdx.x & 31);
    ldmatrix_x2_trans(b, t + (lane & 15) * SR);
}

// Two B fragments in one `ldmatrix.x4`, b[0..2] and b[2..4]:
// - `b2_from_row`: b_from_row at `t` and at `t + 16` (the next 16 of the depth: two k-steps
//   of Q K^T); lane l names row l % 8 of the 8-column block l / 8.
// - `b2_from_rows`: b_from_rows at `t` and at `t + 8` (the next 8 columns: two output tiles
//   of P V); lane l names tile row l % 16 of the 8-column block l / 16.
template <int SR>
__device__ __forceinline__ void b2_from_row(u32 b[4], const u16* t) {
    const int lane = (int)(threadIdx.x & 31);
    ldmatrix_x4(b, t + (lane & 7) * SR + 8 * (lane >> 3));
}

template <int SR>
__device__ __forceinline__ void b2_from_rows(u32 b[4], const u16* t) {
    const int lane = (int)(threadIdx.x & 31);
    ldmatrix_x4_trans(b, t + (lane & 15) * SR + 8 * (lane >> 4));
}

// b_from_row by two plain 32-bit shared loads, for the dK/dV pass at head dim 128, which
// sits at the register limit: there ldmatrix's per-lane addresses for these fragments cost
// spills (ptxas, sm_90: 255 registers and 64 spilled bytes with ldmatrix for both kinds of
// fragment, 4 with this one for the untransposed kind).
template <int SR>
__device__ __forceinline__ void b_from_row_lds(u32 b[2], const u16* t) {
    const int lane = (int)(threadIdx.x & 31), g = lane >> 2, c = lane & 3;
    const u16* p = t + g * SR + 2 * c;
    b[0] = *reinterpret_cast<const u32*>(p);
    b[1] = *reinterpret_cast<const u32*>(p + 8);
}

// The C fragments of two 8-column tiles, rounded to bf16: the A fragment of one 16-deep step.
__device__ __forceinline__ void c_to_a(u32 a[4], const float* c0, const float* c1) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// One tile's step of the online softmax, for a warp's rows r0 + g (e < 2) and r0 + g + 8
// (e >= 2) over keys j0 .. j0 + 8 NT: scales and masks the scores sc (C fragments), updates
// the running maximum m and this lane's part of the sum l, leaves the unnormalised
// probabilities in sc, and the factor corr by which the output accumulator's rows must be
// rescaled (rescale_rows) before this tile's P V is added.
template <int NT>
__device__ __forceinline__ void online_softmax_tile(const AttnShape& s, float (*sc)[4], float* m, float* l,
                                                    float* corr, i64 r0, i64 j0, int g, int c, i64 off) {
    // Scale, mask, and the running maximum of rows g (e < 2) and g + 8 (e >= 2).
    float mx[2] = {-inf_f32(), -inf_f32()};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            i64 row = r0 + g + 8 * (e >> 1), key = j0 + nt * 8 + 2 * c + (e & 1);
            float x = key <= row + off && key < s.len ? sc[nt][e] * s.scale : -inf_f32();
            sc[nt][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
        float m_new = fmaxf(m[r], mx[r]);
        base[r] = m_new == -inf_f32() ? 0.0f : m_new;  // a row with no key yet
        corr[r] = expf(m[r] - base[r]);                // 0 while m is -inf
        m[r] = m_new;
        l[r] *= corr[r];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float p = expf(sc[nt][e] - base[e >> 1]);
            sc[nt][e] = p;
            l[e >> 1] += p;
        }
    }
}

// The output accumulator's rows g (corr[0]) and g + 8 (corr[1]) times their factors.
template <int OT>
__device__ __forceinline__ void rescale_rows(float (*o)[4], const float* corr) {
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) {
        o[ot][0] *= corr[0];
        o[ot][1] *= corr[0];
        o[ot][2] *= corr[1];
        o[ot][3] *= corr[1];
    }
}

// The output rows r0 + g and r0 + g + 8 of head h (o divided by the whole row's sum, over the
// four lanes that share it), and their log-sum-exp.
template <int D>
__device__ __forceinline__ void write_output_rows(const AttnShape& s, bf16* out, float* lse, float (*o)[4],
                                                  const float* m, float* l, i64 r0, int h, int g, int c) {
    constexpr int OT = D / 8;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 2);
    }
    u16* ob = reinterpret_cast<u16*>(out);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        i64 row = r0 + g + 8 * r;
        if (row >= s.t) continue;
        float inv = 1.0f / l[r];
        u32* dst = reinterpret_cast<u32*>(ob + (row * s.heads + h) * D + 2 * c);
#pragma unroll
        for (int ot = 0; ot < OT; ++ot) dst[ot * 4] = pack_bf16(o[ot][2 * r] * inv, o[ot][2 * r + 1] * inv);
        if (c == 0) lse[(i64)h * s.t + row] = m[r] + logf(l[r]);
    }
}

// The dQ passes' inputs for a warp's rows r0 + g and r0 + g + 8 of head h: Q and dO as A
// fragments, and the rows' log-sum-exp and delta (zeros past t).
template <int D>
__device__ __forceinline__ void load_dq_rows(const AttnShape& s, const u16* qb, const u16* db, const float* lse,
                                             const float* delta, int h, i64 r0, int g, int c, u32 (*qa)[4],
                                             u32 (*da)[4], float* lrow, float* drow) {
    load_a_rows<D>(qa, qb + h * D, (i64)s.heads * D, r0, s.t, g, c);
    load_a_rows<D>(da, db + h * D, (i64)s.heads * D, r0, s.t, g, c);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        i64 row = r0 + g + 8 * r;
        lrow[r] = row < s.t ? lse[(i64)h * s.t + row] : 0.0f;
        drow[r] = row < s.t ? delta[(i64)h * s.t + row] : 0.0f;
    }
}

// dS = P (dP - delta) for a warp's rows r0 + g (e < 2) and r0 + g + 8 (e >= 2) over keys
// j0 .. j0 + 8 NT, in place of the scores sc (C fragments): P recomputed from the scores and
// the rows' log-sum-exp lrow, zero where the mask hides a key; drow holds the rows' delta.
template <int NT>
__device__ __forceinline__ void ds_tile(const AttnShape& s, float (*sc)[4], const float (*dp)[4], const float* lrow,
                                        const float* drow, i64 r0, i64 j0, int g, int c, i64 off) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            i64 row = r0 + g + 8 * (e >> 1), key = j0 + nt * 8 + 2 * c + (e & 1);
            bool seen = row < s.t && key <= row + off && key < s.len;
            float p = seen ? expf(sc[nt][e] * s.scale - lrow[e >> 1]) : 0.0f;
            sc[nt][e] = p * (dp[nt][e] - drow[e >> 1]);
        }
    }
}

// The dQ rows r0 + g and r0 + g + 8 of head h: the accumulated dS K times the scale.
template <int D>
__device__ __forceinline__ void write_dq_rows(const AttnShape& s, float* dq, const float (*acc)[4], i64 r0, int h,
                                              int g, int c) {
    constexpr int OT = D / 8;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        i64 row = r0 + g + 8 * r;
        if (row >= s.t) continue;
        float* dst = dq + (row * s.heads + h) * D + 2 * c;
#pragma unroll
        for (int ot = 0; ot < OT; ++ot) {
            dst[ot * 8] = acc[ot][2 * r] * s.scale;
            dst[ot * 8 + 1] = acc[ot][2 * r + 1] * s.scale;
        }
    }
}

template <int D>
__device__ __forceinline__ void attn_fwd_mma_impl(AttnShape s, const bf16* q, const bf16* k, const bf16* v,
                                                  bf16* out, float* lse) {
    constexpr int KC = D / 16;        // k-steps of Q K^T (16 of the head dim each)
    constexpr int NT = MMA_BK / 8;    // 8-key column tiles of the scores
    constexpr int OT = D / 8;         // 8-wide column tiles of the output
    constexpr int SR = D + MMA_PAD;   // shared row stride, in bf16
    __align__(16) __shared__ u16 ks[MMA_BK * SR];
    __align__(16) __shared__ u16 vs[MMA_BK * SR];
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int h = (int)blockIdx.y, kvh = h / (s.heads / s.kv_heads);
    const i64 q0 = (i64)blockIdx.x * MMA_BQ, r0 = q0 + warp * 16;
    const i64 off = s.len - s.t;  // query i sees keys j <= i + off
    const u16* qb = reinterpret_cast<const u16*>(q);
    const u16* kb = reinterpret_cast<const u16*>(k) + kvh * s.k_head;
    const u16* vb = reinterpret_cast<const u16*>(v) + kvh * s.v_head;

    // The warp's rows r0 + g and r0 + g + 8 of Q as A fragments (zeros past t).
    u32 qa[KC][4];
    load_a_rows<D>(qa, qb + h * D, (i64)s.heads * D, r0, s.t, g, c);
    float o[OT][4];
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) o[ot][0] = o[ot][1] = o[ot][2] = o[ot][3] = 0.0f;
    float m[2] = {-inf_f32(), -inf_f32()}, l[2] = {0.0f, 0.0f};  // l: this lane's part of the sum

    // The last key any row of the block sees.
    i64 last_row = (q0 + MMA_BQ < s.t ? q0 + MMA_BQ : s.t) - 1;
    i64 kmax = last_row + off < s.len - 1 ? last_row + off : s.len - 1;
    // Loads overlap the products, as flash attention 2 pipelines them: a tile's V is copied
    // (cp.async) while its scores are computed from K, and the next tile's K while P V is.
    stage_tile_async<D, MMA_BK>(ks, kb, s.k_row, 0, s.len);
    cp_async_commit();
    for (i64 j0 = 0; j0 <= kmax; j0 += MMA_BK) {
        cp_async_wait<0>();
        __syncthreads();  // K of this tile is in; every warp is done with the previous V
        stage_tile_async<D, MMA_BK>(vs, vb, s.v_row, j0, s.len);
        cp_async_commit();

        // Scores: sc[nt] is the 16 x 8 tile of keys j0 + 8 nt ...
        float sc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const u16* krow = ks + nt * 8 * SR;  // B[k][n] = K[n][k]
#pragma unroll
            for (int kc = 0; kc < KC; kc += 2) {
                u32 b[4];
                b2_from_row<SR>(b, krow + kc * 16);
                mma_bf16_16816(sc[nt], qa[kc], b);
                mma_bf16_16816(sc[nt], qa[kc + 1], b + 2);
            }
        }
        float corr[2];
        online_softmax_tile<NT>(s, sc, m, l, corr, r0, j0, g, c, off);
        rescale_rows<OT>(o, corr);
        cp_async_wait<0>();
        __syncthreads();  // V of this tile is in; every warp is done with K
        if (j0 + MMA_BK <= kmax) stage_tile_async<D, MMA_BK>(ks, kb, s.k_row, j0 + MMA_BK, s.len);
        cp_async_commit();
        // O += P V: the scores' C fragments of two key tiles are the A fragment of 16 keys.
#pragma unroll
        for (int kc = 0; kc < MMA_BK / 16; ++kc) {
            u32 pa[4];
            c_to_a(pa, sc[2 * kc], sc[2 * kc + 1]);
            const u16* v0 = vs + kc * 16 * SR;  // B[k][n] = V[k][n]
#pragma unroll
            for (int ot = 0; ot < OT; ot += 2) {
                u32 b[4];
                b2_from_rows<SR>(b, v0 + ot * 8);
                mma_bf16_16816(o[ot], pa, b);
                mma_bf16_16816(o[ot + 1], pa, b + 2);
            }
        }
    }

    write_output_rows<D>(s, out, lse, o, m, l, r0, h, g, c);
}

#define ATTENTION_MMA(D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_d##D##_bf16(                            \
        AttnShape s, const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse) {                 \
        attn_fwd_mma_impl<D>(s, q, k, v, out, lse);                                                        \
    }                                                                                                      \
    ARTIST_EXPORT(attn_fwd_mma_d##D##_bf16)
ATTENTION_MMA(64)
ATTENTION_MMA(128)

// ---- the forward on Hopper's warpgroup MMA: bf16, head dim 64 or 128, sm_90a --------------
//
// attn_fwd_mma's pass on `wgmma.mma_async` (common.cuh) instead of `mma.sync`. A block of two
// warpgroups (8 warps) takes 128 query rows of one head, 64 per warpgroup, 16 per warp. Each
// product is one instruction per 16-deep step for a whole warpgroup, which reads its B
// operand (K for the scores, V for P V) from shared memory once for 64 rows, where
// `mma.sync` reads it once per warp of 16: a quarter of the shared-memory bytes per FLOP,
// which bound the mma.sync forward (docs/CUDA.md). Q and P are A operands in registers in
// the same fragments as there, and the accumulators have the C fragments' layout, so the
// masking, the online softmax and the output are the mma kernel's, line for line.
//
// A tile of 64 keys (or values) sits in dynamic shared memory in the 128-byte swizzled layout
// (common.cuh): each 64-column half of the head dimension is a block of 64 rows of 128
// bytes (8 KB), its 16-byte chunk c of row r at chunk c ^ (r % 8). The scores read K as a
// K-major B operand (K[j][e] = B[e][j]) 16 columns of the head dimension at a time: 32 bytes
// into a half's rows, 1 KB between blocks of 8 keys. P V reads V as an N-major B operand
// (V[j][e] = B[j][e]) 16 keys at a time: 2 KB into the tile, 1 KB between blocks of 8 keys,
// 8 KB between the two halves. The same staging serves both.

#define WG_BQ 128  // query rows per block (64 per warpgroup, 16 per warp)
#define WG_BK 64   // keys per tile
#define WG_HALF (WG_BK * 128)  // bytes of one 64-column half of a tile

#ifdef ARTIST_WGMMA
// Rows first .. first + WG_BK of a bf16 matrix (row r at a + r * sa) into the swizzled tile
// at t (1024-byte aligned) with cp.async, zeros from row `end` on. The caller commits and
// waits.
template <int D>
__device__ __forceinline__ void stage_tile_swizzled(unsigned char* t, const u16* a, i64 sa, i64 first, i64 end) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
    for (int i = (int)threadIdx.x; i < WG_BK * CH; i += (int)blockDim.x) {
        int r = i / CH, ch = i - r * CH;
        i64 row = first + r;
        bool in = row < end;
        unsigned char* dst = t + (ch >> 3) * WG_HALF + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
        cp_async_16(dst, a + (in ? row : 0) * sa + ch * 8, in ? 16 : 0);
    }
}

// Every thread's tile copies land and are made visible to wgmma, and the barrier says every
// warpgroup is done with the buffers about to be refilled.
__device__ __forceinline__ void tiles_landed() {
    cp_async_wait<0>();
    fence_proxy_async_shared();
    __syncthreads();
}
#endif

template <int D>
__device__ __forceinline__ void attn_fwd_wgmma_impl(AttnShape s, const bf16* q, const bf16* k, const bf16* v,
                                                    bf16* out, float* lse) {
#ifdef ARTIST_WGMMA
    constexpr int KC = D / 16;                // k-steps of Q K^T (16 of the head dim each)
    constexpr int NT = WG_BK / 8;             // 8-key column tiles of the scores
    constexpr int OT = D / 8;                 // 8-wide column tiles of the output
    constexpr int PC = WG_BK / 16;            // k-steps of P V (16 keys each)
    constexpr u32 TILE = WG_HALF * (D / 64);  // bytes of one tile
    // Two K tiles and two V tiles (K of tile t in buffer t % 2, V likewise), 1 KB to align.
    DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* kbuf = smem + ((1024u - (smem_u32(smem) & 1023u)) & 1023u);
    unsigned char* vbuf = kbuf + 2 * TILE;
    const u32 ka = smem_u32(kbuf), va = smem_u32(vbuf);
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int h = (int)blockIdx.y, kvh = h / (s.heads / s.kv_heads);
    const i64 q0 = (i64)blockIdx.x * WG_BQ, r0 = q0 + warp * 16;
    const i64 off = s.len - s.t;  // query i sees keys j <= i + off
    const u16* qb = reinterpret_cast<const u16*>(q);
    const u16* kb = reinterpret_cast<const u16*>(k) + kvh * s.k_head;
    const u16* vb = reinterpret_cast<const u16*>(v) + kvh * s.v_head;
    auto stage_k = [&](i64 t) { stage_tile_swizzled<D>(kbuf + (t & 1) * TILE, kb, s.k_row, t * WG_BK, s.len); };
    auto stage_v = [&](i64 t) { stage_tile_swizzled<D>(vbuf + (t & 1) * TILE, vb, s.v_row, t * WG_BK, s.len); };
    // sc = Q K^T for the keys of tile t (K-major B: 16 columns of the head dim per step).
    auto issue_scores = [&](float (*sc)[4], const u32 (*qa)[4], i64 t) {
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            u32 at = ka + (u32)(t & 1) * TILE + (u32)(kc >> 2) * WG_HALF + (u32)(kc & 3) * 32u;
            wgmma_bf16_rs<WG_BK, 0>(&sc[0][0], qa[kc], wgmma_desc(at, 16, 1024), kc > 0);
        }
        wgmma_commit();
    };
    // o += P V for the values of tile t (N-major B: 16 keys per step).
    auto issue_values = [&](float (*o)[4], const u32 (*pa)[4], i64 t) {
#pragma unroll
        for (int kc = 0; kc < PC; ++kc) {
            u32 at = va + (u32)(t & 1) * TILE + (u32)kc * 2048u;
            wgmma_bf16_rs<D, 1>(&o[0][0], pa[kc], wgmma_desc(at, WG_HALF, 1024), 1);
        }
        wgmma_commit();
    };

    // The warp's rows r0 + g and r0 + g + 8 of Q as A fragments (zeros past t).
    u32 qa[KC][4];
    load_a_rows<D>(qa, qb + h * D, (i64)s.heads * D, r0, s.t, g, c);
    float o[OT][4], sc[NT][4], corr[2];
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) o[ot][0] = o[ot][1] = o[ot][2] = o[ot][3] = 0.0f;
    float m[2] = {-inf_f32(), -inf_f32()}, l[2] = {0.0f, 0.0f};  // l: this lane's part of the sum
    u32 pa[PC][4];  // P of the tile whose P V is next, rounded to bf16 as A fragments

    i64 last_row = (q0 + WG_BQ < s.t ? q0 + WG_BQ : s.t) - 1;
    i64 kmax = last_row + off < s.len - 1 ? last_row + off : s.len - 1;
    const i64 tiles = kmax / WG_BK + 1;

    // Flash attention 3's overlap within a warpgroup: while the tensor cores run tile t's
    // scores and tile t - 1's P V, the warps compute tile t's softmax once its scores are in,
    // then wait for P V before rescaling the output. Copies run a tile ahead: K of t + 1
    // and V of t while tile t computes.
    stage_k(0);
    stage_v(0);
    cp_async_commit();
    tiles_landed();
    if (tiles > 1) stage_k(1);
    cp_async_commit();
    wgmma_fence();
    issue_scores(sc, qa, 0);  // the first step overwrites sc (scale-d 0)
    wgmma_wait<0>();
    wgmma_fence_operands(&sc[0][0], NT * 4);
    online_softmax_tile<NT>(s, sc, m, l, corr, r0, 0, g, c, off);  // o is 0: nothing to rescale
#pragma unroll
    for (int kc = 0; kc < PC; ++kc) c_to_a(pa[kc], sc[2 * kc], sc[2 * kc + 1]);
    for (i64 t = 1; t < tiles; ++t) {
        tiles_landed();  // K of t and V of t - 1 are in; every warpgroup is done with t - 1's K and t - 2's V
        if (t + 1 < tiles) stage_k(t + 1);
        stage_v(t);
        cp_async_commit();
        wgmma_fence_operands(&o[0][0], OT * 4);
        wgmma_fence();
        issue_scores(sc, qa, t);
        issue_values(o, pa, t - 1);
        wgmma_wait<1>();  // the scores; P V still runs
        wgmma_fence_operands(&sc[0][0], NT * 4);
        online_softmax_tile<NT>(s, sc, m, l, corr, r0, t * WG_BK, g, c, off);
        wgmma_wait<0>();  // P V: its A registers are free, its sums are in o
        wgmma_fence_operands(&o[0][0], OT * 4);
        rescale_rows<OT>(o, corr);
        // Packed only now: written while P V still read pa, ptxas would serialise the products.
#pragma unroll
        for (int kc = 0; kc < PC; ++kc) c_to_a(pa[kc], sc[2 * kc], sc[2 * kc + 1]);
    }
    tiles_landed();  // V of the last tile is in
    wgmma_fence_operands(&o[0][0], OT * 4);
    wgmma_fence();
    issue_values(o, pa, tiles - 1);
    wgmma_wait<0>();
    wgmma_fence_operands(&o[0][0], OT * 4);
    write_output_rows<D>(s, out, lse, o, m, l, r0, h, g, c);
#else
    __trap();  // the host launches it only where kernels are built for sm_90a
#endif
}

// The dQ pass on Hopper's warpgroup MMA, for the same 128 rows per block as the forward:
// S = Q K^T and dP = dO V^T as K-major products (K and V tiles in the forward's swizzled
// layout), dS = P (dP - delta), and dQ += dS K with K as an N-major operand: every operand
// in place, as the mma.sync pass reads them. Two buffers of a K and a V tile; the next pair
// is copied while this one computes, and tile t's dS K product runs while the warps wait
// for tile t + 1's copies.
template <int D>
__device__ __forceinline__ void attn_bwd_dq_wgmma_impl(AttnShape s, const bf16* q, const bf16* k, const bf16* v,
                                                       const bf16* dout, const float* lse, const float* delta,
                                                       float* dq) {
#ifdef ARTIST_WGMMA
    constexpr int KC = D / 16, NT = WG_BK / 8, OT = D / 8, PC = WG_BK / 16;
    constexpr u32 TILE = WG_HALF * (D / 64);
    // Buffer b holds K at 2b tiles in and V at 2b + 1, 1024-byte aligned.
    DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* tiles0 = smem + ((1024u - (smem_u32(smem) & 1023u)) & 1023u);
    const u32 ta = smem_u32(tiles0);
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int h = (int)blockIdx.y, kvh = h / (s.heads / s.kv_heads);
    const i64 q0 = (i64)blockIdx.x * WG_BQ, r0 = q0 + warp * 16;
    const i64 off = s.len - s.t;
    const u16* qb = reinterpret_cast<const u16*>(q);
    const u16* db = reinterpret_cast<const u16*>(dout);
    const u16* kb = reinterpret_cast<const u16*>(k) + kvh * s.k_head;
    const u16* vb = reinterpret_cast<const u16*>(v) + kvh * s.v_head;
    auto stage = [&](i64 t) {
        unsigned char* at = tiles0 + 2 * (t & 1) * TILE;
        stage_tile_swizzled<D>(at, kb, s.k_row, t * WG_BK, s.len);
        stage_tile_swizzled<D>(at + TILE, vb, s.v_row, t * WG_BK, s.len);
    };

    u32 qa[KC][4], da[KC][4];  // rows r0 + g and r0 + g + 8 of Q and dO as A fragments
    float lrow[2], drow[2];
    load_dq_rows<D>(s, qb, db, lse, delta, h, r0, g, c, qa, da, lrow, drow);
    float acc[OT][4], sc[NT][4], dp[NT][4];
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) acc[ot][0] = acc[ot][1] = acc[ot][2] = acc[ot][3] = 0.0f;
    u32 pa[PC][4];  // dS rounded to bf16 as the A fragments of dS K

    i64 last_row = (q0 + WG_BQ < s.t ? q0 + WG_BQ : s.t) - 1;
    i64 kmax = last_row + off < s.len - 1 ? last_row + off : s.len - 1;
    const i64 tiles = kmax / WG_BK + 1;
    stage(0);
    cp_async_commit();
    for (i64 t = 0; t < tiles; ++t) {
        wgmma_wait<0>();  // the previous tile's dS K: its buffer and its A registers are free
        wgmma_fence_operands(&acc[0][0], OT * 4);
        tiles_landed();  // this tile's K and V are in; every warpgroup is done with the other buffer
        if (t + 1 < tiles) stage(t + 1);
        cp_async_commit();
        const u32 ka = ta + 2 * (u32)(t & 1) * TILE, va = ka + TILE;
        wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            u32 at = (u32)(kc >> 2) * WG_HALF + (u32)(kc & 3) * 32u;
            wgmma_bf16_rs<WG_BK, 0>(&sc[0][0], qa[kc], wgmma_desc(ka + at, 16, 1024), kc > 0);
            wgmma_bf16_rs<WG_BK, 0>(&dp[0][0], da[kc], wgmma_desc(va + at, 16, 1024), kc > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operands(&sc[0][0], NT * 4);
        wgmma_fence_operands(&dp[0][0], NT * 4);
        ds_tile<NT>(s, sc, dp, lrow, drow, r0, t * WG_BK, g, c, off);
#pragma unroll
        for (int kc = 0; kc < PC; ++kc) c_to_a(pa[kc], sc[2 * kc], sc[2 * kc + 1]);
        wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < PC; ++kc)
            wgmma_bf16_rs<D, 1>(&acc[0][0], pa[kc], wgmma_desc(ka + (u32)kc * 2048u, WG_HALF, 1024), 1);
        wgmma_commit();
    }
    wgmma_wait<0>();
    wgmma_fence_operands(&acc[0][0], OT * 4);
    write_dq_rows<D>(s, dq, acc, r0, h, g, c);
#else
    __trap();  // the host launches it only where kernels are built for sm_90a
#endif
}

#define ATTENTION_WGMMA(D)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256) attn_fwd_wgmma_d##D##_bf16(                          \
        AttnShape s, const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse) {                 \
        attn_fwd_wgmma_impl<D>(s, q, k, v, out, lse);                                                      \
    }                                                                                                      \
    ARTIST_EXPORT(attn_fwd_wgmma_d##D##_bf16)
ATTENTION_WGMMA(64)
ATTENTION_WGMMA(128)

// A probe of how wgmma reads the swizzled tiles, for when the attention kernels disagree
// with the CPU on a GPU (cuda::wgmma_probe; the GPU suite's tests print what it finds). One
// warpgroup multiplies a one-hot A (A[m][k] = 1 where k = m % 16) by a B read from a tile T
// of 64 rows and D columns, staged as the kernels stage K and V, whose every element holds
// its row (what = 0) or its column (what = 1). So each output names the element of T the
// hardware read: D[m][n] = T[n][16 step + m % 16] for the K-major operand (MODE 0, as the
// scores read K; n < 64), T[16 step + m % 16][n] for the N-major one (MODE 1, as P V reads
// V; n < D). MODE 2 is MODE 0 with A read from shared memory too, from a swizzled tile of 64
// rows and D columns holding the one-hot at columns 16 step .. (as the dK/dV pass reads K
// and V): a misread A scatters or loses the ones. Writes D[m][n] to out[m * N + n].
template <int D, int MODE>
__device__ __forceinline__ void wgmma_probe_impl(int what, int step, float* out) {
#ifdef ARTIST_WGMMA
    constexpr int TRANS = MODE == 1, N = TRANS ? D : WG_BK;
    constexpr u32 TILE = WG_HALF * (D / 64);
    DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* t = smem + ((1024u - (smem_u32(smem) & 1023u)) & 1023u);
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const u16 one = from_f32<bf16>(1.0f).bits;
    for (int i = tid; i < WG_BK * D; i += (int)blockDim.x) {
        int r = i / D, col = i - r * D, ch = col >> 3;
        u32 at = (ch >> 3) * WG_HALF + r * 128 + (((ch & 7) ^ (r & 7)) << 4) + (col & 7) * 2;
        *reinterpret_cast<u16*>(t + at) = from_f32<bf16>((float)(what ? col : r)).bits;
        if (MODE == 2) *reinterpret_cast<u16*>(t + TILE + at) = col == 16 * step + r % 16 ? one : (u16)0;
    }
    fence_proxy_async_shared();
    __syncthreads();
    const u32 ta = smem_u32(t), kstep = (u32)(step >> 2) * WG_HALF + (u32)(step & 3) * 32u;
    float d[N / 2];
    wgmma_fence();
    if constexpr (MODE == 2) {
        wgmma_bf16_ss_n64<0>(d, wgmma_desc(ta + TILE + kstep, 16, 1024), wgmma_desc(ta + kstep, 16, 1024), 0);
    } else {
        // Rows g and g + 8 of the warp's 16 (m % 16 = g, g + 8): ones at columns g and g + 8.
        u32 a[4];
        for (int r = 0; r < 4; ++r) {
            int row = g + 8 * (r & 1), col = 2 * c + 8 * (r >> 1);
            a[r] = (col == row ? (u32)one : 0u) | (col + 1 == row ? (u32)one << 16 : 0u);
        }
        u64 desc = TRANS ? wgmma_desc(ta + (u32)step * 2048u, WG_HALF, 1024) : wgmma_desc(ta + kstep, 16, 1024);
        wgmma_bf16_rs<N, TRANS>(d, a, desc, 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(d, N / 2);
    for (int j = 0; j < N / 8; ++j) {
        for (int e = 0; e < 4; ++e) {
            int m = warp * 16 + g + 8 * (e >> 1), n = 8 * j + 2 * c + (e & 1);
            out[m * N + n] = d[4 * j + e];
        }
    }
#else
    __trap();  // the host launches it only where kernels are built for sm_90a
#endif
}

#define WGMMA_PROBE(D, MODE)                                                                               \
    extern "C" __global__ void __launch_bounds__(128) wgmma_probe_d##D##_t##MODE(int what, int step,        \
                                                                              float* out) {               \
        wgmma_probe_impl<D, MODE>(what, step, out);                                                        \
    }                                                                                                      \
    ARTIST_EXPORT(wgmma_probe_d##D##_t##MODE)
WGMMA_PROBE(64, 0)
WGMMA_PROBE(64, 1)
WGMMA_PROBE(64, 2)
WGMMA_PROBE(128, 0)
WGMMA_PROBE(128, 1)
WGMMA_PROBE(128, 2)

// ---- the backward on tensor cores: bf16, head dim 64 or 128 ---------------------------------
//
// Flash-attention-2's backward in two deterministic passes (no atomics), from the forward's
// log-sum-exp and delta = rowsum(dO * O) (attn_bwd_delta_bf16). dO is given in bf16 for the
// products; P and dS are rounded to bf16 as A operands, as flash attention rounds them; all
// accumulation is f32.
//   attn_bwd_dq_mma: per 64 query rows of a head (16 per warp), over the key tiles they see:
//     S = Q K^T, dP = dO V^T, dS = P (dP - delta), dQ += dS K.
//   attn_bwd_dkv_mma: per 64 keys of a KV head (16 per warp), over every head of the group and
//     every 32-query tile that sees them, in a fixed order:
//     S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q.
// Every operand comes from registers or from shared memory in the layouts the forward uses, so
// nothing is transposed.

#define MMA_BQ_DKV 32  // query rows per tile of the dk/dv pass

// P^T and dS^T of a tile in place, for the lane's keys k0 + g and k0 + g + 8 (rows of the
// transposed scores st and dpt) and the tile's queries i0 + 8 nq + 2c (+1): st holds
// S^T = K Q^T, dpt dP^T = V dO^T; ls and dls the tile's rows' log-sum-exp and delta.
template <int NQ>
__device__ __forceinline__ void pds_tile_t(const AttnShape& s, float (*st)[4], float (*dpt)[4], const float* ls,
                                           const float* dls, i64 k0, i64 i0, int g, int c, i64 off) {
#pragma unroll
    for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            i64 key = k0 + g + 8 * (e >> 1);
            int qi = nq * 8 + 2 * c + (e & 1);
            i64 row = i0 + qi;
            bool seen = row < s.t && key <= row + off && key < s.len;
            float p = seen ? expf(st[nq][e] * s.scale - ls[qi]) : 0.0f;
            st[nq][e] = p;
            dpt[nq][e] = p * (dpt[nq][e] - dls[qi]);  // dS^T
        }
    }
}

// The lane's rows k0 + g and k0 + g + 8 of dK (scaled) and dV from their C fragments.
template <int D>
__device__ __forceinline__ void write_dkv_rows(const AttnShape& s, float* dk, float* dv, const float (*dka)[4],
                                               const float (*dva)[4], i64 k0, int kvh, int g, int c) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        i64 j = k0 + g + 8 * r;
        if (j >= s.len) continue;
        i64 at = (j * s.kv_heads + kvh) * D + 2 * c;
#pragma unroll
        for (int ot = 0; ot < D / 8; ++ot) {
            dk[at + ot * 8] = dka[ot][2 * r] * s.scale;
            dk[at + ot * 8 + 1] = dka[ot][2 * r + 1] * s.scale;
            dv[at + ot * 8] = dva[ot][2 * r];
            dv[at + ot * 8 + 1] = dva[ot][2 * r + 1];
        }
    }
}

extern "C" __global__ void attn_bwd_delta_bf16(AttnShape s, const bf16* out, const float* dout, float* delta) {
    int lane = threadIdx.x & 31;
    i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (warp >= s.t * s.heads) return;
    i64 i = warp / s.heads;
    int h = (int)(warp - i * s.heads);
    i64 row = (i * s.heads + h) * s.d;
    float acc = 0.0f;
    for (int e = lane; e < s.d; e += 32) acc += dout[row + e] * to_f32(out[row + e]);
    acc = warp_sum(acc);
    if (lane == 0) delta[(i64)h * s.t + i] = acc;
}
ARTIST_EXPORT(attn_bwd_delta_bf16)

template <int D>
__device__ __forceinline__ void attn_bwd_dq_mma_impl(AttnShape s, const bf16* q, const bf16* k, const bf16* v,
                                                     const bf16* dout, const float* lse, const float* delta,
                                                     float* dq) {
    constexpr int KC = D / 16, NT = MMA_BK / 8, OT = D / 8, SR = D + MMA_PAD;
    // Two buffers, each a K and a V tile of padded rows: 2 x 2 x MMA_BK x SR bf16 of dynamic
    // shared memory (69 KB at head dim 128, past the 48 KB a launch gets without opting in).
    DYNAMIC_SMEM(u16, smem);
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int h = (int)blockIdx.y, kvh = h / (s.heads / s.kv_heads);
    const i64 q0 = (i64)blockIdx.x * MMA_BQ, r0 = q0 + warp * 16;
    const i64 off = s.len - s.t;
    const u16* qb = reinterpret_cast<const u16*>(q);
    const u16* db = reinterpret_cast<const u16*>(dout);
    const u16* kb = reinterpret_cast<const u16*>(k) + kvh * s.k_head;
    const u16* vb = reinterpret_cast<const u16*>(v) + kvh * s.v_head;

    u32 qa[KC][4], da[KC][4];  // rows r0 + g and r0 + g + 8 of Q and dO as A fragments
    float lrow[2], drow[2];
    load_dq_rows<D>(s, qb, db, lse, delta, h, r0, g, c, qa, da, lrow, drow);
    float acc[OT][4];
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) acc[ot][0] = acc[ot][1] = acc[ot][2] = acc[ot][3] = 0.0f;

    i64 last_row = (q0 + MMA_BQ < s.t ? q0 + MMA_BQ : s.t) - 1;
    i64 kmax = last_row + off < s.len - 1 ? last_row + off : s.len - 1;
    // The next tile's K and V are copied (cp.async) into the other buffer while the warps
    // compute on this one: every load overlaps.
    auto stage = [&](i64 j0) {
        u16* ks = smem + ((j0 / MMA_BK) & 1) * 2 * MMA_BK * SR;
        stage_tile_async<D, MMA_BK>(ks, kb, s.k_row, j0, s.len);
        stage_tile_async<D, MMA_BK>(ks + MMA_BK * SR, vb, s.v_row, j0, s.len);
    };
    stage(0);
    cp_async_commit();
    for (i64 j0 = 0; j0 <= kmax; j0 += MMA_BK) {
        cp_async_wait<0>();
        __syncthreads();  // this tile's K and V are in; every warp is done with the other buffer
        if (j0 + MMA_BK <= kmax) stage(j0 + MMA_BK);
        cp_async_commit();
        const u16* ks = smem + ((j0 / MMA_BK) & 1) * 2 * MMA_BK * SR;
        const u16* vs = ks + MMA_BK * SR;
        float sc[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[nt][e] = dp[nt][e] = 0.0f;
            const u16* krow = ks + nt * 8 * SR;
            const u16* vrow = vs + nt * 8 * SR;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                u32 bk[2], bv[2];
                b_from_row<SR>(bk, krow + kc * 16);
                mma_bf16_16816(sc[nt], qa[kc], bk);
                b_from_row<SR>(bv, vrow + kc * 16);
                mma_bf16_16816(dp[nt], da[kc], bv);
            }
        }
        ds_tile<NT>(s, sc, dp, lrow, drow, r0, j0, g, c, off);
        // dQ += dS K: B[k][n] = K[key k][n], two value rows per register as P V reads V.
#pragma unroll
        for (int kc = 0; kc < MMA_BK / 16; ++kc) {
            u32 pa[4];
            c_to_a(pa, sc[2 * kc], sc[2 * kc + 1]);
            const u16* k0 = ks + kc * 16 * SR;
#pragma unroll
            for (int ot = 0; ot < OT; ot += 2) {
                u32 b[4];
                b2_from_rows<SR>(b, k0 + ot * 8);
                mma_bf16_16816(acc[ot], pa, b);
                mma_bf16_16816(acc[ot + 1], pa, b + 2);
            }
        }
    }
    write_dq_rows<D>(s, dq, acc, r0, h, g, c);
}

template <int D>
__device__ __forceinline__ void attn_bwd_dkv_mma_impl(AttnShape s, const bf16* q, const bf16* k, const bf16* v,
                                                      const bf16* dout, const float* lse, const float* delta,
                                                      float* dk, float* dv) {
    constexpr int KC = D / 16, NQ = MMA_BQ_DKV / 8, OT = D / 8, SR = D + MMA_PAD;
    // Two buffers of Q and dO tiles (and their rows' log-sum-exp and delta): the next tile is
    // copied (cp.async) while the warps compute on this one.
    __align__(16) __shared__ u16 qs2[2][MMA_BQ_DKV * SR];
    __align__(16) __shared__ u16 dos2[2][MMA_BQ_DKV * SR];
    __shared__ float ls2[2][MMA_BQ_DKV], dls2[2][MMA_BQ_DKV];
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int kvh = (int)blockIdx.y, rep = s.heads / s.kv_heads;
    const i64 kb0 = (i64)blockIdx.x * MMA_BK, k0 = kb0 + warp * 16;
    const i64 off = s.len - s.t;
    const u16* qb = reinterpret_cast<const u16*>(q);
    const u16* db = reinterpret_cast<const u16*>(dout);
    const u16* kb = reinterpret_cast<const u16*>(k) + kvh * s.k_head;
    const u16* vb = reinterpret_cast<const u16*>(v) + kvh * s.v_head;

    u32 ka[KC][4], va[KC][4];  // keys k0 + g and k0 + g + 8 of K and V as A fragments
    load_a_rows<D>(ka, kb, s.k_row, k0, s.len, g, c);
    load_a_rows<D>(va, vb, s.v_row, k0, s.len, g, c);
    float dka[OT][4], dva[OT][4];
#pragma unroll
    for (int ot = 0; ot < OT; ++ot)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[ot][e] = dva[ot][e] = 0.0f;

    // The first query that sees the block's first key, rounded down to a tile. The block
    // walks every head of the group and, per head, the query tiles from there: `tiles` in all.
    i64 first = kb0 - off > 0 ? kb0 - off : 0;
    first -= first % MMA_BQ_DKV;
    const i64 per_head = first < s.t ? (s.t - first + MMA_BQ_DKV - 1) / MMA_BQ_DKV : 0;
    const i64 tiles = per_head * rep;
    auto stage = [&](int buf, i64 tile) {
        const int h = kvh * rep + (int)(tile / per_head);
        const i64 i0 = first + (tile % per_head) * MMA_BQ_DKV;
        stage_tile_async<D, MMA_BQ_DKV>(qs2[buf], qb + h * D, (i64)s.heads * D, i0, s.t);
        stage_tile_async<D, MMA_BQ_DKV>(dos2[buf], db + h * D, (i64)s.heads * D, i0, s.t);
        for (int r = tid; r < MMA_BQ_DKV; r += (int)blockDim.x) {
            i64 row = i0 + r;
            ls2[buf][r] = row < s.t ? lse[(i64)h * s.t + row] : 0.0f;
            dls2[buf][r] = row < s.t ? delta[(i64)h * s.t + row] : 0.0f;
        }
    };
    if (tiles > 0) stage(0, 0);
    cp_async_commit();
    for (i64 tile = 0; tile < tiles; ++tile) {
        const int buf = (int)(tile & 1);
        const i64 i0 = first + (tile % per_head) * MMA_BQ_DKV;
        cp_async_wait<0>();
        __syncthreads();  // this tile is in; every warp is done with the previous one's buffer
        if (tile + 1 < tiles) stage(buf ^ 1, tile + 1);
        cp_async_commit();
        const u16* qs = qs2[buf];
        const u16* dos = dos2[buf];
        const float* ls = ls2[buf];
        const float* dls = dls2[buf];
        // S^T (16 keys x 32 queries) and dP^T: B[k][n] = Q[query n][k], dO[query n][k].
        float st[NQ][4], dpt[NQ][4];
#pragma unroll
        for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
            for (int e = 0; e < 4; ++e) st[nq][e] = dpt[nq][e] = 0.0f;
            const u16* qrow = qs + nq * 8 * SR;
            const u16* drow = dos + nq * 8 * SR;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                u32 bq[2], bd[2];
                b_from_row_lds<SR>(bq, qrow + kc * 16);
                mma_bf16_16816(st[nq], ka[kc], bq);
                b_from_row_lds<SR>(bd, drow + kc * 16);
                mma_bf16_16816(dpt[nq], va[kc], bd);
            }
        }
        pds_tile_t<NQ>(s, st, dpt, ls, dls, k0, i0, g, c, off);
        // dV += P^T dO and dK += dS^T Q: B[k][n] = dO[query k][n], Q[query k][n].
#pragma unroll
        for (int kc = 0; kc < NQ / 2; ++kc) {
            u32 pa[4], sa[4];
            c_to_a(pa, st[2 * kc], st[2 * kc + 1]);
            c_to_a(sa, dpt[2 * kc], dpt[2 * kc + 1]);
            const u16* d0 = dos + kc * 16 * SR;
            const u16* q0 = qs + kc * 16 * SR;
#pragma unroll
            for (int ot = 0; ot < OT; ++ot) {
                u32 bd[2], bq[2];
                b_from_rows<SR>(bd, d0 + ot * 8);
                mma_bf16_16816(dva[ot], pa, bd);
                b_from_rows<SR>(bq, q0 + ot * 8);
                mma_bf16_16816(dka[ot], sa, bq);
            }
        }
    }
    write_dkv_rows<D>(s, dk, dv, dka, dva, k0, kvh, g, c);
}


// The dK/dV pass on Hopper's warpgroup MMA: a block of two warpgroups takes 128 keys of a KV
// head, 64 per warpgroup (16 per warp, the rows of dK and dV), and walks the same query tiles
// as attn_bwd_dkv_mma, 64 queries at a time. S^T = K Q^T and dP^T = V dO^T read both operands
// from shared memory (K and V as K-major A operands, staged once; Q and dO as K-major B
// operands), in the forward's swizzled tiles; dV += P^T dO and dK += dS^T Q take P^T and dS^T
// from registers and read dO and Q as N-major B operands, as P V reads V. So K and V take no
// registers, which the mma.sync pass spends on them (64 at head dim 128), and each B operand
// is read once per 64 keys rather than per warp of 16. Two buffers of a Q and a dO tile; the
// next pair is copied while this one computes, and tile t's dV and dK products run while the
// warps wait for tile t + 1's copies.
template <int D>
__device__ __forceinline__ void attn_bwd_dkv_wgmma_impl(AttnShape s, const bf16* q, const bf16* k, const bf16* v,
                                                        const bf16* dout, const float* lse, const float* delta,
                                                        float* dk, float* dv) {
#ifdef ARTIST_WGMMA
    constexpr int KC = D / 16, NQ = WG_BK / 8, OT = D / 8, PC = WG_BK / 16;
    constexpr u32 TILE = WG_HALF * (D / 64);
    // K of warpgroup w's keys at tile w, V at 2 + w; buffer b's Q at 4 + 2b and dO at 5 + 2b.
    DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* tiles0 = smem + ((1024u - (smem_u32(smem) & 1023u)) & 1023u);
    const u32 ta = smem_u32(tiles0);
    __shared__ float ls2[2][WG_BK], dls2[2][WG_BK];
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int wg = warp >> 2, kvh = (int)blockIdx.y, rep = s.heads / s.kv_heads;
    const i64 kb0 = (i64)blockIdx.x * (2 * WG_BK), k0 = kb0 + warp * 16;
    const i64 off = s.len - s.t;
    const u16* qb = reinterpret_cast<const u16*>(q);
    const u16* db = reinterpret_cast<const u16*>(dout);
    const u16* kb = reinterpret_cast<const u16*>(k) + kvh * s.k_head;
    const u16* vb = reinterpret_cast<const u16*>(v) + kvh * s.v_head;

    // The first query that sees the block's first key, rounded down to a tile; every head of
    // the group, and per head the query tiles from there: `tiles` in all.
    i64 first = kb0 - off > 0 ? kb0 - off : 0;
    first -= first % WG_BK;
    const i64 per_head = first < s.t ? (s.t - first + WG_BK - 1) / WG_BK : 0;
    const i64 tiles = per_head * rep;
    auto stage = [&](int buf, i64 tile) {
        const int h = kvh * rep + (int)(tile / per_head);
        const i64 i0 = first + (tile % per_head) * WG_BK;
        unsigned char* at = tiles0 + (4 + 2 * buf) * TILE;
        stage_tile_swizzled<D>(at, qb + h * D, (i64)s.heads * D, i0, s.t);
        stage_tile_swizzled<D>(at + TILE, db + h * D, (i64)s.heads * D, i0, s.t);
        for (int r = tid; r < WG_BK; r += (int)blockDim.x) {
            i64 row = i0 + r;
            ls2[buf][r] = row < s.t ? lse[(i64)h * s.t + row] : 0.0f;
            dls2[buf][r] = row < s.t ? delta[(i64)h * s.t + row] : 0.0f;
        }
    };
    for (int w = 0; w < 2; ++w) {
        stage_tile_swizzled<D>(tiles0 + w * TILE, kb, s.k_row, kb0 + w * WG_BK, s.len);
        stage_tile_swizzled<D>(tiles0 + (2 + w) * TILE, vb, s.v_row, kb0 + w * WG_BK, s.len);
    }
    if (tiles > 0) stage(0, 0);
    cp_async_commit();

    float dka[OT][4], dva[OT][4];
#pragma unroll
    for (int ot = 0; ot < OT; ++ot)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[ot][e] = dva[ot][e] = 0.0f;
    float st[NQ][4], dpt[NQ][4];  // S^T and dP^T of a tile, then P^T and dS^T
    u32 pa[PC][4], sa[PC][4];      // P^T and dS^T rounded to bf16 as A fragments
    const u32 ka = ta + (u32)wg * TILE, va = ta + (u32)(2 + wg) * TILE;
    for (i64 tile = 0; tile < tiles; ++tile) {
        const int buf = (int)(tile & 1);
        const i64 i0 = first + (tile % per_head) * WG_BK;
        tiles_landed();  // this tile is in; every warpgroup is done with the other buffer
        if (tile + 1 < tiles) stage(buf ^ 1, tile + 1);
        cp_async_commit();
        const u32 qa = ta + (u32)(4 + 2 * buf) * TILE, da = qa + TILE;
        wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            u32 at = (u32)(kc >> 2) * WG_HALF + (u32)(kc & 3) * 32u;
            wgmma_bf16_ss_n64<0>(&st[0][0], wgmma_desc(ka + at, 16, 1024), wgmma_desc(qa + at, 16, 1024), kc > 0);
            wgmma_bf16_ss_n64<0>(&dpt[0][0], wgmma_desc(va + at, 16, 1024), wgmma_desc(da + at, 16, 1024), kc > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operands(&st[0][0], NQ * 4);
        wgmma_fence_operands(&dpt[0][0], NQ * 4);
        pds_tile_t<NQ>(s, st, dpt, ls2[buf], dls2[buf], k0, i0, g, c, off);
#pragma unroll
        for (int kc = 0; kc < PC; ++kc) {
            c_to_a(pa[kc], st[2 * kc], st[2 * kc + 1]);
            c_to_a(sa[kc], dpt[2 * kc], dpt[2 * kc + 1]);
        }
        wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < PC; ++kc) {
            wgmma_bf16_rs<D, 1>(&dva[0][0], pa[kc], wgmma_desc(da + (u32)kc * 2048u, WG_HALF, 1024), 1);
            wgmma_bf16_rs<D, 1>(&dka[0][0], sa[kc], wgmma_desc(qa + (u32)kc * 2048u, WG_HALF, 1024), 1);
        }
        wgmma_commit();
        // Waited for here, not before the next tile's barrier (as the dQ pass does): across
        // the loop, ptxas serialises the products (C7515). They run while the next tile's
        // copies, issued above, land.
        wgmma_wait<0>();
        wgmma_fence_operands(&dka[0][0], OT * 4);
        wgmma_fence_operands(&dva[0][0], OT * 4);
    }
    write_dkv_rows<D>(s, dk, dv, dka, dva, k0, kvh, g, c);
#else
    __trap();  // the host launches it only where kernels are built for sm_90a
#endif
}

// The backward's entry points: a pass (dq or dkv) on KIND (mma: four warps per block;
// wgmma: two warpgroups) at head dim D.
#define ATTENTION_BWD(KIND, D, THREADS)                                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS) attn_bwd_dq_##KIND##_d##D##_bf16(                \
        AttnShape s, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,      \
        const float* delta, float* dq) {                                                                   \
        attn_bwd_dq_##KIND##_impl<D>(s, q, k, v, dout, lse, delta, dq);                                    \
    }                                                                                                      \
    ARTIST_EXPORT(attn_bwd_dq_##KIND##_d##D##_bf16)                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS) attn_bwd_dkv_##KIND##_d##D##_bf16(               \
        AttnShape s, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,      \
        const float* delta, float* dk, float* dv) {                                                        \
        attn_bwd_dkv_##KIND##_impl<D>(s, q, k, v, dout, lse, delta, dk, dv);                               \
    }                                                                                                      \
    ARTIST_EXPORT(attn_bwd_dkv_##KIND##_d##D##_bf16)
ATTENTION_BWD(mma, 64, 128)
ATTENTION_BWD(mma, 128, 128)
ATTENTION_BWD(wgmma, 64, 256)
ATTENTION_BWD(wgmma, 128, 256)
