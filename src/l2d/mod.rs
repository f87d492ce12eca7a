//! The L2D diffusion path (spec §1–7): a second stream through the frozen
//! layers, conditioned on the diffusion time, reading the main path's keys and values.

pub mod checkpoint;
pub mod decoder;
pub mod loss;
pub mod params;
pub mod sampler;

use anyhow::Result;
use std::collections::HashMap;
use tch::{Kind, Tensor};

use crate::model::decode_linear::DecodeLinear;
use crate::model::llama::{attend, Affine, Linear};
use crate::model::lora::Lora;
use crate::model::{KvCache, Llama, Step};
pub use decoder::L2dDecoder;
pub use loss::{main_path, next_token_nll, TokenBatch};
pub use params::{ParamName, Shape, Variant};

use params::{Layers, Leaf, MlpLeaf, Proj};

use loss::{summed_cross_entropy, LossPositions};

/// `Linear -> SiLU -> Linear` (or the same maps laid out for decoding).
pub struct Mlp2<M = Linear> {
    /// First layer.
    pub l0: M,
    /// Second layer.
    pub l2: M,
}

impl<M: Affine> Mlp2<M> {
    /// `l2(silu(l0(x)))`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.l2.apply(&self.l0.apply(x).silu())
    }
}

/// One projection of the diffusion path.
pub enum FlowProj {
    /// A low-rank update added to the frozen main-path map (the checkpoint's
    /// `A` `[in, rank]` and `B` `[rank, out]`, held as transposed views).
    Lora(Lora),
    /// A trainable map of its own.
    Full(Linear),
}

/// A diffusion-path projection as the stream applies it: given the frozen map of the same place.
pub trait Project {
    /// Applies the projection to `x`; `main` is the frozen main-path map it sits beside.
    fn project(&self, x: &Tensor, main: &Linear) -> Tensor;
}

impl Project for FlowProj {
    fn project(&self, x: &Tensor, main: &Linear) -> Tensor {
        match self {
            FlowProj::Lora(lora) => lora.add_to(&main.forward(x), x),
            FlowProj::Full(own) => own.forward(x),
        }
    }
}

impl FlowProj {
    /// The same map as one dense matrix (`W + scale·B·A` for LoRA), without
    /// gradients: one matmul per use instead of three, for decoding.
    pub fn dense(&self, main: &Linear) -> Linear {
        match self {
            FlowProj::Lora(lora) => Linear {
                weight: &main.weight + lora.dense(),
                bias: main.bias.as_ref().map(|b| b.shallow_clone()),
            },
            FlowProj::Full(own) => Linear {
                weight: own.weight.detach(),
                bias: own.bias.as_ref().map(|b| b.detach()),
            },
        }
    }
}

/// The per-layer modulation heads `Linear(ts, 256) -> SiLU -> Linear(256, 6d)`,
/// stacked over layers so that one evaluation computes all of them in two
/// batched matmuls. The stacked tensors are the trainable leaves; the
/// reference's per-layer names are views of them.
pub struct ModulationHeads {
    /// `[L, 256, ts]`.
    pub w0: Tensor,
    /// `[L, 256]`.
    pub b0: Tensor,
    /// `[L, 6d, 256]`.
    pub w2: Tensor,
    /// `[L, 6d]`.
    pub b2: Tensor,
    /// `[L, 6d]`: the frozen norm scales in the `w1` and `w2` slots, zeros elsewhere,
    /// so `RMSNorm(h)·(gamma + w1)` becomes `RMSNorm(h)·w1'`.
    gamma: Tensor,
}

impl ModulationHeads {

    /// `[L, .., 6d]` modulations (gamma folded in) for conditioning `c` `[.., ts]`.
    pub fn forward(&self, c: &Tensor) -> Tensor {
        let mut lead = c.size();
        let ts = lead.pop().expect("[.., ts]");
        let (l, hidden) = (self.w0.size()[0], self.w0.size()[1]);
        // Every layer's first linear reads the same `c`: one matmul over the stacked rows
        // (a broadcast batched matmul would copy `c` per layer and sum its gradient back).
        let stacked = self.w0.reshape([l * hidden, ts]);
        let h = c.reshape([-1, ts]).linear(&stacked, Some(&self.b0.reshape([-1]))).silu();
        let h = h.view([-1, l, hidden]).transpose(0, 1);
        // The biases enter as the matmul's accumulator, not as a pass of their own.
        let out = (&self.b2 + &self.gamma).unsqueeze(1).baddbmm(&h, &self.w2.transpose(1, 2), 1, 1);
        let mut shape = vec![l];
        shape.extend(lead);
        shape.push(-1);
        out.view(shape.as_slice())
    }
}

