//! The paper's six benchmarks (spec §10): their records, their 5-shot chat
//! prompts and what a correct answer is.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::extract;
use super::records::{read_records, Record};
use super::Protocol;
use crate::data::chat::Message;

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

// ---------------------------------------------------------------- prompts

/// Up to `k` shots for `item` from `pool` (the task's shot split), per spec §10
/// (`k` = [`Task::num_shots`] by default).
///
/// GSM8K: the first five; MATH: five evenly spaced; MMLU / MMLU-Pro: the first five of the same
/// subject or category; MBPP: the first five with task ids 1–10; HumanEval: none (clean) or the
/// first five (paper). Clean: an item never serves as its own shot, and MATH spaces the shots over
/// what remains. Paper: as the reference, `pool[i * (len / k)]` for MATH and no exclusion (the
/// reference skips a HumanEval or MBPP item that is a shot instead, see [`is_shot`]).
/// Fewer come back when the pool has fewer that fit.
pub fn select_shots<'a>(protocol: Protocol, task: Task, item: &Item, pool: &'a [Item], k: usize) -> Vec<&'a Item> {
    let fits = |s: &Item| match task {
        Task::Mmlu | Task::MmluPro => s.group == item.group,
        Task::Mbpp => s.id.parse::<u32>().is_ok_and(|id| (1..=10).contains(&id)),
        _ => true,
    };
    let own = |s: &Item| protocol == Protocol::Clean && s.question == item.question;
    let eligible: Vec<&Item> = pool.iter().filter(|s| !own(s) && fits(s)).collect();
    let k = k.min(eligible.len());
    match (task, protocol) {
        (Task::Math, Protocol::Clean) => (0..k).map(|i| eligible[i * eligible.len() / k]).collect(),
        (Task::Math, Protocol::Paper) => (0..k).map(|i| eligible[i * (eligible.len() / k)]).collect(),
        _ => eligible[..k].to_vec(),
    }
}

/// Whether `item` is one of its own `shots` by its user turn: the paper's protocol skips such
/// HumanEval and MBPP items (`tasks/humaneval.py:128-129`, `tasks/mbpp.py:59-60`), leaving 159 of
/// HumanEval's 164 problems.
pub fn is_shot(protocol: Protocol, task: Task, item: &Item, shots: &[&Item]) -> bool {
    protocol == Protocol::Paper
        && task.is_code()
        && shots.iter().any(|s| user_turn(protocol, task, s) == user_turn(protocol, task, item))
}

/// The chat for `item`: each shot as a user turn and its worked answer, then the question; no system
/// prompt. Paper HumanEval ends with a partial assistant turn (the `def` line) that the model continues.
pub fn build_messages(protocol: Protocol, task: Task, item: &Item, shots: &[&Item]) -> Vec<Message> {
    let mut messages = Vec::with_capacity(2 * shots.len() + 2);
    for shot in shots {
        messages.push(Message::new("user", user_turn(protocol, task, shot)));
        messages.push(Message::new("assistant", assistant_turn(protocol, task, shot)));
    }
    messages.push(Message::new("user", user_turn(protocol, task, item)));
    if let (Protocol::Paper, Check::HumanEval { context, .. }) = (protocol, &item.check) {
        messages.push(Message::new("assistant", context.clone()));
    }
    messages
}

/// What the user says for `item`.
pub fn user_turn(protocol: Protocol, task: Task, item: &Item) -> String {
    match protocol {
        Protocol::Paper => paper_user_turn(task, item),
        Protocol::Clean => clean_user_turn(task, item),
    }
}

/// What the assistant answers when `item` is a shot.
pub fn assistant_turn(protocol: Protocol, task: Task, item: &Item) -> String {
    match protocol {
        Protocol::Paper => paper_assistant_turn(task, item),
        Protocol::Clean => clean_assistant_turn(task, item),
    }
}

