// Shared by every kernel file: element types, conversions that round exactly as the CPU
// backend does, block reductions and strided indexing.
//
// The loader puts this text in front of each `*.cu` file before NVRTC compiles it, so the
// kernel files do not include it themselves. The same sources also compile as C++17 for
// the CPU emulator (`ARTIST_EMULATOR`, crates/tensor/emulator/), which runs the kernels on
// the host so that their logic is tested on machines without a GPU. Hence: no CUDA headers
// (`cuda_bf16.h` is not needed: bf16 and f16 are our own 16-bit structs), inline PTX only
// behind `#ifndef ARTIST_EMULATOR`, dynamic shared memory only through DYNAMIC_SMEM, and
// every exported kernel named once with ARTIST_EXPORT.
#ifndef ARTIST_COMMON_CUH
#define ARTIST_COMMON_CUH

#ifdef ARTIST_EMULATOR
#define ARTIST_EXPORT(name) static ::emu::Registrar artist_register_##name(#name, name);
#define DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_smem())
#else
#define ARTIST_EXPORT(name)
#define DYNAMIC_SMEM(T, name)                                   \
    extern __shared__ __align__(16) unsigned char artist_smem_[]; \
    T* name = reinterpret_cast<T*>(artist_smem_)
#endif

typedef long long i64;
typedef unsigned long long u64;
typedef int i32;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define FULL_MASK 0xffffffffu
#define MAX_DIMS 8

// ---- element types ---------------------------------------------------------------------

struct bf16 {
    u16 bits;
};
struct f16 {
    u16 bits;
};

__device__ __forceinline__ float bits_f32(u32 b) { return __uint_as_float(b); }
__device__ __forceinline__ u32 f32_bits(float f) { return __float_as_uint(f); }

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return bits_f32(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(u32 x) { return (float)x; }
__device__ __forceinline__ float to_f32(u8 x) { return (float)x; }

__device__ __forceinline__ float to_f32(f16 x) {
#ifdef ARTIST_EMULATOR
    u32 h = x.bits;
    u32 sign = (h & 0x8000u) << 16;
    u32 exp = (h >> 10) & 0x1fu;
    u32 man = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: man * 2^-24, exact in f32
        float v = (float)man * 5.9604644775390625e-8f;
        return bits_f32(f32_bits(v) | sign);
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#endif
}

template <class T>
__device__ __forceinline__ T from_f32(float x);

template <>
__device__ __forceinline__ float from_f32<float>(float x) {
    return x;
}

// Round to nearest even, NaN kept quiet: what `half::bf16::from_f32` does.
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float f) {
    u32 x = f32_bits(f);
    bf16 r;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (u16)((x >> 16) | 0x0040u);
        return r;
    }
    const u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0)
        r.bits = (u16)((x >> 16) + 1);
    else
        r.bits = (u16)(x >> 16);
    return r;
}

template <>
__device__ __forceinline__ f16 from_f32<f16>(float f) {
    f16 r;
#ifdef ARTIST_EMULATOR
    // Round to nearest even, as `half::f16::from_f32`.
    u32 x = f32_bits(f);
    u32 sign = (x & 0x80000000u) >> 16;
    u32 exp = x & 0x7f800000u;
    u32 man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        u32 nan_bit = man == 0 ? 0 : 0x0200u;
        r.bits = (u16)(sign | 0x7c00u | nan_bit | (man >> 13));
        return r;
    }
    i32 half_exp = (i32)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) {
        r.bits = (u16)(sign | 0x7c00u);
        return r;
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            r.bits = (u16)sign;
            return r;
        }
        man |= 0x00800000u;
        u32 half_man = man >> (14 - half_exp);
        u32 round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0) half_man += 1;
        r.bits = (u16)(sign | half_man);
        return r;
    }
    u32 half_exp_bits = (u32)half_exp << 10;
    u32 half_man = man >> 13;
    const u32 round_bit = 0x00001000u;
    if ((man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0)
        r.bits = (u16)((sign | half_exp_bits | half_man) + 1);
    else
        r.bits = (u16)(sign | half_exp_bits | half_man);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
#endif
    return r;
}

