//! The weight-LoRA baseline: adapters on a frozen [`Llama`] with PEFT's
//! semantics, tensor names and file layout.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;
use super::llama::Llama;
use super::lora::{LayerAdapters, Lora, Target};
use super::weights::Weights;
use crate::config::LoraConfig;

impl Llama {
    /// [`Llama::forward`] with weight-LoRA `adapters` beside the frozen maps;
    /// their dropout is active when `train`.
    pub fn forward_adapted(&self, input_ids: &Tensor, adapters: &Adapters, train: bool) -> Tensor {
        self.forward_with(input_ids, &|i| Some(adapters.layer(i, train)))
    }
}

/// The checked `[lora]` settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rank of every adapter.
    pub rank: i64,
    /// Scale numerator.
    pub alpha: f64,
    /// Dropout on each adapter's input during training.
    pub dropout: f64,
    /// The adapted modules, in layer order, each once.
    pub targets: Vec<Target>,
}

impl Settings {
    /// Resolves the module names of `[lora]` (whose ranges the config check already enforced).
    pub fn from_config(c: &LoraConfig) -> Result<Self> {
        let mut targets = Vec::new();
        for name in &c.target_modules {
            let Some(t) = Target::ALL.into_iter().find(|t| t.name() == name) else {
                let known: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                crate::bail_usage!("lora.target_modules: unknown module {name:?} (expected {})", known.join(", "));
            };
            targets.push(t);
        }
        targets.sort();
        targets.dedup();
        Ok(Self { rank: c.rank, alpha: c.alpha, dropout: c.dropout, targets })
    }

    /// `alpha / rank`, PEFT's `scaling`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Trainable elements on a model of config `c`.
    pub fn num_params(&self, c: &ModelConfig) -> i64 {
        let per_layer: i64 = self.targets.iter().map(|t| t.dims(c)).map(|(i, o)| self.rank * (i + o)).sum();
        per_layer * c.num_hidden_layers
    }
}

/// PEFT's name of an adapter tensor (`part` is `A` or `B`) in a saved causal-LM adapter.
fn peft_name(layer: usize, target: Target, part: char) -> String {
    format!("base_model.model.{}.lora_{part}.weight", target.path(layer))
}

/// Weight-LoRA adapters on a frozen model (the `lora` training mode): f32
/// master tensors under PEFT's names, applied in the model's dtype.
pub struct Adapters {
    /// What they were made with.
    pub settings: Settings,
    /// The trainable leaves (f32): `lora_A`, `lora_B` of every layer and target, in order.
    pub params: Vec<(String, Tensor)>,
    /// Per layer, per [`Target`] slot: the compute copy, if the module is adapted.
    layers: Vec<[Option<Lora>; 7]>,
}

impl Adapters {
    /// Fresh adapters as PEFT initialises them: `A` Kaiming-uniform(a = √5), `B` zeros,
    /// so the adapted model starts as the base model.
    pub fn init(model: &Llama, settings: Settings) -> Result<Self> {
        let device = model.device();
        let mut tensors = HashMap::new();
        for (layer, target) in slots(model, &settings) {
            let (fan_in, out) = target.dims(&model.config);
            // kaiming_uniform_(a=√5) bounds U(±gain·√(3/fan_in)) with gain = √(2/(1+5)): exactly ±1/√fan_in.
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut a = Tensor::empty([settings.rank, fan_in], (Kind::Float, device));
            let _ = a.uniform_(-bound, bound);
            tensors.insert(peft_name(layer, target, 'A'), a);
            tensors.insert(peft_name(layer, target, 'B'), Tensor::zeros([out, settings.rank], (Kind::Float, device)));
        }
        Self::from_tensors(model, settings, tensors, "the initialisation")
    }

