//! `l2d prepare` throughput: `cargo bench --bench prepare [-- GSM8K_TRAIN_JSONL]`.
//!
//! Turns GSM8K train (`question`/`answer`, 7,473 items; default
//! `../shared/data/gsm8k/train.jsonl`) into chat JSONL (one user and one
//! assistant turn each), builds a `small` Llama model directory, and times
//! `prepare` on it with rayon's default thread count (all cores, or
//! `RAYON_NUM_THREADS`); median of 3 runs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use l2d::config::Config;
use l2d::data::prepare::{prepare, PrepareOptions};
use l2d::init::{init_model_dir, Arch, InitOptions, Preset};

const RUNS: usize = 3;

fn main() -> Result<()> {
    let default =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/train.jsonl");
    let src = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or(default);
    let tmp = tempfile::tempdir()?;
    let chat = tmp.path().join("gsm8k-chat.jsonl");
    let records = to_chat_jsonl(&src, &chat)?;

    let model = tmp.path().join("model");
    init_model_dir(&InitOptions {
        arch: Arch::Llama,
        preset: Preset::Small,
        out: model.clone(),
        seed: 0,
        corpus: None,
    })?;

    let mut cfg = Config::default();
    cfg.model.path = model.display().to_string();
    cfg.data.train = vec![chat.display().to_string()];
    let threads = rayon::current_num_threads();
    println!("gsm8k train {records} records | small llama tokenizer | {threads} threads");

    let mut times = Vec::new();
    let mut tokens = 0;
    for run in 0..RUNS {
        let opts = PrepareOptions::new(cfg.clone(), tmp.path().join(format!("out-{run}")));
        let t = Instant::now();
        let m = prepare(&opts)?;
        times.push(t.elapsed().as_secs_f64());
        tokens = m.splits.values().map(|s| s.tokens).sum::<u64>();
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let secs = times[RUNS / 2];
    println!(
        "median {secs:.3}s: {:.0} records/s, {:.0} tokens/s ({tokens} tokens written)",
        records as f64 / secs,
        tokens as f64 / secs
    );
    Ok(())
}

/// Writes one `{"messages": [user question, assistant answer]}` line per GSM8K item.
fn to_chat_jsonl(src: &std::path::Path, dest: &std::path::Path) -> Result<usize> {
    let text = std::fs::read_to_string(src)
        .with_context(|| format!("cannot read {} (pass the GSM8K train JSONL)", src.display()))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let item: serde_json::Value = serde_json::from_str(line)?;
        let rec = serde_json::json!({"messages": [
            {"role": "user", "content": item["question"]},
            {"role": "assistant", "content": item["answer"]},
        ]});
        writeln!(out, "{rec}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}
