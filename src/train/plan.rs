//! `l2d train --dry-run`: the plan of a run from the config and `config.json`
//! alone (and `data.out`, when set): parameter counts, batch, schedule and the
//! data budget the run's own [`BatchPlan`] gives.

use anyhow::{Context, Result};

use super::data::{BatchPlan, Source};
use super::param_counts;
use super::run::data_path;
use crate::config::Config;
use crate::model::ModelConfig;

/// The dry run's report, one key per line of its table.
pub fn dry_run(cfg: &Config, model_cfg: &ModelConfig) -> Result<serde_json::Value> {
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

