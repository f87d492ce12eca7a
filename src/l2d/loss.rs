//! Token batches and their next-token losses, computed where a loss is taken.

use tch::{Kind, Tensor};

use crate::model::{AttentionMask, KvCache, Llama, Step};

/// A batch of token sequences for training or loss evaluation.
pub struct TokenBatch {
    /// `[B, T]` token ids (right-padded).
    pub input_ids: Tensor,
    /// `[B, T]` labels: the token itself, or -100 where no loss is taken (padding, prompts).
    pub labels: Tensor,
    /// `[B, T]` guidance class per token, -1 for none.
    pub class_labels: Option<Tensor>,
}

impl TokenBatch {
    /// Right-pads `(input_ids, labels)` pairs into one batch on `device` (padding labels are -100).
    pub fn from_sequences(seqs: &[(&[i64], &[i64])], device: tch::Device) -> Self {
        let t = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut labels = Vec::with_capacity(seqs.len() * t);
        for (seq_ids, seq_labels) in seqs {
            let pad = t - seq_ids.len();
            ids.extend(seq_ids.iter().copied().chain(std::iter::repeat_n(0, pad)));
            labels.extend(seq_labels.iter().copied().chain(std::iter::repeat_n(-100, pad)));
        }
        let shape = [seqs.len() as i64, t as i64];
        Self {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            labels: Tensor::from_slice(&labels).view(shape).to_device(device),
            class_labels: None,
        }
    }
}

/// The frozen main path over a right-padded batch: last hidden state, the step
/// (positions, causal mask, rotation) and the cache of keys and values.
pub fn main_path(model: &Llama, batch: &TokenBatch) -> (Tensor, Step, KvCache) {
    let (b, t) = batch.input_ids.size2().expect("[B, T]");
    let positions = Tensor::arange(t, (Kind::Int64, model.device())).unsqueeze(0).expand([b, t], false);
    // Right padding only ever follows the real tokens, so the plain causal mask is exact for them.
    let step = model.step(positions, AttentionMask::Causal);
    let mut cache = KvCache::growing(model.layers.len());
    let hidden = tch::no_grad(|| model.forward_hidden(&batch.input_ids, &step, &mut cache));
    (hidden, step, cache)
}

/// Summed cross-entropy of `logits[:, i]` against `labels[:, i + 1]` and the
/// number of unmasked labels, for token-weighted means over batches.
pub fn next_token_nll(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let t = logits.size()[1];
    summed_cross_entropy(&logits.narrow(1, 0, t - 1), &labels.narrow(1, 1, t - 1))
}

/// Summed cross-entropy of `logits` `[.., V]` against `targets` `[..]` (-100 =
/// none, computed in f32) and the number of targets.
pub fn summed_cross_entropy(logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let v = *logits.size().last().expect("[.., V]");
    let pred = logits.reshape([-1, v]).to_kind(Kind::Float);
    let sum = pred.cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, tch::Reduction::Sum, -100, 0.0);
    (sum, targets.ne(-100).sum(Kind::Int64))
}

/// The positions of a batch whose next token bears a loss, brought to the
/// front of each row (`[B, T']`, T' the most of any row). L2D's diffusion
/// stream runs only there: each of its positions reads the main path's keys
/// and values but no other position of its own stream, so the rest cannot
/// change the loss or its gradients (prompts and padding are often half of a
/// batch).
pub struct LossPositions {
    /// `[B, T']` sequence positions; a row with fewer fills up with its other positions.
    index: Tensor,
    /// Every row's loss positions are `0..n`: `index` is a prefix of every row.
    prefix: bool,
}

impl LossPositions {
    /// The positions `i` with `targets[:, i] != -100`, `targets` `[B, T]`.
    pub fn of(targets: &Tensor) -> Self {
        let keep = targets.ne(-100);
        let most = keep.sum_dim_intlist(1, false, Kind::Int64).max().int64_value(&[]).max(1);
        // A stable sort of "no loss" brings each row's loss positions to the front, in order.
        let order = keep.logical_not().to_kind(Kind::Uint8).argsort_stable(true, 1, false);
        let index = order.narrow(1, 0, most);
        let arange = Tensor::arange(most, (Kind::Int64, targets.device()));
        let prefix = index.eq_tensor(&arange.unsqueeze(0)).all().int64_value(&[]) == 1;
        Self { index, prefix }
    }

    /// `x` `[B, T, ..]` at the loss positions, `[B, T', ..]`.
    pub fn gather(&self, x: &Tensor) -> Tensor {
        let most = self.index.size()[1];
        if self.prefix {
            return x.narrow(1, 0, most);
        }
        let mut shape = self.index.size();
        shape.extend(std::iter::repeat_n(1, x.dim() - 2));
        let mut full = x.size();
        full[1] = most;
        x.gather(1, &self.index.view(shape.as_slice()).expand(full.as_slice(), false), false)
    }

    /// The main path's `step` (one key per position) for queries at the loss positions.
    pub fn step(&self, model: &Llama, step: &Step) -> Step {
        let mask = if self.prefix {
            // Causal masks align queries with the first keys: query j sees keys 0..=j.
            AttentionMask::Causal
        } else {
            let keys = Tensor::arange(step.positions.size()[1], (Kind::Int64, self.index.device())).view([1, 1, -1]);
            AttentionMask::Explicit(keys.le_tensor(&self.index.unsqueeze(-1)).unsqueeze(1))
        };
        model.step(self.gather(&step.positions), mask)
    }
}
