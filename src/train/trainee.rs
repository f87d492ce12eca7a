//! What a run trains, per mode: a diffusion path, weight-LoRA adapters or
//! the model's own weights, with their f32 masters when the model computes
//! in a half type.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::Mode;
use crate::config::Config;
use crate::l2d::{next_token_nll, L2d, Shape, TokenBatch};
use crate::model::adapters::{self, Adapters};
use crate::model::Llama;

/// What is trained.
pub enum Trainee {
    /// A diffusion path beside the frozen model (boxed: far larger than the other variants).
    L2d(Box<L2d>),
    /// Weight-LoRA adapters beside the frozen model.
    Lora(Adapters),
    /// Every weight of the model itself; `masters` are f32 copies when the
    /// model computes in bf16/f16 (AdamW updates them, the model's weights follow).
    Full {
        /// The f32 master weights, named as [`Llama::named_tensors`].
        masters: Option<Vec<(String, Tensor)>>,
    },
}

impl Trainee {
    /// Sets up what `mode` trains on `model`: a fresh diffusion path, fresh
    /// adapters, or the model's own weights made trainable.
    pub fn new(mode: Mode, model: &Llama, cfg: &Config) -> Result<Self> {
        Ok(match mode {
            Mode::L2dLora | Mode::L2dFull => Self::L2d(Box::new(L2d::init(model, Shape::from_config(&cfg.l2d), cfg.l2d.sigma)?)),
            Mode::Lora => Self::Lora(Adapters::init(model, adapters::Settings::from_config(&cfg.lora)?)?),
            Mode::Full => {
                let named = model.named_tensors();
                // Updates of ~lr vanish when rounded into bf16 weights; f32 masters keep them.
                let masters = (model.kind() != Kind::Float)
                    .then(|| named.iter().map(|(n, w)| (n.clone(), w.to_kind(Kind::Float).detach())).collect::<Vec<_>>());
                for (_, p) in masters.as_ref().unwrap_or(&named) {
                    let _ = p.set_requires_grad(true);
                }
                let mut full = Self::Full { masters };
                full.refresh(model);
                full
            }
        })
    }

    /// The trainable tensors (shallow copies: the same storage and autograd leaves).
    pub fn params(&self, model: &Llama) -> Vec<(String, Tensor)> {
        match self {
            Self::L2d(l) => shallow(&l.params),
            Self::Lora(a) => shallow(&a.params),
            Self::Full { masters: Some(m) } => shallow(m),
            Self::Full { masters: None } => model.named_tensors(),
        }
    }

    /// Brings the tensors the model computes with up to date with the f32
    /// masters, after an optimizer step or a restore.
    pub(super) fn refresh(&mut self, model: &Llama) {
        match self {
            Self::L2d(l) => l.refresh(model),
            Self::Lora(a) => a.refresh(model),
            Self::Full { masters: Some(masters) } => tch::with_grad(|| {
                for ((_, mut weight), (_, master)) in model.named_tensors().into_iter().zip(masters.iter()) {
                    // Recorded by autograd: the compute weights' gradients flow back to the masters, in f32.
                    weight.copy_(master);
                }
            }),
            Self::Full { masters: None } => {}
        }
    }

    /// Makes the trainable tensors leaves in the model's compute dtype (ZeRO-1
    /// in bf16/f16, once the optimizer's shards hold the f32 masters): the
    /// whole f32 copies and their f32 gradients are no longer kept on every rank.
    pub(super) fn lower_to_compute_dtype(&mut self, model: &Llama) {
        let kind = model.kind();
        match self {
            Self::L2d(l) => {
                l.params = l.params.iter().map(|(n, p)| (n.clone(), p.detach().to_kind(kind).set_requires_grad(true))).collect();
            }
            Self::Full { masters: Some(_) } => {
                self.refresh(model);
                for (_, mut w) in model.named_tensors() {
                    // In place: the model's own tensors become the leaves.
                    let _ = w.detach_();
                    let _ = w.set_requires_grad(true);
                }
                *self = Self::Full { masters: None };
            }
            Self::Full { masters: None } | Self::Lora(_) => {}
        }
    }

    /// Puts the f32 `masters` (named as [`Trainee::params`], on the host)
    /// back as the trainable tensors, after [`Trainee::lower_to_compute_dtype`],
    /// so that the result is written in f32. `full` leaves them on the host
    /// (only written out), L2D moves them to the device it assembles on.
    pub(super) fn raise_to_masters(&mut self, model: &Llama, masters: Vec<(String, Tensor)>) {
        match self {
            Self::L2d(l) => {
                // `masters` come in the order of `params` (named by their strings).
                l.params = l
                    .params
                    .iter()
                    .zip(masters)
                    .map(|((name, _), (master_name, t))| {
                        debug_assert_eq!(name.to_string(), master_name);
                        (*name, t.to_device(model.device()))
                    })
                    .collect();
                l.refresh(model);
            }
            Self::Full { .. } => *self = Self::Full { masters: Some(masters) },
            Self::Lora(_) => {}
        }
    }

    /// Summed next-token loss and label count of `batch` (adapter dropout active when `train`).
    pub(super) fn nll(&self, model: &Llama, batch: &TokenBatch, train: bool) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Self::L2d(l) => l.nll(model, batch)?,
            Self::Lora(a) => next_token_nll(&model.forward_adapted(&batch.input_ids, a, train), &batch.labels),
            Self::Full { .. } => next_token_nll(&model.forward(&batch.input_ids), &batch.labels),
        })
    }
}

/// Shallow copies of named tensors (the same storage and autograd leaves).
pub(super) fn shallow(params: &[(impl ToString, Tensor)]) -> Vec<(String, Tensor)> {
    params.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect()
}
