//! Matrix products: `[.., m, k] @ [.., k, n]` with broadcast batch dimensions, and `linear`.

use crate::cpu::dispatch_float;
use crate::cpu::matmul::{
    GEMV_MAX_ROWS, Operand, TASKS_MAX_ROWS, TASKS_MAX_ROWS_HALF, gemv, linear_tasks, linear_widening, matmul,
};
use crate::tensor::check_cpu;
use crate::{DType, Error, Layout, Result, Shape, Tensor};

impl Tensor {
    /// Matrix product over the last two dimensions; leading (batch) dimensions broadcast.
    /// Transposed or sliced operands are read through their strides, without a copy.
    /// Half-precision operands are widened to f32, multiplied, and rounded back.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_into("matmul", rhs, self.dtype())
    }

    /// [`Tensor::matmul`] with an f32 result: half-precision operands (both of one dtype)
    /// are multiplied exactly and summed in f32, and the sums are not rounded back to the
    /// operands' type (cuBLAS's bf16-in, f32-out GEMM on the tensor cores). What a product
    /// under autocast computes, less its output rounding. f32 operands: [`Tensor::matmul`].
    pub fn matmul_f32(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_into("matmul_f32", rhs, DType::F32)
    }

    /// `self @ weight^T + bias` with `self` and `weight` rounded to `compute` first (a half
    /// type: on a GPU, a tensor-core GEMM reading half the bytes; on a CPU with
    /// AVX512-BF16, bf16 weights and more than 8 rows, its bf16 dot products), products summed in f32
    /// and the result in f32, as `nn.Linear` under autocast computes it less the rounding
    /// of its output. A weight already in `compute` is used as it is; `bias` is added in
    /// f32. `compute = F32` is [`Tensor::linear`] on f32 activations.
    pub fn linear_in(&self, weight: &Tensor, bias: Option<&Tensor>, compute: DType) -> Result<Tensor> {
        const OP: &str = "linear_in";
        if !compute.is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: compute });
        }
        if compute == DType::F32 {
            return self.to_dtype(DType::F32)?.linear(weight, bias);
        }
        let [n, k] = weight.dims_n(OP)?;
        if self.dim(-1)? != k {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: weight.shape().clone() });
        }
        let m = self.elem_count() / k.max(1);
        let mut dims = self.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = n;
        let w = weight.to_dtype(compute)?;
        let y = if !self.device().is_cuda() {
            match linear_dpbf16(self, &w, m, k, n, &dims)? {
                Some(y) => y,
                // The rounded activations widened back exactly, and the half weights widened
                // block by block as `linear` does (no f32 copy of them at once).
                None => self.to_dtype(compute)?.to_dtype(DType::F32)?.linear(&w, None)?,
            }
        } else if m <= crate::cuda::ops::GEMV_MAX_ROWS && self.dtype() == DType::F32 {
            // Decode-sized: the gemv kernel rounds the activations as it reads them and
            // reads each weight once; the same values as the GEMM below.
            crate::cuda::ops::linear_widening(self, &w, m, k, n, dims, true)?
        } else {
            let x = self.to_dtype(compute)?.reshape((m, k))?;
            x.matmul_f32(&w.t()?)?.reshape(dims)?
        };
        match bias {
            Some(b) => y.add(&b.to_dtype(DType::F32)?),
            None => Ok(y),
        }
    }

    fn matmul_into(&self, op: &'static str, rhs: &Tensor, out: DType) -> Result<Tensor> {
        if self.device() != rhs.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: rhs.device() });
        }
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: rhs.dtype() });
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op, dtype: self.dtype() });
        }
        let mismatch = || Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: rhs.shape().clone() };
        if self.rank() < 2 || rhs.rank() < 2 {
            return Err(mismatch());
        }
        let (ld, rd) = (self.dims(), rhs.dims());
        let (m, k, k2, n) = (ld[ld.len() - 2], ld[ld.len() - 1], rd[rd.len() - 2], rd[rd.len() - 1]);
        if k != k2 {
            return Err(mismatch());
        }
        let lb = Shape::from(&ld[..ld.len() - 2]);
        let rb = Shape::from(&rd[..rd.len() - 2]);
        let batch = lb.broadcast_with(op, &rb).map_err(|_| mismatch())?;
        let full = |b: &Shape, r: usize, c: usize| Shape::from([b.dims(), &[r, c]].concat());
        if self.device().is_cuda() {
            let ll = self.layout().broadcast_as(&full(&batch, m, k))?;
            let rl = rhs.layout().broadcast_as(&full(&batch, k, n))?;
            return crate::cuda::ops::matmul(self, rhs, &ll, &rl, full(&batch, m, n), out);
        }
        if self.rank() == 2
            && rhs.rank() == 2
            && self.dtype() == DType::BF16
            && let Some(y) = matmul_dpbf16(self, rhs, m, k, n)?
        {
            return y.to_dtype(out);
        }
        let (lhs, rhs) = if self.dtype() == DType::F32 {
            (self.clone(), rhs.clone())
        } else {
            (self.to_dtype(DType::F32)?, rhs.to_dtype(DType::F32)?)
        };
        let ll = lhs.layout().broadcast_as(&full(&batch, m, k))?;
        let rl = rhs.layout().broadcast_as(&full(&batch, k, n))?;
        let (lo, ro) = (batch_offsets(&ll), batch_offsets(&rl));
        let (ls, rs) = (lhs.cpu(), rhs.cpu());
        let r = ll.rank();
        let a = Operand {
            data: f32_slice(&ls),
            batch_offsets: &lo,
            row_stride: ll.strides()[r - 2],
            col_stride: ll.strides()[r - 1],
        };
        let b = Operand {
            data: f32_slice(&rs),
            batch_offsets: &ro,
            row_stride: rl.strides()[r - 2],
            col_stride: rl.strides()[r - 1],
        };
        Tensor::from_storage(matmul(&a, &b, m, k, n).into(), full(&batch, m, n)).to_dtype(out)
    }

    /// `self @ weight^T + bias`, a PyTorch `nn.Linear` with `weight: [out, in]`.
    ///
    /// f32 activations may meet weights of any float type: they are widened on the fly, so a
    /// bf16 checkpoint stays bf16 in memory and computes exactly as its f32 widening would.
    /// On the CPU, up to 8 rows (decoding) take a matrix-vector path that reads each weight
    /// once; up to 128 (256 with half-precision weights), tasks of weight rows each
    /// multiplied by one thread; more, one gemm (docs/ARCHITECTURE.md).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        let [n, k] = weight.dims_n(OP)?;
        if self.dim(-1)? != k {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().clone(), rhs: weight.shape().clone() });
        }
        let m = self.elem_count() / k.max(1);
        if weight.device() != self.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: weight.device() });
        }
        if self.device().is_cuda() {
            let mut dims = self.dims().to_vec();
            *dims.last_mut().expect("rank >= 1") = n;
            let y = if self.dtype() == DType::F32 && weight.dtype().is_float() && weight.dtype() != DType::F32 {
                crate::cuda::ops::linear_widening(self, weight, m, k, n, dims, false)?
            } else {
                self.reshape((m, k))?.matmul(&weight.t()?)?.reshape(dims)?
            };
            return match bias {
                Some(b) if b.dtype() != y.dtype() => y.add(&b.to_dtype(y.dtype())?),
                Some(b) => y.add(b),
                None => Ok(y),
            };
        }
        let mixed = self.dtype() == DType::F32 && weight.dtype().is_float() && weight.dtype() != DType::F32;
        let tasks_rows = if mixed { TASKS_MAX_ROWS_HALF } else { TASKS_MAX_ROWS };
        let y = if k > 0 && self.dtype() == DType::F32 && (mixed || m <= tasks_rows) {
            check_cpu(OP, self.device())?;
            let x = self.contiguous()?;
            let w = weight.contiguous()?;
            let (xv, ws) = (x.cpu_f32(), w.cpu());
            let xv = &*xv;
            let wr = w.layout().contiguous_range().expect("contiguous");
            let out = dispatch_float!(OP, &*ws, |wv| {
                let wv = &wv[wr.clone()];
                if m <= GEMV_MAX_ROWS {
                    gemv(xv, wv, m, k, n)
                } else if m <= tasks_rows {
                    linear_tasks(xv, wv, m, k, n)
                } else {
                    linear_widening(xv, wv, m, k, n)
                }
            });
            let mut dims = self.dims().to_vec();
            *dims.last_mut().expect("rank >= 1") = n;
            Tensor::from_storage(out.into(), dims)
        } else {
            self.matmul(&weight.t()?)?
        };
        match bias {
            Some(b) if b.dtype() != y.dtype() => y.add(&b.to_dtype(y.dtype())?),
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// `linear_in` on the CPU's bf16 dot products (`cpu::dpbf16`), where they run: bf16
/// weights, f32 or bf16 activations, more rows than the matrix-vector path takes (which
/// reads each weight once and is bound by memory, not by multiply-adds). `None` elsewhere.
/// Both callers have already sent CUDA tensors elsewhere.
fn linear_dpbf16(x: &Tensor, w: &Tensor, m: usize, k: usize, n: usize, dims: &[usize]) -> Result<Option<Tensor>> {
    use crate::cpu::CpuStorage;
    if m <= GEMV_MAX_ROWS || !k.is_multiple_of(2) || w.dtype() != DType::BF16 || !crate::cpu::dpbf16::available() {
        return Ok(None);
    }
    let (x, w) = (rows_contiguous(x)?, rows_contiguous(w)?);
    let (xs, ws) = (x.cpu(), w.cpu());
    let (xr, wr) =
        (x.layout().contiguous_range().expect("contiguous"), w.layout().contiguous_range().expect("contiguous"));
    let CpuStorage::BF16(wv) = &*ws else { return Ok(None) };
    let wv = &wv[wr];
    // AMX's tiles where they run and the rows pay for packing the weights; else the
    // AVX512-BF16 dot products.
    use crate::cpu::{amx, dpbf16};
    let out = match &*xs {
        CpuStorage::F32(xv) => {
            let xv = &xv[xr];
            amx::linear(xv, wv, m, k, n).or_else(|| dpbf16::linear(xv, wv, m, k, n))
        }
        CpuStorage::BF16(xv) => {
            let xv = &xv[xr];
            amx::linear(xv, wv, m, k, n).or_else(|| dpbf16::linear(xv, wv, m, k, n))
        }
        _ => None,
    };
    Ok(out.map(|o| Tensor::from_storage(o.into(), dims.to_vec())))
}

/// `t` (2-D, on the CPU) contiguous: as it is, or the transpose of a row-major matrix
/// (strides `(1, s)`) transposed tile by tile in parallel, much faster than a strided copy
/// for bf16; any other layout through `contiguous`.
fn rows_contiguous(t: &Tensor) -> Result<Tensor> {
    use crate::cpu::CpuStorage;
    let l = t.layout();
    if t.is_contiguous() || l.rank() != 2 || l.strides()[0] != 1 || t.dtype() != DType::BF16 {
        return t.contiguous();
    }
    let ([rows, cols], s) = ([l.dims()[0], l.dims()[1]], l.strides()[1]);
    let out = {
        let st = t.cpu();
        let CpuStorage::BF16(v) = &*st else { unreachable!("dtype checked") };
        // t[i][j] = v[start + i + j * s]: the source is `cols` rows of `s`, `rows` of each used.
        crate::cpu::transpose(&v[l.start()..], cols, rows, s)
    };
    Ok(Tensor::from_storage(CpuStorage::BF16(out), [rows, cols]))
}

/// A 2-D product of bf16 matrices on the CPU's bf16 dot products, where they run (as
/// [`linear_dpbf16`]): `lhs` made row-major and `rhs` made `[n, k]` row-major (its transpose;
/// free for the transposed view of a weight, as `x @ w^T`), each copied only if its layout
/// is otherwise. The backward products of `linear_in` (`g @ w`, `g^T @ x`) come here.
fn matmul_dpbf16(lhs: &Tensor, rhs: &Tensor, m: usize, k: usize, n: usize) -> Result<Option<Tensor>> {
    // The outputs' share of the work grows as the sums shorten: at 128 terms (dw of the
    // down projection at 128 rows) the kernel is 1.16-1.28x the widened path
    // (docs/BENCHMARKS.md); shorter sums, not measured, stay widened.
    if k < 128 {
        return Ok(None);
    }
    linear_dpbf16(lhs, &rhs.t()?, m, k, n, &[m, n])
}

fn f32_slice(s: &crate::cpu::CpuStorage) -> &[f32] {
    match s {
        crate::cpu::CpuStorage::F32(v) => v,
        _ => unreachable!("matmul widens its operands to f32 first"),
    }
}

/// Storage offset of each matrix of a `[batch.., r, c]` layout, batches in row-major order.
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let r = l.rank() - 2;
    let (dims, strides) = (&l.dims()[..r], &l.strides()[..r]);
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; r];
    for _ in 0..count {
        out.push(l.start() + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>());
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
