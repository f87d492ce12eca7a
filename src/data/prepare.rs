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
//! Llama 3 templates print today's date; it is fixed to [`TEMPLATE_DATE`]
//! (the reference implementation's) so that the same input gives the same bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use anyhow::{Context, Result};
use chrono::NaiveDate;
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

/// The date Llama 3 templates print as "Today Date" in prepared data (26 Jul 2024).
pub const TEMPLATE_DATE: (i32, u32, u32) = (2024, 7, 26);
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
        crate::bail_usage!("model.path: no model directory (set [model] path or pass --model)");
    }
    let model_dir = Path::new(&cfg.model.path);
    let train = resolve_inputs(&cfg.data.train, &opts.train_key, Origin::Train, cfg)?;
    if train.is_empty() {
        crate::bail_usage!(
            "{}: no training input (set data.train or pass --input)",
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

/// The model's chat template as `prepare` renders it (date fixed to [`TEMPLATE_DATE`]); none if the model has none.
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
    let (y, m, d) = TEMPLATE_DATE;
    let date = NaiveDate::from_ymd_opt(y, m, d).expect("a valid date");
    let template = cfg
        .template()
        .with_context(|| format!("{}: field chat_template", path.display()))?;
    Ok(Some((template.with_fixed_date(date), source)))
}

// ---------------------------------------------------------------- inputs

/// Which split an input file feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Train,
    Valid,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Train => "train",
            Origin::Valid => "valid",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    /// Gzip-compressed JSON lines (`.jsonl.gz`).
    JsonlGz,
    Json,
    Parquet,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::JsonlGz => "jsonl.gz",
            Format::Json => "json",
            Format::Parquet => "parquet",
        }
    }
}

/// One input file and what is known about it before reading.
struct Source {
    path: PathBuf,
    display: String,
    format: Format,
    origin: Origin,
    bytes: u64,
    /// Class from the subset (parent directory) or file stem, for records without a mapped category.
    file_class: Option<i32>,
}

/// Expands files and globs in order; a missing file or an empty glob is a usage error naming `key`.
fn resolve_inputs(
    patterns: &[String],
    key: &str,
    origin: Origin,
    cfg: &Config,
) -> Result<Vec<Source>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pattern in patterns {
        for path in expand(pattern, key)? {
            if seen.insert(path.clone()) {
                out.push(source(path, key, origin, cfg)?);
            }
        }
    }
    Ok(out)
}

fn expand(pattern: &str, key: &str) -> Result<Vec<PathBuf>> {
    if !pattern.contains(['*', '?', '[']) {
        let path = PathBuf::from(pattern);
        if !path.exists() {
            crate::bail_usage!("{key}: {pattern}: no such file");
        }
        return Ok(vec![path]);
    }
    let paths = glob::glob(pattern)
        .map_err(|e| usage(format!("{key}: {pattern}: bad glob pattern: {e}")))?;
    let mut files = Vec::new();
    for p in paths {
        let p = p.map_err(|e| usage(format!("{key}: {pattern}: {e}")))?;
        if p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        crate::bail_usage!("{key}: {pattern}: no file matches");
    }
    // glob yields alphabetical order already; sorting makes it explicit for determinism.
    files.sort();
    Ok(files)
}

fn source(path: PathBuf, key: &str, origin: Origin, cfg: &Config) -> Result<Source> {
    let display = path.display().to_string();
    if path.is_dir() {
        crate::bail_usage!(
            "{key}: {display}: is a directory (name files or a glob such as {display}/*.parquet)"
        );
    }
    let format = detect_format(&path, key)?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| usage(format!("{key}: {display}: {e}")))?
        .len();
    let name_class = |name: Option<&std::ffi::OsStr>| {
        name.and_then(|n| n.to_str())
            .and_then(|n| cfg.data.class_map.get(n))
            .map(|&c| c as i32)
    };
    let subset = path.parent().and_then(|p| p.file_name());
    let file_class = name_class(subset).or_else(|| name_class(path.file_stem()));
    Ok(Source {
        path,
        display,
        format,
        origin,
        bytes,
        file_class,
    })
}

/// By extension; a `.json` file that does not start with `[` is read as JSON lines,
/// since many datasets name JSONL files `.json`.
fn detect_format(path: &Path, key: &str) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(Format::Jsonl),
        "parquet" => Ok(Format::Parquet),
        "gz" if has_jsonl_stem(path) => Ok(Format::JsonlGz),
        "json" => {
            let mut head = [0u8; 256];
            let n = File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|e| usage(format!("{key}: {}: {e}", path.display())))?;
            let head = head[..n].strip_prefix(UTF8_BOM).unwrap_or(&head[..n]);
            let first = head.iter().find(|b| !b.is_ascii_whitespace());
            Ok(if first == Some(&b'[') {
                Format::Json
            } else {
                Format::Jsonl
            })
        }
        _ => crate::bail_usage!(
            "{key}: {}: unknown input format (expected .jsonl, .jsonl.gz, .json or .parquet)",
            path.display()
        ),
    }
}

/// `name.jsonl.gz`, `name.ndjson.gz` or `name.json.gz` (read as JSON lines).
fn has_jsonl_stem(path: &Path) -> bool {
    let stem = path.file_stem().map(Path::new);
    let inner = stem.and_then(Path::extension).and_then(|e| e.to_str());
    matches!(
        inner.map(str::to_ascii_lowercase).as_deref(),
        Some("jsonl" | "ndjson" | "json")
    )
}

