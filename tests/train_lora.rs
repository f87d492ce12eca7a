//! `l2d train` in `lora` mode (weight LoRA with PEFT's semantics and layout,
//! checked against transformers and peft) and `full` mode computing in bf16.

mod common;
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind, Tensor};

use l2d::config::LoraConfig;
use l2d::model::adapters::{Adapters, Settings};
use l2d::model::Llama;

/// The `[lora]` settings the runs here use (passed with `--set` as well).
const RANK: i64 = 4;
const ALPHA: f64 = 8.0;
const DROPOUT: f64 = 0.1;
/// Every projection of a layer.
const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
/// The probe sequence whose logits are compared.
const PROBE: [i64; 6] = [3, 17, 42, 99, 7, 250];

fn lora_config(dropout: f64) -> LoraConfig {
    LoraConfig { rank: RANK, alpha: ALPHA, dropout, target_modules: TARGETS.iter().map(|s| s.to_string()).collect() }
}

/// `l2d train` on the tiny full-finetuning config with `extra` overrides.
fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = format!("{}/configs/tiny-full.toml", env!("CARGO_MANIFEST_DIR"));
    let (m, d) = (format!("model.path={}", model.display()), format!("data.out={}", data.display()));
    let mut args = vec!["train", "--config", &cfg, "--set", &m, "--set", &d, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    l2d(&args)
}

