//! The kernel sources (embedded from `kernels/` by build.rs) and the host side of their
//! calling conventions: the `Strided` operand description and the name suffixes by dtype.

use crate::{DType, Error, Layout, Result, Shape};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Host mirror of `struct Strided` in kernels/common.cuh: up to three operands over one
/// coalesced index space.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided {
    rank: i32,
    /// 0: 64-bit index arithmetic; 1: contiguous; 2: everything fits 32 bits; 3: contiguous
    /// whole vectors; 4: rows of whole vectors ([`Strided::vectorized`]).
    mode: i32,
    dims: [i64; 8],
    strides: [[i64; 8]; 3],
    start: [i64; 3],
}

impl Strided {
    /// `layouts` (at most three, each already broadcast to `shape`) over `shape`, dimensions
    /// merged wherever every operand is contiguous across them.
    pub fn new(op: &'static str, shape: &Shape, layouts: &[&Layout]) -> Result<Strided> {
        debug_assert!(layouts.len() <= 3);
        let n = layouts.len();
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: [Vec<usize>; 3] = Default::default();
        for (i, &d) in shape.dims().iter().enumerate() {
            if d == 1 {
                continue;
            }
            let mergeable =
                !dims.is_empty() && (0..n).all(|k| *strides[k].last().unwrap() == layouts[k].strides()[i] * d);
            if mergeable {
                *dims.last_mut().unwrap() *= d;
                for (k, l) in layouts.iter().enumerate() {
                    *strides[k].last_mut().unwrap() = l.strides()[i];
                }
            } else {
                dims.push(d);
                for (k, l) in layouts.iter().enumerate() {
                    strides[k].push(l.strides()[i]);
                }
            }
        }
        if dims.len() > 8 {
            return Err(Error::Cuda { op, msg: format!("shape {shape} has more than 8 dimensions after merging") });
        }
        let mut s = Strided { rank: dims.len() as i32, mode: 0, dims: [1; 8], strides: [[0; 8]; 3], start: [0; 3] };
        for (d, &v) in dims.iter().enumerate() {
            s.dims[d] = v as i64;
        }
        for (k, l) in layouts.iter().enumerate() {
            s.start[k] = l.start() as i64;
            for (d, &v) in strides[k].iter().enumerate() {
                s.strides[k][d] = v as i64;
            }
        }
        let unit = dims.len() <= 1 && (0..n).all(|k| strides[k].first().is_none_or(|&st| st == 1));
        // The largest linear index and each operand's largest offset, for 32-bit arithmetic.
        let count: usize = dims.iter().product();
        let fits = count <= u32::MAX as usize
            && layouts.iter().enumerate().all(|(k, l)| {
                let reach: usize = dims.iter().zip(&strides[k]).map(|(&d, &st)| (d - 1) * st).sum();
                l.start() + reach <= u32::MAX as usize
            });
        s.mode = if unit {
            1
        } else if fits {
            2
        } else {
            0
        };
        Ok(s)
    }
}

/// Whether `addr`, the first element of an operand of `elem` bytes, is aligned for the
/// kernels' whole vectors of eight elements (`Vec8` in kernels/common.cuh): one 16-byte
/// access for 16-bit types, two for 32-bit ones, one of 8 bytes for u8. Never with
/// `ARTIST_VEC=0`, which keeps every kernel on its element-by-element path (the GPU suite
/// times both).
pub(crate) fn vec8_aligned(addr: u64, elem: usize) -> bool {
    vectors_enabled() && addr.is_multiple_of((8 * elem).min(16) as u64)
}

/// Whether every `(address, element size)` is aligned for whole vectors ([`vec8_aligned`]).
pub(crate) fn vec8_all(ptrs: &[(u64, usize)]) -> bool {
    ptrs.iter().all(|&(p, e)| vec8_aligned(p, e))
}

/// Threads that cover `n` elements: one per vector of eight with `vec`, one per element
/// otherwise.
pub(crate) fn vec_items(n: usize, vec: bool) -> usize {
    if vec { n.div_ceil(8) } else { n }
}

/// False when `ARTIST_VEC=0`.
pub(crate) fn vectors_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ARTIST_VEC").as_deref() != Ok("0"))
}

impl Strided {
    /// The same description on whole vectors of eight elements where every pointer is
    /// aligned for them: mode 3 (STRIDED_VEC8) when it is contiguous; mode 4
    /// (STRIDED_ROWS_VEC8) when the innermost dimension is contiguous in every operand and a
    /// multiple of 8 long, and every outer stride a multiple of 8 elements, so that a vector
    /// never crosses a row and each one's first element is aligned (`vector_mode` in
    /// kernels/common.cuh). `bases` are the operands' storage pointers and element sizes, in
    /// operand order (their starts are added here); `others` are further contiguous pointers
    /// of the launch, such as its output.
    pub fn vectorized(mut self, bases: &[(u64, usize)], others: &[(u64, usize)]) -> Strided {
        let operands = bases.iter().zip(self.start).all(|(&(p, e), st)| vec8_aligned(p + st as u64 * e as u64, e));
        if !operands || !vec8_all(others) {
            return self;
        }
        let r = self.rank as usize;
        let rows = r >= 1
            && self.dims[r - 1] % 8 == 0
            && (0..bases.len())
                .all(|k| self.strides[k][r - 1] == 1 && self.strides[k][..r - 1].iter().all(|s| s % 8 == 0));
        if self.mode == 1 {
            self.mode = 3;
        } else if rows {
            self.mode = 4;
        }
        self
    }