/// The diffusion path's own projections in one decoder layer: trainable
/// ([`FlowProj`]) or merged for decoding ([`DecodeLinear`]).
pub struct FlowLayer<P = FlowProj> {
    /// Query projection.
    pub q: P,
    /// Output projection.
    pub o: P,
    /// MLP gate projection.
    pub gate: P,
    /// MLP up projection.
    pub up: P,
    /// MLP down projection.
    pub down: P,
}

impl FlowLayer {
    /// The layer's projections as dense maps laid out for decoding, beside the main path's `main`.
    pub fn for_decoding(&self, main: &crate::model::llama::DecoderLayer) -> FlowLayer<DecodeLinear> {
        let packed = |p: &FlowProj, m: &Linear| DecodeLinear::from_linear(&p.dense(m));
        FlowLayer {
            q: packed(&self.q, &main.self_attn.q_proj()),
            o: packed(&self.o, &main.self_attn.o_proj),
            gate: packed(&self.gate, &main.mlp.gate_proj()),
            up: packed(&self.up, &main.mlp.up_proj()),
            down: packed(&self.down, &main.mlp.down_proj),
        }
    }
}

/// Runs the diffusion stream `h` `[B, T, d]` through every layer beside the main
/// path, whose keys and values for these positions are already in `cache`; the
/// one routine of training and decoding alike.
pub fn stream<P: Project>(model: &Llama, layers: &[FlowLayer<P>], mut h: Tensor, cond: &Conditioning, step: &Step, cache: &KvCache) -> Tensor {
    for (i, (layer, flow)) in model.layers.iter().zip(layers).enumerate() {
        let m = &cond.layers[i];
        let (w1, s1, g1, w2, s2, g2) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        let attn = &layer.self_attn;
        // addcmul: one pass instead of a multiply and an add (decode runs ~250 small ops per evaluation).
        let a = s1.addcmul(&layer.input_layernorm.normalize(&h), w1);
        let q = attn.split_heads(&flow.q.project(&a, &attn.q_proj()), attn.num_heads);
        let q = step.rotation.apply(&q);
        let (k, v) = cache.get(i);
        let out = attn.merge_heads(&attend(&q, &k, &v, &step.mask));
        h = h.addcmul(g1, &flow.o.project(&out, &attn.o_proj));
        let b = s2.addcmul(&layer.post_attention_layernorm.normalize(&h), w2);
        let mlp = &layer.mlp;
        let hidden = flow.gate.project(&b, &mlp.gate_proj()).silu() * flow.up.project(&b, &mlp.up_proj());
        h = h.addcmul(g2, &flow.down.project(&hidden, &mlp.down_proj));
    }
    h
}

/// Everything of one evaluation that depends only on the times (and label):
/// per-layer modulations, the final gate, the input rescale.
pub struct Conditioning {
    /// Per layer `[gamma_in + w1, s1, g1, gamma_post + w2, s2, g2]`, each `[.., d]`.
    pub layers: Vec<Vec<Tensor>>,
    /// `wd(t) = head(c(t)) - head(c(0))`, `[.., d]`.
    pub gate: Tensor,
    /// `std(t)` of `x_t` (f32), `[.., 1]`, which the encoder's input is divided by.
    pub input_std: Tensor,
}

/// A trained or fresh diffusion path for one base model.
pub struct L2d {
    /// Shapes and variant.
    pub shape: Shape,
    /// Noise scale σ of `x0`.
    pub sigma: f64,
    /// The trainable leaves, in a fixed order: every tensor of [`params::specs`],
    /// except the modulation heads, stacked over layers ([`params::Layers::Stacked`]).
    pub params: Vec<(ParamName, Tensor)>,
    /// `map: R^d -> R^D`.
    pub map: Linear,
    /// Input encoder `D -> 256 -> d`.
    pub encoder: Mlp2,
    /// Timestep MLP.
    pub timestep: Mlp2,
    /// Final gate head.
    pub gate_head: Mlp2,
    /// Guidance embedding `[num_classes + 1, 256]`, last row = no label.
    pub guidance: Option<Tensor>,
    /// Per-layer projections.
    pub layers: Vec<FlowLayer>,
    /// The per-layer modulation heads, stacked.
    pub modulation: ModulationHeads,
}

