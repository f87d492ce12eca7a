//! `l2d eval`: evaluations. `eval --config FILE` generates over the configured
//! benchmarks under a sweep of settings (base LM, L2D grids and solvers) and
//! scores them; `eval --task NAME --data FILE --samples FILE` scores given
//! completions without a model; `eval loss` is the diagnostic cross-entropy at
//! fixed diffusion times.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::eval::loss::Losses;
use crate::eval::sandbox::SandboxOptions;
use crate::eval::results::{self, Report, ResultEntry, Setting};
use crate::eval::score;
use crate::eval::sweep::{self, Shard, SweepOutput};
use crate::eval::tasks::{Dataset, Task};
use crate::eval::Protocol;
use crate::l2d::checkpoint::Checkpoint;
use crate::progress::ProgressMode;

/// Flags of `l2d eval`: a subcommand, or the scoring flags at the top level.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// A diagnostic evaluation; without one, the top-level flags say what to do.
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// Scoring without a model (`--task`, `--data`, `--samples`).
    #[command(flatten)]
    pub score: ScoreArgs,
    /// Generation over the configured tasks (`--config`).
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// Flags of `l2d eval --config FILE [--set ...] [--out DIR]`: generate, score, report.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub config: super::ConfigArgs,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// L2D checkpoint (eval.l2d); without one only the base LM is evaluated.
    #[arg(long, value_name = "CKPT")]
    pub l2d: Option<PathBuf>,
    /// Discretisation levels to sweep, comma-separated; 0 is the base LM (eval.steps) [default: 0, and l2d.steps with a checkpoint].
    #[arg(long, value_delimiter = ',', value_name = "S,..")]
    pub steps: Option<Vec<usize>>,
    /// Solvers to sweep, comma-separated: fixed-grid ones at every level, adaptive ones once (eval.solvers) [default: l2d.solver].
    #[arg(long, value_delimiter = ',', value_name = "NAME,..")]
    pub solvers: Option<Vec<String>>,
    /// First N items of each task only (eval.limit; at least 1).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only these of the configured tasks, comma-separated (e.g. gsm8k,mmlu).
    #[arg(long, value_delimiter = ',', value_name = "NAME,..")]
    pub tasks: Option<Vec<String>>,
    /// Shots per prompt instead of the protocol's 5 (eval.num_shots; recorded in report.json).
    #[arg(long, value_name = "N")]
    pub num_shots: Option<usize>,
    /// Most new tokens instead of the protocol's 256 (512 for code) (eval.max_new_tokens; recorded in report.json).
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
}

/// The flags of `eval --config` and the config keys they set, for error messages and `--help`'s defaults.
pub(crate) const SWEEP_FLAG_KEYS: &[(&str, &str)] = &[
    ("eval.steps", "--steps"),
    ("eval.solvers", "--solvers"),
    ("eval.limit", "--limit"),
    ("eval.workers", "--workers"),
    ("eval.protocol", "--protocol"),
    ("eval.num_shots", "--num-shots"),
    ("eval.max_new_tokens", "--max-new-tokens"),
];

impl SweepArgs {
    /// Whether any flag asks for generation.
    fn given(&self) -> bool {
        self.config.config.is_some() || !self.config.set.is_empty() || self.model.model.is_some() || self.l2d.is_some()
    }
}

/// Flags of `l2d eval --task NAME --data FILE --samples FILE.jsonl`: scoring without a model.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// Benchmark: gsm8k, math, mmlu, mmlu_pro, humaneval or mbpp.
    #[arg(long, value_name = "NAME")]
    pub task: Option<Task>,
    /// The benchmark's items: .jsonl, .jsonl.gz, .json, .parquet, .csv (MMLU), or a directory of them.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Completions: `{"task_id": .., "completion": ".."}` per line; several per id are n samples for pass@k.
    #[arg(long, value_name = "FILE.jsonl")]
    pub samples: Option<PathBuf>,
    /// Directory for report.json and examples.jsonl (with --config also report.md; eval.out).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Programs run at once in the sandbox (code tasks); default: the number of CPUs.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Whose protocol: paper (the reference implementation's, the default) or clean (l2d's own; eval.protocol).
    #[arg(long, value_name = "NAME", value_parser = protocol_flag)]
    pub protocol: Option<Protocol>,
}

