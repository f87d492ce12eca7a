//! `l2d eval --config`: generation over benchmarks under a sweep of sampler
//! settings (the base LM, L2D at several grids and solvers), then scoring and
//! reports. Completions are journalled to `examples.jsonl` as they are made, so
//! an interrupted run resumes without redoing finished items.
//!
//! Under torchrun the batches are dealt round-robin over the ranks (the same
//! batches one process would make); after each round rank 0 gathers the
//! round's completions and appends them to the one journal, so a sharded run
//! resumes at any world size, and rank 0 alone scores and writes the outputs.
//! Every row draws its randomness from its own key (seed, task, setting, item,
//! sample; [`RowNoise`]), so a completion does not depend on its batch or rank.

use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::sandbox::SandboxOptions;
use super::results::{self, GenerationStats, Report, ResultEntry, Setting, REPORT_FORMAT};
use super::score::{self, Example, LeftOut, Sample, Verdict};
use super::tasks::prompts::{build_messages, select_shots};
use super::tasks::{Check, Dataset, Item, Task};
use super::journal::{gather_lines, journal_text, key, open_run, parse_lines, Journal, Key, Line};
use super::{identity, paper, Protocol};
use crate::config::{Config, X1Schedule};
use crate::dist::Dist;
use crate::data::tokenizer::Tokenizer;
use crate::l2d::checkpoint::{BaseIdentity, Checkpoint};
use crate::l2d::sampler::{L2dHead, SamplerOptions};
use crate::l2d::L2dDecoder;
use crate::progress::{Progress, ProgressMode};
use crate::sampling::generate::{decode, prefill_masked, BaseLm, GenerateOptions, NextTokenLogits};
use crate::sampling::{RowNoise, TokenSampler};
use crate::session::Session;

/// The journal and final per-completion file of a run directory.
pub const EXAMPLES: &str = "examples.jsonl";

/// One point of the sweep: the base LM, or L2D with one solver and grid.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Label, steps and solver as the report names them.
    pub setting: Setting,
    /// The L2D sampler; none for the base LM.
    pub sampler: Option<SamplerOptions>,
}

/// The settings `cfg.eval` asks for: the base LM for level 0, every fixed-grid
/// solver at every other level, every adaptive solver once.
pub fn plans(cfg: &Config, has_l2d: bool) -> Result<Vec<Plan>> {
    let e = &cfg.eval;
    let mut steps = if !e.steps.is_empty() {
        e.steps.clone()
    } else if has_l2d {
        vec![0, cfg.l2d.steps]
    } else {
        vec![0]
    };
    steps.sort_unstable();
    steps.dedup();
    let mut solvers = if e.solvers.is_empty() { vec![cfg.l2d.solver] } else { e.solvers.clone() };
    solvers.dedup();
    let mut out = Vec::new();
    if steps.first() == Some(&0) {
        let setting = Setting { label: "base".into(), steps: Some(0), solver: None, evals_per_token: Some(0.0) };
        out.push(Plan { setting, sampler: None });
    }
    let levels: Vec<usize> = steps.into_iter().filter(|&s| s > 0).collect();
    for &solver in &solvers {
        let grids: Vec<Option<usize>> =
            if solver.is_adaptive() { vec![None] } else { levels.iter().map(|&k| Some(k)).collect() };
        for k in grids {
            if !has_l2d {
                crate::bail_usage!(
                    "eval.steps / eval.solvers: the L2D settings ({solver}) need a checkpoint (eval.l2d or --l2d); \
                     for the base LM alone give --steps 0 and no adaptive solver (e.g. --solvers midpoint)"
                );
            }
            let mut l2d = cfg.l2d.clone();
            l2d.solver = solver;
            l2d.steps = k.unwrap_or(l2d.steps);
            let label = k.map_or(solver.to_string(), |k| format!("{solver}-{k}"));
            let setting = Setting { label, steps: k, solver: Some(solver.to_string()), evals_per_token: None };
            out.push(Plan { setting, sampler: Some(SamplerOptions::from_config(&l2d)) });
        }
    }
    if out.is_empty() {
        crate::bail_usage!("eval.steps: nothing to evaluate (give 0 for the base LM and/or levels >= 2 with a solver)");
    }
    Ok(out)
}

