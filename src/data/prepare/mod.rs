//! `l2d prepare`: chat conversations (JSONL, JSON or Parquet) or pretokenized
//! JSONL to the token shards of [`super::shards`].
//!
//! Every assistant turn of a conversation is one example (spec §10): its
//! context is all earlier messages rendered with the model's chat template and
//! the generation prompt, exactly what generation feeds the model; its loss
//! covers the response tokens up to and including the first end-of-turn
//! (eos) token, taken from the template's own rendering of that turn.
//!
//! The pipeline: a reader thread per input file parses records into chunks;
//! each chunk is tokenised in parallel (rayon) and absorbed in input order, so
//! the output does not depend on the thread count. Examples go to a spill
//! file inside the staged output directory; after the last file they are split
//! by conversation, shuffled from `data.seed` and copied into the shards. The
//! directory appears whole when everything is written, or not at all.
//!
//! Llama 3 templates print today's date; it is fixed to [`super::chat::TEMPLATE_DATE`]
//! (the reference implementation's) so that the same input gives the same bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use anyhow::{Context, Result};
use std::sync::Mutex;

use crate::progress::{Progress, ProgressMode};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::chat::{ChatTemplate, Message, TokenizerConfig};
use super::shards::{
    self, IndexEntry, InputFile, LengthStats, MalformedRecord, MalformedSummary, Manifest,
    RecordCounts, ShardFile, SplitInfo, IGNORE_INDEX, TOKEN_BYTES,
};
use super::tokenizer::Tokenizer;
use crate::config::{ColumnMap, Config, SeqLenPolicy};
use crate::error::usage;
use crate::rng::SplitMix64;

/// Malformed records listed in the manifest; all are counted.
pub const MALFORMED_LIST_CAP: usize = 100;
/// Roles a chat message may have.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Records per parallel chunk: big enough to keep every core busy, small enough to stream.
const CHUNK_RECORDS: usize = 2048;
/// Bytes of JSON text per chunk, so that huge records do not pile up.
const CHUNK_BYTES: usize = 16 << 20;
/// Some editors start UTF-8 text files with a byte-order mark, which JSON does not allow.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Independent random streams drawn from `data.seed`.
const STREAM_SPLIT: u64 = 1;
const STREAM_TRAIN: u64 = 2;
const STREAM_VALID: u64 = 3;

/// What `prepare` needs besides the config.
#[derive(Clone)]
pub struct PrepareOptions {
    /// Resolved config: `model.path`, `data.*`, `train.max_seq_len`.
    pub config: Config,
    /// Output directory; must not exist.
    pub out: PathBuf,
    /// Fail on the first malformed record instead of skipping it.
    pub strict: bool,
    /// How progress over the input bytes is shown.
    pub progress: ProgressMode,
    /// How errors name the training inputs ("data.train" or the flag that set them).
    pub train_key: String,
    /// How errors name the validation inputs.
    pub valid_key: String,
}

impl PrepareOptions {
    /// Options writing to `out`, quiet and lenient, naming inputs by their config keys.
    pub fn new(config: Config, out: impl Into<PathBuf>) -> Self {
        Self {
            config,
            out: out.into(),
            strict: false,
            progress: ProgressMode::quiet(),
            train_key: "data.train".into(),
            valid_key: "data.valid".into(),
        }
    }
}

/// Tokenises the inputs of `opts.config` into a shard directory at `opts.out`
/// and returns its manifest.
pub fn prepare(opts: &PrepareOptions) -> Result<Manifest> {
    let cfg = &opts.config;
    if cfg.model.path.is_empty() {
        crate::bail_usage!("model.path: no model directory");
    }
    let model_dir = Path::new(&cfg.model.path);
    let train = resolve_inputs(&cfg.data.train, &opts.train_key, Origin::Train, cfg)?;
    if train.is_empty() {
        crate::bail_usage!(
            "{}: no training input",
            opts.train_key
        );
    }
    let valid = resolve_inputs(&cfg.data.valid, &opts.valid_key, Origin::Valid, cfg)?;
    check_disjoint(&train, &valid, &opts.valid_key)?;

    let tokenizer = Tokenizer::load(model_dir)?;
    let (template, template_source) = load_template(model_dir)?.unzip();
    let tokenizer_sha256 = shards::sha256_file(&model_dir.join("tokenizer.json"))?;
    let ctx = Ctx::new(cfg, &tokenizer, template.as_ref(), model_dir)?;

    let staged = crate::io::StagedDir::new(&opts.out)?;
    let sources: Vec<Source> = train.into_iter().chain(valid).collect();
    let progress = Mutex::new(Progress::new(opts.progress, "prepare", "bytes", sources.iter().map(|s| s.bytes).sum(), 0));
    let spill_path = staged.path().join(".spill.tokens");
    let mut col = Collector::new(&spill_path, &sources, opts.strict)?;
    for (i, src) in sources.iter().enumerate() {
        read_source(i, src, &ctx, &mut col, &progress)?;
    }
    let manifest = finish(
        col,
        &sources,
        cfg,
        staged.path(),
        &ctx,
        &tokenizer_sha256,
        template_source,
    )?;
    // Only after the checks: a refused input's error stays the one line on stderr.
    progress.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).finish();
    shards::write_manifest(staged.path(), &manifest)?;
    staged.commit()?;
    Ok(manifest)
}

/// The model's chat template as `prepare` renders it (date fixed to [`super::chat::TEMPLATE_DATE`]); none if the model has none.
pub fn chat_template(model_dir: &Path) -> Result<Option<ChatTemplate>> {
    Ok(load_template(model_dir)?.map(|(t, _)| t))
}

fn load_template(model_dir: &Path) -> Result<Option<(ChatTemplate, String)>> {
    let path = model_dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let cfg = TokenizerConfig::load(&path)?;
    let Some(source) = cfg.chat_template.clone() else {
        return Ok(None);
    };
    let template = cfg
        .fixed_date_template()
        .with_context(|| format!("{}: field chat_template", path.display()))?
        .expect("the config has a chat_template");
    Ok(Some((template, source)))
}

mod inputs;
mod reading;
mod records;
mod tokenising;
mod collecting;
mod writing;
mod shuffling;

use inputs::*;
use reading::*;
use records::*;
use tokenising::*;
use collecting::*;
use writing::*;
use shuffling::*;
