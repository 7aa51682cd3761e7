//! Advantages from each prompt's group of G rollouts: GRPO's (the group's mean
//! subtracted, optionally divided by its standard deviation), RLOO's (each rollout's
//! reward less the mean of the other G - 1), or REINFORCE++'s with a baseline (the group's
//! mean subtracted, then whitened over all generated tokens of the batch: [`whiten`]).

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
    /// REINFORCE++ with a baseline (Hu et al., 2025; veRL's `reinforce_plus_plus_baseline`):
    /// `r_i - mean` within the group, then whitened over the batch's generated tokens
    /// (their token-weighted mean subtracted, divided by their unbiased deviation).
    ReinforcePlusPlusBaseline,
}

/// Whose standard deviation GRPO's advantages are divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StdLevel {
    /// The group's own rewards (GRPO).
    #[default]
    Group,
    /// Every reward of the step's batch (the rollouts trained on, over all ranks): the
    /// group's mean subtracted, the batch's deviation divided by (TRL's `scale_rewards =
    /// "batch"`; "Lite PPO", Liu et al., 2025), so a group of nearly equal rewards is not
    /// blown up to unit scale.
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// `grpo` (the default) or `rloo`.
    pub estimator: AdvantageEstimator,
    /// Divide by a standard deviation (GRPO); off, as Dr. GRPO does, leaves `r - mean`.
    /// RLOO's baseline is not scaled: `rloo` needs it off.
    pub scale_by_std: bool,
    /// The group's deviation or the batch's ([`StdLevel`]).
    pub std_level: StdLevel,
    /// Added to the standard deviation.
    pub eps: f64,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        AdvantageConfig {
            estimator: AdvantageEstimator::Grpo,
            scale_by_std: true,
            std_level: StdLevel::Group,
            eps: 1e-4,
        }
    }
}

