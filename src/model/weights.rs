//! Reading Hugging Face safetensors checkpoints (single file or sharded).
//!
//! Files are memory-mapped; each tensor is copied once into the target dtype
//! and device, so the model never exists twice in memory.

use anyhow::{Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use crate::error::{usage, OrUsage};

/// The safetensors files of one checkpoint, memory-mapped.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    /// Where every loaded tensor goes.
    pub device: Device,
    /// The dtype of every loaded floating-point tensor.
    pub kind: Kind,
}

impl Weights {
    /// Opens `model.safetensors` or the shards listed by `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            crate::bail_usage!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        Self::open_files(&files, device, kind)
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf], device: Device, kind: Kind) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(path).or_usage(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the mapping is read-only; a file changed underneath us is
            // the same hazard as for every mmap-based loader (transformers too).
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let names = SafeTensors::read_metadata(&mmap)
                .map_err(|e| usage(format!("{}: not a valid safetensors file: {e}", path.display())))?
                .1
                .tensors()
                .into_keys()
                .collect::<Vec<_>>();
            for name in names {
                index.insert(name, files.len());
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self { files, index, device, kind })
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }

    /// SHA-256 over every tensor's name, dtype, shape and three 4 KiB samples of
    /// its bytes (start, middle, end): tells base models apart without reading
    /// gigabytes.
    pub fn checksum(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for name in self.names() {
            let (path, mmap) = &self.files[self.index[&name]];
            let st = SafeTensors::deserialize(mmap)
                .map_err(|e| usage(format!("{}: not a valid safetensors file: {e}", path.display())))?;
            let view = st.tensor(&name).map_err(|e| usage(format!("{}: {name}: {e}", path.display())))?;
            hasher.update(format!("{name}|{:?}|{:?}|", view.dtype(), view.shape()).as_bytes());
            let data = view.data();
            const SAMPLE: usize = 4096;
            for start in [0, data.len().saturating_sub(SAMPLE) / 2, data.len().saturating_sub(SAMPLE)] {
                hasher.update(&data[start..(start + SAMPLE).min(data.len())]);
            }
        }
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// Loads `name`, checks its shape, converts it to the target dtype and device.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let (path, tensor) = self.read(name)?;
        if tensor.size() != shape {
            crate::bail_usage!(
                "{}: tensor {name} has shape {:?}, expected {:?}",
                path.display(),
                tensor.size(),
                shape
            );
        }
        Ok(tensor.to_device(self.device).to_kind(self.kind))
    }

    /// Loads `name` on the CPU in its stored dtype, with the file it came from.
    pub fn read(&self, name: &str) -> Result<(&Path, Tensor)> {
        let Some(&i) = self.index.get(name) else {
            let where_ = self.files.first().map(|(p, _)| p.parent().unwrap_or(p).display().to_string());
            crate::bail_usage!("tensor {name} is missing from the checkpoint in {}", where_.unwrap_or_default());
        };
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| usage(format!("{}: not a valid safetensors file: {e}", path.display())))?;
        let view = st.tensor(name).map_err(|e| usage(format!("{}: {name}: {e}", path.display())))?;
        let kind = kind_of(view.dtype())
            .ok_or_else(|| usage(format!("{}: tensor {name} has unsupported dtype {:?}", path.display(), view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        Ok((path.as_path(), tensor))
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).or_usage(|| format!("cannot read {}", index.display()))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{}: field weight_map: {e}", index.display())))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        if !f.exists() {
            crate::bail_usage!("{}: shard {} is missing", index.display(), f.display());
        }
    }
    Ok(files)
}

/// The tch kind of a safetensors dtype, for the dtypes checkpoints use.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The safetensors dtype of a tch kind.
pub fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => anyhow::bail!("cannot store {other:?} in safetensors"),
    })
}

/// Writes named tensors as one safetensors file (atomically), with `{"format": "pt"}`
/// metadata, which transformers requires.
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    crate::io::write_atomic(path, &serialize(tensors)?)
}

/// The bytes of a safetensors file holding `tensors` (their dtype kept).
pub fn serialize(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        bufs.push((name.clone(), dtype_of(t.kind())?, shape, bytes));
    }
    let views = bufs
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(meta))?)
}
