//! Properties of the L2D diffusion path (spec §1–7, §11).

use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use l2d::l2d::checkpoint::{self, BaseIdentity, Metadata};
use l2d::l2d::{main_path, next_token_nll, params, L2d, Shape, TokenBatch, Variant};
use l2d::model::{KvCache, Llama, ModelConfig};

mod common;
use common::{rng_lock, scratch};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

fn load(name: &str) -> Llama {
    Llama::load(&fixture(name), Device::Cpu, Kind::Float).unwrap()
}

fn shape(variant: Variant, num_classes: i64) -> Shape {
    Shape { variant, flow_dim: 32, timestep_dim: 16, lora_rank: 4, lora_alpha: 4.0, num_classes }
}

/// Moves every L2D tensor away from its initialisation, so no gate is zero.
fn perturb(l2d: &L2d) {
    tch::no_grad(|| {
        for (_, p) in &l2d.params {
            let mut p = p.shallow_clone();
            let _ = p.g_add_(&(Tensor::randn_like(&p) * 0.05));
        }
    });
}

fn batch(model: &Llama) -> TokenBatch {
    tch::manual_seed(11);
    let ids = Tensor::randint_low(2, model.config.vocab_size, [2, 10], (Kind::Int64, Device::Cpu));
    let labels = ids.copy();
    let _ = labels.narrow(1, 0, 3).fill_(-100); // a masked "prompt"
    TokenBatch { input_ids: ids, labels, class_labels: None }
}

fn l2d_logits(model: &Llama, l2d: &L2d, b: &TokenBatch, x: &Tensor, t: &Tensor) -> Tensor {
    let (hidden, step, cache) = main_path(model, b);
    tch::no_grad(|| l2d.logits(model, &hidden, x, t, None, &step, &cache).unwrap())
}

/// Mean cross-entropy of `logits[:, i]` against `labels[:, i + 1]` over unmasked labels.
fn next_token_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (sum, count) = next_token_nll(logits, labels);
    sum / count.to_kind(Kind::Float)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn fresh_l2d_reproduces_the_base_lm_at_every_t() {
    let _rng = rng_lock();
    for arch in ["llama", "qwen2"] {
        for variant in [Variant::Lora, Variant::Full] {
            let model = load(arch);
            tch::manual_seed(0);
            let l2d = L2d::init(&model, shape(variant, 0), 64.0).unwrap();
            let b = batch(&model);
            let base = tch::no_grad(|| model.forward(&b.input_ids));
            for t in [0.0, 0.3, 0.7, 1.0] {
                let x = Tensor::randn([2, 10, 32], (Kind::Float, Device::Cpu)) * 64.0;
                let tt = Tensor::full([2, 10], t, (Kind::Float, Device::Cpu));
                let logits = l2d_logits(&model, &l2d, &b, &x, &tt);
                assert_eq!(max_diff(&logits, &base), 0.0, "{arch} {variant:?} t={t}");
            }
        }
    }
}

#[test]
fn trained_l2d_reproduces_the_base_lm_at_t0_only() {
    let _rng = rng_lock();
    for arch in ["llama", "qwen2"] {
        let model = load(arch);
        tch::manual_seed(1);
        let l2d = L2d::init(&model, shape(Variant::Lora, 3), 64.0).unwrap();
        perturb(&l2d);
        let b = batch(&model);
        let base = tch::no_grad(|| model.forward(&b.input_ids));
        let x = Tensor::randn([2, 10, 32], (Kind::Float, Device::Cpu)) * 64.0;
        let zero = Tensor::zeros([2, 10], (Kind::Float, Device::Cpu));
        assert_eq!(max_diff(&l2d_logits(&model, &l2d, &b, &x, &zero), &base), 0.0, "{arch} at t=0");
        let half = Tensor::full([2, 10], 0.5, (Kind::Float, Device::Cpu));
        assert!(max_diff(&l2d_logits(&model, &l2d, &b, &x, &half), &base) > 1e-3, "{arch}: the path must act at t=0.5");
    }
}

