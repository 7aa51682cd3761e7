//! Indexing kernels on contiguous data viewed as `[outer, size, inner]` around one
//! dimension: index-select (embedding), gather, scatter-add, index-add, concat, top-k.

use rayon::prelude::*;

use super::min_items;
use crate::WithDType;

/// `out[o, j, :] = data[o, ids[j], :]`. Indices were checked by the caller.
pub(crate) fn index_select<T: WithDType>(data: &[T], ids: &[u32], outer: usize, size: usize, inner: usize) -> Vec<T> {
    let mut out = vec![T::default(); outer * ids.len() * inner];
    if inner == 0 {
        return out;
    }
    out.par_chunks_mut(inner).with_min_len(min_items(inner)).enumerate().for_each(|(r, row)| {
        let (o, j) = (r / ids.len(), r % ids.len());
        let src = (o * size + ids[j] as usize) * inner;
        row.copy_from_slice(&data[src..src + inner]);
    });
    out
}

/// `out[o, j, i] = data[o, index[o, j, i], i]` for `index: [outer, k, inner]`.
pub(crate) fn gather<T: WithDType>(
    data: &[T],
    index: &[u32],
    outer: usize,
    size: usize,
    k: usize,
    inner: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); outer * k * inner];
    out.par_iter_mut().with_min_len(1 << 12).enumerate().for_each(|(idx, out)| {
        let (o, i) = (idx / (k * inner), idx % inner);
        *out = data[(o * size + index[idx] as usize) * inner + i];
    });
    out
}

/// `dst[o, index[o, j, i], i] += src[o, j, i]`, in f32, sequential so repeated indices add
/// up deterministically.
pub(crate) fn scatter_add<T: WithDType>(dst: &mut [T], index: &[u32], src: &[T], size: usize, k: usize, inner: usize) {
    for (idx, (&ix, &s)) in index.iter().zip(src).enumerate() {
        let (o, i) = (idx / (k * inner), idx % inner);
        let d = &mut dst[(o * size + ix as usize) * inner + i];
        *d = T::from_f32(d.to_f32() + s.to_f32());
    }
}

/// `dst[o, ids[j], :] += src[o, j, :]` (the backward of index-select). Rows of one `o` are
/// added in order of `j`, so repeated ids sum deterministically; `o` blocks run in parallel.
pub(crate) fn index_add<T: WithDType>(dst: &mut [T], ids: &[u32], src: &[T], size: usize, inner: usize) {
    if inner == 0 || size == 0 {
        return;
    }
    let n = ids.len();
    dst.par_chunks_mut(size * inner).zip(src.par_chunks(n * inner)).for_each(|(dst, src)| {
        for (j, &id) in ids.iter().enumerate() {
            let d = &mut dst[id as usize * inner..(id as usize + 1) * inner];
            for (d, &s) in d.iter_mut().zip(&src[j * inner..(j + 1) * inner]) {
                *d = T::from_f32(d.to_f32() + s.to_f32());
            }
        }
    });
}

/// Concatenates parts `[outer, size_p, inner]` along the middle dimension.
pub(crate) fn concat<T: WithDType>(parts: &[(&[T], usize)], outer: usize, inner: usize) -> Vec<T> {
    let total: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for &(data, size) in parts {
            out.extend_from_slice(&data[o * size * inner..(o + 1) * size * inner]);
        }
    }
    out
}

/// The `k` largest elements of each contiguous row of `cols`, in descending order (ties:
/// lower index first; NaN counts as largest), with their indices.
pub(crate) fn topk<T: WithDType>(data: &[T], cols: usize, k: usize) -> (Vec<T>, Vec<u32>) {
    let rows = data.len().checked_div(cols).unwrap_or(0);
    let mut values = vec![T::default(); rows * k];
    let mut indices = vec![0u32; rows * k];
    if k == 0 {
        return (values, indices);
    }
    let desc = |row: &[T], a: &u32, b: &u32| {
        let (x, y) = (row[*a as usize].to_f32(), row[*b as usize].to_f32());
        let key = |v: f32| if v.is_nan() { f32::INFINITY } else { v };
        key(y).total_cmp(&key(x)).then_with(|| y.is_nan().cmp(&x.is_nan())).then(a.cmp(b))
    };
    values.par_chunks_mut(k).zip(indices.par_chunks_mut(k)).zip(data.par_chunks(cols)).for_each_init(
        Vec::new,
        |order: &mut Vec<u32>, ((vals, idx), row)| {
            order.clear();
            order.extend(0..cols as u32);
            if k < cols {
                order.select_nth_unstable_by(k - 1, |a, b| desc(row, a, b));
                order.truncate(k);
            }
            order.sort_unstable_by(|a, b| desc(row, a, b));
            for ((v, i), &j) in vals.iter_mut().zip(idx.iter_mut()).zip(order.iter()) {
                *v = row[j as usize];
                *i = j;
            }
        },
    );
    (values, indices)
}
