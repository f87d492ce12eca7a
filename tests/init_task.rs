//! `l2d init --task`: the bundled demo task's data, its determinism, its
//! splits, its answers, and that the GSM8K scorer reads it unchanged.

mod common;

use common::{assert_error, l2d, ok, scratch};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Generates the `modsum` task into `dir/name` with `extra` flags.
fn generate(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["init", "--task", "modsum", "--out", s(&out)];
    args.extend_from_slice(extra);
    ok(l2d(&args));
    out
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

const FILES: [&str; 4] = ["train.jsonl", "valid.jsonl", "valid-eval.jsonl", "test.jsonl"];

/// (question, answer) of a chat record.
fn chat_pair(v: &Value) -> (String, String) {
    let m = v["messages"].as_array().unwrap();
    assert_eq!((m.len(), &m[0]["role"], &m[1]["role"]), (2, &json!("user"), &json!("assistant")), "{v}");
    (m[0]["content"].as_str().unwrap().into(), m[1]["content"].as_str().unwrap().into())
}

/// (question, answer) of a GSM8K-layout record.
fn gsm8k_pair(v: &Value) -> (String, String) {
    (v["question"].as_str().unwrap().into(), v["answer"].as_str().unwrap().into())
}

/// The worked answer, recomputed from the question alone.
fn expected_answer(question: &str) -> String {
    let terms: Vec<u32> =
        question.strip_prefix("Add mod 10: ").unwrap().split(" + ").map(|t| t.parse().unwrap()).collect();
    assert!(terms.iter().all(|&t| t < 10) && terms.len() == 5, "{question}");
    let mut total = terms[0];
    let mut running = Vec::new();
    for t in &terms[1..] {
        total = (total + t) % 10;
        running.push(total.to_string());
    }
    format!("{} #### {total}", running.join(" "))
}

#[test]
fn same_seed_same_bytes_other_seed_other_items() {
    let dir = scratch("init-task-seed");
    let sizes = ["--train", "300", "--valid", "40", "--test", "50"];
    let a = generate(&dir, "a", &[&["--seed", "7"], &sizes[..]].concat());
    let b = generate(&dir, "b", &[&["--seed", "7"], &sizes[..]].concat());
    let c = generate(&dir, "c", &[&["--seed", "8"], &sizes[..]].concat());
    for f in FILES {
        assert_eq!(read(&a.join(f)), read(&b.join(f)), "{f} differs for the same seed");
        assert_ne!(read(&a.join(f)), read(&c.join(f)), "{f} is the same for seeds 7 and 8");
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&a).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["test.jsonl", "train.jsonl", "valid-eval.jsonl", "valid.jsonl"]);
}

#[test]
fn splits_have_the_asked_sizes_are_disjoint_and_answers_recompute() {
    let dir = scratch("init-task-splits");
    let out = generate(&dir, "t", &["--train", "2000", "--valid", "150", "--test", "250"]);
    let train: Vec<_> = jsonl(&out.join("train.jsonl")).iter().map(chat_pair).collect();
    let valid: Vec<_> = jsonl(&out.join("valid.jsonl")).iter().map(chat_pair).collect();
    let valid_eval: Vec<_> = jsonl(&out.join("valid-eval.jsonl")).iter().map(gsm8k_pair).collect();
    let test: Vec<_> = jsonl(&out.join("test.jsonl")).iter().map(gsm8k_pair).collect();
    assert_eq!((train.len(), valid.len(), test.len()), (2000, 150, 250));
    assert_eq!(valid, valid_eval, "valid.jsonl and valid-eval.jsonl hold different items");

    let all: Vec<&(String, String)> = train.iter().chain(&valid).chain(&test).collect();
    let questions: HashSet<&str> = all.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(questions.len(), all.len(), "a question repeats within or across splits");
    for (q, a) in all {
        assert_eq!(a, &expected_answer(q), "wrong answer for {q:?}");
    }
    // Every final digit occurs: the answers are not degenerate.
    let finals: HashSet<&str> = test.iter().map(|(_, a)| a.rsplit(' ').next().unwrap()).collect();
    assert_eq!(finals.len(), 10, "{finals:?}");
}

#[test]
fn gsm8k_scorer_gives_its_own_answers_full_marks_and_shifted_ones_none() {
    let dir = scratch("init-task-score");
    let out = generate(&dir, "t", &["--train", "10", "--valid", "10", "--test", "120"]);
    let test = out.join("test.jsonl");
    let records = jsonl(&test);
    let score = |name: &str, completion: &dyn Fn(&str) -> String| -> Value {
        let lines: String = records
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{}\n", json!({"task_id": i, "completion": completion(r["answer"].as_str().unwrap())})))
            .collect();
        let samples = dir.join(name);
        std::fs::write(&samples, lines).unwrap();
        let out = ok(l2d(&["eval", "--task", "gsm8k", "--data", s(&test), "--samples", s(&samples), "--json"]));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["items"], 120, "{v}");
        v["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "accuracy").unwrap()["value"].clone()
    };
    assert_eq!(score("right.jsonl", &|a| a.to_string()), 1.0);
    let final_digit = |a: &str| a.rsplit(' ').next().unwrap().parse::<u32>().unwrap();
    assert_eq!(score("shifted.jsonl", &|a| format!("#### {}", (final_digit(a) + 1) % 10)), 0.0);
}

#[test]
fn bad_flags_exit_2_with_one_line_and_write_nothing() {
    let dir = scratch("init-task-bad");
    let out = dir.join("t");
    let o = s(&out);
    assert_clap_error(&l2d(&["init", "--task", "sorting", "--out", o]), &["sorting"]);
    assert_clap_error(&l2d(&["init", "--task", "modsum", "--arch", "llama", "--out", o]), &["--arch"]);
    assert_clap_error(&l2d(&["init", "--task", "modsum", "--preset", "small", "--out", o]), &["--preset"]);
    assert_clap_error(&l2d(&["init", "--arch", "llama", "--train", "5", "--out", o]), &["--train"]);
    assert_error(&l2d(&["init", "--out", o]), 2, &["--arch or --task"]);
    assert_clap_error(&l2d(&["init", "--task", "modsum", "--train", "many", "--out", o]), &["--train"]);
    // More items than there are distinct questions: refused, not an endless search.
    assert_error(&l2d(&["init", "--task", "modsum", "--train", "2000000", "--out", o]), 2, &["too few distinct"]);
    assert!(!out.exists(), "a failed init left {o} behind");
    ok(l2d(&["init", "--task", "modsum", "--train", "5", "--valid", "1", "--test", "1", "--out", o]));
    assert_error(&l2d(&["init", "--task", "modsum", "--out", o]), 2, &[o]);
}

#[test]
fn arch_without_task_still_writes_a_model() {
    let dir = scratch("init-task-model");
    let out = dir.join("m");
    ok(l2d(&["init", "--arch", "qwen2", "--out", s(&out)]));
    assert!(out.join("model.safetensors").is_file() && out.join("tokenizer.json").is_file());
    assert!(!out.join("train.jsonl").exists());
}
