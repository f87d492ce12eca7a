//! `l2d train`: finetuning runs from a config (`--dry-run` plans one without weights).

use anyhow::Result;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::progress::ProgressMode;
use crate::model::ModelConfig;

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
    /// Report parameter counts, the planned batch, steps and token budget, and the per-rank memory plan with and without ZeRO-1; needs only config.json (and reads data.out, when set, for the steps and tokens).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the dry-run report as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Ranks the dry run's per-rank memory plan divides the sharded optimizer state over [default: $WORLD_SIZE, else 1].
    #[arg(long, requires = "dry_run", value_name = "N", value_parser = world_size_flag)]
    pub world_size: Option<u64>,
    /// Continue the run in --out from its newest valid checkpoint, with its own config.toml unless --config is given; only length, cadence and the learning-rate schedule may change.
    #[arg(long)]
    pub resume: bool,
}

/// Runs (or plans) the configured training.
pub fn run(args: Args, progress: ProgressMode) -> Result<()> {
    let mut cfg = load_config(&args)?;
    args.model.apply(&mut cfg.model)?;
    cfg.validate()?; // model.device and model.dtype errors get their flags named in `cli::run`
    let model_cfg = ModelConfig::load(&Path::new(&cfg.model.path).join("config.json"))?;
    if !args.dry_run {
        return train(&cfg, &args, progress);
    }
    let plan = crate::train::plan::dry_run(&cfg, &model_cfg, planned_world_size(args.world_size)?)?;
    if args.json {
        println!("{plan}");
    } else {
        for (k, v) in plan.as_object().expect("an object") {
            match v.as_object() {
                // The memory plans: one line per part, in GiB beside the bytes.
                Some(parts) => {
                    for (part, bytes) in parts {
                        let gib = bytes.as_f64().unwrap_or(0.0) / (1u64 << 30) as f64;
                        println!("{:<26} {bytes} ({gib:.1} GiB)", format!("{k}.{part}"));
                    }
                }
                None => println!("{k:<26} {v}"),
            }
        }
    }
    Ok(())
}

/// A rank count: a whole number >= 1.
fn world_size_flag(v: &str) -> Result<u64, String> {
    v.trim().parse::<u64>().ok().filter(|&n| n >= 1).ok_or_else(|| format!("expected a whole number >= 1, got {v:?}"))
}

/// `--world-size`, else the launcher's WORLD_SIZE, else 1.
fn planned_world_size(flag: Option<u64>) -> Result<u64> {
    if let Some(n) = flag {
        return Ok(n);
    }
    match std::env::var("WORLD_SIZE") {
        Err(_) => Ok(1),
        Ok(v) => world_size_flag(&v).or_else(|why| crate::bail_usage!("WORLD_SIZE: {why} (or pass --world-size N)")),
    }
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

/// Runs the training; SIGINT/SIGTERM finish the current step, save and exit
/// with 128 + the signal's number (130, 143), a second signal aborts. In a
/// group a signal to any rank stops all after the same step, and every rank
/// exits with 128 + that signal.
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
    let outcome = crate::train::run::train(cfg, &out, args.resume, signal, progress)?;
    match (&outcome.result, outcome.interrupted) {
        (_, Some(interrupt)) => {
            eprintln!("{}", interrupted_line(outcome.steps, interrupt));
            std::process::exit(128 + interrupt.signal);
        }
        (Some(r), None) => {
            let valid = outcome.valid_loss.map(|v| format!("; final validation loss {v:.4}")).unwrap_or_default();
            eprintln!("trained {} steps{valid}; result in {}", outcome.steps, r.display())
        }
        (None, None) => {}
    }
    Ok(())
}

/// What an interrupted run says; in a group, which rank got which signal.
fn interrupted_line(step: u64, interrupt: crate::train::run::Interrupt) -> String {
    let saved = if interrupt.saved_here { "checkpoint saved" } else { "rank 0 saved the checkpoint" };
    let Some(rank) = interrupt.rank else {
        return format!("interrupted at step {step}; {saved}, continue with --resume");
    };
    let name = match interrupt.signal {
        signal_hook::consts::SIGINT => "SIGINT".to_string(),
        signal_hook::consts::SIGTERM => "SIGTERM".to_string(),
        other => format!("signal {other}"),
    };
    format!("interrupted at step {step} ({name} to rank {rank}); {saved}, continue with --resume")
}
