// The backward of chunked token log-probabilities: given logits z: [rows, vocab] (f32, the
// unscaled projection), the upstream gradient g, each row's log-sum-exp and target, write
//   dz[i, j] = -g_i s exp(s z[i, j] - lse_i) + (j == t_i) g_i s,    s = 1 / temperature,
// in place over z, as the CPU backend does.

__device__ __forceinline__ float logprob_grad_one(float z, float gi, float lse, bool target) {
    float v = -gi * expf(z - lse);
    return target ? v + gi : v;
}

// `vec` != 0 (the host's choice: vocab a multiple of 8, z aligned for Vec8): eight logits
// of one row per thread, as whole vectors.
extern "C" __global__ void logprob_grad_f32(i64 rows, i64 vocab, int vec, float scale, const float* g,
                                            const float* lse, const u32* targets, float* z) {
    if (vec) {
        const i64 per_row = vocab / 8;
        GRID_STRIDE(idx, rows * per_row) {
            i64 i = idx / per_row, j0 = (idx - i * per_row) * 8;
            float gi = g[i] * scale, l = lse[i];
            i64 t = (i64)targets[i];
            Vec8<float> zv;
            load8(zv, z + i * vocab + j0);
#pragma unroll
            for (int e = 0; e < 8; ++e) zv.e[e] = logprob_grad_one(zv.e[e] * scale, gi, l, j0 + e == t);
            store8(z + i * vocab + j0, zv);
        }
        return;
    }
    GRID_STRIDE(idx, rows * vocab) {
        i64 i = idx / vocab, j = idx - i * vocab;
        z[idx] = logprob_grad_one(z[idx] * scale, g[i] * scale, lse[i], j == (i64)targets[i]);
    }
}
ARTIST_EXPORT(logprob_grad_f32)
