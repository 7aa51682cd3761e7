//! Checkpoints that a long run can trust.
//!
//! A checkpoint is a Hugging Face model directory (`config.json`, `model.safetensors`,
//! tokenizer files) plus `optimizer.safetensors` (AdamW moments, f32 master weights of
//! half-precision parameters) and `trainer_state.json` (step, seed, data fingerprint,
//! per-parameter optimiser steps, the run's settings). Everything is written into
//! `checkpoints/.tmp-step-N-PID/`, synced to disk, and only then renamed to
//! `checkpoints/step-N`; `checkpoints/latest` is replaced the same way. A checkpoint
//! that was being written when the process died is a `.tmp-*` directory, which loading
//! never looks at (and the next save removes).
//!
//! Test hook: with `ARTIST_FAULT_ABORT_IN_SAVE=N` in the environment, the process aborts
//! in the middle of saving step N (after the weights, before the optimiser state), as a
//! crash or a kill would leave it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use artist_model::Qwen2;
use artist_optim::AdamW;
use artist_tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::{Error, Result};

pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const LATEST_FILE: &str = "latest";
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Inside a checkpoint: the KL reference a GRPO run has moved (`reference_sync`).
pub const REFERENCE_DIR: &str = "reference";

/// Files copied from the source model directory into every export, when present.
const MODEL_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// What a resumed run needs besides weights and optimiser moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: u64,
    /// The epoch the next step belongs to.
    pub epoch: u64,
    /// GRPO: batches of training items drawn so far (more than `step` with
    /// `max_sampling_rounds > 1`); absent from SFT's state and older checkpoints, where it
    /// is `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches_drawn: Option<u64>,
    /// GRPO with an adaptive `kl_reward` coefficient: its value for the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_reward_coef: Option<f64>,
    /// The seed every random choice derives from (data order).
    pub seed: u64,
    /// FNV-1a of the training examples, hex.
    pub data_fingerprint: String,
    /// Steps counted by each parameter's AdamW state.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// The run's settings.
    pub config: serde_json::Value,
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<()> {
    // Directories are synced so a rename inside them is on disk too (POSIX).
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// Writes `bytes` to `path` by way of a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

/// Writes `model` as a Hugging Face model directory into `dir` (which must exist):
/// weights in their stored dtype, `config.json` and tokenizer files from `source` when it
/// has them (else a generated `config.json`). A model with LoRA adapters is written as its
/// frozen base weights and the adapters as PEFT writes them (`adapter_config.json` naming
/// `source` as the base, `adapter_model.safetensors`), a directory that both
/// [`Qwen2::load_on`] and transformers load with the adapters.
pub fn write_hf_model(dir: &Path, model: &Qwen2, source: Option<&Path>) -> Result<()> {
    write_hf_model_linking(dir, model, source, None)
}

/// [`write_hf_model`]; for a model with LoRA adapters, the base weights are hard-linked
/// from `frozen_base_from/model.safetensors` when given (a directory this process wrote
/// for the same frozen base: the same bytes) instead of written again, falling back to
/// writing them where the link cannot be made.
fn write_hf_model_linking(
    dir: &Path,
    model: &Qwen2,
    source: Option<&Path>,
    frozen_base_from: Option<&Path>,
) -> Result<()> {
    let weights = dir.join("model.safetensors");
    let linked = match frozen_base_from.filter(|_| model.lora().is_some()) {
        Some(prev) => std::fs::hard_link(prev.join("model.safetensors"), &weights).is_ok(),
        None => false,
    };
    if !linked {
        model.save_safetensors(&weights)?;
        sync_file(&weights)?;
    }
    if model.lora().is_some() {
        let base = source.map(|s| s.display().to_string()).unwrap_or_default();
        model.save_lora(dir, &base)?;
        for name in [artist_model::ADAPTER_CONFIG_FILE, artist_model::ADAPTER_WEIGHTS_FILE] {
            sync_file(&dir.join(name))?;
        }
    }
    write_side_files(dir, model, source)
}

/// `config.json` and the tokenizer files of a model directory, from `source` when it has
/// them (else a generated `config.json`).
fn write_side_files(dir: &Path, model: &Qwen2, source: Option<&Path>) -> Result<()> {
    let config = dir.join("config.json");
    match source.map(|s| s.join("config.json")).filter(|p| p.exists()) {
        Some(src) => {
            std::fs::copy(&src, &config).map_err(io(&src))?;
        }
        None => {
            let text = serde_json::to_string_pretty(&model.config.to_hf_json()).expect("JSON");
            std::fs::write(&config, text).map_err(io(&config))?;
        }
    }
    sync_file(&config)?;
    if let Some(src) = source {
        for name in MODEL_SIDE_FILES {
            let from = src.join(name);
            if from.exists() {
                let to = dir.join(name);
                std::fs::copy(&from, &to).map_err(io(&from))?;
                sync_file(&to)?;
            }
        }
    }
    Ok(())
}

/// Writes `RUN_DIR/<name>/` as a Hugging Face model directory, atomically (the final
/// export of a run). `frozen_base_from`: as [`SaveExtras::frozen_base_from`].
pub fn export_atomic(
    run_dir: &Path,
    name: &str,
    model: &Qwen2,
    source: Option<&Path>,
    frozen_base_from: Option<&Path>,
) -> Result<PathBuf> {
    let tmp = run_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    fresh_dir(&tmp)?;
    write_hf_model_linking(&tmp, model, source, frozen_base_from)?;
    finish_export(run_dir, name, &tmp)
}

/// Writes `RUN_DIR/<name>/` atomically as a plain Hugging Face model directory of `model`
/// with its LoRA adapters merged into the weights (`W + s B A`): what serving stacks load.
pub fn export_merged(run_dir: &Path, name: &str, model: &Qwen2, source: Option<&Path>) -> Result<PathBuf> {
    let tmp = run_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    fresh_dir(&tmp)?;
    let weights = tmp.join("model.safetensors");
    artist_model::save_safetensors(&model.hf_tensors_merged()?, &weights)?;
    sync_file(&weights)?;
    write_side_files(&tmp, model, source)?;
    finish_export(run_dir, name, &tmp)
}

fn finish_export(run_dir: &Path, name: &str, tmp: &Path) -> Result<PathBuf> {
    sync_dir(tmp)?;
    let dst = run_dir.join(name);
    replace_dir(tmp, &dst)?;
    sync_dir(run_dir)?;
    Ok(dst)
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))
}