/// Training and validation must not share a file, or validation loss would be measured on training data.
fn check_disjoint(train: &[Source], valid: &[Source], key: &str) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let train: HashSet<PathBuf> = train.iter().map(|s| canon(&s.path)).collect();
    if let Some(v) = valid.iter().find(|v| train.contains(&canon(&v.path))) {
        crate::bail_usage!("{key}: {} is also a training input", v.display);
    }
    Ok(())
}

// ---------------------------------------------------------------- reading

/// One record before parsing: its 1-based line (or row) and its body.
struct Raw {
    line: u64,
    body: Body,
}

enum Body {
    /// JSON text, parsed by the worker so that parsing runs in parallel.
    Json(Vec<u8>),
    /// An already decoded record (a Parquet row).
    Value(Value),
    /// The reader could not even delimit the record.
    Bad(Malformed),
}

/// Reads one file on its own thread and tokenises its chunks on the rayon pool, in order.
fn read_source(
    idx: usize,
    src: &Source,
    ctx: &Ctx,
    col: &mut Collector,
    progress: &Mutex<Progress>,
) -> Result<()> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Vec<Raw>>(2);
        let reader = s.spawn(move || read_file(src, progress, &mut |chunk| tx.send(chunk).is_ok()));
        let mut result = Ok(());
        for chunk in rx.iter() {
            let lines: Vec<u64> = chunk.iter().map(|r| r.line).collect();
            let outcomes: Result<Vec<Outcome>> = chunk
                .into_par_iter()
                .map(|raw| ctx.process(raw, src))
                .collect();
            result = outcomes.and_then(|o| col.absorb(idx, src, &lines, o));
            if result.is_err() {
                break;
            }
            let mut p = lock(progress);
            let read = col.records.read;
            let rate = read as f64 / p.elapsed_s().max(1e-9);
            p.set_message(format!("{read} records, {rate:.0} records/s"));
        }
        // Dropping the receiver makes the reader's next send fail, so it stops early.
        drop(rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("reader thread panicked")));
        result.and(read)
    })
}

/// Sends the records of `src` in chunks; `emit` returning false stops reading quietly.
fn read_file(
    src: &Source,
    progress: &Mutex<Progress>,
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    let start = lock(progress).done();
    let advance = |done: u64| lock(progress).set_done(start + done.min(src.bytes));
    match src.format {
        Format::Jsonl | Format::JsonlGz => read_jsonl(src, &advance, emit),
        Format::Json => read_json(src, &advance, emit),
        Format::Parquet => read_parquet(src, &advance, emit),
    }?;
    advance(src.bytes);
    Ok(())
}

/// The progress, also after a reader thread panicked while holding it (it only counts).
fn lock(progress: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_error(src: &Source, e: impl std::fmt::Display) -> anyhow::Error {
    usage(format!("{}: cannot read: {e}", src.display))
}

fn read_jsonl(
    src: &Source,
    advance: &dyn Fn(u64),
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    let file = File::open(&src.path).map_err(|e| open_error(src, e))?;
    // Progress counts decompressed bytes for gzip; `advance` caps it at the file size.
    let plain: Box<dyn Read> = match src.format {
        Format::JsonlGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
        _ => Box::new(file),
    };
    let mut reader = BufReader::with_capacity(1 << 20, plain);
    let (mut chunk, mut chunk_bytes, mut done, mut line) = (Vec::new(), 0usize, 0u64, 0u64);
    loop {
        let mut buf = Vec::new();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| open_error(src, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        done += n as u64;
        if line == 1 && buf.starts_with(UTF8_BOM) {
            buf.drain(..UTF8_BOM.len());
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        chunk_bytes += buf.len();
        chunk.push(Raw {
            line,
            body: Body::Json(buf),
        });
        if chunk.len() >= CHUNK_RECORDS || chunk_bytes >= CHUNK_BYTES {
            advance(done);
            if !emit(std::mem::take(&mut chunk)) {
                return Ok(());
            }
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}

/// A top-level JSON array: each element is delimited here and parsed by a worker.
fn read_json(
    src: &Source,
    advance: &dyn Fn(u64),
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    let text = std::fs::read(&src.path).map_err(|e| open_error(src, e))?;
    let body = text.strip_prefix(UTF8_BOM).unwrap_or(&text);
    let mut chunk = Vec::new();
    let mut scan = ArrayScanner::new(body);
    loop {
        match scan.next_element() {
            Ok(Some((line, bytes))) => chunk.push(Raw {
                line,
                body: Body::Json(bytes.to_vec()),
            }),
            Ok(None) => break,
            Err((line, detail)) => {
                // The rest of the file cannot be delimited; report it as one malformed record.
                chunk.push(Raw {
                    line,
                    body: Body::Bad(Malformed::new("invalid_json", detail)),
                });
                break;
            }
        }
        if chunk.len() >= CHUNK_RECORDS {
            advance(scan.pos as u64);
            if !emit(std::mem::take(&mut chunk)) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}

/// Line and reason where a JSON array stopped making sense.
type ScanError = (u64, String);

/// Walks the elements of a top-level JSON array without building them.
struct ArrayScanner<'a> {
    text: &'a [u8],
    pos: usize,
    line: u64,
    started: bool,
    done: bool,
}

impl<'a> ArrayScanner<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self {
            text,
            pos: 0,
            line: 1,
            started: false,
            done: false,
        }
    }

    /// Moves past whitespace, counting lines.
    fn skip_ws(&mut self) {
        while let Some(&b) = self.text.get(self.pos) {
            if !b.is_ascii_whitespace() {
                break;
            }
            if b == b'\n' {
                self.line += 1;
            }
            self.pos += 1;
        }
    }

    /// The next element's line and bytes, `None` after `]`, or the line and reason it stopped.
    fn next_element(&mut self) -> Result<Option<(u64, &'a [u8])>, ScanError> {
        if self.done {
            return Ok(None);
        }
        self.skip_ws();
        if !self.started {
            if self.text.get(self.pos) != Some(&b'[') {
                return Err((
                    self.line,
                    "expected a top-level JSON array of records".into(),
                ));
            }
            self.started = true;
            self.pos += 1;
            self.skip_ws();
            if self.text.get(self.pos) == Some(&b']') {
                self.done = true;
                return Ok(None);
            }
        } else {
            match self.text.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.done = true;
                    return Ok(None);
                }
                _ => {
                    return Err((
                        self.line,
                        "expected ',' or ']' between array elements".into(),
                    ))
                }
            }
        }
        let line = self.line;
        let rest = &self.text[self.pos..];
        let mut stream =
            serde_json::Deserializer::from_slice(rest).into_iter::<serde::de::IgnoredAny>();
        match stream.next() {
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                let bytes = &rest[..end];
                self.line += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                self.pos += end;
                Ok(Some((line, bytes)))
            }
            Some(Err(e)) => Err((line + e.line().saturating_sub(1) as u64, e.to_string())),
            None => Err((line, "unexpected end of file inside the array".into())),
        }
    }
}

