//! `l2d init`: a random-initialised model directory for tests and demos, or
//! (`--task`) the data of a bundled task.

use anyhow::Result;
use std::path::PathBuf;

use crate::init::{init_model_dir, init_task_dir, Arch, InitOptions, Preset, Task, TaskOptions};

/// Items in the train, valid and test splits of a task, unless the flags say otherwise.
const DEFAULT_SPLITS: [usize; 3] = [4000, 200, 200];

/// Flags of `l2d init`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("what").args(["arch", "task"]))]
pub struct Args {
    /// Architecture of the model.
    #[arg(long, value_parser = ["llama", "qwen2"])]
    pub arch: Option<String>,
    /// Size preset: `tiny` (tests), `small` (hidden 256, 4 layers, vocab 4096) or
    /// `1b` (the shapes of Llama-3.2-1B-Instruct, random weights: GPU benchmarks; 5 GB).
    #[arg(long, value_parser = ["tiny", "small", "1b"], default_value = "tiny", conflicts_with = "task")]
    pub preset: String,
    /// Directory to create (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights, or with `--task` of the generated items.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Plain-text corpus to train the BPE tokenizer on (default: a built-in one).
    #[arg(long, conflicts_with = "task")]
    pub corpus: Option<PathBuf>,
    /// Write a bundled task's data instead of a model: `modsum` (a chain of digits
    /// added modulo 10, answered with the running totals). Writes train.jsonl and valid.jsonl
    /// (chat records for `l2d prepare`), valid-eval.jsonl and test.jsonl (GSM8K layout).
    #[arg(long, value_parser = ["modsum"])]
    pub task: Option<String>,
    /// With `--task`: training items [default: 4000].
    #[arg(long, conflicts_with = "arch")]
    pub train: Option<usize>,
    /// With `--task`: validation items (valid.jsonl and valid-eval.jsonl hold the same ones) [default: 200].
    #[arg(long, conflicts_with = "arch")]
    pub valid: Option<usize>,
    /// With `--task`: test items [default: 200].
    #[arg(long, conflicts_with = "arch")]
    pub test: Option<usize>,
}

/// Writes the model directory, or the task's data with `--task`.
pub fn run(args: Args) -> Result<()> {
    match (&args.task, &args.arch) {
        (Some(task), _) => init_task_dir(&TaskOptions {
            task: Task::parse(task)?,
            out: args.out.clone(),
            seed: args.seed,
            train: args.train.unwrap_or(DEFAULT_SPLITS[0]),
            valid: args.valid.unwrap_or(DEFAULT_SPLITS[1]),
            test: args.test.unwrap_or(DEFAULT_SPLITS[2]),
        })?,
        (None, Some(arch)) => init_model_dir(&InitOptions {
            arch: Arch::parse(arch)?,
            preset: Preset::parse(&args.preset)?,
            out: args.out.clone(),
            seed: args.seed,
            corpus: args.corpus,
        })?,
        (None, None) => {
            crate::bail_usage!("--arch or --task: say what to write, a model or a task's data")
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