impl L2d {
    /// A freshly initialised diffusion path for `model` (spec initialisations).
    pub fn init(model: &Llama, shape: Shape, sigma: f64) -> Result<Self> {
        let device = model.device();
        let mut tensors = HashMap::new();
        for spec in params::specs(&model.config, &shape) {
            let t = match spec.init {
                params::Init::CopyOfMain => main_tensor(model, spec.name)?.to_kind(Kind::Float).copy(),
                _ => params::initialise(&spec, device),
            };
            tensors.insert(spec.name.to_string(), t);
        }
        Self::from_tensors(model, shape, sigma, tensors, "the initialisation")
    }

    /// Builds the path from named tensors, checking names and shapes against `shape`;
    /// `source` names where they came from, for errors.
    pub fn from_tensors(
        model: &Llama,
        shape: Shape,
        sigma: f64,
        mut tensors: HashMap<String, Tensor>,
        source: &str,
    ) -> Result<Self> {
        let device = model.device();
        let mut ordered = Vec::new();
        for spec in params::specs(&model.config, &shape) {
            let Some(t) = tensors.remove(&spec.name.to_string()) else {
                crate::bail_usage!(
                    "{source}: tensor {} is missing (expected for variant {:?} with this base model)",
                    spec.name,
                    shape.variant
                );
            };
            if t.size() != spec.shape {
                crate::bail_usage!(
                    "{source}: tensor {} has shape {:?}, expected {:?} for this base model and l2d settings",
                    spec.name,
                    t.size(),
                    spec.shape
                );
            }
            ordered.push((spec.name, t.to_device(device).to_kind(Kind::Float).detach()));
        }
        if let Some(extra) = tensors.keys().min() {
            crate::bail_usage!(
                "{source}: unexpected tensor {extra} (wrong variant, or a checkpoint of another model?)"
            );
        }
        Ok(Self::assemble(model, shape, sigma, stack_modulation_heads(ordered, model.layers.len())))
    }