/// The columns a Parquet file may contribute; others are not even decoded.
const PARQUET_COLUMNS: &[&str] = &["messages", "category", "input_ids", "labels"];

fn read_parquet(
    src: &Source,
    advance: &dyn Fn(u64),
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::reader::RowIter;
    use parquet::schema::types::Type;

    let file = File::open(&src.path).map_err(|e| open_error(src, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| usage(format!("{}: not a readable Parquet file: {e}", src.display)))?;
    let meta = reader.metadata().file_metadata();
    let total_rows = meta.num_rows().max(1) as u64;
    let schema = meta.schema();
    let fields: Vec<_> = schema
        .get_fields()
        .iter()
        .filter(|f| PARQUET_COLUMNS.contains(&f.name()))
        .cloned()
        .collect();
    if !fields
        .iter()
        .any(|f| f.name() == "messages" || f.name() == "input_ids")
    {
        let have: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        crate::bail_usage!(
            "{}: no `messages` or `input_ids` column (has {})",
            src.display,
            have.join(", ")
        );
    }
    let projection = Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()?;
    let rows = RowIter::from_file(Some(projection), &reader)
        .map_err(|e| usage(format!("{}: cannot read Parquet rows: {e}", src.display)))?;
    let mut chunk = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| {
            usage(format!(
                "{}: row {}: cannot decode: {e}",
                src.display,
                i + 1
            ))
        })?;
        let value = Value::Object(
            row.get_column_iter()
                .map(|(k, f)| (k.clone(), crate::data::parquet_json::to_json(f)))
                .collect(),
        );
        chunk.push(Raw {
            line: i as u64 + 1,
            body: Body::Value(value),
        });
        if chunk.len() >= CHUNK_RECORDS {
            advance(src.bytes * (i as u64 + 1) / total_rows);
            if !emit(std::mem::take(&mut chunk)) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}


// ---------------------------------------------------------------- records

/// Why a record could not be used: a reason code and details.
#[derive(Debug, Clone)]
struct Malformed {
    reason: &'static str,
    detail: String,
}

impl Malformed {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A record that passed the checks.
enum Record {
    Chat {
        messages: Vec<Message>,
        category: Option<String>,
    },
    Pretokenized {
        input_ids: Vec<u32>,
        prompt_len: usize,
        category: Option<String>,
    },
}

impl Record {
    fn category(&self) -> Option<&str> {
        match self {
            Record::Chat { category, .. } | Record::Pretokenized { category, .. } => {
                category.as_deref()
            }
        }
    }
}

/// Chat if it has `messages`, pretokenized if it has `input_ids`, else a single turn read
/// through `columns` (or a detected common layout); other fields are ignored.
fn parse_record(
    value: Value,
    vocab: u64,
    columns: Option<&ColumnMap>,
) -> Result<Record, Malformed> {
    let Value::Object(mut obj) = value else {
        return Err(Malformed::new(
            "not_an_object",
            "a record must be a JSON object",
        ));
    };
    let category = match obj.remove("category") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(Malformed::new(
                "invalid_category",
                format!("category must be a string, got {}", kind(&other)),
            ))
        }
    };
    if let Some(messages) = obj.remove("messages") {
        return Ok(Record::Chat {
            messages: parse_messages(messages)?,
            category,
        });
    }
    if let Some(ids) = obj.remove("input_ids") {
        let (input_ids, prompt_len) = parse_pretokenized(ids, obj.remove("labels"), vocab)?;
        return Ok(Record::Pretokenized {
            input_ids,
            prompt_len,
            category,
        });
    }
    let detected = columns.or_else(|| detect_layout(&obj));
    let Some(columns) = detected else {
        return Err(Malformed::new(
            "missing_messages",
            "no `messages` (chat), `input_ids` (pretokenized) or single-turn fields (set [data.columns])",
        ));
    };
    Ok(Record::Chat {
        messages: single_turn(&mut obj, columns)?,
        category,
    })
}

/// Single-turn layouts recognised without `[data.columns]`: (user, input, assistant).
const LAYOUTS: [(&str, Option<&str>, &str); 3] = [
    ("instruction", Some("input"), "output"),
    ("question", None, "answer"),
    ("prompt", None, "response"),
];

