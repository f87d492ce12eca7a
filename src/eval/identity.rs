//! The identity of an eval run, kept beside its journal so that a resumed run cannot mix
//! completions of another model, checkpoint, setting or prompt under the same labels.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The file beside `examples.jsonl` that holds the run's identity.
pub const IDENTITY_FILE: &str = "journal-identity.json";

/// The SHA-256 of a task's prompts, in item order: any change of data, shots, template or tokenizer shows.
pub fn prompts_sha256<'a>(prompts: impl Iterator<Item = &'a [i64]>) -> String {
    let mut h = Sha256::new();
    for ids in prompts {
        h.update((ids.len() as u64).to_le_bytes());
        for id in ids {
            h.update(id.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// Checks `identity` against the one recorded in `dir` when the journal there has completions
/// (`resuming`), else records it. A difference is a usage error naming every differing key as
/// `old → new`; nothing is written then.
pub fn check_or_record(dir: &Path, identity: &Value, resuming: bool) -> Result<()> {
    let path = dir.join(IDENTITY_FILE);
    if resuming {
        let old = read(&path)?;
        let differences = differences(&old, identity);
        if !differences.is_empty() {
            crate::bail_usage!(
                "--out {}: holds completions of another run ({}); use another --out, or the same settings to resume",
                dir.display(),
                differences.join("; ")
            );
        }
        return Ok(());
    }
    crate::io::write_json_atomic(&path, identity)
}

fn read(path: &Path) -> Result<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::bail_usage!(
            "{}: missing, so the completions beside it cannot be matched to this run; use another --out",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text).map_err(|e| crate::error::usage(format!("{}: malformed JSON: {e}", path.display())))
}

/// `key: old → new` for every leaf that differs, keys dotted (`generate.temperature`).
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    let (old, new) = (leaves(old), leaves(new));
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(none)".into());
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| format!("{k}: {} → {}", shown(old.get(k)), shown(new.get(k))))
        .collect()
}

/// Every scalar and array of `value` under its dotted path, as JSON text.
fn leaves(value: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, child, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_each_leaf() {
        let old = json!({"generate": {"temperature": 1.0, "seed": 0}, "l2d": null, "protocol": "paper"});
        let new = json!({"generate": {"temperature": 0.5, "seed": 0}, "l2d": {"path": "ck"}, "protocol": "paper"});
        assert_eq!(
            differences(&old, &new),
            ["generate.temperature: 1.0 → 0.5", "l2d: null → (none)", "l2d.path: (none) → \"ck\""]
        );
        assert!(differences(&old, &old).is_empty());
    }
}
