//! Unbiased estimates from `n` samples of a problem, `c` of them correct: pass@k (the
//! chance that at least one of k samples drawn without replacement is correct; Chen et al.,
//! 2021) and pass^k (the chance that all k are; tau-bench's consistency measure, Yao et
//! al., 2024).

/// pass@k: `1 - C(n - c, k) / C(n, k)`, computed as a product to stay in range.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// pass^k: `C(c, k) / C(n, k)`, computed as a product to stay in range.
pub fn pass_hat_k(n: usize, c: usize, k: usize) -> f64 {
    if c < k {
        return 0.0;
    }
    (0..k).map(|i| (c - i) as f64 / (n - i) as f64).product()
}

#[cfg(test)]
mod tests {
    fn choose(n: usize, k: usize) -> f64 {
        if k > n {
            return 0.0;
        }
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    /// Both against their binomial forms.
    #[test]
    fn match_the_binomial_forms() {
        for n in 1..9 {
            for c in 0..=n {
                for k in 1..=n {
                    let want = if n - c < k { 1.0 } else { 1.0 - choose(n - c, k) / choose(n, k) };
                    assert!((super::pass_at_k(n, c, k) - want).abs() < 1e-12, "n {n} c {c} k {k}");
                    let want = choose(c, k) / choose(n, k);
                    assert!((super::pass_hat_k(n, c, k) - want).abs() < 1e-12, "n {n} c {c} k {k}");
                }
            }
        }
        assert_eq!(super::pass_at_k(5, 0, 1), 0.0);
        assert!((super::pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        assert!((super::pass_hat_k(5, 2, 2) - 0.1).abs() < 1e-12);
        assert_eq!((super::pass_hat_k(4, 4, 4), super::pass_hat_k(4, 3, 4)), (1.0, 0.0));
    }
}