/// The reference's `max_seq_len`: paper-protocol items whose prompt and gold answer together have
/// more tokens are dropped, as every reference processor drops them (`tasks/gsm8k.py:79-80`).
pub const PAPER_MAX_SEQ_LEN: usize = 2048;

/// One item's prompt as the model sees it.
struct Prompt {
    text: String,
    ids: Vec<i64>,
}

/// A benchmark ready to prompt: its items, shot pool and, once [`TaskData::prepare`]d, the prompts of
/// the items kept (shots and over-long items out, then `eval.limit`).
struct TaskData {
    task: Task,
    dataset: Dataset,
    /// The shot split; none draws shots from `dataset` itself (before any item is left out).
    shots: Option<Dataset>,
    class: Option<i64>,
    /// One per item of `dataset`, once prepared.
    prompts: Vec<Prompt>,
    /// Items left out and why, once prepared.
    left_out: LeftOut,
}



impl TaskData {
    fn load(name: &str, cfg: &Config) -> Result<TaskData> {
        let key = format!("eval.tasks.{name}");
        let task: Task = name
            .parse()
            .map_err(|_| crate::error::usage(format!("{key}: unknown task (expected one of {})", task_names())))?;
        let t = &cfg.eval.tasks[name];
        if t.data.is_empty() {
            crate::bail_usage!("{key}.data: missing (the file or directory of the task's items)");
        }
        let dataset = Dataset::load(task, Path::new(&t.data), &format!("{key}.data"))?;
        let shots = match &t.shots {
            Some(p) => Some(Dataset::load(task, Path::new(p), &format!("{key}.shots"))?),
            None => None,
        };
        let class = cfg.eval.class_map.get(name).copied().or(cfg.l2d.guidance_class);
        Ok(TaskData { task, dataset, shots, class, prompts: Vec::new(), left_out: LeftOut::default() })
    }

    /// Renders and tokenizes the prompts, in dataset order, until `limit` items are kept; leaves out
    /// (paper protocol) the items that are shots and those longer than [`PAPER_MAX_SEQ_LEN`].
    fn prepare(&mut self, cfg: &Config, protocol: Protocol, tokenizer: &Tokenizer, max_pos: usize) -> Result<()> {
        let num_shots = cfg.eval.num_shots.unwrap_or(self.task.num_shots(protocol));
        let pool = self.shots.as_ref().unwrap_or(&self.dataset);
        let limit = cfg.eval.limit.unwrap_or(usize::MAX);
        let mut kept = Vec::new();
        let mut left_out = LeftOut::default();
        for item in &self.dataset.items {
            if kept.len() == limit {
                break;
            }
            let shots = select_shots(protocol, self.task, item, &pool.items, num_shots);
            if score::leave_out(protocol, self.task, item, &shots, &mut left_out) {
                continue;
            }
            let text = tokenizer.render_prompt(&build_messages(protocol, self.task, item, &shots))?;
            let ids = tokenizer.encode(&text, false)?;
            if protocol == Protocol::Paper && ids.len() + tokenizer.encode(gold_text(item), false)?.len() > PAPER_MAX_SEQ_LEN {
                left_out.too_long += 1;
                continue;
            }
            if ids.len() >= max_pos {
                crate::bail_usage!(
                    "eval.tasks.{}: item {}: the prompt has {} tokens ({num_shots} shots), more than the model's \
                     {max_pos} positions; lower eval.num_shots",
                    self.task.name(),
                    item.id,
                    ids.len()
                );
            }
            kept.push((item.id.clone(), Prompt { text, ids }));
        }
        if kept.is_empty() {
            crate::bail_usage!(
                "eval.tasks.{}: no item left to evaluate: {} are shots of the others, {} have prompt + answer \
                 over {PAPER_MAX_SEQ_LEN} tokens ({} shots; lower eval.num_shots) and {} have no gold answer the \
                 reference can read",
                self.task.name(),
                left_out.shots,
                left_out.too_long,
                num_shots,
                left_out.no_gold_answer
            );
        }
        let ids: HashSet<String> = kept.iter().map(|(id, _)| id.clone()).collect();
        self.dataset = std::mem::replace(&mut self.dataset, Dataset::empty(self.task)).retain(|item| ids.contains(&item.id));
        self.prompts = kept.into_iter().map(|(_, p)| p).collect();
        self.left_out = left_out;
        Ok(())
    }

