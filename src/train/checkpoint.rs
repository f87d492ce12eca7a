//! Training checkpoints that prove themselves: `checkpoints/step-N/` holds the
//! trainable tensors, the AdamW moments, the run's config and a copy of its
//! logs up to step N; `state.json` lists every file with its size and SHA-256
//! (hashed from the bytes as they are written, so saving reads nothing back).
//!
//! A resumed run verifies the newest checkpoint and falls back to the newest
//! one that verifies; a damaged one is moved aside as `damaged-step-N`, never
//! deleted.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

use super::identity::Identity;
use super::optim::AdamW;
use crate::data::shards::{sha256_file, sha256_hex, short};
use crate::model::weights::Weights;

/// The run's metrics log, beside the checkpoints and copied into each.
pub const METRICS: &str = "metrics.jsonl";
/// The run's TensorBoard directory, beside the checkpoints and copied into each.
pub const TENSORBOARD: &str = "tb";
/// The config a checkpoint was trained with, inside it (and the run's current one beside the checkpoints).
pub const CONFIG: &str = "config.toml";
const STATE: &str = "state.json";
const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
/// Files every checkpoint lists; the TensorBoard copies come on top.
const REQUIRED: &[&str] = &[TRAINABLE, OPTIMIZER, CONFIG, METRICS];

/// `state.json` of a training checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Optimizer steps taken.
    pub step: u64,
    /// Steps the learning-rate schedule spanned when it was saved.
    pub total_steps: u64,
    /// `train.mode`.
    pub mode: String,
    /// `train.seed`.
    pub seed: u64,
    /// Fingerprints of the base model and the data it was trained on.
    pub identity: Identity,
    /// Every other file of the checkpoint, with its size and SHA-256.
    pub files: Vec<FileEntry>,
}

/// One file of a checkpoint as `state.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
}

/// A checkpoint that verified.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `state.json`.
    pub state: State,
}

/// What a checkpoint saves besides the tensors.
pub struct Saved<'a> {
    /// The run directory (its `metrics.jsonl` and `tb/` are copied in).
    pub run_dir: &'a Path,
    /// The config in force, as TOML.
    pub config_toml: &'a str,
    /// `train.mode`.
    pub mode: &'a str,
    /// `train.seed`.
    pub seed: u64,
    /// Steps the schedule spans.
    pub total_steps: u64,
    /// Fingerprints of the base model and the data.
    pub identity: &'a Identity,
}

/// The directory of the checkpoint at `step`.
pub fn step_dir(ckpt_dir: &Path, step: u64) -> PathBuf {
    ckpt_dir.join(format!("step-{step:08}"))
}

/// The step a `step-N` directory name stands for.
fn step_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

/// Every `step-N` directory of `ckpt_dir`, oldest first (none when it does not exist).
pub fn step_dirs(ckpt_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut steps: Vec<(u64, PathBuf)> = crate::io::dir_entries(ckpt_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((step_of(&p)?, p)))
        .collect();
    steps.sort();
    Ok(steps)
}

/// The newest checkpoint that verifies. Each newer `step-N` entry that does
/// not is moved aside with a warning saying what was wrong with it.
pub fn newest_valid(ckpt_dir: &Path) -> Result<Option<Checkpoint>> {
    for (_, dir) in step_dirs(ckpt_dir)?.into_iter().rev() {
        match verify(&dir) {
            Ok(state) => return Ok(Some(Checkpoint { dir, state })),
            Err(why) => {
                let aside = move_aside(&dir)?;
                tracing::warn!("checkpoint {} is damaged ({why}); moved to {} and falling back to the one before", dir.display(), aside.display());
            }
        }
    }
    Ok(None)
}

/// Checks a checkpoint against its `state.json`; the error says what is wrong.
pub fn verify(dir: &Path) -> std::result::Result<State, String> {
    let text = match std::fs::read_to_string(dir.join(STATE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("{STATE} is missing")),
        Err(e) => return Err(format!("{STATE}: {e}")),
    };
    let state: State = serde_json::from_str(&text).map_err(|e| format!("{STATE} is malformed: {e}"))?;
    if step_of(dir) != Some(state.step) {
        return Err(format!("{STATE} says step {}", state.step));
    }
    for name in REQUIRED {
        if !state.files.iter().any(|f| f.name == *name) {
            return Err(format!("{STATE} does not list {name}"));
        }
    }
    for file in &state.files {
        check_file(dir, file)?;
    }
    Ok(state)
}

fn check_file(dir: &Path, file: &FileEntry) -> std::result::Result<(), String> {
    if file.name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(format!("{STATE} lists an unsafe path {:?}", file.name));
    }
    let path = dir.join(&file.name);
    let bytes = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("{} is missing", file.name)),
        Err(e) => return Err(format!("{}: {e}", file.name)),
    };
    if bytes != file.bytes {
        return Err(format!("{} has {bytes} bytes, {STATE} says {}", file.name, file.bytes));
    }
    let sha = sha256_file(&path).map_err(|e| format!("{e:#}"))?;
    if sha != file.sha256 {
        return Err(format!("{}: SHA-256 {} differs from the {} in {STATE}", file.name, short(&sha), short(&file.sha256)));
    }
    Ok(())
}

/// Renames a damaged checkpoint to `damaged-step-N` (`-2`, `-3`, .. when taken).
fn move_aside(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = dir.parent().unwrap_or(Path::new("."));
    let mut aside = parent.join(format!("damaged-{name}"));
    for n in 2.. {
        if !aside.exists() {
            break;
        }
        aside = parent.join(format!("damaged-{name}-{n}"));
    }
    std::fs::rename(dir, &aside).with_context(|| format!("cannot move the damaged checkpoint {} aside", dir.display()))?;
    Ok(aside)
}

