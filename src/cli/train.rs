//! `l2d train`: finetuning runs from a config (`--dry-run` plans one without weights).

use anyhow::Result;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::path::{Path, PathBuf};

use crate::model::ModelConfig;
use crate::train::{param_counts, Mode};

/// Flags of `l2d train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArgs,
    /// Output directory (checkpoints, metrics, the trained result).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Report parameter counts and the planned batch and token budget; needs only config.json.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the dry-run report as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Continue from the newest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
}

/// Runs (or plans) the configured training.
pub fn run(args: Args) -> Result<()> {
    let cfg = args.config.load()?;
    if cfg.model.path.is_empty() {
        crate::bail_usage!("model.path: no base model directory in the config");
    }
    let model_cfg = ModelConfig::load(&Path::new(&cfg.model.path).join("config.json"))?;
    if !args.dry_run {
        return train(&cfg, &args);
    }
    let counts = param_counts(&model_cfg, &cfg)?;
    let t = &cfg.train;
    let plan = serde_json::json!({
        "mode": Mode::parse(&t.mode)?,
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
    });
    if args.json {
        println!("{plan}");
    } else {
        for (k, v) in plan.as_object().expect("an object") {
            println!("{k:<26} {v}");
        }
    }
    Ok(())
}

/// Runs the training; SIGINT/SIGTERM finish the current step, save and exit 0,
/// a second signal aborts.
fn train(cfg: &crate::config::Config, args: &Args) -> Result<()> {
    let out = match (&args.out, &cfg.train.out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) => PathBuf::from(o),
        (None, None) => crate::bail_usage!("--out: no output directory (flag or train.out in the config)"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let outcome = crate::train::run::train(cfg, &out, args.resume, stop)?;
    match (&outcome.result, outcome.interrupted) {
        (_, true) => eprintln!("interrupted at step {}; checkpoint saved, continue with --resume", outcome.steps),
        (Some(r), false) => eprintln!("trained {} steps; result in {}", outcome.steps, r.display()),
        (None, false) => {}
    }
    Ok(())
}