impl AdvantageConfig {
    /// Whether the advantages [`group_advantages`] gives are divided afterwards by the
    /// batch's deviation ([`batch_std_scale`]).
    pub fn scales_by_batch(&self) -> bool {
        self.estimator == AdvantageEstimator::Grpo && self.scale_by_std && self.std_level == StdLevel::Batch
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
        if self.estimator == AdvantageEstimator::ReinforcePlusPlusBaseline && self.scale_by_std {
            return Err("advantages.estimator = \"reinforce_plus_plus_baseline\" scales by the batch's deviation, \
                        not the group's: set advantages.scale_by_std = false"
                .into());
        }
        if self.std_level == StdLevel::Batch && !(self.estimator == AdvantageEstimator::Grpo && self.scale_by_std) {
            return Err("advantages.std_level = \"batch\" divides GRPO's advantages by the batch's deviation: \
                        it needs advantages.estimator = \"grpo\" and advantages.scale_by_std = true"
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
/// it), or `r_i - mean` without `scale_by_std` or with `std_level = "batch"` (which
/// [`batch_std_scale`] divides afterwards); RLOO's `r_i - (sum - r_i) / (n - 1)` (0 in a
/// group of one). A group whose rewards are all equal gets zero advantage everywhere.
pub fn group_advantages(rewards: &[f64], g: usize, c: &AdvantageConfig) -> Vec<f64> {
    let g = g.max(1);
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(g) {
        let n = group.len() as f64;
        let sum = group.iter().sum::<f64>();
        if c.estimator == AdvantageEstimator::ReinforcePlusPlusBaseline {
            out.extend(group.iter().map(|&r| r - sum / n));
            continue;
        }
        if c.estimator == AdvantageEstimator::Rloo {
            let others = |r: f64| if group.len() > 1 { (sum - r) / (n - 1.0) } else { r };
            out.extend(group.iter().map(|&r| r - others(r)));
            continue;
        }
        let mean = sum / n;
        let var = if group.len() > 1 { group.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        let scale = if c.scale_by_std && c.std_level == StdLevel::Group { var.sqrt() + c.eps } else { 1.0 };
        out.extend(group.iter().map(|r| (r - mean) / scale));
    }
    out
}

/// What [`whiten`] needs of a batch, summable over its parts (data-parallel ranks): the
/// generated tokens `N`, and the sums over them of each token's advantage and its square
/// (a rollout of `n` tokens and advantage `a` adds `n`, `n a`, `n a^2`).
pub fn whitening_sums(rollouts: impl IntoIterator<Item = (f32, usize)>) -> [f64; 3] {
    let mut sums = [0f64; 3];
    for (a, n) in rollouts {
        let (a, n) = (a as f64, n as f64);
        sums[0] += n;
        sums[1] += n * a;
        sums[2] += n * a * a;
    }
    sums
}

/// REINFORCE++'s whitening of an advantage with the batch's [`whitening_sums`], as veRL's
/// `masked_whiten` over response tokens: `(a - mean) / sqrt(var + 1e-8)`, `var` the
/// unbiased variance (a batch of one token has variance 0).
pub fn whiten(a: f32, [n, sum, sum_sq]: [f64; 3]) -> f32 {
    let mean = sum / n.max(1.0);
    let var = if n > 1.0 { ((sum_sq - n * mean * mean) / (n - 1.0)).max(0.0) } else { 0.0 };
    ((a as f64 - mean) / (var + 1e-8).sqrt()) as f32
}

/// What [`batch_std_scale`] needs of a batch's rewards, summable over its parts (ranks):
/// their count, sum and sum of squares.
pub fn reward_sums(rewards: impl IntoIterator<Item = f64>) -> [f64; 3] {
    let mut sums = [0f64; 3];
    for r in rewards {
        sums[0] += 1.0;
        sums[1] += r;
        sums[2] += r * r;
    }
    sums
}

/// `std_level = "batch"`: an advantage `r - mean` (the group's mean) divided by the batch's
/// unbiased standard deviation of the rewards plus `eps` (0 for a batch of one), as TRL's
/// `rewards.std()`.
pub fn batch_std_scale(a: f32, [n, sum, sum_sq]: [f64; 3], eps: f64) -> f32 {
    let mean = sum / n.max(1.0);
    let var = if n > 1.0 { ((sum_sq - n * mean * mean) / (n - 1.0)).max(0.0) } else { 0.0 };
    (a as f64 / (var.sqrt() + eps)) as f32
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
    fn reinforce_plus_plus_whitens_over_tokens() {
        let c = AdvantageConfig {
            estimator: AdvantageEstimator::ReinforcePlusPlusBaseline,
            scale_by_std: false,
            eps: 0.0,
            ..Default::default()
        };
        // The group's mean subtracted, nothing scaled yet.
        let a = group_advantages(&[1.0, 3.0, 5.0, 0.0, 0.0, 4.0], 3, &c);
        let want = [-2.0, 0.0, 2.0, -4.0 / 3.0, -4.0 / 3.0, 8.0 / 3.0];
        assert!(a.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-12), "{a:?}");
        // Token-weighted: rollouts of 3, 1 and 4 tokens with advantages 1, -2, 0.5 are the
        // tokens [1, 1, 1, -2, 0.5, 0.5, 0.5, 0.5]: mean 3.0 / 8, unbiased variance over 7.
        let rollouts = [(1.0f32, 3usize), (-2.0, 1), (0.5, 4)];
        let sums = whitening_sums(rollouts);
        assert_eq!(sums, [8.0, 3.0, 8.0]);
        let tokens = [1.0, 1.0, 1.0, -2.0, 0.5, 0.5, 0.5, 0.5];
        let mean = tokens.iter().sum::<f64>() / 8.0;
        let var = tokens.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / 7.0;
        for (a, _) in rollouts {
            let want = ((a as f64 - mean) / (var + 1e-8).sqrt()) as f32;
            assert!((whiten(a, sums) - want).abs() <= 1e-6, "{a}: {} vs {want}", whiten(a, sums));
        }
        // Whitened, the tokens have mean 0 and unbiased variance 1 (up to the 1e-8).
        let w: Vec<f64> = rollouts.iter().flat_map(|&(a, n)| vec![whiten(a, sums) as f64; n]).collect();
        let m = w.iter().sum::<f64>() / 8.0;
        let v = w.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 7.0;
        assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "mean {m}, variance {v}");
        // One token: no variance, the advantage less the mean (0 here).
        assert_eq!(whiten(2.0, whitening_sums([(2.0, 1)])), 0.0);
        assert!(AdvantageConfig { scale_by_std: true, ..c }.check().unwrap_err().contains("scale_by_std = false"));
    }

    #[test]
    fn batch_level_deviation() {
        let c = AdvantageConfig { std_level: StdLevel::Batch, eps: 0.0, ..Default::default() };
        assert!(c.scales_by_batch() && c.check().is_ok());
        // The groups' means subtracted, nothing scaled yet.
        let rewards = [1.0, 3.0, 2.0, 2.0, 2.5, 2.0];
        let a = group_advantages(&rewards, 3, &c);
        let want = [-1.0, 1.0, 0.0, -1.0 / 6.0, 1.0 / 3.0, -1.0 / 6.0];
        assert!(a.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-12), "{a:?}");
        // Divided by the batch's sample deviation.
        let mean = rewards.iter().sum::<f64>() / 6.0;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
        let sums = reward_sums(rewards);
        for &x in &a {
            let want = (x / std) as f32;
            assert!((batch_std_scale(x as f32, sums, 0.0) - want).abs() <= 1e-6 * want.abs().max(1.0));
        }
        // The second group, nearly flat, keeps its small scale (by its own deviation it
        // would reach the first group's).
        let own = group_advantages(&rewards, 3, &AdvantageConfig { eps: 0.0, ..Default::default() });
        assert!((own[4] - 1.0 / 3.0f64.sqrt() * 2.0).abs() < 1e-12 && own[0] == -1.0);
        assert_eq!(batch_std_scale(2.0, reward_sums([5.0]), 0.5), 4.0);
        for bad in [
            AdvantageConfig { scale_by_std: false, ..c },
            AdvantageConfig { estimator: AdvantageEstimator::Rloo, scale_by_std: false, ..c },
        ] {
            assert!(bad.check().unwrap_err().contains("std_level"), "{bad:?}");
        }
    }

    #[test]
    fn leave_one_out() {
        let c = AdvantageConfig {
            estimator: AdvantageEstimator::Rloo,
            scale_by_std: false,
            eps: 0.0,
            ..Default::default()
        };
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