// Floats into integers truncate toward zero and saturate (NaN gives 0), as Rust's `as`.
template <>
__device__ __forceinline__ u32 from_f32<u32>(float x) {
    if (!(x > 0.0f)) return 0u;
    if (x >= 4294967295.0f) return 4294967295u;
    return (u32)x;
}

template <>
__device__ __forceinline__ u8 from_f32<u8>(float x) {
    if (!(x > 0.0f)) return (u8)0;
    if (x >= 255.0f) return (u8)255;
    return (u8)x;
}

__device__ __forceinline__ bool is_nan(float x) { return x != x; }
__device__ __forceinline__ float inf_f32() { return bits_f32(0x7f800000u); }
__device__ __forceinline__ float nan_f32() { return bits_f32(0x7fc00000u); }

// ---- reductions --------------------------------------------------------------------------

// v combined with every other lane's by the butterfly v = op(v, lane (l ^ o)'s v) for
// o = 16, 8, 4, 2, 1. The emulator computes the same butterfly over one exchange of the 32
// values rather than five shuffles (emu::butterfly): the same operands in the same order.
template <class T, class Op>
__device__ __forceinline__ T warp_butterfly(T v, Op op) {
#ifdef ARTIST_EMULATOR
    return ::emu::butterfly(v, op);
#else
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
#endif
}

struct AddOp {
    template <class T>
    __device__ __forceinline__ T operator()(T a, T b) const {
        return a + b;
    }
};
struct MaxU64Op {
    __device__ __forceinline__ u64 operator()(u64 v, u64 w) const { return w > v ? w : v; }
};
struct MinU64Op {
    __device__ __forceinline__ u64 operator()(u64 v, u64 w) const { return w < v ? w : v; }
};

__device__ __forceinline__ float warp_sum(float v) { return warp_butterfly(v, AddOp()); }
__device__ __forceinline__ double warp_sum_f64(double v) { return warp_butterfly(v, AddOp()); }

// Integer reductions: exact, so the same in any order.
__device__ __forceinline__ u64 warp_sum_u64(u64 v) { return warp_butterfly(v, AddOp()); }
__device__ __forceinline__ u64 warp_max_u64(u64 v) { return warp_butterfly(v, MaxU64Op()); }
__device__ __forceinline__ u64 warp_min_u64(u64 v) { return warp_butterfly(v, MinU64Op()); }

// Largest value, NaN wins.
__device__ __forceinline__ float max_nan(float a, float b) { return (is_nan(a) || a > b) ? a : b; }
__device__ __forceinline__ float min_nan(float a, float b) { return (is_nan(a) || a < b) ? a : b; }

struct MaxNanOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return max_nan(a, b); }
};
struct MinNanOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return min_nan(a, b); }
};

__device__ __forceinline__ float warp_max(float v) { return warp_butterfly(v, MaxNanOp()); }
__device__ __forceinline__ float warp_min(float v) { return warp_butterfly(v, MinNanOp()); }

// Block-wide reductions for blocks of a multiple of 32 threads (at most 1024). Every thread
// gets the result. Safe to call repeatedly: the scratch is fenced on both sides.
#define BLOCK_REDUCE(NAME, T, WARP_OP, IDENTITY)                       \
    __device__ __forceinline__ T NAME(T v) {                           \
        __shared__ T scratch[32];                                      \
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;          \
        int warps = (blockDim.x + 31) >> 5;                            \
        v = WARP_OP(v);                                                \
        __syncthreads();                                               \
        if (lane == 0) scratch[warp] = v;                              \
        __syncthreads();                                               \
        v = lane < warps ? scratch[lane] : (T)(IDENTITY);             \
        v = WARP_OP(v);                                                \
        return v;                                                      \
    }

