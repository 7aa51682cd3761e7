// Rotate-half rotary embedding (Hugging Face Qwen2/Llama) on contiguous x: [b, t, h, d] with
// f32 cos, sin: [cb, t, d/2], cb = 1 (positions shared by the batch) or b:
//   out[i] = x[i] cos[i] - x[i + d/2] sin[i],  out[i + d/2] = x[i + d/2] cos[i] + x[i] sin[i].
// One thread per rotated pair.

template <class T>
__device__ void rope_impl(i64 b, i64 t, i64 h, i64 d, i64 cb, const T* x, const float* cosv, const float* sinv,
                          T* y) {
    i64 half = d / 2;
    GRID_STRIDE(idx, b * t * h * half) {
        i64 i = idx % half;
        i64 rest = idx / half;  // (bi * t + ti) * h + hi
        i64 bt = rest / h;
        i64 bi = bt / t, ti = bt - bi * t;
        i64 row = (cb == 1 ? 0 : bi) * t + ti;
        float c = cosv[row * half + i], s = sinv[row * half + i];
        i64 base = rest * d;
        float a = to_f32(x[base + i]), bb = to_f32(x[base + i + half]);
        y[base + i] = from_f32<T>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s)));
        y[base + i + half] = from_f32<T>(__fadd_rn(__fmul_rn(bb, c), __fmul_rn(a, s)));
    }
}

#define ROPE(T, S)                                                                                  \
    extern "C" __global__ void rope_##S(i64 b, i64 t, i64 h, i64 d, i64 cb, const T* x,            \
                                        const float* cosv, const float* sinv, T* y) {               \
        rope_impl<T>(b, t, h, d, cb, x, cosv, sinv, y);                                             \
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
// activations): keys and values are rounded to C once, after RoPE, as they are stored.
template <class T, class C>
__device__ void qkv_rope_cache_impl(i64 rows, i64 heads, i64 kv_heads, i64 d, const T* qkv, const T* bias,
                                    const float* cosv, const float* sinv, const u32* slots, T* q_out, C* k_pool,
                                    C* v_pool) {
    i64 half = d / 2, width = (heads + 2 * kv_heads) * d;
    GRID_STRIDE(idx, rows * (heads + kv_heads) * half) {
        i64 i = idx % half;
        i64 rest = idx / half;  // r * (heads + kv_heads) + hh
        i64 r = rest / (heads + kv_heads), hh = rest - r * (heads + kv_heads);
        float c = cosv[r * half + i], s = sinv[r * half + i];
        float a = with_bias(qkv, bias, hh * d + i, r * width + hh * d + i);
        float bb = with_bias(qkv, bias, hh * d + i + half, r * width + hh * d + i + half);
        float lo = __fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s));
        float hi = __fadd_rn(__fmul_rn(bb, c), __fmul_rn(a, s));
        if (hh < heads) {
            T* y = q_out + (r * heads + hh) * d;
            y[i] = from_f32<T>(lo);
            y[i + half] = from_f32<T>(hi);
        } else {
            C* y = k_pool + ((i64)slots[r] * kv_heads + (hh - heads)) * d;
            y[i] = from_f32<C>(to_f32(from_f32<T>(lo)));
            y[i + half] = from_f32<C>(to_f32(from_f32<T>(hi)));
        }
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
    extern "C" __global__ void qkv_rope_cache_##S(i64 rows, i64 heads, i64 kv_heads, i64 d, const T* qkv, \
                                                  const T* bias, const float* cosv, const float* sinv,    \
                                                  const u32* slots, T* q_out, T* k_pool, T* v_pool) {     \
        qkv_rope_cache_impl<T, T>(rows, heads, kv_heads, d, qkv, bias, cosv, sinv, slots, q_out, k_pool,  \
                                  v_pool);                                                                \
    }                                                                                                     \
    ARTIST_EXPORT(qkv_rope_cache_##S)
FLOAT_TYPES(QKV_ROPE_CACHE)

// f32 activations into a bf16 KV cache.
extern "C" __global__ void qkv_rope_cache_f32_bf16kv(i64 rows, i64 heads, i64 kv_heads, i64 d, const float* qkv,
                                                     const float* bias, const float* cosv, const float* sinv,
                                                     const u32* slots, float* q_out, bf16* k_pool, bf16* v_pool) {
    qkv_rope_cache_impl<float, bf16>(rows, heads, kv_heads, d, qkv, bias, cosv, sinv, slots, q_out, k_pool, v_pool);
}
ARTIST_EXPORT(qkv_rope_cache_f32_bf16kv)