/// The first of [`LAYOUTS`] whose user and assistant fields the record has; a `system`
/// field is used when present.
fn detect_layout(obj: &serde_json::Map<String, Value>) -> Option<&'static ColumnMap> {
    static MAPS: std::sync::OnceLock<Vec<ColumnMap>> = std::sync::OnceLock::new();
    let maps = MAPS.get_or_init(|| {
        LAYOUTS
            .iter()
            .map(|&(user, input, assistant)| ColumnMap {
                user: user.into(),
                input: input.map(Into::into),
                assistant: assistant.into(),
                system: Some("system".into()),
            })
            .collect()
    });
    maps.iter()
        .find(|m| obj.contains_key(&m.user) && obj.contains_key(&m.assistant))
}

/// Builds `[system], user, assistant` from the mapped fields; the optional ones may be absent or null.
fn single_turn(
    obj: &mut serde_json::Map<String, Value>,
    columns: &ColumnMap,
) -> Result<Vec<Message>, Malformed> {
    let mut field = |name: &str, required: bool| match obj.remove(name) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) if !required => Ok(None),
        None => Err(Malformed::new(
            "missing_column",
            format!("no `{name}` field (see [data.columns])"),
        )),
        Some(other) => Err(Malformed::new(
            "invalid_column",
            format!("`{name}` must be a string, got {}", kind(&other)),
        )),
    };
    let system = match &columns.system {
        Some(name) => field(name, false)?,
        None => None,
    };
    let mut user = field(&columns.user, true)?.unwrap_or_default();
    if let Some(name) = &columns.input {
        if let Some(input) = field(name, false)?.filter(|s| !s.trim().is_empty()) {
            user = format!("{user}\n\n{input}");
        }
    }
    let assistant = field(&columns.assistant, true)?.unwrap_or_default();
    let turn = |role: &str, content: String| Message {
        role: role.into(),
        content,
    };
    Ok(system
        .map(|s| turn("system", s))
        .into_iter()
        .chain([turn("user", user), turn("assistant", assistant)])
        .collect())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_messages(value: Value) -> Result<Vec<Message>, Malformed> {
    let Value::Array(items) = value else {
        return Err(Malformed::new(
            "invalid_messages",
            format!("messages must be a list, got {}", kind(&value)),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut m) = item else {
            return Err(Malformed::new(
                "invalid_messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        let text = |v: Option<Value>, field: &str| match v {
            Some(Value::String(s)) => Ok(s),
            other => Err(Malformed::new(
                "invalid_messages",
                format!(
                    "messages[{i}].{field} must be a string, got {}",
                    other.as_ref().map_or("nothing", kind)
                ),
            )),
        };
        let role = text(m.remove("role"), "role")?;
        if !ROLES.contains(&role.as_str()) {
            return Err(Malformed::new(
                "unknown_role",
                format!(
                    "messages[{i}].role is {role:?} (expected system, user, assistant or tool)"
                ),
            ));
        }
        let content = text(m.remove("content"), "content")?;
        out.push(Message { role, content });
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err(Malformed::new(
            "no_assistant_turn",
            "the conversation has no assistant message",
        ));
    }
    Ok(out)
}

/// Token ids plus the prompt length implied by `labels` (-100 on a prefix, the tokens after it).
fn parse_pretokenized(
    ids: Value,
    labels: Option<Value>,
    vocab: u64,
) -> Result<(Vec<u32>, usize), Malformed> {
    let bad = |detail: String| Malformed::new("invalid_input_ids", detail);
    let Value::Array(items) = ids else {
        return Err(bad(format!("input_ids must be a list, got {}", kind(&ids))));
    };
    let mut input_ids = Vec::with_capacity(items.len());
    for (j, v) in items.iter().enumerate() {
        match v.as_u64() {
            Some(id) if id < vocab => input_ids.push(id as u32),
            _ => {
                return Err(bad(format!(
                    "input_ids[{j}] is {v}, not a token id below the vocabulary size {vocab}"
                )))
            }
        }
    }
    if input_ids.len() < 2 {
        return Err(bad("input_ids needs at least 2 tokens".into()));
    }
    let labels = match labels {
        None | Some(Value::Null) => return Ok((input_ids, 0)),
        Some(Value::Array(l)) => l,
        Some(other) => {
            return Err(Malformed::new(
                "invalid_labels",
                format!("labels must be a list, got {}", kind(&other)),
            ))
        }
    };
    if labels.len() != input_ids.len() {
        return Err(Malformed::new(
            "invalid_labels",
            format!(
                "labels has {} entries, input_ids {}",
                labels.len(),
                input_ids.len()
            ),
        ));
    }
    let prompt_len = labels
        .iter()
        .take_while(|l| l.as_i64() == Some(IGNORE_INDEX))
        .count();
    for (j, (l, &t)) in labels.iter().zip(&input_ids).enumerate().skip(prompt_len) {
        match l.as_i64() {
            Some(x) if x == t as i64 => {}
            Some(IGNORE_INDEX) => {
                return Err(Malformed::new(
                    "labels_not_prefix_mask",
                    format!(
                        "labels[{j}] is -100 after loss positions; shards can only mask a prefix"
                    ),
                ))
            }
            _ => {
                return Err(Malformed::new(
                    "invalid_labels",
                    format!("labels[{j}] is {l}; it must be -100 or input_ids[{j}] ({t})"),
                ))
            }
        }
    }
    Ok((input_ids, prompt_len))
}

// ---------------------------------------------------------------- tokenising

/// What became of one record.
enum Outcome {
    Malformed(Malformed),
    Filtered(&'static str),
    Kept {
        pretokenized: bool,
        examples: Vec<Example>,
        dropped: Vec<&'static str>,
        truncated: u64,
    },
}

/// One example ready for the shards.
struct Example {
    tokens: Vec<u32>,
    prompt_len: u32,
    class_id: i32,
}

/// Everything the workers share, read-only.
struct Ctx<'a> {
    /// The raw tokenizer, for `encode_fast` (ids equal `Tokenizer::encode`'s, without offsets).
    fast: tokenizers::Tokenizer,
    template: Option<&'a ChatTemplate>,
    model_dir: &'a Path,
    eos: HashSet<u32>,
    vocab: u64,
    max_len: usize,
    drop_long: bool,
    include: HashSet<String>,
    exclude: HashSet<String>,
    class_map: BTreeMap<String, i64>,
    columns: Option<ColumnMap>,
}

impl<'a> Ctx<'a> {
    fn new(
        cfg: &Config,
        tokenizer: &'a Tokenizer,
        template: Option<&'a ChatTemplate>,
        model_dir: &'a Path,
    ) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        let fast = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| usage(format!("{}: cannot parse: {e}", path.display())))?;
        Ok(Self {
            fast,
            template,
            model_dir,
            eos: tokenizer.eos_ids.iter().map(|&i| i as u32).collect(),
            vocab: tokenizer.vocab_size() as u64,
            max_len: cfg.train.max_seq_len,
            drop_long: cfg.data.max_seq_len_policy == SeqLenPolicy::Drop,
            include: cfg.data.include_categories.iter().cloned().collect(),
            exclude: cfg.data.exclude_categories.iter().cloned().collect(),
            class_map: cfg.data.class_map.clone(),
            columns: cfg.data.columns.clone(),
        })
    }

    /// Parses, filters and tokenises one record; `Err` only for failures that end the run.
    fn process(&self, raw: Raw, src: &Source) -> Result<Outcome> {
        let value = match raw.body {
            Body::Json(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Outcome::Malformed(Malformed::new(
                        "invalid_json",
                        e.to_string(),
                    )))
                }
            },
            Body::Value(v) => v,
            Body::Bad(m) => return Ok(Outcome::Malformed(m)),
        };
        let record = match parse_record(value, self.vocab, self.columns.as_ref()) {
            Ok(r) => r,
            Err(m) => return Ok(Outcome::Malformed(m)),
        };
        if let Some(reason) = self.filter(record.category()) {
            return Ok(Outcome::Filtered(reason));
        }
        let class_id = self.class_of(record.category(), src);
        match record {
            Record::Chat { messages, .. } => self.chat_examples(&messages, class_id),
            Record::Pretokenized {
                input_ids,
                prompt_len,
                ..
            } => Ok(self.pretokenized_example(input_ids, prompt_len, class_id)),
        }
    }

    fn filter(&self, category: Option<&str>) -> Option<&'static str> {
        match category {
            Some(c) if self.exclude.contains(c) => Some("category_excluded"),
            Some(c) if !self.include.is_empty() && !self.include.contains(c) => {
                Some("category_not_included")
            }
            None if !self.include.is_empty() => Some("no_category"),
            _ => None,
        }
    }

    /// The category's class, else the file's (subset or stem), else -1.
    fn class_of(&self, category: Option<&str>, src: &Source) -> i32 {
        category
            .and_then(|c| self.class_map.get(c))
            .map(|&c| c as i32)
            .or(src.file_class)
            .unwrap_or(-1)
    }

    /// One example per assistant turn.
    fn chat_examples(&self, messages: &[Message], class_id: i32) -> Result<Outcome> {
        let Some(template) = self.template else {
            crate::bail_usage!(
                "{}: tokenizer_config.json has no chat_template, which chat records need (or give pretokenized input)",
                self.model_dir.display()
            );
        };
        let (mut examples, mut dropped, mut truncated) = (Vec::new(), Vec::new(), 0);
        for (i, _) in messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
        {
            let turn = match self.turn(template, &messages[..i], &messages[..=i]) {
                Ok(t) => t,
                Err(TurnError::Malformed(m)) => return Ok(Outcome::Malformed(m)),
                Err(TurnError::Dropped(reason)) => {
                    dropped.push(reason);
                    continue;
                }
            };
            self.add_fitted(turn.0, turn.1, class_id, &mut examples, &mut dropped, &mut truncated);
        }
        Ok(Outcome::Kept {
            pretokenized: false,
            examples,
            dropped,
            truncated,
        })
    }

    /// Context tokens plus response tokens of the last message of `upto`.
    fn turn(
        &self,
        template: &ChatTemplate,
        history: &[Message],
        upto: &[Message],
    ) -> Result<(Vec<u32>, usize), TurnError> {
        let render = |m: &[Message], gen: bool| {
            template.render(m, gen).map_err(|e| {
                TurnError::Malformed(Malformed::new("template_error", crate::error::one_line(&e)))
            })
        };
        let context = self.encode(&render(history, true)?)?;
        let full = self.encode(&render(upto, false)?)?;
        // Both renderings share the context only if the template renders history the same way.
        if !full.starts_with(&context) {
            return Err(TurnError::Dropped("template_not_prefix"));
        }
        let mut response = &full[context.len()..];
        // Templates may add text after end-of-turn (Qwen's "\n"); the model stops at the eos token.
        if let Some(p) = response.iter().position(|t| self.eos.contains(t)) {
            response = &response[..=p];
        }
        if response.is_empty() {
            return Err(TurnError::Dropped("empty_response"));
        }
        let prompt_len = context.len();
        let mut tokens = context;
        tokens.extend_from_slice(response);
        Ok((tokens, prompt_len))
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TurnError> {
        self.fast
            .encode_fast(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TurnError::Malformed(Malformed::new("tokenize_error", e.to_string())))
    }

    fn pretokenized_example(
        &self,
        input_ids: Vec<u32>,
        prompt_len: usize,
        class_id: i32,
    ) -> Outcome {
        let (mut examples, mut dropped, mut truncated) = (Vec::new(), Vec::new(), 0);
        self.add_fitted(input_ids, prompt_len, class_id, &mut examples, &mut dropped, &mut truncated);
        Outcome::Kept {
            pretokenized: true,
            examples,
            dropped,
            truncated,
        }
    }

    /// Fits one sequence and records it as an example, or its drop reason.
    fn add_fitted(
        &self,
        tokens: Vec<u32>,
        prompt_len: usize,
        class_id: i32,
        examples: &mut Vec<Example>,
        dropped: &mut Vec<&'static str>,
        truncated: &mut u64,
    ) {
        match self.fit(tokens, prompt_len) {
            Ok((tokens, prompt_len, cut)) => {
                *truncated += cut as u64;
                examples.push(Example { tokens, prompt_len, class_id });
            }
            Err(reason) => dropped.push(reason),
        }
    }

    /// Applies the `max_seq_len` policy: the example, its prompt length and whether it was cut, or why it goes.
    fn fit(
        &self,
        mut tokens: Vec<u32>,
        prompt_len: usize,
    ) -> Result<(Vec<u32>, u32, bool), &'static str> {
        let mut cut = false;
        if tokens.len() > self.max_len {
            if self.drop_long {
                return Err("too_long");
            }
            if prompt_len >= self.max_len {
                return Err("context_too_long");
            }
            tokens.truncate(self.max_len);
            cut = true;
        }
        if prompt_len >= tokens.len() {
            return Err("no_loss_tokens");
        }
        Ok((tokens, prompt_len as u32, cut))
    }
}

