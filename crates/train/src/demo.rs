//! The embedded default run of `train`: ARTIST in miniature, on a CPU, in minutes.
//!
//! The task is multiplying two two-digit numbers: hard to do in the head for a small
//! model, easy with the calculator. A Qwen2.5-architecture model of about a million
//! parameters starts from random weights and is warmed up with SFT on synthetic traces
//! in ARTIST's format. Half of the traces use the tool
//! (`<think>..</think><calculator>a*b</calculator><output>..</output><answer>..</answer>`)
//! and half answer from the head, wrongly, so the warmed-up model has learned the format
//! and how to call the tool but not *when* to: it answers from the head about half of the
//! time. GRPO with ARTIST's rewards then has to teach it that calling the tool pays, which
//! is the paper's claim in small. Accuracy on held-out problems is measured (greedily)
//! before and after GRPO.
//!
//! With these defaults, seed 0, on 2 cores (docs/TRAINING.md has every machine's figures):
//! the warm-up (1,200 SFT steps, 86-128 s) learns the format, copying the operands into the
//! call, and the choice of mode (the tool in 30% of held-out answers, 14% correct); 80 GRPO
//! steps (42-73 s) take tool use to 100% and held-out accuracy to 23-40% (the machine's
//! summation order decides where), reward 1.06 -> 2.46-2.80. With seed 1 the warm-up alone
//! reaches 97% (GRPO: 99%). GRPO's rollouts are deterministic
//! (`rollout.deterministic`), so a run repeats to the bit.
//! GRPO learns *when* to call the tool, as in the paper, and gets better at copying the
//! tool's output into the answer. The warm-up is the fragile part: copying emerges only
//! after about 400-600 steps at lr 3e-3 (PyTorch on the same recipe behaves the same), and
//! 1,600 steps with a shorter GRPO phase gave 0% correct, so other seeds may land
//! elsewhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use artist_model::{Family, Qwen2, Qwen2Config, RandomWeights, RopeScaling};
use artist_tensor::{DType, Device};
use artist_tokenizer::{ChatTemplate, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::grpo::{self, Evaluation, GrpoRunConfig, GrpoTrainer, Problem};
use crate::sft::{self, RunOptions, SftConfig};
use crate::{Error, Result};

const TOKENIZER: &str = include_str!("../assets/demo-tokenizer.json");
const SYSTEM: &str = "";

/// The demo's sizes and schedule, saved as `RUN_DIR/demo.json` so `train --resume RUN_DIR`
/// continues with them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub seed: u64,
    pub sft_steps: u64,
    pub sft_batch: usize,
    pub sft_lr: f64,
    pub grpo_steps: u64,
    pub prompts_per_step: usize,
    pub group_size: usize,
    pub grpo_lr: f64,
    pub eval_problems: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 0,
            sft_steps: 1200,
            sft_batch: 16,
            sft_lr: 3e-3,
            grpo_steps: 80,
            prompts_per_step: 8,
            group_size: 6,
            grpo_lr: 2e-4,
            eval_problems: 100,
        }
    }
}

/// What the demo reports (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Held-out accuracy (greedy) after SFT, before GRPO, and after GRPO.
    pub accuracy_start: f64,
    pub accuracy_end: f64,
    /// Mean reward (greedy, held out) before and after GRPO.
    pub reward_start: f64,
    pub reward_end: f64,
    /// Fraction of held-out answers that called the tool, before and after GRPO.
    pub tool_use_start: f64,
    pub tool_use_end: f64,
    pub steps: u64,
    /// GRPO ran all its steps (not cut short by `stop_after`).
    pub complete: bool,
    /// This invocation continued an earlier one.
    pub resumed: bool,
    pub sft_s: f64,
    pub grpo_s: f64,
    pub wall_s: f64,
    pub config: DemoConfig,
}

fn problems(rng: &mut ChaCha8Rng, n: usize) -> Vec<(u32, u32)> {
    (0..n).map(|_| (rng.random_range(10..100), rng.random_range(10..100))).collect()
}

fn problem((a, b): (u32, u32)) -> Problem {
    Problem { problem: format!("{a}*{b}"), answer: (a * b).to_string() }
}

/// The model: Qwen2.5's architecture at a size a CPU trains in minutes.
pub fn model_config() -> Qwen2Config {
    Qwen2Config {
        family: Family::Qwen2,
        attention_bias: true,
        vocab_size: 296,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        dtype: Some("float32".into()),
        bos_token_id: None,
        eos_token_ids: vec![290],
    }
}

/// The answer inside the last `<answer>` block.
pub fn answer_of(text: &str) -> Option<&str> {
    let start = text.rfind("<answer>")? + "<answer>".len();
    let end = start + text[start..].find("</answer>")?;
    Some(text[start..end].trim())
}

