//! The decoder-only transformer of Llama 3 and Qwen 2.5, with Hugging Face tensor names.
//!
//! Qwen2 is the same network with q/k/v biases, so one set of structs serves
//! both. Every weight here is frozen: L2D and the finetuning modes keep their
//! trainable tensors elsewhere and combine them with these.

use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::lora::{LayerAdapters, Target};
use super::rope::{Rope, Rotation};
use super::weights::Weights;

/// A frozen affine map `x W^T + b`, stored as transformers stores it (`[out, in]`).
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, if the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    fn load(w: &Weights, name: &str, out_dim: i64, in_dim: i64, bias: bool) -> Result<Self> {
        let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = if bias { Some(w.get(&format!("{name}.bias"), &[out_dim])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// Stacks the rows of several maps into one (their outputs concatenated).
    fn fuse(parts: Vec<Linear>) -> Self {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        Self { weight: Tensor::cat(&weights, 0), bias: biases.map(|b| Tensor::cat(&b, 0)) }
    }

    /// `len` output rows starting at `start`, as views of this map.
    pub fn rows(&self, start: i64, len: i64) -> Linear {
        Linear { weight: self.weight.narrow(0, start, len), bias: self.bias.as_ref().map(|b| b.narrow(0, start, len)) }
    }

    /// Applies the map to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// An affine map of the last dimension: a [`Linear`] for training, or the same
/// map laid out for decoding.
pub trait Affine {
    /// Applies the map to the last dimension of `x`.
    fn apply(&self, x: &Tensor) -> Tensor;
}

impl Affine for Linear {
    fn apply(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }
}

/// RMSNorm computed in f32 and cast back, as transformers does.
pub struct RmsNorm {
    /// The learned scale `gamma`.
    pub weight: Tensor,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    fn load(w: &Weights, name: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(&format!("{name}.weight"), &[dim])?, eps })
    }

    /// `x / rms(x)` without the scale; L2D modulates the scale itself.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        // A few f32 rows without gradients on the CPU (decoding): one pass.
        if let Some(y) = super::cpu::rms_normalize(x, self.eps) {
            return y;
        }
        // Elsewhere transformers' own four operations: libtorch's `rms_norm`
        // computes the same but cost ~6 µs more per call at decode sizes.
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim(-1, true, Kind::Float);
        (x32 * (variance + self.eps).rsqrt()).to_kind(x.kind())
    }

    /// `gamma * x / rms(x)`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        &self.weight * self.normalize(x)
    }
}

/// Which keys each query may attend to.
pub enum AttentionMask {
    /// Queries and keys are the same positions, no padding: plain causal.
    Causal,
    /// Every query may see every key (one new token per row, no padding).
    Full,
    /// Explicit `[B, 1, T, S]` boolean mask (true = attend).
    Explicit(Tensor),
}

impl AttentionMask {
    /// The mask for `q_len` new queries at the end of `kv_len` keys, with an
    /// optional `[B, kv_len]` validity mask of the keys (false = padding).
    ///
    /// A padding query gets its own key too, so that no softmax row is empty
    /// (its output is never used).
    pub fn new(key_valid: Option<&Tensor>, q_len: i64, kv_len: i64, device: Device) -> Self {
        match key_valid {
            None if q_len == kv_len => return Self::Causal,
            None if q_len == 1 => return Self::Full,
            _ => {}
        }
        let offset = kv_len - q_len;
        let qpos = Tensor::arange(q_len, (Kind::Int64, device)).unsqueeze(1) + offset;
        let kpos = Tensor::arange(kv_len, (Kind::Int64, device)).unsqueeze(0);
        let causal = kpos.le_tensor(&qpos);
        let mask = match key_valid {
            Some(valid) => {
                let diag = kpos.eq_tensor(&qpos);
                causal.unsqueeze(0).logical_and(&valid.unsqueeze(1)).logical_or(&diag.unsqueeze(0))
            }
            None => causal.unsqueeze(0),
        };
        Self::Explicit(mask.unsqueeze(1))
    }
}

/// Scaled-dot-product attention of `q` `[B, H, T, hd]` over `k`, `v`
/// `[B, KV, S, hd]` (grouped-query heads shared); the one attention routine
/// of both the main path and the diffusion stream.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask) -> Tensor {
    let gqa = q.size()[1] != k.size()[1];
    match mask {
        AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, true, None, gqa),
        AttentionMask::Full => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, false, None, gqa),
        AttentionMask::Explicit(m) => Tensor::scaled_dot_product_attention(q, k, v, Some(m), 0.0, false, None, gqa),
    }
}

