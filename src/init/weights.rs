//! Random weights with Hugging Face tensor names, serialised as safetensors.

use crate::rng::SplitMix64;
use super::{Arch, Shape};
use anyhow::{Context, Result};
use std::path::Path;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

/// Standard deviation of the random weights (`initializer_range` in config.json).
///
/// transformers' 0.02 suits hidden sizes near 2,000 (1/sqrt(2048) = 0.022); at
/// the tiny presets' hidden 64 it is 6× below 1/sqrt(hidden), the attention
/// logits start near zero with a vanishing gradient, and a model trained from
/// it never learns to look back (docs/demo.md, trials 8–11).
pub(crate) fn init_std(hidden: usize) -> f64 {
    (1.0 / (hidden as f64).sqrt()).max(0.02)
}

/// How a tensor starts out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fill {
    /// N(0, init_std²): linear weights, embeddings and (to exercise them) biases.
    Normal,
    /// RMSNorm gains.
    Ones,
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
}

/// Writes the complete `model.safetensors` file for `arch` and `shape` to `path`.
pub(crate) fn write_safetensors(path: &Path, arch: Arch, shape: &Shape, seed: u64) -> Result<()> {
    let std = init_std(shape.hidden);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = specs(arch, shape)
        .into_iter()
        .map(|s| {
            let bytes = values(&s, std, seed)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (s.name, s.shape, bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dims, bytes) in &tensors {
        views.push((
            name.as_str(),
            TensorView::new(Dtype::F32, dims.clone(), bytes)?,
        ));
    }
    // transformers refuses safetensors checkpoints without this marker.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    // Straight to the file: the 1b preset's 5 GB must not be held twice in memory.
    safetensors::serialize_to_file(views, Some(metadata), path).with_context(|| format!("cannot write {}", path.display()))
}

fn values(spec: &Spec, std: f64, seed: u64) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    match spec.fill {
        Fill::Ones => vec![1.0; n],
        Fill::Normal => normal(n, std, SplitMix64::for_label(seed, &spec.name)),
    }
}

fn normal(n: usize, std: f64, mut rng: SplitMix64) -> Vec<f32> {
    rng.normals(n).map(|x| (x * std) as f32).collect()
}

/// Every tensor of the checkpoint; tied embeddings, so no `lm_head.weight`.
fn specs(arch: Arch, s: &Shape) -> Vec<Spec> {
    let mut out = vec![spec(
        "model.embed_tokens.weight",
        &[s.vocab, s.hidden],
        Fill::Normal,
    )];
    for i in 0..s.layers {
        out.extend(layer_specs(arch, s, &format!("model.layers.{i}")));
    }
    out.push(spec("model.norm.weight", &[s.hidden], Fill::Ones));
    out
}

fn layer_specs(arch: Arch, s: &Shape, prefix: &str) -> Vec<Spec> {
    let (d, q, kv, ffn) = (
        s.hidden,
        s.heads * s.head_dim(),
        s.kv_heads * s.head_dim(),
        s.intermediate,
    );
    let mut out = vec![
        spec(
            &format!("{prefix}.input_layernorm.weight"),
            &[d],
            Fill::Ones,
        ),
        spec(
            &format!("{prefix}.self_attn.q_proj.weight"),
            &[q, d],
            Fill::Normal,
        ),
        spec(
            &format!("{prefix}.self_attn.k_proj.weight"),
            &[kv, d],
            Fill::Normal,
        ),
        spec(
            &format!("{prefix}.self_attn.v_proj.weight"),
            &[kv, d],
            Fill::Normal,
        ),
        spec(
            &format!("{prefix}.self_attn.o_proj.weight"),
            &[d, q],
            Fill::Normal,
        ),
        spec(
            &format!("{prefix}.post_attention_layernorm.weight"),
            &[d],
            Fill::Ones,
        ),
        spec(
            &format!("{prefix}.mlp.gate_proj.weight"),
            &[ffn, d],
            Fill::Normal,
        ),
        spec(
            &format!("{prefix}.mlp.up_proj.weight"),
            &[ffn, d],
            Fill::Normal,
        ),
        spec(
            &format!("{prefix}.mlp.down_proj.weight"),
            &[d, ffn],
            Fill::Normal,
        ),
    ];
    if arch.qkv_bias() {
        out.push(spec(
            &format!("{prefix}.self_attn.q_proj.bias"),
            &[q],
            Fill::Normal,
        ));
        out.push(spec(
            &format!("{prefix}.self_attn.k_proj.bias"),
            &[kv],
            Fill::Normal,
        ));
        out.push(spec(
            &format!("{prefix}.self_attn.v_proj.bias"),
            &[kv],
            Fill::Normal,
        ));
    }
    out
}

fn spec(name: &str, shape: &[usize], fill: Fill) -> Spec {
    Spec {
        name: name.to_string(),
        shape: shape.to_vec(),
        fill,
    }
}
