// Kernels that test the emulator itself (crates/tensor/src/cuda/emulator.rs), not the
// backend: compiled into the emulator build only, named `emu_selftest_*`, and left out of the
// kernel list that CI compares with the backend's inventory.

// cp.async: one block of 32 threads; each copies its 16 bytes of three rows of `src` into
// three shared rows, one commit group per row, the third with src_bytes 0 (zeros). `out`
// gets, per thread, 4 words at each of four moments (16 u32x4 per thread):
//   0: row 0 right after wait<2> (its group has landed);
//   1: row 1 at the same moment (in flight: still the shared row's old contents, unless the
//      copies land at once);
//   2: row 1 after wait<1>;
//   3: row 2 after wait<0> (zeros).
// The shared rows start as `fill` everywhere.
extern "C" __global__ void emu_selftest_cp_async(const u32x4* src, u32 fill, u32x4* out) {
    __align__(16) __shared__ u32x4 rows[3][32];
    const int t = (int)threadIdx.x;
    for (int r = 0; r < 3; ++r) rows[r][t] = u32x4{fill, fill, fill, fill};
    __syncthreads();
    for (int r = 0; r < 3; ++r) {
        cp_async_16(&rows[r][t], &src[r * 32 + t], r == 2 ? 0 : 16);
        cp_async_commit();
    }
    cp_async_wait<2>();
    out[t * 4 + 0] = rows[0][t];
    out[t * 4 + 1] = rows[1][t];
    cp_async_wait<1>();
    out[t * 4 + 2] = rows[1][t];
    cp_async_wait<0>();
    out[t * 4 + 3] = rows[2][t];
}
ARTIST_EXPORT(emu_selftest_cp_async)

// Two warps and no barrier: warp 1 sets a shared flag at once, warp 0 reads it after three
// shuffles. The emulator runs warp 0 to its end before warp 1 starts, so it reads 0 (a warp
// that ran in lockstep with the other would read 1). out[0] = what warp 0 read.
extern "C" __global__ void emu_selftest_warp_ahead(u32* out) {
    __shared__ u32 flag;
    const int t = (int)threadIdx.x;
    if (t == 0) flag = 0;
    __syncthreads();
    if (t >= 32) {
        flag = 1;
        return;
    }
    u32 v = (u32)t;
    for (int i = 0; i < 3; ++i) v = __shfl_xor_sync(FULL_MASK, v, 1);
    if (t == 0) out[0] = flag;
    (void)v;
}
ARTIST_EXPORT(emu_selftest_warp_ahead)

// A barrier not every thread reaches: lanes 0-15 wait at __syncthreads while lanes 16-31
// shuffle among themselves. The launch must fail with an error, not hang.
extern "C" __global__ void emu_selftest_divergent_barrier(u32* out) {
    const int t = (int)threadIdx.x;
    if (t < 16) {
        __syncthreads();
    } else {
        out[t] = __shfl_xor_sync(FULL_MASK, (u32)t, 1);
    }
}
ARTIST_EXPORT(emu_selftest_divergent_barrier)

// The emulator's one-exchange butterfly against five real shuffles, per lane, over several
// blocks of 96 threads (three warps). Each thread reads one float and one u64 (two u32, low
// first) and writes 8 words: warp_sum and the shuffled sum, warp_max and its shuffled form
// (as bits), then warp_max_u64 and its shuffled form (low, high). Shuffles and butterflies
// alternate, so the exchange's two rounds of slots and the butterfly's results are used in
// every order.
extern "C" __global__ void emu_selftest_butterfly(const float* xf, const u32* xu, u32* out) {
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const float f = xf[i];
    const u64 u = (u64)xu[2 * i] | ((u64)xu[2 * i + 1] << 32);
    float s = f, m = f;
    u64 mu = u;
    float bs = warp_sum(f);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
    float bm = warp_max(f);
    for (int o = 16; o > 0; o >>= 1) m = max_nan(m, __shfl_xor_sync(FULL_MASK, m, o));
    u64 bu = warp_max_u64(u);
    for (int o = 16; o > 0; o >>= 1) {
        u64 w = __shfl_xor_sync(FULL_MASK, mu, o);
        mu = w > mu ? w : mu;
    }
    u32* r = out + 8 * (i64)i;
    r[0] = __float_as_uint(bs);
    r[1] = __float_as_uint(s);
    r[2] = __float_as_uint(bm);
    r[3] = __float_as_uint(m);
    r[4] = (u32)bu;
    r[5] = (u32)(bu >> 32);
    r[6] = (u32)mu;
    r[7] = (u32)(mu >> 32);
}
ARTIST_EXPORT(emu_selftest_butterfly)

// Races, three ways, for the emulator's two orders: with no barrier between a thread's write
// and another thread's read, each thread of 2 blocks of 64 reads the slot of the next lane of
// its warp and of the same lane of the other warp in shared memory, and thread 0 of each
// block reads the other block's flag in global memory. Slots and flags start at 0 and are
// set to (thread + 1) and 1. out: per block 128 words (64 next-lane reads, 64 other-warp
// reads), then the two blocks' flag reads. Which writes a read sees depends on the order.
extern "C" __global__ void emu_selftest_race(u32* flags, u32* out) {
    __shared__ u32 slot[64];
    const int t = (int)threadIdx.x, b = (int)blockIdx.x;
    slot[t] = 0;
    __syncthreads();
    slot[t] = (u32)t + 1;
    out[b * 128 + t] = slot[(t & 32) + ((t + 1) & 31)];
    out[b * 128 + 64 + t] = slot[t ^ 32];
    if (t == 0) {
        flags[b] = 1;
        out[256 + b] = flags[b ^ 1];
    }
}
ARTIST_EXPORT(emu_selftest_race)

// Static shared memory read before it is written: each thread of each block copies its slot
// to out[block * 32 + thread], then sets it to (block * 32 + thread + 1). A GPU gives garbage;
// the emulator keeps static `__shared__` arrays from one block to the next on a thread, so
// which block's values a read sees depends on the order the blocks ran in.
extern "C" __global__ void emu_selftest_stale_shared(u32* out) {
    __shared__ u32 slot[32];
    const int t = (int)threadIdx.x, b = (int)blockIdx.x;
    out[b * 32 + t] = slot[t];
    slot[t] = (u32)(b * 32 + t) + 1;
}
ARTIST_EXPORT(emu_selftest_stale_shared)

// A kernel that does not end: it loops until `*stop` is nonzero, which nobody sets, through a
// block barrier (`mode` 0) or a shuffle (1). The launch must fail when its time runs out.
extern "C" __global__ void emu_selftest_forever(const u32* stop, u32 mode) {
    u32 v = threadIdx.x;
    while (!*(volatile const u32*)stop) {
        if (mode == 0) {
            __syncthreads();
        } else {
            v = __shfl_xor_sync(FULL_MASK, v, 1);
        }
    }
    (void)v;
}
ARTIST_EXPORT(emu_selftest_forever)

// One thread reads x[at] into out[0]: past the end of x's block when `at` is large enough.
extern "C" __global__ void emu_selftest_read_at(const float* x, i64 at, float* out) { out[0] = x[at]; }
ARTIST_EXPORT(emu_selftest_read_at)

// One thread writes 7 to word `at` of the dynamic shared memory and copies it to out[0]:
// past its end when `at` is large enough.
extern "C" __global__ void emu_selftest_smem_at(i64 at, u32* out) {
    DYNAMIC_SMEM(u32, s);
    s[at] = 7;
    out[0] = s[at];
}
ARTIST_EXPORT(emu_selftest_smem_at)