/// Grouped-query self-attention with rotary positions.
///
/// q, k and v are stored as one fused `[(H + 2*KV)*hd, d]` matrix: one matmul
/// instead of three per layer and token, which dominates small-batch decode.
pub struct Attention {
    /// Rows `[q; k; v]` of `q_proj`, `k_proj`, `v_proj` (biases likewise, if any).
    pub qkv_proj: Linear,
    /// Output projection `[d, H*hd]`.
    pub o_proj: Linear,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads.
    pub num_kv_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
}

impl Attention {
    /// The `q_proj` rows of the fused projection (a view, no copy).
    pub fn q_proj(&self) -> Linear {
        self.qkv_proj.rows(0, self.num_heads * self.head_dim)
    }

    /// Queries, keys and values `[B, n, T, hd]` of `x` `[B, T, d]`, each
    /// projection's adapter update added to its part of the fused output.
    pub fn project_qkv(&self, x: &Tensor, lora: Option<LayerAdapters>) -> (Tensor, Tensor, Tensor) {
        let qkv = self.qkv_proj.forward(x);
        let (q_dim, kv_dim) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let part = |start, len, target| adapted(lora, target, x, qkv.narrow(-1, start, len));
        let q = self.split_heads(&part(0, q_dim, Target::Q), self.num_heads);
        let k = self.split_heads(&part(q_dim, kv_dim, Target::K), self.num_kv_heads);
        let v = self.split_heads(&part(q_dim + kv_dim, kv_dim, Target::V), self.num_kv_heads);
        (q, k, v)
    }

    /// Splits `[B, T, n*hd]` into heads `[B, n, T, hd]`.
    pub fn split_heads(&self, x: &Tensor, n: i64) -> Tensor {
        let (b, t, _) = x.size3().expect("[B, T, D]");
        x.view([b, t, n, self.head_dim]).transpose(1, 2)
    }

    /// Merges heads `[B, H, T, hd]` back into `[B, T, H*hd]`.
    pub fn merge_heads(&self, x: &Tensor) -> Tensor {
        let (b, _, t, _) = x.size4().expect("[B, H, T, hd]");
        x.transpose(1, 2).reshape([b, t, self.num_heads * self.head_dim])
    }
}

/// The SwiGLU feed-forward block, gate and up fused into one `[2*ffn, d]` matrix.
pub struct Mlp {
    /// Rows `[gate; up]` of `gate_proj` and `up_proj`.
    pub gate_up_proj: Linear,
    /// `[d, ffn]`.
    pub down_proj: Linear,
    /// Width of the hidden layer.
    pub ffn: i64,
}

impl Mlp {
    /// The `gate_proj` rows (a view).
    pub fn gate_proj(&self) -> Linear {
        self.gate_up_proj.rows(0, self.ffn)
    }

    /// The `up_proj` rows (a view).
    pub fn up_proj(&self) -> Linear {
        self.gate_up_proj.rows(self.ffn, self.ffn)
    }

    /// `down(silu(gate(x)) * up(x))`, with the adapters' updates of each projection.
    pub fn forward(&self, x: &Tensor, lora: Option<LayerAdapters>) -> Tensor {
        let gu = self.gate_up_proj.forward(x);
        let gate = adapted(lora, Target::Gate, x, gu.narrow(-1, 0, self.ffn));
        let up = adapted(lora, Target::Up, x, gu.narrow(-1, self.ffn, self.ffn));
        let hidden = gate.silu() * up;
        adapted(lora, Target::Down, &hidden, self.down_proj.forward(&hidden))
    }
}

/// `y`, a frozen map's output for `x`, plus `target`'s adapter update when there is one.
fn adapted(lora: Option<LayerAdapters>, target: Target, x: &Tensor, y: Tensor) -> Tensor {
    match lora {
        Some(l) => l.add(target, x, y),
        None => y,
    }
}

/// One pre-norm decoder layer.
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

/// Inputs shared by every layer of one forward pass (of either stream).
pub struct Step {
    /// Position id of each new token, `[B, T]`.
    pub positions: Tensor,
    /// Which cached and new keys each new token sees.
    pub mask: AttentionMask,
    /// Rotary cos/sin at `positions`.
    pub rotation: Rotation,
}

impl Step {
    /// The same pass restricted to its last query position (keys unchanged):
    /// what the diffusion stream needs after a prefill.
    pub fn last(&self) -> Step {
        let t = self.positions.size()[1];
        let mask = match &self.mask {
            AttentionMask::Causal | AttentionMask::Full => AttentionMask::Full,
            AttentionMask::Explicit(m) => AttentionMask::Explicit(m.narrow(2, t - 1, 1)),
        };
        Step { positions: self.positions.narrow(1, t - 1, 1), mask, rotation: self.rotation.last() }
    }