    /// Checks the task's guidance class against the checkpoint's classes.
    fn check_class(&self, decoder: Option<&L2dDecoder>) -> Result<()> {
        let (Some(class), Some(decoder)) = (self.class, decoder) else { return Ok(()) };
        let n = decoder.shape().num_classes;
        if !(0..n).contains(&class) {
            crate::bail_usage!(
                "eval.class_map: class of {:?} must be in 0..{n} (the checkpoint's guidance classes), got {class}",
                self.task.name()
            );
        }
        Ok(())
    }

}

impl TaskData {
    /// The prompt of a kept item.
    fn prompt_of(&self, id: &str) -> &Prompt {
        &self.prompts[self.dataset.position(id).expect("journalled items are kept items")]
    }
}

/// The gold answer the reference tokenizes for its length filter: the letter, else the dataset's answer.
fn gold_text(item: &Item) -> &str {
    match item.check {
        Check::Choice { .. } => &item.reference,
        _ => &item.solution,
    }
}

fn task_names() -> String {
    Task::ALL.map(Task::name).join(", ")
}

/// A journalled completion with its verdict: a line of the final `examples.jsonl`
/// (the journal's fields, then the scored example's own).
#[derive(Serialize)]
struct ScoredLine<'a> {
    #[serde(flatten)]
    line: &'a Line,
    /// The whole prompt as rendered, and its token ids: what the model saw.
    prompt_text: &'a str,
    prompt_ids: &'a [i64],
    prompt: String,
    reference: String,
    #[serde(flatten)]
    verdict: Verdict,
}

/// The model, tokenizer and optional L2D path a sweep generates with.
struct Engine {
    session: Session,
    decoder: Option<L2dDecoder>,
    identity: serde_json::Value,
    l2d_identity: Option<serde_json::Value>,
}

impl Engine {
    /// Loads the model onto `device`, its tokenizer (in the paper protocol with the reference's chat
    /// template for the model's architecture) and the L2D checkpoint `ckpt`.
    fn load(cfg: &Config, protocol: Protocol, ckpt: Option<&Checkpoint>, device: &str) -> Result<Engine> {
        let mut session = Session::open(&crate::config::ModelConfig { device: device.to_string(), ..cfg.model.clone() })?;
        if protocol == Protocol::Paper {
            if let Some(source) = paper::reference_chat_template(session.model.config.arch()?) {
                session.tokenizer.set_chat_template(source).with_context(|| session.dir.display().to_string())?;
            }
        }
        let base = BaseIdentity::of(&session.model, &session.dir)?;
        let identity = serde_json::json!({
            "path": cfg.model.path, "dtype": cfg.model.dtype, "device": cfg.model.device,
            "config_sha256": base.config_sha256, "tensors_sha256": base.tensors_sha256,
        });
        let (decoder, l2d_identity) = match ckpt {
            Some(ckpt) => {
                let l2d = session.load_l2d(ckpt, &cfg.l2d).context("--l2d")?;
                // The tensors' own bytes: another checkpoint written to the same path is another run.
                let id = serde_json::json!({
                    "path": ckpt.path().display().to_string(),
                    "tensors_sha256": crate::data::shards::sha256_file(&ckpt.tensor_file())?,
                    "step": ckpt.metadata().map(|m| m.step),
                    "variant": l2d.shape.variant,
                    "trainable_params": l2d.num_params(),
                });
                (Some(L2dDecoder::new(&session.model, &l2d)), Some(id))
            }
            None => (None, None),
        };
        Ok(Engine { session, decoder, identity, l2d_identity })
    }

