// Element-wise kernels: unary and binary maps with broadcasting over strided operands,
// comparisons, where, dtype casts, strided copies and fills. Floats compute in f32 and round
// once on write, as the CPU backend does; operand offsets come from a `Strided` description
// (operand 0 is the first input, or the destination of a copy).

// Unary op codes; the host mirror is `UnaryOp` in crates/tensor/src/ops.rs.
#define U_NEG 0
#define U_ABS 1
#define U_EXP 2
#define U_LOG 3
#define U_SQRT 4
#define U_RSQRT 5
#define U_RECIP 6
#define U_SQR 7
#define U_SIN 8
#define U_COS 9
#define U_TANH 10
#define U_RELU 11
#define U_SIGMOID 12
#define U_SILU 13
#define U_GELU 14
#define U_AFFINE 15
#define U_POWF 16
#define U_CLAMP 17

// exp(-x) with the argument capped at 88, as the CPU's exp in sigmoid and SiLU: silu(-inf)
// is then -inf rather than NaN. NaN stays NaN.
__device__ __forceinline__ float exp_neg_capped(float x) {
    float e = -x;
    return expf(e > 88.0f ? 88.0f : e);
}

__device__ __forceinline__ float unary_apply(int op, float x, float a, float b) {
    switch (op) {
        case U_NEG: return -x;
        case U_ABS: return fabsf(x);
        case U_EXP: return expf(x);
        case U_LOG: return logf(x);
        case U_SQRT: return sqrtf(x);
        case U_RSQRT: return 1.0f / sqrtf(x);
        case U_RECIP: return 1.0f / x;
        case U_SQR: return __fmul_rn(x, x);
        case U_SIN: return sinf(x);
        case U_COS: return cosf(x);
        case U_TANH: return tanhf(x);
        case U_RELU: return fmaxf(x, 0.0f);
        case U_SIGMOID: return 1.0f / (1.0f + exp_neg_capped(x));
        case U_SILU: return x / (1.0f + exp_neg_capped(x));
        case U_GELU: {
            float inner = 0.7978846f * (x + 0.044715f * x * x * x);
            return 0.5f * x * (1.0f + tanhf(inner));
        }
        case U_AFFINE: return fmaf(x, a, b);
        case U_POWF: return powf(x, a);
        case U_CLAMP: return x < a ? a : (x > b ? b : x);
        default: return nan_f32();
    }
}

// Binary op codes; the host mirror is `BinaryOp` in crates/tensor/src/ops.rs.
#define B_ADD 0
#define B_SUB 1
#define B_MUL 2
#define B_DIV 3
#define B_MAX 4
#define B_MIN 5
#define B_POW 6
#define B_SILU_MUL 7
#define B_SILU_BACKWARD 8
#define B_SIGMOID_BACKWARD 9
#define B_TANH_BACKWARD 10
#define B_CLAMP_BACKWARD 11

__device__ __forceinline__ float binary_apply(int op, float x, float y, float a, float b) {
    switch (op) {
        case B_ADD: return __fadd_rn(x, y);
        case B_SUB: return __fsub_rn(x, y);
        case B_MUL: return __fmul_rn(x, y);
        case B_DIV: return x / y;
        case B_MAX: return max_nan(x, y);
        case B_MIN: return min_nan(x, y);
        case B_POW: return powf(x, y);
        case B_SILU_MUL: return (x / (1.0f + exp_neg_capped(x))) * y;
        case B_SILU_BACKWARD: {
            // x = gradient, y = the input: g * s * (1 + y (1 - s)), s = sigmoid(y)
            float s = 1.0f / (1.0f + expf(-y));
            return x * (s * (1.0f + y * (1.0f - s)));
        }
        case B_SIGMOID_BACKWARD: return x * y * (1.0f - y);
        case B_TANH_BACKWARD: return x * (1.0f - y * y);
        case B_CLAMP_BACKWARD: return (y >= a && y <= b) ? x : 0.0f;
        default: return nan_f32();
    }
}

