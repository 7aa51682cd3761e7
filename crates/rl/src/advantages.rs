//! Advantages normalised within each prompt's group of G rollouts.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// Divide by the group's standard deviation (GRPO); off, as Dr. GRPO does, leaves
    /// `r - mean`.
    pub scale_by_std: bool,
    /// Added to the standard deviation.
    pub eps: f64,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        AdvantageConfig { scale_by_std: true, eps: 1e-4 }
    }
}

/// `(r_i - mean) / (std + eps)` within each consecutive group of `g` rewards, with the
/// sample standard deviation (n - 1 in the denominator, as TRL computes it). A group whose
/// rewards are all equal gets zero advantage everywhere.
pub fn group_advantages(rewards: &[f64], g: usize, c: &AdvantageConfig) -> Vec<f64> {
    let g = g.max(1);
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(g) {
        let n = group.len() as f64;
        let mean = group.iter().sum::<f64>() / n;
        let var = if group.len() > 1 { group.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        let scale = if c.scale_by_std { var.sqrt() + c.eps } else { 1.0 };
        out.extend(group.iter().map(|r| (r - mean) / scale));
    }
    out
}

/// Whether every reward of the group is the same (such a group teaches nothing).
pub fn group_is_flat(group: &[f64]) -> bool {
    group.windows(2).all(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_per_group() {
        let a = group_advantages(&[1.0, 3.0, 2.0, 2.0, 0.0, 4.0], 3, &AdvantageConfig::default());
        // Group 1: mean 2, sample std 1.
        assert!((a[0] + 1.0 / 1.0001).abs() < 1e-12 && (a[1] - 1.0 / 1.0001).abs() < 1e-12 && a[2] == 0.0);
        let b = group_advantages(&[2.0, 2.0, 2.0], 3, &AdvantageConfig::default());
        assert_eq!(b, vec![0.0; 3]);
        let c = group_advantages(&[1.0, 3.0], 2, &AdvantageConfig { scale_by_std: false, eps: 0.0 });
        assert_eq!(c, vec![-1.0, 1.0]);
        assert!(group_is_flat(&[1.0, 1.0]) && !group_is_flat(&[1.0, 2.0]));
    }
}
