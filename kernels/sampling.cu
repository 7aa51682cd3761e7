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
// key threshold, each step one block-wide count or f64 sum over the row (64 steps at most).
// One block per pick; `probs` is a scratch row per pick. Running sums add in another order
// than the host's sequential walk, so a draw could differ only when u * total falls within
// f64 rounding (about 1e-16 relative) of a boundary.

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

// The largest key threshold k in [lo, hi] for which `pred(count, sum)` holds (pred is true at
// lo and monotone: true for small k). mode 0: count >= x; mode 1: sum >= x; mode 2: sum > x.
__device__ u64 search_key(const float* probs, i64 vocab, u64 lo, u64 hi, int mode, double x) {
    while (lo < hi) {
        u64 mid = lo + (hi - lo) / 2 + 1;
        float c;
        double s;
        keys_at_least(probs, vocab, mid, &c, &s);
        bool ok = mode == 0 ? (double)c >= x : (mode == 1 ? s >= x : s > x);
        if (ok)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
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
        float pmax = 0.0f;
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            double z = (double)l[j] * inv_t;
            float p = z >= floor ? (float)exp(z - lse) : 0.0f;
            pr[j] = p;
            pmax = fmaxf(pmax, p);
        }
        pmax = block_max(pmax);
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
                u64 kt = search_key(pr, vocab, 1, ~(u64)0, 1, (double)pk.top_p);
                float ct;
                double st;
                keys_at_least(pr, vocab, kt, &ct, &st);
                double k = ct < 1.0f ? 1.0 : (double)ct;
                if (k < n) n = k;
            }
        }
        if (n < 1.0) n = 1.0;
        // The N-th element's key, the kept total, then the draw.
        u64 kn = search_key(pr, vocab, 1, ~(u64)0, 0, n);
        float ck;
        double total;
        keys_at_least(pr, vocab, kn, &ck, &total);
        double target = pk.u * total;
        u64 pick = total > target ? search_key(pr, vocab, kn, ~(u64)0, 2, target) : kn;
        id = (i64)(~(u32)(pick & 0xffffffffu));
    }
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = (u32)id;
        logprobs[blockIdx.x] = (float)((double)l[id] * inv_t - lse);
    }
}
ARTIST_EXPORT(sample_f32)
