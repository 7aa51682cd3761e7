// Fused AdamW on f32 weights (the parameters themselves, or the f32 masters of half-precision
// ones), moments and gradients, operation for operation as the CPU optimiser (itself
// torch.optim.AdamW with foreach=False). Every product and sum is rounded on its own
// (__fmul_rn and friends forbid fused multiply-adds), so the GPU gives the CPU's bits.

extern "C" __global__ void adamw_f32(i64 n, float* p, float* m, float* v, const float* g, float decay, float w1,
                                     float b2, float c2, float eps, float bc2_sqrt, float step_size) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float pi = __fmul_rn(p[i], decay);
        float mi = __fadd_rn(m[i], __fmul_rn(w1, __fsub_rn(gi, m[i])));
        float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(c2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fadd_rn(pi, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
    }
}
ARTIST_EXPORT(adamw_f32)