enum TurnError {
    Malformed(Malformed),
    Dropped(&'static str),
}

// ---------------------------------------------------------------- collecting

/// Where one example sits in the spill file, and where it came from.
#[derive(Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    prompt_len: u32,
    class_id: i32,
    conversation: u32,
}

/// Absorbs outcomes in input order: counts, malformed list, and examples to the spill file.
struct Collector {
    spill: BufWriter<File>,
    spill_path: PathBuf,
    spill_tokens: u64,
    entries: [Vec<Entry>; 2],
    conversations: u32,
    strict: bool,
    records: RecordCounts,
    inputs: Vec<u64>,
    truncated: u64,
    dropped: BTreeMap<String, u64>,
    filtered: BTreeMap<String, u64>,
    malformed: MalformedSummary,
    bytes: Vec<u8>,
}

impl Collector {
    fn new(spill_path: &Path, sources: &[Source], strict: bool) -> Result<Self> {
        let file = File::create(spill_path)
            .with_context(|| format!("cannot create {}", spill_path.display()))?;
        Ok(Self {
            spill: BufWriter::with_capacity(1 << 20, file),
            spill_path: spill_path.to_path_buf(),
            spill_tokens: 0,
            entries: [Vec::new(), Vec::new()],
            conversations: 0,
            strict,
            records: RecordCounts::default(),
            inputs: vec![0; sources.len()],
            truncated: 0,
            dropped: BTreeMap::new(),
            filtered: BTreeMap::new(),
            malformed: MalformedSummary::default(),
            bytes: Vec::new(),
        })
    }