    /// Every tensor under the reference's names (modulation heads as per-layer
    /// views), for checkpoints.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, t) in &self.params {
            match name {
                ParamName::LayerModulation(Layers::Stacked, leaf) => {
                    for i in 0..self.layers.len() {
                        out.push((ParamName::LayerModulation(Layers::One(i), *leaf).to_string(), t.get(i as i64)));
                    }
                }
                _ => out.push((name.to_string(), t.shallow_clone())),
            }
        }
        out
    }

    /// A gradient-free view of the same tensors (shared storage), for decoding.
    pub fn detached(&self, model: &Llama) -> L2d {
        let params = self.params.iter().map(|(n, t)| (*n, t.detach())).collect();
        Self::assemble(model, self.shape.clone(), self.sigma, params)
    }

    fn assemble(model: &Llama, shape: Shape, sigma: f64, params: Vec<(ParamName, Tensor)>) -> Self {
        let kind = model.kind();
        let master = |name: ParamName| params.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
        let get = |name: ParamName| -> Tensor {
            let t = master(name).expect("validated above");
            // Compute in the model dtype; the f32 tensors stay the master copies.
            if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) }
        };
        let mlp2 = |name: fn(MlpLeaf) -> ParamName, kept: &dyn Fn(ParamName) -> Tensor| {
            let [w0, b0, w2, b2] = MlpLeaf::ALL;
            Mlp2 {
                l0: Linear { weight: kept(name(w0)), bias: Some(kept(name(b0))) },
                l2: Linear { weight: kept(name(w2)), bias: Some(kept(name(b2))) },
            }
        };
        let proj = |layer: usize, proj: Proj| {
            let name = |leaf| ParamName::Flow { layer, proj, leaf };
            match shape.variant {
                Variant::Lora => FlowProj::Lora(Lora {
                    a: get(name(Leaf::A)).tr(),
                    b: get(name(Leaf::B)).tr(),
                    scale: shape.lora_alpha / shape.lora_rank as f64,
                }),
                Variant::Full => FlowProj::Full(Linear {
                    weight: get(name(Leaf::Weight)),
                    bias: master(name(Leaf::Bias)).map(|_| get(name(Leaf::Bias))),
                }),
            }
        };
        let layers = (0..model.layers.len())
            .map(|i| FlowLayer {
                q: proj(i, Proj::Q),
                o: proj(i, Proj::O),
                gate: proj(i, Proj::Gate),
                up: proj(i, Proj::Up),
                down: proj(i, Proj::Down),
            })
            .collect();
        let [w0, b0, w2, b2] = MlpLeaf::ALL.map(|leaf| get(ParamName::LayerModulation(Layers::Stacked, leaf)));
        let modulation = ModulationHeads { w0, b0, w2, b2, gamma: gamma_slots(model) };
        Self {
            modulation,
            map: Linear { weight: get(ParamName::Map(Leaf::Weight)), bias: Some(get(ParamName::Map(Leaf::Bias))) },
            // The fp32 island (input encoder) keeps f32 weights (cast up when
            // training keeps the leaves in the compute dtype, ZeRO-1).
            encoder: mlp2(ParamName::Encoder, &|n| master(n).expect("validated above").to_kind(Kind::Float)),
            timestep: mlp2(ParamName::Timestep, &get),
            gate_head: mlp2(ParamName::GateHead, &get),
            guidance: master(ParamName::Guidance).map(|_| get(ParamName::Guidance)),
            layers,
            shape,
            sigma,
            params,
        }
    }

    /// Rebuilds the compute views from the f32 master leaves (needed after an
    /// optimizer step when the model computes in bf16/f16).
    pub fn refresh(&mut self, model: &Llama) {
        let params = std::mem::take(&mut self.params);
        *self = Self::assemble(model, self.shape.clone(), self.sigma, params);
    }

    /// Summed loss and label count at `t ~ U(0, 1)` drawn per position (spec §7).
    pub fn nll(&self, model: &Llama, batch: &TokenBatch) -> Result<(Tensor, Tensor)> {
        let (b, t_len) = batch.input_ids.size2()?;
        let t = Tensor::rand([b, t_len], (Kind::Float, model.device()));
        self.nll_at(model, batch, &t)
    }

    /// Number of trainable elements.
    pub fn num_params(&self) -> i64 {
        self.params.iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Clean token vectors `rep(y) = sqrt(D)·map(E[y]) / ||map(E[y])||`, `[.., D]` in f32.
    pub fn rep(&self, model: &Llama, ids: &Tensor) -> Tensor {
        let e = Tensor::embedding(&model.embed_tokens, ids, -1, false, false);
        let m = self.map.forward(&e).to_kind(Kind::Float);
        let norm = m.norm_scalaropt_dim(2.0, [-1], true);
        m / norm * (self.shape.flow_dim as f64).sqrt()
    }

    /// Sinusoidal features of `t` `[..]` (f32): `[cos(t·f), sin(t·f)]`, `[.., timestep_dim]`.
    pub fn timestep_features(&self, t: &Tensor) -> Tensor {
        let half = self.shape.timestep_dim / 2;
        let k = Tensor::arange(half, (Kind::Float, t.device()));
        let freqs = (k * (-(10000f64.ln()) / half as f64)).exp();
        let args = t.to_kind(Kind::Float).unsqueeze(-1) * freqs;
        Tensor::cat(&[args.cos(), args.sin()], -1)
    }

    /// `c(t)`, plus the guidance row of `label` (`[..]`, -1 = no label) if there is an embedding.
    fn c(&self, t: &Tensor, label: Option<&Tensor>) -> Result<Tensor> {
        let c = self.timestep.forward(&self.timestep_features(t).to_kind(self.kind()));
        match (&self.guidance, label) {
            (Some(g), Some(label)) => Ok(c + Tensor::embedding(g, &self.guidance_index(label), -1, false, false)),
            (Some(g), None) => Ok(c + g.get(self.shape.num_classes)),
            (None, Some(_)) => crate::bail_usage!(
                "a guidance class was given but this L2D checkpoint has no guidance embedding (l2d.num_classes = 0)"
            ),
            (None, None) => Ok(c),
        }
    }

    /// The guidance-embedding row of each label (`[..]`, -1 = no label).
    fn guidance_index(&self, label: &Tensor) -> Tensor {
        label.where_scalarother(&label.ge(0), self.shape.num_classes)
    }

    /// `head(c(0))` for `label` (as [`L2d::c`] takes it), broadcastable to `[.., d]`:
    /// `c(0)` is the same at every position, so it is evaluated once per
    /// guidance row instead of once per position.
    fn gate_head_at_zero(&self, device: tch::Device, label: Option<&Tensor>) -> Tensor {
        let zero = Tensor::zeros([1], (Kind::Float, device));
        let c_0 = self.timestep.forward(&self.timestep_features(&zero).to_kind(self.kind()));
        let Some(g) = &self.guidance else {
            return self.gate_head.forward(&c_0);
        };
        let per_row = self.gate_head.forward(&(c_0 + g));
        match label {
            Some(label) => Tensor::embedding(&per_row, &self.guidance_index(label), -1, false, false),
            None => per_row.get(self.shape.num_classes),
        }
    }

    /// Modulations of every layer and the final gate at times `t` `[..]`.
    pub fn condition(&self, t: &Tensor, label: Option<&Tensor>) -> Result<Conditioning> {
        let c_t = self.c(t, label)?;
        let gate = self.gate_head.forward(&c_t) - self.gate_head_at_zero(t.device(), label);
        // A one-row head(c(0)) may round differently from the batched head(c(t))
        // rows, so the gate is set to its exact value, zero, at t = 0 (spec §4).
        let gate = gate.masked_fill(&t.eq(0.0).unsqueeze(-1), 0.0);
        let layers = self.modulation.forward(&c_t).unbind(0).iter().map(|m| m.chunk(6, -1)).collect();
        let t = t.to_kind(Kind::Float).unsqueeze(-1);
        let std = ((-&t + 1.0).square() * (self.sigma * self.sigma) + t.square()).sqrt();
        Ok(Conditioning { layers, gate, input_std: std })
    }

    /// The diffusion stream's first hidden state from `x_t` `[.., D]`, computed
    /// in f32 (`x_t / std(t)`, then the encoder MLP).
    pub fn encode(&self, x_t: &Tensor, cond: &Conditioning, kind: Kind) -> Tensor {
        encode_with(&self.encoder, x_t, cond, kind)
    }

    /// Logits `[B, T, V]` of the whole model at diffusion inputs `x_t` `[B, T, D]` and
    /// times `t` `[B, T]`, given the main path's last hidden state and cache.
    #[allow(clippy::too_many_arguments)] // the main path's three values, the diffusion inputs and the times: no natural grouping
    pub fn logits(
        &self,
        model: &Llama,
        main_hidden: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        label: Option<&Tensor>,
        step: &Step,
        cache: &KvCache,
    ) -> Result<Tensor> {
        let cond = self.condition(t, label)?;
        let flow = stream(model, &self.layers, self.encode(x_t, &cond, model.kind()), &cond, step, cache);
        Ok(model.logits(&gated(main_hidden, &cond, &flow)))
    }

    /// The dtype the diffusion path computes in.
    pub fn kind(&self) -> Kind {
        self.map.weight.kind()
    }

    /// Training loss (spec §7): mean cross-entropy of the combined logits against
    /// the next token, `t ~ U(0, 1)` drawn independently per position.
    pub fn loss(&self, model: &Llama, batch: &TokenBatch) -> Result<Tensor> {
        let (sum, count) = self.nll(model, batch)?;
        Ok(sum / count.to_kind(Kind::Float))
    }

    /// The mean loss with given times `t` `[B, T]` (the same t everywhere gives `eval loss`).
    pub fn loss_at(&self, model: &Llama, batch: &TokenBatch, t: &Tensor) -> Result<Tensor> {
        let (sum, count) = self.nll_at(model, batch, t)?;
        Ok(sum / count.to_kind(Kind::Float))
    }

    /// Summed loss and label count with given times `t` `[B, T]`.
    pub fn nll_at(&self, model: &Llama, batch: &TokenBatch, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t_len) = batch.input_ids.size2()?;
        // Drawn for every position, so that a position's noise does not depend on the others' labels.
        let x0 = Tensor::randn([b, t_len - 1, self.shape.flow_dim], (Kind::Float, model.device())) * self.sigma;
        self.nll_with_noise(model, batch, t, &x0)
    }

    /// Summed loss and label count with given times `t` `[B, T]` and noise
    /// `x0` `[B, T - 1, D]` (position i's, for its next token).
    pub fn nll_with_noise(&self, model: &Llama, batch: &TokenBatch, t: &Tensor, x0: &Tensor) -> Result<(Tensor, Tensor)> {
        let (main_hidden, step, cache) = main_path(model, batch);
        let t_len = batch.input_ids.size2()?.1;
        let next_labels = batch.labels.narrow(1, 1, t_len - 1);
        let at = LossPositions::of(&next_labels);
        let targets = at.gather(&next_labels);
        let x1 = self.rep(model, &targets.where_scalarother(&targets.ge(0), 0));
        let t = at.gather(&t.narrow(1, 0, t_len - 1));
        let t_in = t.unsqueeze(-1);
        let x_t = (-&t_in + 1.0) * at.gather(x0) + &t_in * x1;
        let labels = batch.class_labels.as_ref().map(|c| at.gather(c));
        let step = at.step(model, &step);
        let logits = self.logits(model, &at.gather(&main_hidden), &x_t, &t, labels.as_ref(), &step, &cache)?;
        Ok(summed_cross_entropy(&logits, &targets))
    }
}