/// `extra` overrides of a small `lora` run.
fn lora_args(steps: &str) -> Vec<String> {
    let targets = format!("lora.target_modules=[{}]", TARGETS.map(|t| format!("\"{t}\"")).join(","));
    [
        "train.mode=lora".to_string(),
        format!("lora.rank={RANK}"),
        format!("lora.alpha={ALPHA}"),
        format!("lora.dropout={DROPOUT}"),
        targets,
        format!("train.max_steps={steps}"),
        "train.warmup_steps=0".into(),
        "train.lr=1e-2".into(),
        "train.batch_size=4".into(),
        "train.micro_batch_size=2".into(),
        "train.save_every=1".into(),
        "train.keep_last=0".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn probe() -> Tensor {
    Tensor::from_slice(&PROBE).unsqueeze(0)
}

/// Logits `[1, 6, V]` of the probe from transformers (the merged directory), from
/// peft (the adapter over the base) and from transformers on the base alone.
fn reference_logits(merged: &Path, base: &Path, adapter: &Path) -> [Tensor; 3] {
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
merged_dir, base_dir, adapter_dir, ids = sys.argv[1], sys.argv[2], sys.argv[3], torch.tensor([json.loads(sys.argv[4])])
load = lambda d: AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
with torch.no_grad():
    merged = load(merged_dir)(ids).logits[0].tolist()
    base = load(base_dir)(ids).logits[0].tolist()
    peft = PeftModel.from_pretrained(load(base_dir), adapter_dir).eval()
    assert peft.peft_config["default"].r == int(sys.argv[5]), peft.peft_config
    adapted = peft(ids).logits[0].tolist()
print(json.dumps([merged, adapted, base]))
"#;
    let ids = serde_json::to_string(&PROBE).unwrap();
    let args = [script, merged.to_str().unwrap(), base.to_str().unwrap(), adapter.to_str().unwrap(), &ids, &RANK.to_string()];
    let py = Command::new(python()).arg("-c").args(args).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let all: Vec<Vec<Vec<f32>>> = serde_json::from_slice(&py.stdout).unwrap();
    let logits: Vec<Tensor> = all.into_iter().map(|l| Tensor::from_slice(&l.concat()).view([1, PROBE.len() as i64, -1])).collect();
    logits.try_into().unwrap()
}

/// A lora run writes the merged model and a PEFT adapter; transformers and peft
/// load them with the logits l2d computes from the base and the adapter, and the
/// base weights are untouched.
#[test]
fn lora_run_writes_a_merged_model_and_a_peft_adapter() {
    let base = tiny_model("qwen2");
    let data = prepared("lora-run-data", &base);
    let out = scratch("lora-run").join("run");
    ok(train(&base, &data, &out, &refs(&lora_args("3"))));
    let (merged_dir, adapter_dir) = (out.join("model"), out.join("adapter"));

    // Only the adapters are trainable: the checkpoint holds exactly A and B of every layer and module.
    let ckpt = read_tensors(&out.join("checkpoints/step-00000003/trainable.safetensors"));
    assert_eq!(ckpt.len(), 2 * TARGETS.len() * 2);
    assert!(ckpt.keys().all(|n| n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")), "{:?}", ckpt.keys());

    // PEFT's names and orientation, f32, trained off the zero initialisation of B.
    let adapter = read_tensors(&adapter_dir.join("adapter_model.safetensors"));
    let a = &adapter["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"];
    let b = &adapter["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"];
    assert_eq!((a.size(), b.size(), a.kind()), (vec![RANK, 64], vec![32, RANK], Kind::Float));
    assert!(b.abs().max().double_value(&[]) > 0.0, "B moved off zero");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["peft_type"].as_str(), cfg["task_type"].as_str(), cfg["r"].as_i64()), (Some("LORA"), Some("CAUSAL_LM"), Some(RANK)));
    assert_eq!((cfg["lora_alpha"].as_f64(), cfg["lora_dropout"].as_f64()), (Some(ALPHA), Some(DROPOUT)));

    // The merged weights are the base's plus scale·B·A, the rest bit-identical to the base.
    let (base_w, merged_w) = (read_tensors(&base.join("model.safetensors")), read_tensors(&merged_dir.join("model.safetensors")));
    assert_eq!(base_w.len(), merged_w.len());
    for (name, w) in &base_w {
        let m = &merged_w[name];
        assert_eq!(m.kind(), Kind::Float, "{name}");
        let prefix = format!("base_model.model.{}", name.trim_end_matches(".weight"));
        match (adapter.get(&format!("{prefix}.lora_A.weight")), adapter.get(&format!("{prefix}.lora_B.weight"))) {
            (Some(a), Some(b)) => {
                let expected = w + b.matmul(a) * (ALPHA / RANK as f64);
                assert!(max_diff(m, &expected) < 1e-6, "{name}");
                assert!(max_diff(m, w) > 0.0, "{name} unchanged");
            }
            _ => assert!(m.equal(w), "{name} changed"),
        }
    }

    // l2d's own logits: the base model with the adapters beside its frozen maps.
    let model = Llama::load(&base, Device::Cpu, Kind::Float).unwrap();
    let settings = Settings::from_config(&lora_config(DROPOUT)).unwrap();
    let adapters = Adapters::from_tensors(&model, settings, adapter, "adapter_model.safetensors").unwrap();
    let ours = tch::no_grad(|| model.forward_adapted(&probe(), &adapters, false));
    let merged = Llama::load(&merged_dir, Device::Cpu, Kind::Float).unwrap();
    let ours_merged = tch::no_grad(|| merged.forward(&probe()));
    let [hf_merged, peft, hf_base] = reference_logits(&merged_dir, &base, &adapter_dir);
    assert!(max_diff(&ours, &hf_base) > 1e-2, "the adapters change the logits");
    for (what, theirs) in [("transformers on the merged model", &hf_merged), ("peft", &peft), ("l2d on the merged model", &ours_merged)] {
        let d = max_diff(&ours, theirs);
        assert!(d <= 1e-4, "{what}: max |Δlogit| = {d}");
    }

    // The run's last validation (base in memory + adapters, dropout off) scores
    // the held-out split as `eval loss` does on the merged model from disk: the
    // frozen weights stayed the base's, and validation used no dropout.
    let valid = loss_log(&out).into_iter().filter_map(|r| r["valid_loss"].as_f64()).next_back().expect("a validation record");
    let eval = ok(l2d(&["eval", "loss", "--model", merged_dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let merged_loss = eval["base_loss"].as_f64().unwrap();
    assert!((valid - merged_loss).abs() < 1e-5, "validation {valid} vs eval loss of the merged model {merged_loss}");
}

/// Resuming a lora run from an earlier checkpoint ends with bit-identical
/// adapters and the same loss log (dropout masks included).
#[test]
fn lora_resume_is_bit_identical() {
    let base = tiny_model("llama");
    let data = prepared("lora-resume-data", &base);
    let out = scratch("lora-resume").join("run");
    let args = lora_args("4");
    ok(train(&base, &data, &out, &refs(&args)));
    let straight = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let straight_log = loss_log(&out);

    // Back to the step-2 checkpoint, as if the run had died there.
    for gone in ["checkpoints/step-00000003", "checkpoints/step-00000004", "model", "adapter"] {
        std::fs::remove_dir_all(out.join(gone)).unwrap();
    }
    let mut resumed = refs(&args);
    resumed.push("--resume");
    ok(train(&base, &data, &out, &resumed));
    assert!(straight == std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), "adapters differ after resuming");
    assert_eq!(straight_log, loss_log(&out));
}

/// Dropout acts on the adapters' inputs in training only; fresh adapters
/// (B = 0, A within PEFT's Kaiming bound) leave the base model's logits as they are.
#[test]
fn adapter_dropout_is_active_in_training_only() {
    let _rng = common::rng_lock();
    let model = Llama::load(&tiny_model("qwen2"), Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(5);
    let mut adapters = Adapters::init(&model, Settings::from_config(&lora_config(0.5)).unwrap()).unwrap();
    let base = tch::no_grad(|| model.forward(&probe()));
    assert!(max_diff(&tch::no_grad(|| model.forward_adapted(&probe(), &adapters, false)), &base) < 1e-6);
    tch::no_grad(|| {
        for (name, p) in &adapters.params {
            let mut p = p.shallow_clone();
            if name.ends_with("lora_A.weight") {
                let bound = 1.0 / (p.size()[1] as f64).sqrt();
                let top = p.abs().max().double_value(&[]);
                assert!(top <= bound && top > 0.9 * bound, "{name}: max |A| {top}, bound {bound}");
            } else {
                assert_eq!(p.abs().max().double_value(&[]), 0.0, "{name} starts at zero");
                p.copy_(&(p.randn_like() * 0.1));
            }
        }
    });
    adapters.refresh(&model);
    let pass = |train: bool| tch::no_grad(|| model.forward_adapted(&probe(), &adapters, train));
    let (eval1, eval2) = (pass(false), pass(false));
    assert!(eval1.equal(&eval2), "evaluation is deterministic");
    assert!(max_diff(&eval1, &base) > 1e-3, "the adapters act");
    let (train1, train2) = (pass(true), pass(true));
    assert!(max_diff(&train1, &train2) > 1e-4, "training passes draw fresh dropout masks");
    assert!(max_diff(&train1, &eval1) > 1e-4, "training differs from evaluation");
}

/// `full` finetuning computing in bf16 keeps f32 master weights: its updates,
/// far below bf16's resolution, survive into the saved f32 model.
#[test]
fn full_finetuning_in_bf16_keeps_f32_masters() {
    let base = tiny_model("llama");
    let data = prepared("full-bf16-data", &base);
    let out = scratch("full-bf16").join("run");
    let sets = ["model.dtype=bf16", "train.max_steps=2", "train.warmup_steps=0", "train.lr=1e-5", "train.batch_size=4", "train.micro_batch_size=2"];
    let extra: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
    ok(train(&base, &data, &out, &extra));
    let log = loss_log(&out);
    assert_eq!(log.iter().filter(|r| r["loss"].as_f64().is_some_and(f64::is_finite)).count(), 2, "{log:?}");

    let saved = read_tensors(&out.join("model/model.safetensors"));
    let base_w = read_tensors(&base.join("model.safetensors"));
    assert_eq!(saved.len(), base_w.len());
    assert!(saved.values().all(|t| t.kind() == Kind::Float));
    // The masters start from the weights as the model computes with them (bf16);
    // two AdamW steps at lr 1e-5 move nearly every element by 1e-5 to 2e-5.
    let name = "model.layers.0.self_attn.q_proj.weight";
    let start = base_w[name].to_kind(Kind::BFloat16).to_kind(Kind::Float);
    let moved = (&saved[name] - &start).abs();
    let fraction = moved.gt(5e-6).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(fraction > 0.9, "{fraction} of the elements moved");
    assert!(moved.max().double_value(&[]) < 2.5e-5);
    // Most of them are below half a bf16 step: weights held in bf16 alone would have lost them.
    let rounded_back = saved[name].to_kind(Kind::BFloat16).to_kind(Kind::Float).eq_tensor(&start);
    assert!(rounded_back.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]) > 0.5);

    let tuned = Llama::load(&out.join("model"), Device::Cpu, Kind::Float).unwrap();
    let logits = tch::no_grad(|| tuned.forward(&probe()));
    assert!(bool::try_from(logits.isfinite().all()).unwrap());
}

#[test]
fn lora_bad_input() {
    let base = tiny_model("llama");
    let data = scratch("lora-bad").join("absent");
    let out = scratch("lora-bad-out").join("run");
    let run = |set: &str| train(&base, &data, &out, &["--set", "train.mode=lora", "--set", set]);
    assert_error(&run("lora.target_modules=[\"q_proj\", \"qkv_proj\"]"), 2, &["lora.target_modules", "qkv_proj"]);
    assert_error(&run("lora.rank=0"), 2, &["lora.rank"]);
    assert_error(&run("lora.dropout=1.0"), 2, &["lora.dropout"]);
    assert_error(&run("lora.dropout=-0.1"), 2, &["lora.dropout"]);
    assert!(!out.exists(), "nothing was written");
}
