//! `l2d generate --l2d` (Algorithm 1) as outside scripts call it, and its bad input.

mod common;
use common::*;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use l2d::l2d::checkpoint;
use l2d::l2d::sampler::{L2dHead, SamplerOptions, X1Estimate};
use l2d::l2d::{main_path, L2d, L2dDecoder, ParamName, TokenBatch};
use l2d::model::Llama;
use l2d::sampling::noise::Stream;
use l2d::sampling::{generate, GenerateOptions, NextTokenLogits, RowNoise, TokenSampler};

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
    let _rng = common::rng_lock();
    let base = tiny_model("llama");
    let model = Llama::load(&base, Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(3);
    let l2d = L2d::init(&model, shape(3), 64.0).unwrap();
    tch::no_grad(|| {
        for (_, p) in &l2d.params {
            let mut p = p.shallow_clone();
            let _ = p.g_add_(&(Tensor::randn_like(&p) * 0.05));
        }
    });
    // argmax x1: the ODE is deterministic given x0
    let mut cfg = l2d::config::L2dConfig { x1_temperature: 0.0, ..Default::default() };
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
    let decoder = L2dDecoder::new(&model, &l2d_sigma0);
    // Without guidance, and with it (the padded rows' mask repeated for the unconditional half).
    for (guidance, nfe) in [(None, 15.0), (Some(1), 29.0)] {
        (cfg.guidance_class, cfg.guidance_weight) = (guidance, 2.0);
        let mut head = L2dHead::new(&decoder, SamplerOptions::from_config(&cfg));
        let batch = generate(&model, None, &mut head, &[a.clone(), b.clone()], &opts, &mut |_, _| {}).unwrap();
        assert_eq!(head.evals_per_token(), nfe);
        for (i, p) in [&a, &b].into_iter().enumerate() {
            let mut head = L2dHead::new(&decoder, SamplerOptions::from_config(&cfg));
            let alone = generate(&model, None, &mut head, std::slice::from_ref(p), &opts, &mut |_, _| {}).unwrap();
            assert_eq!(batch[i].token_ids, alone[0].token_ids, "row {i}, guidance {guidance:?}");
        }
    }
}

/// Guidance evaluates its conditional and unconditional rows as one batch.
/// Algorithm 1 written out here with two separate evaluations per velocity,
/// through the training-time forward (`L2d::logits`, LoRA not merged), gives
/// the same next-token logits from the same noise.
#[test]
fn batched_guidance_equals_two_separate_evaluations() {
    let _rng = common::rng_lock();
    let model = Llama::load(&tiny_model("llama"), Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(5);
    let l2d = L2d::init(&model, shape(3), 64.0).unwrap();
    tch::no_grad(|| {
        for (name, p) in &l2d.params {
            // A strong label embedding and final gate, so that swapping the two halves would show.
            let strong = matches!(name, ParamName::Guidance | ParamName::GateHead(_));
            let scale = if strong { 1.0 } else { 0.05 };
            let _ = p.shallow_clone().g_add_(&(Tensor::randn_like(p) * scale));
        }
    });
    let (class, w) = (1, 2.5);
    let mut cfg = l2d::config::L2dConfig::default();
    (cfg.steps, cfg.x1_estimate, cfg.guidance_class, cfg.guidance_weight) = (3, X1Estimate::Average, Some(class), w);
    let rows: Vec<i64> = vec![5, 9, 30, 41, 7, 2, 12, 4, 77, 3, 8, 60];
    let batch = TokenBatch::from_sequences(&[(&rows[..6], &rows[..6]), (&rows[6..], &rows[6..])], Device::Cpu);
    let (hidden, step, cache) = main_path(&model, &batch);
    let last = hidden.narrow(1, 5, 1);
    let decoder = L2dDecoder::new(&model, &l2d);
    let mut head = L2dHead::new(&decoder, SamplerOptions::from_config(&cfg));
    let noise = RowNoise::new(vec![11, 12]);
    let got = tch::no_grad(|| head.logits(&model, &last, &cache, &step, &noise)).unwrap();
    assert_eq!(head.evals_per_token(), 9.0, "2 steps x 2 stages x 2 labels + 1");

    let _guard = tch::no_grad_guard();
    let mut x = noise.normals(Stream::X0, l2d.shape.flow_dim as usize, Device::Cpu) * 64.0;
    let rep = l2d.rep(&model, &Tensor::arange(model.config.vocab_size, (Kind::Int64, Device::Cpu))).to_kind(Kind::Double);
    let last_step = step.last();
    let logits_at = |x: &Tensor, t: f64, label: Option<i64>| {
        let labels = label.map(|c| Tensor::full([2, 1], c, (Kind::Int64, Device::Cpu)));
        let t = Tensor::full([2, 1], t, (Kind::Float, Device::Cpu));
        let x = x.to_kind(Kind::Float).unsqueeze(1);
        l2d.logits(&model, &last, &x, &t, labels.as_ref(), &last_step, &cache).unwrap().squeeze_dim(1)
    };
    let velocity = |x: &Tensor, t: f64| {
        let v = |label| (logits_at(x, t, label).softmax(-1, Kind::Double).matmul(&rep) - x) / (1.0 - t);
        v(Some(class)) * w + v(None) * (1.0 - w)
    };
    let label_effect = (logits_at(&x, 0.5, Some(class)) - logits_at(&x, 0.5, None)).abs().max().double_value(&[]);
    assert!(label_effect > 0.1, "the class changes the logits ({label_effect})");
    for t0 in [0.0, 0.5] {
        let mid = &x + velocity(&x, t0) * 0.25;
        x = &x + velocity(&mid, t0 + 0.25) * 0.5;
    }
    let want = logits_at(&x, 1.0, Some(class));
    let diff = (&got - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-3, "batched guidance differs from two evaluations by {diff}");
    assert!(want.abs().max().double_value(&[]) > 0.1, "a meaningful comparison");
}
