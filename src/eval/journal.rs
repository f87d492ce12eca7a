//! The eval journal: every finished completion is appended to `examples.jsonl`
//! and flushed, so a killed sweep resumes without redoing finished items; a run
//! that fails before its first completion takes its directory away again. In a
//! sharded run rank 0 alone holds the journal; lines travel between ranks as
//! JSON-lines text.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::identity;
use super::sweep::EXAMPLES;
use crate::dist::Dist;
use crate::sampling::generate::Finish;

/// One completion as journalled (and, scored, as finally written) in `examples.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Line {
    pub(super) task: String,
    pub(super) setting: String,
    pub(super) task_id: String,
    pub(super) sample: usize,
    pub(super) completion: String,
    pub(super) new_tokens: usize,
    pub(super) finish: Finish,
    /// This row's share of its batch's decoding time.
    pub(super) decode_s: f64,
    /// Diffusion evaluations per decoding step of the batch that made this
    /// completion (0 for the base LM; journals before issue #18 hold the
    /// setting's running mean).
    pub(super) evals_per_token: f64,
}

pub(super) type Key = (String, String, String, usize);

pub(super) fn key(l: &Line) -> Key {
    (l.task.clone(), l.setting.clone(), l.task_id.clone(), l.sample)
}

/// Finished completions of an earlier, interrupted run in `path` (none if absent).
///
/// A kill can leave the last line half-written; it is dropped (and redone).
pub(super) fn read_journal(path: &Path) -> Result<Vec<Line>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<Line>(l) {
            Ok(line) => out.push(line),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => crate::bail_usage!(
                "{}:{}: not a line of an l2d eval journal ({e}); use another --out to start afresh",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// Rank 0's run directory `dir`: made (or resumed after checking the run's `identity`), its
/// journal opened for appending, and the completions already in it.
pub(super) fn open_run(dir: &Path, identity: &serde_json::Value) -> Result<(DiscardIfNothingDone, Journal, Vec<Line>)> {
    let made = crate::io::create_output_dir(dir).context("--out")?;
    let discard = DiscardIfNothingDone::arm(dir, made)?;
    crate::io::remove_staging_debris(dir)?; // temporary files of a killed run
    let journal_path = dir.join(EXAMPLES);
    let done = read_journal(&journal_path)?;
    {
        let _writing = discard.writing();
        identity::check_or_record(dir, identity, !done.is_empty())?;
    }
    let journal = Journal::open(&journal_path, &done, &discard)?;
    if !done.is_empty() {
        tracing::info!("resuming: {} completions already in {}", done.len(), journal_path.display());
    }
    Ok((discard, journal, done))
}

/// Journal lines as one text (JSON lines), to send to the other ranks.
pub(super) fn journal_text(lines: &[Line]) -> Result<String> {
    Ok(String::from_utf8(crate::io::json_lines(lines)?)?)
}

/// The completions of [`journal_text`]'s text.
pub(super) fn parse_lines(text: &str) -> Result<Vec<Line>> {
    text.lines().map(|l| serde_json::from_str::<Line>(l).context("a journal line from another rank")).collect()
}

/// Every rank's `lines` of one round, in rank order (so in batch order), on every rank.
pub(super) fn gather_lines(dist: &Dist, lines: Vec<Line>) -> Result<Vec<Line>> {
    if dist.world_size() == 1 {
        return Ok(lines);
    }
    let all = dist.all_gather_text(&journal_text(&lines)?, "the round's completions")?;
    Ok(all.iter().map(|t| parse_lines(t)).collect::<Result<Vec<_>>>()?.concat())
}

/// Appends finished completions to the journal, flushed to disk.
pub(super) struct Journal {
    file: std::fs::File,
    writing: Arc<Mutex<()>>,
}

impl Journal {
    /// Opens `path` for appending, rewriting it first with only the `kept` lines
    /// (which drops a half-written tail). `guard` is the run directory's.
    pub(super) fn open(path: &Path, kept: &[Line], guard: &DiscardIfNothingDone) -> Result<Journal> {
        let _writing = guard.writing();
        crate::io::write_atomic(path, &crate::io::json_lines(kept)?)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        Ok(Journal { file, writing: guard.writing.clone() })
    }

    pub(super) fn append(&mut self, lines: &[Line]) -> Result<()> {
        let _writing = lock(&self.writing);
        self.file.write_all(&crate::io::json_lines(lines)?)?;
        self.file.sync_data().context("cannot flush the eval journal")
    }
}

/// A run directory this run made, taken away again (with the parents made for
/// it) when the run ends by an error, SIGINT or SIGTERM before its first
/// completion: a failed run leaves no directory behind, one stopped later keeps
/// its journal to resume.
#[derive(Clone)]
pub(super) struct DiscardIfNothingDone {
    dir: PathBuf,
    made: crate::io::CreatedDirs,
    /// Held while the run writes into `dir`, and by a signal's discard until the
    /// process exits, so that the two never interleave (a file written just
    /// after the discard would leave the directory behind, one removed just
    /// before a write would end the run with an error instead of the signal).
    writing: Arc<Mutex<()>>,
}

impl DiscardIfNothingDone {
    pub(super) fn arm(dir: &Path, made: crate::io::CreatedDirs) -> Result<Self> {
        let guard = Self { dir: dir.to_path_buf(), made, writing: Arc::default() };
        if guard.made.any() {
            let on_signal = guard.clone();
            crate::io::on_signal(move || {
                std::mem::forget(on_signal.writing());
                on_signal.discard();
            })?;
        }
        Ok(guard)
    }

    /// Keeps a signal's discard away while the caller writes into the directory.
    pub(super) fn writing(&self) -> MutexGuard<'_, ()> {
        lock(&self.writing)
    }

    fn discard(&self) {
        let started = std::fs::metadata(self.dir.join(EXAMPLES)).is_ok_and(|m| m.len() > 0);
        if started || !self.made.any() {
            return;
        }
        for name in [EXAMPLES, identity::IDENTITY_FILE] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        let _ = crate::io::remove_staging_debris(&self.dir);
        self.made.remove_empty();
    }
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for DiscardIfNothingDone {
    fn drop(&mut self) {
        self.discard();
    }
}

