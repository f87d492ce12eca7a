//! A benchmark's records read into [`Item`]s, one reader per dataset layout,
//! each failure naming the record, the field and the layout's schema.

use anyhow::Result;
use serde_json::Value;

use super::{letter, Check, Item, Task};
use crate::eval::extract;
use crate::eval::records::Record;

pub(super) fn parse_item(task: Task, rec: &Record, index: usize) -> Result<Item> {
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