template <class T>
__device__ void unary_impl(i64 n, int op, float a, float b, Strided s, const T* x, T* y) {
    if (vector_mode(s)) {
        VEC8_STRIDE(v, n) {
            Vec8<T> u, r;
            load8(u, x + strided_offset(s, 0, 8 * v));
#pragma unroll
            for (int e = 0; e < 8; ++e) r.e[e] = from_f32<T>(unary_apply(op, to_f32(u.e[e]), a, b));
            store8(y + 8 * v, r);
        }
        VEC8_TAIL(i, n) { y[i] = from_f32<T>(unary_apply(op, to_f32(x[strided_offset(s, 0, i)]), a, b)); }
        return;
    }
    GRID_STRIDE(i, n) { y[i] = from_f32<T>(unary_apply(op, to_f32(x[strided_offset(s, 0, i)]), a, b)); }
}

template <class T>
__device__ void binary_impl(i64 n, int op, float a, float b, Strided s, const T* x, const T* y, T* out) {
    if (vector_mode(s)) {
        VEC8_STRIDE(v, n) {
            Vec8<T> u, w, r;
            load8(u, x + strided_offset(s, 0, 8 * v));
            load8(w, y + strided_offset(s, 1, 8 * v));
#pragma unroll
            for (int e = 0; e < 8; ++e) r.e[e] = from_f32<T>(binary_apply(op, to_f32(u.e[e]), to_f32(w.e[e]), a, b));
            store8(out + 8 * v, r);
        }
        VEC8_TAIL(i, n) {
            float u = to_f32(x[strided_offset(s, 0, i)]);
            out[i] = from_f32<T>(binary_apply(op, u, to_f32(y[strided_offset(s, 1, i)]), a, b));
        }
        return;
    }
    GRID_STRIDE(i, n) {
        float u = to_f32(x[strided_offset(s, 0, i)]);
        float v = to_f32(y[strided_offset(s, 1, i)]);
        out[i] = from_f32<T>(binary_apply(op, u, v, a, b));
    }
}

#define ELEMENTWISE_FLOAT(T, S)                                                                          \
    extern "C" __global__ void unary_##S(i64 n, int op, float a, float b, Strided s, const T* x, T* y) { \
        unary_impl<T>(n, op, a, b, s, x, y);                                                             \
    }                                                                                                    \
    ARTIST_EXPORT(unary_##S)                                                                             \
    extern "C" __global__ void binary_##S(i64 n, int op, float a, float b, Strided s, const T* x,       \
                                          const T* y, T* out) {                                          \
        binary_impl<T>(n, op, a, b, s, x, y, out);                                                       \
    }                                                                                                    \
    ARTIST_EXPORT(binary_##S)
FLOAT_TYPES(ELEMENTWISE_FLOAT)

// The gradients of silu(gate) * up from g, contiguous, in one pass: dgate = (g up) silu'(gate),
// dup = g silu(gate), rounded to T where binary(MUL), binary(SILU_BACKWARD) and unary(SILU)
// round, so the same values as those three launches.
template <class T>
__device__ __forceinline__ void silu_mul_bwd_one(T gate, T up, T g, T* dgate, T* dup) {
    float x = to_f32(gate), u = to_f32(up), gv = to_f32(g);
    float gu = to_f32(from_f32<T>(binary_apply(B_MUL, gv, u, 0.0f, 0.0f)));
    *dgate = from_f32<T>(binary_apply(B_SILU_BACKWARD, gu, x, 0.0f, 0.0f));
    float s = to_f32(from_f32<T>(unary_apply(U_SILU, x, 0.0f, 0.0f)));
    *dup = from_f32<T>(binary_apply(B_MUL, gv, s, 0.0f, 0.0f));
}

// `vec` != 0: every pointer is aligned for Vec8 (the host's choice).
template <class T>
__device__ void silu_mul_bwd_impl(i64 n, int vec, const T* gate, const T* up, const T* g, T* dgate, T* dup) {
    i64 done = 0;
    if (vec) {
        VEC8_STRIDE(v, n) {
            Vec8<T> x, u, gv, dx, du;
            load8(x, gate + 8 * v);
            load8(u, up + 8 * v);
            load8(gv, g + 8 * v);
#pragma unroll
            for (int e = 0; e < 8; ++e) silu_mul_bwd_one(x.e[e], u.e[e], gv.e[e], &dx.e[e], &du.e[e]);
            store8(dgate + 8 * v, dx);
            store8(dup + 8 * v, du);
        }
        done = n / 8 * 8;
    }
    for (i64 i = done + global_thread(); i < n; i += global_threads())
        silu_mul_bwd_one(gate[i], up[i], g[i], dgate + i, dup + i);
}

#define SILU_MUL_BWD(T, S)                                                                              \
    extern "C" __global__ void silu_mul_bwd_##S(i64 n, int vec, const T* gate, const T* up, const T* g,  \
                                                T* dgate, T* dup) {                                     \
        silu_mul_bwd_impl<T>(n, vec, gate, up, g, dgate, dup);                                          \
    }                                                                                                   \
    ARTIST_EXPORT(silu_mul_bwd_##S)
FLOAT_TYPES(SILU_MUL_BWD)

// The same gradients for the fused output of a gate-and-up projection: gu holds rows of
// [gate | up] (2 cols wide, contiguous), g rows of cols; out gets f32 rows of [dgate | dup],
// each rounded to T first, as silu_mul_bwd's. `vec` != 0: cols is a multiple of 8 and every
// pointer is aligned for Vec8 (the host's choice), so a vector never crosses a row.
template <class T>
__device__ void swiglu_bwd_impl(i64 rows, i64 cols, int vec, const T* gu, const T* g, float* out) {
    const i64 n = rows * cols;
    if (vec) {
        VEC8_STRIDE(v, n) {
            const i64 r = 8 * v / cols, c = 8 * v - r * cols;
            Vec8<T> x, u, gv, dx, du;
            load8(x, gu + 2 * r * cols + c);
            load8(u, gu + 2 * r * cols + cols + c);
            load8(gv, g + 8 * v);
            Vec8<float> fx, fu;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                silu_mul_bwd_one(x.e[e], u.e[e], gv.e[e], &dx.e[e], &du.e[e]);
                fx.e[e] = to_f32(dx.e[e]);
                fu.e[e] = to_f32(du.e[e]);
            }
            store8(out + 2 * r * cols + c, fx);
            store8(out + 2 * r * cols + cols + c, fu);
        }
        return;
    }
    GRID_STRIDE(i, n) {
        const i64 r = i / cols, c = i - r * cols;
        T dx, du;
        silu_mul_bwd_one(gu[2 * r * cols + c], gu[2 * r * cols + cols + c], g[i], &dx, &du);
        out[2 * r * cols + c] = to_f32(dx);
        out[2 * r * cols + cols + c] = to_f32(du);
    }
}

