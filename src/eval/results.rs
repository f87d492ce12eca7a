//! What an eval writes: `report.json` (a result per task and setting, with
//! its generation cost and the items left out), `examples.jsonl`, the result
//! table printed after scoring, and `report.md`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::score::{LeftOut, TaskReport};
use super::stats::Summary;
use super::Protocol;

/// Which generation produced a result.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Setting {
    /// Unique within a task: "base", "midpoint-8", "dopri5", or "samples" for given completions.
    pub label: String,
    /// Discretisation levels (0 for the base LM); none for adaptive solvers and given completions.
    pub steps: Option<usize>,
    /// ODE solver of the diffusion path; none for the base LM and given completions.
    pub solver: Option<String>,
    /// Diffusion-path evaluations per generated token (0 for the base LM), as measured.
    pub evals_per_token: Option<f64>,
}

impl Setting {
    /// The setting of completions scored without a model.
    pub fn given() -> Setting {
        Setting { label: "samples".into(), steps: None, solver: None, evals_per_token: None }
    }
}

/// Generation cost of one setting over one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationStats {
    /// Tokens generated.
    pub tokens: usize,
    /// Tokens generated per second of decoding (the shared prompt passes excluded).
    pub tokens_per_s: f64,
    /// Seconds spent decoding.
    pub wall_s: f64,
}

/// One task under one setting: what was measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultEntry {
    /// How the completions were made.
    pub setting: Setting,
    /// Their cost; none for given completions.
    pub generation: Option<GenerationStats>,
    /// Items of the dataset not prompted; none for given completions.
    pub left_out: Option<LeftOut>,
    /// Metrics and per-item results.
    #[serde(flatten)]
    pub report: TaskReport,
}

/// The whole of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: &'static str,
    /// Schema version.
    pub version: u32,
    /// Whose protocol prompted and scored: "paper" or "clean".
    pub protocol: Protocol,
    /// Identity of the evaluated model, when one generated the completions.
    pub model: Option<serde_json::Value>,
    /// Identity of the L2D checkpoint, when one was used.
    pub l2d: Option<serde_json::Value>,
    /// The resolved configuration, when a config drove the run.
    pub config: Option<serde_json::Value>,
    /// One entry per task and setting.
    pub results: Vec<ResultEntry>,
}

/// `format` of every `report.json`.
pub const REPORT_FORMAT: &str = "l2d-eval-report";

impl Report {
    /// A report of `results` with no model behind it (completions scored as given under `protocol`).
    pub fn of_given(protocol: Protocol, results: Vec<ResultEntry>) -> Report {
        Report { format: REPORT_FORMAT, version: 1, protocol, model: None, l2d: None, config: None, results }
    }
}

/// Writes `report.json` and `examples.jsonl` (one line per item of `examples`) into `dir`
/// (created if needed), each file atomically.
pub fn write_outputs<E: Serialize>(dir: &Path, report: &Report, examples: &[E]) -> Result<()> {
    crate::io::create_output_dir(dir).context("--out")?;
    crate::io::write_json_atomic(&dir.join("report.json"), report)?;
    crate::io::write_atomic(&dir.join("examples.jsonl"), &crate::io::json_lines(examples)?)
}

/// One row of the result tables: task, setting, evals/token, metric, value, stderr, CI, items, samples, tokens/s.
pub struct Row {
    /// The benchmark.
    pub task: &'static str,
    /// The setting's label.
    pub setting: String,
    /// Diffusion evaluations per token, formatted ("-" for given completions).
    pub evals: String,
    /// `accuracy` or `pass@k`.
    pub metric: String,
    /// Value, standard error, interval and item count.
    pub summary: Summary,
    /// Completions scored.
    pub samples: usize,
    /// Decoding speed, formatted ("-" for given completions).
    pub tokens_per_s: String,
}

/// The rows of every task, setting and metric, in report order.
pub fn rows(results: &[ResultEntry]) -> Vec<Row> {
    let mut out = Vec::new();
    for r in results {
        let evals = r.setting.evals_per_token.map_or("-".to_string(), |e| format!("{e:.1}"));
        let tokens_per_s = r.generation.as_ref().map_or("-".to_string(), |g| format!("{:.1}", g.tokens_per_s));
        for m in &r.report.metrics {
            out.push(Row {
                task: r.report.task.name(),
                setting: r.setting.label.clone(),
                evals: evals.clone(),
                metric: m.name.clone(),
                summary: m.summary.clone(),
                samples: r.report.samples,
                tokens_per_s: tokens_per_s.clone(),
            });
        }
    }
    out
}

/// One line per task that left items out: how many and why (the reference drops them silently).
pub fn left_out_notes(results: &[ResultEntry]) -> String {
    let mut out = String::new();
    let mut seen = std::collections::HashSet::new();
    for r in results {
        let Some(l) = r.left_out.filter(|l| l.total() > 0) else { continue };
        if seen.insert(r.report.task) {
            out += &format!(
                "({}: {} items left out: {} shots, {} with prompt + answer over 2048 tokens, {} without a gold answer)\n",
                r.report.task,
                l.total(),
                l.shots,
                l.too_long,
                l.no_gold_answer
            );
        }
    }
    out
}

/// The metric table printed after scoring: one line per task, setting and metric, then [`left_out_notes`].
pub fn table(results: &[ResultEntry]) -> String {
    let mut out = format!(
        "{:<10} {:<14} {:>9} {:<9} {:>7} {:>7}  {:<17} {:>6} {:>8}\n",
        "task", "setting", "evals/tok", "metric", "value", "stderr", "95% CI", "items", "samples"
    );
    for r in rows(results) {
        let s = &r.summary;
        let ci = format!("[{:.4}, {:.4}]", s.ci95[0], s.ci95[1]);
        out += &format!(
            "{:<10} {:<14} {:>9} {:<9} {:>7.4} {:>7.4}  {ci:<17} {:>6} {:>8}\n",
            r.task, r.setting, r.evals, r.metric, s.value, s.stderr, s.n, r.samples
        );
    }
    out + &left_out_notes(results)
}

/// `report.md`: the table of every task and setting with intervals and cost.
pub fn markdown(report: &Report) -> String {
    let mut out = String::from("# l2d eval\n\n");
    if let Some(m) = &report.model {
        out += &format!("Model: `{}`", m["path"].as_str().unwrap_or("?"));
    }
    if let Some(l) = &report.l2d {
        out += &format!(", L2D checkpoint: `{}`", l["path"].as_str().unwrap_or("?"));
    }
    out += "\n\n| task | setting | evals/token | metric | value | 95% CI | stderr | n | tokens/s |\n";
    out += "|---|---|---:|---|---:|---|---:|---:|---:|\n";
    for r in rows(&report.results) {
        let s = &r.summary;
        out += &format!(
            "| {} | {} | {} | {} | {:.4} | [{:.4}, {:.4}] | {:.4} | {} | {} |\n",
            r.task, r.setting, r.evals, r.metric, s.value, s.ci95[0], s.ci95[1], s.stderr, s.n, r.tokens_per_s
        );
    }
    out + &left_out_notes(&report.results)
}
