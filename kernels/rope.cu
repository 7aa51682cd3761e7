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
