//! Token shards written by `l2d prepare` and read by training: the on-disk
//! format, its manifest, and a memory-mapped reader.
//!
//! # Layout of a shard directory
//!
//! ```text
//! manifest.json          what was made, from what, with which tokenizer (see [`Manifest`])
//! train-00000.tokens     u32 little-endian token ids, the examples concatenated
//! train-00000.index      one 24-byte entry per example (below)
//! train-00001.tokens     further shards of up to `shard_tokens` tokens each
//! ...
//! valid-00000.tokens     the validation split, in the same layout
//! valid-00000.index
//! ```
//!
//! An index entry is 24 bytes, all little-endian:
//!
//! | bytes  | type | field                                                      |
//! |--------|------|------------------------------------------------------------|
//! | 0..8   | u64  | offset of the example's first token in the `.tokens` file, in tokens |
//! | 8..12  | u32  | length in tokens                                           |
//! | 12..16 | u32  | prompt length: leading tokens that carry no loss           |
//! | 16..20 | i32  | guidance class id, -1 for none                             |
//! | 20..24 | u32  | reserved, 0                                                |
//!
//! Labels are implicit: the token itself after the prompt, -100 before it.
//! Examples are stored in their final shuffled order, so reading a split from
//! index 0 upwards is one epoch of the prepared order. A shard holds whole
//! examples; one longer than `shard_tokens` gets a shard of its own. A split
//! with no examples has no shard files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::usage;

/// The `format` field of every manifest.
pub const FORMAT: &str = "l2d-shards";
/// The current layout version; readers refuse others.
pub const VERSION: u32 = 1;
/// Bytes of one index entry.
pub const INDEX_ENTRY_BYTES: usize = 24;
/// Bytes of one token.
pub const TOKEN_BYTES: usize = 4;
/// Name of the manifest inside a shard directory.
pub const MANIFEST: &str = "manifest.json";
/// Label of a position that takes no loss.
pub const IGNORE_INDEX: i64 = -100;

/// `manifest.json`: what a shard directory holds and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version, [`VERSION`] when written by this build.
    pub version: u32,
    /// The program that wrote it, e.g. "l2d 0.1.0".
    pub created_by: String,
    /// The model directory whose tokenizer and chat template were used, as given.
    pub model_dir: String,
    /// SHA-256 (hex) of the model's `tokenizer.json` bytes.
    pub tokenizer_sha256: String,
    /// SHA-256 (hex) of the chat template source; none when the model has no template.
    pub chat_template_sha256: Option<String>,
    /// Tokens the tokenizer knows, special ones included.
    pub vocab_size: u64,
    /// `train.max_seq_len` the examples were fitted to.
    pub max_seq_len: u64,
    /// `data.max_seq_len_policy` that fitted them.
    pub max_seq_len_policy: String,
    /// `data.seed` of the shuffle and the split.
    pub seed: u64,
    /// Most tokens per shard.
    pub shard_tokens: u64,
    /// Input files per origin ("train", "valid"), in reading order.
    pub inputs: BTreeMap<String, Vec<InputFile>>,
    /// The splits ("train", "valid").
    pub splits: BTreeMap<String, SplitInfo>,
    /// What happened to the input records.
    pub records: RecordCounts,
    /// Examples cut to `max_seq_len` under the "truncate" policy (still kept).
    pub truncated: u64,
    /// Examples left out, by reason ("context_too_long", "too_long", ...).
    pub dropped: BTreeMap<String, u64>,
    /// Records left out by the category filters, by reason.
    pub filtered: BTreeMap<String, u64>,
    /// Records that could not be used.
    pub malformed: MalformedSummary,
    /// Kept examples per guidance class id ("-1" for none), both splits together.
    pub classes: BTreeMap<String, u64>,
    /// The resolved run configuration (`Config::to_toml_string`).
    pub config: String,
}