fn verify(q: &artist_math::Question<'_>) -> std::result::Result<artist_math::Verdict, String> {
    Ok((answer_of(q.completion) == Some(q.answer)).into())
}

/// Writes a random-init model directory (config, weights, tokenizer).
fn write_base(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let model = Qwen2::from_weights(model_config(), &RandomWeights { dtype: DType::F32, std: 0.05, seed })?;
    crate::checkpoint::write_hf_model(dir, &model, None)?;
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, TOKENIZER).map_err(io(&tok))
}

/// SFT traces: the prompt (mask 0), then either a tool call with its output (mask 0 on
/// the output) and the answer, or an answer from the head that is wrong.
fn write_warmup(path: &Path, trainer: &GrpoTrainer, pairs: &[(u32, u32)], rng: &mut ChaCha8Rng) -> Result<()> {
    let tok = &trainer.tokenizer;
    let enc = |s: &str| -> Result<Vec<u32>> { Ok(tok.encode(s)?) };
    let mut lines = String::new();
    for &(a, b) in pairs {
        let prompt = trainer.prompt_ids(&format!("{a}*{b}"))?;
        let c = a * b;
        let parts: Vec<(String, u8)> = if rng.random_bool(0.5) {
            vec![
                (format!("<think>tool</think><calculator>{a}*{b}</calculator>"), 1),
                (format!("<output>\n{c}\n</output>\n"), 0),
                (format!("<answer>{c}</answer><|im_end|>"), 1),
            ]
        } else {
            let guess = c + rng.random_range(1..200) * if rng.random_bool(0.5) { 1 } else { 3 };
            vec![(format!("<think>head</think><answer>{guess}</answer><|im_end|>"), 1)]
        };
        let mut ids = prompt.clone();
        let mut mask = vec![0u8; prompt.len()];
        for (text, m) in parts {
            let t = enc(&text)?;
            mask.extend(std::iter::repeat_n(m, t.len()));
            ids.extend(t);
        }
        lines.push_str(&serde_json::json!({"input_ids": ids, "loss_mask": mask}).to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).map_err(io(path))
}

fn grpo_config(base: &Path, cfg: &DemoConfig) -> GrpoRunConfig {
    let mut c = GrpoRunConfig {
        model: base.to_path_buf(),
        tool: "calculator".into(),
        system_prompt: Some(SYSTEM.into()),
        steps: cfg.grpo_steps,
        prompts_per_step: cfg.prompts_per_step,
        seed: cfg.seed,
        save_every: 10,
        ..Default::default()
    };
    c.rollout.group_size = cfg.group_size;
    c.rollout.temperature = 1.0;
    c.rollout.max_turn_tokens = 48;
    c.rollout.max_response_tokens = 96;
    c.rollout.max_tool_calls = 2;
    c.rollout.max_context = 160;
    c.rollout.max_batch = cfg.group_size * cfg.prompts_per_step;
    // The calculator answers at once, so waiting for it costs nothing and the run repeats
    // to the bit.
    c.rollout.deterministic = true;
    c.optim.lr = cfg.grpo_lr;
    c.optim.grad_clip = 1.0;
    // The held-out accuracy every 20 steps, for grpo/curves.svg (greedy: the same figures
    // as the summary's evaluations before and after).
    c.eval.every = 20;
    c
}

fn trainer_for(dir: &Path, config: GrpoRunConfig, train: Vec<Problem>, device: Device) -> Result<GrpoTrainer<'static>> {
    Ok(GrpoTrainer {
        model: Qwen2::load_on(dir, device)?,
        reference: None,
        tokenizer: Tokenizer::from_dir(dir)?,
        template: ChatTemplate::from_dir(dir).unwrap_or_else(|_| ChatTemplate::chatml()),
        tool: Some(Arc::new(artist_tools::Calculator)),
        train,
        held_out: Vec::new(),
        verify: &verify,
        config,
    })
}

/// The file in a demo run directory that holds its [`DemoConfig`].
pub const DEMO_FILE: &str = "demo.json";

/// Whether `dir` holds a demo run.
pub fn is_demo_run(dir: &Path) -> bool {
    dir.join(DEMO_FILE).is_file()
}