    fn head(&self, sampler: Option<SamplerOptions>, class: Option<i64>, weight: f64) -> Box<dyn NextTokenLogits + '_> {
        match (sampler, &self.decoder) {
            (Some(mut opts), Some(decoder)) => {
                opts.guidance = class.map(|c| (c, weight));
                Box::new(L2dHead::new(decoder, opts))
            }
            _ => Box::new(BaseLm),
        }
    }
}

/// Where and how `run` writes.
pub struct SweepOutput {
    /// Run directory: `report.json`, `report.md`, `examples.jsonl`.
    pub dir: PathBuf,
    /// How generation shows its progress.
    pub progress: ProgressMode,
}

/// This process's share of a sweep: alone, or one rank of a torchrun group.
pub struct Shard<'a> {
    /// The group (a single process without torchrun).
    pub dist: &'a Dist,
    /// The device this rank's model goes on (`model.device`, `cuda` made `cuda:LOCAL_RANK`).
    pub device: &'a str,
}

/// Generates, scores and reports every configured task under every planned setting, with the
/// L2D checkpoint `ckpt` (opened by the caller, which applied its shape to `cfg`) if any. Rank 0
/// returns the report; the other ranks of a sharded run generate their batches and return none.
pub fn run(cfg: &Config, ckpt: Option<&Checkpoint>, out: &SweepOutput, shard: &Shard) -> Result<Option<Report>> {
    if cfg.eval.tasks.is_empty() {
        crate::bail_usage!("eval.tasks: no task configured (add e.g. [eval.tasks.gsm8k] data = \"test.jsonl\")");
    }
    let protocol = cfg.eval.protocol;
    let dist = shard.dist;
    let (engine, tasks, plans) = dist.agree(load(cfg, protocol, ckpt, shard.device), "loading the model and tasks")?;
    let opened = match dist.is_main() {
        true => run_identity(cfg, protocol, &engine, &tasks).and_then(|identity| open_run(&out.dir, &identity)).map(Some),
        false => Ok(None),
    };
    let mut opened = dist.agree(opened, "opening the run directory")?;
    // Every rank skips the same finished completions: rank 0's journal, shared.
    let journal_text = opened.as_ref().map(|(_, _, done)| journal_text(done)).transpose()?.unwrap_or_default();
    let mut done: BTreeMap<Key, Line> =
        parse_lines(&dist.text_from_main(&journal_text, "the journal")?)?.into_iter().map(|l| (key(&l), l)).collect();
    let progress = if dist.is_main() { out.progress } else { ProgressMode::quiet() };
    for data in &tasks {
        let journal = opened.as_mut().map(|(_, journal, _)| journal);
        generate_task(cfg, protocol, &engine, data, &plans, &mut done, journal, progress, dist)?;
    }
    if !dist.is_main() {
        return Ok(None);
    }
    let workers = cfg.eval.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut results = Vec::new();
    let mut scored_lines = Vec::new();
    for data in &tasks {
        for plan in &plans {
            let lines: Vec<&Line> = done
                .values()
                .filter(|l| l.task == data.task.name() && l.setting == plan.setting.label)
                .collect();
            let (entry, examples) = score_setting(data, plan, &lines, protocol, workers);
            results.push(entry);
            scored_lines.extend(lines.into_iter().zip(examples).map(|(line, e)| (data, line, e)));
        }
    }
    let report = Report {
        format: REPORT_FORMAT,
        version: 1,
        protocol,
        model: Some(engine.identity.clone()),
        l2d: engine.l2d_identity.clone(),
        config: Some(serde_json::to_value(cfg)?),
        results,
    };
    let lines: Vec<ScoredLine> = scored_lines
        .into_iter()
        .map(|(data, line, e)| {
            let prompt = data.prompt_of(&line.task_id);
            ScoredLine {
                line,
                prompt_text: &prompt.text,
                prompt_ids: &prompt.ids,
                prompt: e.prompt,
                reference: e.reference,
                verdict: e.verdict,
            }
        })
        .collect();
    results::write_outputs(&out.dir, &report, &lines)?;
    crate::io::write_atomic(&out.dir.join("report.md"), results::markdown(&report).as_bytes())?;
    Ok(Some(report))
}

