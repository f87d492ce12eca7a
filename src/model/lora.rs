//! Low-rank adaptation: the one LoRA type (a frozen map's update `scale·B·A`),
//! the linear modules that can carry one, and a layer's adapters as the model
//! applies them. The adapters never touch the frozen
//! [`Linear`](super::llama::Linear)s: the model adds their updates to the
//! frozen maps' outputs. The weight-LoRA baseline's set of them is [`super::adapters`].

use tch::Tensor;

use super::config::ModelConfig;

/// A low-rank update `scale · B·A` of a frozen linear map, in PEFT's orientation.
pub struct Lora {
    /// `[rank, in]` (PEFT's `lora_A.weight`).
    pub a: Tensor,
    /// `[out, rank]` (PEFT's `lora_B.weight`).
    pub b: Tensor,
    /// `alpha / rank`.
    pub scale: f64,
}

impl Lora {
    /// `y + scale · B(A x)` for `x` `[.., in]` and the frozen map's output `y` `[.., out]`.
    ///
    /// The scale multiplies the rank-wide intermediate instead of the output
    /// (rank/out as many elements; none at all when alpha = rank, the L2D
    /// default), and the sum is taken inside the second matmul: no extra pass over `y`.
    pub fn add_to(&self, y: &Tensor, x: &Tensor) -> Tensor {
        let low = x.linear::<Tensor>(&self.a, None);
        let low = if self.scale == 1.0 { low } else { low * self.scale };
        let shape = y.size();
        let (out, rank) = (shape[shape.len() - 1], self.a.size()[0]);
        y.reshape([-1, out]).addmm(&low.reshape([-1, rank]), &self.b.tr()).view(shape.as_slice())
    }

    /// The update as one dense `[out, in]` matrix, to merge into the frozen weight.
    pub fn dense(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }
}

/// A decoder layer's linear modules that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl Target {
    /// Every target, in the order of [`ModelConfig::projection_dims`].
    pub const ALL: [Target; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The Hugging Face module name (`q_proj`, ...), as `target_modules` spells it.
    pub fn name(self) -> &'static str {
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"][self as usize]
    }

    /// The module's path inside decoder layer `layer`, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn path(self, layer: usize) -> String {
        let block = if self <= Self::O { "self_attn" } else { "mlp" };
        format!("model.layers.{layer}.{block}.{}", self.name())
    }

    /// `(in, out)` features of the module in a model of config `c`.
    pub fn dims(self, c: &ModelConfig) -> (i64, i64) {
        let (_, fan_in, out) = c.projection_dims()[self as usize];
        (fan_in, out)
    }
}

/// One layer's adapters as one forward pass applies them.
#[derive(Clone, Copy)]
pub struct LayerAdapters<'a> {
    slots: &'a [Option<Lora>; 7],
    /// 0 outside training.
    dropout: f64,
}

impl<'a> LayerAdapters<'a> {
    /// A layer's adapter slots (indexed by [`Target`]), with dropout `dropout` (0 outside training).
    pub fn new(slots: &'a [Option<Lora>; 7], dropout: f64) -> Self {
        LayerAdapters { slots, dropout }
    }

    /// `y`, the frozen map's output for `x`, plus `target`'s update if it has an
    /// adapter (PEFT: `y + scale·B(A(dropout(x)))`, one dropout mask per adapter).
    pub fn add(&self, target: Target, x: &Tensor, y: Tensor) -> Tensor {
        match &self.slots[target as usize] {
            Some(lora) if self.dropout > 0.0 => lora.add_to(&y, &x.dropout(self.dropout, true)),
            Some(lora) => lora.add_to(&y, x),
            None => y,
        }
    }
}
