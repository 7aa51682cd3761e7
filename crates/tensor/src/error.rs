//! Errors as values: every failure a user can reach names the op and what was wrong.

use crate::{DType, Device, Shape};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shapes {lhs} and {rhs} do not match")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },

    #[error("{op}: shapes {lhs} and {rhs} cannot be broadcast together")]
    BroadcastIncompatible { op: &'static str, lhs: Shape, rhs: Shape },

    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    DimOutOfRange { op: &'static str, dim: isize, rank: usize },

    #[error("{op}: dtypes {lhs:?} and {rhs:?} differ")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },

    #[error("{op}: dtype {dtype:?} is not supported here")]
    UnsupportedDType { op: &'static str, dtype: DType },

    #[error("{op}: tensors live on different devices ({lhs:?} and {rhs:?})")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },

    #[error("{op}: {got} elements given for shape {shape} ({expected} elements)")]
    ElementCount { op: &'static str, shape: Shape, expected: usize, got: usize },

    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange { op: &'static str, index: usize, size: usize },

    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },

    #[error("no CUDA driver found on this machine (libcuda could not be loaded): {0}")]
    NoCudaDriver(String),

    #[error("CUDA device {ordinal} is not available: {msg}")]
    CudaDevice { ordinal: usize, msg: String },

    #[error("{op} (CUDA): {msg}")]
    Cuda { op: &'static str, msg: String },

    #[error("{0} runs on the CPU only (it takes a Rust closure); use a named op on GPU tensors")]
    CpuOnly(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error::Invalid`] with a formatted message: `invalid!("narrow", "start {s} past {n}")`.
#[macro_export]
macro_rules! invalid {
    ($op:expr, $($arg:tt)*) => {
        $crate::Error::Invalid { op: $op, msg: format!($($arg)*) }
    };
}
