//! Advantages from each prompt's group of G rollouts: GRPO's (the group's mean
//! subtracted, optionally divided by its standard deviation) or RLOO's (each rollout's
//! reward less the mean of the other G - 1).

use serde::{Deserialize, Serialize};

/// How a rollout's reward becomes its advantage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// `(r_i - mean) / (std + eps)`, or `r_i - mean` without `scale_by_std`.
    #[default]
    Grpo,
    /// REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024):
    /// `r_i - mean_{j != i} r_j`, which is `G / (G - 1)` times `r_i - mean`.
    Rloo,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// `grpo` (the default) or `rloo`.
    pub estimator: AdvantageEstimator,
    /// Divide by the group's standard deviation (GRPO); off, as Dr. GRPO does, leaves
    /// `r - mean`. RLOO's baseline is not scaled: `rloo` needs it off.
    pub scale_by_std: bool,
    /// Added to the standard deviation.
    pub eps: f64,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        AdvantageConfig { estimator: AdvantageEstimator::Grpo, scale_by_std: true, eps: 1e-4 }
    }
}

impl AdvantageConfig {
    /// Settings that contradict each other, in words.
    pub fn check(&self) -> Result<(), String> {
        if self.estimator == AdvantageEstimator::Rloo && self.scale_by_std {
            return Err("advantages.estimator = \"rloo\" subtracts the other rollouts' mean and scales nothing: \
                        set advantages.scale_by_std = false"
                .into());
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(format!("advantages.eps must be a finite number >= 0, got {}", self.eps));
        }
        Ok(())
    }
}

/// The advantages of each consecutive group of `g` rewards: GRPO's `(r_i - mean) / (std +
/// eps)`, with the sample standard deviation (n - 1 in the denominator, as TRL computes
/// it), or `r_i - mean` without `scale_by_std`; RLOO's `r_i - (sum - r_i) / (n - 1)` (0 in
/// a group of one). A group whose rewards are all equal gets zero advantage everywhere.
pub fn group_advantages(rewards: &[f64], g: usize, c: &AdvantageConfig) -> Vec<f64> {
    let g = g.max(1);
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(g) {
        let n = group.len() as f64;
        let sum = group.iter().sum::<f64>();
        if c.estimator == AdvantageEstimator::Rloo {
            let others = |r: f64| if group.len() > 1 { (sum - r) / (n - 1.0) } else { r };
            out.extend(group.iter().map(|&r| r - others(r)));
            continue;
        }
        let mean = sum / n;
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
        let c =
            group_advantages(&[1.0, 3.0], 2, &AdvantageConfig { scale_by_std: false, eps: 0.0, ..Default::default() });
        assert_eq!(c, vec![-1.0, 1.0]);
        assert!(group_is_flat(&[1.0, 1.0]) && !group_is_flat(&[1.0, 2.0]));
    }

    #[test]
    fn leave_one_out() {
        let c = AdvantageConfig { estimator: AdvantageEstimator::Rloo, scale_by_std: false, eps: 0.0 };
        // Each reward against the mean of the other two: 1 - 2.5, 3 - 1.5, 2 - 2; then a
        // flat group, and a group of one, which has no others.
        let a = group_advantages(&[1.0, 3.0, 2.0, 5.0, 5.0, 5.0, 7.0], 3, &c);
        assert_eq!(a, vec![-1.5, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // G / (G - 1) times GRPO's unscaled advantage.
        let rewards = [0.25, 2.0, 0.0, 2.125, 0.5];
        let plain = group_advantages(&rewards, 5, &AdvantageConfig { scale_by_std: false, ..Default::default() });
        let rloo = group_advantages(&rewards, 5, &c);
        for (r, p) in rloo.iter().zip(&plain) {
            assert!((r - 1.25 * p).abs() < 1e-12, "{r} vs 5/4 x {p}");
        }
        assert!(AdvantageConfig { scale_by_std: true, ..c }.check().unwrap_err().contains("scale_by_std = false"));
        assert!(c.check().is_ok() && AdvantageConfig::default().check().is_ok());
    }
}