    /// Threads that cover `n` elements: one per vector of eight in modes 3 and 4, one per
    /// element otherwise.
    pub fn work_items(&self, n: usize) -> usize {
        vec_items(n, matches!(self.mode, 3 | 4))
    }

    /// The same description with the one-element loop forced (tests of the vector path).
    #[cfg(test)]
    pub fn scalar(mut self) -> Strided {
        match self.mode {
            3 => self.mode = 1,
            4 => self.mode = 0,
            _ => {}
        }
        self
    }

    /// The same description with 64-bit index arithmetic forced (tests of that path).
    #[cfg(test)]
    pub fn wide(mut self) -> Strided {
        if self.mode == 2 {
            self.mode = 0;
        }
        self
    }

    #[cfg(test)]
    pub fn mode(&self) -> i32 {
        self.mode
    }
}

/// The kernel-name suffix of a dtype: `f32`, `bf16`, `f16`, `u32`, `u8`.
pub(crate) fn suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::U32 => "u32",
        DType::U8 => "u8",
    }
}

/// The suffix of kernels that only move elements of a size: `b1`, `b2`, `b4`.
pub(crate) fn bytes_suffix(d: DType) -> &'static str {
    match d.size_in_bytes() {
        1 => "b1",
        2 => "b2",
        _ => "b4",
    }
}

/// Every `(file, kernel)` the backend launches; the CI test checks each against NVRTC's
/// output and the emulator's registry.
pub fn inventory() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let floats = ["f32", "bf16", "f16"];
    let all = ["f32", "bf16", "f16", "u32", "u8"];
    let sizes = ["b1", "b2", "b4"];
    for s in floats {
        for k in ["unary", "binary", "silu_mul_bwd", "swiglu_bwd"] {
            out.push(("elementwise", format!("{k}_{s}")));
        }
        for k in ["reduce_rows", "reduce_cols", "arg_rows", "arg_cols"] {
            out.push(("reduce", format!("{k}_{s}")));
        }
        out.push(("softmax", format!("softmax_{s}")));
        out.push(("softmax", format!("softmax_entropy_{s}")));
        out.push(("rmsnorm", format!("rms_norm_{s}")));
        out.push(("rmsnorm", format!("add_rms_norm_{s}")));
        out.push(("rmsnorm", format!("rms_norm_bwd_{s}")));
        out.push(("rmsnorm", format!("rms_norm_bwd_dw_{s}")));
        out.push(("rope", format!("rope_{s}")));
        out.push(("rope", format!("qkv_rope_cache_{s}")));
        out.push(("rope", format!("qkv_norm_rope_cache_{s}")));
        for k in ["scatter_add", "index_add", "topk"] {
            out.push(("index", format!("{k}_{s}")));
        }
        for k in [
            "attn_fwd",
            "attn_fwd_paged",
            "attn_fwd_paged_batch",
            "attn_fwd_paged_split",
            "attn_combine_splits",
            "attn_bwd_dq",
            "attn_bwd_dkv",
        ] {
            out.push(("attention", format!("{k}_{s}")));
        }
    }
    for s in all {
        out.push(("elementwise", format!("cmp_{s}")));
        for d in all {
            out.push(("elementwise", format!("cast_{s}_{d}")));
        }
    }
    for s in sizes {
        for k in ["where", "copy", "fill"] {
            out.push(("elementwise", format!("{k}_{s}")));
        }
        for k in ["index_select", "gather", "copy_rows"] {
            out.push(("index", format!("{k}_{s}")));
        }
    }
    for k in ["index_select", "copy_rows"] {
        out.push(("index", format!("{k}_b16")));
    }
    out.push(("elementwise", "accumulate_f32".into()));
    out.push(("reduce", "sum_squares_f32".into()));
    out.push(("adamw", "adamw_f32".into()));
    out.push(("logprob", "logprob_grad_f32".into()));
    for k in ["sample_max_sum_f32", "sample_probs_f32", "sample_pick_f32"] {
        out.push(("sampling", k.into()));
    }
    for d in [64, 128] {
        for k in [
            "attn_fwd_mma",
            "attn_fwd_wgmma",
            "attn_bwd_dq_mma",
            "attn_bwd_dq_wgmma",
            "attn_bwd_dkv_mma",
            "attn_bwd_dkv_wgmma",
        ] {
            out.push(("attention", format!("{k}_d{d}_bf16")));
        }
        for t in [0, 1, 2] {
            out.push(("attention", format!("wgmma_probe_d{d}_t{t}")));
        }
    }
    out.push(("attention", "attn_bwd_delta_bf16".into()));
    for k in ["attn_fwd_paged_batch", "attn_fwd_paged_split"] {
        out.push(("attention", format!("{k}_f32_bf16kv")));
    }
    for d in [64, 128] {
        for s in floats.iter().copied().chain(["f32_bf16kv"]) {
            out.push(("attention", format!("attn_fwd_paged_group_d{d}_{s}")));
        }
    }
    out.push(("rope", "qkv_rope_cache_f32_bf16kv".into()));
    out.push(("rope", "qkv_norm_rope_cache_f32_bf16kv".into()));
    for s in ["bf16", "f16"] {
        out.push(("gemv", format!("gemv_{s}")));
    }
    out
}
