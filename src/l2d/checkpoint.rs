//! L2D checkpoints: a directory with `l2d.safetensors` (only the L2D tensors,
//! named as the reference names them) and `l2d.json` (hyper-parameters, the
//! identity of the base model, the training step).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use super::{L2d, Shape};
use crate::config::L2dConfig;
use crate::error::OrUsage;
use crate::model::weights::Weights;
use crate::model::Llama;

/// Tensor file inside a checkpoint directory.
pub const TENSORS: &str = "l2d.safetensors";
/// Metadata file inside a checkpoint directory.
pub const METADATA: &str = "l2d.json";

/// Which base model a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseIdentity {
    /// SHA-256 of the shape-defining `config.json` fields.
    pub config_sha256: String,
    /// SHA-256 over every tensor's name, dtype, shape and three 4 KiB samples of its bytes.
    pub tensors_sha256: String,
}

impl BaseIdentity {
    /// The identity of the model directory `dir` whose config is `model.config`.
    pub fn of(model: &Llama, dir: &Path) -> Result<Self> {
        let weights = Weights::open_dir(dir, Device::Cpu, Kind::Float)?;
        Ok(Self { config_sha256: model.config.fingerprint(), tensors_sha256: weights.checksum()? })
    }

    /// The identity of the model directory `dir`, from its files alone (no model loaded).
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let config = crate::model::ModelConfig::load(&dir.join("config.json"))?;
        let weights = Weights::open_dir(dir, Device::Cpu, Kind::Float)?;
        Ok(Self { config_sha256: config.fingerprint(), tensors_sha256: weights.checksum()? })
    }
}

/// `l2d.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Always `"l2d"`.
    pub format: String,
    /// Layout version of this directory.
    pub version: u32,
    /// Tensor shapes and variant.
    pub shape: Shape,
    /// The `[l2d]` section the checkpoint was trained with (σ, sampler defaults).
    pub l2d: L2dConfig,
    /// The base model it was trained on.
    pub base: BaseIdentity,
    /// Optimizer steps taken.
    pub step: u64,
}

/// Writes `l2d` as a checkpoint directory at `dir` (atomically: staged, then renamed).
pub fn save(dir: &Path, l2d: &L2d, meta: &Metadata) -> Result<()> {
    let staged = crate::io::StagedDir::new(dir)?;
    let tensors: Vec<(String, Tensor)> = l2d.named_tensors().into_iter().map(|(n, t)| (n, t.detach())).collect();
    crate::model::weights::save(&staged.path().join(TENSORS), &tensors)?;
    crate::io::write_json_atomic(&staged.path().join(METADATA), meta)?;
    staged.commit()?;
    Ok(())
}

/// Reads `l2d.json` of a checkpoint directory.
pub fn read_metadata(dir: &Path) -> Result<Metadata> {
    let path = dir.join(METADATA);
    let text = std::fs::read_to_string(&path).or_usage(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).or_usage(|| format!("{}: malformed", path.display()))
}

/// An L2D checkpoint named by the user (errors name its path; the caller adds the flag or key), before its tensors are read: a
/// checkpoint directory (its `l2d.json` read once, here), or a bare reference
/// export (`*.safetensors`) whose hyper-parameters come from the `[l2d]` section.
pub struct Checkpoint {
    path: PathBuf,
    meta: Option<Metadata>,
}

impl Checkpoint {
    /// Opens `path`; a path that is neither kind is a usage error.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = if path.is_dir() {
            Some(read_metadata(path)?)
        } else if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            None
        } else if !path.exists() {
            crate::bail_usage!("{} does not exist", path.display());
        } else {
            crate::bail_usage!("{} is neither a checkpoint directory nor a .safetensors file", path.display());
        };
        Ok(Self { path: path.to_path_buf(), meta })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `l2d.json` of a checkpoint directory; none for a bare export.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.meta.as_ref()
    }

    /// Copies the checkpoint's shape and σ into the `[l2d]` section, so that
    /// sampler settings are checked against the checkpoint actually used.
    pub fn apply_shape(&self, cfg: &mut L2dConfig) {
        let Some(meta) = &self.meta else { return };
        let s = &meta.shape;
        cfg.variant = s.variant;
        cfg.flow_dim = s.flow_dim;
        cfg.timestep_dim = s.timestep_dim;
        cfg.lora_rank = s.lora_rank;
        cfg.lora_alpha = s.lora_alpha;
        cfg.num_classes = s.num_classes;
        cfg.sigma = meta.l2d.sigma;
    }

    /// Reads the tensors onto `model` (loaded from `base_dir`); a directory's base
    /// identity must match. A bare export takes its shape and σ from `config`.
    pub fn load(&self, model: &Llama, base_dir: &Path, config: &L2dConfig) -> Result<L2d> {
        let (shape, sigma) = match &self.meta {
            Some(meta) => {
                check_base(&self.path, &meta.base, model, base_dir)?;
                (meta.shape.clone(), meta.l2d.sigma)
            }
            None => (Shape::from_config(config), config.sigma),
        };
        let file = self.tensor_file();
        L2d::from_tensors(model, shape, sigma, read_tensors(&file)?, &file.display().to_string())
    }

    /// The safetensors file holding the tensors: `l2d.safetensors` of a directory, or the bare export itself.
    pub fn tensor_file(&self) -> PathBuf {
        match self.meta {
            Some(_) => self.path.join(TENSORS),
            None => self.path.clone(),
        }
    }
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let weights = Weights::open_files(&[path.to_path_buf()], Device::Cpu, Kind::Float)?;
    weights.names().into_iter().map(|n| Ok((n.clone(), weights.read(&n)?.1))).collect()
}

fn check_base(ckpt: &Path, want: &BaseIdentity, model: &Llama, base_dir: &Path) -> Result<()> {
    if model.config.fingerprint() != want.config_sha256 {
        crate::bail_usage!(
            "{}: the checkpoint was trained on a base model with another config (shapes differ from {})",
            ckpt.display(),
            base_dir.display()
        );
    }
    let have = BaseIdentity::of(model, base_dir)?;
    if have.tensors_sha256 != want.tensors_sha256 {
        crate::bail_usage!(
            "{}: the checkpoint was trained on another base model (tensor checksum {} != {} of {})",
            ckpt.display(),
            crate::data::shards::short(&want.tensors_sha256),
            crate::data::shards::short(&have.tensors_sha256),
            base_dir.display()
        );
    }
    Ok(())
}