    fn absorb(
        &mut self,
        idx: usize,
        src: &Source,
        lines: &[u64],
        outcomes: Vec<Outcome>,
    ) -> Result<()> {
        for (&line, outcome) in lines.iter().zip(outcomes) {
            self.records.read += 1;
            self.inputs[idx] += 1;
            match outcome {
                Outcome::Malformed(m) => self.malformed(src, line, m)?,
                Outcome::Filtered(reason) => {
                    self.records.filtered += 1;
                    *self.filtered.entry(reason.into()).or_default() += 1;
                }
                Outcome::Kept {
                    pretokenized,
                    examples,
                    dropped,
                    truncated,
                } => {
                    if pretokenized {
                        self.records.pretokenized += 1;
                    } else {
                        self.records.chat += 1;
                    }
                    for reason in dropped {
                        *self.dropped.entry(reason.into()).or_default() += 1;
                    }
                    self.truncated += truncated;
                    self.keep(src.origin, examples)?;
                }
            }
        }
        Ok(())
    }

    fn malformed(&mut self, src: &Source, line: u64, m: Malformed) -> Result<()> {
        if self.strict {
            crate::bail_usage!(
                "{}:{line}: malformed record ({}): {}",
                src.display,
                m.reason,
                m.detail
            );
        }
        self.records.malformed += 1;
        self.malformed.count += 1;
        *self.malformed.by_reason.entry(m.reason.into()).or_default() += 1;
        if self.malformed.records.len() < MALFORMED_LIST_CAP {
            self.malformed.records.push(MalformedRecord {
                file: src.display.clone(),
                line,
                reason: m.reason.into(),
                detail: m.detail,
            });
        }
        Ok(())
    }

