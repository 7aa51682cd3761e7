// The CUDA kernel emulator: just enough of CUDA C++ for our kernels (kernels/*.cu) to compile
// as ordinary C++17 and run on the CPU, so that their logic (indexing, reductions, barriers,
// warp shuffles, boundary cases) is tested against the CPU backend on machines without a GPU.
//
// Each thread of a block is a fiber with a stack of its own; the block's fibers
// run on one OS thread, each until it reaches a barrier (__syncthreads, or the warp-wide
// exchange behind a shuffle), so the memory semantics are those of a GPU whose threads
// interleave only at barriers. A warp runs as far as it can before the block's next
// __syncthreads before the next warp starts (one warp ahead of the others, as a GPU may
// run them). Blocks run one after another. Blocks, warps and lanes go by ascending index,
// or descending (a launch's `reverse`), so that a race the one order hides shows in the
// other. A barrier that not every live thread of the block (or warp) reaches is reported
// as an error instead of hanging, and so is a launch still running at its deadline.
//
// `__shared__` becomes `static thread_local`: one copy per OS thread, which is all the
// fibers of the block being run, so launches on different OS threads do not interfere.
#pragma once

#include <math.h>

// Fibers switch by a hand-written routine on x86-64 (runtime.cpp), by ucontext elsewhere.
#if defined(__x86_64__)
#define ARTIST_EMU_ASM_SWITCH 1
#else
#define ARTIST_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace emu {

struct Block {
    uint3 idx;
    dim3 dim;
    dim3 grid;
    unsigned char* dyn_smem;
    // Warp exchange, kSlotsPerWarp per warp: two rounds of 32 slots that shuffles use in
    // turn, then a butterfly's 32 results and the exchange they are for (see butterfly).
    unsigned long long* slots;
};

// cp.async from global into shared memory, per thread: a copy of `bytes` that takes the first
// `src_bytes` from `src` and zeros after them. It lands only when the thread waits for its
// group (cp_async_wait), so a kernel that reads a tile before waiting and meeting at a
// barrier reads stale shared memory here, as it could on a GPU.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
};

enum State { READY, AT_BLOCK, AT_WARP, DONE };

// One thread of the block being run.
struct Fiber {
#if ARTIST_EMU_ASM_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    uint3 idx;
    unsigned linear;
    State state;
    // Shuffles this thread has made in the block so far: its round of the warp's slots.
    unsigned exchanges;
    // cp.async: copies started and not yet landed, oldest first, and copies.size() at each
    // commit (the ends of the committed groups), oldest first.
    std::vector<AsyncCopy> copies;
    std::vector<size_t> groups;
    // wgmma: products issued and not yet run, oldest first, and their count at each commit.
    std::vector<std::function<void()>> wgmma_ops;
    std::vector<size_t> wgmma_groups;
};

constexpr unsigned kSlotsPerWarp = 128;
constexpr unsigned kResults = 64, kResultsFor = 96;

extern thread_local Fiber* current;
extern thread_local Block* block;

inline const uint3& thread_idx() { return current->idx; }
inline unsigned linear_tid() { return current->linear; }
void syncthreads();
void warp_barrier();
unsigned char* dynamic_smem();

void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
void cp_async_wait(unsigned pending);

// wgmma (Hopper's warpgroup MMA), per thread: an issued product is kept, with the operands it
// took from registers, and runs only when the thread waits for its group (wgmma_wait). So
// it reads its shared-memory operand at the wait and writes its accumulators there: a kernel
// that overwrites the operand, or reads the accumulators, before waiting sees it in tests,
// as it could on a GPU. A thread that ends with products not waited for is an error.
void wgmma_defer(std::function<void()> op);
void wgmma_commit();
void wgmma_wait(unsigned pending);

// The current thread's part of an exchange: `v` written to its slot of this round, then the
// warp barrier. Returns the warp's slots (kSlotsPerWarp of them) and this exchange's round.
template <class T>
inline std::pair<unsigned long long*, unsigned> publish(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Fiber& me = *current;
    const unsigned round = me.exchanges++;
    unsigned long long* w = block->slots + kSlotsPerWarp * (me.linear >> 5);
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w[32 * (round & 1u) + (me.linear & 31u)] = bits;
    warp_barrier();
    return {w, round};
}