    /// The same pass for the batch repeated `n` times (`[n·B, ..]`, see
    /// [`super::repeat_batch`]): classifier-free guidance evaluates its
    /// conditional and unconditional rows in one batch.
    pub fn repeat_rows(&self, n: i64) -> Step {
        let mask = match &self.mask {
            AttentionMask::Causal => AttentionMask::Causal,
            AttentionMask::Full => AttentionMask::Full,
            AttentionMask::Explicit(m) if m.size()[0] == 1 => AttentionMask::Explicit(m.shallow_clone()),
            AttentionMask::Explicit(m) => AttentionMask::Explicit(super::repeat_batch(m, n)),
        };
        Step { positions: super::repeat_batch(&self.positions, n), mask, rotation: self.rotation.repeat_rows(n) }
    }
}

/// A Llama-3 / Qwen2.5 causal LM.
pub struct Llama {
    /// The parsed `config.json`.
    pub config: ModelConfig,
    /// `[V, d]`.
    pub embed_tokens: Tensor,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// `[V, d]`; the embedding itself when tied.
    pub lm_head: Tensor,
    /// Rotary tables.
    pub rope: Rope,
}

impl Llama {
    /// Loads `config.json` and the safetensors of a Hugging Face model directory.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        if !dir.is_dir() {
            crate::bail_usage!("model directory {} does not exist", dir.display());
        }
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let weights = Weights::open_dir(dir, device, kind)?;
        Self::from_weights(config, &weights)
    }

    /// Builds the model from already opened weights.
    pub fn from_weights(config: ModelConfig, w: &Weights) -> Result<Self> {
        let c = &config;
        let (d, v) = (c.hidden_size, c.vocab_size);
        let embed_tokens = w.get("model.embed_tokens.weight", &[v, d])?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            w.get("lm_head.weight", &[v, d])?
        };
        let layers = (0..c.num_hidden_layers as usize)
            .map(|i| load_layer(c, w, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "model.norm", d, c.rms_norm_eps)?;
        let rope = Rope::new(c, w.device);
        Ok(Self { config, embed_tokens, layers, norm, lm_head, rope })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// The per-pass inputs for new tokens at `positions` `[B, T]`.
    pub fn step(&self, positions: Tensor, mask: AttentionMask) -> Step {
        let rotation = self.rope.at(&positions, self.kind());
        Step { positions, mask, rotation }
    }

    /// A KV cache with room for `capacity` positions.
    pub fn new_cache(&self, capacity: i64) -> KvCache {
        KvCache::with_capacity(self.layers.len(), capacity)
    }

    /// Runs the main path over new tokens `[B, T]`, appending their keys and
    /// values to `cache`; returns the last hidden state `[B, T, d]` before the final norm.
    pub fn forward_hidden(&self, input_ids: &Tensor, step: &Step, cache: &mut KvCache) -> Tensor {
        self.hidden(input_ids, step, cache, &|_| None)
    }

    /// [`Llama::forward_hidden`], with each layer's weight-LoRA adapters if `lora` gives them.
    fn hidden<'a>(&self, input_ids: &Tensor, step: &Step, cache: &mut KvCache, lora: &dyn Fn(usize) -> Option<LayerAdapters<'a>>) -> Tensor {
        let mut h = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        for (i, layer) in self.layers.iter().enumerate() {
            let lora = lora(i);
            let attn_in = layer.input_layernorm.forward(&h);
            h = &h + self.self_attention(i, &attn_in, step, cache, lora);
            h = &h + layer.mlp.forward(&layer.post_attention_layernorm.forward(&h), lora);
        }
        cache.advance(input_ids.size()[1]);
        h
    }

    fn self_attention(&self, layer: usize, x: &Tensor, step: &Step, cache: &mut KvCache, lora: Option<LayerAdapters>) -> Tensor {
        let attn = &self.layers[layer].self_attn;
        let (q, k, v) = attn.project_qkv(x, lora);
        let q = step.rotation.apply(&q);
        let k = step.rotation.apply(&k);
        let (k, v) = cache.append(layer, &k, &v);
        let out = attn.merge_heads(&attend(&q, &k, &v, &step.mask));
        adapted(lora, Target::O, &out, attn.o_proj.forward(&out))
    }

    /// Every weight under its name here (q/k/v and gate/up fused), for training.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let mut push = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
            push(format!("{p}.input_layernorm.weight"), &l.input_layernorm.weight);
            push(format!("{p}.self_attn.qkv_proj.weight"), &l.self_attn.qkv_proj.weight);
            if let Some(b) = &l.self_attn.qkv_proj.bias {
                push(format!("{p}.self_attn.qkv_proj.bias"), b);
            }
            push(format!("{p}.self_attn.o_proj.weight"), &l.self_attn.o_proj.weight);
            if let Some(b) = &l.self_attn.o_proj.bias {
                push(format!("{p}.self_attn.o_proj.bias"), b);
            }
            push(format!("{p}.post_attention_layernorm.weight"), &l.post_attention_layernorm.weight);
            push(format!("{p}.mlp.gate_up_proj.weight"), &l.mlp.gate_up_proj.weight);
            push(format!("{p}.mlp.down_proj.weight"), &l.mlp.down_proj.weight);
        }
        out.push(("model.norm.weight".into(), self.norm.weight.shallow_clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".into(), self.lm_head.shallow_clone()));
        }
        out
    }

    /// Every weight under its Hugging Face name (fused matrices split back), for saving.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        self.hf_named(self.named_tensors())
    }

    /// Tensors named and fused as [`Llama::named_tensors`] gives them (e.g. f32
    /// master copies of the weights) under their Hugging Face names.
    pub fn hf_named(&self, named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, t) in named {
            let split = |parts: &[(&str, i64)], out: &mut Vec<(String, Tensor)>| {
                let mut start = 0;
                for (part, len) in parts {
                    out.push((name.replace(if name.contains("qkv") { "qkv_proj" } else { "gate_up_proj" }, part), t.narrow(0, start, *len)));
                    start += len;
                }
            };
            let (q, kv, ffn) = (
                self.config.num_attention_heads * self.config.head_dim(),
                self.config.num_kv_heads() * self.config.head_dim(),
                self.config.intermediate_size,
            );
            if name.contains("qkv_proj") {
                split(&[("q_proj", q), ("k_proj", kv), ("v_proj", kv)], &mut out);
            } else if name.contains("gate_up_proj") {
                split(&[("gate_proj", ffn), ("up_proj", ffn)], &mut out);
            } else {
                out.push((name, t));
            }
        }
        out
    }

    /// Final norm and LM head: logits `[.., V]` in the model dtype.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(hidden).linear::<Tensor>(&self.lm_head, None)
    }

    /// Full forward of unpadded sequences `[B, T]` with no cache: logits `[B, T, V]`.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.forward_with(input_ids, &|_| None)
    }

    /// [`Llama::forward`] with each layer's weight-LoRA adapters if `lora` gives them.
    pub fn forward_with<'a>(&self, input_ids: &Tensor, lora: &dyn Fn(usize) -> Option<LayerAdapters<'a>>) -> Tensor {
        let (b, t) = input_ids.size2().expect("[B, T]");
        let positions = Tensor::arange(t, (Kind::Int64, input_ids.device())).unsqueeze(0).expand([b, t], false);
        let step = self.step(positions, AttentionMask::Causal);
        let mut cache = KvCache::growing(self.layers.len());
        let hidden = self.hidden(input_ids, &step, &mut cache, lora);
        self.logits(&hidden)
    }
}

