// The backward of chunked token log-probabilities: given logits z: [rows, vocab] (f32, the
// unscaled projection), the upstream gradient g, each row's log-sum-exp and target, write
//   dz[i, j] = -g_i s exp(s z[i, j] - lse_i) + (j == t_i) g_i s,    s = 1 / temperature,
// in place over z, as the CPU backend does.

extern "C" __global__ void logprob_grad_f32(i64 rows, i64 vocab, float scale, const float* g, const float* lse,
                                            const u32* targets, float* z) {
    GRID_STRIDE(idx, rows * vocab) {
        i64 i = idx / vocab, j = idx - i * vocab;
        float gi = g[i] * scale;
        float v = -gi * expf(z[idx] * scale - lse[i]);
        if (j == (i64)targets[i]) v += gi;
        z[idx] = v;
    }
}
ARTIST_EXPORT(logprob_grad_f32)
