// Rotate-half rotary embedding (Hugging Face Qwen2/Llama) on contiguous x: [b, t, h, d] with
// f32 cos, sin: [cb, t, d/2], cb = 1 (positions shared by the batch) or b:
//   out[i] = x[i] cos[i] - x[i + d/2] sin[i],  out[i + d/2] = x[i + d/2] cos[i] + x[i] sin[i].
// One thread per rotated pair, or per 8 consecutive pairs when `vec` (the host's choice: d / 2
// a multiple of 8 and every pointer aligned for Vec8, common.cuh), the same arithmetic per
// element either way.

__device__ __forceinline__ void rotate(float a, float b, float c, float s, float* lo, float* hi) {
    *lo = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    *hi = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

template <class T>
__device__ void rope_impl(i64 b, i64 t, i64 h, i64 d, i64 cb, int vec, const T* x, const float* cosv,
                          const float* sinv, T* y) {
    const i64 half = d / 2, w = vec ? 8 : 1, per_row = half / w;
    GRID_STRIDE(idx, b * t * h * per_row) {
        i64 i = (idx % per_row) * w;
        i64 rest = idx / per_row;  // (bi * t + ti) * h + hi
        i64 bt = rest / h;
        i64 bi = bt / t, ti = bt - bi * t;
        i64 row = (cb == 1 ? 0 : bi) * t + ti;
        const float* cr = cosv + row * half + i;
        const float* sr = sinv + row * half + i;
        const T* xr = x + rest * d + i;
        T* yr = y + rest * d + i;
        if (vec) {
            Vec8<T> a, bb, lo, hi;
            Vec8<float> c, s;
            load8(a, xr);
            load8(bb, xr + half);
            load8(c, cr);
            load8(s, sr);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float l, u;
                rotate(to_f32(a.e[e]), to_f32(bb.e[e]), c.e[e], s.e[e], &l, &u);
                lo.e[e] = from_f32<T>(l);
                hi.e[e] = from_f32<T>(u);
            }
            store8(yr, lo);
            store8(yr + half, hi);
        } else {
            float l, u;
            rotate(to_f32(xr[0]), to_f32(xr[half]), cr[0], sr[0], &l, &u);
            yr[0] = from_f32<T>(l);
            yr[half] = from_f32<T>(u);
        }
    }
}

