//! Safetensors checkpoints, single-file or sharded through `model.safetensors.index.json`,
//! memory-mapped: each tensor is copied out of the mapping once, in its stored dtype, and
//! no file is ever read whole into memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use artist_tensor::{DType, Device, Tensor};
use memmap2::Mmap;
use rand::SeedableRng;
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::{Error, Result};

/// Where a model's parameters come from: a checkpoint, or a seeded random initialisation.
pub trait WeightSource {
    /// The tensor `name`, which must have shape `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

impl WeightSource for Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Weights::get(self, name, shape)
    }
}

/// Random parameters in the layout of a checkpoint: matrices and biases from N(0, std^2),
/// norm weights 1. Each tensor is drawn from a generator seeded by `seed` and its name, so
/// the values do not depend on the order tensors are asked for.
pub struct RandomWeights {
    pub dtype: DType,
    pub std: f32,
    pub seed: u64,
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if name.ends_with("norm.weight") {
            return Ok(Tensor::ones(shape, self.dtype, Device::Cpu)?);
        }
        // FNV-1a of the name, mixed with the seed.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(fnv1a(name.as_bytes()) ^ self.seed);
        Ok(Tensor::randn(shape, 0.0, self.std, self.dtype, Device::Cpu, &mut rng)?)
    }
}

/// FNV-1a of `bytes` (seeds random tensors by their names).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The tensors of a checkpoint directory, by name.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Weights> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let names: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|source| Error::Io { path: index_path.clone(), source })?;
            let idx: ShardIndex =
                serde_json::from_str(&text).map_err(|source| Error::Json { path: index_path.clone(), source })?;
            let mut files: Vec<String> = idx.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::Config {
                path: dir.into(),
                msg: "no model.safetensors or model.safetensors.index.json in this directory".into(),
            });
        };
        Weights::open_files(names)
    }

    /// Opens one safetensors file of any name (gradients, optimiser state, a fixture).
    pub fn open_file(path: &Path) -> Result<Weights> {
        Weights::open_files(vec![path.to_path_buf()])
    }

    fn open_files(names: Vec<PathBuf>) -> Result<Weights> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in names.into_iter().enumerate() {
            let file = File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            // SAFETY: the mapping is read-only and private to this process. A checkpoint
            // modified by another process while loaded would change what we read; that is
            // the same contract every safetensors loader works under.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: path.clone(), source })?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path, mmap));
        }
        Ok(Weights { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The stored shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
        Ok(view.shape().to_vec())
    }

    /// The tensor `name` in its stored dtype, checked to have shape `expected`.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
        if view.shape() != expected {
            return Err(Error::TensorShape {
                name: name.into(),
                expected: expected.to_vec(),
                got: view.shape().to_vec(),
            });
        }
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            other => return Err(Error::TensorDType { name: name.into(), dtype: format!("{other:?}") }),
        };
        Ok(Tensor::from_bytes(view.data(), dtype, expected, Device::Cpu)?)
    }
}

/// Writes `tensors` (name, tensor; any dtype, views allowed) as one safetensors file, with
/// the `{"format": "pt"}` metadata transformers writes.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let bytes: Vec<(String, DType, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.dtype(), t.dims().to_vec(), t.to_bytes()?)))
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(n, dt, shape, data)| {
            let dtype = match dt {
                DType::F32 => safetensors::Dtype::F32,
                DType::BF16 => safetensors::Dtype::BF16,
                DType::F16 => safetensors::Dtype::F16,
                DType::U32 => safetensors::Dtype::U32,
                DType::U8 => safetensors::Dtype::U8,
            };
            let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), data)
                .map_err(|e| Error::Safetensors { path: path.into(), msg: format!("{n}: {e}") })?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| Error::Safetensors { path: path.into(), msg: e.to_string() })
}