BLOCK_REDUCE(block_sum, float, warp_sum, 0.0f)
BLOCK_REDUCE(block_sum_f64, double, warp_sum_f64, 0.0)
BLOCK_REDUCE(block_max, float, warp_max, -inf_f32())
BLOCK_REDUCE(block_min, float, warp_min, inf_f32())
BLOCK_REDUCE(block_sum_u64, u64, warp_sum_u64, 0)
BLOCK_REDUCE(block_max_u64, u64, warp_max_u64, 0)
BLOCK_REDUCE(block_min_u64, u64, warp_min_u64, ~0ull)

// ---- strided indexing ------------------------------------------------------------------

// Up to three operands over one index space of `rank` dimensions (already coalesced on the
// host): operand k's element for linear index i sits at start[k] + sum(idx[d] * strides[k][d]).
// The host mirror is `Strided` in crates/tensor/src/cuda/kernels.rs.
#define STRIDED_WIDE 0        // 64-bit index arithmetic
#define STRIDED_CONTIGUOUS 1  // every operand contiguous from its start: offset = start + i
#define STRIDED_NARROW 2      // every index and offset fits 32 bits: cheaper divisions
#define STRIDED_VEC8 3        // contiguous, and every pointer aligned for whole vectors (Vec8)
#define STRIDED_ROWS_VEC8 4   // rows of whole vectors: see `vector_mode`
struct Strided {
    i32 rank;
    i32 mode;
    i64 dims[MAX_DIMS];
    i64 strides[3][MAX_DIMS];
    i64 start[3];
};

__device__ __forceinline__ i64 strided_offset(const Strided& s, int k, i64 i) {
    if (s.mode == STRIDED_CONTIGUOUS || s.mode == STRIDED_VEC8) return s.start[k] + i;
    if (s.mode == STRIDED_NARROW) {
        u32 j = (u32)i, off = (u32)s.start[k];
        for (int d = s.rank - 1; d >= 0; --d) {
            u32 dim = (u32)s.dims[d];
            u32 q = j / dim;
            off += (j - q * dim) * (u32)s.strides[k][d];
            j = q;
        }
        return (i64)off;
    }
    i64 off = s.start[k];
    for (int d = s.rank - 1; d >= 0; --d) {
        i64 dim = s.dims[d];
        i64 q = i / dim;
        off += (i - q * dim) * s.strides[k][d];
        i = q;
    }
    return off;
}

// Whether a kernel may take elements 8v .. 8v + 7 as one vector at strided_offset(s, k, 8v)
// of every operand. STRIDED_VEC8: everything contiguous. STRIDED_ROWS_VEC8: the innermost
// dimension is contiguous in every operand and a multiple of 8 long, and every other stride
// and every start is a multiple of 8 elements (row-strided views such as the gate and up
// halves of a fused projection, a bias row broadcast over rows, a write into a column
// slice): a vector never crosses a row, and its offset, in 64-bit arithmetic, is computed
// once for its 8 elements.
__device__ __forceinline__ bool vector_mode(const Strided& s) {
    return s.mode == STRIDED_VEC8 || s.mode == STRIDED_ROWS_VEC8;
}

__device__ __forceinline__ i64 global_thread() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 global_threads() { return (i64)gridDim.x * blockDim.x; }

#define GRID_STRIDE(i, n) for (i64 i = global_thread(); i < (n); i += global_threads())

// ---- whole vectors of eight elements --------------------------------------------------------

// 16 bytes, for vector loads and stores (the address must be 16-byte aligned).
struct __align__(16) u32x4 {
    u32 x, y, z, w;
};