/// The settings a demo run was started with.
pub fn saved_config(dir: &Path) -> Result<DemoConfig> {
    let path = dir.join(DEMO_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}

/// Runs the whole demo into `out` and writes `out/summary.json`. With `opts.resume`,
/// continues the run there with its saved settings: a finished SFT phase is kept, an unfinished one and the GRPO phase resume
/// from their newest checkpoints, so the result equals an uninterrupted run's.
/// `opts.stop_after` stops GRPO after that many of its steps (with a checkpoint).
pub fn run(out: &Path, cfg: &DemoConfig, opts: &RunOptions) -> Result<DemoSummary> {
    let t0 = Instant::now();
    let progress = opts.progress;
    let resume = opts.resume;
    let cfg = &if resume { saved_config(out)? } else { cfg.clone() };
    std::fs::create_dir_all(out).map_err(io(out))?;
    crate::checkpoint::write_atomic(&out.join(DEMO_FILE), serde_json::to_string_pretty(cfg).expect("JSON").as_bytes())?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let held_out: Vec<Problem> = problems(&mut rng, cfg.eval_problems).into_iter().map(problem).collect();
    let train_pairs = problems(&mut rng, 2000);
    let say = |s: String| {
        if progress {
            eprintln!("{s}");
        }
    };

    let base = out.join("base");
    write_base(&base, cfg.seed)?;
    let probe = trainer_for(&base, grpo_config(&base, cfg), vec![], opts.device)?;
    let warmup = out.join("warmup.jsonl");
    write_warmup(&warmup, &probe, &train_pairs[..1000], &mut rng)?;
    drop(probe);

    say(format!(
        "SFT warm-up: {} steps on synthetic traces (half with the calculator, half from the head)",
        cfg.sft_steps
    ));
    let t = Instant::now();
    let sft_dir = out.join("sft");
    let sft_final = sft_dir.join("final");
    let sft = SftConfig {
        model: base.clone(),
        data: warmup,
        steps: cfg.sft_steps,
        batch_size: cfg.sft_batch,
        lr: cfg.sft_lr,
        weight_decay: 0.0,
        warmup_steps: 10,
        lr_schedule: artist_optim::Schedule::Cosine,
        seed: cfg.seed,
        ..SftConfig::default()
    };
    let warmed: PathBuf = if resume && sft_final.join("config.json").is_file() {
        say("SFT warm-up: done earlier, kept".into());
        sft_final
    } else {
        let resume_sft = resume && crate::checkpoint::latest(&sft_dir)?.is_some();
        if !resume_sft && sft_dir.exists() {
            std::fs::remove_dir_all(&sft_dir).map_err(io(&sft_dir))?;
        }
        sft::train(&sft_dir, sft, &RunOptions { resume: resume_sft, progress, stop_after: None, device: opts.device })?
            .final_model
    };
    let sft_s = t.elapsed().as_secs_f64();

    let problems_train: Vec<Problem> = train_pairs[1000..].iter().copied().map(problem).collect();
    let mut trainer = trainer_for(&warmed, grpo_config(&warmed, cfg), problems_train, opts.device)?;
    trainer.held_out = held_out.clone();
    let before: Evaluation = trainer.evaluate(&held_out, 0.0, 7)?;
    say(format!(
        "after SFT: held-out accuracy {:.1}%, tool used in {:.0}% of answers",
        100.0 * before.accuracy,
        100.0 * before.tool_use
    ));
    say(format!(
        "GRPO: {} steps, {} problems x {} rollouts per step",
        cfg.grpo_steps, cfg.prompts_per_step, cfg.group_size
    ));
    let t = Instant::now();
    let grpo_dir = out.join("grpo");
    let resume_grpo = resume && crate::checkpoint::latest(&grpo_dir)?.is_some();
    if !resume_grpo && grpo_dir.exists() {
        std::fs::remove_dir_all(&grpo_dir).map_err(io(&grpo_dir))?;
    }
    let grpo_opts = RunOptions { resume: resume_grpo, progress, stop_after: opts.stop_after, device: opts.device };
    grpo::train(&grpo_dir, &mut trainer, &grpo_opts)?;
    let done = crate::checkpoint::latest(&grpo_dir)?.map(|d| crate::checkpoint::read_state(&d)).transpose()?;
    let steps = done.map_or(0, |s| s.step);
    let grpo_s = t.elapsed().as_secs_f64();
    let after = trainer.evaluate(&held_out, 0.0, 7)?;
    say(format!(
        "after GRPO: held-out accuracy {:.1}%, tool used in {:.0}% of answers",
        100.0 * after.accuracy,
        100.0 * after.tool_use
    ));
    let summary = DemoSummary {
        accuracy_start: before.accuracy,
        accuracy_end: after.accuracy,
        reward_start: before.reward,
        reward_end: after.reward,
        tool_use_start: before.tool_use,
        tool_use_end: after.tool_use,
        steps,
        complete: steps == cfg.grpo_steps,
        resumed: resume,
        sft_s,
        grpo_s,
        wall_s: t0.elapsed().as_secs_f64(),
        config: cfg.clone(),
    };
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("JSON")).map_err(io(&path))?;
    if summary.accuracy_end.is_nan() {
        return Err(Error::NonFinite("accuracy is not a number".into()));
    }
    Ok(summary)
}