/// Evaluating only the diffusion stream of the newest token over a KV-cached
/// main path gives the logits of the full forward at that position.
#[test]
fn stream_over_cached_main_path_equals_full_forward() {
    let _rng = rng_lock();
    for arch in ["llama", "qwen2"] {
        let model = load(arch);
        tch::manual_seed(2);
        let l2d = L2d::init(&model, shape(Variant::Full, 0), 64.0).unwrap();
        perturb(&l2d);
        let b = batch(&model);
        let x = Tensor::randn([2, 10, 32], (Kind::Float, Device::Cpu)) * 10.0;
        let t = Tensor::rand([2, 10], (Kind::Float, Device::Cpu));
        let full = l2d_logits(&model, &l2d, &b, &x, &t);
        // Prefill the first 9 tokens, then decode the 10th through the cache.
        let mut cache = KvCache::with_capacity(model.layers.len(), 16);
        let prefix = b.input_ids.narrow(1, 0, 9);
        let pos = Tensor::arange(9, (Kind::Int64, Device::Cpu)).unsqueeze(0).repeat([2, 1]);
        let step = model.step(pos, l2d::model::AttentionMask::Causal);
        let _ = tch::no_grad(|| model.forward_hidden(&prefix, &step, &mut cache));
        let pos = Tensor::full([2, 1], 9, (Kind::Int64, Device::Cpu));
        let step = model.step(pos, l2d::model::AttentionMask::Full);
        let last = tch::no_grad(|| model.forward_hidden(&b.input_ids.narrow(1, 9, 1), &step, &mut cache));
        let cached = tch::no_grad(|| {
            l2d.logits(&model, &last, &x.narrow(1, 9, 1), &t.narrow(1, 9, 1), None, &step, &cache).unwrap()
        });
        let diff = max_diff(&cached.squeeze_dim(1), &full.select(1, 9));
        assert!(diff < 1e-4, "{arch}: max |Δ| = {diff}");
    }
}

/// The training loss at times `t` and noise `x0`, written out over every position
/// as spec §7 states it (the diffusion stream at prompt and padding positions too).
fn loss_over_every_position(model: &Llama, l2d: &L2d, b: &TokenBatch, t: &Tensor, x0: &Tensor) -> Tensor {
    let (hidden, step, cache) = main_path(model, b);
    let (rows, len) = b.input_ids.size2().unwrap();
    let targets = b.labels.narrow(1, 1, len - 1);
    let x1 = l2d.rep(model, &targets.where_scalarother(&targets.ge(0), 0));
    let t_in = t.narrow(1, 0, len - 1).unsqueeze(-1);
    let x_t = (-&t_in + 1.0) * x0 + &t_in * x1;
    let x_t = Tensor::cat(&[x_t, Tensor::zeros([rows, 1, 32], (Kind::Float, Device::Cpu))], 1);
    let logits = l2d.logits(model, &hidden, &x_t, t, b.class_labels.as_ref(), &step, &cache).unwrap();
    next_token_loss(&logits, &b.labels)
}

/// Training runs the diffusion stream only where the next token bears a loss;
/// loss and gradients equal the stream run everywhere, for a batch whose loss
/// positions are a prefix of every row (plain causal mask) and for one with
/// masked prompts of different lengths and right padding (gathered positions).
#[test]
fn loss_over_loss_positions_equals_the_stream_run_everywhere() {
    let _rng = rng_lock();
    for arch in ["llama", "qwen2"] {
        let model = load(arch);
        tch::manual_seed(5);
        let l2d = L2d::init(&model, shape(Variant::Lora, 2), 64.0).unwrap();
        perturb(&l2d);
        let params: Vec<Tensor> = l2d.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let ids = Tensor::randint_low(2, model.config.vocab_size, [2, 10], (Kind::Int64, Device::Cpu));
        let prefix_labels = ids.copy();
        let gathered_labels = ids.copy();
        let _ = gathered_labels.get(0).narrow(0, 0, 3).fill_(-100);
        let _ = gathered_labels.get(1).narrow(0, 0, 5).fill_(-100);
        let _ = gathered_labels.get(1).narrow(0, 8, 2).fill_(-100);
        let t = Tensor::rand([2, 10], (Kind::Float, Device::Cpu));
        let x0 = Tensor::randn([2, 9, 32], (Kind::Float, Device::Cpu)) * l2d.sigma;
        let classes = Tensor::from_slice(&[1i64, -1]).unsqueeze(1).expand([2, 10], false).contiguous();
        for (case, labels) in [("prefix", prefix_labels), ("gathered", gathered_labels)] {
            let b = TokenBatch { input_ids: ids.shallow_clone(), labels, class_labels: Some(classes.shallow_clone()) };
            let expected = loss_over_every_position(&model, &l2d, &b, &t, &x0);
            let (sum, count) = l2d.nll_with_noise(&model, &b, &t, &x0).unwrap();
            let got = sum / count.to_kind(Kind::Float);
            let (e, g) = (expected.double_value(&[]), got.double_value(&[]));
            assert!((e - g).abs() < 1e-6 * e.abs(), "{arch} {case}: loss {g} vs {e}");
            let grads_e = Tensor::run_backward(&[&expected], &params, false, false);
            let grads_g = Tensor::run_backward(&[&got], &params, false, false);
            for ((name, _), (ge, gg)) in l2d.params.iter().zip(grads_e.iter().zip(&grads_g)) {
                let scale = ge.abs().max().double_value(&[]);
                let diff = max_diff(ge, gg);
                assert!(diff <= 1e-5 * scale + 1e-8, "{arch} {case}: gradient of {name} differs by {diff} (max {scale})");
            }
        }
    }
}

