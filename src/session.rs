//! What a subcommand runs on, loaded once: the device and dtype of `[model]`,
//! the base LM, its tokenizer and an optional L2D checkpoint.

use anyhow::Result;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

use crate::config::{L2dConfig, ModelConfig};
use crate::data::tokenizer::Tokenizer;
use crate::l2d::checkpoint::Checkpoint;
use crate::l2d::L2d;
use crate::model::Llama;
use crate::runtime;

/// A loaded base LM with its tokenizer.
pub struct Session {
    /// The model directory.
    pub dir: PathBuf,
    /// The base LM.
    pub model: Llama,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

impl Session {
    /// Loads the model and tokenizer `[model]` names, on its device and dtype.
    pub fn open(m: &ModelConfig) -> Result<Session> {
        let model = load_model(m)?;
        let dir = PathBuf::from(&m.path);
        let tokenizer = Tokenizer::load(&dir)?;
        Ok(Session { dir, model, tokenizer })
    }

    /// Reads `ckpt`'s tensors onto this base LM (whose identity a checkpoint directory must match).
    pub fn load_l2d(&self, ckpt: &Checkpoint, cfg: &L2dConfig) -> Result<L2d> {
        ckpt.load(&self.model, &self.dir, cfg)
    }

    /// The device the model is on.
    pub fn device(&self) -> Device {
        self.model.device()
    }
}

/// The device and compute dtype `[model]` asks for, checked against this machine.
pub fn placement(m: &ModelConfig) -> Result<(Device, Kind)> {
    let device = runtime::parse_device(&m.device)?;
    Ok((device, runtime::kind_of(m.dtype, device)?))
}

/// Loads the base LM `[model]` names (no tokenizer: training reads token ids).
pub fn load_model(m: &ModelConfig) -> Result<Llama> {
    if m.path.is_empty() {
        crate::bail_usage!("model.path: missing (a Hugging Face model directory)");
    }
    let (device, kind) = placement(m)?;
    Llama::load(Path::new(&m.path), device, kind)
}