/// The reference's user turns (`tasks/*.py`): MMLU's jinja2 template `Question:\n{q}\nChoices:\n` +
/// `L. choice\n` per option + `\nAnswer:`; MMLU-Pro's the same without `\nAnswer:` (jinja2 drops the
/// template's final newline); MBPP's docstring block with the first test; HumanEval's instruction.
fn paper_user_turn(task: Task, item: &Item) -> String {
    match (task, &item.check) {
        (Task::Mmlu | Task::MmluPro, _) => {
            let choices: String = item.options.iter().enumerate().map(|(i, o)| format!("{}. {o}\n", letter(i))).collect();
            let answer = if task == Task::Mmlu { "\nAnswer:" } else { "" };
            format!("Question:\n{}\nChoices:\n{choices}{answer}", item.question)
        }
        (Task::HumanEval, Check::HumanEval { instruction, .. }) => instruction.clone(),
        (Task::Mbpp, Check::Mbpp { tests, .. }) => {
            format!("\"\"\"\n{}\n{}\n\"\"\"\n", item.question, tests.first().map_or("", String::as_str))
        }
        _ => item.question.clone(),
    }
}

/// The reference's shot answers: GSM8K's verbatim (calculator annotations kept), bare letters for
/// MMLU and MMLU-Pro, HumanEval's `context + canonical_solution`, MBPP's code without fences.
fn paper_assistant_turn(task: Task, item: &Item) -> String {
    match (task, &item.check) {
        (Task::Mmlu | Task::MmluPro, _) => item.reference.clone(),
        (Task::HumanEval, Check::HumanEval { context, .. }) => format!("{context}{}", item.solution),
        _ => item.solution.clone(),
    }
}

fn clean_user_turn(task: Task, item: &Item) -> String {
    match (task, &item.check) {
        (Task::Mmlu | Task::MmluPro, _) => {
            let options: Vec<String> =
                item.options.iter().enumerate().map(|(i, o)| format!("{}. {o}", letter(i))).collect();
            format!("{}\n\n{}", item.question, options.join("\n"))
        }
        (Task::HumanEval, _) => format!("Complete the following Python function.\n```python\n{}```", item.question),
        (Task::Mbpp, Check::Mbpp { tests, .. }) => {
            format!("{}\nYour code should pass this test:\n{}", item.question, tests.first().map_or("", String::as_str))
        }
        _ => item.question.clone(),
    }
}

fn clean_assistant_turn(task: Task, item: &Item) -> String {
    match task {
        // `<<48/2=24>>` are calculator annotations of the dataset, not part of the reasoning.
        Task::Gsm8k => strip_calculator(&item.solution),
        Task::Mmlu | Task::MmluPro if item.solution.is_empty() => format!("The answer is ({}).", item.reference),
        Task::HumanEval | Task::Mbpp => format!("```python\n{}\n```", item.solution.trim_end()),
        _ => item.solution.clone(),
    }
}

fn strip_calculator(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("<<") {
        let Some(end) = rest[p..].find(">>") else { break };
        out.push_str(&rest[..p]);
        rest = &rest[p + end + 2..];
    }
    out.push_str(rest);
    out
}

/// The option letter of 0-based index `i`.
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

// ---------------------------------------------------------------- records

fn parse_item(task: Task, rec: &Record, index: usize) -> Result<Item> {
    if task == Task::Mmlu && rec.value.is_array() {
        return mmlu_csv(rec, index);
    }
    let f = Fields { task, rec };
    f.check_required()?;
    match task {
        Task::Gsm8k => gsm8k(&f, index),
        Task::Math => math(&f, index),
        Task::Mmlu => mmlu(&f, index),
        Task::MmluPro => mmlu_pro(&f, index),
        Task::HumanEval => humaneval(&f),
        Task::Mbpp => mbpp(&f),
    }
}

/// Typed access to a record's fields; every failure names the location, the field and the schema.
struct Fields<'a> {
    task: Task,
    rec: &'a Record,
}

