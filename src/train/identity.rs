//! What makes a training run itself, and what a resumed run may change.
//!
//! A run is defined by its base model, its data and every config key that
//! shapes what is trained: mode, L2D or LoRA shape, seed, batch and
//! micro-batch, `max_seq_len`, the optimizer. `--resume` may change only how
//! far the run goes, how often it evaluates, saves and logs, and the
//! learning-rate schedule; each such change is a warning and a `config_change`
//! record in `metrics.jsonl`, as is a change of `train.zero`. Anything else is refused. Nothing here depends
//! on the number of processes.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::data::shards::{sha256_file, short};
use crate::l2d::checkpoint::BaseIdentity;

/// Keys a resumed run may change: its length, its cadence and its learning-rate schedule.
const RESUMABLE: &[&str] = &[
    "train.max_steps",
    "train.stop_at_step",
    "train.epochs",
    "train.eval_every",
    "train.eval_max_batches",
    "train.save_every",
    "train.log_every",
    "train.keep_last",
    "train.lr",
    "train.final_lr",
    "train.warmup_steps",
    "train.warmup_type",
    "train.decay",
    "train.out",
];
/// Sections training never reads, or (`dist.`) that change how ranks talk,
/// not what they compute: a run may resume on another launch.
const UNUSED_BY_TRAINING: &[&str] = &["generate.", "eval.", "dist."];
/// Keys that change how ranks hold the optimizer state, not what is
/// computed (ZeRO-1 checkpoints hold the whole state, like unsharded ones).
const STATE_LAYOUT: &[&str] = &["train.zero"];
/// Keys that locate the base model and the data: a new place holding the same
/// files (by fingerprint) is the same run.
const LOCATIONS: &[&str] = &["model.path", "data.out"];

/// Fingerprints of what a run trains on, kept in each checkpoint's `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The base model's config and tensor fingerprints, as `l2d.json` records them.
    pub base: BaseIdentity,
    /// SHA-256 of the base model's `tokenizer.json` (none without one).
    pub tokenizer_sha256: Option<String>,
    /// SHA-256 of the shard directory's `manifest.json` (which lists every
    /// shard's SHA-256), or of a pretokenized JSONL file.
    pub data_sha256: String,
}

impl Identity {
    /// The fingerprints of the model directory `model_dir` and the data at `data`.
    pub fn of(model_dir: &Path, data: &Path) -> Result<Self> {
        let tokenizer = model_dir.join("tokenizer.json");
        let data_file = if data.is_dir() { data.join(crate::data::shards::MANIFEST) } else { data.to_path_buf() };
        Ok(Self {
            base: BaseIdentity::of_dir(model_dir)?,
            tokenizer_sha256: tokenizer.is_file().then(|| sha256_file(&tokenizer)).transpose()?,
            data_sha256: sha256_file(&data_file)?,
        })
    }

    /// Each fingerprint that differs, as `what: old → new`.
    fn differences(&self, new: &Self, cfg: &Config) -> Vec<String> {
        fn opt(s: &Option<String>) -> &str {
            s.as_deref().map_or("none", short)
        }
        let mut out = Vec::new();
        let model = format!("base model (model.path = {})", cfg.model.path);
        if self.base.config_sha256 != new.base.config_sha256 {
            out.push(format!("{model} config sha256: {} → {}", short(&self.base.config_sha256), short(&new.base.config_sha256)));
        }
        if self.base.tensors_sha256 != new.base.tensors_sha256 {
            out.push(format!("{model} tensor checksum: {} → {}", short(&self.base.tensors_sha256), short(&new.base.tensors_sha256)));
        }
        if self.tokenizer_sha256 != new.tokenizer_sha256 {
            out.push(format!("{model} tokenizer sha256: {} → {}", opt(&self.tokenizer_sha256), opt(&new.tokenizer_sha256)));
        }
        if self.data_sha256 != new.data_sha256 {
            let data = cfg.data.out.as_deref().unwrap_or("");
            out.push(format!("data (data.out = {data}) sha256: {} → {}", short(&self.data_sha256), short(&new.data_sha256)));
        }
        out
    }
}

/// One config key a resumed run changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Dotted key, e.g. `train.lr`.
    pub key: String,
    /// The value the run had.
    pub old: Value,
    /// The value it continues with.
    pub new: Value,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.key, shown(&self.old), shown(&self.new))
    }
}

