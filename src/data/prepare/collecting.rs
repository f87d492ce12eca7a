//! Collecting examples in input order into the spill file, with counts.

use super::*;

/// Where one example sits in the spill file, and where it came from.
#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) prompt_len: u32,
    pub(super) class_id: i32,
    pub(super) conversation: u32,
}

/// Absorbs outcomes in input order: counts, malformed list, and examples to the spill file.
pub(super) struct Collector {
    pub(super) spill: BufWriter<File>,
    pub(super) spill_path: PathBuf,
    pub(super) spill_tokens: u64,
    pub(super) entries: [Vec<Entry>; 2],
    pub(super) conversations: u32,
    pub(super) strict: bool,
    pub(super) records: RecordCounts,
    pub(super) inputs: Vec<u64>,
    pub(super) truncated: u64,
    pub(super) dropped: BTreeMap<String, u64>,
    pub(super) filtered: BTreeMap<String, u64>,
    pub(super) malformed: MalformedSummary,
    pub(super) bytes: Vec<u8>,
}

impl Collector {
    pub(super) fn new(spill_path: &Path, sources: &[Source], strict: bool) -> Result<Self> {
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

    pub(super) fn absorb(
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

    pub(super) fn malformed(&mut self, src: &Source, line: u64, m: Malformed) -> Result<()> {
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
    pub(super) fn keep(&mut self, origin: Origin, examples: Vec<Example>) -> Result<()> {
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