impl Fields<'_> {
    fn error(&self, detail: impl std::fmt::Display) -> anyhow::Error {
        crate::error::usage(format!(
            "{}: {detail}; {} records need the fields {}",
            self.rec.loc,
            self.task,
            self.task.fields()
        ))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.rec.value.as_object()?.get(name).filter(|v| !v.is_null())
    }

    fn str(&self, name: &str) -> Result<String> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.error(format!("field `{name}` is not a string"))),
            None => Err(self.missing(name)),
        }
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>> {
        self.get(name).map(|_| self.str(name)).transpose()
    }

    fn strings(&self, name: &str) -> Result<Vec<String>> {
        let Some(v) = self.get(name) else { return Err(self.missing(name)) };
        let list =
            v.as_array().and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>());
        list.ok_or_else(|| self.error(format!("field `{name}` is not a list of strings")))
    }

    /// Names every missing required field at once, so one run shows the whole mismatch.
    fn check_required(&self) -> Result<()> {
        let missing: Vec<String> =
            self.task.required().iter().filter(|n| self.get(n).is_none()).map(|n| format!("`{n}`")).collect();
        let other = Task::ALL.into_iter().find(|&t| t != self.task && t.required().iter().all(|n| self.get(n).is_some()));
        let found = other.map_or(String::new(), |t| format!(" (this is a {t} record: it has {})", t.required().join(", ")));
        match missing.len() {
            0 => Ok(()),
            _ if !self.rec.value.is_object() => Err(self.error("not a JSON object")),
            1 => Err(self.error(format!("missing field {}{found}", missing[0]))),
            _ => Err(self.error(format!("missing fields {}{found}", missing.join(", ")))),
        }
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        if self.rec.value.is_object() {
            self.error(format!("missing field `{name}`"))
        } else {
            self.error("not a JSON object")
        }
    }

    /// A string or integer id under one of `names`, else the record index.
    fn id(&self, names: &[&str], index: usize) -> Result<String> {
        match names.iter().find_map(|n| self.get(n).map(|v| (n, v))) {
            Some((_, Value::String(s))) => Ok(s.clone()),
            Some((_, Value::Number(n))) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
            Some((n, _)) => Err(self.error(format!("field `{n}` is neither a string nor an integer"))),
            None => Ok(index.to_string()),
        }
    }

    fn required_id(&self, name: &str) -> Result<String> {
        if self.get(name).is_none() {
            return Err(self.missing(name));
        }
        self.id(&[name], 0)
    }
}

fn gsm8k(f: &Fields, index: usize) -> Result<Item> {
    let question = f.str("question")?;
    let solution = f.str("answer")?;
    let reference = solution
        .split_once("####")
        .and_then(|(_, after)| extract::gsm8k_answer(after))
        .ok_or_else(|| f.error("field `answer` does not end with `#### N`"))?;
    Ok(Item {
        id: index.to_string(),
        question,
        options: vec![],
        solution,
        group: None,
        reference,
        check: Check::Number,
    })
}

fn math(f: &Fields, index: usize) -> Result<Item> {
    let question = f.str("problem")?;
    let solution = f.str("solution")?;
    let reference = match f.opt_str("answer")? {
        Some(a) => a,
        None => extract::last_boxed(&solution).ok_or_else(|| f.error("field `solution` has no \\boxed{} answer"))?,
    };
    let group = match f.opt_str("type")? {
        Some(t) => Some(t),
        None => f.opt_str("subject")?,
    };
    Ok(Item {
        id: f.id(&["unique_id", "id"], index)?,
        question,
        options: vec![],
        solution,
        group,
        reference,
        check: Check::Math,
    })
}

/// A multiple-choice item; `answer` is the 0-based index of the right option.
fn choice_item(
    f: &Fields,
    id: String,
    question: String,
    options: Vec<String>,
    answer: usize,
    group: String,
    solution: String,
) -> Result<Item> {
    if !(2..=10).contains(&options.len()) {
        return Err(f.error(format!("{} options (expected 2 to 10)", options.len())));
    }
    if answer >= options.len() {
        return Err(f.error(format!("answer {} is outside the {} options", letter(answer), options.len())));
    }
    let check = Check::Choice { options: options.len() };
    Ok(Item { id, question, options, solution, group: Some(group), reference: letter(answer).to_string(), check })
}

