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

/// A diffusion-path projection of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    /// `self_attn.flow_q_proj`.
    Q,
    /// `self_attn.flow_o_proj`.
    O,
    /// `mlp.flow_gate_proj`.
    Gate,
    /// `mlp.flow_up_proj`.
    Up,
    /// `mlp.flow_down_proj`.
    Down,
}

impl Proj {
    /// Every projection, in the reference's order within a layer.
    pub const ALL: [Proj; 5] = [Proj::Q, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    fn module(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.flow_q_proj",
            Proj::O => "self_attn.flow_o_proj",
            Proj::Gate => "mlp.flow_gate_proj",
            Proj::Up => "mlp.flow_up_proj",
            Proj::Down => "mlp.flow_down_proj",
        }
    }
}

/// The last part of a tensor's name: a linear map's weight or bias, or a LoRA factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leaf {
    /// `weight` `[out, in]`.
    Weight,
    /// `bias` `[out]`.
    Bias,
    /// LoRA `A` `[in, rank]`.
    A,
    /// LoRA `B` `[rank, out]`.
    B,
}

impl std::fmt::Display for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Leaf::Weight => "weight",
            Leaf::Bias => "bias",
            Leaf::A => "A",
            Leaf::B => "B",
        })
    }
}

/// A tensor of a `Linear -> SiLU -> Linear` MLP: linear `0` or `2`, weight or bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MlpLeaf {
    /// The second linear map (`2`) rather than the first (`0`).
    pub second: bool,
    /// Weight or bias.
    pub leaf: Leaf,
}

impl MlpLeaf {
    /// The four tensors of an MLP, in the reference's order.
    pub const ALL: [MlpLeaf; 4] = [
        MlpLeaf { second: false, leaf: Leaf::Weight },
        MlpLeaf { second: false, leaf: Leaf::Bias },
        MlpLeaf { second: true, leaf: Leaf::Weight },
        MlpLeaf { second: true, leaf: Leaf::Bias },
    ];
}

impl std::fmt::Display for MlpLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", if self.second { 2 } else { 0 }, self.leaf)
    }
}

/// Which layers a per-layer modulation-head tensor covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layers {
    /// Layer `i` alone, as checkpoints store it.
    One(usize),
    /// All layers stacked along a leading axis, as training and decoding hold it.
    Stacked,
}

/// A trainable tensor of the path, typed; [`Display`](std::fmt::Display) gives
/// the name the reference implementation writes (spec §11), so checkpoints,
/// assembly and the full variant's copy of the main path all read one value
/// instead of building and re-parsing strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamName {
    /// A projection of decoder layer `layer`.
    Flow {
        /// Decoder layer.
        layer: usize,
        /// Which projection.
        proj: Proj,
        /// Weight, bias or LoRA factor.
        leaf: Leaf,
    },
    /// A decoder layer's modulation head.
    LayerModulation(Layers, MlpLeaf),
    /// The final gate head, `model.modulation_head`.
    GateHead(MlpLeaf),
    /// The timestep MLP.
    Timestep(MlpLeaf),
    /// `map: R^d -> R^D`, the flow token embedder.
    Map(Leaf),
    /// The input encoder `D -> 256 -> d`.
    Encoder(MlpLeaf),
    /// The guidance label embedding.
    Guidance,
}

impl std::fmt::Display for ParamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamName::Flow { layer, proj, leaf } => write!(f, "model.layers.{layer}.{}.{leaf}", proj.module()),
            ParamName::LayerModulation(Layers::One(i), l) => write!(f, "model.layers.{i}.modulation_head.mlp.{l}"),
            ParamName::LayerModulation(Layers::Stacked, l) => write!(f, "model.layers.*.modulation_head.mlp.{l}"),
            ParamName::GateHead(l) => write!(f, "model.modulation_head.mlp.{l}"),
            ParamName::Timestep(l) => write!(f, "model.timestep_embedder.mlp.{l}"),
            ParamName::Map(leaf) => write!(f, "model.flow_token_embedder.embedder.layers_module.0.{leaf}"),
            ParamName::Encoder(l) => write!(f, "model.flow_to_lm_encoder.embedder.layers_module.{l}"),
            ParamName::Guidance => f.write_str("model.data_label_embedder.weight"),
        }
    }
}