/// One input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputFile {
    /// Path as given or as the glob produced it.
    pub path: String,
    /// "jsonl", "json" or "parquet".
    pub format: String,
    /// Records read from it, malformed ones included.
    pub records: u64,
}

/// Counts over input records (one record is one conversation or one pretokenized line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Records read.
    pub read: u64,
    /// Chat records (`messages`) that passed the checks.
    pub chat: u64,
    /// Pretokenized records (`input_ids`) that passed the checks.
    pub pretokenized: u64,
    /// Records skipped as malformed.
    pub malformed: u64,
    /// Records left out by the category filters.
    pub filtered: u64,
}

/// Malformed records: all counted, the first few listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MalformedSummary {
    /// All malformed records.
    pub count: u64,
    /// Counts by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// The first ones, in reading order (capped; `count` has them all).
    pub records: Vec<MalformedRecord>,
}

/// Where a malformed record is and what is wrong with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MalformedRecord {
    /// Input file.
    pub file: String,
    /// 1-based line (JSONL, JSON) or row (Parquet).
    pub line: u64,
    /// Reason code, e.g. "invalid_json", "unknown_role".
    pub reason: String,
    /// Human-readable details.
    pub detail: String,
}

/// One split's counts, length statistics and files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Examples (assistant turns, or pretokenized lines).
    pub examples: u64,
    /// Conversations they came from.
    pub conversations: u64,
    /// Tokens in all examples.
    pub tokens: u64,
    /// Tokens that carry loss.
    pub loss_tokens: u64,
    /// Example lengths in tokens.
    pub length: LengthStats,
    /// The shard files, in order.
    pub shards: Vec<ShardFile>,
}

/// Distribution of example lengths, in tokens (nearest-rank percentiles; all 0 when empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LengthStats {
    /// Shortest.
    pub min: u64,
    /// Average.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Longest.
    pub max: u64,
}

/// One shard: a token file and its index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFile {
    /// Token file name, relative to the shard directory.
    pub tokens_file: String,
    /// Index file name, relative to the shard directory.
    pub index_file: String,
    /// Examples in it.
    pub examples: u64,
    /// Tokens in it.
    pub tokens: u64,
    /// SHA-256 (hex) of the token file.
    pub tokens_sha256: String,
    /// SHA-256 (hex) of the index file.
    pub index_sha256: String,
}

/// One index entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// First token, counted in tokens from the start of the shard's token file.
    pub offset: u64,
    /// Tokens in the example.
    pub len: u32,
    /// Leading tokens without loss.
    pub prompt_len: u32,
    /// Guidance class, -1 for none.
    pub class_id: i32,
}

impl IndexEntry {
    /// The 24 on-disk bytes.
    pub fn to_bytes(&self) -> [u8; INDEX_ENTRY_BYTES] {
        let mut b = [0u8; INDEX_ENTRY_BYTES];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.prompt_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.class_id.to_le_bytes());
        b
    }

    /// Decodes 24 bytes; the reserved word is returned beside the entry so callers can check it.
    pub fn from_bytes(b: &[u8]) -> (IndexEntry, u32) {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let entry = IndexEntry {
            offset: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            len: u32_at(8),
            prompt_len: u32_at(12),
            class_id: u32_at(16) as i32,
        };
        (entry, u32_at(20))
    }
}

/// One training or validation example as the training loop consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardExample {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// The token itself where loss is taken, [`IGNORE_INDEX`] over the prompt.
    pub labels: Vec<i64>,
    /// Guidance class, -1 for none.
    pub class_id: i64,
}

/// The memory-mapped shards of one split.
pub struct Split {
    dir: PathBuf,
    shards: Vec<MappedShard>,
    /// Global index of each shard's first example, for `get`.
    starts: Vec<usize>,
    len: usize,
}

struct MappedShard {
    tokens: Mmap,
    index: Mmap,
    examples: usize,
}