fn load_layer(c: &ModelConfig, w: &Weights, i: usize) -> Result<DecoderLayer> {
    let p = format!("model.layers.{i}");
    let (d, hd, h, kv, ffn) = (c.hidden_size, c.head_dim(), c.num_attention_heads, c.num_kv_heads(), c.intermediate_size);
    let self_attn = Attention {
        qkv_proj: Linear::fuse(vec![
            Linear::load(w, &format!("{p}.self_attn.q_proj"), h * hd, d, c.qkv_bias())?,
            Linear::load(w, &format!("{p}.self_attn.k_proj"), kv * hd, d, c.qkv_bias())?,
            Linear::load(w, &format!("{p}.self_attn.v_proj"), kv * hd, d, c.qkv_bias())?,
        ]),
        o_proj: Linear::load(w, &format!("{p}.self_attn.o_proj"), d, h * hd, c.o_bias())?,
        num_heads: h,
        num_kv_heads: kv,
        head_dim: hd,
    };
    let mlp = Mlp {
        gate_up_proj: Linear::fuse(vec![
            Linear::load(w, &format!("{p}.mlp.gate_proj"), ffn, d, false)?,
            Linear::load(w, &format!("{p}.mlp.up_proj"), ffn, d, false)?,
        ]),
        down_proj: Linear::load(w, &format!("{p}.mlp.down_proj"), d, ffn, false)?,
        ffn,
    };
    Ok(DecoderLayer {
        input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm"), d, c.rms_norm_eps)?,
        self_attn,
        post_attention_layernorm: RmsNorm::load(w, &format!("{p}.post_attention_layernorm"), d, c.rms_norm_eps)?,
        mlp,
    })
}
