//! Learning-rate schedules with linear warmup, step for step as transformers computes them
//! (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`). Step `s` counts from 0; with warmup, step 0 runs at
//! learning rate 0, as it does there.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Warmup, then the base rate.
    #[default]
    Constant,
    /// Warmup, then linear decay to 0 at the last step.
    Linear,
    /// Warmup, then half a cosine down to 0 at the last step.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(format!("unknown LR schedule {other:?} (expected constant, linear or cosine)")),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        })
    }
}

/// A schedule over a run of `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// The multiplier of the base rate at step `s`.
    pub fn factor(&self, s: u64) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        if s < w {
            return s as f64 / w.max(1) as f64;
        }
        match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => (t.saturating_sub(s) as f64 / t.saturating_sub(w).max(1) as f64).max(0.0),
            Schedule::Cosine => {
                let progress = (s - w) as f64 / t.saturating_sub(w).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate of step `s`.
    pub fn lr(&self, s: u64) -> f64 {
        self.base_lr * self.factor(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(schedule: Schedule) -> LrSchedule {
        LrSchedule { base_lr: 1.0, schedule, warmup_steps: 3, total_steps: 10 }
    }

    /// Values transformers' schedules give for warmup 3 of 10 steps.
    #[test]
    fn matches_transformers() {
        let lin: Vec<f64> = (0..10).map(|s| sched(Schedule::Linear).lr(s)).collect();
        let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 6.0 / 7.0, 5.0 / 7.0, 4.0 / 7.0, 3.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0];
        for (a, b) in lin.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lin:?}");
        }
        let cos: Vec<f64> = (0..10).map(|s| sched(Schedule::Cosine).lr(s)).collect();
        assert!(
            (cos[3] - 1.0).abs() < 1e-12
                && (cos[9] - 0.5 * (1.0 + (std::f64::consts::PI * 6.0 / 7.0).cos())).abs() < 1e-12
        );
        assert_eq!(sched(Schedule::Constant).lr(0), 0.0);
        assert_eq!(sched(Schedule::Constant).lr(7), 1.0);
        let no_warmup = LrSchedule { warmup_steps: 0, ..sched(Schedule::Linear) };
        assert_eq!(no_warmup.lr(0), 1.0);
        assert_eq!(no_warmup.lr(10), 0.0);
        assert_eq!("cosine".parse::<Schedule>().unwrap(), Schedule::Cosine);
        assert!("cos".parse::<Schedule>().unwrap_err().contains("cos"));
    }
}
