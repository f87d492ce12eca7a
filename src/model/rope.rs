//! Rotary position embeddings, with Llama 3's frequency scaling.

use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;

/// Cosine and sine tables for every position, computed in f32 as transformers does.
pub struct Rope {
    /// `[max_positions, head_dim]`.
    cos: Tensor,
    /// `[max_positions, head_dim]`.
    sin: Tensor,
}

impl Rope {
    /// Builds the tables for `cfg` on `device`.
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        let inv_freq = inv_freq(cfg);
        let positions = Tensor::arange(cfg.max_position_embeddings, (Kind::Float, Device::Cpu));
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Self { cos: emb.cos().to_device(device), sin: emb.sin().to_device(device) }
    }

    /// Rotates `x` `[B, heads, T, head_dim]` by the positions `[B, T]`.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let kind = x.kind();
        let cos = self.cos.index_select(0, &positions.flatten(0, -1));
        let sin = self.sin.index_select(0, &positions.flatten(0, -1));
        let (b, t) = positions.size2().expect("positions are [B, T]");
        let cos = cos.view([b, 1, t, -1]).to_kind(kind);
        let sin = sin.view([b, 1, t, -1]).to_kind(kind);
        x * cos + rotate_half(x) * sin
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[-x2, x1], -1)
}

/// The inverse frequencies, mirroring transformers' `_compute_default_rope_parameters`
/// and `_compute_llama3_parameters` operation by operation in f32.
fn inv_freq(cfg: &ModelConfig) -> Tensor {
    let dim = cfg.head_dim();
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
    let base = Tensor::from(cfg.rope_theta as f32);
    let inv_freq = base.pow(&exponents).reciprocal();
    match &cfg.rope_scaling {
        Some(s) if s.rope_type == "llama3" => {
            let factor = s.factor.unwrap_or(1.0);
            let low = s.low_freq_factor.unwrap_or(1.0);
            let high = s.high_freq_factor.unwrap_or(1.0);
            let old_ctx = s.original_max_position_embeddings.unwrap_or(cfg.max_position_embeddings as f64);
            let low_wavelen = old_ctx / low;
            let high_wavelen = old_ctx / high;
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = (&inv_freq / factor).where_self(&wavelen.gt(low_wavelen), &inv_freq);
            let smooth = (wavelen.reciprocal() * old_ctx - low) / (high - low);
            let smoothed = (-&smooth + 1.0) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen.lt(high_wavelen).logical_not().logical_and(&wavelen.gt(low_wavelen).logical_not());
            smoothed.where_self(&medium, &scaled)
        }
        _ => inv_freq,
    }
}
