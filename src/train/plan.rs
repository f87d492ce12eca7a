//! `l2d train --dry-run`: the plan of a run from the config and `config.json`
//! alone (and `data.out`, when set): parameter counts, batch, schedule and the
//! data budget the run's own [`BatchPlan`] gives, and the per-rank memory plan.

use anyhow::{Context, Result};

use super::data::{BatchPlan, Source};
use super::param_counts;
use super::run::data_path;
use super::{Mode, ParamCounts};
use crate::config::{Config, Dtype};
use crate::model::ModelConfig;

/// The dry run's report, one key per line of its table; the memory plan is
/// per rank of `world_size` data-parallel ranks.
pub fn dry_run(cfg: &Config, model_cfg: &ModelConfig, world_size: u64) -> Result<serde_json::Value> {
    let counts = param_counts(&model_cfg, &cfg)?;
    let t = &cfg.train;
    let mut plan = serde_json::json!({
        "mode": t.mode,
        "model": cfg.model.path,
        "model_type": model_cfg.model_type,
        "trainable_params": counts.trainable_params,
        "frozen_params": counts.frozen_params,
        "batch_size": t.batch_size,
        "micro_batch_size": t.micro_batch_size,
        "grad_accumulation_steps": t.batch_size / t.micro_batch_size,
        "max_seq_len": t.max_seq_len,
        "max_tokens_per_step": t.batch_size * t.max_seq_len,
        "epochs": t.epochs,
        "max_steps": t.max_steps,
        "stop_at_step": t.stop_at_step,
        "lr": t.lr,
        "final_lr": t.final_lr,
        "warmup_steps": t.warmup_steps,
        "warmup_type": t.warmup_type.name(),
        "decay": t.decay,
        "world_size": world_size,
        "zero": t.zero,
        "per_rank_zero0": MemoryPlan::of(cfg, model_cfg, &counts, world_size, 0),
        "per_rank_zero1": matches!(t.mode, Mode::Full | Mode::L2dFull).then(|| MemoryPlan::of(cfg, model_cfg, &counts, world_size, 1)),
    });
    let budget = serde_json::to_value(DataBudget::of(cfg, model_cfg)?)?;
    plan.as_object_mut().expect("an object").extend(budget.as_object().expect("a struct").clone());
    Ok(plan)
}

/// What the run would go through of `data.out` (all `None` while it is unset,
/// so a run can be planned before its data is prepared).
#[derive(Default, serde::Serialize)]
pub struct DataBudget {
    /// The prepared data's path.
    data: Option<String>,
    /// Examples in its training split.
    train_examples: Option<usize>,
    /// Optimizer steps per pass over them.
    steps_per_epoch: Option<u64>,
    /// Steps the learning-rate schedule spans.
    schedule_steps: Option<u64>,
    /// Steps the run takes (`train.stop_at_step` may end it before the schedule does).
    planned_steps: Option<u64>,
    /// The examples' tokens over the planned steps.
    planned_tokens: Option<u64>,
    /// The same padded into micro-batches: what the steps compute on.
    planned_padded_tokens: Option<u64>,
}

impl DataBudget {
    /// The budget of `cfg`'s run over `data.out`.
    pub fn of(cfg: &Config, model_cfg: &ModelConfig) -> Result<Self> {
        let Some(path) = data_path(cfg)? else {
            return Ok(Self::default());
        };
        let t = &cfg.train;
        let source = Source::open(&path, "train", model_cfg.vocab_size).context("data.out")?;
        let plan = BatchPlan::new(source.lengths(), t.batch_size, t.seed);
        let (total, end) = plan.steps(t);
        let (tokens, padded) = plan.tokens(end, t.max_seq_len, t.micro_batch_size);
        Ok(Self {
            data: Some(path.display().to_string()),
            train_examples: Some(source.len()),
            steps_per_epoch: Some(plan.steps_per_epoch),
            schedule_steps: Some(total),
            planned_steps: Some(end),
            planned_tokens: Some(tokens),
            planned_padded_tokens: Some(padded),
        })
    }
}


