//! Tensors for the artist stack.
//!
//! A [`Tensor`] is shared storage plus a [`Layout`] (shape, strides, offset), so transpose,
//! narrow, permute, broadcast and reshape of contiguous data are views. Elements are f32,
//! bf16 or f16 (U32 for indices, U8 for masks). Every float op computes in f32 and rounds
//! once when it writes. On the CPU matrix products run on the `gemm` crate and everything
//! row-shaped spreads over rayon; on NVIDIA GPUs ([`cuda`]) our own kernels and cuBLAS do
//! the same work. Every failure is an [`Error`] value naming the op.
//!
//! ```
//! use artist_tensor::{DType, Device, Tensor};
//! let x = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), Device::Cpu)?;
//! let w = Tensor::ones((4, 3), DType::F32, Device::Cpu)?;
//! let y = x.linear(&w, None)?.softmax(-1)?;   // [2, 4]
//! assert_eq!(y.dims(), &[2, 4]);
//! # Ok::<(), artist_tensor::Error>(())
//! ```

mod attention;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
mod fused;
mod index;
mod layout;
mod matmul;
mod nn;
pub mod nvtx;
mod ops;
mod reduce;
mod shape;
mod tensor;

pub use attention::{BlockTable, CPU_FUSED_MIN_KEYS, PagedBatch, QkNorm, attention_composes};
pub use device::Device;
pub use dtype::{DType, WithDType};
pub use error::{Error, Result};
pub use fused::{AdamWScalars, SamplePick};
pub use layout::Layout;
pub use nn::{rope_inv_freq, rope_tables, rope_tables_scaled};
pub use ops::CmpOp;
pub use shape::Shape;
pub use tensor::{Storage, Tensor};

pub use half::{bf16, f16};
