//! Next-token selection and generation stopping rules.

use tch::{Device, Kind, Tensor};

use l2d::data::tokenizer::{TextStream, Tokenizer};
use l2d::init::{init_model_dir, Arch, InitOptions, Preset};
use l2d::model::Llama;
use l2d::sampling::{generate, BaseLm, Finish, GenerateOptions, RowNoise, TokenSampler};

mod common;

fn sampler(temperature: f64, top_k: i64, top_p: f64) -> TokenSampler {
    TokenSampler { temperature, top_k, top_p }
}

/// Draws `n` tokens from the same logits row (n rows of their own keys) and counts each id.
fn histogram(s: &TokenSampler, logits: &[f32], n: usize) -> Vec<usize> {
    let row = Tensor::from_slice(logits).unsqueeze(0).repeat([n as i64, 1]);
    let ids: Vec<i64> = Vec::try_from(s.sample(&row, &RowNoise::new((0..n as u64).collect())).unwrap()).unwrap();
    let mut counts = vec![0; logits.len()];
    for id in ids {
        counts[id as usize] += 1;
    }
    counts
}

const LOGITS: [f32; 5] = [2.0, 1.5, 1.0, 0.0, -1.0];

#[test]
fn temperature_zero_is_argmax() {
    let counts = histogram(&sampler(0.0, 0, 1.0), &LOGITS, 50);
    assert_eq!(counts, vec![50, 0, 0, 0, 0]);
}

#[test]
fn top_k_keeps_only_the_k_best() {
    let counts = histogram(&sampler(1.0, 2, 1.0), &LOGITS, 4000);
    assert_eq!(&counts[2..], &[0, 0, 0]);
    // softmax([2, 1.5]) = [0.622, 0.378]
    let p0 = counts[0] as f64 / 4000.0;
    assert!((p0 - 0.622).abs() < 0.03, "p0 = {p0}");
}

#[test]
fn top_p_keeps_the_smallest_nucleus() {
    // probabilities: 0.448 0.272 0.165 0.061 0.022 -> top_p 0.7 keeps the first two
    // (0.448 < 0.7, 0.448 + 0.272 >= 0.7), as transformers' TopPLogitsWarper does.
    let counts = histogram(&sampler(1.0, 0, 0.7), &LOGITS, 4000);
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
    assert_eq!(&counts[2..], &[0, 0, 0]);
    // A tiny top_p still keeps the most likely token.
    assert_eq!(histogram(&sampler(1.0, 0, 1e-6), &LOGITS, 100), vec![100, 0, 0, 0, 0]);
}

#[test]
fn sampling_follows_the_softmax() {
    let counts = histogram(&sampler(2.0, 0, 1.0), &LOGITS, 20000);
    let scaled: Vec<f64> = LOGITS.iter().map(|&l| (l as f64 / 2.0).exp()).collect();
    let z: f64 = scaled.iter().sum();
    for (c, s) in counts.iter().zip(&scaled) {
        let (got, want) = (*c as f64 / 20000.0, s / z);
        assert!((got - want).abs() < 0.015, "{got} vs {want}");
    }
}

fn parity_model() -> Llama {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/llama");
    Llama::load(&dir, Device::Cpu, Kind::Float).unwrap()
}

fn opts(max: usize, min: usize, eos: Vec<i64>) -> GenerateOptions {
    GenerateOptions { sampler: sampler(0.0, 0, 1.0), max_new_tokens: max, min_new_tokens: min, stop_strings: vec![], eos_ids: eos, pad_id: 0 }
}

#[test]
fn eos_ends_generation_unless_min_new_tokens() {
    let model = parity_model();
    let prompt = vec![5i64, 17, 42, 99];
    let free = generate(&model, None, &mut BaseLm, std::slice::from_ref(&prompt), &opts(10, 0, vec![]), &mut |_, _| {}).unwrap();
    assert_eq!(free[0].finish, Finish::Length);
    assert_eq!(free[0].token_ids.len(), 10);
    // Declare the third greedy token an eos id: generation ends right there.
    let eos = free[0].token_ids[2];
    let first_eos = free[0].token_ids.iter().position(|&t| t == eos).unwrap();
    let stopped = generate(&model, None, &mut BaseLm, std::slice::from_ref(&prompt), &opts(10, 0, vec![eos]), &mut |_, _| {}).unwrap();
    assert_eq!(stopped[0].finish, Finish::Eos);
    assert_eq!(stopped[0].token_ids, free[0].token_ids[..=first_eos].to_vec());
    // With min_new_tokens the eos id cannot appear before that many tokens.
    let held = generate(&model, None, &mut BaseLm, &[prompt], &opts(10, 6, vec![eos]), &mut |_, _| {}).unwrap();
    assert!(held[0].token_ids.len() >= 6);
    assert!(!held[0].token_ids[..5].contains(&eos));
}