/// The model, the tasks' prompts and the settings to sweep.
fn load(cfg: &Config, protocol: Protocol, ckpt: Option<&Checkpoint>, device: &str) -> Result<(Engine, Vec<TaskData>, Vec<Plan>)> {
    let mut tasks: Vec<TaskData> = cfg.eval.tasks.keys().map(|name| TaskData::load(name, cfg)).collect::<Result<_>>()?;
    let engine = Engine::load(cfg, protocol, ckpt, device)?;
    let max_pos = engine.session.model.config.max_position_embeddings as usize;
    for data in &mut tasks {
        data.prepare(cfg, protocol, &engine.session.tokenizer, max_pos)?;
    }
    let plans = plans(cfg, engine.decoder.is_some())?;
    for data in &tasks {
        data.check_class(engine.decoder.as_ref())?;
    }
    Ok((engine, tasks, plans))
}

/// What makes the run's completions what they are: the protocol, the model and checkpoint, every
/// generation, L2D and eval setting (not `batch_size`, `workers` or `out`, which change no
/// completion's meaning), and a hash of each task's prompts.
fn run_identity(cfg: &Config, protocol: Protocol, engine: &Engine, tasks: &[TaskData]) -> Result<serde_json::Value> {
    let mut eval = serde_json::to_value(&cfg.eval)?;
    if let Some(map) = eval.as_object_mut() {
        for transient in ["batch_size", "workers", "out"] {
            map.remove(transient);
        }
    }
    let prompts: serde_json::Map<String, serde_json::Value> = tasks
        .iter()
        .map(|t| (t.task.name().to_string(), identity::prompts_sha256(t.prompts.iter().map(|p| p.ids.as_slice())).into()))
        .collect();
    Ok(serde_json::json!({
        "protocol": protocol,
        "model": engine.identity,
        "l2d": engine.l2d_identity,
        "generate": cfg.generate,
        "l2d_config": cfg.l2d,
        "eval": eval,
        "prompts_sha256": prompts,
    }))
}

/// One batch of prompts: the (item, sample) pairs it answers.
type Unit = (usize, usize);

