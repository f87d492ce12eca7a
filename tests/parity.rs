//! Numerical parity with Hugging Face transformers on committed fixtures
//! (scripts/make_parity_fixtures.py): logits, greedy continuations, KV-cached
//! decode against full recompute, padded batches against one-by-one.

use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use l2d::model::Llama;
use l2d::sampling::{generate, BaseLm, GenerateOptions, TokenSampler};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

fn expected(name: &str) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(fixture(name).join("expected.safetensors")).unwrap()
}

fn get(tensors: &[(String, Tensor)], key: &str) -> Tensor {
    tensors.iter().find(|(n, _)| n == key).unwrap().1.shallow_clone()
}

fn load(name: &str) -> Llama {
    Llama::load(&fixture(name), Device::Cpu, Kind::Float).unwrap()
}

fn greedy_opts(n: usize) -> GenerateOptions {
    GenerateOptions {
        sampler: TokenSampler { temperature: 0.0, top_k: 0, top_p: 1.0 },
        max_new_tokens: n,
        min_new_tokens: n,
        stop_strings: Vec::new(),
        eos_ids: Vec::new(),
        pad_id: 0,
    }
}

fn row(t: &Tensor) -> Vec<i64> {
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn check_logits(name: &str) {
    let exp = expected(name);
    let model = load(name);
    let logits = tch::no_grad(|| model.forward(&get(&exp, "input_ids")));
    let diff = max_abs_diff(&logits, &get(&exp, "logits"));
    assert!(diff <= 1e-4, "{name}: max |Δlogit| = {diff}");
    // Not vacuous: the logits really vary across the vocabulary.
    assert!(get(&exp, "logits").std(true).double_value(&[]) > 0.1);
}

fn check_greedy(name: &str) {
    let exp = expected(name);
    let model = load(name);
    for key in ["a", "b"] {
        let prompt = row(&get(&exp, &format!("prompt_{key}")));
        let want = row(&get(&exp, &format!("greedy_{key}")));
        let out = generate(&model, None, &mut BaseLm, &[prompt], &greedy_opts(want.len()), &mut |_, _| {}).unwrap();
        assert_eq!(out[0].token_ids, want, "{name}: greedy continuation of prompt_{key}");
    }
}

#[test]
fn llama_logits_match_transformers() {
    check_logits("llama");
}

#[test]
fn qwen2_logits_match_transformers() {
    check_logits("qwen2");
}

#[test]
fn llama_greedy_matches_transformers() {
    check_greedy("llama");
}

#[test]
fn qwen2_greedy_matches_transformers() {
    check_greedy("qwen2");
}

/// Each KV-cached decode step gives the logits of a full recompute.
#[test]
fn cached_decode_equals_full_recompute() {
    for name in ["llama", "qwen2"] {
        let exp = expected(name);
        let model = load(name);
        let prompt = row(&get(&exp, "prompt_a"));
        let out = generate(&model, None, &mut BaseLm, std::slice::from_ref(&prompt), &greedy_opts(12), &mut |_, _| {}).unwrap();
        let mut seq = prompt.clone();
        for &tok in &out[0].token_ids {
            let logits = tch::no_grad(|| model.forward(&Tensor::from_slice(&seq).unsqueeze(0)));
            let full_argmax = logits.get(0).get(seq.len() as i64 - 1).argmax(-1, false).int64_value(&[]);
            assert_eq!(full_argmax, tok, "{name}: cached decode diverged at length {}", seq.len());
            seq.push(tok);
        }
        let mut recorded = Vec::new();
        let mut head = Recorder(&mut recorded);
        generate(&model, None, &mut head, std::slice::from_ref(&prompt), &greedy_opts(6), &mut |_, _| {}).unwrap();
        let full = tch::no_grad(|| model.forward(&Tensor::from_slice(&seq).unsqueeze(0))).get(0);
        for (i, step_logits) in recorded.iter().enumerate() {
            let pos = prompt.len() as i64 - 1 + i as i64;
            let diff = max_abs_diff(&step_logits.get(0), &full.get(pos));
            assert!(diff <= 1e-4, "{name}: step {i}: max |Δlogit| = {diff}");
        }
    }
}

/// A padded batch decodes exactly as each prompt alone.
#[test]
fn padded_batch_equals_one_by_one() {
    for name in ["llama", "qwen2"] {
        let exp = expected(name);
        let model = load(name);
        let a = row(&get(&exp, "prompt_a"));
        let b = row(&get(&exp, "prompt_b"));
        assert_ne!(a.len(), b.len());
        let batch = generate(&model, None, &mut BaseLm, &[a.clone(), b.clone()], &greedy_opts(16), &mut |_, _| {}).unwrap();
        for (i, p) in [a, b].into_iter().enumerate() {
            let alone = generate(&model, None, &mut BaseLm, &[p], &greedy_opts(16), &mut |_, _| {}).unwrap();
            assert_eq!(batch[i].token_ids, alone[0].token_ids, "{name}: row {i}");
        }
        // transformers' own greedy continuations agree with the padded batch too.
        assert_eq!(batch[0].token_ids, row(&get(&exp, "greedy_a")));
        assert_eq!(batch[1].token_ids, row(&get(&exp, "greedy_b")));
    }
}

/// Records the logits of every step while acting as the base LM.
struct Recorder<'a>(&'a mut Vec<Tensor>);

impl l2d::sampling::NextTokenLogits for Recorder<'_> {
    fn logits(
        &mut self,
        model: &Llama,
        hidden: &Tensor,
        cache: &l2d::model::KvCache,
        step: &l2d::model::Step,
        noise: &l2d::sampling::RowNoise,
    ) -> anyhow::Result<Tensor> {
        let logits = BaseLm.logits(model, hidden, cache, step, noise)?;
        self.0.push(logits.copy());
        Ok(logits)
    }

    fn evals_per_token(&self) -> f64 {
        1.0
    }
}
