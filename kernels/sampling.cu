// Sampling one token per (row, sampler) on the GPU, so decoding copies back 8 bytes per
// sequence instead of a row of logits. Exactly the host sampler's choice
// (crates/engine/src/sampler.rs), given the uniform number u it draws from its seeded
// generator:
//
//   lse = max / T + ln sum exp((l - max) / T)            (f64, as the host)
//   candidates: l / T >= max / T + ln 1e-12; p = exp(l / T - lse) rounded to f32
//   order: p descending, then index ascending
//   keep the first N: N <= top_k; N <= #(p >= p_max * min_p) (at least 1);
//   N <= the first n whose running sum reaches top_p (at least 1)
//   total = sum of the kept; the first kept element whose running sum exceeds u * total,
//   else the N-th; greedy: the first index of the largest logit.
//
// The sums are in fixed point, units of 2^-62 rounded down (`fixed_p`, the host's
// `fixed_point`): integer sums are exact in any order, so the GPU's running sums are the
// host's to the unit and no draw depends on the order of additions. The draw compares a
// running sum with floor(u * total), u taken to 53 bits, computed exactly (`draw_target`).
//
// Without sorting: every candidate gets a 64-bit key (p's bits, then the inverted index), so
// "the n-th element" and "the first element whose running sum reaches x" are searches for the
// key where a count or a sum over the keys at or above it first reaches x. A search is a
// radix select from the top bit where the range's keys differ: each pass over the row builds
// a histogram of the next RADIX_BITS bits of the keys in range (count, fixed-point sum and
// largest key per bucket, by shared-memory atomics, exact in any order), one warp walks it
// from the top to the bucket where the running count or sum reaches x, and that bucket is
// the next range. A bucket that holds one candidate ends the search: its largest key is the
// answer. Candidates span about 40 octaves of probability, so a search takes one to four
// passes (index bits only when candidates tie in probability). A draw at a temperature alone
// reads the row three times (max, normaliser, probabilities) and searches once: some four to
// seven passes. One block per pick; `probs` is a scratch row per pick.

struct SamplePick {
    i64 row;      // logits row
    float inv_t;  // 1 / temperature (1 when greedy)
    i32 greedy;
    i32 top_k;    // 0: off
    float top_p;  // 1: off
    float min_p;  // 0: off
    i32 pad;
    double u;  // uniform in [0, 1), drawn on the host
};

__device__ __forceinline__ u64 sample_key(float p, i64 j) {
    return ((u64)f32_bits(p) << 32) | (u64)(~(u32)j);
}

// A probability in the draw's fixed point: units of 2^-62, rounded down (exact: scaling by a
// power of two, then truncation). Below 2 (every p is at most 1), so sums fit in 63 bits.
__device__ __forceinline__ u64 fixed_p(float p) { return (u64)((double)p * 4611686018427387904.0); }

// floor(floor(u * 2^53) * total / 2^53), exactly: the running sum a draw must pass.
__device__ __forceinline__ u64 draw_target(double u, u64 total) {
    u64 u53 = (u64)(u * 9007199254740992.0);
    return (__umul64hi(u53, total) << 11) | ((u53 * total) >> 53);
}

// The number of candidates with key >= k.
__device__ u64 count_at_least(const float* probs, i64 vocab, u64 k) {
    u64 c = 0;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        float p = probs[j];
        c += (p > 0.0f && sample_key(p, j) >= k) ? 1 : 0;
    }
    return block_sum_u64(c);
}

#define RADIX_BITS 10
#define RADIX (1 << RADIX_BITS)

// A search's answer: a candidate's key, and the count and fixed-point sum of the candidates
// with keys at or above it.
struct KeyAt {
    u64 key, count, sum;
};

// The largest key k in [lo, hi] (both candidates' keys) at which the candidates with keys in
// [k, hi] reach x: in count (`by_sum` false) or in fixed-point sum. They must reach it at lo.
// Radix select (see the top of the file): each pass narrows [lo, hi] to the keys of one
// bucket of the RADIX_BITS bits below the highest bit where lo and hi differ.
__device__ KeyAt search_key(const float* probs, i64 vocab, u64 lo, u64 hi, bool by_sum, u64 x) {
    __shared__ u32 count[RADIX];
    __shared__ u64 sum[RADIX], top[RADIX], bottom[RADIX];
    // The walk's verdict: bucket, the count and sum above it, and its own count, sum, largest
    // and smallest key.
    __shared__ u64 found[7];
    u64 above_c = 0, above_s = 0;  // candidates in range above the current [lo, hi]
    for (;;) {
        if (lo == hi) return KeyAt{lo, above_c + 1, above_s + fixed_p(bits_f32((u32)(lo >> 32)))};
        const int s = 63 - __clzll((long long)(lo ^ hi));
        const int shift = s >= RADIX_BITS - 1 ? s - (RADIX_BITS - 1) : 0;
        for (int b = threadIdx.x; b < RADIX; b += blockDim.x) {
            count[b] = 0;
            sum[b] = 0;
            top[b] = 0;
            bottom[b] = ~0ull;
        }
        __syncthreads();
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float p = probs[j];
            if (!(p > 0.0f)) continue;
            u64 k = sample_key(p, j);
            if (k < lo || k > hi) continue;
            u32 b = (u32)(k >> shift) & (RADIX - 1);
            atomicAdd(&count[b], 1u);
            atomicAdd(&sum[b], fixed_p(p));
            atomicMax(&top[b], k);
            atomicMin(&bottom[b], k);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l holds buckets RADIX - 1 - l * PER down to RADIX - (l + 1) * PER: its run's
            // totals, the lanes above it by a scan, then its own buckets from the top.
            const int PER = RADIX / 32, lane = threadIdx.x, first = RADIX - 1 - lane * PER;
            u64 rc = 0, rs = 0;
            for (int i = 0; i < PER; ++i) {
                rc += count[first - i];
                rs += sum[first - i];
            }
            u64 ic = rc, is = rs;
            for (int o = 1; o < 32; o <<= 1) {
                u64 uc = __shfl_up_sync(FULL_MASK, ic, o), us = __shfl_up_sync(FULL_MASK, is, o);
                if (lane >= o) {
                    ic += uc;
                    is += us;
                }
            }
            u64 c = above_c + ic - rc, sm = above_s + is - rs;
            if (lane == 0) found[0] = RADIX;  // none: only if x is not reached at lo
            __syncwarp();
            for (int i = 0; i < PER; ++i) {
                const int b = first - i;
                u64 nc = c + count[b], ns = sm + sum[b];
                if ((by_sum ? sm : c) < x && (by_sum ? ns : nc) >= x) {
                    found[0] = b;
                    found[1] = c;
                    found[2] = sm;
                    found[3] = count[b];
                    found[4] = sum[b];
                    found[5] = top[b];
                    found[6] = bottom[b];
                }
                c = nc;
                sm = ns;
            }
        }
        __syncthreads();
        const u64 b = found[0];
        if (b == RADIX) return KeyAt{lo, above_c, above_s};  // not reached (see above)
        if (found[3] == 1) return KeyAt{found[5], found[1] + 1, found[2] + found[4]};
        above_c = found[1];
        above_s = found[2];
        // The bucket's smallest and largest keys: the next pass starts at the highest bit
        // where they differ (index bits at once when the bucket's candidates tie in p).
        lo = found[6];
        hi = found[5];
        __syncthreads();  // everyone has read `found` before the next walk rewrites it
    }
}

