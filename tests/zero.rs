//! `train.zero`: the per-rank memory plan of `l2d train --dry-run` and the
//! key's validation (the two-rank runs are in tests/dist.rs).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A Llama `config.json` small enough to count by hand: hidden 64, 2 layers,
/// 4 heads of 16 with 2 KV heads (kv_dim 32), intermediate 128, vocab 100, untied.
fn hand_model() -> PathBuf {
    let dir = scratch("zero-plan-model");
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

fn plan_args(mode: &str, extra: &[&str]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut args: Vec<String> = ["train", "--config", &format!("{root}/configs/tiny-l2d-lora.toml"), "--dry-run"].map(String::from).to_vec();
    let variant = if mode == "l2d-full" { "full" } else { "lora" };
    for set in [
        format!("model.path={}", hand_model().display()),
        format!("train.mode={mode}"),
        format!("l2d.variant={variant}"),
        "model.dtype=bf16".into(),
        "train.batch_size=8".into(),
        "train.micro_batch_size=2".into(),
        "train.max_seq_len=16".into(),
    ] {
        args.extend(["--set".into(), set]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String], world_size_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_l2d"));
    cmd.args(args).env_remove("RUST_LOG").env_remove("WORLD_SIZE");
    if let Some(w) = world_size_env {
        cmd.env("WORLD_SIZE", w);
    }
    cmd.output().unwrap()
}

fn dry_plan(mode: &str, extra: &[&str], world_size_env: Option<&str>) -> serde_json::Value {
    let args = plan_args(mode, &[&["--json"], extra].concat());
    serde_json::from_str(&ok(run(&args, world_size_env))).unwrap()
}

/// The plan's six numbers, in its order.
fn bytes(part: &serde_json::Value) -> [i64; 6] {
    ["weights_bytes", "gradients_bytes", "masters_bytes", "optimizer_bytes", "activations_estimate_bytes", "total_bytes"]
        .map(|k| part[k].as_i64().unwrap_or_else(|| panic!("{k} in {part}")))
}

/// Activations of one micro-batch of 2 × 16 tokens: per token 2 layers of
/// (8·64 + 2·32 + 4·128) = 1088 bf16 elements (twice for L2D), plus 2·100 f32 logits.
fn activations(paths: i64) -> i64 {
    32 * (2 * 1088 * 2 * paths + 2 * 100 * 4)
}

#[test]
fn full_mode_plan_equals_the_hand_count_with_and_without_zero1() {
    // q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64, two norms of 64:
    // 36992 per layer; embeddings and the untied head 100x64 each; the final norm 64.
    let p: i64 = 2 * 100 * 64 + 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192 + 2 * 64) + 64;
    assert_eq!(p, 86_848);
    let plan = dry_plan("full", &["--world-size", "4"], None);
    assert_eq!(plan["trainable_params"], p);
    assert_eq!((plan["world_size"].as_u64(), plan["zero"].as_u64()), (Some(4), Some(0)));
    let act = activations(1);
    // bf16 weights, f32 gradients and masters, two f32 moments; under ZeRO-1
    // bf16 gradients and a quarter (21712 elements) of the masters and moments.
    let (w, g, m) = (2 * p, 4 * p, 4 * p);
    assert_eq!(bytes(&plan["per_rank_zero0"]), [w, g, m, 8 * p, act, w + g + m + 8 * p + act]);
    let (g1, m1, o1) = (2 * p, 4 * 21_712, 8 * 21_712);
    assert_eq!(bytes(&plan["per_rank_zero1"]), [w, g1, m1, o1, act, w + g1 + m1 + o1 + act]);
    // 173696 + 173696 + 86848 + 173696 + 164864, written out.
    assert_eq!(bytes(&plan["per_rank_zero1"])[5], 772_800);
}

#[test]
fn l2d_full_plan_counts_the_frozen_model_and_shards_the_moments_unevenly() {
    let plan = dry_plan("l2d-full", &["--world-size", "3"], None);
    let (p, frozen) = (plan["trainable_params"].as_i64().unwrap(), plan["frozen_params"].as_i64().unwrap());
    assert_eq!(frozen, 86_848);
    let shard = (p + 2) / 3;
    let (w, g, m, act) = (2 * (frozen + p), 2 * p, 4 * shard, activations(2));
    assert_eq!(bytes(&plan["per_rank_zero1"]), [w, g, m, 8 * shard, act, w + g + m + 8 * shard + act]);
    // f32 computes with the trainable tensors themselves: no separate masters, f32 gradients.
    let f32_plan = dry_plan("l2d-full", &["--set", "model.dtype=f32"], None);
    for part in ["per_rank_zero0", "per_rank_zero1"] {
        assert_eq!(f32_plan[part]["masters_bytes"], 0);
        assert_eq!(f32_plan[part]["weights_bytes"], 4 * (frozen + p));
        assert_eq!(f32_plan[part]["gradients_bytes"], 4 * p);
    }
}

#[test]
fn world_size_comes_from_the_launcher_unless_given_and_lora_modes_have_no_zero1_plan() {
    assert_eq!(dry_plan("full", &[], None)["world_size"], 1);
    assert_eq!(dry_plan("full", &[], Some("8"))["world_size"], 8);
    assert_eq!(dry_plan("full", &["--world-size", "2"], Some("8"))["world_size"], 2);
    assert!(dry_plan("l2d-lora", &[], None)["per_rank_zero1"].is_null());
    assert_error(&run(&plan_args("full", &[]), Some("eight")), 2, &["WORLD_SIZE: expected a whole number >= 1, got \"eight\""]);
    // clap's message: the flag, the value and why, then its usage hint.
    let zero = run(&plan_args("full", &["--world-size", "0"]), None);
    assert_eq!(zero.status.code(), Some(2));
    assert!(stderr(&zero).starts_with("error: invalid value '0' for '--world-size <N>': expected a whole number >= 1, got \"0\""), "{}", stderr(&zero));
}

#[test]
fn the_human_dry_run_shows_the_same_numbers() {
    let json = dry_plan("full", &["--world-size", "4", "--set", "train.zero=1"], None);
    let text = ok(run(&plan_args("full", &["--world-size", "4", "--set", "train.zero=1"]), None));
    for part in ["per_rank_zero0", "per_rank_zero1"] {
        for (key, value) in json[part].as_object().unwrap() {
            let line = text.lines().find(|l| l.starts_with(&format!("{part}.{key} "))).unwrap_or_else(|| panic!("{part}.{key} in {text}"));
            assert!(line.contains(&format!(" {value} (")), "{line}");
        }
    }
    assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["zero", "1"]), "{text}");
}

#[test]
fn a_bad_train_zero_is_one_line_naming_the_key_from_file_and_from_set() {
    let dir = scratch("zero-bad-key");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[train]\nmode = \"full\"\nzero = 3\n").unwrap();
    let args = ["train", "--config", file.to_str().unwrap(), "--set", &format!("model.path={}", hand_model().display()), "--dry-run"];
    assert_error(&l2d(&args), 2, &[file.to_str().unwrap(), "train.zero: must be 0 or 1, got 3"]);
    assert_error(&run(&plan_args("full", &["--set", "train.zero=2"]), None), 2, &["--set train.zero: must be 0 or 1, got 2"]);
    assert_error(&run(&plan_args("full", &["--set", "train.zero=x"]), None), 2, &["train.zero"]);
    assert_error(&run(&plan_args("lora", &["--set", "train.zero=1"]), None), 2, &["train.zero: 1 (ZeRO-1) applies to train.mode = \"full\" or \"l2d-full\", not \"lora\""]);
}