/// What one rank holds during training, in bytes, from the parameter counts
/// and the model's shape. Exact for the tensors the trainer allocates
/// (weights, gradients, f32 masters, AdamW moments); the activations are an
/// estimate (see [`MemoryPlan::activations_estimate`]). Allocator slack,
/// libtorch/CUDA context and temporary buffers are not counted.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    /// The tensors the forward pass reads, in the compute dtype: the frozen
    /// base model and the trainable tensors' compute copies.
    pub weights_bytes: i64,
    /// Gradients of the trainable tensors, whole on every rank (ZeRO-1 shards
    /// none of them): f32 on the f32 leaves, or in the compute dtype under
    /// ZeRO-1, whose leaves are the compute weights.
    pub gradients_bytes: i64,
    /// The f32 copies of the trainable tensors AdamW updates, when the compute
    /// dtype is not f32 (in f32 they are the weights themselves): whole on
    /// every rank, or this rank's `ceil(P / world_size)` under ZeRO-1.
    pub masters_bytes: i64,
    /// AdamW's two f32 moments: whole, or this rank's `ceil(P / world_size)` under ZeRO-1.
    pub optimizer_bytes: i64,
    /// Saved activations of one micro-batch of `max_seq_len` tokens (an estimate).
    pub activations_estimate_bytes: i64,
    /// The sum of the above.
    pub total_bytes: i64,
}

impl MemoryPlan {
    /// The plan of `cfg`'s run on `world_size` ranks with ZeRO stage `zero`.
    pub fn of(cfg: &Config, model: &ModelConfig, counts: &ParamCounts, world_size: u64, zero: u8) -> Self {
        let e = compute_bytes(cfg);
        let (p, frozen) = (counts.trainable_params, counts.frozen_params);
        let world = world_size.max(1) as i64;
        let sharded = if zero == 1 { (p + world - 1) / world } else { p };
        let weights_bytes = (frozen + p) * e;
        let gradients_bytes = if zero == 1 { e * p } else { 4 * p };
        let masters_bytes = if e == 4 { 0 } else { 4 * sharded };
        let optimizer_bytes = 8 * sharded;
        let activations_estimate_bytes = Self::activations_estimate(cfg, model, e);
        let total_bytes = weights_bytes + gradients_bytes + masters_bytes + optimizer_bytes + activations_estimate_bytes;
        Self { weights_bytes, gradients_bytes, masters_bytes, optimizer_bytes, activations_estimate_bytes, total_bytes }
    }

    /// Tokens of one micro-batch (`micro_batch_size * max_seq_len`) times, per
    /// token: for each of the `L` layers `8·hidden + 2·kv_dim + 4·intermediate`
    /// elements in the compute dtype (what autograd keeps for the backward pass
    /// of a Llama layer: the two norms' inputs and outputs, q, k, v, the
    /// attention output, and the MLP's gate, up, activation and product; the
    /// attention itself is assumed memory-efficient, no `T²` scores), twice
    /// for L2D modes (the diffusion path's parallel projections), plus
    /// `2·vocab` f32 for the logits and their gradient. An estimate, not a
    /// measurement: kernels' workspaces, the loss's temporaries and the
    /// allocator's fragmentation come on top.
    fn activations_estimate(cfg: &Config, m: &ModelConfig, e: i64) -> i64 {
        let t = &cfg.train;
        let tokens = (t.micro_batch_size * t.max_seq_len) as i64;
        let kv_dim = m.num_kv_heads() * m.head_dim();
        let paths = if cfg.train.mode.l2d_variant().is_some() { 2 } else { 1 };
        let per_layer = (8 * m.hidden_size + 2 * kv_dim + 4 * m.intermediate_size) * e * paths;
        tokens * (m.num_hidden_layers * per_layer + 2 * m.vocab_size * 4)
    }
}

/// Bytes per element of the compute dtype; `auto` is bf16 unless the device is the CPU.
fn compute_bytes(cfg: &Config) -> i64 {
    match cfg.model.dtype {
        Dtype::F32 => 4,
        Dtype::Auto if cfg.model.device == "cpu" => 4,
        Dtype::Auto | Dtype::Bf16 | Dtype::F16 => 2,
    }
}