// Memory-bound kernels over contiguous operands move eight elements per thread and step as
// whole vectors: one 16-byte access for 16-bit types, two for 32-bit ones, one of 8 bytes
// for u8. A thread then keeps eight times the bytes in flight that one element per access
// gives, which is what it takes to fill the memory system (Little's law: bandwidth times
// latency, roughly 15 KiB per SM on an H100, against 4 KiB from 2048 threads loading 2
// bytes each). Each element is computed as the one-element loop computes it, so the results
// have the same bits. The host chooses the path (`Strided::vectorized` and `vec8_aligned` in
// crates/tensor/src/cuda/kernels.rs): every operand contiguous and its first element aligned
// to min(16, 8 * sizeof(T)) bytes.
template <class T>
union Vec8 {
    T e[8];
    u64 b8;        // sizeof(T) == 1
    u32x4 b16[2];  // sizeof(T) == 2: b16[0]; sizeof(T) == 4: both
};

template <class T>
__device__ __forceinline__ void load8(Vec8<T>& r, const T* p) {
    if (sizeof(T) == 1) {
        r.b8 = *reinterpret_cast<const u64*>(p);
    } else {
        r.b16[0] = *reinterpret_cast<const u32x4*>(p);
        if (sizeof(T) == 4) r.b16[1] = *reinterpret_cast<const u32x4*>(p + 4);
    }
}

template <class T>
__device__ __forceinline__ void store8(T* p, const Vec8<T>& r) {
    if (sizeof(T) == 1) {
        *reinterpret_cast<u64*>(p) = r.b8;
    } else {
        *reinterpret_cast<u32x4*>(p) = r.b16[0];
        if (sizeof(T) == 4) *reinterpret_cast<u32x4*>(p + 4) = r.b16[1];
    }
}

// Vector v (elements 8v .. 8v + 7) for v < n / 8 over the grid; then the n % 8 elements
// left, one per thread.
#define VEC8_STRIDE(v, n) for (i64 v = global_thread(); v < (n) / 8; v += global_threads())
#define VEC8_TAIL(i, n) for (i64 i = (n) / 8 * 8 + global_thread(); i < (n); i += global_threads())

// Row kernels (one block per row: RMSNorm, softmax) walk a row in chunks of eight elements:
// thread t takes chunks t, t + T, ... (T threads, each chunk's elements in order), then
// element 8 (cols / 8) + t of the tail. When `vec` (the host's choice, `rows_vec` in
// crates/tensor/src/cuda/ops.rs: cols a multiple of 8 and every pointer aligned for Vec8) a
// chunk is one vector access per operand; otherwise eight single ones. The order of every
// sum is the same either way, so alignment changes no bit.
template <class T>
__device__ __forceinline__ void chunk_load(Vec8<T>& r, const T* p, int vec) {
    if (vec) {
        load8(r, p);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) r.e[e] = p[e];
    }
}

template <class T>
__device__ __forceinline__ void chunk_store(T* p, const Vec8<T>& r, int vec) {
    if (vec) {
        store8(p, r);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) p[e] = r.e[e];
    }
}

// Kernels launched with one block per row take up to ROW_BLOCK_MAX threads (`row_threads`
// in ops.rs: a vocabulary row gets 1024). `__launch_bounds__(ROW_BLOCK_MAX, 1)` makes ptxas keep
// them within 64 registers, so such a launch can never fail for want of registers.
#define ROW_BLOCK_MAX 1024
#define ROW_KERNEL extern "C" __global__ void __launch_bounds__(ROW_BLOCK_MAX, 1)

#define ROW_CHUNKS(c, cols) for (i64 c = threadIdx.x; c < (cols) / 8; c += blockDim.x)
#define ROW_TAIL(j, cols) for (i64 j = (cols) / 8 * 8 + threadIdx.x; j < (cols); j += blockDim.x)

// ---- tensor cores ---------------------------------------------------------------------------

// Two bf16 in one register, `lo` in the low half (the lower index of a fragment pair).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    return (u32)from_f32<bf16>(lo).bits | ((u32)from_f32<bf16>(hi).bits << 16);
}