/// Writes the checkpoint of `step` atomically (staged, then renamed) and keeps
/// the newest `keep_last`. A `step-N` directory already there is kept when it
/// verifies (saved a moment ago) and moved aside when it does not.
pub fn save(ckpt_dir: &Path, step: u64, params: &[(String, Tensor)], opt_state: &[(String, Tensor)], saved: &Saved, keep_last: usize) -> Result<()> {
    let dest = step_dir(ckpt_dir, step);
    let not_saved = || format!("checkpoint at step {step} not saved; the previous one is intact");
    if dest.is_dir() {
        match verify(&dest) {
            Ok(_) => return Ok(()),
            Err(why) => {
                let aside = move_aside(&dest).with_context(not_saved)?;
                tracing::warn!("a damaged {} was in the way ({why}); moved to {}", dest.display(), aside.display());
            }
        }
    }
    let staged = crate::io::StagedDir::new(&dest).with_context(not_saved)?;
    write_files(staged.path(), step, params, opt_state, saved).with_context(not_saved)?;
    staged.commit().with_context(not_saved)?;
    prune(ckpt_dir, keep_last)
}

fn write_files(dir: &Path, step: u64, params: &[(String, Tensor)], opt_state: &[(String, Tensor)], saved: &Saved) -> Result<()> {
    let detached: Vec<(String, Tensor)> = params.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // Hashed on another thread while the bytes go to disk, so a large
        // checkpoint takes about as long to save as to write.
        let (sha256, written) = std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_hex(bytes));
            let written = crate::io::write_atomic(&path, bytes);
            (hashing.join().expect("hashing does not panic"), written)
        });
        written?;
        files.push(FileEntry { name: name.to_string(), bytes: bytes.len() as u64, sha256 });
        Ok(())
    };
    put(TRAINABLE, &crate::model::weights::serialize(&detached)?)?;
    put(OPTIMIZER, &crate::model::weights::serialize(opt_state)?)?;
    put(CONFIG, saved.config_toml.as_bytes())?;
    put(METRICS, &read_or_empty(&saved.run_dir.join(METRICS))?)?;
    for name in event_files(&saved.run_dir.join(TENSORBOARD))? {
        put(&format!("{TENSORBOARD}/{name}"), &std::fs::read(saved.run_dir.join(TENSORBOARD).join(&name))?)?;
    }
    let state = State {
        step,
        total_steps: saved.total_steps,
        mode: saved.mode.to_string(),
        seed: saved.seed,
        identity: saved.identity.clone(),
        files,
    };
    crate::io::write_json_atomic(&dir.join(STATE), &state)
}

fn read_or_empty(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Names of the TensorBoard event files in `dir`, sorted (none when it does not exist).
fn event_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = crate::io::dir_entries(dir)?
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|n| n.starts_with("events.out.tfevents."))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes all but the newest `keep` checkpoints (0 keeps all).
fn prune(ckpt_dir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    for (_, p) in step_dirs(ckpt_dir)?.iter().rev().skip(keep) {
        std::fs::remove_dir_all(p).with_context(|| format!("cannot remove old checkpoint {}", p.display()))?;
    }
    Ok(())
}

/// Puts a checkpoint's tensors into `params` and its moments into `opt`.
pub fn restore(ckpt: &Checkpoint, params: &[(String, Tensor)], opt: &mut AdamW) -> Result<()> {
    let path = ckpt.dir.join(TRAINABLE);
    let saved = read_all(&path)?;
    tch::no_grad(|| -> Result<()> {
        for (name, p) in params {
            let t = saved.get(name).ok_or_else(|| crate::error::usage(format!("{}: lacks tensor {name}", path.display())))?;
            if t.size() != p.size() {
                crate::bail_usage!("{}: tensor {name} has shape {:?}, the run's is {:?}", path.display(), t.size(), p.size());
            }
            p.shallow_clone().copy_(t);
        }
        Ok(())
    })?;
    let path = ckpt.dir.join(OPTIMIZER);
    opt.load_state(read_all(&path)?, ckpt.state.step as i64).with_context(|| path.display().to_string())
}

fn read_all(path: &Path) -> Result<HashMap<String, Tensor>> {
    let w = Weights::open_files(&[path.to_path_buf()], tch::Device::Cpu, Kind::Float)?;
    w.names().into_iter().map(|n| Ok((n.clone(), w.read(&n)?.1))).collect()
}

/// Makes the run's `metrics.jsonl` and `tb/` exactly the copies kept in
/// `ckpt` (empty without one), so that the log ends at the checkpoint's step.
/// Returns whether the live `metrics.jsonl` had lost lines the copy holds.
pub fn restore_logs(run_dir: &Path, ckpt: Option<&Checkpoint>) -> Result<bool> {
    let copy = match ckpt {
        Some(c) => std::fs::read(c.dir.join(METRICS)).with_context(|| format!("cannot read {}", c.dir.join(METRICS).display()))?,
        None => Vec::new(),
    };
    let live_path = run_dir.join(METRICS);
    let lost = !read_or_empty(&live_path)?.starts_with(&copy);
    crate::io::write_atomic(&live_path, &copy)?;
    let tb = run_dir.join(TENSORBOARD);
    for name in event_files(&tb)? {
        std::fs::remove_file(tb.join(&name)).with_context(|| format!("cannot remove {}", tb.join(&name).display()))?;
    }
    if let Some(c) = ckpt {
        for name in event_files(&c.dir.join(TENSORBOARD))? {
            std::fs::create_dir_all(&tb).with_context(|| format!("cannot create {}", tb.display()))?;
            let bytes = std::fs::read(c.dir.join(TENSORBOARD).join(&name))?;
            crate::io::write_atomic(&tb.join(&name), &bytes)?;
        }
    }
    Ok(lost)
}
