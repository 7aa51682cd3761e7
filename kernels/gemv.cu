// Matrix-vector products for decode steps: out[r][j] = sum_k x[r][k] w[j][k] for f32 x
// [m, k] with m <= GEMV_MAX_M, a half-precision weight w [n, k] and f32 out [m, n]. At decode
// batch sizes the weights are the bytes that matter: each is read once, 16 bytes at a time,
// and widened in registers (exactly, as the CPU widens it), instead of being widened into an
// f32 copy for cuBLAS (read 2 bytes, write 4, read 4 again). A group of GEMV_NR weight rows
// is served by `split` warps of one block, each taking one contiguous slice of k, so that
// every load of x serves all the group's rows; lanes split a slice into 8-element chunks.
// A warp's partial sums are reduced by shuffles in a fixed order, then the slices' sums are
// added in slice order. The host picks `split` from k and n alone (ops.rs, `gemv_split`):
// enough warps to keep the memory busy when n is small (a 1.5B model's down projection has
// only 384 row groups, for 132 SMs), never so many that a warp's slice leaves lanes idle.
// Each output depends on its own row of x alone, summed in the same order whatever m is
// (so padding a decode step with rows changes no bit of the others).
//
// `round_x` != 0 rounds each activation to T before the product (a linear layer whose
// products run in T, `Tensor::linear_in`): the values of T's GEMM into f32, with no pass
// over x to round it first.
//
// Host conditions (ops.rs): k a multiple of 8, x and w contiguous at 16-byte aligned
// addresses, blocks of GEMV_BLOCK_WARPS warps, `split` one of 1, 2, 4, 8.

#define GEMV_MAX_M 8
#define GEMV_NR 4
#define GEMV_BLOCK_WARPS 8
static_assert(GEMV_MAX_M * GEMV_NR == 32, "one lane per output of a row group");

template <class T>
union Half8 {
    u32x4 v;
    T h[8];
};
union Float8 {
    u32x4 v[2];
    float f[8];
};

template <class T>
__device__ void gemv_impl(i64 m, i64 k, i64 n, const float* x, const T* w, float* out, int round_x, int split) {
    __shared__ float part[GEMV_BLOCK_WARPS][GEMV_MAX_M][GEMV_NR];
    const int lane = (int)(threadIdx.x & 31);
    const int wib = (int)(threadIdx.x >> 5);  // warp in the block
    const int per_block = GEMV_BLOCK_WARPS / split;  // row groups per block
    const int slice = wib % split;
    const i64 chunks = k / 8;
    const i64 per_slice = (chunks + split - 1) / split;
    const i64 c_begin = slice * per_slice;
    const i64 c_end = c_begin + per_slice < chunks ? c_begin + per_slice : chunks;
    const i64 groups = (n + GEMV_NR - 1) / GEMV_NR;
    // Whole blocks iterate together (the barriers below); a group past n computes zeros.
    for (i64 g0 = (i64)blockIdx.x * per_block; g0 < groups; g0 += (i64)gridDim.x * per_block) {
        const i64 j0 = (g0 + wib / split) * GEMV_NR;
        float acc[GEMV_MAX_M][GEMV_NR];
#pragma unroll
        for (int r = 0; r < GEMV_MAX_M; ++r)
#pragma unroll
            for (int q = 0; q < GEMV_NR; ++q) acc[r][q] = 0.0f;
        for (i64 c = c_begin + lane; c < c_end; c += 32) {
            float wv[GEMV_NR][8];
#pragma unroll
            for (int q = 0; q < GEMV_NR; ++q) {
                Half8<T> hw;
                hw.v = j0 + q < n ? *reinterpret_cast<const u32x4*>(w + (j0 + q) * k + c * 8) : u32x4{0u, 0u, 0u, 0u};
#pragma unroll
                for (int e = 0; e < 8; ++e) wv[q][e] = to_f32(hw.h[e]);
            }
#pragma unroll
            for (int r = 0; r < GEMV_MAX_M; ++r) {
                if (r >= m) break;
                Float8 xv;
                const u32x4* xp = reinterpret_cast<const u32x4*>(x + r * k + c * 8);
                xv.v[0] = xp[0];
                xv.v[1] = xp[1];
                if (round_x) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) xv.f[e] = to_f32(from_f32<T>(xv.f[e]));
                }
#pragma unroll
                for (int q = 0; q < GEMV_NR; ++q)
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[r][q] += xv.f[e] * wv[q][e];
            }
        }
#pragma unroll
        for (int r = 0; r < GEMV_MAX_M; ++r) {
            if (r >= m) break;
#pragma unroll
            for (int q = 0; q < GEMV_NR; ++q) {
                float s = warp_sum(acc[r][q]);
                if (lane == 0) part[wib][r][q] = s;
            }
        }
        __syncthreads();
        if (slice == 0) {
            // Lane (r, q) adds output r's row q over the slices, in slice order.
            const int r = lane / GEMV_NR, q = lane % GEMV_NR;
            if (r < m && j0 + q < n) {
                float s = part[wib][r][q];
                for (int t = 1; t < split; ++t) s += part[wib + t][r][q];
                out[r * n + j0 + q] = s;
            }
        }
        __syncthreads();
    }
}

#define GEMV(T, S)                                                                            \
    extern "C" __global__ void gemv_##S(i64 m, i64 k, i64 n, const float* x, const T* w, float* out, \
                                        int round_x, int split) {                                     \
        gemv_impl<T>(m, k, n, x, w, out, round_x, split);                                             \
    }                                                                                                 \
    ARTIST_EXPORT(gemv_##S)
GEMV(bf16, bf16)
GEMV(f16, f16)