#[test]
fn only_l2d_tensors_get_gradients_and_base_stays_bit_identical() {
    let _rng = rng_lock();
    let model = load("qwen2");
    tch::manual_seed(3);
    let l2d = L2d::init(&model, shape(Variant::Lora, 2), 64.0).unwrap();
    perturb(&l2d);
    let before: Vec<Tensor> = base_tensors(&model).iter().map(|t| t.copy()).collect();
    let mut b = batch(&model);
    b.class_labels = Some(Tensor::ones([2, 10], (Kind::Int64, Device::Cpu)));
    for _ in 0..3 {
        let loss = l2d.loss(&model, &b).unwrap();
        loss.backward();
        tch::no_grad(|| {
            for (name, p) in &l2d.params {
                let g = p.grad();
                assert!(g.defined(), "{name} got no gradient");
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(g * 0.01));
                let mut g = p.grad();
                let _ = g.zero_();
            }
        });
    }
    for (t, b) in base_tensors(&model).iter().zip(&before) {
        assert!(!t.requires_grad());
        assert!(!t.grad().defined());
        assert!(t.equal(b), "a base tensor changed");
    }
    // Gradients reached the deepest tensors too, not only the output side.
    let a0 = &l2d.params.iter().find(|(n, _)| n.to_string() == "model.layers.0.self_attn.flow_q_proj.A").unwrap().1;
    assert!(a0.requires_grad());
}

fn base_tensors(model: &Llama) -> Vec<Tensor> {
    let mut out = vec![model.embed_tokens.shallow_clone(), model.norm.weight.shallow_clone()];
    for l in &model.layers {
        out.push(l.self_attn.qkv_proj.weight.shallow_clone());
        out.extend(l.self_attn.qkv_proj.bias.as_ref().map(|b| b.shallow_clone()));
        out.push(l.self_attn.o_proj.weight.shallow_clone());
        out.push(l.mlp.gate_up_proj.weight.shallow_clone());
        out.push(l.mlp.down_proj.weight.shallow_clone());
        out.push(l.input_layernorm.weight.shallow_clone());
        out.push(l.post_attention_layernorm.weight.shallow_clone());
    }
    out
}

#[test]
fn loss_at_t0_equals_the_base_lm_loss() {
    let _rng = rng_lock();
    let model = load("llama");
    tch::manual_seed(4);
    let l2d = L2d::init(&model, shape(Variant::Lora, 0), 64.0).unwrap();
    perturb(&l2d);
    let b = batch(&model);
    let base = next_token_loss(&tch::no_grad(|| model.forward(&b.input_ids)), &b.labels).double_value(&[]);
    let zero = Tensor::zeros([2, 10], (Kind::Float, Device::Cpu));
    let at0 = tch::no_grad(|| l2d.loss_at(&model, &b, &zero)).unwrap().double_value(&[]);
    assert!((at0 - base).abs() < 1e-6, "{at0} vs {base}");
    let one = Tensor::ones([2, 10], (Kind::Float, Device::Cpu));
    let at1 = tch::no_grad(|| l2d.loss_at(&model, &b, &one)).unwrap().double_value(&[]);
    assert!((at1 - base).abs() > 1e-4, "the perturbed path changes the loss at t=1");
}

/// Spec §7: 73,344,256 trainable parameters for Llama-3.2-1B-Instruct with l2d-lora.
#[test]
fn llama_3_2_1b_lora_parameter_count() {
    let cfg = ModelConfig::from_json(LLAMA_3_2_1B).unwrap();
    let s = Shape { variant: Variant::Lora, flow_dim: 256, timestep_dim: 256, lora_rank: 32, lora_alpha: 32.0, num_classes: 0 };
    let specs = params::specs(&cfg, &s);
    assert_eq!(params::count(&specs), 73_344_256);
    let part = |pat: &str| params::count(&specs.iter().filter(|s| s.name.to_string().contains(pat)).cloned().collect::<Vec<_>>());
    assert_eq!(part("layers.") - part("_proj."), 51_580_928, "modulation heads");
    assert_eq!(part("_proj."), 19_922_944, "LoRA");
    assert_eq!(part("model.modulation_head"), 592_128, "final gate head");
    assert_eq!(part("flow_to_lm_encoder"), 592_128, "input encoder");
    assert_eq!(part("flow_token_embedder"), 524_544, "map");
    assert_eq!(part("timestep_embedder"), 131_584, "timestep MLP");
}

