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
// radix select: per level, a histogram of the keys in range by the next bits (count,
// fixed-point sum and largest and smallest key per bucket, by shared-memory atomics, exact in
// any order), which one warp walks from the top to the bucket where the running count or sum
// reaches x; that bucket's keys are the next range. A bucket that holds one candidate ends
// the search: its largest key is the answer. The first level (the probability's exponent and
// two mantissa bits) is built once for every search of a draw; each further level is a pass
// over the row, RADIX_BITS bits below the highest bit where the range's smallest and largest
// keys differ (index bits only when candidates tie in probability).
//
// Three kernels: the largest logit and the normaliser together (online: a running sum
// rescaled as the running largest grows), then the probabilities, each with a block per
// chunk of the row, since their f64 exponentials on one SM would bound batch-1 decoding; then
// a block per pick combines the chunks' shares in chunk order, builds the first level from
// the probabilities (no exponentials) and searches. Passes over the row per draw: three, plus
// what the searches need beyond their first level (typically none to three). Greedy: the
// first. `probs` is a scratch row per pick.

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
// The first level of every search of a draw, built once from the probabilities: the key bits
// 53-61, that is the probability's bits 21-29 (exponent and two mantissa bits: quarter
// octaves), which hold every p <= 1.
#define L1_SHIFT 53
#define L1_BUCKETS 512

// A histogram of candidates' keys by bucket: count, fixed-point sum, largest and smallest key.
template <int NB>
struct Hist {
    u32 count[NB];
    u64 sum[NB], top[NB], bottom[NB];
};

template <int NB>
__device__ void hist_clear(Hist<NB>& h) {
    for (int b = threadIdx.x; b < NB; b += blockDim.x) {
        h.count[b] = 0;
        h.sum[b] = 0;
        h.top[b] = 0;
        h.bottom[b] = ~0ull;
    }
}

template <int NB>
__device__ __forceinline__ void hist_add(Hist<NB>& h, u32 b, u64 k, u64 q) {
    atomicAdd(&h.count[b], 1u);
    atomicAdd(&h.sum[b], q);
    atomicMax(&h.top[b], k);
    atomicMin(&h.bottom[b], k);
}

// A search's answer: a candidate's key, and the count and fixed-point sum of the candidates
// with keys at or above it.
struct KeyAt {
    u64 key, count, sum;
};

// One warp walks the buckets from the top, from `above` (the count and sum of the keys above
// the histogram's range), to the bucket where the running count (`by_sum` false) or sum
// first reaches x: found = {bucket, count and sum above it, its count, sum, top, bottom},
// found[0] = ~0 when x is not reached. Lane l holds buckets NB - 1 - l * PER down to
// NB - (l + 1) * PER: its run's totals, the lanes above it by a scan, then its own buckets.
template <int NB>
__device__ void walk_buckets(const Hist<NB>& h, u64 above_c, u64 above_s, bool by_sum, u64 x, u64* found) {
    if (threadIdx.x >= 32) return;
    constexpr int PER = NB / 32;
    const int lane = threadIdx.x, first = NB - 1 - lane * PER;
    u64 rc = 0, rs = 0;
    for (int i = 0; i < PER; ++i) {
        rc += h.count[first - i];
        rs += h.sum[first - i];
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
    if (lane == 0) found[0] = ~0ull;
    __syncwarp();
    for (int i = 0; i < PER; ++i) {
        const int b = first - i;
        u64 nc = c + h.count[b], ns = sm + h.sum[b];
        if ((by_sum ? sm : c) < x && (by_sum ? ns : nc) >= x) {
            found[0] = b;
            found[1] = c;
            found[2] = sm;
            found[3] = h.count[b];
            found[4] = h.sum[b];
            found[5] = h.top[b];
            found[6] = h.bottom[b];
        }
        c = nc;
        sm = ns;
    }
}

// The largest key k in [lo, kmax] (lo a candidate's key, kmax the largest) at which the
// candidates with keys in [k, kmax] reach x: in count (`by_sum` false) or in fixed-point sum.
// They must reach it at lo. Radix select (see the top of the file): the first level is `l1`,
// the histogram of every candidate (its bucket holding lo may hold keys below lo too: they only add to what the walk finds reached there, where x is
// reached anyway, and the range is cut at lo after it); each further pass narrows the range
// to the keys of one bucket of the RADIX_BITS bits below the highest bit where the range's
// smallest and largest keys differ.
__device__ KeyAt search_key(const float* probs, i64 vocab, const Hist<L1_BUCKETS>& l1, u64 lo, u64 hi, bool by_sum,
                            u64 x) {
    __shared__ Hist<RADIX> h;
    __shared__ u64 found[7];  // the walk's verdict (walk_buckets)
    u64 above_c = 0, above_s = 0;  // candidates in range above the current [lo, hi]
    __syncthreads();  // every thread has read the last search's `found`
    walk_buckets(l1, 0, 0, by_sum, x, found);
    __syncthreads();
    for (;;) {
        const u64 b = found[0];
        if (b == ~0ull) return KeyAt{lo, above_c, above_s};  // not reached (see above)
        if (found[3] == 1) return KeyAt{found[5], found[1] + 1, found[2] + found[4]};
        above_c = found[1];
        above_s = found[2];
        // The bucket's smallest and largest keys (the smallest in range): the next pass starts
        // at the highest bit where they differ (index bits at once when the bucket's
        // candidates tie in p).
        lo = found[6] > lo ? found[6] : lo;
        hi = found[5];
        __syncthreads();  // everyone has read `found` before the next walk rewrites it
        if (lo == hi) return KeyAt{lo, above_c + 1, above_s + fixed_p(bits_f32((u32)(lo >> 32)))};
        const int s = 63 - __clzll((long long)(lo ^ hi));
        const int shift = s >= RADIX_BITS - 1 ? s - (RADIX_BITS - 1) : 0;
        hist_clear(h);
        __syncthreads();
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float p = probs[j];
            if (!(p > 0.0f)) continue;
            u64 k = sample_key(p, j);
            if (k < lo || k > hi) continue;
            hist_add(h, (u32)(k >> shift) & (RADIX - 1), k, fixed_p(p));
        }
        __syncthreads();
        walk_buckets(h, above_c, above_s, by_sum, x, found);
        __syncthreads();
    }
}

