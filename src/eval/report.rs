//! Reading `report.json` back (as `l2d eval` writes it): paired comparisons of
//! two reports item by item, and charts of a metric against diffusion
//! evaluations per token ([`plot`]).

pub mod plot;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::stats;
use crate::error::{usage, OrUsage};

/// The `format` field of a report.
pub const FORMAT: &str = "l2d-eval-report";

/// The report version this reader understands.
pub const VERSION: u32 = 1;

/// The shape a report must have, for error messages.
const EXPECTED: &str = r#"expected {"format": "l2d-eval-report", "version": 1, "results": [{"task", "setting", "metrics", "per_item"}, ..]}"#;

/// Multiplier of the standard error in a normal 95% interval.
const Z95: f64 = 1.96;

/// A `report.json`: the fields read here (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Where it was read from, for messages.
    #[serde(skip)]
    pub source: String,
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Identity of the model that generated the completions (`path`, hashes), if any.
    #[serde(default)]
    pub model: Option<serde_json::Value>,
    /// Identity of the L2D checkpoint, if one was used.
    #[serde(default)]
    pub l2d: Option<serde_json::Value>,
    /// One per task and generation setting.
    pub results: Vec<TaskResult>,
}

/// The scores of one task under one generation setting.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskResult {
    /// The benchmark.
    pub task: String,
    /// How the completions were generated.
    pub setting: Setting,
    /// Accuracy or pass@k, with intervals.
    pub metrics: Vec<MetricValue>,
    /// Per item: samples and correct ones.
    pub per_item: Vec<ItemScore>,
}

/// A generation setting; `label` is unique per task within a report.
#[derive(Debug, Clone, Deserialize)]
pub struct Setting {
    /// Name of the setting, e.g. `base`, `midpoint-8`, `dopri5`, `samples`.
    pub label: String,
    /// Solver steps on a fixed grid: 0 for the base LM, none for adaptive solvers or given samples.
    pub steps: Option<u64>,
    /// ODE solver, none for the base LM.
    pub solver: Option<String>,
    /// Diffusion-path evaluations per generated token (measured for adaptive solvers); none for given samples.
    pub evals_per_token: Option<f64>,
}

/// One metric of a result.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricValue {
    /// `accuracy` or `pass@k`.
    pub name: String,
    /// Mean over items.
    pub value: f64,
    /// 95% interval, [low, high].
    pub ci95: [f64; 2],
}

/// How one item fared.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemScore {
    /// The item.
    pub task_id: String,
    /// Samples scored.
    pub n: usize,
    /// Of which correct.
    pub correct: usize,
}

impl ItemScore {
    /// Fraction of its samples correct: accuracy, or the unbiased pass@1.
    pub fn score(&self) -> f64 {
        self.correct as f64 / self.n as f64
    }
}

impl Report {
    /// The tasks, in order of first appearance.
    pub fn tasks(&self) -> Vec<&str> {
        let mut tasks: Vec<&str> = Vec::new();
        for r in &self.results {
            if !tasks.contains(&r.task.as_str()) {
                tasks.push(&r.task);
            }
        }
        tasks
    }

    /// The results of `task`, in report order.
    pub fn results_of<'r>(&'r self, task: &'r str) -> impl Iterator<Item = &'r TaskResult> + 'r {
        self.results.iter().filter(move |r| r.task == task)
    }

    /// The setting labels of `task`, comma-separated, for messages.
    fn labels_of(&self, task: &str) -> String {
        self.results_of(task).map(|r| r.setting.label.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Fails with a usage error naming `flag` unless the report has `task`.
    pub fn require_task(&self, task: &str, flag: &str) -> Result<()> {
        if self.tasks().contains(&task) {
            return Ok(());
        }
        crate::bail_usage!("{flag} {task}: not in {} (tasks: {})", self.source, self.tasks().join(", "))
    }
}

/// Reads and checks a report; every problem with the file is a usage error naming it.
pub fn load(path: &Path) -> Result<Report> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).or_usage(|| format!("{shown}: cannot read"))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).or_usage(|| format!("{shown}: not JSON"))?;
    let mut report: Report =
        serde_path_to_error::deserialize(value).or_usage(|| format!("{shown}: not an l2d eval report ({EXPECTED})"))?;
    report.source = shown;
    check(&report).map_err(|e| usage(format!("{}: {e}", report.source)))?;
    Ok(report)
}