#define ROPE(T, S)                                                                                  \
    extern "C" __global__ void rope_##S(i64 b, i64 t, i64 h, i64 d, i64 cb, int vec, const T* x,   \
                                        const float* cosv, const float* sinv, T* y) {               \
        rope_impl<T>(b, t, h, d, cb, vec, x, cosv, sinv, y);                                        \
    }                                                                                               \
    ARTIST_EXPORT(rope_##S)
FLOAT_TYPES(ROPE)

// A cached forward pass's attention inputs from the fused projection, in one launch:
// qkv: [rows, (heads + 2 kv_heads) * d] contiguous, plus its bias [(heads + 2 kv_heads) * d]
// when not null (added and rounded to T as the add kernel does), cos, sin: [rows, d/2] f32. The queries
// get RoPE into q_out [rows, heads, d]; the keys get RoPE and the values are copied into row
// slots[r] of the pools [pool_rows, kv_heads, d] (a paged KV cache's new positions). The
// rotation is rope_impl's, operation for operation.
template <class T>
__device__ __forceinline__ float with_bias(const T* x, const T* bias, i64 col, i64 at) {
    return bias ? to_f32(from_f32<T>(__fadd_rn(to_f32(x[at]), to_f32(bias[col])))) : to_f32(x[at]);
}

// The pools may hold another float type C than the activations T (a bf16 KV cache under f32
// activations): keys and values are rounded to C once, after RoPE, as they are stored. With
// `vec`, a thread takes 8 consecutive pairs (and 8 consecutive values), as in rope_impl.
// Eight consecutive inputs x[at ..] plus bias[col ..] (when not null), each sum rounded to T
// as with_bias rounds it.
template <class T>
__device__ __forceinline__ void load_biased8(float r[8], const T* x, const T* bias, i64 col, i64 at) {
    Vec8<T> xv, bv;
    load8(xv, x + at);
    if (bias) load8(bv, bias + col);
#pragma unroll
    for (int e = 0; e < 8; ++e)
        r[e] = bias ? to_f32(from_f32<T>(__fadd_rn(to_f32(xv.e[e]), to_f32(bv.e[e])))) : to_f32(xv.e[e]);
}

// Element i's rotated pair (lo at i, hi at i + d/2) of head hh of row r: a query head's into
// q_out (rounded to T), a key head's into row slots[r] of k_pool (rounded to T, then to C).
template <class T, class C>
__device__ __forceinline__ void store_rotated(float lo, float hi, i64 r, i64 hh, i64 i, i64 heads, i64 kv_heads,
                                              i64 d, const u32* slots, T* q_out, C* k_pool) {
    if (hh < heads) {
        T* y = q_out + (r * heads + hh) * d;
        y[i] = from_f32<T>(lo);
        y[i + d / 2] = from_f32<T>(hi);
    } else {
        C* y = k_pool + ((i64)slots[r] * kv_heads + (hh - heads)) * d;
        y[i] = from_f32<C>(to_f32(from_f32<T>(lo)));
        y[i + d / 2] = from_f32<C>(to_f32(from_f32<T>(hi)));
    }
}

template <class T, class C>
__device__ void qkv_rope_cache_impl(i64 rows, i64 heads, i64 kv_heads, i64 d, int vec, const T* qkv, const T* bias,
                                    const float* cosv, const float* sinv, const u32* slots, T* q_out, C* k_pool,
                                    C* v_pool) {
    const i64 half = d / 2, width = (heads + 2 * kv_heads) * d;
    if (vec) {
        const i64 per_head = half / 8;
        GRID_STRIDE(idx, rows * (heads + kv_heads) * per_head) {
            i64 i = (idx % per_head) * 8;
            i64 rest = idx / per_head;  // r * (heads + kv_heads) + hh
            i64 r = rest / (heads + kv_heads), hh = rest - r * (heads + kv_heads);
            float a[8], bb[8];
            load_biased8(a, qkv, bias, hh * d + i, r * width + hh * d + i);
            load_biased8(bb, qkv, bias, hh * d + i + half, r * width + hh * d + i + half);
            Vec8<float> c, s;
            load8(c, cosv + r * half + i);
            load8(s, sinv + r * half + i);
            float lo[8], hi[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) rotate(a[e], bb[e], c.e[e], s.e[e], &lo[e], &hi[e]);
            if (hh < heads) {
                Vec8<T> l, u;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    l.e[e] = from_f32<T>(lo[e]);
                    u.e[e] = from_f32<T>(hi[e]);
                }
                T* y = q_out + (r * heads + hh) * d + i;
                store8(y, l);
                store8(y + half, u);
            } else {
                Vec8<C> l, u;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    l.e[e] = from_f32<C>(to_f32(from_f32<T>(lo[e])));
                    u.e[e] = from_f32<C>(to_f32(from_f32<T>(hi[e])));
                }
                C* y = k_pool + ((i64)slots[r] * kv_heads + (hh - heads)) * d + i;
                store8(y, l);
                store8(y + half, u);
            }
        }
        GRID_STRIDE(idx, rows * kv_heads * (d / 8)) {
            i64 e0 = (idx % (d / 8)) * 8, rg = idx / (d / 8);
            i64 r = rg / kv_heads, g = rg - r * kv_heads;
            i64 col = (heads + kv_heads + g) * d + e0;
            float xv[8];
            load_biased8(xv, qkv, bias, col, r * width + col);
            Vec8<C> out;
#pragma unroll
            for (int e = 0; e < 8; ++e) out.e[e] = from_f32<C>(to_f32(from_f32<T>(xv[e])));
            store8(v_pool + ((i64)slots[r] * kv_heads + g) * d + e0, out);
        }
        return;
    }
    GRID_STRIDE(idx, rows * (heads + kv_heads) * half) {
        i64 i = idx % half;
        i64 rest = idx / half;  // r * (heads + kv_heads) + hh
        i64 r = rest / (heads + kv_heads), hh = rest - r * (heads + kv_heads);
        float c = cosv[r * half + i], s = sinv[r * half + i];
        float a = with_bias(qkv, bias, hh * d + i, r * width + hh * d + i);
        float bb = with_bias(qkv, bias, hh * d + i + half, r * width + hh * d + i + half);
        float lo, hi;
        rotate(a, bb, c, s, &lo, &hi);
        store_rotated(lo, hi, r, hh, i, heads, kv_heads, d, slots, q_out, k_pool);
    }
    GRID_STRIDE(idx, rows * kv_heads * d) {
        i64 e = idx % d, rg = idx / d;
        i64 r = rg / kv_heads, g = rg - r * kv_heads;
        i64 col = (heads + kv_heads + g) * d + e;
        float x = to_f32(from_f32<T>(with_bias(qkv, bias, col, r * width + col)));
        v_pool[((i64)slots[r] * kv_heads + g) * d + e] = from_f32<C>(x);
    }
}

