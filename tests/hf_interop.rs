//! Directories written by `l2d init` load in Hugging Face transformers with
//! the same logits and the same chat-prompt token ids as in l2d.

mod common;
use common::*;
use std::process::Command;
use tch::{Device, Kind, Tensor};

use l2d::data::chat::Message;
use l2d::data::tokenizer::Tokenizer;
use l2d::model::Llama;

fn check(arch: &str) {
    let dir = tiny_model(arch);
    let ids: Vec<Vec<i64>> = vec![vec![3, 17, 42, 99, 7, 250, 11, 5], vec![9, 8, 7, 6, 5, 4, 3, 2]];
    let messages = vec![
        Message { role: "system".into(), content: "You add numbers.".into() },
        Message { role: "user".into(), content: "What is 12 + 7?".into() },
    ];
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hf_check_dir.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&dir)
        .arg(serde_json::to_string(&ids).unwrap())
        .arg(serde_json::to_string(&messages).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "transformers failed on {arch}: {}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let model = Llama::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let input = Tensor::from_slice2(&ids);
    let ours = tch::no_grad(|| model.forward(&input));
    let theirs: Vec<Vec<Vec<f32>>> = serde_json::from_value(hf["logits"].clone()).unwrap();
    let theirs = Tensor::from_slice(&theirs.concat().concat()).view(ours.size().as_slice());
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "{arch}: max |Δlogit| = {diff}");

    let tok = Tokenizer::load(&dir).unwrap();
    let chat: Vec<i64> = serde_json::from_value(hf["chat_ids"].clone()).unwrap();
    assert_eq!(tok.encode_chat(&messages).unwrap(), chat, "{arch}: chat prompt ids");
    let plain: Vec<i64> = serde_json::from_value(hf["plain_ids"].clone()).unwrap();
    assert_eq!(tok.encode("Tom has 3 apples.", true).unwrap(), plain, "{arch}: plain ids");
}

#[test]
fn init_llama_loads_in_transformers() {
    check("llama");
}

#[test]
fn init_qwen2_loads_in_transformers() {
    check("qwen2");
}