// The row is cut into chunks of SAMPLE_CHUNK logits, one block each for the two passes that
// compute exponentials (f64, so the host's values: slow on one SM), so that a batch of one
// row still spreads them over the GPU. The chunking depends on the vocabulary alone, so a
// row's sums, and so its draw, do not depend on the batch around it.
#define SAMPLE_CHUNK 8192

// A chunk's share: its largest logit m and the first index holding it, the sum of
// exp((l - m) / T) over it; then, over its candidates, their number, fixed-point sum and
// smallest and largest keys.
struct SampleChunk {
    float m;
    i32 first;
    double s;
    u64 c, total, kmin, kmax;
};

// The row's largest logit, the first index holding it, and the log-sum-exp, from its chunks'
// shares, added in chunk order (the same bits wherever it is computed).
__device__ void combine_chunks(const SampleChunk* ch, int chunks, double inv_t, float* bm, i64* first,
                               double* lse) {
    float m = -inf_f32();
    i64 f = 0;
    for (int i = 0; i < chunks; ++i) {
        if (ch[i].m > m) {
            m = ch[i].m;
            f = ch[i].first;
        }
    }
    double s = 0.0;
    for (int i = 0; i < chunks; ++i) s += ch[i].m == m ? ch[i].s : ch[i].s * exp((double)(ch[i].m - m) * inv_t);
    *bm = m;
    *first = f;
    *lse = (double)m * inv_t + log(s);
}

// Pass one, a block per (chunk, pick): the chunk's largest logit (the first index on ties)
// and its sum of exp((l - m) / T), online: each thread sums against its running largest m,
// rescaling when m grows.
ROW_KERNEL sample_max_sum_f32(i64 vocab, const float* logits, const SamplePick* picks, SampleChunk* part) {
    const SamplePick pk = picks[blockIdx.y];
    const float* l = logits + pk.row * vocab;
    const i64 j0 = (i64)blockIdx.x * SAMPLE_CHUNK, j1 = j0 + SAMPLE_CHUNK < vocab ? j0 + SAMPLE_CHUNK : vocab;
    const double inv_t = (double)pk.inv_t;
    float m = -inf_f32();
    i64 arg = j0;
    double s = 0.0;
    for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        float v = l[j];
        if (v > m) {
            s = s * exp((double)(m - v) * inv_t) + 1.0;
            m = v;
            arg = j;
        } else {
            s += exp((double)(v - m) * inv_t);
        }
    }
    // m ignores NaN (v > m is false for it), so NaN never enters the reduction (it does the sum).
    float bm = block_max(m);
    // The first index holding the largest logit (indices are exact in f32 below 2^24).
    float first = -block_max(m == bm ? -(float)arg : -3.0e38f);
    s = block_sum_f64(m == bm ? s : s * exp((double)(m - bm) * inv_t));
    if (threadIdx.x == 0) {
        SampleChunk* out = part + (i64)blockIdx.y * gridDim.x + blockIdx.x;
        out->m = bm;
        out->first = (i32)first;
        out->s = s;
    }
}
ARTIST_EXPORT(sample_max_sum_f32)

