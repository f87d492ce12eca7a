//! Training throughput and peak memory: `cargo bench --bench train [-- MODEL_DIR]`.
//!
//! Full optimizer steps of the training loop's own step function (forward,
//! backward, clipping, AdamW) on micro-batches of 4 random sequences of 256
//! loss-bearing tokens, one micro-batch per step; 3 warm-up steps, then 5 runs
//! of 4 timed steps, of which the fastest and the median are reported (the
//! fastest is the one to quote on a shared machine, with the load average
//! printed beside it). Without MODEL_DIR, a `small` Llama is
//! built in a temporary directory. Environment: `L2D_BENCH_THREADS` intra-op
//! threads (default 2), `L2D_BENCH_DEVICE` (default cpu), `L2D_BENCH_DTYPE`
//! (default f32), `L2D_BENCH_MODES` (default l2d-lora,full), `L2D_BENCH_PROMPT`
//! (default 0): the first this many tokens of each sequence are a prompt
//! without loss, as in chat data (tokens/s still counts every token).
//!
//! Peak memory is the process's peak resident set (`VmHWM`), reset before each
//! mode, and its growth over the resident set before the model was loaded. The
//! allocator is set up as `l2d train` sets it up ([`keep_freed_memory`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use l2d::config::Config;
use l2d::init::{init_model_dir, Arch, InitOptions, Preset};
use l2d::model::Llama;
use l2d::runtime;
use l2d::train::data::TrainExample;
use l2d::train::optim::AdamW;
use l2d::dist::Dist;
use l2d::train::run::optimizer_step;
use l2d::train::trainee::Trainee;
use l2d::train::{keep_freed_memory, resident_memory};
use tch::{Kind, Tensor};

const BATCH: usize = 4;
const SEQ_LEN: i64 = 256;
const WARMUP_STEPS: u64 = 3;
const TIMED_STEPS: u64 = 4;
const RUNS: usize = 5;
const MIB: f64 = 1024.0 * 1024.0;

fn main() -> Result<()> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let threads: i32 = env("L2D_BENCH_THREADS", "2").parse()?;
    let (device_name, dtype) = (env("L2D_BENCH_DEVICE", "cpu"), env("L2D_BENCH_DTYPE", "f32"));
    let modes = env("L2D_BENCH_MODES", "l2d-lora,full");
    let prompt: usize = env("L2D_BENCH_PROMPT", "0").parse()?;
    anyhow::ensure!(prompt < SEQ_LEN as usize, "L2D_BENCH_PROMPT must be below {SEQ_LEN}");
    tch::set_num_threads(threads);
    keep_freed_memory();
    let device = runtime::parse_device(&device_name)?;
    let kind = runtime::kind_of(dtype.parse().map_err(anyhow::Error::msg)?, device)?;

    let tmp = tempfile::tempdir()?;
    let dir = match std::env::args().skip(1).find(|a| !a.starts_with("--")) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = tmp.path().join("small-llama");
            init_model_dir(&InitOptions { arch: Arch::Llama, preset: Preset::Small, out: dir.clone(), seed: 0, corpus: None })?;
            dir
        }
    };
    println!(
        "model {} | {device_name}, {threads} threads, {dtype} | {BATCH} x {SEQ_LEN} tokens per step ({prompt} of them prompt), AdamW, clip 1.0",
        dir.display()
    );
    println!("load average before: {}", load_average());
    println!(
        "{:>9} {:>14} {:>16} {:>12} {:>14} {:>16}",
        "mode", "best tokens/s", "median tokens/s", "best s/step", "peak RSS MiB", "over base MiB"
    );
    for mode in modes.split(',') {
        let (rss_before, _) = reset_peak_memory().ok_or_else(|| anyhow::anyhow!("no /proc/self/status"))?;
        let model = Llama::load(&dir, device, kind)?;
        let mut cfg = Config::default();
        cfg.train.mode = mode.parse().map_err(anyhow::Error::msg)?;
        cfg.train.batch_size = BATCH;
        cfg.train.micro_batch_size = BATCH;
        let (best, median) = measure(&model, &cfg, prompt)?;
        let (_, peak) = resident_memory().ok_or_else(|| anyhow::anyhow!("no /proc/self/status"))?;
        let tokens = BATCH as f64 * SEQ_LEN as f64;
        println!(
            "{mode:>9} {:>14.0} {:>16.0} {best:>12.3} {:>14.1} {:>16.1}",
            tokens / best,
            tokens / median,
            peak as f64 / MIB,
            peak.saturating_sub(rss_before) as f64 / MIB
        );
    }
    println!("load average after: {}", load_average());
    Ok(())
}

/// Seconds per optimizer step, fastest and median over `RUNS` runs of `TIMED_STEPS`, after warm-up.
fn measure(model: &Llama, cfg: &Config, prompt: usize) -> Result<(f64, f64)> {
    tch::manual_seed(0);
    let mut trainee = Trainee::new(cfg.train.mode, model, cfg)?;
    let t = &cfg.train;
    let mut opt = AdamW::new(&trainee.params(model), (t.betas[0], t.betas[1]), t.eps, t.weight_decay);
    let batches: Vec<Vec<TrainExample>> = (0..4).map(|_| random_batch(model.config.vocab_size, prompt)).collect();
    let mut step = 0u64;
    let mut run_steps = |n: u64| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..n {
            let examples = &batches[step as usize % batches.len()];
            optimizer_step(&mut trainee, model, &mut opt, examples, cfg, step, 1e-4, &Dist::single())?;
            step += 1;
        }
        sync(model.device());
        Ok(start.elapsed().as_secs_f64() / n as f64)
    };
    run_steps(WARMUP_STEPS)?;
    let mut times = (0..RUNS).map(|_| run_steps(TIMED_STEPS)).collect::<Result<Vec<f64>>>()?;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((times[0], times[RUNS / 2]))
}

/// `BATCH` sequences of `SEQ_LEN` random tokens, loss-bearing after the first `prompt`.
fn random_batch(vocab: i64, prompt: usize) -> Vec<TrainExample> {
    let ids = Tensor::randint_low(3, vocab, [BATCH as i64, SEQ_LEN], (Kind::Int64, tch::Device::Cpu));
    (0..BATCH as i64)
        .map(|i| {
            let input_ids = Vec::<i64>::try_from(ids.get(i)).expect("int64 row");
            let labels = input_ids.iter().enumerate().map(|(i, &id)| if i < prompt { -100 } else { id }).collect();
            TrainExample { labels, input_ids, class_id: -1 }
        })
        .collect()
}

/// Waits for queued GPU work, so that a timing covers it.
fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The 1, 5 and 15-minute load averages: other work on the machine slows the steps.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Hands the heap's free memory back (which [`keep_freed_memory`] keeps from
/// step to step) and resets the peak resident set to the current one (Linux
/// `clear_refs` 5), so that each mode's peak is its own; returns the resident
/// memory after the reset.
fn reset_peak_memory() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    resident_memory()
}
