//! `l2d init`: a random-initialised model directory for tests and demos.

use anyhow::Result;
use std::path::PathBuf;

use crate::init::{init_model_dir, Arch, InitOptions, Preset};

/// Flags of `l2d init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Architecture of the model.
    #[arg(long, value_parser = ["llama", "qwen2"])]
    pub arch: String,
    /// Size preset: `tiny` (tests), `small` (hidden 256, 4 layers, vocab 4096) or
    /// `1b` (the shapes of Llama-3.2-1B-Instruct, random weights: GPU benchmarks; 5 GB).
    #[arg(long, value_parser = ["tiny", "small", "1b"], default_value = "tiny")]
    pub preset: String,
    /// Directory to create (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Plain-text corpus to train the BPE tokenizer on (default: a built-in one).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
}

/// Writes the model directory.
pub fn run(args: Args) -> Result<()> {
    let opts = InitOptions {
        arch: Arch::parse(&args.arch)?,
        preset: Preset::parse(&args.preset)?,
        out: args.out,
        seed: args.seed,
        corpus: args.corpus,
    };
    init_model_dir(&opts)?;
    eprintln!("wrote {}", opts.out.display());
    Ok(())
}
