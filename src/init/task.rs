//! `l2d init --task`: a bundled task with exact answers, generated from a seed.
//!
//! The demo needs data that a tiny LM can learn on a CPU in minutes and still
//! gets wrong often enough for extra test-time compute to matter. A chain of
//! additions modulo 10, worked out one running total at a time, is such a
//! task: every step is a one-digit lookup the model learns quickly, but one
//! slip anywhere in the chain spoils the final answer.
//!
//! The directory holds the training data as chat records (`train.jsonl`,
//! `valid.jsonl`, for `l2d prepare`) and the evaluated items in GSM8K's layout
//! (`valid-eval.jsonl`, `test.jsonl`), so that the `gsm8k` scorer, which reads
//! the number after `####`, scores them unchanged.

use anyhow::Result;
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::rng::SplitMix64;

/// A bundled task `l2d init --task` can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Sum a chain of digits modulo 10, one worked step per addition.
    ModSum,
}

impl Task {
    /// Every task, in the order the CLI lists them.
    pub const ALL: [Task; 1] = [Task::ModSum];

    /// Parses the `--task` value.
    pub fn parse(s: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| crate::error::usage(format!("unknown task '{s}' (expected modsum)")))
    }

    /// The `--task` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ModSum => "modsum",
        }
    }

    /// How many different questions the task can ask.
    fn distinct_questions(self) -> usize {
        match self {
            Task::ModSum => 10usize.pow(MODSUM_ADDITIONS as u32 + 1),
        }
    }

    /// One random item: its question and its worked answer ending in `#### N`.
    fn item(self, rng: &mut SplitMix64) -> Item {
        match self {
            Task::ModSum => modsum_item(rng),
        }
    }
}

/// Additions in a `modsum` chain. One fixed length: the k-th running total
/// then sits at a fixed distance from the digit it adds, which a tiny model
/// learns; with 3 to 5 additions it stayed at chance after 5,000 steps
/// (docs/demo.md).
const MODSUM_ADDITIONS: usize = 4;

/// A question and its worked answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    question: String,
    answer: String,
}

fn modsum_item(rng: &mut SplitMix64) -> Item {
    let digits: Vec<u64> = (0..=MODSUM_ADDITIONS).map(|_| rng.range(0, 9)).collect();
    let terms: Vec<String> = digits.iter().map(u64::to_string).collect();
    // The worked answer lists the running total after each addition: short,
    // so that generation stays cheap, yet one token per intermediate step.
    let running: Vec<u64> = digits[1..]
        .iter()
        .scan(digits[0], |total, d| {
            *total = (*total + d) % 10;
            Some(*total)
        })
        .collect();
    let steps: Vec<String> = running.iter().map(u64::to_string).collect();
    let total = running.last().copied().unwrap_or(digits[0]);
    Item {
        question: format!("Add mod 10: {}", terms.join(" + ")),
        answer: format!("{} #### {total}", steps.join(" ")),
    }
}

/// What `l2d init --task` was asked to produce.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// Which task.
    pub task: Task,
    /// Destination directory; must not exist yet.
    pub out: PathBuf,
    /// Seed of the item generator: the same seed gives the same bytes.
    pub seed: u64,
    /// Items in `train.jsonl`.
    pub train: usize,
    /// Items in `valid.jsonl` and (the same ones) `valid-eval.jsonl`.
    pub valid: usize,
    /// Items in `test.jsonl`.
    pub test: usize,
}

/// Writes the task directory `opts.out` atomically: whole or not at all.
pub fn init_task_dir(opts: &TaskOptions) -> Result<()> {
    let [train, valid, test] = distinct_splits(opts)?;
    let staged = crate::io::StagedDir::new(&opts.out)?;
    let dir = staged.path();
    write_jsonl(dir, "train.jsonl", &train, chat_record)?;
    write_jsonl(dir, "valid.jsonl", &valid, chat_record)?;
    write_jsonl(dir, "valid-eval.jsonl", &valid, gsm8k_record)?;
    write_jsonl(dir, "test.jsonl", &test, gsm8k_record)?;
    staged.commit()?;
    Ok(())
}

/// Draws the three splits from one stream, skipping repeated questions, so
/// that no test question was seen in training.
fn distinct_splits(opts: &TaskOptions) -> Result<[Vec<Item>; 3]> {
    let wanted = opts.train + opts.valid + opts.test;
    // Drawing at most half of the question space keeps the rejection of
    // repeats cheap; more would be a near-exhaustive enumeration anyway.
    let most = opts.task.distinct_questions() / 2;
    if wanted > most {
        crate::bail_usage!(
            "--train/--valid/--test: task {} has too few distinct questions for {wanted} items (at most {most})",
            opts.task.as_str()
        );
    }
    let mut rng = SplitMix64::for_label(opts.seed, opts.task.as_str());
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(wanted);
    while items.len() < wanted {
        let item = opts.task.item(&mut rng);
        if seen.insert(item.question.clone()) {
            items.push(item);
        }
    }
    let test = items.split_off(opts.train + opts.valid);
    let valid = items.split_off(opts.train);
    Ok([items, valid, test])
}

fn chat_record(item: &Item) -> serde_json::Value {
    json!({"messages": [
        {"role": "user", "content": item.question},
        {"role": "assistant", "content": item.answer},
    ]})
}

fn gsm8k_record(item: &Item) -> serde_json::Value {
    json!({"question": item.question, "answer": item.answer})
}

fn write_jsonl(
    dir: &Path,
    name: &str,
    items: &[Item],
    record: fn(&Item) -> serde_json::Value,
) -> Result<()> {
    let records: Vec<serde_json::Value> = items.iter().map(record).collect();
    super::write(dir, name, &crate::io::json_lines(&records)?)
}