impl Split {
    /// Maps split `split` ("train" or "valid") of the shard directory `dir`,
    /// checking file sizes and every index entry against its token file.
    pub fn open(dir: &Path, split: &str) -> Result<Split> {
        let manifest = read_manifest(dir)?;
        let Some(info) = manifest.splits.get(split) else {
            let have: Vec<&str> = manifest.splits.keys().map(String::as_str).collect();
            crate::bail_usage!(
                "{}: no split {split:?} (has {})",
                dir.display(),
                have.join(", ")
            );
        };
        let mut shards = Vec::with_capacity(info.shards.len());
        let mut starts = Vec::with_capacity(info.shards.len());
        let mut len = 0usize;
        for file in &info.shards {
            starts.push(len);
            let shard = map_shard(dir, file)?;
            len += shard.examples;
            shards.push(shard);
        }
        if len as u64 != info.examples {
            crate::bail_usage!(
                "{}: split {split:?} is corrupt: its shards hold {len} examples, the manifest says {}",
                dir.display(),
                info.examples
            );
        }
        Ok(Split {
            dir: dir.to_path_buf(),
            shards,
            starts,
            len,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shard directory this split was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Example `i`; panics if `i >= len()`, like slice indexing.
    pub fn get(&self, i: usize) -> ShardExample {
        let (shard, entry) = self.locate(i);
        let input_ids: Vec<i64> = token_slice(shard, &entry)
            .chunks_exact(TOKEN_BYTES)
            .map(|b| read_u32(b) as i64)
            .collect();
        let labels = input_ids
            .iter()
            .enumerate()
            .map(|(j, &t)| {
                if j < entry.prompt_len as usize {
                    IGNORE_INDEX
                } else {
                    t
                }
            })
            .collect();
        ShardExample {
            input_ids,
            labels,
            class_id: entry.class_id as i64,
        }
    }

    /// Index entry of example `i` (offset relative to its shard); panics if out of range.
    pub fn entry(&self, i: usize) -> IndexEntry {
        self.locate(i).1
    }

    /// Token ids of example `i` as stored; panics if out of range.
    pub fn tokens(&self, i: usize) -> Vec<u32> {
        let (shard, entry) = self.locate(i);
        token_slice(shard, &entry)
            .chunks_exact(TOKEN_BYTES)
            .map(read_u32)
            .collect()
    }

    /// Length in tokens of every example, in order, read from the indexes only.
    pub fn lengths(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len);
        for shard in &self.shards {
            out.extend(
                shard
                    .index
                    .chunks_exact(INDEX_ENTRY_BYTES)
                    .map(|b| read_u32(&b[8..12])),
            );
        }
        out
    }

    fn locate(&self, i: usize) -> (&MappedShard, IndexEntry) {
        assert!(
            i < self.len,
            "example {i} out of range: the split has {}",
            self.len
        );
        // `starts` is sorted and starts at 0, so the partition point is at least 1.
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        let shard = &self.shards[s];
        let at = (i - self.starts[s]) * INDEX_ENTRY_BYTES;
        (
            shard,
            IndexEntry::from_bytes(&shard.index[at..at + INDEX_ENTRY_BYTES]).0,
        )
    }
}

fn token_slice<'a>(shard: &'a MappedShard, e: &IndexEntry) -> &'a [u8] {
    let start = e.offset as usize * TOKEN_BYTES;
    &shard.tokens[start..start + e.len as usize * TOKEN_BYTES]
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// Maps one shard and checks that every index entry lies inside its token file.
fn map_shard(dir: &Path, file: &ShardFile) -> Result<MappedShard> {
    let tokens = map_file(dir, &file.tokens_file, file.tokens * TOKEN_BYTES as u64)?;
    let index = map_file(
        dir,
        &file.index_file,
        file.examples * INDEX_ENTRY_BYTES as u64,
    )?;
    let corrupt = |i: usize, what: String| {
        usage(format!(
            "{}: {} is corrupt: entry {i}: {what}",
            dir.display(),
            file.index_file
        ))
    };
    for (i, b) in index.chunks_exact(INDEX_ENTRY_BYTES).enumerate() {
        let (e, reserved) = IndexEntry::from_bytes(b);
        let end = e.offset.checked_add(e.len as u64);
        if e.len == 0 || end.is_none_or(|end| end > file.tokens) {
            return Err(corrupt(
                i,
                format!(
                    "tokens {}..+{} outside {} tokens",
                    e.offset, e.len, file.tokens
                ),
            ));
        }
        if e.prompt_len > e.len || reserved != 0 {
            return Err(corrupt(
                i,
                format!(
                    "prompt length {} of {} tokens, reserved {reserved}",
                    e.prompt_len, e.len
                ),
            ));
        }
    }
    Ok(MappedShard {
        tokens,
        index,
        examples: file.examples as usize,
    })
}

/// Maps `dir/name` read-only after checking that it has `expected` bytes.
fn map_file(dir: &Path, name: &str, expected: u64) -> Result<Mmap> {
    let path = dir.join(name);
    let f = File::open(&path).map_err(|e| {
        usage(format!(
            "{}: cannot open shard file {name}: {e}",
            dir.display()
        ))
    })?;
    let size = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if size != expected {
        crate::bail_usage!(
            "{}: {name} is corrupt: {size} bytes, the manifest implies {expected}",
            dir.display()
        );
    }
    // Safety: the shard files are written once by `l2d prepare` and never
    // modified in place; a concurrent truncation by another process is the
    // only way to invalidate the map, as with any mmap-based reader.
    unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))
}