// The emulator's view of an A fragment (16 x 16 bf16, mma_bf16_16816's layout): the whole
// of rows g and g + 8 that lane (g = lane / 4) needs, gathered from the four lanes that hold
// them.
#ifdef ARTIST_EMULATOR
__device__ __forceinline__ void a_rows_emulated(float arow[2][16], const u32 a[4]) {
    const int g = (int)(threadIdx.x & 31) >> 2;
    for (int t = 0; t < 4; ++t) {
        // Lane 4g + t holds A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..].
        int src = (g << 2) | t;
        for (int r = 0; r < 4; ++r) {
            u32 v = __shfl_sync(FULL_MASK, a[r], src);
            int row = r & 1, col = 2 * t + ((r >> 1) << 3);
            arow[row][col] = bits_f32(v << 16);
            arow[row][col + 1] = bits_f32(v & 0xffff0000u);
        }
    }
}
#endif

// d += A B for one warp on the tensor cores: A 16x16 bf16, B 16x8 bf16, d 16x8 f32 (PTX
// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, sm_80 and later). Each lane holds
// fragments, with g = lane / 4 and c = lane % 4 and two bf16 per register:
//   a[0] = A[g][2c, 2c+1]   a[1] = A[g+8][2c, 2c+1]   a[2] = A[g][2c+8, 2c+9]   a[3] = A[g+8][2c+8, 2c+9]
//   b[0] = B[2c, 2c+1][g]   b[1] = B[2c+8, 2c+9][g]
//   d[0], d[1] = D[g][2c, 2c+1]   d[2], d[3] = D[g+8][2c, 2c+1]
// The emulator gathers the whole of A's rows and B's columns a lane needs through warp
// shuffles and computes the same products in f32 (bf16 products are exact in f32; the
// order of the sum is the hardware's own, so results agree to f32 rounding).
__device__ __forceinline__ void mma_bf16_16816(float d[4], const u32 a[4], const u32 b[2]) {
#ifdef ARTIST_EMULATOR
    const int lane = (int)(threadIdx.x & 31), c = lane & 3;
    float arow[2][16], bcol[2][16];  // A's rows g and g+8; B's columns 2c and 2c+1
    a_rows_emulated(arow, a);
    for (int j = 0; j < 2; ++j) {
        for (int t = 0; t < 4; ++t) {
            // Lane 4n + t holds B[2t, 2t+1][n] and B[2t+8, 2t+9][n], for column n = 2c + j.
            int src = ((2 * c + j) << 2) | t;
            for (int r = 0; r < 2; ++r) {
                u32 v = __shfl_sync(FULL_MASK, b[r], src);
                int k = 2 * t + (r << 3);
                bcol[j][k] = bits_f32(v << 16);
                bcol[j][k + 1] = bits_f32(v & 0xffff0000u);
            }
        }
    }
    for (int i = 0; i < 4; ++i) {
        float acc = 0.0f;
        for (int k = 0; k < 16; ++k) acc += arow[i >> 1][k] * bcol[i & 1][k];
        d[i] += acc;
    }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();  // the host launches tensor-core kernels on sm_80 and later only
#endif
}

// N (2 or 4) 8x8 matrices of b16 from shared memory, as `ldmatrix.sync.aligned.m8n8.xN
// [.trans].shared.b16`: lane l (l < 8 N) gives the address of row l % 8 of matrix l / 8 (16
// bytes, 16-byte aligned; with N = 2, lanes 16-31 give addresses that are not read). For
// lane (g = lane / 4, c = lane % 4), r[i] holds matrix i's row g, columns 2c and 2c + 1
// (`ldmatrix_xN`), or its rows 2c and 2c + 1 of column g (`ldmatrix_xN_trans`), the first in
// the low half. The emulator reads the rows through the addresses the other lanes hold.
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(u32* r, const u16* row) {
#ifdef ARTIST_EMULATOR
    const int lane = (int)(threadIdx.x & 31), g = lane >> 2, c = lane & 3;
    for (int i = 0; i < N; ++i) {
        if (TRANS) {
            const u16* p0 = __shfl_sync(FULL_MASK, row, 8 * i + 2 * c);
            const u16* p1 = __shfl_sync(FULL_MASK, row, 8 * i + 2 * c + 1);
            r[i] = (u32)p0[g] | ((u32)p1[g] << 16);
        } else {
            const u16* p = __shfl_sync(FULL_MASK, row, 8 * i + g);
            r[i] = (u32)p[2 * c] | ((u32)p[2 * c + 1] << 16);
        }
    }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    u32 a = (u32)__cvta_generic_to_shared(row);
    if constexpr (N == 2 && !TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    } else if constexpr (N == 2) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(a));
    } else if constexpr (!TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    }
