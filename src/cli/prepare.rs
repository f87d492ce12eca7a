//! `l2d prepare`: chat data to token shards with the model's chat template.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use crate::data::prepare::{prepare, PrepareOptions};
use crate::data::shards::Manifest;

/// Flags of `l2d prepare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `--config` and `--set`.
    #[command(flatten)]
    pub config: super::ConfigArgs,
    /// Output directory (must not exist); default `data.out`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Fail on the first malformed record instead of skipping and counting it.
    #[arg(long)]
    pub strict: bool,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Model directory whose tokenizer and chat template to use (sets model.path).
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// Training input file or glob: .jsonl, .jsonl.gz, .json or .parquet (repeatable; replaces data.train).
    #[arg(long, value_name = "FILE_OR_GLOB")]
    pub input: Vec<String>,
    /// Validation input file or glob (repeatable; replaces data.valid).
    #[arg(long, value_name = "FILE_OR_GLOB")]
    pub valid: Vec<String>,
    /// Longest example in tokens (sets train.max_seq_len).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub max_seq_len: Option<u64>,
    /// Most tokens per shard file (sets data.shard_tokens).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_tokens: Option<u64>,
}

/// Tokenizes chat data into shards.
pub fn run(args: Args, progress: crate::progress::ProgressMode) -> Result<()> {
    let started = Instant::now();
    let mut cfg = args.config.load()?;
    let mut opts_keys = ("data.train".to_string(), "data.valid".to_string());
    if let Some(model) = args.model {
        cfg.model.path = model;
    }
    if !args.input.is_empty() {
        cfg.data.train = args.input;
        opts_keys.0 = "--input".into();
    }
    if !args.valid.is_empty() {
        cfg.data.valid = args.valid;
        opts_keys.1 = "--valid".into();
    }
    if let Some(n) = args.max_seq_len {
        cfg.train.max_seq_len = n as usize;
    }
    if let Some(n) = args.shard_tokens {
        cfg.data.shard_tokens = n;
    }
    cfg.validate()?;
    let out = match (args.out, &cfg.data.out) {
        (Some(dir), _) => dir,
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => crate::bail_usage!("no output directory: pass --out DIR or set data.out"),
    };
    // What a killed earlier run left, and what Ctrl-C would leave of this one.
    crate::io::remove_staging_debris_of(&out)?;
    crate::io::remove_staging_on_signal(&out)?;
    let mut opts = PrepareOptions::new(cfg, &out);
    opts.strict = args.strict;
    (opts.train_key, opts.valid_key) = opts_keys;
    opts.progress = progress;
    let manifest = prepare(&opts).map_err(|e| super::name_flags(e, &[("data.train", "--input")]))?;
    eprintln!(
        "{}",
        summary(&manifest, &out, started.elapsed().as_secs_f64())
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    }
    Ok(())
}

/// One line: what was written, what was left out, how fast.
fn summary(m: &Manifest, out: &std::path::Path, secs: f64) -> String {
    let split = |name: &str| m.splits.get(name).cloned().unwrap_or_default();
    let (train, valid) = (split("train"), split("valid"));
    let dropped: u64 = m.dropped.values().sum();
    format!(
        "prepared {}: train {} examples ({} tokens), valid {} examples ({} tokens) from {} records; \
         {} malformed skipped, {} filtered, {} examples dropped, {} truncated; {:.1}s ({:.0} records/s)",
        out.display(),
        train.examples,
        train.tokens,
        valid.examples,
        valid.tokens,
        m.records.read,
        m.records.malformed,
        m.records.filtered,
        dropped,
        m.truncated,
        secs,
        m.records.read as f64 / secs.max(1e-9)
    )
}