/// Renames `tmp` to `dst`, moving an existing `dst` out of the way first.
fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        let old = dst.with_file_name(format!(
            ".old-{}-{}",
            dst.file_name().and_then(|n| n.to_str()).unwrap_or("dir"),
            std::process::id()
        ));
        std::fs::rename(dst, &old).map_err(io(dst))?;
        std::fs::rename(tmp, dst).map_err(io(dst))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(tmp, dst).map_err(io(dst))?;
    }
    Ok(())
}

pub(crate) fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Saves a checkpoint of `step` into `RUN_DIR/checkpoints/`, keeping the newest
/// `keep_last` complete ones (0 keeps all). Refuses weights that are not finite.
pub fn save(
    run_dir: &Path,
    model: &Qwen2,
    optimizer: &AdamW,
    state: &TrainerState,
    source: Option<&Path>,
    keep_last: usize,
) -> Result<PathBuf> {
    save_with(run_dir, model, optimizer, state, source, keep_last, SaveExtras::default())
}

/// What a checkpoint may hold or reuse besides the model, optimiser and state.
#[derive(Default, Clone, Copy)]
pub struct SaveExtras<'a> {
    /// A KL reference the run has moved (GRPO's `reference_sync`), saved as a Hugging Face
    /// model directory `REFERENCE_DIR` inside the checkpoint, written before the checkpoint
    /// is renamed into place like everything else in it.
    pub reference: Option<&'a Qwen2>,
    /// For a model with LoRA adapters: a checkpoint this process saved of the same model.
    /// Its `model.safetensors` holds the frozen base weights, byte for byte what would be
    /// written, and is hard-linked instead (no second copy on disk, no time writing it).
    pub frozen_base_from: Option<&'a Path>,
}

