//! Training examples and the deterministic batch plan: which examples form
//! optimizer step `s` is a pure function of (seed, s), so a resumed run sees
//! exactly the batches an uninterrupted one would.

use anyhow::Result;
use std::path::Path;

use crate::config::TrainConfig;
use crate::data::pretokenized;
use crate::data::shards::Split;
use crate::rng::SplitMix64;

/// One sequence with its labels (-100 = no loss) and guidance class (-1 = none).
#[derive(Debug, Clone)]
pub struct TrainExample {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Labels aligned with `input_ids`.
    pub labels: Vec<i64>,
    /// Guidance class, -1 for none.
    pub class_id: i64,
}

impl TrainExample {
    /// The `(input_ids, labels)` pair that [`crate::l2d::TokenBatch::from_sequences`] pads.
    pub fn sequence(&self) -> (&[i64], &[i64]) {
        (&self.input_ids, &self.labels)
    }
}

/// Where examples come from: prepared shards or a pretokenized JSONL file.
pub enum Source {
    /// Memory-mapped shards written by `l2d prepare`.
    Shards(Split),
    /// Examples read into memory.
    Memory(Vec<TrainExample>),
}

impl Source {
    /// Opens split `split` of a prepared directory, or reads a pretokenized JSONL file.
    pub fn open(path: &Path, split: &str, vocab_size: i64) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::Shards(Split::open(path, split)?));
        }
        let examples = pretokenized::read_jsonl(path, vocab_size)?
            .into_iter()
            .map(|e| TrainExample { input_ids: e.input_ids, labels: e.labels, class_id: -1 })
            .collect();
        Ok(Self::Memory(examples))
    }

    /// The validation split of a prepared directory, if it has a non-empty one
    /// (a pretokenized file has none).
    pub fn open_valid(path: &Path, vocab_size: i64) -> Result<Option<Self>> {
        if !path.is_dir() {
            return Ok(None);
        }
        match crate::data::shards::read_manifest(path)?.splits.get("valid") {
            Some(info) if info.examples > 0 => Ok(Some(Self::open(path, "valid", vocab_size)?)),
            _ => Ok(None),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Self::Shards(s) => s.len(),
            Self::Memory(v) => v.len(),
        }
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token count of every example (without reading the tokens of shards).
    pub fn lengths(&self) -> Vec<usize> {
        match self {
            Self::Shards(s) => s.lengths().into_iter().map(|l| l as usize).collect(),
            Self::Memory(v) => v.iter().map(|e| e.input_ids.len()).collect(),
        }
    }

    /// Example `i`, cut to `max_len` tokens.
    pub fn get(&self, i: usize, max_len: usize) -> TrainExample {
        let mut e = match self {
            Self::Shards(s) => {
                let x = s.get(i);
                TrainExample { input_ids: x.input_ids, labels: x.labels, class_id: x.class_id }
            }
            Self::Memory(v) => v[i].clone(),
        };
        e.input_ids.truncate(max_len);
        e.labels.truncate(max_len);
        e
    }
}

/// The example indices of every optimizer step of every epoch.
pub struct BatchPlan {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    /// Optimizer steps per epoch (the last batch of an epoch may be smaller).
    pub steps_per_epoch: u64,
}

/// How many global batches are sorted by length together: long enough to pad
/// little, short enough that batches still mix the data.
const GROUP_BATCHES: usize = 16;

impl BatchPlan {
    /// Plans batches of `batch_size` over examples with these lengths.
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Self {
        let steps_per_epoch = lengths.len().div_ceil(batch_size) as u64;
        Self { lengths, batch_size, seed, steps_per_epoch }
    }

    /// Example indices of global step `step`: the epoch's seeded permutation,
    /// sorted by length within groups of batches (padding-aware batching).
    pub fn batch(&self, step: u64) -> Vec<usize> {
        let order = self.epoch_order(step / self.steps_per_epoch);
        self.batch_within(&order, step % self.steps_per_epoch)
    }

    /// The run a config asks for: the steps its schedule spans (epochs, capped by
    /// `max_steps`) and the step it ends at (`stop_at_step` may end it earlier).
    pub fn steps(&self, t: &TrainConfig) -> (u64, u64) {
        let total = (t.epochs * self.steps_per_epoch).min(t.max_steps.unwrap_or(u64::MAX));
        (total, t.stop_at_step.map_or(total, |s| s.min(total)))
    }

    /// Tokens of the first `steps` batches, each example cut to `max_len`: the
    /// examples' own, and as padded into micro-batches of `micro` (what the steps compute on).
    pub fn tokens(&self, steps: u64, max_len: usize, micro: usize) -> (u64, u64) {
        let (mut real, mut padded) = (0, 0);
        for epoch in 0..steps.div_ceil(self.steps_per_epoch) {
            let order = self.epoch_order(epoch);
            let in_epoch = (steps - epoch * self.steps_per_epoch).min(self.steps_per_epoch);
            for within in 0..in_epoch {
                for chunk in self.batch_within(&order, within).chunks(micro) {
                    let lens = chunk.iter().map(|&i| self.lengths[i].min(max_len) as u64);
                    real += lens.clone().sum::<u64>();
                    padded += lens.max().unwrap_or(0) * chunk.len() as u64;
                }
            }
        }
        (real, padded)
    }

    /// Epoch `epoch`'s seeded permutation of the examples.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        permutation(self.lengths.len(), self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Batch `within` of an epoch whose permutation is `order`.
    fn batch_within(&self, order: &[usize], within: u64) -> Vec<usize> {
        let within = within as usize;
        let group = self.batch_size * GROUP_BATCHES;
        let start = (within * self.batch_size / group) * group;
        let mut chunk: Vec<usize> = order[start..(start + group).min(order.len())].to_vec();
        chunk.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
        let offset = within * self.batch_size - start;
        chunk[offset..(offset + self.batch_size).min(chunk.len())].to_vec()
    }
}

/// A seeded Fisher–Yates permutation of `0..n` (splitmix64), the same on every platform.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.range(0, i as u64) as usize;
        v.swap(i, j);
    }
    v
}

/// A seed for the randomness of one micro-batch of one step (t, noise, label
/// dropout), so that resuming needs no saved generator state.
pub fn micro_seed(seed: u64, step: u64, micro: usize) -> i64 {
    let mix = seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (micro as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
    (mix >> 1) as i64
}
