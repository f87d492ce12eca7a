//! Pretokenized JSONL: one `{"input_ids": [...], "labels": [...]}` object per line,
//! `labels` optional (-100 = no loss).

use anyhow::Result;
use serde::Deserialize;
use std::path::Path;

use crate::error::OrUsage;

/// One training or evaluation sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Per-token labels: the token itself, or -100 where no loss is taken.
    pub labels: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    input_ids: Vec<i64>,
    #[serde(default)]
    labels: Option<Vec<i64>>,
}

/// Reads and checks a pretokenized JSONL file against a vocabulary of `vocab_size`.
pub fn read_jsonl(path: &Path, vocab_size: i64) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).or_usage(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let rec: Line = match serde_json::from_str(line) {
            Ok(rec) => rec,
            Err(_) if serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("messages").is_some()) => {
                crate::bail_usage!("{}: chat data (`messages`), not token ids: `l2d prepare` turns it into shards", at())
            }
            Err(e) => crate::bail_usage!("{}: expected {{\"input_ids\": [..], \"labels\": [..] (optional)}}: {e}", at()),
        };
        if rec.input_ids.len() < 2 {
            crate::bail_usage!("{}: input_ids needs at least 2 tokens", at());
        }
        if let Some(bad) = rec.input_ids.iter().find(|&&id| id < 0 || id >= vocab_size) {
            crate::bail_usage!("{}: token id {bad} is outside the model's vocabulary (size {vocab_size})", at());
        }
        let labels = rec.labels.unwrap_or_else(|| rec.input_ids.clone());
        if labels.len() != rec.input_ids.len() {
            crate::bail_usage!("{}: labels has {} entries, input_ids {}", at(), labels.len(), rec.input_ids.len());
        }
        if let Some(bad) = labels.iter().find(|&&l| l != -100 && (l < 0 || l >= vocab_size)) {
            crate::bail_usage!("{}: label {bad} is neither -100 nor a token id", at());
        }
        out.push(Example { input_ids: rec.input_ids, labels });
    }
    if out.is_empty() {
        crate::bail_usage!("{} holds no examples", path.display());
    }
    Ok(out)
}