/// Generates the task's missing completions: batches of `eval.batch_size` in one order, dealt
/// round-robin over the ranks; after each setting of each round every rank holds the round's
/// completions, and rank 0 (which alone has the `journal`) appends them.
#[allow(clippy::too_many_arguments)]
fn generate_task(
    cfg: &Config,
    protocol: Protocol,
    engine: &Engine,
    data: &TaskData,
    plans: &[Plan],
    done: &mut BTreeMap<Key, Line>,
    mut journal: Option<&mut Journal>,
    progress: ProgressMode,
    dist: &Dist,
) -> Result<()> {
    let task = data.task;
    let items = &data.dataset.items;
    let missing = |unit: &Unit, plan: &Plan, done: &BTreeMap<Key, Line>| {
        let k = (task.name().to_string(), plan.setting.label.clone(), items[unit.0].id.clone(), unit.1);
        !done.contains_key(&k)
    };
    let units: Vec<Unit> = (0..items.len())
        .flat_map(|i| (0..samples_per_item(cfg, protocol, task)).map(move |s| (i, s)))
        .filter(|u| plans.iter().any(|p| missing(u, p, done)))
        .collect();
    if units.is_empty() {
        return Ok(());
    }
    let prompts = &data.prompts;
    // Longest first: similar lengths batch with little padding, and memory peaks early.
    let mut order = units;
    order.sort_by_key(|&(i, s)| (std::cmp::Reverse(prompts[i].ids.len()), i, s));
    let g = &cfg.generate;
    let opts = GenerateOptions {
        sampler: TokenSampler { temperature: g.temperature, top_k: g.top_k as i64, top_p: g.top_p },
        max_new_tokens: cfg.eval.max_new_tokens.unwrap_or(task.max_new_tokens()),
        min_new_tokens: g.min_new_tokens,
        stop_strings: g.stop.clone(),
        // The reference stops at the tokenizer's eos token only; l2d at every id generation_config.json lists.
        eos_ids: match (protocol, engine.session.tokenizer.eos_token_id) {
            (Protocol::Paper, Some(id)) => vec![id],
            _ => engine.session.tokenizer.eos_ids.clone(),
        },
        pad_id: engine.session.tokenizer.pad_id,
    };
    let masked: Vec<i64> = match (mask_prompt_pad(cfg, protocol), engine.session.tokenizer.reference_pad_id()) {
        (true, Some(id)) => vec![id],
        _ => Vec::new(),
    };
    let per_setting = order.len() as u64;
    let mut progress = Progress::new(progress, format!("eval {}", task.name()), "completions", per_setting * plans.len() as u64, 0);
    let mut new_tokens = 0usize;
    let batches: Vec<&[Unit]> = order.chunks(cfg.eval.batch_size).collect();
    for round in batches.chunks(dist.world_size()) {
        let mine = round.get(dist.rank()).copied();
        let state = match mine {
            Some(batch) => {
                let batch_prompts: Vec<Vec<i64>> = batch.iter().map(|&(i, _)| prompts[i].ids.clone()).collect();
                Some(prefill_masked(&engine.session.model, &batch_prompts, &opts, &masked)?)
            }
            None => None,
        };
        for plan in plans {
            progress.inc(round.iter().map(|b| b.len() as u64).sum());
            // `done` is the same on every rank, so all skip (or join) the round's gather alike.
            if !round.iter().any(|b| b.iter().any(|u| missing(u, plan, done))) {
                continue;
            }
            let mut lines = Vec::new();
            if let (Some(batch), Some(state)) = (mine, &state) {
                let noise = RowNoise::new(
                    batch.iter().map(|&(i, s)| RowNoise::key(g.seed, &[task.name(), &plan.setting.label, &items[i].id, &s.to_string()])).collect(),
                );
                // A head per batch: its evaluation count is this batch's alone, whichever batches this rank ran before.
                let mut head = engine.head(plan.sampler.as_ref().map(|o| task_sampler(protocol, task, o)), data.class, cfg.l2d.guidance_weight);
                let start = Instant::now();
                let gens = decode(&engine.session.model, Some(&engine.session.tokenizer), head.as_mut(), state.duplicate(), noise, &opts, &mut |_, _| {})?;
                let share = start.elapsed().as_secs_f64() / batch.len() as f64;
                let evals = if plan.sampler.is_some() { head.evals_per_token() } else { 0.0 };
                lines = batch
                    .iter()
                    .zip(gens)
                    .filter(|(u, _)| missing(u, plan, done))
                    .map(|(&(i, s), gen)| Line {
                        task: task.name().into(),
                        setting: plan.setting.label.clone(),
                        task_id: items[i].id.clone(),
                        sample: s,
                        completion: gen.text,
                        new_tokens: gen.token_ids.len(),
                        finish: gen.finish,
                        decode_s: share,
                        evals_per_token: evals,
                    })
                    .collect();
            }
            let lines = gather_lines(dist, lines)?;
            if let Some(journal) = journal.as_deref_mut().filter(|_| !lines.is_empty()) {
                journal.append(&lines)?;
            }
            new_tokens += lines.iter().map(|l| l.new_tokens).sum::<usize>();
            let message = format!(
                "{} settings of {per_setting} completions each, {:.1} new tokens/s",
                plans.len(),
                new_tokens as f64 / progress.elapsed_s().max(1e-9)
            );
            progress.update(progress.done(), message);
            done.extend(lines.into_iter().map(|l| (key(&l), l)));
        }
    }
    progress.finish();
    Ok(())
}

/// Completions per item: `eval.samples`, else the protocol's (paper: n = 10 for code, as
/// `cfgs/benchmark_code.cfg:8`, and 1 otherwise; clean: 1).
fn samples_per_item(cfg: &Config, protocol: Protocol, task: Task) -> usize {
    match (cfg.eval.samples, protocol) {
        (Some(n), _) => n,
        (None, Protocol::Paper) if task.is_code() => 10,
        (None, _) => 1,
    }
}

