//! Element types. Floats compute in f32 on the CPU; bf16 and f16 are storage formats that
//! are widened per element as they are read and rounded once as results are written.

use half::{bf16, f16};

use crate::cpu::CpuStorage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    U8,
    U32,
    F16,
    BF16,
    F32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::F32 => 4,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32)
    }

    /// The name used in safetensors headers and configs (`"BF16"`, `"F32"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "U8",
            DType::U32 => "U32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    /// Accepts safetensors names and Hugging Face `torch_dtype` names alike.
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "u8" | "uint8" => DType::U8,
            "u32" | "uint32" => DType::U32,
            "f16" | "float16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "f32" | "float32" | "float" => DType::F32,
            _ => {
                return Err(crate::invalid!("dtype", "unknown dtype {s:?} (expected one of u8, u32, f16, bf16, f32)"));
            }
        })
    }
}

/// A Rust type that can be a tensor element. `to_f32`/`from_f32` are exact for f32, and
/// round-to-nearest-even for the half types.
pub trait WithDType: Copy + Send + Sync + 'static + bytemuck::Pod + PartialOrd + std::fmt::Debug + Default {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    fn into_storage(data: Vec<Self>) -> CpuStorage;
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! with_dtype {
    ($ty:ty, $variant:ident, $to:expr, $from:expr) => {
        impl WithDType for $ty {
            const DTYPE: DType = DType::$variant;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $to(self)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $from(v)
            }
            fn into_storage(data: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(data)
            }
            fn slice(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

with_dtype!(f32, F32, |v| v, |v| v);
// bf16 is the top half of an f32: widening is a shift (exact, NaNs stay NaN), which
// vectorises to two instructions where `half`'s version also quiets signalling NaNs.
with_dtype!(bf16, BF16, |v: bf16| f32::from_bits((v.to_bits() as u32) << 16), bf16::from_f32);
with_dtype!(f16, F16, f16::to_f32, f16::from_f32);
// Integer types convert to f32 exactly up to 2^24; casts from floats truncate toward zero
// and saturate, as `as` does.
with_dtype!(u32, U32, |v| v as f32, |v: f32| v as u32);
with_dtype!(u8, U8, |v| v as f32, |v: f32| v as u8);