/// [`save`] with [`SaveExtras`].
pub fn save_with(
    run_dir: &Path,
    model: &Qwen2,
    optimizer: &AdamW,
    state: &TrainerState,
    source: Option<&Path>,
    keep_last: usize,
    extras: SaveExtras<'_>,
) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let name = step_name(state.step);
    for (p, w) in optimizer.master_weights() {
        let finite = w.update_f32(|v| v.iter().all(|x| x.is_finite()))?;
        if !finite {
            return Err(Error::NonFinite(format!(
                "step {}: parameter {} holds NaN or infinite values; the checkpoint was not written",
                state.step,
                p.name()
            )));
        }
    }
    // Leftovers of a save that died.
    for e in std::fs::read_dir(&root).map_err(io(&root))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    fresh_dir(&tmp)?;
    write_hf_model_linking(&tmp, model, source, extras.frozen_base_from)?;
    if let Some(reference) = extras.reference {
        let dir = tmp.join(REFERENCE_DIR);
        fresh_dir(&dir)?;
        write_hf_model(&dir, reference, source)?;
        sync_dir(&dir)?;
    }
    if std::env::var("ARTIST_FAULT_ABORT_IN_SAVE").ok().and_then(|v| v.parse::<u64>().ok()) == Some(state.step) {
        eprintln!("ARTIST_FAULT_ABORT_IN_SAVE: aborting in the middle of saving step {}", state.step);
        std::process::abort();
    }
    let (tensors, steps) = optimizer.state();
    let opt_path = tmp.join(OPTIMIZER_FILE);
    artist_model::save_safetensors(&tensors, &opt_path)?;
    sync_file(&opt_path)?;
    let state = TrainerState { optimizer_steps: steps, ..state.clone() };
    let state_path = tmp.join(STATE_FILE);
    std::fs::write(&state_path, serde_json::to_string_pretty(&state).expect("JSON")).map_err(io(&state_path))?;
    sync_file(&state_path)?;
    sync_dir(&tmp)?;
    let dst = root.join(&name);
    replace_dir(&tmp, &dst)?;
    sync_dir(&root)?;
    write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
    if keep_last > 0 {
        let mut all = complete(&root)?;
        all.sort();
        let n = all.len();
        for (_, dir) in all.into_iter().take(n.saturating_sub(keep_last)) {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    Ok(dst)
}

/// `(step, dir)` of every complete checkpoint under `root`.
fn complete(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(root).map_err(io(root))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok())
            && e.path().join(STATE_FILE).exists()
        {
            out.push((step, e.path()));
        }
    }
    Ok(out)
}

/// The newest complete checkpoint of a run: the one `latest` names, or else (if that
/// file is missing or names something incomplete) the highest complete step.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    if let Ok(name) = std::fs::read_to_string(root.join(LATEST_FILE)) {
        let dir = root.join(name.trim());
        if dir.join(STATE_FILE).exists() {
            return Ok(Some(dir));
        }
    }
    Ok(complete(&root)?.into_iter().max().map(|(_, d)| d))
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}

/// Restores AdamW's moments (and master weights) from a checkpoint directory.
pub fn load_optimizer(dir: &Path, optimizer: &mut AdamW, state: &TrainerState) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Checkpoint { path: path.clone(), msg: format!("not a valid safetensors file: {e}") })?;
    let get = |name: &str| -> Option<Tensor> {
        let v = st.tensor(name).ok()?;
        if v.dtype() != safetensors::Dtype::F32 {
            return None;
        }
        Tensor::from_bytes(v.data(), DType::F32, v.shape().to_vec(), Device::Cpu).ok()
    };
    optimizer
        .load_state(get, &state.optimizer_steps)
        .map_err(|e| Error::Checkpoint { path: path.clone(), msg: e.to_string() })
}
