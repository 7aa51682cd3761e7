//! Optimisation: AdamW as `torch.optim.AdamW` computes it, gradient clipping by global
//! norm as `torch.nn.utils.clip_grad_norm_`, and the learning-rate schedules of
//! transformers' `get_*_schedule_with_warmup`.

mod adamw;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, clip_grad_norm};
pub use schedule::{LrSchedule, Schedule};
