//! The paper's six benchmarks (spec §10): their records, their 5-shot chat
//! prompts and what a correct answer is.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use super::records::read_records;
use super::Protocol;

pub mod prompts;
mod parse;

use parse::parse_item;

/// A benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Task {
    /// Grade-school maths word problems; a number.
    #[serde(rename = "gsm8k")]
    Gsm8k,
    /// Competition maths; a LaTeX expression in `\boxed{}`.
    #[serde(rename = "math")]
    Math,
    /// 57-subject multiple choice, A–D.
    #[serde(rename = "mmlu")]
    Mmlu,
    /// Harder multiple choice, up to ten options A–J.
    #[serde(rename = "mmlu_pro")]
    MmluPro,
    /// Python functions from docstrings, run against hidden tests.
    #[serde(rename = "humaneval")]
    HumanEval,
    /// Short Python programs from a description, run against asserts.
    #[serde(rename = "mbpp")]
    Mbpp,
}

impl Task {
    /// Every task, in the paper's order.
    pub const ALL: [Task; 6] = [Task::Gsm8k, Task::Math, Task::Mmlu, Task::MmluPro, Task::HumanEval, Task::Mbpp];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k",
            Task::Math => "math",
            Task::Mmlu => "mmlu",
            Task::MmluPro => "mmlu_pro",
            Task::HumanEval => "humaneval",
            Task::Mbpp => "mbpp",
        }
    }

    /// Whether answers are programs scored by running tests (pass@k) rather than compared (accuracy).
    pub fn is_code(self) -> bool {
        matches!(self, Task::HumanEval | Task::Mbpp)
    }

    /// Generation budget per answer: 512 tokens for code, 256 otherwise.
    pub fn max_new_tokens(self) -> usize {
        if self.is_code() {
            512
        } else {
            256
        }
    }

    /// Worked examples shown before each question: 5; in the clean protocol HumanEval has none, as it
    /// has no split to draw them from (the paper's draws HumanEval/0-4 and skips them as questions).
    pub fn num_shots(self, protocol: Protocol) -> usize {
        if self == Task::HumanEval && protocol == Protocol::Clean {
            0
        } else {
            5
        }
    }

    /// The fields every record must have (MBPP also needs `text` or `prompt`).
    pub fn required(self) -> &'static [&'static str] {
        match self {
            Task::Gsm8k => &["question", "answer"],
            Task::Math => &["problem", "solution"],
            Task::Mmlu => &["question", "subject", "choices", "answer"],
            Task::MmluPro => &["question", "options", "answer", "category"],
            Task::HumanEval => &["task_id", "prompt", "canonical_solution", "test", "entry_point"],
            Task::Mbpp => &["task_id", "code", "test_list"],
        }
    }

    /// The record fields the loader reads, for schema errors.
    pub fn fields(self) -> &'static str {
        match self {
            Task::Gsm8k => "question, answer (ending `#### N`)",
            Task::Math => "problem, solution (with \\boxed{}); optional answer, level, type",
            Task::Mmlu => "question, subject, choices (list), answer (0-3); or CSV rows question,A,B,C,D,letter",
            Task::MmluPro => "question, options (list), answer (letter), category; optional question_id, cot_content",
            Task::HumanEval => {
                "task_id, prompt, canonical_solution, test, entry_point (openai_humaneval); \
                 instructhumaneval adds signature, docstring, context, instruction"
            }
            Task::Mbpp => "task_id, text, code, test_list (list); optional test_setup_code",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Task, String> {
        Task::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
            format!("unknown task {s:?} (expected one of {})", names.join(", "))
        })
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an answer is judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// GSM8K: the extracted number equals the reference numerically.
    Number,
    /// MATH: the extracted expression equals the reference after normalisation.
    Math,
    /// MMLU and MMLU-Pro: the first option letter, out of `options`.
    Choice {
        /// How many options the question has.
        options: usize,
    },
    /// HumanEval: prompt + completion + test + `check(entry_point)` must run cleanly.
    HumanEval {
        /// The function signature and docstring the completion continues.
        prompt: String,
        /// Source defining `check(candidate)`.
        test: String,
        /// The function under test.
        entry_point: String,
        /// instructhumaneval's user turn: "Write a function {signature} to solve the following problem:\n{docstring}".
        instruction: String,
        /// instructhumaneval's assistant turn: the prompt's imports and helpers up to the `def` line.
        context: String,
    },
    /// MBPP: setup + completion + the asserts must run cleanly.
    Mbpp {
        /// Code run before the completion (imports, helpers).
        setup: String,
        /// The `assert` lines.
        tests: Vec<String>,
    },
}

/// One benchmark question.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// `task_id` as in the dataset, or the 0-based record index where the dataset has none.
    pub id: String,
    /// The question, problem, description or function prompt.
    pub question: String,
    /// Multiple-choice options, in letter order; empty otherwise.
    pub options: Vec<String>,
    /// The dataset's worked answer: shown when the item is a shot, and a known-good completion.
    pub solution: String,
    /// Subject or category, which decides the shots for MMLU and MMLU-Pro.
    pub group: Option<String>,
    /// The expected answer as text (number, expression, letter, or the reference program).
    pub reference: String,
    /// How a completion is judged.
    pub check: Check,
}

/// A benchmark file (or directory) read into items.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The benchmark.
    pub task: Task,
    /// Where it was read from, as given.
    pub source: String,
    /// The questions, in file order.
    pub items: Vec<Item>,
    /// Position of each id in `items`.
    index: HashMap<String, usize>,
}

impl Dataset {
    /// Reads `path` as `task`; `key` (a flag or config key) prefixes the errors.
    pub fn load(task: Task, path: &Path, key: &str) -> Result<Dataset> {
        let records = read_records(path, key)?;
        if records.is_empty() {
            crate::bail_usage!("{key}: {}: empty dataset (no records)", path.display());
        }
        let mut index = HashMap::new();
        let mut items = Vec::with_capacity(records.len());
        for (i, rec) in records.iter().enumerate() {
            let item = parse_item(task, rec, i)?;
            if index.insert(item.id.clone(), i).is_some() {
                crate::bail_usage!("{}: duplicate task_id {:?}", rec.loc, item.id);
            }
            items.push(item);
        }
        Ok(Dataset { task, source: path.display().to_string(), items, index })
    }

    /// A dataset of no items (a placeholder while one is rebuilt).
    pub fn empty(task: Task) -> Dataset {
        Dataset { task, source: String::new(), items: Vec::new(), index: HashMap::new() }
    }

    /// The items for which `keep` holds, in order.
    pub fn retain(mut self, keep: impl Fn(&Item) -> bool) -> Dataset {
        self.items.retain(keep);
        self.index = self.items.iter().enumerate().map(|(i, item)| (item.id.clone(), i)).collect();
        self
    }

    /// Where the item with this id is in `items`.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The item with this id.
    pub fn get(&self, id: &str) -> Option<&Item> {
        self.index.get(id).map(|&i| &self.items[i])
    }
}

/// The option letter of 0-based index `i`.
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}
