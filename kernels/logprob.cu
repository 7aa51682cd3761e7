// The backward of chunked token log-probabilities: given logits z: [rows, vocab] (f32, the
// unscaled projection), the upstream gradient g, each row's log-sum-exp and target, write
//   dz[i, j] = -g_i s exp(s z[i, j] - lse_i) + (j == t_i) g_i s,    s = 1 / temperature,
// in place over z, as the CPU backend does; with a row's entropy h_i and its gradient gh_i
// (an entropy bonus in the loss) the term -gh_i s p_ij (log p_ij + h_i) joins it.

__device__ __forceinline__ float logprob_grad_one(float z, float gi, float lse, bool target) {
    float v = -gi * expf(z - lse);
    return target ? v + gi : v;
}

// With the entropy h_i of the row and its upstream gradient gh_i (both times s in gh):
//   d h_i / d z_ij = -s p_ij (log p_ij + h_i),   log p_ij = s z_ij - lse_i.
__device__ __forceinline__ float logprob_entropy_grad_one(float z, float gi, float lse, float ghi, float hi,
                                                          bool target) {
    float lp = z - lse;
    float v = -expf(lp) * (gi + ghi * (lp + hi));
    return target ? v + gi : v;
}

// `vec` != 0 (the host's choice: vocab a multiple of 8, z aligned for Vec8): eight logits
// of one row per thread, as whole vectors. `ent` != 0: `e` holds the rows' entropy
// gradients then their entropies, `[gh; h]`, and the entropy term joins the gradient.
extern "C" __global__ void logprob_grad_f32(i64 rows, i64 vocab, int vec, float scale, const float* g,
                                            const float* lse, const u32* targets, int ent, const float* e,
                                            float* z) {
    if (vec) {
        const i64 per_row = vocab / 8;
        GRID_STRIDE(idx, rows * per_row) {
            i64 i = idx / per_row, j0 = (idx - i * per_row) * 8;
            float gi = g[i] * scale, l = lse[i];
            i64 t = (i64)targets[i];
            Vec8<float> zv;
            load8(zv, z + i * vocab + j0);
            if (ent) {
                float ghi = e[i] * scale, hi = e[rows + i];
#pragma unroll
                for (int k = 0; k < 8; ++k)
                    zv.e[k] = logprob_entropy_grad_one(zv.e[k] * scale, gi, l, ghi, hi, j0 + k == t);
            } else {
#pragma unroll
                for (int k = 0; k < 8; ++k) zv.e[k] = logprob_grad_one(zv.e[k] * scale, gi, l, j0 + k == t);
            }
            store8(z + i * vocab + j0, zv);
        }
        return;
    }
    GRID_STRIDE(idx, rows * vocab) {
        i64 i = idx / vocab, j = idx - i * vocab;
        bool target = j == (i64)targets[i];
        z[idx] = ent ? logprob_entropy_grad_one(z[idx] * scale, g[i] * scale, lse[i], e[i] * scale, e[rows + i], target)
                     : logprob_grad_one(z[idx] * scale, g[i] * scale, lse[i], target);
    }
}
ARTIST_EXPORT(logprob_grad_f32)
