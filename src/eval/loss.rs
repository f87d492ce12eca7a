//! `l2d eval loss`: the mean cross-entropy of the base LM, and of the L2D path
//! at fixed diffusion times (the same t for every token), over scored sequences.

use anyhow::Result;
use std::path::Path;
use tch::{Kind, Tensor};

use crate::l2d::{next_token_nll, L2d, TokenBatch};
use crate::model::Llama;
use crate::train::data::{Source, TrainExample};

/// Mean losses over the scored tokens.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Losses {
    /// Tokens scored (labels not masked).
    pub tokens: i64,
    /// The base LM's mean cross-entropy.
    pub base: f64,
    /// The L2D path's mean cross-entropy at each time `t`, in the order asked.
    pub per_t: Vec<(f64, f64)>,
}

/// The sequences to score: a pretokenized JSONL file, or the validation split
/// of a prepared directory (its training split if it has none).
pub fn examples(data: &Path, model: &Llama) -> Result<Vec<TrainExample>> {
    let vocab = model.config.vocab_size;
    let open = || match Source::open_valid(data, vocab)? {
        Some(valid) => Ok(valid),
        None => Source::open(data, "train", vocab),
    };
    let source = open()?;
    let max_len = model.config.max_position_embeddings as usize;
    Ok((0..source.len()).map(|i| source.get(i, max_len)).collect())
}

/// Scores `examples` in batches of `batch_size`: the base LM, then `l2d` at each of `times`
/// with the same noise (seeded by `seed`) for every t, so the curve compares like with like.
pub fn losses(model: &Llama, l2d: Option<&L2d>, examples: &[TrainExample], batch_size: usize, times: &[f64], seed: u64) -> Result<Losses> {
    let device = model.device();
    let batches: Vec<TokenBatch> = examples
        .chunks(batch_size)
        .map(|c| TokenBatch::from_sequences(&c.iter().map(TrainExample::sequence).collect::<Vec<_>>(), device))
        .collect();
    let _guard = tch::no_grad_guard();
    let (base, tokens) = mean_over(&batches, |b| Ok(next_token_nll(&model.forward(&b.input_ids), &b.labels)))?;
    let mut per_t = Vec::new();
    if let Some(l2d) = l2d {
        for &t in times {
            tch::manual_seed(seed as i64);
            let (loss, _) = mean_over(&batches, |b| {
                let tt = Tensor::full(b.input_ids.size().as_slice(), t, (Kind::Float, device));
                l2d.nll_at(model, b, &tt)
            })?;
            per_t.push((t, loss));
        }
    }
    Ok(Losses { tokens, base, per_t })
}

/// Token-weighted mean of a per-batch (sum, count), and the count.
fn mean_over(batches: &[TokenBatch], mut f: impl FnMut(&TokenBatch) -> Result<(Tensor, Tensor)>) -> Result<(f64, i64)> {
    let (mut sum, mut count) = (0.0, 0i64);
    for b in batches {
        let (s, c) = f(b)?;
        sum += s.double_value(&[]);
        count += c.int64_value(&[]);
    }
    if count == 0 {
        crate::bail_usage!("every label is masked (-100); there is nothing to score");
    }
    Ok((sum / count as f64, count))
}