/// What serde cannot check: the format tag, the version, item counts and unique labels and ids.
fn check(report: &Report) -> Result<(), String> {
    if report.format != FORMAT {
        return Err(format!("format is {:?}, not {FORMAT:?}", report.format));
    }
    if report.version != VERSION {
        return Err(format!("version {} is not supported (this l2d reads version {VERSION})", report.version));
    }
    let mut settings = HashSet::new();
    for (i, r) in report.results.iter().enumerate() {
        if !settings.insert((&r.task, &r.setting.label)) {
            return Err(format!("results[{i}]: task {} has a second setting labelled {:?}", r.task, r.setting.label));
        }
        let mut ids = HashSet::new();
        for (j, item) in r.per_item.iter().enumerate() {
            if item.n == 0 || item.correct > item.n {
                return Err(format!("results[{i}].per_item[{j}]: correct {} of n {}", item.correct, item.n));
            }
            if !ids.insert(&item.task_id) {
                return Err(format!("results[{i}].per_item[{j}]: task_id {:?} appears twice", item.task_id));
            }
        }
    }
    Ok(())
}

/// Which results of two reports to compare.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    /// Only this task (`--task`); default: every task both reports have.
    pub task: Option<&'a str>,
    /// The setting of A (`--a`); default: `label_b`, or every label both have.
    pub label_a: Option<&'a str>,
    /// The setting of B (`--b`); default: `label_a`, or every label both have.
    pub label_b: Option<&'a str>,
}

/// Paired statistics of one task under a setting of A and a setting of B.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The benchmark.
    pub task: String,
    /// Setting label in A.
    pub label_a: String,
    /// Setting label in B.
    pub label_b: String,
    /// Items in both, by task_id.
    pub paired: usize,
    /// Items of A that B lacks (left out).
    pub unpaired_a: usize,
    /// Items of B that A lacks (left out).
    pub unpaired_b: usize,
    /// Mean score of A over the paired items.
    pub mean_a: f64,
    /// Mean score of B over the paired items.
    pub mean_b: f64,
    /// Mean of the per-item differences B − A.
    pub diff: f64,
    /// Standard error of `diff` from the per-item differences.
    pub stderr: f64,
    /// `diff ± 1.96 stderr`.
    pub ci95_normal: [f64; 2],
    /// Percentile bootstrap interval of `diff`, resampling pairs with the fixed seed.
    pub ci95_bootstrap: [f64; 2],
    /// With 0/1 scores: paired items that A gets right and B wrong.
    pub only_a_right: Option<usize>,
    /// With 0/1 scores: paired items that B gets right and A wrong.
    pub only_b_right: Option<usize>,
}

/// Compares the selected results of `a` and `b`, task by task and setting by setting.
pub fn compare(a: &Report, b: &Report, sel: Selection) -> Result<Vec<Comparison>> {
    let mut out = Vec::new();
    for task in common_tasks(a, b, sel.task)? {
        for (ra, rb) in setting_pairs(a, b, task, sel)? {
            out.push(compare_pair(a, b, ra, rb)?);
        }
    }
    Ok(out)
}

/// `--task`, checked against both reports, or the tasks both have.
fn common_tasks<'r>(a: &'r Report, b: &'r Report, task: Option<&'r str>) -> Result<Vec<&'r str>> {
    if let Some(task) = task {
        a.require_task(task, "--task")?;
        b.require_task(task, "--task")?;
        return Ok(vec![task]);
    }
    let in_b = b.tasks();
    let common: Vec<&str> = a.tasks().into_iter().filter(|t| in_b.contains(t)).collect();
    if common.is_empty() {
        crate::bail_usage!(
            "no task in common ({}: {}; {}: {})",
            a.source,
            a.tasks().join(", "),
            b.source,
            in_b.join(", ")
        );
    }
    Ok(common)
}

/// The (A, B) results of `task` to compare: the labels picked by `--a`/`--b`, or every common label.
fn setting_pairs<'r>(
    a: &'r Report,
    b: &'r Report,
    task: &'r str,
    sel: Selection,
) -> Result<Vec<(&'r TaskResult, &'r TaskResult)>> {
    let find = |r: &'r Report, label: &str| r.results_of(task).find(|x| x.setting.label == label);
    // A label given for one side only names the same setting on the other.
    let side_a = sel.label_a.map(|l| ("--a", l)).or(sel.label_b.map(|l| ("--b", l)));
    let side_b = sel.label_b.map(|l| ("--b", l)).or(sel.label_a.map(|l| ("--a", l)));
    if let (Some((flag_a, la)), Some((flag_b, lb))) = (side_a, side_b) {
        let ra = find(a, la).ok_or_else(|| missing_label(a, task, flag_a, la))?;
        let rb = find(b, lb).ok_or_else(|| missing_label(b, task, flag_b, lb))?;
        return Ok(vec![(ra, rb)]);
    }
    let pairs: Vec<_> = a.results_of(task).filter_map(|ra| find(b, &ra.setting.label).map(|rb| (ra, rb))).collect();
    if pairs.is_empty() {
        crate::bail_usage!(
            "task {task}: no setting label in common ({}: {}; {}: {}); pick settings with --a LABEL --b LABEL",
            a.source,
            a.labels_of(task),
            b.source,
            b.labels_of(task)
        );
    }
    Ok(pairs)
}