/// The diffusion stream's first hidden state through `encoder`, in f32: `encoder(x_t / std(t))`.
fn encode_with<M: Affine>(encoder: &Mlp2<M>, x_t: &Tensor, cond: &Conditioning, kind: Kind) -> Tensor {
    encoder.forward(&(x_t.to_kind(Kind::Float) / &cond.input_std)).to_kind(kind)
}

/// The last hidden state of the whole model: `main + wd(t)·flow`.
fn gated(main_hidden: &Tensor, cond: &Conditioning, flow: &Tensor) -> Tensor {
    main_hidden.addcmul(&cond.gate, flow)
}

/// Replaces the per-layer modulation-head tensors by their stacks over layers
/// (at the position of layer 0's), and makes every tensor a trainable leaf.
fn stack_modulation_heads(ordered: Vec<(ParamName, Tensor)>, layers: usize) -> Vec<(ParamName, Tensor)> {
    let mut out = Vec::new();
    let mut per_leaf: HashMap<MlpLeaf, Vec<Tensor>> = HashMap::new();
    for (name, t) in ordered {
        if let ParamName::LayerModulation(Layers::One(_), leaf) = name {
            let stack = per_leaf.entry(leaf).or_default();
            if stack.is_empty() {
                out.push((ParamName::LayerModulation(Layers::Stacked, leaf), Tensor::new()));
            }
            stack.push(t);
        } else {
            out.push((name, t));
        }
    }
    out.into_iter()
        .map(|(name, t)| {
            let t = match name {
                ParamName::LayerModulation(Layers::Stacked, leaf) => {
                    let parts = &per_leaf[&leaf];
                    assert_eq!(parts.len(), layers, "one modulation head per layer");
                    Tensor::stack(parts, 0)
                }
                _ => t,
            };
            (name, t.set_requires_grad(true))
        })
        .collect()
}