/// The `config_change` record of `changes` at `step`, for `metrics.jsonl`.
pub fn change_record(step: u64, changes: &[Change]) -> Value {
    let changed: serde_json::Map<String, Value> =
        changes.iter().map(|c| (c.key.clone(), serde_json::json!({"old": c.old, "new": c.new}))).collect();
    serde_json::json!({"step": step, "config_change": changed})
}

/// Checks that `new` continues the run `out` that was trained with `old` (and,
/// once it has a checkpoint, on the files fingerprinted as `old_identity`).
/// Returns the changes a resume may make; refuses (usage error) every other
/// difference, naming each key with `old → new`.
pub fn check_resume(old: &Config, new: &Config, old_identity: Option<&Identity>, new_identity: &Identity, out: &Path) -> Result<Vec<Change>> {
    let (old_keys, new_keys) = (flatten(old), flatten(new));
    let keys: std::collections::BTreeSet<&String> = old_keys.keys().chain(new_keys.keys()).collect();
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for key in keys {
        let (o, n) = (old_keys.get(key).unwrap_or(&Value::Null), new_keys.get(key).unwrap_or(&Value::Null));
        if o == n {
            continue;
        }
        let change = Change { key: key.clone(), old: o.clone(), new: n.clone() };
        if may_change(key) {
            allowed.push(change);
        } else {
            refused.push(change.to_string());
        }
    }
    if let Some(old_identity) = old_identity {
        refused.extend(old_identity.differences(new_identity, new));
    }
    if !refused.is_empty() {
        crate::bail_usage!(
            "--resume: {} was trained with another {}: {}; only train.max_steps, stop_at_step, epochs, the eval/save/log/keep cadence and the learning-rate schedule may change on resume; start a new run with another --out instead",
            out.display(),
            if refused.len() == 1 { "setting" } else { "settings" },
            refused.join(", ")
        );
    }
    Ok(allowed)
}

fn may_change(key: &str) -> bool {
    RESUMABLE.contains(&key) || STATE_LAYOUT.contains(&key) || LOCATIONS.contains(&key) || UNUSED_BY_TRAINING.iter().any(|s| key.starts_with(s))
}

/// Every leaf of the config by its dotted key (arrays are leaves).
fn flatten(cfg: &Config) -> BTreeMap<String, Value> {
    crate::config::dotted_leaves(&serde_json::to_value(cfg).expect("a Config always serialises"))
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            base: BaseIdentity { config_sha256: "c".repeat(64), tensors_sha256: "t".repeat(64) },
            tokenizer_sha256: Some("k".repeat(64)),
            data_sha256: "d".repeat(64),
        }
    }

    #[test]
    fn schedule_and_cadence_may_change_and_are_reported() {
        let old = Config::default();
        let mut new = old.clone();
        new.train.lr = 5e-5;
        new.train.max_steps = Some(10);
        new.generate.temperature = 0.5;
        let changes = check_resume(&old, &new, Some(&identity()), &identity(), Path::new("run")).unwrap();
        let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["generate.temperature: 1.0 → 0.5", "train.lr: 0.0001 → 0.00005", "train.max_steps: unset → 10"]);
        let rec = change_record(7, &changes);
        assert_eq!(rec["config_change"]["train.max_steps"], serde_json::json!({"old": null, "new": 10}));
    }

    #[test]
    fn identity_changes_are_refused_naming_each() {
        let old = Config::default();
        let mut new = old.clone();
        new.train.seed = 1;
        new.l2d.lora_rank = 16;
        new.train.lr = 1e-3;
        let mut other = identity();
        other.data_sha256 = "e".repeat(64);
        let err = check_resume(&old, &new, Some(&identity()), &other, Path::new("run")).unwrap_err();
        let msg = err.to_string();
        for needle in ["l2d.lora_rank: 32 → 16", "train.seed: 0 → 1", "data (data.out = ) sha256: dddddddddddd → eeeeeeeeeeee", "another --out"] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        assert!(!msg.contains("train.lr:"), "{msg}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }

    #[test]
    fn a_moved_model_with_the_same_fingerprints_is_the_same_run() {
        let old = Config::default();
        let mut new = old.clone();
        new.model.path = "elsewhere".into();
        let changes = check_resume(&old, &new, Some(&identity()), &identity(), Path::new("run")).unwrap();
        assert_eq!(changes.len(), 1);
        let mut other = identity();
        other.base.tensors_sha256 = "u".repeat(64);
        let msg = check_resume(&old, &new, Some(&identity()), &other, Path::new("run")).unwrap_err().to_string();
        assert!(msg.contains("base model (model.path = elsewhere) tensor checksum: tttttttttttt → uuuuuuuuuuuu"), "{msg}");
    }
}