const LLAMA_3_2_1B: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
 "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
 "rope_theta": 500000.0, "tie_word_embeddings": true, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
 "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;

fn meta(model: &Llama, base: &Path, l2d: &L2d) -> Metadata {
    let cfg = l2d::config::L2dConfig { sigma: l2d.sigma, ..Default::default() };
    Metadata {
        format: "l2d".into(),
        version: 1,
        shape: l2d.shape.clone(),
        l2d: cfg,
        base: BaseIdentity::of(model, base).unwrap(),
        step: 7,
    }
}

#[test]
fn checkpoint_round_trip_and_reference_export() {
    let _rng = rng_lock();
    let model = load("llama");
    tch::manual_seed(5);
    let l2d = L2d::init(&model, shape(Variant::Lora, 0), 64.0).unwrap();
    perturb(&l2d);
    let dir = scratch("ckpt").join("ckpt");
    checkpoint::save(&dir, &l2d, &meta(&model, &fixture("llama"), &l2d)).unwrap();
    let mut cfg = l2d::config::L2dConfig::default();
    let (back, m) = load_checkpoint(&dir, &model, &fixture("llama"), &cfg).unwrap();
    assert_eq!(m.unwrap().step, 7);
    for ((n1, a), (n2, b)) in l2d.params.iter().zip(&back.params) {
        assert_eq!(n1, n2);
        assert!(a.equal(b), "{n1}");
    }
    // The tensor file alone, as a reference export: hyper-parameters from the config.
    let file = dir.join(checkpoint::TENSORS);
    cfg.flow_dim = 32;
    cfg.timestep_dim = 16;
    cfg.lora_rank = 4;
    cfg.lora_alpha = 4.0;
    let (bare, meta) = load_checkpoint(&file, &model, &fixture("llama"), &cfg).unwrap();
    assert!(meta.is_none());
    assert!(bare.params.iter().zip(&l2d.params).all(|((_, a), (_, b))| a.equal(b)));
    // The wrong rank names the first tensor whose shape disagrees.
    cfg.lora_rank = 8;
    let err = load_checkpoint(&file, &model, &fixture("llama"), &cfg).err().unwrap().to_string();
    assert!(err.contains("flow_q_proj.A") && err.contains("shape"), "{err}");
    // The wrong variant names a tensor too.
    cfg.lora_rank = 4;
    cfg.variant = Variant::Full;
    let err = load_checkpoint(&file, &model, &fixture("llama"), &cfg).err().unwrap().to_string();
    assert!(err.contains("flow_q_proj.weight") && err.contains("missing"), "{err}");
}

#[test]
fn checkpoint_refuses_another_base_model() {
    let _rng = rng_lock();
    let model = load("llama");
    let l2d = L2d::init(&model, shape(Variant::Lora, 0), 64.0).unwrap();
    let dir = scratch("other-base").join("ckpt");
    checkpoint::save(&dir, &l2d, &meta(&model, &fixture("llama"), &l2d)).unwrap();
    // Same shapes, other weights: a copy of the fixture with one tensor changed.
    let other = scratch("other-base-model");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama").join(f), other.join(f)).unwrap();
    }
    let path = other.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    tensors[0].1 = &tensors[0].1 + 1.0;
    l2d::model::weights::save(&path, &tensors).unwrap();
    let err = load_checkpoint(&dir, &model, &other, &Default::default()).err().unwrap();
    assert_eq!(l2d::error::exit_code(&err), 2);
    assert!(err.to_string().contains("another base model"), "{err}");
    // A model of other shapes is refused by its config.
    let qwen = load("qwen2");
    let err = load_checkpoint(&dir, &qwen, &fixture("qwen2"), &Default::default()).err().unwrap();
    assert!(err.to_string().contains("another config"), "{err}");
    // A damaged l2d.json whose checksum is no digest at all is refused, not a panic.
    let meta_path = dir.join(checkpoint::METADATA);
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["base"]["tensors_sha256"] = "é".into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let err = load_checkpoint(&dir, &model, &fixture("llama"), &Default::default()).err().unwrap();
    assert!(err.to_string().contains("checksum é != "), "{err}");
}



/// A checkpoint's path and metadata, opened and loaded as the subcommands do.
fn load_checkpoint(path: &std::path::Path, model: &Llama, base: &std::path::Path, cfg: &l2d::config::L2dConfig) -> anyhow::Result<(L2d, Option<checkpoint::Metadata>)> {
    let ckpt = checkpoint::Checkpoint::open(path)?;
    let l2d = ckpt.load(model, base, cfg)?;
    Ok((l2d, ckpt.metadata().cloned()))
}
