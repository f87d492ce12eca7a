//! The training loop: gradient accumulation over micro-batches, clipping,
//! AdamW, the schedule, validation, metrics, crash-safe checkpoints and resume.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

use super::checkpoint;
use super::data::{micro_seed, BatchPlan, Source, TrainExample};
use super::identity::{self, Identity};
use super::optim::{clip_grad_norm, AdamW, Schedule};
use crate::progress::{Progress, ProgressMode};
use super::tensorboard::EventWriter;
use super::rundir::{open_run, restore_logs, resumes_after_restart, start_run, write_result, CHECKPOINTS};
use super::trainee::Trainee;
use super::Mode;
use crate::config::Config;
use crate::dist::{Dist, Settings};
use crate::l2d::TokenBatch;
use crate::model::adapters;
use crate::model::Llama;

/// What a finished (or interrupted) run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Optimizer steps completed.
    pub steps: u64,
    /// The signal that stopped the run early (rank 0 saved a checkpoint).
    pub interrupted: Option<Interrupt>,
    /// The last validation loss (at t ~ U(0,1) for L2D), when a valid split exists.
    pub valid_loss: Option<f64>,
    /// The trained result (L2D checkpoint or model directory), when the run completed.
    /// A `lora` run's adapter directory is `adapter` beside its merged model.
    pub result: Option<PathBuf>,
}

/// A signal that stopped a run: the group stops when any rank gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    /// That signal's number (SIGINT, SIGTERM).
    pub signal: i32,
    /// The lowest rank that got a signal; `None` alone.
    pub rank: Option<usize>,
    /// Whether this process saved the checkpoint (rank 0 does).
    pub saved_here: bool,
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean loss per loss-bearing token of the global batch.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds spent summing gradients and the loss over ranks (waiting for
    /// the slowest rank included; under ZeRO-1 the reduce-scatter, the norm's
    /// sum and the all-gather of the updated weights); ~0 alone.
    pub reduce_s: f64,
}

/// One optimizer step (0-based `step`) on the global batch `examples`: forward
/// and backward of this worker's micro-batches, gradient reduction, clipping
/// and AdamW at `lr`. A non-finite loss or gradient norm stops it before the
/// update, so the parameters stay those of the last good step.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    trainee: &mut Trainee,
    model: &Llama,
    opt: &mut AdamW,
    examples: &[TrainExample],
    cfg: &Config,
    step: u64,
    lr: f64,
    dist: &Dist,
) -> Result<StepStats> {
    let t = &cfg.train;
    let loss_tokens: i64 = examples.iter().map(|e| e.labels.iter().skip(1).filter(|&&l| l != -100).count() as i64).sum();
    let mut loss_sum = 0.0;
    for (m, micro) in examples.chunks(t.micro_batch_size).enumerate().filter(|(m, _)| m % dist.world_size() == dist.rank()) {
        tch::manual_seed(micro_seed(t.seed, step, m));
        let batch = to_batch(micro, cfg, model.device());
        let (sum, _) = trainee.nll(model, &batch, true)?;
        (&sum / loss_tokens.max(1) as f64).backward();
        loss_sum += sum.double_value(&[]);
    }
    let named = trainee.params(model);
    let reduce_start = Instant::now();
    let loss = reduce_loss(dist, &named, loss_sum)? / loss_tokens.max(1) as f64;
    let check = |grad_norm: f64| -> Result<()> {
        if !loss.is_finite() || !grad_norm.is_finite() {
            anyhow::bail!("loss {loss} / gradient norm {grad_norm} is not finite; stopped before updating");
        }
        Ok(())
    };
    let (grad_norm, reduce_s) = if opt.is_sharded() {
        let loss_s = reduce_start.elapsed().as_secs_f64();
        let (grad_norm, collectives_s) = opt.sharded_step(&named, lr, t.grad_clip, dist, check)?;
        (grad_norm, loss_s + collectives_s)
    } else {
        let grads: Vec<Tensor> = named.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
        dist.sum(&grads, "gradients")?;
        let reduce_s = reduce_start.elapsed().as_secs_f64();
        let grad_norm = clip_grad_norm(&named, t.grad_clip);
        check(grad_norm)?;
        opt.step(&named, lr);
        (grad_norm, reduce_s)
    };
    zero_grad(&named);
    trainee.refresh(model);
    Ok(StepStats { loss, grad_norm, reduce_s })
}

