//! `l2d generate` as outside scripts call it.

mod common;
use common::*;
use serde_json::Value;

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

fn model_arg(arch: &str) -> String {
    tiny_model(arch).to_str().unwrap().to_string()
}

#[test]
fn json_output_has_the_contract_fields() {
    let m = model_arg("llama");
    let out = ok(l2d(&["generate", "--model", &m, "--prompt", "The answer is", "--max-new-tokens", "5", "--min-new-tokens", "5", "--temperature", "0", "--json"]));
    let recs = json_lines(&out);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    for key in ["prompt", "completion", "completion_token_ids", "prompt_tokens", "new_tokens", "decode_tokens_per_s"] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert_eq!(r["prompt"], "The answer is");
    assert_eq!(r["new_tokens"], 5);
    assert_eq!(r["completion_token_ids"].as_array().unwrap().len(), 5);
    assert!(r["prompt_tokens"].as_u64().unwrap() >= 3);
    assert!(r["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn plain_output_is_the_completion_text() {
    let m = model_arg("qwen2");
    let args = ["generate", "--model", &m, "--prompt", "Hello", "--max-new-tokens", "6", "--temperature", "0"];
    let text = ok(l2d(&args));
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let rec = &json_lines(&ok(l2d(&json_args)))[0];
    assert_eq!(text, format!("{}\n", rec["completion"].as_str().unwrap()));
}

/// A batch of prompts of different lengths (left padding) gives what each prompt gives alone,
/// sampled too: a prompt's draws depend on the seed and its place in the file, not on its batch.
#[test]
fn prompts_file_batched_equals_one_by_one() {
    for arch in ["llama", "qwen2"] {
        let m = model_arg(arch);
        let dir = scratch(&format!("prompts-{arch}"));
        let file = dir.join("p.jsonl");
        std::fs::write(
            &file,
            "{\"id\": \"a\", \"prompt\": \"Tom has 3 apples and buys 4 more. How many\"}\n{\"prompt\": \"Hi\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2 + 2?\"}]}\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let common = ["--max-new-tokens", "8", "--min-new-tokens", "8", "--temperature", "1.5", "--seed", "3", "--json"];
        let mut batched = vec!["generate", "--model", &m, "--prompts", f, "--batch-size", "8"];
        batched.extend_from_slice(&common);
        let mut single = vec!["generate", "--model", &m, "--prompts", f, "--batch-size", "1"];
        single.extend_from_slice(&common);
        let a = json_lines(&ok(l2d(&batched)));
        let b = json_lines(&ok(l2d(&single)));
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["id"], "a");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["completion_token_ids"], y["completion_token_ids"], "{arch}");
            assert_eq!(x["prompt_tokens"], y["prompt_tokens"]);
        }
        assert_ne!(a[0]["prompt_tokens"], a[1]["prompt_tokens"], "prompts must differ in length");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = model_arg("llama");
    let run = |seed: &str| {
        let out = ok(l2d(&["generate", "--model", &m, "--prompt", "Once", "--max-new-tokens", "16", "--min-new-tokens", "16", "--temperature", "1.5", "--seed", seed, "--json"]));
        json_lines(&out)[0]["completion_token_ids"].clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn chat_renders_the_models_template() {
    let m = model_arg("qwen2");
    let out = ok(l2d(&["generate", "--model", &m, "--chat", "--system", "Be brief.", "--prompt", "Hi", "--max-new-tokens", "2", "--json"]));
    let plain = ok(l2d(&["generate", "--model", &m, "--prompt", "Hi", "--max-new-tokens", "2", "--json"]));
    let chat_tokens = json_lines(&out)[0]["prompt_tokens"].as_u64().unwrap();
    let plain_tokens = json_lines(&plain)[0]["prompt_tokens"].as_u64().unwrap();
    // <|im_start|>system ... <|im_end|> <|im_start|>user Hi <|im_end|> <|im_start|>assistant
    assert!(chat_tokens >= plain_tokens + 8, "chat {chat_tokens} vs plain {plain_tokens}");
}

#[test]
fn stop_string_cuts_the_completion() {
    let m = model_arg("llama");
    let base = ["generate", "--model", &m, "--prompt", "Numbers:", "--max-new-tokens", "24", "--min-new-tokens", "24", "--temperature", "0", "--json"];
    let full = json_lines(&ok(l2d(&base)))[0]["completion"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "completion too short to test: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut args = base.to_vec();
    args.extend_from_slice(&["--stop", &stop]);
    let rec = &json_lines(&ok(l2d(&args)))[0];
    let cut = rec["completion"].as_str().unwrap();
    assert_eq!(rec["finish_reason"], "stop");
    assert!(!cut.contains(&stop));
    assert_eq!(cut, &full[..full.find(&stop).unwrap()]);
}

#[test]
fn config_file_and_set_supply_defaults() {
    let m = model_arg("llama");
    let dir = scratch("gen-config");
    let cfg = dir.join("gen.toml");
    std::fs::write(&cfg, format!("[model]\npath = {m:?}\n[generate]\nmax_new_tokens = 3\ntemperature = 0.0\n")).unwrap();
    let c = cfg.to_str().unwrap();
    let out = json_lines(&ok(l2d(&["generate", "--config", c, "--prompt", "x", "--json", "--set", "generate.min_new_tokens=3"])));
    assert_eq!(out[0]["new_tokens"], 3);
    // A flag beats the config.
    let out = json_lines(&ok(l2d(&["generate", "--config", c, "--prompt", "x", "--json", "--max-new-tokens", "5", "--min-new-tokens", "5"])));
    assert_eq!(out[0]["new_tokens"], 5);
}

/// A reader that goes away early (`generate --json | head -1`) ends the run
/// with exit code 0 and nothing on stderr.
#[test]
fn closed_stdout_exits_zero_silently() {
    let m = model_arg("llama");
    let dir = scratch("gen-pipe");
    let prompts = dir.join("p.jsonl");
    std::fs::write(&prompts, (0..4).map(|i| format!("{{\"prompt\": \"line {i}\"}}\n")).collect::<String>()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["generate", "--model", &m, "--prompts", prompts.to_str().unwrap(), "--max-new-tokens", "3", "--json", "--batch-size", "1"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line is written
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).trim().is_empty(), "stderr: {}", stderr(&out));
}

/// More new tokens than the model's positions leave are capped, and it says so.
#[test]
fn max_new_tokens_beyond_the_context_is_capped_with_a_warning() {
    let dir = scratch("gen-cap").join("model");
    copy_dir(&tiny_model("llama"), &dir);
    edit_json(&dir.join("config.json"), |v| v["max_position_embeddings"] = 16.into());
    let out = l2d(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "100", "--min-new-tokens", "100", "--temperature", "0", "--json"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("max_new_tokens 100") && err.contains("16 positions") && err.contains("capped at"), "{err}");
    let rec: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(rec["prompt_tokens"].as_u64().unwrap() + rec["new_tokens"].as_u64().unwrap(), 16, "{rec}");
}
