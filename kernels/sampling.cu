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
// Without sorting: every element gets a 64-bit key (p's bits, then the inverted index), so
// "the n-th element" and "the first element whose running sum reaches x" are searches for a
// key threshold, each step one block-wide count or f64 sum over the row. A search first
// finds the probability (a binary search over p's bits between the smallest and the largest
// candidate's, some 30 steps for candidates spanning 1e-12 of the largest), then, only when
// several candidates share it, the index (18 more). A draw without top-k, top-p or min-p
// keeps every candidate and needs no search for the N-th: about 35 passes over the row in
// all. One block per pick; `probs` is a scratch row per pick. Running sums add in another
// order than the host's sequential walk, so a draw could differ only when u * total falls
// within f64 rounding (about 1e-16 relative) of a boundary.

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

// Count of candidates with key >= k, and the f64 sum of their probabilities.
__device__ void keys_at_least(const float* probs, i64 vocab, u64 k, float* count, double* sum) {
    float c = 0.0f;
    double s = 0.0;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        float p = probs[j];
        if (p > 0.0f && sample_key(p, j) >= k) {
            c += 1.0f;
            s += (double)p;
        }
    }
    *count = block_sum(c);
    *sum = block_sum_f64(s);
}

// Whether pred holds for the candidates with key >= k. mode 0: count >= x; mode 1: sum >= x;
// mode 2: sum > x. Monotone: true for small k.
__device__ bool key_pred(const float* probs, i64 vocab, u64 k, int mode, double x) {
    float c;
    double s;
    keys_at_least(probs, vocab, k, &c, &s);
    return mode == 0 ? (double)c >= x : (mode == 1 ? s >= x : s > x);
}

// The largest key k for which `key_pred(k, mode, x)` holds, given that it holds at
// key(p_lo, any index) and that every candidate's p lies in [p_lo, p_hi] (as f32 bits; a
// positive float's bits order as its value). The answer is a candidate's key. First its
// probability's bits b (the largest b whose keys b << 32 and up satisfy pred), then, if
// several candidates have p bits b, its index (keys (b << 32) | ~j for j < vocab).
__device__ u64 search_key(const float* probs, i64 vocab, u32 p_lo, u32 p_hi, int mode, double x) {
    u32 lo = p_lo, hi = p_hi;
    while (lo < hi) {
        u32 mid = lo + (hi - lo) / 2 + 1;
        if (key_pred(probs, vocab, (u64)mid << 32, mode, x))
            lo = mid;
        else
            hi = mid - 1;
    }
    // The candidates with p bits lo: one (the usual case) is the answer.
    float c = 0.0f, js = 0.0f;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
        if (f32_bits(probs[j]) == lo) {
            c += 1.0f;
            js += (float)j;  // exact below 2^24
        }
    }
    c = block_sum(c);
    js = block_sum(js);
    if (c == 1.0f) return ((u64)lo << 32) | (u64)(~(u32)js);
    u32 ilo = (u32)(0u - (u32)vocab), ihi = 0xffffffffu;  // ~j for j = vocab - 1 .. 0
    while (ilo < ihi) {
        u32 mid = ilo + (ihi - ilo) / 2 + 1;
        if (key_pred(probs, vocab, ((u64)lo << 32) | mid, mode, x))
            ilo = mid;
        else
            ihi = mid - 1;
    }
    return ((u64)lo << 32) | ilo;
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
        float pmax = 0.0f, pmin = inf_f32();  // over the candidates (p > 0)
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            double z = (double)l[j] * inv_t;
            float p = z >= floor ? (float)exp(z - lse) : 0.0f;
            pr[j] = p;
            pmax = fmaxf(pmax, p);
            if (p > 0.0f) pmin = fminf(pmin, p);
        }
        pmax = block_max(pmax);
        pmin = block_min(pmin);
        const u32 b_lo = f32_bits(pmin), b_hi = f32_bits(pmax);
        __syncthreads();  // every probability is written before anyone searches
        float c;
        double total_all;
        keys_at_least(pr, vocab, 1, &c, &total_all);
        double n = c;  // candidates
        if (pk.top_k > 0 && (double)pk.top_k < n) n = pk.top_k;
        if (pk.min_p > 0.0f) {
            float bar = pmax * pk.min_p;
            float cm;
            double sm;
            keys_at_least(pr, vocab, sample_key(bar, 0xffffffffLL), &cm, &sm);
            // keys of p == bar with any index are >= key(bar, max index)
            double k = cm < 1.0f ? 1.0 : (double)cm;
            if (k < n) n = k;
        }
        if (pk.top_p < 1.0f) {
            // The first n whose running sum reaches top_p; all n when it never does.
            if (total_all >= (double)pk.top_p) {
                u64 kt = search_key(pr, vocab, b_lo, b_hi, 1, (double)pk.top_p);
                float ct;
                double st;
                keys_at_least(pr, vocab, kt, &ct, &st);
                double k = ct < 1.0f ? 1.0 : (double)ct;
                if (k < n) n = k;
            }
        }
        if (n < 1.0) n = 1.0;
        // The N-th element's key and the kept total, then the draw among keys >= kn. When
        // nothing truncates, every candidate is kept: kn stays 1, below every key.
        u64 kn = 1;
        double total = total_all;
        if (n < (double)c) {
            kn = search_key(pr, vocab, b_lo, b_hi, 0, n);
            float ck;
            keys_at_least(pr, vocab, kn, &ck, &total);
        }
        double target = pk.u * total;
        // The first kept element whose running sum exceeds target, else the N-th (kn, found
        // now if it was not needed above).
        u64 pick;
        if (total > target)
            pick = search_key(pr, vocab, kn > 1 ? (u32)(kn >> 32) : b_lo, b_hi, 2, target);
        else
            pick = kn > 1 ? kn : search_key(pr, vocab, b_lo, b_hi, 0, n);
        id = (i64)(~(u32)(pick & 0xffffffffu));
    }
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = (u32)id;
        logprobs[blockIdx.x] = (float)((double)l[id] * inv_t - lse);
    }
}
ARTIST_EXPORT(sample_f32)