/// `--protocol`'s parser: clap's message then names the flag, the value and the choices on its first line.
fn protocol_flag(s: &str) -> Result<Protocol, String> {
    s.parse().map_err(|_| format!("unknown protocol {s:?} (expected one of {})", Protocol::NAMES.join(", ")))
}

/// The evaluations.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// Mean cross-entropy at fixed diffusion times (the same t for every token).
    Loss(LossArgs),
}

/// Flags of `l2d eval loss`.
#[derive(Debug, clap::Args)]
pub struct LossArgs {
    #[command(flatten)]
    pub config: super::ConfigArgs,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// L2D checkpoint (directory or bare .safetensors); without it, the base LM's loss only.
    #[arg(long, value_name = "CKPT")]
    pub l2d: Option<PathBuf>,
    /// Pretokenized JSONL (`input_ids`, optional `labels` with -100 = masked) or a
    /// directory written by `l2d prepare` (its valid split, else train).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Diffusion times, comma-separated, each in [0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1")]
    pub t: Vec<f64>,
    /// Seed of the noise x0.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the chosen evaluation.
pub fn run(args: Args, progress: ProgressMode) -> Result<()> {
    match (args.command, args.score.task) {
        (Some(EvalCommand::Loss(a)), _) => loss(a),
        (None, Some(task)) if args.sweep.given() => {
            crate::bail_usage!("--task {task}: scores given completions; it takes no --config/--model/--l2d")
        }
        (None, Some(task)) => score_samples(task, args.score),
        (None, None) if args.sweep.given() => sweep(args.sweep, args.score, progress),
        (None, None) => crate::bail_usage!(
            "l2d eval: nothing to do: generate and score with `--config FILE`, score completions with \
             `--task NAME --data FILE --samples FILE.jsonl`, or run `l2d eval loss` (see `l2d eval --help`)"
        ),
    }
}

fn sweep(args: SweepArgs, common: ScoreArgs, progress: ProgressMode) -> Result<()> {
    if common.data.is_some() || common.samples.is_some() {
        crate::bail_usage!("--data/--samples: belong to scoring with --task; `eval --config` reads [eval.tasks.NAME]");
    }
    let mut cfg = args.config.load()?;
    args.model.apply(&mut cfg.model)?;
    let e = &mut cfg.eval;
    if let Some(p) = &args.l2d {
        e.l2d = Some(p.display().to_string());
    }
    if let Some(steps) = args.steps {
        e.steps = steps;
    }
    if let Some(solvers) = args.solvers {
        e.solvers = solvers.iter().map(|s| super::parse_flag("--solvers", "eval.solvers", s)).collect::<Result<_>>()?;
    }
    if args.limit.is_some() {
        e.limit = args.limit;
    }
    if let Some(protocol) = common.protocol {
        e.protocol = protocol;
    }
    if args.num_shots.is_some() {
        e.num_shots = args.num_shots;
    }
    if args.max_new_tokens.is_some() {
        e.max_new_tokens = args.max_new_tokens;
    }
    if let Some(names) = &args.tasks {
        select_tasks(&mut e.tasks, names)?;
    }
    if common.workers.is_some() {
        e.workers = common.workers;
    }
    let ckpt = cfg.eval.l2d.as_deref().map(|p| Checkpoint::open(Path::new(p))).transpose().context("--l2d")?;
    if let Some(ckpt) = &ckpt {
        ckpt.apply_shape(&mut cfg.l2d);
    }
    cfg.validate().map_err(|err| super::name_flags(err, SWEEP_FLAG_KEYS))?;
    let Some(dir) = common.out.or_else(|| cfg.eval.out.as_ref().map(PathBuf::from)) else {
        crate::bail_usage!("--out: no output directory (flag or eval.out in the config)");
    };
    let out = SweepOutput { dir, progress };
    let (dist, device) = crate::dist::join_checked(&cfg)?;
    let Some(report) = sweep::run(&cfg, ckpt.as_ref(), &out, &Shard { dist: &dist, device: &device })? else {
        return Ok(()); // a rank of a sharded run other than 0: rank 0 reports
    };
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", results::table(&report.results));
        println!("(report.json, report.md and examples.jsonl in {})", out.dir.display());
    }
    Ok(())
}

