//! The random numbers of decoding, per row: every draw is a function of the
//! row's key (for `l2d eval`: seed, task, setting, item and sample), the
//! position of the token being made, what it is for and its index, never of
//! which rows share the batch or of the order batches run in. So a completion
//! is the same at any batch size and on any rank of a sharded eval.
//!
//! Counter-based: each (row, position, stream) starts its own SplitMix64 from
//! a mix of those values; nothing is carried between draws. Drawn on the CPU
//! (B numbers per token for a token or `x1` draw, B x flow_dim for L2D's
//! noise) and uploaded.

use tch::{Device, Kind, Tensor};

use crate::rng::SplitMix64;

/// What a draw is for, within one token of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The next token from the final logits (temperature > 0).
    Token,
    /// L2D's noise `x0`.
    X0,
    /// A sampled `x1_hat` at the `eval`-th velocity evaluation of the token,
    /// for the conditional rows or (guidance) the unconditional ones.
    X1 {
        /// Velocity evaluations before this one, in this token.
        eval: usize,
        /// The unconditional half of a guided batch.
        unconditional: bool,
    },
}

impl Stream {
    fn id(self) -> u64 {
        match self {
            Stream::Token => 0,
            Stream::X0 => 1,
            Stream::X1 { eval, unconditional } => 2 + 2 * eval as u64 + u64::from(unconditional),
        }
    }
}

/// The draws of the rows still decoding, at their current token position.
#[derive(Debug, Clone)]
pub struct RowNoise {
    keys: Vec<u64>,
    position: u64,
}

impl RowNoise {
    /// Rows with these keys, before their first new token.
    pub fn new(keys: Vec<u64>) -> Self {
        Self { keys, position: 0 }
    }

    /// The key of a row named by `seed` and `parts` (e.g. task, setting, item id, sample).
    pub fn key(seed: u64, parts: &[&str]) -> u64 {
        SplitMix64::for_label(seed, &parts.join("\0")).next_u64()
    }

    /// `rows` keys from libtorch's global generator: for callers whose rows have
    /// no identity of their own (after `tch::manual_seed`, the same batch draws the same).
    pub fn from_global_rng(rows: usize) -> Self {
        let keys = Tensor::randint(i64::MAX, [rows as i64], (Kind::Int64, Device::Cpu));
        Self::new(Vec::<i64>::try_from(&keys).expect("int64 keys").into_iter().map(|k| k as u64).collect())
    }

    /// Rows still decoding.
    pub fn rows(&self) -> usize {
        self.keys.len()
    }

    /// One uniform in `[0, 1)` per row, `[B, 1]` f32 on `device`.
    pub fn uniforms(&self, stream: Stream, device: Device) -> Tensor {
        // 24 bits: every value exactly representable in f32, so never rounded up to 1.
        let u: Vec<f32> = (0..self.rows()).map(|r| (self.rng(r, stream).next_u64() >> 40) as f32 / (1u32 << 24) as f32).collect();
        Tensor::from_slice(&u).view([-1, 1]).to_device(device)
    }

    /// `dim` standard normals per row, `[B, dim]` f64 on `device`.
    pub fn normals(&self, stream: Stream, dim: usize, device: Device) -> Tensor {
        let mut out = Vec::with_capacity(self.rows() * dim);
        for r in 0..self.rows() {
            out.extend(self.rng(r, stream).normals(dim));
        }
        Tensor::from_slice(&out).view([self.rows() as i64, dim as i64]).to_device(device)
    }

    /// Keeps the rows at `index` (in that order): the others have finished.
    pub fn keep(&mut self, index: &[i64]) {
        self.keys = index.iter().map(|&i| self.keys[i as usize]).collect();
    }

    /// Moves every row on to its next token.
    pub fn advance(&mut self) {
        self.position += 1;
    }

    /// The generator of one row's draws for `stream` at the current position.
    fn rng(&self, row: usize, stream: Stream) -> SplitMix64 {
        let mut counter = SplitMix64::new(self.position.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ stream.id());
        SplitMix64::new(self.keys[row] ^ counter.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    /// A row's draws do not depend on the other rows, nor on rows dropped before it.
    #[test]
    fn draws_depend_on_the_row_alone() {
        let batch = RowNoise::new(vec![7, 8, 9]);
        let mut alone = RowNoise::new(vec![9]);
        for stream in [Stream::Token, Stream::X1 { eval: 3, unconditional: true }] {
            assert_eq!(values(&batch.uniforms(stream, Device::Cpu))[2], values(&alone.uniforms(stream, Device::Cpu))[0]);
        }
        assert_eq!(values(&batch.normals(Stream::X0, 5, Device::Cpu))[10..], values(&alone.normals(Stream::X0, 5, Device::Cpu))[..]);
        let mut dropped = batch.clone();
        dropped.keep(&[2]);
        dropped.advance();
        alone.advance();
        assert_eq!(values(&dropped.normals(Stream::X0, 4, Device::Cpu)), values(&alone.normals(Stream::X0, 4, Device::Cpu)));
    }

    /// Positions, streams and keys give different draws.
    #[test]
    fn positions_streams_and_keys_are_independent() {
        let mut n = RowNoise::new(vec![1, 2]);
        let first = values(&n.uniforms(Stream::Token, Device::Cpu));
        assert_ne!(first[0], first[1]);
        assert_ne!(first, values(&n.uniforms(Stream::X1 { eval: 0, unconditional: false }, Device::Cpu)));
        let x1 = |n: &RowNoise, u| values(&n.uniforms(Stream::X1 { eval: 0, unconditional: u }, Device::Cpu));
        assert_ne!(x1(&n, false), x1(&n, true));
        n.advance();
        assert_ne!(first, values(&n.uniforms(Stream::Token, Device::Cpu)));
        assert_ne!(RowNoise::key(0, &["gsm8k", "base", "1", "0"]), RowNoise::key(0, &["gsm8k", "base", "10", ""]));
    }

    /// Uniforms fill [0, 1) with mean 1/2 and normals have mean 0 and
    /// variance 1, each within 5 standard errors over 20 000 draws.
    #[test]
    fn uniforms_and_normals_have_their_moments() {
        let n = RowNoise::new((0..20_000).collect());
        let u = values(&n.uniforms(Stream::Token, Device::Cpu));
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 5.0 * (1.0 / 12.0 / u.len() as f64).sqrt(), "uniform mean {mean}");
        let z = values(&RowNoise::new(vec![3]).normals(Stream::X0, 20_000, Device::Cpu));
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / z.len() as f64;
        let se = (1.0 / z.len() as f64).sqrt();
        assert!(mean.abs() < 5.0 * se && (var - 1.0).abs() < 5.0 * se * 2f64.sqrt(), "normal mean {mean}, variance {var}");
    }
}
