//! Prefill and decode throughput of the base LM and of L2D (midpoint, 8 levels
//! = 15 diffusion-path evaluations per token, a randomly perturbed LoRA path;
//! `l2d+g`: with classifier-free guidance, 29 per token):
//! `cargo bench --bench generate -- MODEL_DIR`.
//!
//! 64-token prompts, 32 new tokens (greedy, eos ignored); median of 5 runs (3
//! for L2D). Environment: `L2D_BENCH_THREADS` intra-op threads (default 2),
//! `L2D_BENCH_DEVICE` (default cpu), `L2D_BENCH_DTYPE` (default f32),
//! `L2D_BENCH_BATCHES` (default 1,8), `L2D_BENCH_HEADS` (default base,l2d,l2d+g).

use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

use l2d::config::L2dConfig;
use l2d::l2d::sampler::{L2dHead, SamplerOptions};
use l2d::l2d::L2dDecoder;
use l2d::l2d::{L2d, Shape};
use l2d::model::Llama;
use l2d::runtime;
use l2d::sampling::{generate, BaseLm, GenerateOptions, NextTokenLogits, TokenSampler};

const PROMPT_LEN: i64 = 64;
const NEW_TOKENS: usize = 32;
const RUNS: usize = 5;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).map(PathBuf::from);
    let Some(dir) = dir else {
        anyhow::bail!("usage: cargo bench --bench generate -- MODEL_DIR");
    };
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let threads: i32 = env("L2D_BENCH_THREADS", "2").parse()?;
    let (device_name, dtype) = (env("L2D_BENCH_DEVICE", "cpu"), env("L2D_BENCH_DTYPE", "f32"));
    let batches: Vec<usize> = env("L2D_BENCH_BATCHES", "1,8").split(',').map(str::parse).collect::<Result<_, _>>()?;
    let heads = env("L2D_BENCH_HEADS", "base,l2d,l2d+g");
    let heads: Vec<&str> = heads.split(',').collect();
    tch::set_num_threads(threads);
    let device = runtime::parse_device(&device_name)?;
    let model = Llama::load(&dir, device, runtime::kind_of(dtype.parse().map_err(anyhow::Error::msg)?, device)?)?;
    let opts = GenerateOptions {
        sampler: TokenSampler { temperature: 0.0, top_k: 0, top_p: 1.0 },
        max_new_tokens: NEW_TOKENS,
        min_new_tokens: NEW_TOKENS,
        stop_strings: Vec::new(),
        eos_ids: Vec::new(),
        pad_id: 0,
    };
    println!("model {} | {device_name}, {threads} threads, {dtype} | prompt {PROMPT_LEN}, new {NEW_TOKENS}", dir.display());
    println!("{:>6} {:>6} {:>18} {:>18}", "head", "batch", "prefill tok/s", "decode tok/s");
    for &batch in batches.iter().filter(|_| heads.contains(&"base")) {
        let (p, d) = measure(&model, &opts, batch, RUNS, &mut || Box::new(BaseLm))?;
        println!("{:>6} {batch:>6} {p:>18.1} {d:>18.1}", "base");
    }
    let plain = L2dConfig::default();
    // Classifier-free guidance (weight 2): two evaluations per velocity, 29 per token.
    let guided = L2dConfig { num_classes: 2, guidance_class: Some(1), guidance_weight: 2.0, ..L2dConfig::default() };
    for (name, cfg) in [("l2d", plain), ("l2d+g", guided)].into_iter().filter(|(name, _)| heads.contains(name)) {
        tch::manual_seed(0);
        let l2d = L2d::init(&model, Shape::from_config(&cfg), cfg.sigma)?;
        tch::no_grad(|| {
            for (_, p) in &l2d.params {
                let mut p = p.shallow_clone();
                let _ = p.g_add_(&(Tensor::randn_like(&p) * 0.02));
            }
        });
        let sampler = SamplerOptions::from_config(&cfg);
        let decoder = L2dDecoder::new(&model, &l2d);
        for &batch in &batches {
            let mut make = || -> Box<dyn NextTokenLogits + '_> { Box::new(L2dHead::new(&decoder, sampler.clone())) };
            let (p, d) = measure(&model, &opts, batch, 3, &mut make)?;
            println!("{name:>6} {batch:>6} {p:>18.1} {d:>18.1}");
        }
    }
    Ok(())
}

/// Median prefill and decode tokens/s over `runs` generations after a warm-up.
// The heads borrow the model; clippy's elided form does not compile (a `'_` in
// an `FnMut`'s return names no input lifetime).
#[allow(clippy::needless_lifetimes)]
fn measure<'m>(
    model: &'m Llama,
    opts: &GenerateOptions,
    batch: usize,
    runs: usize,
    head: &mut dyn FnMut() -> Box<dyn NextTokenLogits + 'm>,
) -> anyhow::Result<(f64, f64)> {
    tch::manual_seed(0);
    let ids = Tensor::randint_low(3, model.config.vocab_size, [batch as i64, PROMPT_LEN], (Kind::Int64, Device::Cpu));
    let prompts: Vec<Vec<i64>> = (0..batch).map(|i| Vec::try_from(ids.get(i as i64)).unwrap()).collect();
    generate(model, None, head().as_mut(), &prompts, opts, &mut |_, _| {})?;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..runs {
        let out = generate(model, None, head().as_mut(), &prompts, opts, &mut |_, _| {})?;
        let g = &out[0];
        prefill.push((batch as f64 * PROMPT_LEN as f64) / g.prefill_s);
        decode.push((batch * (g.token_ids.len() - 1)) as f64 / g.decode_s);
    }
    Ok((median(&mut prefill), median(&mut decode)))
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}
