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

    /// The rotation for positions `[B, T]`, in `kind`; computed once per
    /// forward pass and shared by every layer and both streams.
    pub fn at(&self, positions: &Tensor, kind: Kind) -> Rotation {
        let (b, t) = positions.size2().expect("positions are [B, T]");
        let flat = positions.flatten(0, -1);
        let cos = self.cos.index_select(0, &flat).view([b, 1, t, -1]);
        let sin = self.sin.index_select(0, &flat).view([b, 1, t, -1]);
        let half = sin.size()[3] / 2;
        // rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]: one op fewer per use.
        let signed_sin = Tensor::cat(&[-sin.narrow(3, 0, half), sin.narrow(3, half, half)], 3);
        Rotation { cos: cos.to_kind(kind), signed_sin: signed_sin.to_kind(kind), half }
    }
}

/// Cosines and signed sines for the positions of one forward pass.
pub struct Rotation {
    cos: Tensor,
    signed_sin: Tensor,
    half: i64,
}

impl Rotation {
    /// The rotation of the last position only.
    pub fn last(&self) -> Rotation {
        let t = self.cos.size()[2];
        Rotation { cos: self.cos.narrow(2, t - 1, 1), signed_sin: self.signed_sin.narrow(2, t - 1, 1), half: self.half }
    }

    /// The rotation of every row repeated `n` times along the batch (see [`super::repeat_batch`]).
    pub fn repeat_rows(&self, n: i64) -> Rotation {
        let repeat = |x: &Tensor| super::repeat_batch(x, n);
        Rotation { cos: repeat(&self.cos), signed_sin: repeat(&self.signed_sin), half: self.half }
    }

    /// Rotates `x` `[B, heads, T, head_dim]` (transformers' `x*cos + rotate_half(x)*sin`).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        x * &self.cos + x.roll([self.half], [-1]) * &self.signed_sin
    }
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
