//! Splitting, writing the shards and the manifest.

use super::*;

/// Splits, shuffles and writes the shards, then builds the manifest.
pub(super) fn finish(
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
pub(super) fn top_reasons(
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

pub(super) fn split_by_conversation(
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
pub(super) fn count_conversations(entries: &[Entry]) -> u64 {
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
pub(super) fn write_split(
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

pub(super) fn length_stats(lengths: &mut [u64]) -> LengthStats {
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
pub(super) struct HashedFile {
    pub(super) out: BufWriter<File>,
    pub(super) hash: Sha256,
    pub(super) path: PathBuf,
}

impl HashedFile {
    pub(super) fn create(path: PathBuf) -> Result<Self> {
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, f),
            hash: Sha256::new(),
            path,
        })
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.out
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    pub(super) fn finish(mut self) -> Result<String> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(shards::hex(&self.hash.finalize()))
    }
}

/// One shard being written: its token file, its index and their running counts.
pub(super) struct ShardWriter {
    pub(super) tokens_file: String,
    pub(super) index_file: String,
    pub(super) tokens_out: HashedFile,
    pub(super) index_out: HashedFile,
    pub(super) tokens: u64,
    pub(super) examples: u64,
}

impl ShardWriter {
    pub(super) fn create(dir: &Path, split: &str, n: usize) -> Result<Self> {
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

    pub(super) fn push(&mut self, token_bytes: &[u8], e: &Entry) -> Result<()> {
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

    pub(super) fn finish(self) -> Result<ShardFile> {
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