/// Reads and checks `dir/manifest.json`; a missing or foreign one is a usage error naming `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::bail_usage!(
                "{}: no {MANIFEST} (not a directory made by l2d prepare)",
                dir.display()
            )
        }
        Err(e) => return Err(usage(format!("{}: cannot read: {e}", path.display()))),
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        usage(format!(
            "{}: not a valid shard manifest: {e}",
            path.display()
        ))
    })?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        crate::bail_usage!(
            "{}: format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
            path.display(),
            manifest.format,
            manifest.version
        );
    }
    Ok(manifest)
}

/// Writes `dir/manifest.json`; the directory is expected to be staged (see [`crate::io::StagedDir`]).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let mut bytes = serde_json::to_vec_pretty(manifest)?;
    bytes.push(b'\n');
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Refuses shards made with another `tokenizer.json` than the model's (compared by SHA-256).
pub fn check_tokenizer(dir: &Path, model_dir: &Path) -> Result<()> {
    let manifest = read_manifest(dir)?;
    let path = model_dir.join("tokenizer.json");
    let bytes =
        std::fs::read(&path).map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
    let sha = sha256_hex(&bytes);
    if sha != manifest.tokenizer_sha256 {
        crate::bail_usage!(
            "{}: the shards were made with the tokenizer of {} (sha256 {}), but {} has another (sha256 {}); run l2d prepare again for this model",
            dir.display(),
            manifest.model_dir,
            short(&manifest.tokenizer_sha256),
            path.display(),
            short(&sha)
        );
    }
    Ok(())
}

/// Recomputes the SHA-256 of every shard file and compares it with the manifest.
pub fn verify(dir: &Path) -> Result<()> {
    let manifest = read_manifest(dir)?;
    for file in manifest.splits.values().flat_map(|s| &s.shards) {
        for (name, want) in [
            (&file.tokens_file, &file.tokens_sha256),
            (&file.index_file, &file.index_sha256),
        ] {
            let got = sha256_file(&dir.join(name))?;
            if &got != want {
                crate::bail_usage!(
                    "{}: {name} is corrupt: sha256 {} instead of {}",
                    dir.display(),
                    short(&got),
                    short(want)
                );
            }
        }
    }
    Ok(())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 12 hex digits: enough to tell two fingerprints apart in a message.
pub fn short(sha: &str) -> &str {
    // By characters: a damaged file may hold any text where a digest belongs.
    sha.char_indices().nth(12).map_or(sha, |(end, _)| &sha[..end])
}