/// Sums the loss over workers and returns it; gives a zero gradient to each
/// tensor that only some workers computed one for (one that none computed
/// stays undefined, as alone), so that every worker then holds the same set
/// of gradients to reduce (each rank's loss is already divided by the global
/// token count, so the gradients are summed).
fn reduce_loss(dist: &Dist, named: &[(String, Tensor)], loss_sum: f64) -> Result<f64> {
    let mut values = vec![loss_sum];
    values.extend(named.iter().map(|(_, p)| f64::from(u8::from(p.grad().defined()))));
    let summed = dist.sum_f64(&values, "the loss and gradient flags")?;
    let missing: Vec<&Tensor> =
        named.iter().zip(&summed[1..]).filter(|((_, p), &computed)| computed > 0.0 && !p.grad().defined()).map(|((_, p), _)| p).collect();
    define_zero_grads(&missing);
    Ok(summed[0])
}

/// Gives `params` zero gradients (tch cannot assign `.grad` directly).
fn define_zero_grads(params: &[&Tensor]) {
    if let Some(zero) = params.iter().map(|p| p.sum(Kind::Float) * 0.0).reduce(|a, b| a + b) {
        zero.backward();
    }
}

/// Makes every rank start from rank 0's state: the step it resumes at, the
/// trainable weights and the optimizer's moments. Returns the start step.
fn start_from_main(dist: &Dist, start: u64, params: &[(String, Tensor)], opt: &mut AdamW) -> Result<u64> {
    let start = dist.sum_f64(&[if dist.is_main() { start as f64 } else { 0.0 }], "the start step")?[0] as u64;
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).chain(opt.state_tensors().into_iter().map(|(_, t)| t)).collect();
    dist.broadcast_from_main(&tensors, "the start weights and optimizer state")?;
    opt.step = start as i64;
    opt.shard_from_main(params, dist)?;
    Ok(start)
}

/// AdamW over `params`, its state sharded across `dist`'s ranks when
/// `train.zero = 1` (with the f32 masters when the model computes in `kind` other than f32).
fn new_optimizer(cfg: &Config, params: &[(String, Tensor)], dist: &Dist, kind: Kind) -> Result<AdamW> {
    let t = &cfg.train;
    let (betas, eps, decay) = ((t.betas[0], t.betas[1]), t.eps, t.weight_decay);
    if t.zero == 1 {
        return AdamW::new_sharded(params, (betas, eps, decay), dist, Settings::from(&cfg.dist).bucket_bytes, kind != Kind::Float);
    }
    Ok(AdamW::new(params, betas, eps, decay))
}

/// The training data `data.out` names (prepared shards or a pretokenized JSONL
/// file), checked to exist; `None` when unset.
pub fn data_path(cfg: &Config) -> Result<Option<PathBuf>> {
    let Some(path) = cfg.data.out.as_ref().map(PathBuf::from) else {
        return Ok(None);
    };
    if !path.exists() {
        crate::bail_usage!(
            "data.out: {} does not exist (`l2d prepare --out {}` writes shards there; a pretokenized JSONL file also works)",
            path.display(),
            path.display()
        );
    }
    Ok(Some(path))
}

