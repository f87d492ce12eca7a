//! The trainable tensors of L2D: their names (spec §11), shapes and initialisation.

use tch::{Device, Kind, Tensor};

use crate::model::ModelConfig;

pub use crate::config::Variant;

/// The hyper-parameters that decide the shapes of the L2D tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// LoRA or full diffusion-path projections.
    pub variant: Variant,
    /// Width `D` of the diffusion space.
    pub flow_dim: i64,
    /// Width of the timestep features and of `c(t)`.
    pub timestep_dim: i64,
    /// LoRA rank.
    pub lora_rank: i64,
    /// LoRA alpha (scale = alpha / rank).
    pub lora_alpha: f64,
    /// Guidance classes (0 = no guidance embedding).
    pub num_classes: i64,
}

impl Shape {
    /// The shape part of the `[l2d]` config section.
    pub fn from_config(c: &crate::config::L2dConfig) -> Self {
        Self {
            variant: c.variant,
            flow_dim: c.flow_dim,
            timestep_dim: c.timestep_dim,
            lora_rank: c.lora_rank,
            lora_alpha: c.lora_alpha,
            num_classes: c.num_classes,
        }
    }
}

/// Width of the hidden layer of the input encoder, timestep MLP and heads.
pub const HIDDEN: i64 = 256;

/// How a tensor starts out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Xavier-uniform over `[out, in]`.
    XavierUniform,
    /// `N(0, std²)`.
    Normal(f64),
    /// All zeros.
    Zeros,
    /// A copy of the frozen main-path tensor (full variant).
    CopyOfMain,
}

/// One trainable tensor: reference name, shape, initialisation.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Name as the reference implementation writes it.
    pub name: String,
    /// Shape (`[out, in]` for linear weights, `[in, rank]` / `[rank, out]` for LoRA).
    pub shape: Vec<i64>,
    /// Initialisation.
    pub init: Init,
}

fn spec(name: String, shape: &[i64], init: Init) -> Spec {
    Spec { name, shape: shape.to_vec(), init }
}

/// `Linear(in, HIDDEN) -> SiLU -> Linear(HIDDEN, out)` under `prefix.{0,2}`; biases start at zero.
fn mlp2(prefix: &str, input: i64, out: i64, first: Init, last: Init) -> Vec<Spec> {
    vec![
        spec(format!("{prefix}.0.weight"), &[HIDDEN, input], first),
        spec(format!("{prefix}.0.bias"), &[HIDDEN], Init::Zeros),
        spec(format!("{prefix}.2.weight"), &[out, HIDDEN], last),
        spec(format!("{prefix}.2.bias"), &[out], Init::Zeros),
    ]
}

/// Every trainable tensor of L2D on top of a model with config `cfg`.
pub fn specs(cfg: &ModelConfig, s: &Shape) -> Vec<Spec> {
    let (d, big_d, ts) = (cfg.hidden_size, s.flow_dim, s.timestep_dim);
    let q_dim = cfg.num_attention_heads * cfg.head_dim();
    let ffn = cfg.intermediate_size;
    let mut out = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let attn = format!("model.layers.{i}.self_attn");
        let mlp = format!("model.layers.{i}.mlp");
        let projections = [
            (format!("{attn}.flow_q_proj"), d, q_dim, cfg.qkv_bias()),
            (format!("{attn}.flow_o_proj"), q_dim, d, cfg.o_bias()),
            (format!("{mlp}.flow_gate_proj"), d, ffn, false),
            (format!("{mlp}.flow_up_proj"), d, ffn, false),
            (format!("{mlp}.flow_down_proj"), ffn, d, false),
        ];
        for (name, input, output, bias) in projections {
            match s.variant {
                Variant::Lora => {
                    out.push(spec(format!("{name}.A"), &[input, s.lora_rank], Init::Normal(1.0 / s.lora_rank as f64)));
                    out.push(spec(format!("{name}.B"), &[s.lora_rank, output], Init::Zeros));
                }
                Variant::Full => {
                    out.push(spec(format!("{name}.weight"), &[output, input], Init::CopyOfMain));
                    if bias {
                        out.push(spec(format!("{name}.bias"), &[output], Init::CopyOfMain));
                    }
                }
            }
        }
        out.extend(mlp2(&format!("model.layers.{i}.modulation_head.mlp"), ts, 6 * d, Init::XavierUniform, Init::Zeros));
    }
    out.extend(mlp2("model.modulation_head.mlp", ts, d, Init::XavierUniform, Init::Zeros));
    out.extend(mlp2("model.timestep_embedder.mlp", ts, ts, Init::Normal(0.02), Init::Normal(0.02)));
    out.push(spec("model.flow_token_embedder.embedder.layers_module.0.weight".into(), &[big_d, d], Init::XavierUniform));
    out.push(spec("model.flow_token_embedder.embedder.layers_module.0.bias".into(), &[big_d], Init::Zeros));
    out.extend(mlp2(
        "model.flow_to_lm_encoder.embedder.layers_module",
        big_d,
        d,
        Init::XavierUniform,
        Init::XavierUniform,
    ));
    if s.num_classes > 0 {
        out.push(spec("model.data_label_embedder.weight".into(), &[s.num_classes + 1, ts], Init::Normal(0.02)));
    }
    out
}

/// Total number of elements of `specs`.
pub fn count(specs: &[Spec]) -> i64 {
    specs.iter().map(|s| s.shape.iter().product::<i64>()).sum()
}

/// A freshly initialised tensor for `spec` (not `CopyOfMain`, which the caller fills).
pub fn initialise(spec: &Spec, device: Device) -> Tensor {
    let opts = (Kind::Float, device);
    match spec.init {
        Init::Zeros | Init::CopyOfMain => Tensor::zeros(spec.shape.as_slice(), opts),
        Init::Normal(std) => Tensor::randn(spec.shape.as_slice(), opts) * std,
        Init::XavierUniform => {
            let (fan_out, fan_in) = (spec.shape[0], spec.shape[1]);
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            Tensor::rand(spec.shape.as_slice(), opts) * (2.0 * bound) - bound
        }
    }
}
