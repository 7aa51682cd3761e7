//! Property tests over random shapes, strides and broadcasts, against the reference.

mod common;

use artist_tensor::DType;
use common::{Nd, assert_close};
use proptest::prelude::*;

fn shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..6, 1..=max_rank)
}

/// A shape and a second one broadcastable with it: dims replaced by 1, leading dims dropped.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    shape(4).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), prop::collection::vec(any::<bool>(), r), 0..r).prop_map(|(s, ones, drop)| {
            let b: Vec<usize> = s.iter().zip(&ones).map(|(&d, &o)| if o { 1 } else { d }).skip(drop).collect();
            (s, b)
        })
    })
}

fn permutation(r: usize) -> impl Strategy<Value = Vec<usize>> {
    Just((0..r).collect::<Vec<_>>()).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn binary_ops_broadcast((a, b) in broadcast_pair(), swap in any::<bool>(), seed in 0u64..1000) {
        let (a, b) = if swap { (b, a) } else { (a, b) };
        let (x, y) = (Nd::random(&a, seed), Nd::random(&b, seed + 1));
        let (tx, ty) = (x.tensor(DType::F32), y.tensor(DType::F32));
        assert_close(&tx.add(&ty).unwrap(), &x.zip(&y, |p, q| p + q), 1e-6, 1e-6);
        assert_close(&tx.mul(&ty).unwrap(), &x.zip(&y, |p, q| p * q), 1e-6, 1e-6);
        assert_close(&tx.maximum(&ty).unwrap(), &x.zip(&y, f64::max), 0.0, 0.0);
    }

    #[test]
    fn permuted_views_copy_in_order(s in shape(4).prop_flat_map(|s| { let r = s.len(); (Just(s), permutation(r)) }), seed in 0u64..1000) {
        let (s, order) = s;
        let x = Nd::random(&s, seed);
        let p = x.tensor(DType::F32).permute(&order).unwrap();
        assert_close(&p.contiguous().unwrap(), &x.permute(&order), 0.0, 0.0);
        assert_close(&p.to_dtype(DType::BF16).unwrap(), &x.permute(&order).round_bf16(), 0.0, 0.0);
        // exp of a permuted view: the unary path over strides.
        assert_close(&p.exp().unwrap(), &x.permute(&order).map(f64::exp), 1e-6, 1e-7);
    }

    #[test]
    fn matmul_any_layout(
        m in 1usize..34, k in 1usize..34, n in 1usize..34,
        batch in prop::collection::vec(1usize..4, 0..=2),
        lhs_t in any::<bool>(), rhs_t in any::<bool>(), rhs_shared in any::<bool>(), seed in 0u64..1000,
    ) {
        let mut ls = batch.clone(); ls.extend([m, k]);
        let mut rs = if rhs_shared { vec![] } else { batch.clone() }; rs.extend([k, n]);
        let (a, b) = (Nd::random(&ls, seed), Nd::random(&rs, seed + 1));
        let view = |x: &Nd, t: bool| {
            let r = x.shape.len();
            if t { x.transpose(r - 2, r - 1).tensor(DType::F32).transpose(-2, -1).unwrap() } else { x.tensor(DType::F32) }
        };
        assert_close(&view(&a, lhs_t).matmul(&view(&b, rhs_t)).unwrap(), &a.matmul(&b), 1e-5, 1e-5);
    }

    #[test]
    fn reductions_any_dim(s in shape(4), d in 0usize..4, transposed in any::<bool>(), seed in 0u64..1000) {
        let d = d % s.len();
        let x = Nd::random(&s, seed);
        let (t, x) = if transposed && s.len() >= 2 {
            let r = s.len();
            (x.tensor(DType::F32).transpose(0, r as isize - 1).unwrap(), x.transpose(0, r - 1))
        } else {
            (x.tensor(DType::F32), x)
        };
        assert_close(&t.sum_keepdim(d as isize).unwrap(), &x.fold(d, |l| l.iter().sum()), 1e-5, 1e-5);
        assert_close(&t.max_keepdim(d as isize).unwrap(), &x.fold(d, |l| l.iter().cloned().fold(f64::MIN, f64::max)), 0.0, 0.0);
        let sm = x.lines(d, |l| {
            let m = l.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = l.iter().map(|v| (v - m).exp()).sum();
            l.iter().map(|v| (v - m).exp() / z).collect()
        });
        assert_close(&t.softmax(d as isize).unwrap(), &sm, 1e-5, 1e-7);
    }

    #[test]
    fn narrow_then_copy_from_round_trips(s in shape(3), seed in 0u64..1000, start in 0usize..5) {
        let r = s.len();
        let start = start % s[r - 1];
        let len = s[r - 1] - start;
        let x = Nd::random(&s, seed);
        let dst = artist_tensor::Tensor::zeros(s.clone(), DType::F32, artist_tensor::Device::Cpu).unwrap();
        let part = x.narrow(r - 1, start, len);
        dst.narrow(-1, start, len).unwrap().copy_from(&part.tensor(DType::F32)).unwrap();
        let want = Nd::from_fn(&s, |i| if i[r - 1] >= start { x.at(i) } else { 0.0 });
        assert_close(&dst, &want, 0.0, 0.0);
    }
}
