//! Reverse-mode automatic differentiation for artist tensors.
//!
//! A [`Var`] is a tensor plus where it came from. Ops on `Var`s compute their value with
//! the tensor ops at once and, when an input is tracked by a [`Tape`], push a backward
//! closure capturing only what the gradient needs. Without a tape (inference, rollouts)
//! an op is its tensor op and a branch: the same model code serves both.
//!
//! [`Tape::backward`] replays the closures in reverse. Each closure is consumed as it
//! runs, so the activations it saved are freed as soon as backward has passed them, and
//! each intermediate gradient is dropped once used. [`checkpoint`] stores only a block's
//! inputs and recomputes the block inside backward (gradient checkpointing).
//!
//! Gradients are f32 whatever the dtype of the values (bf16 weights get f32 gradients),
//! and parameter gradients are collected by [`ParamId`] in [`Gradients`].
//!
//! ```
//! use artist_autograd::{Param, Tape};
//! use artist_tensor::{Device, Tensor};
//! let w = Param::new("w", Tensor::from_vec(vec![1f32, 2., 3.], 3, Device::Cpu)?);
//! let tape = Tape::new();
//! let y = tape.param(&w).sqr()?.sum_all()?; // sum(w^2)
//! let grads = tape.backward(&y)?;
//! assert_eq!(grads.get(w.id()).unwrap().to_vec::<f32>()?, vec![2., 4., 6.]);
//! # Ok::<(), artist_autograd::Error>(())
//! ```

mod loss;
mod ops;
mod tape;

pub use loss::{token_logprobs, token_logprobs_in, token_logprobs_with_entropy_in};
pub use tape::{Ctx, Gradients, Param, ParamId, Tape, Var, checkpoint};

pub use artist_tensor::{Error, Result};