#else
    __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x2(u32 r[2], const u16* row) { ldmatrix<2, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x2_trans(u32 r[2], const u16* row) { ldmatrix<2, true>(r, row); }
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const u16* row) { ldmatrix<4, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const u16* row) { ldmatrix<4, true>(r, row); }

// Asynchronous copies from global into shared memory (`cp.async`, sm_80 and later), for
// tiles loaded while the warps compute on others. cp_async_16 starts a 16-byte copy (both
// addresses 16-byte aligned; `src_bytes` 0 writes 16 zero bytes instead and reads nothing);
// cp_async_commit closes the thread's group of copies started since the last commit;
// cp_async_wait<N> waits until at most N of the thread's committed groups are in flight. A
// thread's copies are visible to the other threads after its wait and a barrier. The
// emulator lands each copy at the wait that covers it (crates/tensor/emulator), so a
// missing wait or barrier shows as stale data in tests. Without sm_80 the copy is a plain
// load and store.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
#ifdef ARTIST_EMULATOR
    ::emu::cp_async(smem, gmem, 16u, (unsigned)src_bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    u32 a = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(gmem), "r"(src_bytes) : "memory");
#else
    u32x4 v = {0u, 0u, 0u, 0u};
    if (src_bytes) v = *reinterpret_cast<const u32x4*>(gmem);
    *reinterpret_cast<u32x4*>(smem) = v;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef ARTIST_EMULATOR
    ::emu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef ARTIST_EMULATOR
    ::emu::cp_async_wait((unsigned)N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// ---- Hopper: warpgroup MMA (wgmma, sm_90a) ------------------------------------------------
//
// `wgmma.mma_async` multiplies for a warpgroup (four consecutive warps, 128 threads) at once:
// D (64 x N, f32) += A (64 x 16) B (16 x N). Warp w of the group holds rows 16w .. 16w + 15
// of A and D in registers, in mma_bf16_16816's fragments (A: one 16 x 16 fragment per warp;
// D: N / 8 of its 16 x 8 C fragments, d[4j ..] for columns 8j ..); B is read from shared
// memory through a descriptor. The product runs asynchronously: its registers and its
// shared-memory operand belong to it from the issue until a wgmma_wait that covers its
// group (wgmma_commit closes a group), and wgmma_fence orders earlier register writes
// before the next issue. ARTIST_WGMMA is defined where these exist: NVRTC's sm_90a target
// (the host launches wgmma kernels only there, DeviceInfo::wgmma) and the emulator, which
// runs each product at the wait that covers it (crates/tensor/emulator), so an operand
// overwritten or an accumulator read too early shows in tests.
//
// Shared-memory operands here use the 128-byte swizzle: a B operand is stored in blocks of
// 8 rows of 128 bytes (64 bf16), 1024-byte aligned, and the 16-byte chunk c of row r of a
// block sits at chunk c ^ (r % 8) of that row (the hardware applies the XOR to bits 4-6 of
// the address from bits 7-9, so a block must not straddle a 1024-byte boundary).
#if defined(ARTIST_EMULATOR) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define ARTIST_WGMMA 1
#endif

#ifdef ARTIST_WGMMA
// A shared-memory address as the hardware numbers it (the emulator: from the start of the
// block's dynamic shared memory, which is where wgmma operands live).
__device__ __forceinline__ u32 smem_u32(const void* p) {
#ifdef ARTIST_EMULATOR
    return (u32)(static_cast<const unsigned char*>(p) - ::emu::dynamic_smem());
#else
    return (u32)__cvta_generic_to_shared(p);
#endif
}

// A shared-memory matrix descriptor with the 128-byte swizzle: the start address, the
// leading-dimension byte offset `lbo` and the stride-dimension byte offset `sbo` (all in
// 16-byte units, 14 bits each, at bits 0, 16 and 32), swizzle mode 1 at bits 62-63. For a
// K-major operand (B[k][n] in row n, k contiguous: imm-trans-b 0) `sbo` steps between
// blocks of 8 rows and `lbo` is unused; for an N-major one (B[k][n] in row k, n contiguous:
// imm-trans-b 1) `sbo` steps between blocks of 8 rows (k) and `lbo` between the 64-column
// blocks of n.
__device__ __forceinline__ u64 wgmma_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3ffffu) >> 4) | ((u64)((lbo >> 4) & 0x3fffu) << 16) |
           ((u64)((sbo >> 4) & 0x3fffu) << 32) | (1ull << 62);
}