/// Whether prompt pad tokens are kept out of attention: `eval.mask_prompt_pad`, else on in the paper protocol.
fn mask_prompt_pad(cfg: &Config, protocol: Protocol) -> bool {
    cfg.eval.mask_prompt_pad.unwrap_or(protocol == Protocol::Paper)
}

/// The L2D sampler of a task: in the paper protocol the reference's per-task `x1_hat` (argmax, the
/// model configs' `nstep_temperature_schedule = 0.0`, for answer tasks; `polynomial_1_1.0` for code,
/// `scripts/run_bench_full.sh:15`); in the clean protocol `[l2d]` as configured.
fn task_sampler(protocol: Protocol, task: Task, opts: &SamplerOptions) -> SamplerOptions {
    let mut opts = opts.clone();
    if protocol == Protocol::Paper {
        (opts.x1_temperature, opts.x1_schedule) = if task.is_code() {
            (1.0, X1Schedule::Polynomial { power: 1.0, end: 1.0 })
        } else {
            (0.0, X1Schedule::Constant)
        };
    }
    opts
}

/// Scores the completions of one task under one setting (in dataset order) and sums their cost.
fn score_setting(
    data: &TaskData,
    plan: &Plan,
    lines: &[&Line],
    protocol: Protocol,
    workers: usize,
) -> (ResultEntry, Vec<Example>) {
    let samples: Vec<Sample> =
        lines.iter().map(|l| Sample { task_id: l.task_id.clone(), completion: l.completion.clone() }).collect();
    let scored = score::score(&data.dataset, &samples, protocol, &SandboxOptions::default(), workers);
    let tokens: usize = lines.iter().map(|l| l.new_tokens).sum();
    let wall_s: f64 = lines.iter().map(|l| l.decode_s).sum();
    let mut setting = plan.setting.clone();
    if plan.sampler.is_some() {
        // Each line holds its batch's evaluations per decoding step: weighted by the tokens it made,
        // in key order, so the same on any batch-to-rank assignment.
        let weighted: f64 = lines.iter().map(|l| l.evals_per_token * l.new_tokens as f64).sum();
        setting.evals_per_token = match tokens {
            0 => lines.first().map(|l| l.evals_per_token),
            n => Some(weighted / n as f64),
        };
    }
    let generation = GenerationStats { tokens, tokens_per_s: if wall_s > 0.0 { tokens as f64 / wall_s } else { 0.0 }, wall_s };
    let left_out = Some(data.left_out);
    (ResultEntry { setting, generation: Some(generation), left_out, report: scored.report }, scored.examples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::L2dConfig;

    #[test]
    fn paper_x1_is_argmax_for_answers_and_polynomial_for_code() {
        let configured = SamplerOptions::from_config(&L2dConfig::default());
        let answer = task_sampler(Protocol::Paper, Task::Gsm8k, &configured);
        assert_eq!((answer.x1_temperature, answer.x1_schedule), (0.0, X1Schedule::Constant));
        let code = task_sampler(Protocol::Paper, Task::Mbpp, &configured);
        assert_eq!((code.x1_temperature, code.x1_schedule), (1.0, X1Schedule::Polynomial { power: 1.0, end: 1.0 }));
        let clean = task_sampler(Protocol::Clean, Task::Mbpp, &configured);
        assert_eq!((clean.x1_temperature, clean.x1_schedule), (configured.x1_temperature, configured.x1_schedule));
    }

    #[test]
    fn paper_draws_ten_code_samples_unless_told() {
        let mut cfg = Config::default();
        assert_eq!(samples_per_item(&cfg, Protocol::Paper, Task::HumanEval), 10);
        assert_eq!(samples_per_item(&cfg, Protocol::Paper, Task::Gsm8k), 1);
        assert_eq!(samples_per_item(&cfg, Protocol::Clean, Task::HumanEval), 1);
        cfg.eval.samples = Some(3);
        assert_eq!(samples_per_item(&cfg, Protocol::Paper, Task::HumanEval), 3);
    }
}