#define SWIGLU_BWD(T, S)                                                                             \
    extern "C" __global__ void swiglu_bwd_##S(i64 rows, i64 cols, int vec, const T* gu, const T* g,  \
                                              float* out) {                                          \
        swiglu_bwd_impl<T>(rows, cols, vec, gu, g, out);                                             \
    }                                                                                                \
    ARTIST_EXPORT(swiglu_bwd_##S)
FLOAT_TYPES(SWIGLU_BWD)

// ---- comparisons: U8 of 0 and 1, in the element type's own order ------------------------

#define C_EQ 0
#define C_NE 1
#define C_LT 2
#define C_LE 3
#define C_GT 4
#define C_GE 5

template <class V>
__device__ __forceinline__ u8 cmp_apply(int op, V x, V y) {
    switch (op) {
        case C_EQ: return x == y;
        case C_NE: return x != y;
        case C_LT: return x < y;
        case C_LE: return x <= y;
        case C_GT: return x > y;
        case C_GE: return x >= y;
        default: return 0;
    }
}

__device__ __forceinline__ float cmp_value(float x) { return x; }
__device__ __forceinline__ float cmp_value(bf16 x) { return to_f32(x); }
__device__ __forceinline__ float cmp_value(f16 x) { return to_f32(x); }
__device__ __forceinline__ u32 cmp_value(u32 x) { return x; }
__device__ __forceinline__ u32 cmp_value(u8 x) { return x; }

#define CMP(T, S)                                                                                          \
    extern "C" __global__ void cmp_##S(i64 n, int op, Strided s, const T* x, const T* y, u8* out) {      \
        GRID_STRIDE(i, n) {                                                                                \
            out[i] = cmp_apply(op, cmp_value(x[strided_offset(s, 0, i)]), cmp_value(y[strided_offset(s, 1, i)])); \
        }                                                                                                  \
    }                                                                                                      \
    ARTIST_EXPORT(cmp_##S)
ALL_TYPES(CMP)

// ---- moving bytes: where, strided copy, fill, by element size ----------------------------

#define BY_SIZE(M) M(u8, b1) M(u16, b2) M(u32, b4)

// out[i] = cond[op0] ? t[op1] : f[op2]; out is contiguous.
#define WHERE(T, S)                                                                                  \
    extern "C" __global__ void where_##S(i64 n, Strided s, const u8* cond, const T* t, const T* f,   \
                                         T* out) {                                                   \
        GRID_STRIDE(i, n) {                                                                          \
            out[i] = cond[strided_offset(s, 0, i)] ? t[strided_offset(s, 1, i)] : f[strided_offset(s, 2, i)]; \
        }                                                                                            \
    }                                                                                                \
    ARTIST_EXPORT(where_##S)
BY_SIZE(WHERE)

// dst[op0] = src[op1], converted through f32 as the CPU's `to_dtype` converts (a cast), or
// bit for bit when RAW (a copy of a view, or a write through a view such as a KV cache's).
template <class A, class B, bool RAW>
__device__ __forceinline__ B convert(A x) {
    if constexpr (RAW) {
        return x;
    } else {
        return from_f32<B>(to_f32(x));
    }
}

template <class A, class B, bool RAW>
__device__ void convert_impl(i64 n, Strided s, const A* src, B* dst) {
    if (vector_mode(s)) {
        VEC8_STRIDE(v, n) {
            Vec8<A> x;
            Vec8<B> y;
            load8(x, src + strided_offset(s, 1, 8 * v));
#pragma unroll
            for (int e = 0; e < 8; ++e) y.e[e] = convert<A, B, RAW>(x.e[e]);
            store8(dst + strided_offset(s, 0, 8 * v), y);
        }
        VEC8_TAIL(i, n) { dst[strided_offset(s, 0, i)] = convert<A, B, RAW>(src[strided_offset(s, 1, i)]); }
        return;
    }
    GRID_STRIDE(i, n) { dst[strided_offset(s, 0, i)] = convert<A, B, RAW>(src[strided_offset(s, 1, i)]); }
}

#define COPY(T, S)                                                                  \
    extern "C" __global__ void copy_##S(i64 n, Strided s, const T* src, T* dst) {   \
        convert_impl<T, T, true>(n, s, src, dst);                                   \
    }                                                                               \
    ARTIST_EXPORT(copy_##S)
BY_SIZE(COPY)

// dst[op0] += src[op1] in f32: a gradient added into its slice of a larger one (a view) in
// one pass.
extern "C" __global__ void accumulate_f32(i64 n, Strided s, const float* src, float* dst) {
    if (vector_mode(s)) {
        VEC8_STRIDE(v, n) {
            Vec8<float> x, y;
            float* d = dst + strided_offset(s, 0, 8 * v);
            load8(x, src + strided_offset(s, 1, 8 * v));
            load8(y, d);
#pragma unroll
            for (int e = 0; e < 8; ++e) y.e[e] += x.e[e];
            store8(d, y);
        }
        VEC8_TAIL(i, n) { dst[strided_offset(s, 0, i)] += src[strided_offset(s, 1, i)]; }
        return;
    }
    GRID_STRIDE(i, n) { dst[strided_offset(s, 0, i)] += src[strided_offset(s, 1, i)]; }
}
ARTIST_EXPORT(accumulate_f32)

// `vec` != 0: dst is aligned for Vec8 (the host's choice).
#define FILL(T, S)                                                           \
    extern "C" __global__ void fill_##S(i64 n, int vec, T value, T* dst) {   \
        i64 done = 0;                                                        \
        if (vec) {                                                           \
            Vec8<T> r;                                                       \
            for (int e = 0; e < 8; ++e) r.e[e] = value;                      \
            VEC8_STRIDE(v, n) { store8(dst + 8 * v, r); }                    \
            done = n / 8 * 8;                                                \
        }                                                                    \
        for (i64 i = done + global_thread(); i < n; i += global_threads())   \
            dst[i] = value;                                                  \
    }                                                                        \
    ARTIST_EXPORT(fill_##S)
BY_SIZE(FILL)

#define CAST(A, SA, B, SB)                                                                  \
    extern "C" __global__ void cast_##SA##_##SB(i64 n, Strided s, const A* src, B* dst) {   \
        convert_impl<A, B, false>(n, s, src, dst);                                          \
    }                                                                                       \
    ARTIST_EXPORT(cast_##SA##_##SB)
#define CAST_FROM(A, SA) \
    CAST(A, SA, float, f32) CAST(A, SA, bf16, bf16) CAST(A, SA, f16, f16) CAST(A, SA, u32, u32) CAST(A, SA, u8, u8)
ALL_TYPES(CAST_FROM)
