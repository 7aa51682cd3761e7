//! `curves.svg`: a run's metrics (GRPO or SFT) as a grid of line charts, one per quantity,
//! redrawn at every checkpoint and at the end (the reward rising is easier to see than to
//! read).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::io;
use crate::metrics::{self, METRICS_FILE};
use crate::{Error, Result};

pub const CURVES_FILE: &str = "curves.svg";

/// The quantities drawn, in order: `(metrics.jsonl key, panel title)`. Keys a run does
/// not log are skipped.
const PANELS: &[(&str, &str)] = &[
    ("reward", "reward (mean)"),
    ("accuracy", "accuracy"),
    ("eval_accuracy", "held-out accuracy"),
    ("eval_pass_at_k", "held-out pass@k"),
    ("eval_pass_hat_k", "held-out pass^k"),
    ("eval_maj_at_k", "held-out maj@k"),
    ("eval_reward", "held-out reward"),
    ("reward_answer", "answer reward"),
    ("reward_tool_execution", "tool execution reward"),
    ("reward_overlong", "overlong penalty (mean)"),
    ("tool_calls_per_rollout", "tool calls per rollout"),
    ("tokens_per_tool_call", "tokens written per tool call"),
    ("steps_to_answer", "model turns to the answer"),
    ("steps_per_turn", "model steps per user turn"),
    ("tool_success", "tool success"),
    ("response_tokens", "response tokens"),
    ("entropy", "policy entropy (nats)"),
    ("kl", "KL to reference"),
    ("kl_reward", "KL in the reward (per rollout)"),
    ("kl_reward_per_token", "KL in the reward (per token)"),
    ("kl_reward_coef", "KL reward coefficient"),
    ("clip_fraction", "clip fraction"),
    ("sampler_logprob_gap", "sampler vs trainer |logprob gap|"),
    ("sampler_kl", "sampler vs trainer KL (k3)"),
    ("tis_weight_mean", "truncated importance weight (mean)"),
    ("tis_bounded_fraction", "importance weights capped or masked"),
    ("tis_ess", "importance weights' effective sample size"),
    ("tis_veto_fraction", "rollouts vetoed (importance weights)"),
    ("loss", "loss"),
    ("eval_loss", "held-out loss"),
    ("grad_norm", "gradient norm"),
    ("lr", "learning rate"),
    ("tokens_per_s", "tokens/s (GRPO: rollouts)"),
];

/// The series of `key` over steps from metrics lines (lines without it are skipped).
pub fn series(lines: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// Draws `RUN_DIR/metrics.jsonl` into `RUN_DIR/curves.svg`; returns its path (`None`
/// when there are no metrics yet).
pub fn write_curves(run_dir: &Path) -> Result<Option<PathBuf>> {
    let metrics_path = run_dir.join(METRICS_FILE);
    if !metrics_path.exists() {
        return Ok(None);
    }
    let lines = metrics::read(&metrics_path)?;
    let panels: Vec<(&str, Vec<(f64, f64)>)> =
        PANELS.iter().map(|(key, title)| (*title, series(&lines, key))).filter(|(_, s)| !s.is_empty()).collect();
    if panels.is_empty() {
        return Ok(None);
    }
    let out = run_dir.join(CURVES_FILE);
    let tmp = run_dir.join(format!(".{CURVES_FILE}.tmp"));
    draw(&tmp, &panels).map_err(|e| Error::Config(format!("drawing {}: {e}", out.display())))?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(Some(out))
}

fn draw(path: &Path, panels: &[(&str, Vec<(f64, f64)>)]) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let cols = 3usize;
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (cols as u32 * 400, rows as u32 * 260)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (title, points)) in root.split_evenly((rows, cols)).iter().zip(panels) {
        let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 11))
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2)))?;
        if points.len() <= 30 {
            // Sparse series (a held-out evaluation every N steps): mark each point.
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
        }
        if points.len() >= 8 {
            // A moving average over a tenth of the run, for noisy RL curves.
            let w = (points.len() / 10).max(3);
            let smooth: Vec<(f64, f64)> =
                points.windows(w).map(|win| (win[w - 1].0, win.iter().map(|p| p.1).sum::<f64>() / w as f64)).collect();
            chart.draw_series(LineSeries::new(smooth, RED.stroke_width(2)))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_logged_quantity() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_curves(dir.path()).unwrap().is_none());
        let lines: String = (1..=20)
            .map(|s| format!("{{\"step\": {s}, \"reward\": {}, \"kl\": {}, \"accuracy\": 0.5}}\n", s as f64 * 0.1, 0.0))
            .collect();
        std::fs::write(dir.path().join(METRICS_FILE), lines).unwrap();
        let out = write_curves(dir.path()).unwrap().unwrap();
        let svg = std::fs::read_to_string(out).unwrap();
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
        for title in ["reward (mean)", "accuracy", "KL to reference"] {
            assert!(svg.contains(title), "{title} missing");
        }
        assert!(!svg.contains("tool success"), "a quantity the run never logged is drawn");
        // The reward line has one vertex per step.
        assert_eq!(series(&metrics::read(&dir.path().join(METRICS_FILE)).unwrap(), "reward").len(), 20);
    }
}