// Pass two, a block per (chunk, pick), for picks that draw: the chunk's probabilities, and
// its candidates' (p > 0) number, fixed-point sum and smallest and largest keys.
ROW_KERNEL sample_probs_f32(i64 vocab, const float* logits, const SamplePick* picks, SampleChunk* part, float* probs) {
    const SamplePick pk = picks[blockIdx.y];
    if (pk.greedy) return;
    const float* l = logits + pk.row * vocab;
    float* pr = probs + (i64)blockIdx.y * vocab;
    SampleChunk* ch = part + (i64)blockIdx.y * gridDim.x;
    const i64 j0 = (i64)blockIdx.x * SAMPLE_CHUNK, j1 = j0 + SAMPLE_CHUNK < vocab ? j0 + SAMPLE_CHUNK : vocab;
    const double inv_t = (double)pk.inv_t;
    float bm;
    i64 first;
    double lse;
    combine_chunks(ch, (int)gridDim.x, inv_t, &bm, &first, &lse);
    const double floor = (double)bm * inv_t + log(1e-12);
    u64 c = 0, total = 0, kmin = ~0ull, kmax = 0;
    for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        double z = (double)l[j] * inv_t;
        float p = z >= floor ? (float)exp(z - lse) : 0.0f;
        pr[j] = p;
        if (p > 0.0f) {
            u64 k = sample_key(p, j);
            c += 1;
            total += fixed_p(p);
            kmin = k < kmin ? k : kmin;
            kmax = k > kmax ? k : kmax;
        }
    }
    c = block_sum_u64(c);
    total = block_sum_u64(total);
    kmin = block_min_u64(kmin);
    kmax = block_max_u64(kmax);
    if (threadIdx.x == 0) {
        ch[blockIdx.x].c = c;
        ch[blockIdx.x].total = total;
        ch[blockIdx.x].kmin = kmin;
        ch[blockIdx.x].kmax = kmax;
    }
}
ARTIST_EXPORT(sample_probs_f32)

// Pass three, a block per pick: the draw, from the chunks' shares and the probabilities.
ROW_KERNEL sample_pick_f32(i64 vocab, const float* logits, const SamplePick* picks, const SampleChunk* part,
                           int chunks, const float* probs, u32* ids, float* logprobs) {
    const SamplePick pk = picks[blockIdx.x];
    const float* l = logits + pk.row * vocab;
    const float* pr = probs + (i64)blockIdx.x * vocab;
    const SampleChunk* ch = part + (i64)blockIdx.x * chunks;
    const double inv_t = (double)pk.inv_t;
    float bm;
    i64 first, id;
    double lse;
    combine_chunks(ch, chunks, inv_t, &bm, &first, &lse);
    if (pk.greedy) {
        id = first;
    } else {
        u64 c = 0, total_all = 0, kmin = ~0ull, kmax = 0;
        for (int i = 0; i < chunks; ++i) {
            c += ch[i].c;
            total_all += ch[i].total;
            kmin = ch[i].kmin < kmin ? ch[i].kmin : kmin;
            kmax = ch[i].kmax > kmax ? ch[i].kmax : kmax;
        }
        // The first level of the searches' histograms, over every candidate.
        __shared__ Hist<L1_BUCKETS> l1;
        hist_clear(l1);
        __syncthreads();
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float p = pr[j];
            if (p > 0.0f) {
                u64 k = sample_key(p, j);
                hist_add(l1, (u32)(k >> L1_SHIFT) & (L1_BUCKETS - 1), k, fixed_p(p));
            }
        }
        // (search_key's barrier orders the histogram before its first walk)
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
                tp = search_key(pr, vocab, l1, kmin, kmax, true, reach);
                if (tp.count < n) n = tp.count;
            }
        }
        if (n < 1) n = 1;
        // The kept candidates are the keys >= the N-th's, kn; total, their sum. Nothing
        // truncated: every candidate, no search.
        u64 kn = kmin, total = total_all;
        if (n < c) {
            KeyAt nth = tp.count == n ? tp : search_key(pr, vocab, l1, kmin, kmax, false, n);
            kn = nth.key;
            total = nth.sum;
        }
        // The first kept element whose running sum exceeds target, else the N-th (u = 1).
        u64 target = draw_target(pk.u, total);
        u64 pick = target < total ? search_key(pr, vocab, l1, kn, kmax, true, target + 1).key : kn;
        id = (i64)(~(u32)(pick & 0xffffffffu));
    }
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = (u32)id;
        logprobs[blockIdx.x] = (float)((double)l[id] * inv_t - lse);
    }
}
ARTIST_EXPORT(sample_pick_f32)
