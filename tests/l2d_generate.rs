//! `l2d generate --l2d` (Algorithm 1) as outside scripts call it, and its bad input.

mod common;
use common::*;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use l2d::l2d::checkpoint;
use l2d::l2d::sampler::{L2dHead, SamplerOptions};
use l2d::l2d::L2d;
use l2d::model::Llama;
use l2d::sampling::{generate, GenerateOptions, NextTokenLogits, TokenSampler};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

fn gen(ckpt: Option<&Path>, extra: &[&str]) -> std::process::Output {
    let m = tiny_model("llama");
    let args = ["generate", "--model", m.to_str().unwrap(), "--prompt", "Tom has 3 apples", "--max-new-tokens", "6", "--min-new-tokens", "6", "--temperature", "0", "--json"];
    l2d_with_checkpoint(&args, ckpt, extra)
}

/// A fresh L2D model is the base LM at every t, so greedy decoding through the
/// whole Algorithm 1 must give the base LM's tokens; the evaluation count is exact.
#[test]
fn fresh_checkpoint_decodes_like_the_base_lm_with_exact_evaluation_counts() {
    let ckpt = checkpoint_for("fresh", 0, false, false);
    let base = json(&ok(gen(None, &[])));
    assert_eq!(base["nfe_per_token"], 1.0);
    for (solver, steps, nfe) in [("midpoint", "8", 15.0), ("euler", "8", 8.0), ("midpoint", "2", 3.0), ("rk4", "3", 8.0)] {
        let out = json(&ok(gen(Some(&ckpt), &["--solver", solver, "--steps", steps])));
        assert_eq!(out["completion_token_ids"], base["completion_token_ids"], "{solver} {steps}");
        assert_eq!(out["nfe_per_token"], nfe, "{solver} with {steps} levels");
    }
    let adaptive = json(&ok(gen(Some(&ckpt), &["--solver", "dopri5", "--atol", "1e-4", "--rtol", "1e-4", "--x1-temperature", "0"])));
    assert_eq!(adaptive["completion_token_ids"], base["completion_token_ids"]);
    assert!(adaptive["nfe_per_token"].as_f64().unwrap() > 2.0);
}

#[test]
fn trained_checkpoint_changes_the_output_and_is_seeded() {
    let ckpt = checkpoint_for("perturbed", 2, true, false);
    let a = json(&ok(gen(Some(&ckpt), &["--seed", "1", "--x1-estimate", "average", "--guidance-class", "1", "--guidance-weight", "2"])));
    let b = json(&ok(gen(Some(&ckpt), &["--seed", "1", "--x1-estimate", "average", "--guidance-class", "1", "--guidance-weight", "2"])));
    assert_eq!(a["completion_token_ids"], b["completion_token_ids"], "same seed, same tokens");
    // Guidance doubles the evaluations of each ODE step: 7 steps x 2 x 2 + 1.
    assert_eq!(a["nfe_per_token"], 29.0);
    let sched = json(&ok(gen(Some(&ckpt), &["--x1-schedule", "polynomial_1_1.0"])));
    assert_eq!(sched["nfe_per_token"], 15.0);
}

#[test]
fn l2d_bad_input() {
    let fresh = checkpoint_for("bad-input", 0, false, false);
    assert_error(&gen(Some(&fresh), &["--solver", "leapfrog"]), 2, &["leapfrog"]);
    assert_error(&gen(Some(&fresh), &["--steps", "1"]), 2, &["steps"]);
    assert_error(&gen(Some(&fresh), &["--x1-schedule", "cosine"]), 2, &["x1_schedule", "cosine"]);
    assert_error(&gen(Some(&fresh), &["--x1-estimate", "mode"]), 2, &["x1_estimate", "mode"]);
    assert_error(&gen(Some(&fresh), &["--guidance-class", "0"]), 2, &["guidance"]);
    assert_error(&gen(Some(Path::new("/nonexistent/ckpt")), &[]), 2, &["/nonexistent/ckpt"]);
    // A bare export read with the wrong rank names the tensor.
    let file = fresh.join(checkpoint::TENSORS);
    let out = gen(Some(&file), &["--set", "l2d.flow_dim=32", "--set", "l2d.timestep_dim=16", "--set", "l2d.lora_rank=8", "--set", "l2d.lora_alpha=4"]);
    assert_error(&out, 2, &["flow_q_proj.A", "shape"]);
    // ... and with the right hyper-parameters it loads and runs.
    let out = gen(Some(&file), &["--set", "l2d.flow_dim=32", "--set", "l2d.timestep_dim=16", "--set", "l2d.lora_rank=4", "--set", "l2d.lora_alpha=4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // NaN in the ODE state is a runtime failure, reported in one line.
    let poisoned = checkpoint_for("poisoned", 0, true, true);
    assert_error(&gen(Some(&poisoned), &[]), 1, &["NaN"]);
}

/// The sampler on a padded batch equals each prompt alone (argmax x1, greedy tokens).
#[test]
fn l2d_batch_with_padding_equals_one_by_one() {
    let base = tiny_model("llama");
    let model = Llama::load(&base, Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(3);
    let l2d = L2d::init(&model, shape(0), 64.0).unwrap();
    tch::no_grad(|| {
        for (_, p) in &l2d.params {
            let mut p = p.shallow_clone();
            let _ = p.g_add_(&(Tensor::randn_like(&p) * 0.05));
        }
    });
    let mut cfg = l2d::config::L2dConfig::default();
    cfg.x1_temperature = 0.0; // argmax x1: the ODE is deterministic given x0
    let opts = GenerateOptions {
        sampler: TokenSampler { temperature: 0.0, top_k: 0, top_p: 1.0 },
        max_new_tokens: 5,
        min_new_tokens: 5,
        stop_strings: vec![],
        eos_ids: vec![],
        pad_id: 0,
    };
    let mut l2d_sigma0 = l2d;
    l2d_sigma0.sigma = 0.0; // x0 = 0 makes every row's ODE independent of the noise draw
    let a: Vec<i64> = vec![5, 9, 30, 41, 7, 2, 99];
    let b: Vec<i64> = vec![12, 4];
    let mut head = L2dHead::new(&model, &l2d_sigma0, SamplerOptions::from_config(&cfg).unwrap()).unwrap();
    let batch = generate(&model, None, &mut head, &[a.clone(), b.clone()], &opts, &mut |_, _| {}).unwrap();
    assert_eq!(head.evals_per_token(), 15.0);
    for (i, p) in [a, b].into_iter().enumerate() {
        let mut head = L2dHead::new(&model, &l2d_sigma0, SamplerOptions::from_config(&cfg).unwrap()).unwrap();
        let alone = generate(&model, None, &mut head, &[p.clone()], &opts, &mut |_, _| {}).unwrap();
        assert_eq!(batch[i].token_ids, alone[0].token_ids, "row {i}");
    }
}