#ifdef ARTIST_EMULATOR
// Element B[k][n] of the operand that `desc` describes, as the hardware addresses it.
__device__ __forceinline__ float wgmma_b_emulated(u64 desc, int trans, int k, int n) {
    u32 start = (u32)(desc & 0x3fffu) << 4, lbo = (u32)((desc >> 16) & 0x3fffu) << 4,
        sbo = (u32)((desc >> 32) & 0x3fffu) << 4;
    u32 addr = trans ? start + (u32)(n >> 6) * lbo + (u32)((n & 63) >> 3) * 16u + (u32)(n & 7) * 2u +
                           (u32)(k >> 3) * sbo + (u32)(k & 7) * 128u
                     : start + (u32)(n >> 3) * sbo + (u32)(n & 7) * 128u + (u32)k * 2u;
    addr ^= ((addr >> 7) & 7u) << 4;
    u16 bits;
    std::memcpy(&bits, ::emu::dynamic_smem() + addr, 2);
    return bits_f32((u32)bits << 16);
}
#else
// The accumulator operands of a wgmma asm statement, d[i] .. d[i + 31].
#define WGMMA_D8(i)                                                                                \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),    \
        "+f"(d[i + 6]), "+f"(d[i + 7])
#define WGMMA_D32(i) WGMMA_D8(i), WGMMA_D8(i + 8), WGMMA_D8(i + 16), WGMMA_D8(i + 24)

template <int TRANS>
__device__ __forceinline__ void wgmma_m64n64k16_asm(float* d, const u32 a[4], u64 desc, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
        "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : WGMMA_D32(0)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TRANS));
}

template <int TRANS>
__device__ __forceinline__ void wgmma_m64n128k16_asm(float* d, const u32 a[4], u64 desc, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
        "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, "
        "%34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, "
        "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : WGMMA_D32(0), WGMMA_D32(32)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TRANS));
}

// Both operands from shared memory: A K-major (imm-trans-a 0), B as above.
template <int TRANS>
__device__ __forceinline__ void wgmma_m64n64k16_ss_asm(float* d, u64 adesc, u64 bdesc, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
        "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, %35;\n}\n"
        : WGMMA_D32(0)
        : "l"(adesc), "l"(bdesc), "r"(acc), "n"(TRANS));
}
#endif