/// `[L, 6d]` with each layer's input-norm scale in the `w1` slot and its
/// post-attention-norm scale in the `w2` slot.
fn gamma_slots(model: &Llama) -> Tensor {
    let rows: Vec<Tensor> = model
        .layers
        .iter()
        .map(|l| {
            let z = l.input_layernorm.weight.zeros_like();
            Tensor::cat(&[&l.input_layernorm.weight, &z, &z, &l.post_attention_layernorm.weight, &z, &z], 0)
        })
        .collect();
    Tensor::stack(&rows, 0)
}

/// The frozen main-path tensor a full-variant copy starts from.
fn main_tensor(model: &Llama, name: ParamName) -> Result<Tensor> {
    let ParamName::Flow { layer, proj, leaf } = name else {
        anyhow::bail!("{name}: only the flow projections start as copies of the main path");
    };
    let l = &model.layers[layer];
    let main = match proj {
        Proj::Q => l.self_attn.q_proj(),
        Proj::O => Linear { weight: l.self_attn.o_proj.weight.shallow_clone(), bias: l.self_attn.o_proj.bias.as_ref().map(|b| b.shallow_clone()) },
        Proj::Gate => l.mlp.gate_proj(),
        Proj::Up => l.mlp.up_proj(),
        Proj::Down => Linear { weight: l.mlp.down_proj.weight.shallow_clone(), bias: None },
    };
    match leaf {
        Leaf::Weight => Ok(main.weight),
        Leaf::Bias => main.bias.ok_or_else(|| anyhow::anyhow!("{name}: the main path has no bias here")),
        Leaf::A | Leaf::B => anyhow::bail!("{name}: a LoRA factor has no main-path tensor"),
    }
}