// Every lane publishes `v`, then reads lane `src(lane)`'s value (its own when src is out
// of range). One barrier: consecutive shuffles use the warp's two rounds of slots in turn,
// and a lane writes a round again only after the next shuffle's barrier, which every lane
// reaches after its read of this one.
template <class T, class F>
inline T exchange(T v, F src) {
    const auto [w, round] = publish(v);
    const unsigned long long* s = w + 32 * (round & 1u);
    const int l = (int)(current->linear & 31u);
    int from = src(l);
    unsigned long long got = s[(from >= 0 && from < 32) ? from : l];
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

// The warp butterfly `for (o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(~0u, v, o))`
// (common.cuh's warp_butterfly) over one exchange instead of five: every lane publishes v;
// the first lane to run after the barrier computes the butterfly for all 32 lanes, with the
// same operands in the same order as the shuffles, and every lane takes its own result: the
// same values to the bit. (The next exchange's barrier comes after every lane's read.)
template <class T, class Op>
inline T butterfly(T v, Op op) {
    const auto [w, round] = publish(v);
    const unsigned long long* s = w + 32 * (round & 1u);
    if (w[kResultsFor] != round + 1ull) {  // 0: none yet in this block
        T x[32], y[32];
        for (unsigned i = 0; i < 32; ++i) std::memcpy(&x[i], &s[i], sizeof(T));
        for (unsigned o = 16; o > 0; o >>= 1) {
            for (unsigned i = 0; i < 32; ++i) y[i] = op(x[i], x[i ^ o]);
            std::memcpy(x, y, sizeof x);
        }
        for (unsigned i = 0; i < 32; ++i) {
            unsigned long long b = 0;
            std::memcpy(&b, &x[i], sizeof(T));
            w[kResults + i] = b;
        }
        w[kResultsFor] = round + 1ull;
    }
    T r;
    std::memcpy(&r, &w[kResults + (current->linear & 31u)], sizeof(T));
    return r;
}

// A kernel with its parameter types, callable from an array of pointers to argument values
// (what cuLaunchKernel takes).
struct Entry {
    void* fn;
    void (*invoke)(void* fn, void** args);
    std::vector<size_t> sizes;
};

std::map<std::string, Entry>& registry();

template <class... A>
struct Invoker {
    template <size_t... I>
    static void call(void (*f)(A...), void** a, std::index_sequence<I...>) {
        f(*static_cast<std::decay_t<A>*>(a[I])...);
    }
    static void invoke(void* fn, void** a) {
        call(reinterpret_cast<void (*)(A...)>(fn), a, std::index_sequence_for<A...>{});
    }
};

struct Registrar {
    template <class... A>
    Registrar(const char* name, void (*f)(A...)) {
        registry()[name] = Entry{reinterpret_cast<void*>(f), &Invoker<A...>::invoke, {sizeof(std::decay_t<A>)...}};
    }
};

}  // namespace emu

// ---- CUDA C++ surface ------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __restrict__ __restrict
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block->idx)
#define blockDim (::emu::block->dim)
#define gridDim (::emu::block->grid)
#define warpSize 32

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    return emu::exchange(v, [=](int l) {
        int s = l ^ mask;
        return (s / width == l / width) ? s : l;
    });
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    return emu::exchange(v, [=](int l) {
        int s = l + (int)delta;
        return (s / width == l / width) ? s : l;
    });
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    return emu::exchange(v, [=](int l) {
        int s = l - (int)delta;
        return (s >= 0 && s / width == l / width) ? s : l;
    });
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return emu::exchange(v, [=](int l) { return (l / width) * width + (src % width); });
}
inline unsigned __ballot_sync(unsigned, int pred) {
    unsigned out = 0;
    for (int o = 0; o < 32; ++o) {
        int p = emu::exchange(pred ? 1 : 0, [=](int) { return o; });
        if (p) out |= 1u << o;
    }
    return out;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) {
    unsigned live = __ballot_sync(m, 1);
    return __ballot_sync(m, pred) == live;
}

// Fibers of one block share an OS thread and switch only at barriers: atomics are plain
// read-modify-writes.
template <class T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    *p = std::max(old, v);
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    T old = *p;
    *p = std::min(old, v);
    return old;
}
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}
template <class T>
inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
inline void __threadfence() {}
inline void __threadfence_block() {}

inline float __uint_as_float(unsigned x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned x;
    std::memcpy(&x, &f, 4);
    return x;
}
inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline int __float_as_int(float f) {
    int x;
    std::memcpy(&x, &f, 4);
    return x;
}
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