#[test]
fn finished_rows_leave_the_batch_without_changing_the_others() {
    let model = parity_model();
    let a = vec![5i64, 17, 42, 99, 7, 8];
    let b = vec![11i64, 3];
    let alone_b = generate(&model, None, &mut BaseLm, std::slice::from_ref(&b), &opts(12, 0, vec![]), &mut |_, _| {}).unwrap();
    let eos = generate(&model, None, &mut BaseLm, std::slice::from_ref(&a), &opts(12, 0, vec![]), &mut |_, _| {}).unwrap()[0].token_ids[1];
    assert!(!alone_b[0].token_ids.contains(&eos), "fixture: the chosen eos id must not occur in row b");
    let batch = generate(&model, None, &mut BaseLm, &[a, b], &opts(12, 0, vec![eos]), &mut |_, _| {}).unwrap();
    assert_eq!(batch[0].finish, Finish::Eos);
    assert!(batch[0].token_ids.len() <= 2);
    assert_eq!(batch[1].token_ids, alone_b[0].token_ids);
}

/// The tokenizer of a fresh tiny model (byte-level BPE, as Llama 3 and Qwen 2.5 use).
fn byte_level_tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let opts = InitOptions { arch: Arch::Llama, preset: Preset::Tiny, out: dir.clone(), seed: 0, corpus: None };
    init_model_dir(&opts).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    (tmp, tok)
}

/// Streaming decodes each new token in time independent of the completion's
/// length; what it has emitted is always a prefix of the decode of every token
/// so far, and the whole of it once the last character is complete, for real
/// text with multi-byte characters and for random ids (bytes split across tokens,
/// invalid sequences, special tokens).
#[test]
fn streamed_text_adds_up_to_the_full_decode() {
    let _rng = common::rng_lock();
    let (_tmp, tok) = byte_level_tokenizer();
    let text = "Grüße, 世界! Ο λόγος — ∑ 2·3 = 6 🎉\n\tdone";
    let mut random = tok.encode(text, false).unwrap();
    tch::manual_seed(1);
    let noise = Tensor::randint(tok.vocab_size() as i64, [400], (Kind::Int64, Device::Cpu));
    random.extend(Vec::<i64>::try_from(&noise).unwrap());
    random.extend(tok.encode(" end", false).unwrap());
    for ids in [tok.encode(text, false).unwrap(), random] {
        let (mut stream, mut emitted) = (TextStream::default(), String::new());
        for n in 1..=ids.len() {
            emitted += &tok.decode_next(&mut stream, &ids[..n]).unwrap();
            let full = tok.decode(&ids[..n]).unwrap();
            assert!(full.starts_with(&emitted), "after {n} tokens: {emitted:?} is not a prefix of {full:?}");
        }
        assert_eq!(emitted, tok.decode(&ids).unwrap());
    }
}

/// Records the logits of the first decoding step.
struct FirstLogits(Option<Tensor>);

impl l2d::sampling::generate::NextTokenLogits for FirstLogits {
    fn logits(
        &mut self,
        model: &Llama,
        hidden: &Tensor,
        cache: &l2d::model::KvCache,
        step: &l2d::model::llama::Step,
        noise: &RowNoise,
    ) -> anyhow::Result<Tensor> {
        let logits = BaseLm.logits(model, hidden, cache, step, noise)?;
        self.0.get_or_insert_with(|| logits.copy());
        Ok(logits)
    }

    fn evals_per_token(&self) -> f64 {
        1.0
    }
}

#[test]
fn masked_prompt_ids_are_kept_out_of_attention() {
    use l2d::sampling::generate::{decode, prefill, prefill_masked};
    let model = parity_model();
    let o = opts(1, 0, vec![]);
    let first_logits = |masked: &[i64], prompt: &[i64]| {
        let state = prefill_masked(&model, &[prompt.to_vec()], &o, masked).unwrap();
        let mut head = FirstLogits(None);
        decode(&model, None, &mut head, state, RowNoise::new(vec![0]), &o, &mut |_, _| {}).unwrap();
        head.0.unwrap()
    };
    let plain = |prompt: &[i64]| {
        let state = prefill(&model, &[prompt.to_vec()], &o).unwrap();
        let mut head = FirstLogits(None);
        decode(&model, None, &mut head, state, RowNoise::new(vec![0]), &o, &mut |_, _| {}).unwrap();
        head.0.unwrap()
    };
    let prompt = [5i64, 17, 9, 42, 9, 99];
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    // An id not in the prompt changes nothing; one in it changes what the last token sees.
    assert!(diff(&first_logits(&[7], &prompt), &plain(&prompt)) < 1e-5);
    assert!(diff(&first_logits(&[9], &prompt), &plain(&prompt)) > 1e-3);
    // Masked keys keep their positions: not the same as removing the tokens.
    assert!(diff(&first_logits(&[9], &prompt), &plain(&[5, 17, 42, 99])) > 1e-3);
}
