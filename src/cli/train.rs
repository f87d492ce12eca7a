//! `l2d train`: finetuning runs from a config (`--dry-run` plans one without weights).

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::progress::ProgressMode;
use crate::model::ModelConfig;
use crate::train::data::{BatchPlan, Source};
use crate::train::run::data_path;
use crate::train::param_counts;

/// Flags of `l2d train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArgs,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Output directory (checkpoints, metrics, the trained result).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Report parameter counts and the planned batch, steps and token budget; needs only config.json (and reads data.out, when set, for the steps and tokens).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the dry-run report as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Continue the run in --out from its newest valid checkpoint, with its own config.toml unless --config is given; only length, cadence and the learning-rate schedule may change.
    #[arg(long)]
    pub resume: bool,
}

/// Runs (or plans) the configured training.
pub fn run(args: Args, progress: ProgressMode) -> Result<()> {
    let mut cfg = load_config(&args)?;
    args.model.apply(&mut cfg.model)?;
    cfg.validate().map_err(|e| super::name_flags(e, &[("model.device", "--device"), ("model.dtype", "--dtype")]))?;
    let model_cfg = ModelConfig::load(&Path::new(&cfg.model.path).join("config.json"))?;
    if !args.dry_run {
        return train(&cfg, &args, progress);
    }
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
    let budget = serde_json::to_value(DataBudget::of(&cfg, &model_cfg)?)?;
    plan.as_object_mut().expect("an object").extend(budget.as_object().expect("a struct").clone());
    if args.json {
        println!("{plan}");
    } else {
        for (k, v) in plan.as_object().expect("an object") {
            println!("{k:<26} {v}");
        }
    }
    Ok(())
}

/// The config to train with: `--config` and `--set`, or on `--resume`
/// without `--config` the run's own `config.toml` with the `--set` overrides.
fn load_config(args: &Args) -> Result<Config> {
    if !args.resume || args.dry_run || args.config.config.is_some() {
        return args.config.load();
    }
    let Some(out) = &args.out else {
        crate::bail_usage!("--resume: name the run with --out RUN (its config.toml is read from there) or pass --config");
    };
    let saved = out.join(crate::train::checkpoint::CONFIG);
    if !saved.is_file() {
        crate::bail_usage!("--resume: {} holds no run to resume (no {}); drop --resume to start a new run", out.display(), crate::train::checkpoint::CONFIG);
    }
    crate::config::load(Some(&saved), &args.config.set)
}

/// What the run would go through of `data.out` (all `None` while it is unset,
/// so a run can be planned before its data is prepared).
#[derive(Default, serde::Serialize)]
struct DataBudget {
    data: Option<String>,
    train_examples: Option<usize>,
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
    fn of(cfg: &Config, model_cfg: &ModelConfig) -> Result<Self> {
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

/// Runs the training; SIGINT/SIGTERM finish the current step, save and exit
/// with 128 + the signal's number (130, 143), a second signal aborts.
fn train(cfg: &Config, args: &Args, progress: ProgressMode) -> Result<()> {
    let out = match (&args.out, &cfg.train.out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) => PathBuf::from(o),
        (None, None) => crate::bail_usage!("--out: no output directory (flag or train.out in the config)"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
    }
    let outcome = crate::train::run::train(cfg, &out, args.resume, stop, progress)?;
    match (&outcome.result, outcome.interrupted) {
        (_, true) => {
            eprintln!("interrupted at step {}; checkpoint saved, continue with --resume", outcome.steps);
            std::process::exit(128 + signal.load(Ordering::SeqCst) as i32);
        }
        (Some(r), false) => {
            let valid = outcome.valid_loss.map(|v| format!("; final validation loss {v:.4}")).unwrap_or_default();
            eprintln!("trained {} steps{valid}; result in {}", outcome.steps, r.display())
        }
        (None, false) => {}
    }
    Ok(())
}
