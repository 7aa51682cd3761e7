// Fused AdamW on f32 weights (the parameters themselves, or the f32 masters of half-precision
// ones), moments and gradients, operation for operation as the CPU optimiser (itself
// torch.optim.AdamW with foreach=False). Every product and sum is rounded on its own
// (__fmul_rn and friends forbid fused multiply-adds), so the GPU gives the CPU's bits.

// One element's update: p, m and v in place.
__device__ __forceinline__ void adamw_one(float* p, float* m, float* v, float gi, float decay, float w1, float b2,
                                          float c2, float eps, float bc2_sqrt, float step_size) {
    float pi = __fmul_rn(*p, decay);
    float mi = __fadd_rn(*m, __fmul_rn(w1, __fsub_rn(gi, *m)));
    float vi = __fadd_rn(__fmul_rn(*v, b2), __fmul_rn(__fmul_rn(c2, gi), gi));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    *p = __fadd_rn(pi, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
    *m = mi;
    *v = vi;
}

// `vec` != 0: every pointer is aligned for Vec8 (the host's choice): eight elements per
// thread and step, as whole vectors.
extern "C" __global__ void adamw_f32(i64 n, int vec, float* p, float* m, float* v, const float* g, float decay,
                                     float w1, float b2, float c2, float eps, float bc2_sqrt, float step_size) {
    i64 done = 0;
    if (vec) {
        VEC8_STRIDE(k, n) {
            Vec8<float> pv, mv, vv, gv;
            load8(pv, p + 8 * k);
            load8(mv, m + 8 * k);
            load8(vv, v + 8 * k);
            load8(gv, g + 8 * k);
#pragma unroll
            for (int e = 0; e < 8; ++e)
                adamw_one(&pv.e[e], &mv.e[e], &vv.e[e], gv.e[e], decay, w1, b2, c2, eps, bc2_sqrt, step_size);
            store8(p + 8 * k, pv);
            store8(m + 8 * k, mv);
            store8(v + 8 * k, vv);
        }
        done = n / 8 * 8;
    }
    for (i64 i = done + global_thread(); i < n; i += global_threads())
        adamw_one(p + i, m + i, v + i, g[i], decay, w1, b2, c2, eps, bc2_sqrt, step_size);
}
ARTIST_EXPORT(adamw_f32)