/// Trains as `cfg` says, writing into `out`; `resume` continues from the
/// newest valid checkpoint there (see [`identity`] for what it may change).
/// `signal` is the number of a signal asking this process to stop (0 while
/// none): the group then stops after the step, and rank 0 saves.
pub fn train(cfg: &Config, out: &Path, resume: bool, signal: Arc<AtomicUsize>, shown: ProgressMode) -> Result<Outcome> {
    super::keep_freed_memory();
    let mode = cfg.train.mode;
    if mode == Mode::Lora {
        // Refuse unknown module names before loading anything heavy.
        adapters::Settings::from_config(&cfg.lora)?;
    }
    let t = &cfg.train;
    let (dist, device) = crate::dist::join_checked(cfg)?;
    let device = crate::runtime::parse_device(&device)?;
    let shown = if dist.is_main() { shown } else { ProgressMode::quiet() };
    let kind = crate::runtime::kind_of(cfg.model.dtype, device)?;
    let base_dir = PathBuf::from(&cfg.model.path);
    let data_path = data_path(cfg)?.ok_or_else(|| {
        crate::error::usage(
            "data.out: not set; point it at the directory `l2d prepare` wrote (--set data.out=DIR) or at a pretokenized JSONL file",
        )
    })?;
    // Refuse shards of another tokenizer before loading anything heavy.
    if data_path.is_dir() {
        crate::data::shards::check_tokenizer(&data_path, &base_dir)?;
    }
    let vocab_size = crate::model::ModelConfig::load(&base_dir.join("config.json"))?.vocab_size;
    let train_data = Source::open(&data_path, "train", vocab_size).context("data.out")?;
    if train_data.is_empty() {
        crate::bail_usage!("{}: the training split holds no examples", data_path.display());
    }
    warn_of_cut_examples(&train_data, t.max_seq_len, &data_path);
    let valid_data = Source::open_valid(&data_path, vocab_size).context("data.out")?;
    // Everything a resume is checked against, before anything is written or loaded.
    let identity = Identity::of(&base_dir, &data_path)?;
    let ckpt_dir = out.join(CHECKPOINTS);
    let resume = resume || resumes_after_restart(&dist, out)?;
    // Only rank 0 touches the run directory; the others get its state by broadcast.
    let (resumed, changes, made) = match (dist.is_main(), resume) {
        (false, _) => (None, Vec::new(), crate::io::CreatedDirs::default()),
        (true, true) => {
            let (resumed, changes) = open_run(out, cfg, &identity)?;
            (resumed, changes, crate::io::CreatedDirs::default())
        }
        (true, false) => (None, Vec::new(), start_run(out)?),
    };
    if dist.is_main() {
        dist.mark_run_started()?;
    }
    // A model that does not load leaves no run directory behind.
    let model = Llama::load(&base_dir, device, kind).inspect_err(|_| made.remove_empty())?;
    if dist.is_main() {
        crate::io::write_atomic(&out.join(checkpoint::CONFIG), cfg.to_toml_string().as_bytes())?;
    }
    let plan = BatchPlan::new(train_data.lengths(), t.batch_size, t.seed);
    // The schedule spans `total` steps; the run may end earlier.
    let (total, end) = plan.steps(t);
    let schedule = Schedule::new(t, total);

    tch::manual_seed(t.seed as i64);
    let mut trainee = Trainee::new(mode, &model, cfg)?;
    let mut opt = new_optimizer(cfg, &trainee.params(&model), &dist, model.kind())?;
    let start = resumed.as_ref().map_or(0, |c| c.state.step);
    if let Some(ckpt) = &resumed {
        checkpoint::restore(ckpt, &trainee.params(&model), &mut opt)?;
        tracing::info!(step = start, dir = %ckpt.dir.display(), "resumed");
    }
    let start = start_from_main(&dist, start, &trainee.params(&model), &mut opt)?;
    if opt.keeps_masters() {
        trainee.lower_to_compute_dtype(&model);
    }
    trainee.refresh(&model);
    if dist.is_main() {
        restore_logs(out, resumed.as_ref())?;
    }

    let mut log = if dist.is_main() { Some(MetricsLog::open(out, start + 1)?) } else { None };
    if let (Some(log), false) = (&mut log, changes.is_empty()) {
        log.write_jsonl(&identity::change_record(start, &changes))?;
    }
    let config_toml = cfg.to_toml_string();
    let saved = checkpoint::Saved { run_dir: out, config_toml: &config_toml, mode: t.mode.name(), seed: t.seed, total_steps: total, identity: &identity };
    let save = |step: u64, params: &[(String, Tensor)], opt: &AdamW| -> Result<()> {
        // Under ZeRO-1 every rank takes part in gathering the state (and the
        // f32 masters, which the lowered trainable tensors only round).
        let masters = opt.full_masters(&dist)?;
        let state = opt.full_state(&dist)?;
        if !dist.is_main() {
            return Ok(());
        }
        checkpoint::save(&ckpt_dir, step, masters.as_deref().unwrap_or(params), &state, &saved, t.keep_last)
    };
    let mut progress = Progress::new(shown, "train", "steps", end, start);
    let started = Instant::now();
    let mut step = start;
    let mut valid_loss = None;
    while step < end {
        if let Some(interrupt) = stop_signal(&dist, &signal)? {
            save(step, &trainee.params(&model), &opt)?;
            // No rank ends before the checkpoint is whole: a launcher that
            // sees one rank end stops the others (torchrun: SIGTERM, then SIGKILL).
            dist.sum_f64(&[0.0], "the end after the interrupt checkpoint")?;
            progress.finish();
            return Ok(Outcome { steps: step, interrupted: Some(interrupt), valid_loss, result: None });
        }
        let step_start = Instant::now();
        let lr = schedule.at(step);
        let examples: Vec<TrainExample> =
            plan.batch(step).into_iter().map(|i| train_data.get(i, t.max_seq_len)).collect();
        let StepStats { loss, grad_norm, reduce_s } = optimizer_step(&mut trainee, &model, &mut opt, &examples, cfg, step, lr, &dist)
            .map_err(|e| {
                let last = checkpoint::step_dirs(&ckpt_dir).ok().and_then(|s| s.last().map(|(s, _)| format!("step {s}"))).unwrap_or_else(|| "none".into());
                e.context(format!("step {} (last good checkpoint: {last})", step + 1))
            })?;
        step += 1;
        let elapsed = step_start.elapsed().as_secs_f64();
        let tokens: usize = examples.iter().map(|e| e.input_ids.len()).sum();
        if let Some(log) = &mut log {
            let mut rec = serde_json::json!({
                "step": step, "loss": loss, "lr": lr, "warmup_type": t.warmup_type.name(), "grad_norm": grad_norm,
                "tokens": tokens, "tokens_per_s": tokens as f64 / elapsed,
                "elapsed_s": started.elapsed().as_secs_f64(),
                "peak_rss_bytes": super::resident_memory().map(|(_, peak)| peak),
            });
            if dist.world_size() > 1 {
                // What data parallelism costs: the reduction's share of the step.
                rec["step_s"] = elapsed.into();
                rec["reduce_s"] = reduce_s.into();
            }
            log.write(&rec)?;
        }
        if let Some(valid) = &valid_data {
            if step == end || (t.eval_every > 0 && step % t.eval_every == 0) {
                let rec = validate(&trainee, &model, valid, cfg, device, step, shown)?;
                valid_loss = rec["valid_loss"].as_f64();
                if let Some(log) = &mut log {
                    log.write(&rec)?;
                }
            }
        }
        let valid_text = valid_loss.map(|v: f64| format!(", valid loss {v:.4}")).unwrap_or_default();
        progress.update(step, format!("loss {loss:.4}, lr {lr:.2e}, {:.0} tokens/s{valid_text}", tokens as f64 / elapsed));
        if step == end || (t.save_every > 0 && step % t.save_every == 0) {
            save(step, &trainee.params(&model), &opt)?;
        }
    }
    progress.finish();
    let masters = opt.full_masters(&dist)?;
    let result = if dist.is_main() {
        if let Some(masters) = masters {
            // The result in f32 from the masters, as unsharded.
            trainee.raise_to_masters(&model, masters);
        }
        Some(write_result(&trainee, &model, cfg, &base_dir, out, step)?)
    } else {
        None
    };
    Ok(Outcome { steps: step, interrupted: None, valid_loss, result })
}

