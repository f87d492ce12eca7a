//! An L2D path laid out for decoding, built once from the trainable [`L2d`]:
//! LoRA updates merged into dense flow matrices, the LM head and the input
//! encoder packed for the few-row products of decoding, no gradients.

use anyhow::Result;
use tch::Tensor;

use super::{encode_with, gated, stream, Conditioning, FlowLayer, Mlp2, L2d};
use crate::model::decode_linear::DecodeLinear;
use crate::model::llama::Linear;
use crate::model::{KvCache, Llama, Step};

/// What decoding with an L2D path reads at every evaluation.
pub struct L2dDecoder {
    /// The conditioning maps and the token map, as gradient-free views of the
    /// trained tensors; its trainable flow layers are replaced by `layers`.
    path: L2d,
    /// Per-layer flow projections, merged and packed.
    layers: Vec<FlowLayer<DecodeLinear>>,
    /// The input encoder (f32), packed.
    encoder: Mlp2<DecodeLinear>,
    /// The base model's LM head: the largest matrix of every evaluation.
    head: DecodeLinear,
    /// `rep(y)` of every vocabulary token `[V, D]` in f64, which x1 estimates
    /// read: computed once here, not per sampler (a `V × d × D` product).
    rep_vocab: Tensor,
}

impl L2dDecoder {
    /// Lays out `l2d` (trained on `model`) for decoding; the main path keeps its own maps, unchanged.
    pub fn new(model: &Llama, l2d: &L2d) -> Self {
        let _guard = tch::no_grad_guard();
        let mut path = l2d.detached(model);
        let layers = path.layers.iter().zip(&model.layers).map(|(flow, main)| flow.for_decoding(main)).collect();
        // Their merged copies are what decoding reads; the trainable ones would only hold memory.
        path.layers.clear();
        let encoder = Mlp2 { l0: DecodeLinear::from_linear(&path.encoder.l0), l2: DecodeLinear::from_linear(&path.encoder.l2) };
        let head = DecodeLinear::from_linear(&Linear { weight: model.lm_head.shallow_clone(), bias: None });
        let ids = Tensor::arange(model.config.vocab_size, (tch::Kind::Int64, model.device()));
        let rep_vocab = path.rep(model, &ids).to_kind(tch::Kind::Double);
        Self { path, layers, encoder, head, rep_vocab }
    }

    /// The path's shapes and variant.
    pub fn shape(&self) -> &super::Shape {
        &self.path.shape
    }

    /// Noise scale σ of `x0`.
    pub fn sigma(&self) -> f64 {
        self.path.sigma
    }

    /// Clean token vectors `rep(y)` of the whole vocabulary, `[V, D]` in f64 (see [`L2d::rep`]).
    pub fn rep_vocab(&self) -> &Tensor {
        &self.rep_vocab
    }

    /// Modulations of every layer and the final gate at times `t` `[..]` (see [`L2d::condition`]).
    pub fn condition(&self, t: &Tensor, label: Option<&Tensor>) -> Result<Conditioning> {
        self.path.condition(t, label)
    }

    /// Logits `[B, T, V]` at diffusion inputs `x_t` `[B, T, D]` under the conditioning
    /// `cond` of their times, given the main path's last hidden state and cache.
    pub fn logits_conditioned(&self, model: &Llama, main_hidden: &Tensor, x_t: &Tensor, cond: &Conditioning, step: &Step, cache: &KvCache) -> Tensor {
        let h0 = encode_with(&self.encoder, x_t, cond, model.kind());
        let flow = stream(model, &self.layers, h0, cond, step, cache);
        self.head.forward(&model.norm.forward(&gated(main_hidden, cond, &flow)))
    }
}

impl super::Project for DecodeLinear {
    fn project(&self, x: &Tensor, _main: &Linear) -> Tensor {
        self.forward(x)
    }
}