fn missing_label(r: &Report, task: &str, flag: &str, label: &str) -> anyhow::Error {
    usage(format!("{flag} {label}: no such setting for task {task} in {} (labels: {})", r.source, r.labels_of(task)))
}

/// Pairs the items of `ra` and `rb` by task_id and summarises the differences B − A.
fn compare_pair(a: &Report, b: &Report, ra: &TaskResult, rb: &TaskResult) -> Result<Comparison> {
    let by_id: HashMap<&str, &ItemScore> = rb.per_item.iter().map(|i| (i.task_id.as_str(), i)).collect();
    let scores: Vec<(f64, f64)> =
        ra.per_item.iter().filter_map(|ia| by_id.get(ia.task_id.as_str()).map(|ib| (ia.score(), ib.score()))).collect();
    if scores.is_empty() {
        crate::bail_usage!(
            "task {}: {} ({}) and {} ({}) have no task_id in common",
            ra.task,
            a.source,
            ra.setting.label,
            b.source,
            rb.setting.label
        );
    }
    let diffs: Vec<f64> = scores.iter().map(|(sa, sb)| sb - sa).collect();
    let d = stats::summarize(&diffs);
    let n = scores.len() as f64;
    let binary = scores.iter().all(|&(sa, sb)| is_zero_or_one(sa) && is_zero_or_one(sb));
    let count = |f: fn(&(f64, f64)) -> bool| binary.then(|| scores.iter().filter(|p| f(p)).count());
    Ok(Comparison {
        task: ra.task.clone(),
        label_a: ra.setting.label.clone(),
        label_b: rb.setting.label.clone(),
        paired: scores.len(),
        unpaired_a: ra.per_item.len() - scores.len(),
        unpaired_b: rb.per_item.len() - scores.len(),
        mean_a: scores.iter().map(|p| p.0).sum::<f64>() / n,
        mean_b: scores.iter().map(|p| p.1).sum::<f64>() / n,
        diff: d.value,
        stderr: d.stderr,
        ci95_normal: [d.value - Z95 * d.stderr, d.value + Z95 * d.stderr],
        // The mean of resampled differences is the difference of the resampled means: a paired bootstrap.
        ci95_bootstrap: d.ci95,
        only_a_right: count(|&(sa, sb)| sa == 1.0 && sb == 0.0),
        only_b_right: count(|&(sa, sb)| sa == 0.0 && sb == 1.0),
    })
}

fn is_zero_or_one(x: f64) -> bool {
    x == 0.0 || x == 1.0
}

/// The comparison table `report compare` prints, with a note per pair that left items out.
pub fn comparison_table(comparisons: &[Comparison]) -> String {
    let mut out = format!(
        "{:<10} {:<14} {:<14} {:>6} {:>7} {:>7} {:>8} {:>7}  {:<19} {:<19} {:>6} {:>6}\n",
        "task",
        "A",
        "B",
        "paired",
        "mean A",
        "mean B",
        "B-A",
        "stderr",
        "95% CI (normal)",
        "95% CI (bootstrap)",
        "only A",
        "only B"
    );
    let interval = |ci: [f64; 2]| format!("[{:+.4}, {:+.4}]", ci[0], ci[1]);
    let count = |c: Option<usize>| c.map_or_else(|| "-".to_string(), |c| c.to_string());
    for c in comparisons {
        out += &format!(
            "{:<10} {:<14} {:<14} {:>6} {:>7.4} {:>7.4} {:>+8.4} {:>7.4}  {:<19} {:<19} {:>6} {:>6}\n",
            c.task,
            c.label_a,
            c.label_b,
            c.paired,
            c.mean_a,
            c.mean_b,
            c.diff,
            c.stderr,
            interval(c.ci95_normal),
            interval(c.ci95_bootstrap),
            count(c.only_a_right),
            count(c.only_b_right)
        );
    }
    for c in comparisons.iter().filter(|c| c.unpaired_a + c.unpaired_b > 0) {
        out += &format!(
            "({} {} vs {}: paired {} items, left out {} only in A and {} only in B)\n",
            c.task, c.label_a, c.label_b, c.paired, c.unpaired_a, c.unpaired_b
        );
    }
    out
}
