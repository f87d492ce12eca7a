//! `config.json` of a Hugging Face causal LM, as transformers writes it.

use anyhow::Result;
use serde::Deserialize;
use std::path::Path;

use crate::error::{usage, OrUsage};

/// The architectures l2d runs; Qwen2 is Llama with q/k/v biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM` (Llama 3.0 / 3.1 / 3.2).
    Llama,
    /// `Qwen2ForCausalLM` (Qwen 2.5).
    Qwen2,
}

/// `rope_scaling` of Llama 3.1 / 3.2 (`rope_type = "llama3"`).
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    /// `rope_type` (newer files) or `type` (older ones).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Wavelength scale for low frequencies.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Start of the smooth band, as a fraction of the original context.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// End of the smooth band, as a fraction of the original context.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// The context length the model was pretrained with.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// The fields of `config.json` that decide the model's shapes and numerics.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// `llama` or `qwen2`.
    pub model_type: String,
    /// E.g. `["LlamaForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Width `d` of the residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Number of decoder layers `L`.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// Rows of the embedding matrix.
    pub vocab_size: i64,
    /// Longest sequence the positions support.
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Llama 3 frequency scaling, if any.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the LM head reuses the input embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's q/k/v/o biases (off for every Llama 3).
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama's MLP biases (off for every Llama 3).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Activation of the MLP; only `silu` exists in the target models.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Qwen2's sliding-window attention switch (off in Qwen 2.5).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Token id(s) that end generation, as an int or a list.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<i64>,
}

fn default_rope_theta() -> f64 {
    10000.0
}

fn default_act() -> String {
    "silu".into()
}

impl ModelConfig {
    /// Reads and checks `config.json`; every problem names the file and field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .or_usage(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).map_err(|e| usage(format!("{}: {}", path.display(), crate::error::one_line(&e))))
    }

    /// Parses and checks the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: ModelConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("field {path}: {}", e.inner())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        self.arch()?;
        if self.hidden_act != "silu" {
            anyhow::bail!("field hidden_act: unsupported activation {:?} (only silu)", self.hidden_act);
        }
        if self.use_sliding_window {
            anyhow::bail!("field use_sliding_window: sliding-window attention is not supported");
        }
        if self.mlp_bias {
            anyhow::bail!("field mlp_bias: MLP biases are not supported");
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                anyhow::bail!("field {name}: must be positive, got {v}");
            }
        }
        if self.num_attention_heads % self.num_kv_heads() != 0 {
            anyhow::bail!(
                "field num_key_value_heads: {} does not divide num_attention_heads {}",
                self.num_kv_heads(),
                self.num_attention_heads
            );
        }
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "default" => {}
                "llama3" => {
                    for (name, v) in [
                        ("factor", s.factor),
                        ("low_freq_factor", s.low_freq_factor),
                        ("high_freq_factor", s.high_freq_factor),
                        ("original_max_position_embeddings", s.original_max_position_embeddings),
                    ] {
                        if v.is_none() {
                            anyhow::bail!("field rope_scaling.{name}: missing for rope_type llama3");
                        }
                    }
                }
                other => anyhow::bail!("field rope_scaling.rope_type: unsupported {other:?} (supported: default, llama3)"),
            }
        }
        Ok(())
    }

    /// The architecture named by `model_type`.
    pub fn arch(&self) -> Result<Arch> {
        match self.model_type.as_str() {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => anyhow::bail!("field model_type: unsupported {other:?} (supported: llama, qwen2)"),
        }
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether q/k/v carry biases (always for Qwen2, by flag for Llama).
    pub fn qkv_bias(&self) -> bool {
        matches!(self.arch(), Ok(Arch::Qwen2)) || self.attention_bias
    }

    /// Whether o_proj carries a bias (Llama's `attention_bias` only).
    pub fn o_bias(&self) -> bool {
        matches!(self.arch(), Ok(Arch::Llama)) && self.attention_bias
    }

    /// The eos ids listed in `config.json`.
    pub fn eos_ids(&self) -> Vec<i64> {
        crate::data::tokenizer::token_ids(self.eos_token_id.as_ref())
    }

    /// `(in, out)` of each projection of a decoder layer, by Hugging Face module name.
    pub fn projection_dims(&self) -> [(&'static str, i64, i64); 7] {
        let (d, ffn) = (self.hidden_size, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * self.head_dim(), self.num_kv_heads() * self.head_dim());
        [
            ("q_proj", d, q),
            ("k_proj", d, kv),
            ("v_proj", d, kv),
            ("o_proj", q, d),
            ("gate_proj", d, ffn),
            ("up_proj", d, ffn),
            ("down_proj", ffn, d),
        ]
    }

    /// Number of parameters of the model (embeddings, layers, norms, untied head).
    pub fn num_params(&self) -> i64 {
        let (d, v) = (self.hidden_size, self.vocab_size);
        let dims = self.projection_dims();
        let matrices: i64 = dims.iter().map(|(_, i, o)| i * o).sum();
        let qkv_bias = if self.qkv_bias() { dims[0].2 + dims[1].2 + dims[2].2 } else { 0 };
        let o_bias = if self.o_bias() { d } else { 0 };
        let layer = matrices + qkv_bias + o_bias + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + head + self.num_hidden_layers * layer + d
    }

    /// SHA-256 of the canonical JSON of the shape-defining fields.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let canon = serde_json::json!({
            "model_type": self.model_type, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_kv_heads(),
            "head_dim": self.head_dim(), "vocab_size": self.vocab_size,
        });
        format!("{:x}", Sha256::digest(canon.to_string().as_bytes()))
    }
}
