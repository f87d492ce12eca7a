//! Base-LM prefill and decode throughput: `cargo bench --bench generate -- MODEL_DIR`.
//!
//! 64-token prompts, 32 new tokens (greedy, eos ignored), batch 1 and 8, on the
//! CPU with `L2D_BENCH_THREADS` (default 2) intra-op threads; median of 5 runs.

use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

use l2d::model::Llama;
use l2d::sampling::{generate, BaseLm, GenerateOptions, TokenSampler};

const PROMPT_LEN: i64 = 64;
const NEW_TOKENS: usize = 32;
const RUNS: usize = 5;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).map(PathBuf::from);
    let Some(dir) = dir else {
        anyhow::bail!("usage: cargo bench --bench generate -- MODEL_DIR");
    };
    let threads: i32 = std::env::var("L2D_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let model = Llama::load(&dir, Device::Cpu, Kind::Float)?;
    let opts = GenerateOptions {
        sampler: TokenSampler { temperature: 0.0, top_k: 0, top_p: 1.0 },
        max_new_tokens: NEW_TOKENS,
        min_new_tokens: NEW_TOKENS,
        stop_strings: Vec::new(),
        eos_ids: Vec::new(),
        pad_id: 0,
    };
    println!("model {} | cpu, {threads} threads, f32 | prompt {PROMPT_LEN}, new {NEW_TOKENS}", dir.display());
    println!("{:>6} {:>18} {:>18}", "batch", "prefill tok/s", "decode tok/s");
    for batch in [1usize, 8] {
        tch::manual_seed(0);
        let vocab = model.config.vocab_size;
        let ids = Tensor::randint_low(3, vocab, [batch as i64, PROMPT_LEN], (Kind::Int64, Device::Cpu));
        let prompts: Vec<Vec<i64>> = (0..batch).map(|i| Vec::try_from(ids.get(i as i64)).unwrap()).collect();
        generate(&model, None, &mut BaseLm, &prompts, &opts, &mut |_, _| {})?; // warm-up
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for _ in 0..RUNS {
            let out = generate(&model, None, &mut BaseLm, &prompts, &opts, &mut |_, _| {})?;
            let g = &out[0];
            prefill.push((batch as f64 * PROMPT_LEN as f64) / g.prefill_s);
            decode.push((batch * (g.token_ids.len() - 1)) as f64 / g.decode_s);
        }
        println!("{batch:>6} {:>18.1} {:>18.1}", median(&mut prefill), median(&mut decode));
    }
    Ok(())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}