/// An answer given as an index (`2`) or a letter (`"C"`).
fn answer_index(f: &Fields, name: &str) -> Result<usize> {
    match f.get(name) {
        Some(Value::Number(n)) => {
            n.as_u64().map(|n| n as usize).ok_or_else(|| f.error(format!("field `{name}` is not an option index")))
        }
        Some(Value::String(s)) => {
            letter_index(s).ok_or_else(|| f.error(format!("field `{name}` is not an option letter: {s:?}")))
        }
        Some(_) => Err(f.error(format!("field `{name}` is neither an index nor a letter"))),
        None => Err(f.missing(name)),
    }
}

fn letter_index(s: &str) -> Option<usize> {
    match s.trim().as_bytes() {
        [c @ b'A'..=b'Z'] => Some((c - b'A') as usize),
        _ => None,
    }
}

fn mmlu(f: &Fields, index: usize) -> Result<Item> {
    let question = f.str("question")?;
    let subject = f.str("subject")?;
    let choices = f.strings("choices")?;
    let answer = answer_index(f, "answer")?;
    choice_item(f, f.id(&["id"], index)?, question, choices, answer, subject, String::new())
}

/// MMLU's original CSV: question, A, B, C, D, answer letter; the subject is in the file name.
fn mmlu_csv(rec: &Record, index: usize) -> Result<Item> {
    let f = Fields { task: Task::Mmlu, rec };
    let row: Vec<String> =
        rec.value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
    if row.len() != 6 {
        return Err(f.error(format!("{} columns (expected 6: question,A,B,C,D,answer)", row.len())));
    }
    let answer =
        letter_index(&row[5]).ok_or_else(|| f.error(format!("answer column is not a letter A-D: {:?}", row[5])))?;
    let subject =
        ["_test", "_dev", "_val"].iter().find_map(|s| rec.stem.strip_suffix(s)).unwrap_or(&rec.stem).to_string();
    choice_item(&f, index.to_string(), row[0].clone(), row[1..5].to_vec(), answer, subject, String::new())
}

fn mmlu_pro(f: &Fields, index: usize) -> Result<Item> {
    let question = f.str("question")?;
    let options = f.strings("options")?;
    let answer = answer_index(f, "answer")?;
    let category = f.str("category")?;
    // Validation items carry a worked chain of thought ending in "The answer is (X)."; test items an empty one.
    let cot = f.opt_str("cot_content")?.unwrap_or_default();
    let cot = cot.trim().strip_prefix("A:").unwrap_or(cot.trim()).trim().to_string();
    choice_item(f, f.id(&["question_id"], index)?, question, options, answer, category, cot)
}

fn humaneval(f: &Fields) -> Result<Item> {
    let prompt = f.str("prompt")?;
    let solution = f.str("canonical_solution")?;
    let entry_point = f.str("entry_point")?;
    let instruct_fields = ["instruction", "context"];
    let (instruction, context) = if instruct_fields.iter().any(|n| f.get(n).is_some()) {
        // instructhumaneval's layout: both fields as the dataset has them.
        (f.str("instruction")?, f.str("context")?)
    } else {
        derive_instruct_fields(&prompt, &entry_point).ok_or_else(|| {
            f.error(format!(
                "field `prompt` has no line `def {entry_point}(...):` followed by a docstring, so instructhumaneval's \
                 instruction and context cannot be derived"
            ))
        })?
    };
    let check = Check::HumanEval { prompt: prompt.clone(), test: f.str("test")?, entry_point, instruction, context };
    Ok(Item {
        id: f.required_id("task_id")?,
        question: prompt,
        options: vec![],
        reference: solution.clone(),
        solution,
        group: None,
        check,
    })
}