    /// Appends the examples of one conversation to the spill file.
    fn keep(&mut self, origin: Origin, examples: Vec<Example>) -> Result<()> {
        if examples.is_empty() {
            return Ok(());
        }
        let conversation = self.conversations;
        self.conversations += 1;
        for ex in examples {
            self.bytes.clear();
            self.bytes
                .extend(ex.tokens.iter().flat_map(|t| t.to_le_bytes()));
            self.spill
                .write_all(&self.bytes)
                .with_context(|| format!("cannot write {}", self.spill_path.display()))?;
            self.entries[origin as usize].push(Entry {
                offset: self.spill_tokens,
                len: ex.tokens.len() as u32,
                prompt_len: ex.prompt_len,
                class_id: ex.class_id,
                conversation,
            });
            self.spill_tokens += ex.tokens.len() as u64;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- writing

/// Splits, shuffles and writes the shards, then builds the manifest.
fn finish(
    col: Collector,
    sources: &[Source],
    cfg: &Config,
    dir: &Path,
    ctx: &Ctx,
    tokenizer_sha256: &str,
    template_source: Option<String>,
) -> Result<Manifest> {
    let Collector {
        spill,
        spill_path,
        entries,
        records,
        inputs,
        truncated,
        dropped,
        filtered,
        malformed,
        ..
    } = col;
    let file = spill
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", spill_path.display()))?;
    drop(file);
    let [train_origin, valid_origin] = entries;
    let has_valid_inputs = sources.iter().any(|s| s.origin == Origin::Valid);
    let (mut train, mut valid) = if has_valid_inputs {
        (train_origin, valid_origin)
    } else {
        split_by_conversation(train_origin, cfg.data.valid_fraction, cfg.data.seed)
    };
    if train.is_empty() {
        crate::bail_usage!(
            "no training examples left: {} records read, {} malformed, {} filtered by category, {} examples dropped{}",
            records.read,
            records.malformed,
            records.filtered,
            dropped.values().sum::<u64>(),
            top_reasons(&malformed.by_reason, &filtered, &dropped)
        );
    }
    let (train_convs, valid_convs) = (count_conversations(&train), count_conversations(&valid));
    shuffle(&mut train, shuffle_rng(cfg.data.seed, STREAM_TRAIN));
    shuffle(&mut valid, shuffle_rng(cfg.data.seed, STREAM_VALID));

    let spill_file =
        File::open(&spill_path).with_context(|| format!("cannot open {}", spill_path.display()))?;
    // Safety: the spill file is private to this staged directory and no longer written.
    let spill = unsafe { memmap2::Mmap::map(&spill_file) }
        .with_context(|| format!("cannot map {}", spill_path.display()))?;
    let shard_tokens = cfg.data.shard_tokens;
    let mut splits = BTreeMap::new();
    for (name, list, convs) in [
        ("train", &train, train_convs),
        ("valid", &valid, valid_convs),
    ] {
        let mut info = write_split(dir, name, list, &spill, shard_tokens)?;
        info.conversations = convs;
        splits.insert(name.to_string(), info);
    }
    drop(spill);
    std::fs::remove_file(&spill_path)
        .with_context(|| format!("cannot remove {}", spill_path.display()))?;

    let mut classes = BTreeMap::new();
    for e in train.iter().chain(&valid) {
        *classes.entry(e.class_id.to_string()).or_default() += 1;
    }
    let mut input_files: BTreeMap<String, Vec<InputFile>> = BTreeMap::new();
    for (src, &n) in sources.iter().zip(&inputs) {
        input_files
            .entry(src.origin.name().into())
            .or_default()
            .push(InputFile {
                path: src.display.clone(),
                format: src.format.name().into(),
                records: n,
            });
    }
    Ok(Manifest {
        format: shards::FORMAT.into(),
        version: shards::VERSION,
        created_by: format!("l2d {}", env!("CARGO_PKG_VERSION")),
        model_dir: cfg.model.path.clone(),
        tokenizer_sha256: tokenizer_sha256.into(),
        chat_template_sha256: template_source.map(|s| shards::sha256_hex(s.as_bytes())),
        vocab_size: ctx.vocab,
        max_seq_len: cfg.train.max_seq_len as u64,
        max_seq_len_policy: cfg.data.max_seq_len_policy.name().to_string(),
        seed: cfg.data.seed,
        shard_tokens,
        inputs: input_files,
        splits,
        records,
        truncated,
        dropped,
        filtered,
        malformed,
        classes,
        config: cfg.to_toml_string(),
    })
}

/// Holds out `fraction` of the conversations (at least one when there are two or more).
/// The three most frequent reasons records or examples were lost, as `; top reasons: a (n), ...`.
fn top_reasons(
    malformed: &BTreeMap<String, u64>,
    filtered: &BTreeMap<String, u64>,
    dropped: &BTreeMap<String, u64>,
) -> String {
    let mut all: Vec<(&String, u64)> = [malformed, filtered, dropped]
        .into_iter()
        .flatten()
        .map(|(r, &n)| (r, n))
        .filter(|&(_, n)| n > 0)
        .collect();
    if all.is_empty() {
        return String::new();
    }
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let listed: Vec<String> = all.iter().take(3).map(|(r, n)| format!("{r} ({n})")).collect();
    format!("; top reasons: {}", listed.join(", "))
}

fn split_by_conversation(
    entries: Vec<Entry>,
    fraction: f64,
    seed: u64,
) -> (Vec<Entry>, Vec<Entry>) {
    let n = entries.last().map_or(0, |e| e.conversation as usize + 1);
    let mut n_valid = (fraction * n as f64).round() as usize;
    if fraction > 0.0 && n >= 2 {
        n_valid = n_valid.clamp(1, n - 1);
    }
    let mut order: Vec<u32> = (0..n as u32).collect();
    shuffle(&mut order, shuffle_rng(seed, STREAM_SPLIT));
    let mut is_valid = vec![false; n];
    for &c in &order[..n_valid.min(n)] {
        is_valid[c as usize] = true;
    }
    entries
        .into_iter()
        .partition(|e| !is_valid[e.conversation as usize])
}

/// Distinct conversations; entries of one conversation are adjacent before shuffling.
fn count_conversations(entries: &[Entry]) -> u64 {
    let mut n = 0;
    let mut last = None;
    for e in entries {
        if last != Some(e.conversation) {
            n += 1;
            last = Some(e.conversation);
        }
    }
    n
}

/// Writes `entries` as shards of at most `shard_tokens` tokens (an example is never split).
fn write_split(
    dir: &Path,
    name: &str,
    entries: &[Entry],
    spill: &[u8],
    shard_tokens: u64,
) -> Result<SplitInfo> {
    let mut info = SplitInfo::default();
    let mut shard: Option<ShardWriter> = None;
    let mut lengths = Vec::with_capacity(entries.len());
    for e in entries {
        let len = e.len as u64;
        if shard
            .as_ref()
            .is_some_and(|s| s.tokens > 0 && s.tokens + len > shard_tokens)
        {
            info.shards
                .push(shard.take().expect("checked above").finish()?);
        }
        if shard.is_none() {
            shard = Some(ShardWriter::create(dir, name, info.shards.len())?);
        }
        let start = e.offset as usize * TOKEN_BYTES;
        let bytes = &spill[start..start + e.len as usize * TOKEN_BYTES];
        shard.as_mut().expect("created above").push(bytes, e)?;
        info.examples += 1;
        info.tokens += len;
        info.loss_tokens += len - e.prompt_len as u64;
        lengths.push(len);
    }
    if let Some(s) = shard {
        info.shards.push(s.finish()?);
    }
    info.length = length_stats(&mut lengths);
    Ok(info)
}

fn length_stats(lengths: &mut [u64]) -> LengthStats {
    if lengths.is_empty() {
        return LengthStats::default();
    }
    lengths.sort_unstable();
    let n = lengths.len();
    let rank = |p: f64| lengths[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    LengthStats {
        min: lengths[0],
        mean: lengths.iter().sum::<u64>() as f64 / n as f64,
        p50: rank(0.5),
        p90: rank(0.9),
        p99: rank(0.99),
        max: lengths[n - 1],
    }
}

/// A file written through a buffer while its SHA-256 is computed.
struct HashedFile {
    out: BufWriter<File>,
    hash: Sha256,
    path: PathBuf,
}

impl HashedFile {
    fn create(path: PathBuf) -> Result<Self> {
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, f),
            hash: Sha256::new(),
            path,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.out
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn finish(mut self) -> Result<String> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(shards::hex(&self.hash.finalize()))
    }
}

/// One shard being written: its token file, its index and their running counts.
struct ShardWriter {
    tokens_file: String,
    index_file: String,
    tokens_out: HashedFile,
    index_out: HashedFile,
    tokens: u64,
    examples: u64,
}

impl ShardWriter {
    fn create(dir: &Path, split: &str, n: usize) -> Result<Self> {
        let tokens_file = format!("{split}-{n:05}.tokens");
        let index_file = format!("{split}-{n:05}.index");
        Ok(Self {
            tokens_out: HashedFile::create(dir.join(&tokens_file))?,
            index_out: HashedFile::create(dir.join(&index_file))?,
            tokens_file,
            index_file,
            tokens: 0,
            examples: 0,
        })
    }

    fn push(&mut self, token_bytes: &[u8], e: &Entry) -> Result<()> {
        let entry = IndexEntry {
            offset: self.tokens,
            len: e.len,
            prompt_len: e.prompt_len,
            class_id: e.class_id,
        };
        self.tokens_out.write(token_bytes)?;
        self.index_out.write(&entry.to_bytes())?;
        self.tokens += e.len as u64;
        self.examples += 1;
        Ok(())
    }

    fn finish(self) -> Result<ShardFile> {
        Ok(ShardFile {
            tokens_sha256: self.tokens_out.finish()?,
            index_sha256: self.index_out.finish()?,
            tokens_file: self.tokens_file,
            index_file: self.index_file,
            examples: self.examples,
            tokens: self.tokens,
        })
    }
}

// ---------------------------------------------------------------- shuffling

/// The shuffle's generator: one stream per `stream` id from the same seed.
fn shuffle_rng(seed: u64, stream: u64) -> SplitMix64 {
    let mut r = SplitMix64::new(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64();
    r
}

/// Fisher-Yates.
fn shuffle<T>(items: &mut [T], mut rng: SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_scanner_reports_lines() {
        let text = b"[\n {\"a\": 1},\n\n {\"b\":\n 2}\n]\n";
        let mut s = ArrayScanner::new(text);
        assert_eq!(s.next_element().unwrap().unwrap().0, 2);
        assert_eq!(s.next_element().unwrap().unwrap().0, 4);
        assert!(s.next_element().unwrap().is_none());
        let mut bad = ArrayScanner::new(b"[1,\n2\n3]");
        bad.next_element().unwrap();
        bad.next_element().unwrap();
        assert_eq!(bad.next_element().unwrap_err().0, 3);
    }

    #[test]
    fn labels_must_mask_a_prefix() {
        let ids = serde_json::json!([5, 6, 7]);
        assert_eq!(
            parse_pretokenized(ids.clone(), Some(serde_json::json!([-100, 6, 7])), 10)
                .unwrap()
                .1,
            1
        );
        assert_eq!(parse_pretokenized(ids.clone(), None, 10).unwrap().1, 0);
        let e = parse_pretokenized(ids.clone(), Some(serde_json::json!([-100, 6, -100])), 10)
            .unwrap_err();
        assert_eq!(e.reason, "labels_not_prefix_mask");
        assert_eq!(
            parse_pretokenized(ids, None, 7).unwrap_err().reason,
            "invalid_input_ids"
        );
    }

    #[test]
    fn shuffle_is_a_fixed_permutation() {
        let mut a: Vec<u32> = (0..10).collect();
        shuffle(&mut a, shuffle_rng(0, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let mut b: Vec<u32> = (0..10).collect();
        shuffle(&mut b, shuffle_rng(0, 1));
        assert_eq!(a, b);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l: Vec<u64> = (1..=100).collect();
        let s = length_stats(&mut l);
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.max), (1, 50, 90, 99, 100));
    }
}
