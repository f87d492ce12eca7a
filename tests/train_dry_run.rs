//! `l2d train --dry-run`: parameter counts from `config.json` alone (the data
//! budget against a real run is in tests/train.rs).

mod common;
use common::*;

const MODELS: [(&str, &str, i64); 4] = [
    // (config prefix, fixture dir with only config.json, parameter count transformers reports)
    ("llama-3.2-1b-instruct", "Llama-3.2-1B-Instruct", 1_235_814_400),
    ("llama-3.1-8b-instruct", "Llama-3.1-8B-Instruct", 8_030_261_248),
    ("qwen2.5-1.5b-instruct", "Qwen2.5-1.5B-Instruct", 1_543_714_304),
    ("qwen2.5-7b-instruct", "Qwen2.5-7B-Instruct", 7_615_616_512),
];

fn dry_run(config: &str, model_dir: &str) -> serde_json::Value {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{root}/configs/{config}.toml");
    let model = format!("model.path={root}/tests/fixtures/model-configs/{model_dir}");
    serde_json::from_str(&ok(l2d(&["train", "--config", &cfg, "--set", &model, "--dry-run", "--json"]))).unwrap()
}

#[test]
fn llama_3_2_1b_l2d_lora_has_the_papers_trainable_count() {
    let plan = dry_run("llama-3.2-1b-instruct-l2d-lora", "Llama-3.2-1B-Instruct");
    assert_eq!(plan["trainable_params"], 73_344_256);
    assert_eq!(plan["frozen_params"], 1_235_814_400);
    assert_eq!(plan["batch_size"], 32);
    assert_eq!(plan["micro_batch_size"], 4);
    assert_eq!(plan["grad_accumulation_steps"], 8);
    assert_eq!((plan["warmup_type"].as_str(), plan["warmup_steps"].as_u64()), (Some("log"), Some(100)));
    // No data.out in the config: the data budget is left open.
    assert!(plan["data"].is_null() && plan["planned_steps"].is_null() && plan["planned_tokens"].is_null());
}

#[test]
fn every_shipped_config_plans_and_base_counts_match_transformers() {
    for (prefix, dir, base) in MODELS {
        for mode in ["l2d-lora", "l2d-full", "lora", "full"] {
            let plan = dry_run(&format!("{prefix}-{mode}"), dir);
            let (trainable, frozen) = (plan["trainable_params"].as_i64().unwrap(), plan["frozen_params"].as_i64().unwrap());
            match mode {
                "full" => assert_eq!((trainable, frozen), (base, 0), "{prefix}"),
                _ => assert_eq!(frozen, base, "{prefix} {mode}"),
            }
            assert!(trainable > 0);
        }
    }
}

#[test]
fn dry_run_bad_input() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{root}/configs/llama-3.2-1b-instruct-l2d-lora.toml");
    let out = l2d(&["train", "--config", &cfg, "--set", "model.path=/nonexistent/model", "--dry-run"]);
    assert_error(&out, 2, &["/nonexistent/model/config.json"]);
    let model = format!("model.path={root}/tests/fixtures/model-configs/Llama-3.2-1B-Instruct");
    let out = l2d(&["train", "--config", &cfg, "--set", &model, "--set", "train.mode=lora", "--set", "lora.target_modules=[\"qq_proj\"]", "--dry-run"]);
    assert_error(&out, 2, &["qq_proj"]);
    let out = l2d(&["train", "--config", &cfg, "--set", &model, "--set", "data.out=/nonexistent/shards", "--dry-run"]);
    assert_error(&out, 2, &["data.out", "/nonexistent/shards", "does not exist"]);
}
