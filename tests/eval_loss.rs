//! `l2d eval loss`: the diagnostic cross-entropy at fixed diffusion times.

mod common;
use common::*;
use serde_json::Value;

fn data_file(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    let f = dir.join("data.jsonl");
    std::fs::write(
        &f,
        "{\"input_ids\": [3, 17, 42, 99, 7, 250, 11, 5]}\n{\"input_ids\": [9, 8, 7, 6, 5], \"labels\": [-100, -100, 7, 6, 5]}\n",
    )
    .unwrap();
    f
}

fn run(ckpt: Option<&std::path::Path>, data: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let m = tiny_model("llama");
    let args = ["eval", "loss", "--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"];
    l2d_with_checkpoint(&args, ckpt, extra)
}

#[test]
fn loss_at_t0_equals_the_base_lm_and_moves_after() {
    let ckpt = checkpoint_for("eval-loss", 0, true, false);
    let data = data_file("eval-loss-data");
    let out: Value = serde_json::from_str(&ok(run(Some(&ckpt), &data, &["--t", "0,0.5,1"]))).unwrap();
    let base = out["base_loss"].as_f64().unwrap();
    let losses = out["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 3);
    // 7 next-token targets in the first line, 3 unmasked in the second (the first label is never a target).
    assert_eq!(out["tokens"], 10);
    let at = |i: usize| losses[i]["loss"].as_f64().unwrap();
    assert!((at(0) - base).abs() < 1e-5, "t=0: {} vs base {base}", at(0));
    assert!((at(2) - base).abs() > 1e-4, "the perturbed path changes the loss at t=1: {} vs base {base}", at(2));
    // Random logits z cannot beat the uniform guess on average (logsumexp(z) >=
    // ln 512 + mean(z)), and with l2d init's std 1/sqrt(hidden) they have a
    // spread of about 1, which costs about var/2 above it.
    let uniform = 512f64.ln();
    assert!(base > uniform - 0.1 && base < uniform + 1.5, "base {base} vs ln 512 = {uniform}");
    // Same seed, same numbers.
    let again: Value = serde_json::from_str(&ok(run(Some(&ckpt), &data, &["--t", "0,0.5,1"]))).unwrap();
    assert_eq!(again, out);
}

#[test]
fn loss_bad_input() {
    let data = data_file("eval-loss-bad");
    let dir = data.parent().unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"input_ids\": [1, 2, 3]}\n{\"tokens\": [1]}\n").unwrap();
    assert_error(&run(None, &bad, &[]), 2, &["--data", "bad.jsonl:2", "input_ids"]);
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").unwrap();
    assert_error(&run(None, &bad, &[]), 2, &["--data", "bad.jsonl:1", "chat data", "l2d prepare"]);
    std::fs::write(&bad, "{\"input_ids\": [1, 2, 99999]}\n").unwrap();
    assert_error(&run(None, &bad, &[]), 2, &["bad.jsonl:1", "99999"]);
    std::fs::write(&bad, "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n").unwrap();
    assert_error(&run(None, &bad, &[]), 2, &["bad.jsonl:1", "labels"]);
    std::fs::write(&bad, "{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, -100]}\n").unwrap();
    assert_error(&run(None, &bad, &[]), 2, &["masked"]);
    assert_error(&run(None, &data, &["--t", "1.5"]), 2, &["--t", "1.5"]);
    assert_error(&run(None, std::path::Path::new("/nonexistent.jsonl"), &[]), 2, &["--data", "/nonexistent.jsonl"]);
}

/// `--data` also takes a directory written by `l2d prepare` (its valid split).
#[test]
fn loss_reads_a_prepared_directory() {
    let dir = scratch("eval-loss-prepared");
    let chat = dir.join("chat.jsonl");
    let mut text = String::new();
    for i in 0..8 {
        let rec = serde_json::json!({"messages": [
            {"role": "user", "content": format!("What is {i} + 2?")},
            {"role": "assistant", "content": format!("{i} + 2 = {}", i + 2)},
        ]});
        text.push_str(&format!("{rec}\n"));
    }
    std::fs::write(&chat, text).unwrap();
    let m = tiny_model("llama");
    let out = dir.join("prepared");
    ok(l2d(&["prepare", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--input", chat.to_str().unwrap(), "--set", "data.valid_fraction=0.25"]));
    let res: Value = serde_json::from_str(&ok(l2d(&["eval", "loss", "--model", m.to_str().unwrap(), "--data", out.to_str().unwrap(), "--json"]))).unwrap();
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let valid = &manifest["splits"]["valid"];
    assert!(valid["examples"].as_u64().unwrap() >= 1, "{manifest}");
    assert!(res["base_loss"].as_f64().unwrap().is_finite());
    // Only the responses and their end-of-turn tokens are scored.
    let scored = res["tokens"].as_u64().unwrap();
    assert!(scored > 0 && scored < valid["tokens"].as_u64().unwrap(), "{res} vs {valid}");
}