    /// Adapters from PEFT-named tensors, checked against `settings` and the model;
    /// `source` names where they came from, for errors.
    pub fn from_tensors(model: &Llama, settings: Settings, mut tensors: HashMap<String, Tensor>, source: &str) -> Result<Self> {
        let mut params = Vec::new();
        for (layer, target) in slots(model, &settings) {
            let (fan_in, out) = target.dims(&model.config);
            for (part, shape) in [('A', [settings.rank, fan_in]), ('B', [out, settings.rank])] {
                let name = peft_name(layer, target, part);
                let Some(t) = tensors.remove(&name) else {
                    crate::bail_usage!("{source}: tensor {name} is missing");
                };
                if t.size() != shape {
                    crate::bail_usage!("{source}: tensor {name} has shape {:?}, expected {shape:?}", t.size());
                }
                let master = t.to_device(model.device()).to_kind(Kind::Float).detach().set_requires_grad(true);
                params.push((name, master));
            }
        }
        if let Some(extra) = tensors.keys().min() {
            crate::bail_usage!("{source}: unexpected tensor {extra} (other lora settings or another model?)");
        }
        let mut adapters = Self { settings, params, layers: Vec::new() };
        adapters.refresh(model);
        Ok(adapters)
    }

    /// Rebuilds the compute copies from the f32 masters (needed after an
    /// optimizer step when the model computes in bf16/f16).
    pub fn refresh(&mut self, model: &Llama) {
        let kind = model.kind();
        // Compute in the model dtype; the f32 leaves stay the master copies.
        let compute = |t: &Tensor| if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) };
        self.layers = arrange(&self.settings, model.layers.len(), self.params.iter().map(|(_, t)| compute(t)));
    }

    /// Layer `layer`'s adapters for one forward pass; their dropout is active when `train`.
    pub fn layer(&self, layer: usize, train: bool) -> LayerAdapters<'_> {
        LayerAdapters::new(&self.layers[layer], if train { self.settings.dropout } else { 0.0 })
    }

    /// The base model's tensors (read from `base` in f32) with every adapted
    /// weight merged, `W + scale·B·A`, under Hugging Face names.
    pub fn merged(&self, base: &Weights) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut deltas = HashMap::new();
        let masters = arrange(&self.settings, self.layers.len(), self.params.iter().map(|(_, t)| t.detach()));
        for (layer, slots) in masters.iter().enumerate() {
            for (target, lora) in Target::ALL.iter().zip(slots) {
                if let Some(lora) = lora {
                    deltas.insert(format!("{}.weight", target.path(layer)), lora.dense().to_device(Device::Cpu));
                }
            }
        }
        base.names()
            .into_iter()
            .map(|name| {
                let weight = base.read(&name)?.1.to_kind(Kind::Float);
                let merged = match deltas.get(&name) {
                    Some(delta) => weight + delta,
                    None => weight,
                };
                Ok((name, merged))
            })
            .collect()
    }

    /// Writes the adapters as a PEFT adapter directory at `dest`
    /// (`adapter_config.json`, `adapter_model.safetensors` in f32) for the base model at `base_model`.
    pub fn save_peft(&self, dest: &Path, base_model: &str) -> Result<()> {
        let staged = crate::io::StagedDir::new(dest)?;
        let s = &self.settings;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": s.rank,
            "lora_alpha": s.alpha,
            "lora_dropout": s.dropout,
            "target_modules": s.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        crate::io::write_json_atomic(&staged.path().join("adapter_config.json"), &config)?;
        let tensors: Vec<(String, Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
        super::weights::save(&staged.path().join("adapter_model.safetensors"), &tensors)?;
        staged.commit().with_context(|| format!("cannot write the adapter to {}", dest.display()))?;
        Ok(())
    }
}

/// Pairs consecutive `A`, `B` tensors (in the order of [`Adapters::params`]) into
/// per-layer slots.
fn arrange(settings: &Settings, layers: usize, mut leaves: impl Iterator<Item = Tensor>) -> Vec<[Option<Lora>; 7]> {
    (0..layers)
        .map(|_| {
            let mut slots: [Option<Lora>; 7] = Default::default();
            for &target in &settings.targets {
                let (a, b) = (leaves.next().expect("an A per slot"), leaves.next().expect("a B per slot"));
                slots[target as usize] = Some(Lora { a, b, scale: settings.scale() });
            }
            slots
        })
        .collect()
}

/// Every adapted (layer, module), in the order of [`Adapters::params`].
fn slots(model: &Llama, settings: &Settings) -> Vec<(usize, Target)> {
    (0..model.layers.len()).flat_map(|l| settings.targets.iter().map(move |&t| (l, t))).collect()
}