/// Keeps only the configured tasks `names` (`--tasks`); a name not configured is an error.
fn select_tasks(tasks: &mut std::collections::BTreeMap<String, crate::config::EvalTaskConfig>, names: &[String]) -> Result<()> {
    if let Some(unknown) = names.iter().find(|n| !tasks.contains_key(n.as_str())) {
        let configured: Vec<&str> = tasks.keys().map(String::as_str).collect();
        crate::bail_usage!(
            "--tasks: {unknown:?} is not a configured task (the config has [eval.tasks.NAME] for: {})",
            if configured.is_empty() { "none".to_string() } else { configured.join(", ") }
        );
    }
    tasks.retain(|name, _| names.contains(name));
    Ok(())
}

fn score_samples(task: Task, args: ScoreArgs) -> Result<()> {
    let Some(data) = &args.data else {
        crate::bail_usage!("--task {task}: needs --data FILE (the benchmark's items)");
    };
    let Some(samples) = &args.samples else {
        crate::bail_usage!("--task {task}: needs --samples FILE.jsonl (the completions to score)");
    };
    let workers = match args.workers {
        Some(0) => crate::bail_usage!("--workers: must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let dataset = Dataset::load(task, data, "--data")?;
    let samples = score::read_samples(samples, &dataset, "--samples")?;
    let protocol = args.protocol.unwrap_or_default();
    let (dataset, samples, left_out) = score::scored_items(protocol, dataset, samples);
    if samples.is_empty() {
        crate::bail_usage!(
            "--samples: every sample answers an item the paper protocol leaves out ({} shots, {} without a gold \
             answer); --protocol clean scores them",
            left_out.shots,
            left_out.no_gold_answer
        );
    }
    let scored = score::score(&dataset, &samples, protocol, &SandboxOptions::default(), workers);
    let left_out = Some(left_out).filter(|_| protocol == Protocol::Paper);
    let report = Report::of_given(protocol, vec![ResultEntry { setting: Setting::given(), generation: None, left_out, report: scored.report }]);
    if let Some(out) = &args.out {
        results::write_outputs(out, &report, &scored.examples)?;
    }
    print_scores(&report.results[0], args.json, args.out.as_deref());
    Ok(())
}

fn print_scores(result: &ResultEntry, json: bool, out: Option<&Path>) {
    let t = &result.report;
    if json {
        let summary = serde_json::json!({
            "task": t.task, "items": t.items, "dataset_items": t.dataset_items, "samples": t.samples, "metrics": t.metrics,
        });
        println!("{summary}");
        return;
    }
    print!("{}", results::table(std::slice::from_ref(result)));
    // Scoring a subset is allowed (quick checks), but must not pass for the full benchmark unnoticed.
    if t.items < t.dataset_items {
        println!("(scored {} of the {} items in {})", t.items, t.dataset_items, t.data);
    }
    if let Some(out) = out {
        println!("(report.json and examples.jsonl in {})", out.display());
    }
}

fn loss(args: LossArgs) -> Result<()> {
    let mut cfg = args.config.load()?;
    args.model.apply(&mut cfg.model)?;
    if let Some(bad) = args.t.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        crate::bail_usage!("--t: {bad} is outside [0, 1]");
    }
    if args.batch_size == 0 {
        crate::bail_usage!("--batch-size: must be at least 1");
    }
    let model = crate::session::load_model(&cfg.model)?;
    let examples = crate::eval::loss::examples(&args.data, &model).context("--data")?;
    let l2d = match &args.l2d {
        Some(p) => Some(Checkpoint::open(p).and_then(|c| c.load(&model, Path::new(&cfg.model.path), &cfg.l2d)).context("--l2d")?),
        None => None,
    };
    let losses = crate::eval::loss::losses(&model, l2d.as_ref(), &examples, args.batch_size, &args.t, args.seed).context("--data")?;
    print_losses(args.json, &losses)
}

fn print_losses(json: bool, losses: &Losses) -> Result<()> {
    let Losses { tokens, base, per_t } = losses;
    if json {
        let rec = serde_json::json!({
            "tokens": tokens,
            "base_loss": base,
            "losses": per_t.iter().map(|(t, l)| serde_json::json!({"t": t, "loss": l})).collect::<Vec<_>>(),
        });
        println!("{rec}");
        return Ok(());
    }
    println!("{:>8} {:>10} {:>12}", "t", "loss", "perplexity");
    println!("{:>8} {:>10.5} {:>12.3}", "base", base, base.exp());
    for (t, l) in per_t {
        println!("{t:>8.3} {l:>10.5} {:>12.3}", l.exp());
    }
    println!("({tokens} scored tokens)");
    Ok(())
}