/// The signal that stops the group before the next step, if any rank got one.
/// Every rank checks at the same step, so all stop after the same finished
/// step and rank 0's state is the group's: its checkpoint is consistent.
fn stop_signal(dist: &Dist, signal: &AtomicUsize) -> Result<Option<Interrupt>> {
    let mut signals = vec![0.0; dist.world_size()];
    signals[dist.rank()] = signal.load(Ordering::SeqCst) as f64;
    let signals = dist.sum_f64(&signals, "the stop flag")?;
    Ok(signals.iter().position(|&s| s > 0.0).map(|rank| Interrupt {
        signal: signals[rank] as i32,
        rank: (dist.world_size() > 1).then_some(rank),
        saved_here: dist.is_main(),
    }))
}

/// One warning when examples are longer than `max_seq_len` and will be cut.
fn warn_of_cut_examples(data: &Source, max_seq_len: usize, path: &Path) {
    let cut = data.lengths().iter().filter(|&&l| l > max_seq_len).count();
    if cut > 0 {
        tracing::warn!(
            "{}: {cut} of {} training examples are longer than train.max_seq_len ({max_seq_len}) and will be cut to it",
            path.display(),
            data.len()
        );
    }
}

/// Where metric records go: `metrics.jsonl` and a TensorBoard event file in `tb/`.
struct MetricsLog {
    jsonl: std::fs::File,
    events: EventWriter,
}

impl MetricsLog {
    /// Appends to the run's `metrics.jsonl`; starts a new event file whose
    /// records begin at `first_step` (superseding earlier files' from there on).
    fn open(out: &Path, first_step: u64) -> Result<Self> {
        let path = out.join(checkpoint::METRICS);
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { jsonl, events: EventWriter::create(&out.join(checkpoint::TENSORBOARD), first_step)? })
    }

    /// Appends one record to both, flushed, so a killed run loses no finished step.
    fn write(&mut self, rec: &serde_json::Value) -> Result<()> {
        self.write_jsonl(rec)?;
        self.events.write_record(rec)
    }

    /// Appends a record that is no scalar (a config change) to `metrics.jsonl` only.
    fn write_jsonl(&mut self, rec: &serde_json::Value) -> Result<()> {
        writeln!(self.jsonl, "{rec}")?;
        self.jsonl.flush()?;
        Ok(())
    }
}