/// instructhumaneval's `instruction` and `context` from an openai_humaneval `prompt`, by the dataset
/// card's recipe: `context` is the prompt up to and including the entry point's `def` line (imports
/// and helpers before it), `signature` that line without `def ` and the final `:`, `docstring` the
/// function's docstring cleaned as `inspect.cleandoc` does, and `instruction` =
/// `"Write a function {signature} to solve the following problem:\n{docstring}"`.
pub fn derive_instruct_fields(prompt: &str, entry_point: &str) -> Option<(String, String)> {
    let def = format!("def {entry_point}(");
    let start = prompt.match_indices(&def).map(|(p, _)| p).find(|&p| p == 0 || prompt[..p].ends_with('\n'))?;
    let line_end = prompt[start..].find('\n').map_or(prompt.len(), |n| start + n + 1);
    let def_line = prompt[start..line_end].trim_end();
    let signature = def_line.strip_prefix("def ")?.strip_suffix(':')?.trim();
    let body = &prompt[line_end..];
    let quote = ["\"\"\"", "\'\'\'"].iter().filter_map(|q| body.find(q).map(|p| (p, *q))).min()?;
    let after = &body[quote.0 + 3..];
    let docstring = cleandoc(&after[..after.find(quote.1)?]);
    let instruction = format!("Write a function {signature} to solve the following problem:\n{docstring}");
    Some((instruction, prompt[..line_end].to_string()))
}

/// Python's `inspect.cleandoc`: the first line's leading whitespace and the other lines' common
/// indentation removed, blank lines at either end dropped.
fn cleandoc(doc: &str) -> String {
    let lines: Vec<&str> = doc.lines().collect();
    let indent = lines
        .iter()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let cleaned = if i == 0 { line.trim_start() } else { line.get(indent..).unwrap_or("") };
        out.push(cleaned.trim_end().to_string());
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    while out.first().is_some_and(|l| l.is_empty()) {
        out.remove(0);
    }
    out.join("\n")
}

fn mbpp(f: &Fields) -> Result<Item> {
    // The "sanitized" Hugging Face config renames text to prompt and lists setup imports separately.
    let question = match f.opt_str("text")? {
        Some(t) => t,
        None => f.str("prompt").map_err(|_| f.missing("text"))?,
    };
    let solution = f.str("code")?;
    let tests = f.strings("test_list")?;
    if tests.is_empty() {
        return Err(f.error("field `test_list` is empty"));
    }
    let setup = match f.opt_str("test_setup_code")? {
        Some(s) => s,
        None if f.get("test_imports").is_some() => f.strings("test_imports")?.join("\n"),
        None => String::new(),
    };
    let check = Check::Mbpp { setup, tests };
    Ok(Item {
        id: f.required_id("task_id")?,
        question,
        options: vec![],
        reference: solution.clone(),
        solution,
        group: None,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, group: Option<&str>) -> Item {
        Item {
            id: id.into(),
            question: format!("q{id}"),
            options: vec![],
            solution: String::new(),
            group: group.map(Into::into),
            reference: String::new(),
            check: Check::Number,
        }
    }

    #[test]
    fn shots_follow_the_spec() {
        let pool: Vec<Item> =
            (0..20).map(|i| item(&i.to_string(), Some(if i % 2 == 0 { "even" } else { "odd" }))).collect();
        let ids = |v: Vec<&Item>| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        let q = item("99", Some("odd"));
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Gsm8k, &q, &pool, Task::Gsm8k.num_shots(Protocol::Clean))), ["0", "1", "2", "3", "4"]);
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Math, &q, &pool, Task::Math.num_shots(Protocol::Clean))), ["0", "4", "8", "12", "16"]);
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Mmlu, &q, &pool, Task::Mmlu.num_shots(Protocol::Clean))), ["1", "3", "5", "7", "9"]);
        assert_eq!(ids(select_shots(Protocol::Clean, Task::HumanEval, &q, &pool, Task::HumanEval.num_shots(Protocol::Clean))), Vec::<String>::new());
        // MBPP draws from task ids 1-10 and never shows an item as its own shot.
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Mbpp, &pool[2], &pool, Task::Mbpp.num_shots(Protocol::Clean))), ["1", "3", "4", "5", "6"]);
    }

    #[test]
    fn messages_alternate_and_end_with_the_question() {
        let mut shot = item("1", None);
        shot.solution = "2 + 2 = <<2+2=4>>4\n#### 4".into();
        let q = item("2", None);
        let m = build_messages(Protocol::Clean, Task::Gsm8k, &q, &[&shot, &shot]);
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(m[1].content, "2 + 2 = 4\n#### 4");
        assert_eq!(m[4].content, "q2");
    }
}