#define QKV_ROPE_CACHE(T, S)                                                                              \
    extern "C" __global__ void qkv_rope_cache_##S(i64 rows, i64 heads, i64 kv_heads, i64 d, int vec,      \
                                                  const T* qkv, const T* bias, const float* cosv,         \
                                                  const float* sinv, const u32* slots, T* q_out, T* k_pool,\
                                                  T* v_pool) {                                            \
        qkv_rope_cache_impl<T, T>(rows, heads, kv_heads, d, vec, qkv, bias, cosv, sinv, slots, q_out,     \
                                  k_pool, v_pool);                                                        \
    }                                                                                                     \
    ARTIST_EXPORT(qkv_rope_cache_##S)
FLOAT_TYPES(QKV_ROPE_CACHE)

// qkv_rope_cache with Qwen3's per-head RMSNorm of queries and keys before RoPE, in one
// launch: one block per (row, head) of rows * (heads + 2 kv_heads). A query or key head's
// values (after the bias, rounded to T) are normalised as rms_norm_impl normalises a row of d
// (the same threads, launched with as many as row_threads gives d, summing the same
// elements in the same order, so the same bits), by qw or kw [d], each normalised value
// rounded to T; then rotated and stored as qkv_rope_cache stores them. Value heads are
// copied into v_pool.
template <class T, class C>
__device__ void qkv_norm_rope_cache_impl(i64 rows, i64 heads, i64 kv_heads, i64 d, float eps, const T* qkv,
                                         const T* bias, const T* qw, const T* kw, const float* cosv,
                                         const float* sinv, const u32* slots, T* q_out, C* k_pool, C* v_pool) {
    const i64 all = heads + 2 * kv_heads, half = d / 2, width = all * d;
    for (i64 b = blockIdx.x; b < rows * all; b += gridDim.x) {
        const i64 r = b / all, hh = b - r * all, col = hh * d, at = r * width + col;
        if (hh >= heads + kv_heads) {
            C* y = v_pool + ((i64)slots[r] * kv_heads + (hh - heads - kv_heads)) * d;
            for (i64 e = threadIdx.x; e < d; e += blockDim.x)
                y[e] = from_f32<C>(to_f32(from_f32<T>(with_bias(qkv, bias, col + e, at + e))));
            continue;  // the whole block: no barrier is skipped by part of it
        }
        float ss = 0.0f;
        ROW_CHUNKS(c, d) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float v = with_bias(qkv, bias, col + 8 * c + e, at + 8 * c + e);
                ss += v * v;
            }
        }
        ROW_TAIL(j, d) {
            float v = with_bias(qkv, bias, col + j, at + j);
            ss += v * v;
        }
        ss = block_sum(ss);
        const float inv = 1.0f / sqrtf(ss / (float)d + eps);
        const T* w = hh < heads ? qw : kw;
        for (i64 i = threadIdx.x; i < half; i += blockDim.x) {
            auto normed = [&](i64 e) {
                T x = from_f32<T>(with_bias(qkv, bias, col + e, at + e));
                float n = to_f32(from_f32<T>(__fmul_rn(to_f32(x), inv)));
                return to_f32(from_f32<T>(__fmul_rn(to_f32(w[e]), n)));
            };
            float lo, hi;
            rotate(normed(i), normed(i + half), cosv[r * half + i], sinv[r * half + i], &lo, &hi);
            store_rotated(lo, hi, r, hh, i, heads, kv_heads, d, slots, q_out, k_pool);
        }
    }
}

#define QKV_NORM_ROPE_CACHE(T, S)                                                                         \
    ROW_KERNEL qkv_norm_rope_cache_##S(i64 rows, i64 heads, i64 kv_heads, i64 d, float eps, const T* qkv, \
                                       const T* bias, const T* qw, const T* kw, const float* cosv,        \
                                       const float* sinv, const u32* slots, T* q_out, T* k_pool,          \
                                       T* v_pool) {                                                       \
        qkv_norm_rope_cache_impl<T, T>(rows, heads, kv_heads, d, eps, qkv, bias, qw, kw, cosv, sinv, slots, \
                                       q_out, k_pool, v_pool);                                            \
    }                                                                                                     \
    ARTIST_EXPORT(qkv_norm_rope_cache_##S)
FLOAT_TYPES(QKV_NORM_ROPE_CACHE)

ROW_KERNEL qkv_norm_rope_cache_f32_bf16kv(i64 rows, i64 heads, i64 kv_heads, i64 d, float eps, const float* qkv,
                                          const float* bias, const float* qw, const float* kw, const float* cosv,
                                          const float* sinv, const u32* slots, float* q_out, bf16* k_pool,
                                          bf16* v_pool) {
    qkv_norm_rope_cache_impl<float, bf16>(rows, heads, kv_heads, d, eps, qkv, bias, qw, kw, cosv, sinv, slots, q_out,
                                          k_pool, v_pool);
}
ARTIST_EXPORT(qkv_norm_rope_cache_f32_bf16kv)

// f32 activations into a bf16 KV cache.
extern "C" __global__ void qkv_rope_cache_f32_bf16kv(i64 rows, i64 heads, i64 kv_heads, i64 d, int vec,
                                                     const float* qkv, const float* bias, const float* cosv,
                                                     const float* sinv, const u32* slots, float* q_out, bf16* k_pool,
                                                     bf16* v_pool) {
    qkv_rope_cache_impl<float, bf16>(rows, heads, kv_heads, d, vec, qkv, bias, cosv, sinv, slots, q_out, k_pool,
                                     v_pool);
}
ARTIST_EXPORT(qkv_rope_cache_f32_bf16kv)