/// Right-padded batch of examples; class labels per token with the guidance
/// dropout applied (each token's label becomes "no label" with that probability).
fn to_batch(examples: &[TrainExample], cfg: &Config, device: tch::Device) -> TokenBatch {
    let seqs: Vec<(&[i64], &[i64])> = examples.iter().map(TrainExample::sequence).collect();
    let mut batch = TokenBatch::from_sequences(&seqs, device);
    if cfg.l2d.num_classes > 0 {
        let (b, t) = batch.input_ids.size2().expect("[B, T]");
        let classes: Vec<i64> = examples.iter().map(|e| e.class_id).collect();
        let labels = Tensor::from_slice(&classes).to_device(device).unsqueeze(1).expand([b, t], false);
        let drop = Tensor::rand([b, t], (Kind::Float, device)).lt(cfg.l2d.guidance_dropout);
        batch.class_labels = Some(labels.masked_fill(&drop, -1));
    }
    batch
}

fn zero_grad(params: &[(String, Tensor)]) {
    for (_, p) in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Validation loss over at most `train.eval_max_batches` micro-batches of the
/// valid split; for L2D also at the centres of four t bins.
fn validate(trainee: &Trainee, model: &Llama, valid: &Source, cfg: &Config, device: tch::Device, step: u64, shown: ProgressMode) -> Result<serde_json::Value> {
    let _guard = tch::no_grad_guard();
    let t_cfg = &cfg.train;
    let n = valid.len().min(t_cfg.eval_max_batches.map_or(usize::MAX, |b| b.saturating_mul(t_cfg.micro_batch_size)));
    let examples: Vec<TrainExample> = (0..n).map(|i| valid.get(i, t_cfg.max_seq_len)).collect();
    let bins: &[f64] = if matches!(trainee, Trainee::L2d(_)) { &[0.125, 0.375, 0.625, 0.875] } else { &[] };
    let batches = examples.len().div_ceil(t_cfg.micro_batch_size) as u64;
    let progress_total = batches * (1 + bins.len() as u64);
    let mut progress = Progress::new(shown, format!("validation at step {step}"), "batches", progress_total, 0);
    let mut eval_at = |t: Option<f64>| -> Result<f64> {
        tch::manual_seed(t_cfg.seed as i64);
        let (mut sum, mut count) = (0.0, 0i64);
        for micro in examples.chunks(t_cfg.micro_batch_size) {
            let batch = to_batch(micro, cfg, device);
            let (s, c) = match (trainee, t) {
                (Trainee::L2d(l), Some(t)) => {
                    l.nll_at(model, &batch, &Tensor::full(batch.input_ids.size().as_slice(), t, (Kind::Float, device)))?
                }
                (trainee, _) => trainee.nll(model, &batch, false)?,
            };
            sum += s.double_value(&[]);
            count += c.int64_value(&[]);
            progress.inc(1);
        }
        Ok(sum / count.max(1) as f64)
    };
    let loss = eval_at(None)?;
    let mut rec = serde_json::json!({"step": step, "valid_loss": loss});
    if !bins.is_empty() {
        let mut by_t = serde_json::Map::new();
        for &centre in bins {
            by_t.insert(format!("{centre}"), eval_at(Some(centre))?.into());
        }
        rec["valid_loss_t"] = by_t.into();
    }
    // The line that closes the pass carries its result.
    progress.update(progress_total, valid_summary(&rec));
    progress.finish();
    Ok(rec)
}

/// `valid loss 0.1234 (t=0.125 0.2, ...)` from a validation record.
fn valid_summary(rec: &serde_json::Value) -> String {
    let mut text = format!("valid loss {:.4}", rec["valid_loss"].as_f64().unwrap_or(f64::NAN));
    if let Some(by_t) = rec["valid_loss_t"].as_object() {
        let parts: Vec<String> = by_t.iter().map(|(t, v)| format!("t={t} {:.4}", v.as_f64().unwrap_or(f64::NAN))).collect();
        text.push_str(&format!(" ({})", parts.join(", ")));
    }
    text
}