/// One trainable tensor: name, shape, initialisation.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which tensor (its reference name by `Display`).
    pub name: ParamName,
    /// Shape (`[out, in]` for linear weights, `[in, rank]` / `[rank, out]` for LoRA).
    pub shape: Vec<i64>,
    /// Initialisation.
    pub init: Init,
}

fn spec(name: ParamName, shape: &[i64], init: Init) -> Spec {
    Spec { name, shape: shape.to_vec(), init }
}

/// `Linear(in, HIDDEN) -> SiLU -> Linear(HIDDEN, out)` named by `name`; biases start at zero.
fn mlp2(name: impl Fn(MlpLeaf) -> ParamName, input: i64, out: i64, first: Init, last: Init) -> Vec<Spec> {
    let [w0, b0, w2, b2] = MlpLeaf::ALL;
    vec![
        spec(name(w0), &[HIDDEN, input], first),
        spec(name(b0), &[HIDDEN], Init::Zeros),
        spec(name(w2), &[out, HIDDEN], last),
        spec(name(b2), &[out], Init::Zeros),
    ]
}

/// Every trainable tensor of L2D on top of a model with config `cfg`.
pub fn specs(cfg: &ModelConfig, s: &Shape) -> Vec<Spec> {
    let (d, big_d, ts) = (cfg.hidden_size, s.flow_dim, s.timestep_dim);
    let q_dim = cfg.num_attention_heads * cfg.head_dim();
    let ffn = cfg.intermediate_size;
    let mut out = Vec::new();
    for layer in 0..cfg.num_hidden_layers as usize {
        for proj in Proj::ALL {
            let (input, output, bias) = match proj {
                Proj::Q => (d, q_dim, cfg.qkv_bias()),
                Proj::O => (q_dim, d, cfg.o_bias()),
                Proj::Gate | Proj::Up => (d, ffn, false),
                Proj::Down => (ffn, d, false),
            };
            let name = |leaf| ParamName::Flow { layer, proj, leaf };
            match s.variant {
                Variant::Lora => {
                    out.push(spec(name(Leaf::A), &[input, s.lora_rank], Init::Normal(1.0 / s.lora_rank as f64)));
                    out.push(spec(name(Leaf::B), &[s.lora_rank, output], Init::Zeros));
                }
                Variant::Full => {
                    out.push(spec(name(Leaf::Weight), &[output, input], Init::CopyOfMain));
                    if bias {
                        out.push(spec(name(Leaf::Bias), &[output], Init::CopyOfMain));
                    }
                }
            }
        }
        let modulation = |l| ParamName::LayerModulation(Layers::One(layer), l);
        out.extend(mlp2(modulation, ts, 6 * d, Init::XavierUniform, Init::Zeros));
    }
    out.extend(mlp2(ParamName::GateHead, ts, d, Init::XavierUniform, Init::Zeros));
    out.extend(mlp2(ParamName::Timestep, ts, ts, Init::Normal(0.02), Init::Normal(0.02)));
    out.push(spec(ParamName::Map(Leaf::Weight), &[big_d, d], Init::XavierUniform));
    out.push(spec(ParamName::Map(Leaf::Bias), &[big_d], Init::Zeros));
    out.extend(mlp2(ParamName::Encoder, big_d, d, Init::XavierUniform, Init::XavierUniform));
    if s.num_classes > 0 {
        out.push(spec(ParamName::Guidance, &[s.num_classes + 1, ts], Init::Normal(0.02)));
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