// d (the warp's N / 2 accumulators) = A (registers) B (descriptor `desc`; `TRANS` 0: K-major,
// 1: N-major), plus d where `acc` is nonzero (scale-d: with 0, d's old values are not read),
// PTX `wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16`, N 64 or 128.
template <int N, int TRANS>
__device__ __forceinline__ void wgmma_bf16_rs(float* d, const u32 a[4], u64 desc, int acc) {
    static_assert(N == 64 || N == 128, "wgmma shapes instantiated here: n64 and n128");
#ifdef ARTIST_EMULATOR
    const int c = (int)(threadIdx.x & 31) & 3;
    struct Rows {
        float r[2][16];
    } rows;
    a_rows_emulated(rows.r, a);
    ::emu::wgmma_defer([d, desc, c, rows, acc]() {
        for (int j = 0; j < N / 8; ++j) {
            for (int e = 0; e < 4; ++e) {
                int col = 8 * j + 2 * c + (e & 1);
                float sum = 0.0f;
                for (int k = 0; k < 16; ++k) sum += rows.r[e >> 1][k] * wgmma_b_emulated(desc, TRANS, k, col);
                d[4 * j + e] = acc ? d[4 * j + e] + sum : sum;
            }
        }
    });
#else
    if constexpr (N == 64) {
        wgmma_m64n64k16_asm<TRANS>(d, a, desc, acc);
    } else {
        wgmma_m64n128k16_asm<TRANS>(d, a, desc, acc);
    }
#endif
}

// d (the warp's 32 accumulators) = A B (+ d where `acc` is nonzero), both read from shared
// memory: A (64 x 16) K-major through `adesc` (row m of the warpgroup's 64 at the address a
// K-major B gives column n = m), B through `bdesc` as in wgmma_bf16_rs. N = 64.
template <int TRANS>
__device__ __forceinline__ void wgmma_bf16_ss_n64(float* d, u64 adesc, u64 bdesc, int acc) {
#ifdef ARTIST_EMULATOR
    const int c = (int)(threadIdx.x & 31) & 3, m0 = (int)((threadIdx.x >> 5) & 3) * 16 + ((int)(threadIdx.x & 31) >> 2);
    ::emu::wgmma_defer([d, adesc, bdesc, c, m0, acc]() {
        float arow[2][16];
        for (int r = 0; r < 2; ++r)
            for (int k = 0; k < 16; ++k) arow[r][k] = wgmma_b_emulated(adesc, 0, k, m0 + 8 * r);
        for (int j = 0; j < 8; ++j) {
            for (int e = 0; e < 4; ++e) {
                int col = 8 * j + 2 * c + (e & 1);
                float sum = 0.0f;
                for (int k = 0; k < 16; ++k) sum += arow[e >> 1][k] * wgmma_b_emulated(bdesc, TRANS, k, col);
                d[4 * j + e] = acc ? d[4 * j + e] + sum : sum;
            }
        }
    });
#else
    wgmma_m64n64k16_ss_asm<TRANS>(d, adesc, bdesc, acc);
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#ifndef ARTIST_EMULATOR
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#ifdef ARTIST_EMULATOR
    ::emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef ARTIST_EMULATOR
    ::emu::wgmma_wait((unsigned)N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving reads or writes of accumulators across an issue or a wait
// (the asm statements name them only at the issue).
__device__ __forceinline__ void wgmma_fence_operands(float* d, int n) {
#ifndef ARTIST_EMULATOR
    for (int i = 0; i < n; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// Makes this thread's generic writes to shared memory (plain stores, cp.async) visible to
// wgmma's reads of its operands, which go through the async proxy; before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
#ifndef ARTIST_EMULATOR
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
#endif  // ARTIST_WGMMA

// ---- instantiation helpers ---------------------------------------------------------------

// FLOAT_TYPES(M) expands M(type, suffix) for the three float element types.
#define FLOAT_TYPES(M) M(float, f32) M(bf16, bf16) M(f16, f16)
#define ALL_TYPES(M) M(float, f32) M(bf16, bf16) M(f16, f16) M(u32, u32) M(u8, u8)

#endif  // ARTIST_COMMON_CUH