ROW_KERNEL sample_f32(i64 vocab, const float* logits, const SamplePick* picks, float* probs,
                                      u32* ids, float* logprobs) {
    const SamplePick pk = picks[blockIdx.x];
    const float* l = logits + pk.row * vocab;
    float* pr = probs + (i64)blockIdx.x * vocab;
    // Largest logit (the first index on ties, for greedy) and the log-sum-exp.
    float m = -inf_f32();
    i64 arg = 0;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        float v = l[j];
        if (v > m) {
            m = v;
            arg = j;
        }
    }
    // m ignores NaN (v > m is false for it), so NaN never enters the reduction.
    float bm = block_max(m);
    // The first index holding the largest logit (indices are exact in f32 below 2^24).
    float first = -block_max(m == bm ? -(float)arg : -3.0e38f);
    double inv_t = (double)pk.inv_t;
    double s = 0.0;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) s += exp((double)(l[j] - bm) * inv_t);
    s = block_sum_f64(s);
    double lse = (double)bm * inv_t + log(s);
    i64 id;
    if (pk.greedy) {
        id = (i64)first;
    } else {
        double floor = (double)bm * inv_t + log(1e-12);
        // The probabilities, and over the candidates (p > 0): their number, fixed-point sum,
        // and smallest and largest keys.
        u64 c = 0, total_all = 0, kmin = ~0ull, kmax = 0;
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            double z = (double)l[j] * inv_t;
            float p = z >= floor ? (float)exp(z - lse) : 0.0f;
            pr[j] = p;
            if (p > 0.0f) {
                u64 k = sample_key(p, j);
                c += 1;
                total_all += fixed_p(p);
                kmin = k < kmin ? k : kmin;
                kmax = k > kmax ? k : kmax;
            }
        }
        // (the reductions' barriers also order the writes to pr before the searches)
        c = block_sum_u64(c);
        total_all = block_sum_u64(total_all);
        kmin = block_min_u64(kmin);
        kmax = block_max_u64(kmax);
        u64 n = c;
        if (pk.top_k > 0 && (u64)pk.top_k < n) n = (u64)pk.top_k;
        if (pk.min_p > 0.0f) {
            float bar = bits_f32((u32)(kmax >> 32)) * pk.min_p;
            // keys of p == bar with any index are >= key(bar, max index)
            u64 k = count_at_least(pr, vocab, sample_key(bar, 0xffffffffLL));
            if (k < 1) k = 1;
            if (k < n) n = k;
        }
        KeyAt tp = KeyAt{0, 0, 0};
        if (pk.top_p < 1.0f) {
            // The first n whose running sum reaches top_p; all n when it never does.
            u64 reach = (u64)ceil((double)pk.top_p * 4611686018427387904.0);
            if (total_all >= reach) {
                tp = search_key(pr, vocab, kmin, kmax, true, reach);
                if (tp.count < n) n = tp.count;
            }
        }
        if (n < 1) n = 1;
        // The kept candidates are the keys >= the N-th's, kn; total, their sum. Nothing
        // truncated: every candidate, no search.
        u64 kn = kmin, total = total_all;
        if (n < c) {
            KeyAt nth = tp.count == n ? tp : search_key(pr, vocab, kmin, kmax, false, n);
            kn = nth.key;
            total = nth.sum;
        }
        // The first kept element whose running sum exceeds target, else the N-th (u = 1).
        u64 target = draw_target(pk.u, total);
        u64 pick = target < total ? search_key(pr, vocab, kn, kmax, true, target + 1).key : kn;
        id = (i64)(~(u32)(pick & 0xffffffffu));
    }
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = (u32)id;
        logprobs[blockIdx.x] = (float)((double)l[id] * inv_t - lse);
    }
}
ARTIST_EXPORT(sample_f32)
