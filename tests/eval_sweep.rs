//! `l2d eval --config`: generation over configured tasks under a sweep of
//! settings, its reports, and resuming an interrupted run.

mod common;

use common::{assert_error, checkpoint_for, l2d, ok, scratch, tiny_model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first `n` lines of a real GSM8K split.
fn gsm8k_subset(dir: &Path, split: &str, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(format!("../shared/data/gsm8k/{split}.jsonl")).unwrap();
    let path = dir.join(format!("gsm8k-{split}.jsonl"));
    std::fs::write(&path, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}

/// A config for the tiny llama on a few GSM8K items: 1 shot, sampled (seeded) short answers.
fn config(dir: &Path, items: usize) -> PathBuf {
    let test = gsm8k_subset(dir, "test", items);
    let train = gsm8k_subset(dir, "train", 3);
    let path = dir.join("eval.toml");
    let text = format!(
        "[model]\npath = {model:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n\n[generate]\ntemperature = 1.0\n\n\
         [eval]\nbatch_size = 3\nnum_shots = 1\nmax_new_tokens = 8\n\n[eval.tasks.gsm8k]\ndata = {test:?}\nshots = {train:?}\n",
        model = s(&tiny_model("llama")),
        test = s(&test),
        train = s(&train),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn sweep(cfg: &Path, ckpt: Option<&Path>, steps: &str, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_l2d"));
    cmd.args(["eval", "--config", s(cfg), "--steps", steps, "--out", s(out)]);
    if let Some(c) = ckpt {
        cmd.args(["--l2d", s(c)]);
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run(mut cmd: Command) -> String {
    ok(cmd.output().unwrap())
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// (setting, task_id) -> completion, from a finished run's examples.jsonl.
fn completions(dir: &Path) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = jsonl(&dir.join("examples.jsonl"))
        .iter()
        .map(|e| {
            let get = |k: &str| e[k].as_str().unwrap().to_string();
            (get("setting"), get("task_id"), get("completion"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn sweep_reports_every_setting_and_each_equals_its_own_run() {
    let dir = scratch("eval-sweep");
    let cfg = config(&dir, 5);
    let ckpt = checkpoint_for("eval-sweep-ckpt", 0, true, false);
    let all = dir.join("all");
    let table = run(sweep(&cfg, Some(&ckpt), "0,2,4", &all));
    assert!(table.contains("midpoint-4"), "{table}");

    let r = report(&all);
    assert_eq!(r["format"], "l2d-eval-report");
    assert!(r["model"]["config_sha256"].as_str().is_some_and(|h| h.len() == 64));
    assert_eq!(r["l2d"]["path"], s(&ckpt));
    assert_eq!(r["config"]["eval"]["steps"], serde_json::json!([0, 2, 4]));
    let results = r["results"].as_array().unwrap();
    let labels: Vec<&str> = results.iter().map(|x| x["setting"]["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["base", "midpoint-2", "midpoint-4"]);
    // Spec §8: S levels of midpoint = 2(S-1) + 1 evaluations per token.
    let evals: Vec<f64> = results.iter().map(|x| x["setting"]["evals_per_token"].as_f64().unwrap()).collect();
    assert_eq!(evals, [0.0, 3.0, 7.0]);
    for x in results {
        assert_eq!(x["task"], "gsm8k");
        assert_eq!(x["per_item"].as_array().unwrap().len(), 5);
        assert_eq!(x["metrics"][0]["name"], "accuracy");
        let g = &x["generation"];
        assert!(g["tokens"].as_u64().unwrap() > 0 && g["tokens_per_s"].as_f64().unwrap() > 0.0, "{g}");
    }
    let text = std::fs::read_to_string(all.join("examples.jsonl")).unwrap();
    assert!(text.lines().all(|l| l.matches("\"task_id\":").count() == 1 && l.matches("\"completion\":").count() == 1), "a key twice: {text}");
    let examples = jsonl(&all.join("examples.jsonl"));
    assert_eq!(examples.len(), 15);
    for e in &examples {
        for k in ["task", "setting", "task_id", "prompt", "completion", "reference", "correct", "new_tokens", "finish"] {
            assert!(!e[k].is_null(), "examples.jsonl line lacks {k}: {e}");
        }
    }
    let md = std::fs::read_to_string(all.join("report.md")).unwrap();
    assert!(md.contains("| gsm8k | midpoint-2 | 3.0 | accuracy |"), "{md}");

    // Every setting decodes from its own copy of the shared prompt pass: alone it gives the same text.
    let base = dir.join("base");
    run(sweep(&cfg, Some(&ckpt), "0", &base));
    let four = dir.join("four");
    run(sweep(&cfg, Some(&ckpt), "4", &four));
    let subset = |label: &str| completions(&all).into_iter().filter(|c| c.0 == label).collect::<Vec<_>>();
    assert_eq!(completions(&base), subset("base"));
    assert_eq!(completions(&four), subset("midpoint-4"));
    assert_ne!(subset("base").iter().map(|c| &c.2).collect::<Vec<_>>(), subset("midpoint-4").iter().map(|c| &c.2).collect::<Vec<_>>());
}

#[test]
fn killed_sweep_resumes_without_redoing_finished_items() {
    let dir = scratch("eval-resume");
    let cfg = config(&dir, 9);
    let ckpt = checkpoint_for("eval-resume-ckpt", 0, true, false);
    let steps = "0,4,8,16";
    let whole = dir.join("whole");
    run(sweep(&cfg, Some(&ckpt), steps, &whole));

    let cut = dir.join("cut");
    let journal = cut.join("examples.jsonl");
    let mut child = sweep(&cfg, Some(&ckpt), steps, &cut).spawn().unwrap();
    let start = Instant::now();
    let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    while lines(&journal) < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no journal lines appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!cut.join("report.json").exists(), "the run finished before it could be killed");
    let before = std::fs::read_to_string(&journal).unwrap();
    let kept = before.lines().count();
    assert!(kept < 36, "the journal was complete ({kept} lines)");
    // A kill in the middle of a write leaves half a line; it is dropped and redone.
    std::fs::write(&journal, format!("{before}{{\"task\": \"gsm8k\", \"sett")).unwrap();
    // A kill in the middle of an atomic write leaves its temporary file; the next run removes it.
    let debris = cut.join(".report.json.tmp-killed");
    std::fs::write(&debris, b"{\"half").unwrap();

    run(sweep(&cfg, Some(&ckpt), steps, &cut));
    assert!(!debris.exists(), "a killed write's temporary file was left");
    assert_eq!(completions(&cut), completions(&whole));
    let strip = |r: Value| r["results"].as_array().unwrap().iter().map(|x| (x["metrics"].clone(), x["per_item"].clone())).collect::<Vec<_>>();
    assert_eq!(strip(report(&cut)), strip(report(&whole)));
    // Lines finished before the kill were kept as they were, timings included: not redone.
    let final_lines: Vec<Value> = jsonl(&journal);
    for line in before.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        let key = |v: &Value| (v["setting"].clone(), v["task_id"].clone(), v["sample"].clone());
        let again = final_lines.iter().find(|f| key(f) == key(&line)).unwrap();
        assert_eq!(again["decode_s"], line["decode_s"], "{line} was redone");
    }
}

#[test]
fn bad_sweeps_fail_with_one_line() {
    let dir = scratch("eval-sweep-bad");
    let cfg = config(&dir, 2);
    let m = tiny_model("llama");
    let out = dir.join("out");
    let (cfg_s, m_s, out_s) = (s(&cfg), s(&m), s(&out));
    assert_error(&l2d(&["eval", "--model", m_s, "--out", out_s]), 2, &["eval.tasks", "no task configured"]);
    assert_error(
        &l2d(&["eval", "--model", m_s, "--set", "eval.tasks.gsm9k.data=\"x.jsonl\"", "--out", out_s]),
        2,
        &["eval.tasks.gsm9k", "unknown task", "gsm8k"],
    );
    assert_error(
        &l2d(&["eval", "--config", cfg_s, "--set", "eval.tasks.gsm8k.data=\"nowhere.jsonl\"", "--out", out_s]),
        2,
        &["eval.tasks.gsm8k.data", "nowhere.jsonl"],
    );
    assert_error(&l2d(&["eval", "--config", cfg_s, "--steps", "0,1", "--out", out_s]), 2, &["--steps (eval.steps)", "0 (the base LM) or >= 2"]);
    assert_error(&l2d(&["eval", "--config", cfg_s, "--steps", "0,4", "--out", out_s]), 2, &["need a checkpoint", "--l2d"]);
    assert_error(&l2d(&["eval", "--config", cfg_s, "--solvers", "rk5", "--out", out_s]), 2, &["--solvers (eval.solvers)", "rk5"]);
    assert_error(&l2d(&["eval", "--config", cfg_s]), 2, &["--out", "eval.out"]);
    assert_error(
        &l2d(&["eval", "--config", cfg_s, "--task", "gsm8k", "--data", "x", "--samples", "y"]),
        2,
        &["--task gsm8k", "no --config"],
    );
    assert_error(
        &l2d(&["eval", "--config", cfg_s, "--model", "../shared", "--out", out_s]),
        2,
        &["config.json"],
    );
    // A journal that is not one: named by file and line, nothing overwritten.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("examples.jsonl"), "{\"a\": 1}\n{\"b\": 2}\n").unwrap();
    assert_error(&l2d(&["eval", "--config", cfg_s, "--steps", "0", "--out", out_s]), 2, &["examples.jsonl:1", "another --out"]);
    assert_eq!(std::fs::read_to_string(out.join("examples.jsonl")).unwrap(), "{\"a\": 1}\n{\"b\": 2}\n");
}

#[test]
fn a_prompt_longer_than_the_model_is_named() {
    let dir = scratch("eval-sweep-long");
    let cfg = config(&dir, 2);
    let out = dir.join("out");
    // Shots from the full training split, 40 of them: far beyond the tiny model's 4096 positions.
    let long = ["eval", "--config", s(&cfg), "--steps", "0", "--set", "eval.num_shots=40", "--set",
        "eval.tasks.gsm8k.shots=\"../shared/data/gsm8k/train.jsonl\"", "--out", s(&out)];
    let clean = [&long[..], &["--protocol", "clean"]].concat();
    assert_error(&l2d(&clean), 2, &["eval.tasks.gsm8k: item 0", "positions", "eval.num_shots"]);
    // The paper protocol drops items over 2048 tokens first, as the reference does: here all of them.
    assert_error(&l2d(&long), 2, &["eval.tasks.gsm8k: no item left", "2 have prompt + answer over 2048", "eval.num_shots"]);
    assert!(!out.join("examples.jsonl").exists(), "nothing written");
}

#[test]
fn task_class_map_guides_the_diffusion_path() {
    let dir = scratch("eval-guidance");
    let cfg = config(&dir, 3);
    let ckpt = checkpoint_for("eval-guidance-ckpt", 3, true, false);
    let plain = dir.join("plain");
    run(sweep(&cfg, Some(&ckpt), "2", &plain));
    let guided = dir.join("guided");
    let mut cmd = sweep(&cfg, Some(&ckpt), "2", &guided);
    // The class count comes from the checkpoint's metadata.
    cmd.args(["--set", "eval.class_map.gsm8k=1", "--set", "l2d.guidance_weight=2.0"]);
    run(cmd);
    // Guidance evaluates the path with and without the label at each ODE step: 2·2 + 1 per token.
    let evals = |d: &Path| report(d)["results"][0]["setting"]["evals_per_token"].as_f64().unwrap();
    assert_eq!((evals(&plain), evals(&guided)), (3.0, 5.0));
    assert_ne!(completions(&plain), completions(&guided));
    assert_eq!(report(&guided)["config"]["eval"]["class_map"]["gsm8k"], 1);

    let mut bad = sweep(&cfg, Some(&ckpt), "2", &dir.join("bad"));
    bad.args(["--set", "eval.class_map.gsm8k=3"]);
    assert_error(&bad.output().unwrap(), 2, &["eval.class_map", "\"gsm8k\" must be in 0..3"]);
}

#[test]
fn a_resume_with_another_identity_is_refused_with_nothing_touched() {
    let dir = scratch("eval-identity");
    let cfg = config(&dir, 2);
    let out = dir.join("out");
    run(sweep(&cfg, None, "0", &out));
    let examples = std::fs::read(out.join("examples.jsonl")).unwrap();
    let report_before = std::fs::read(out.join("report.json")).unwrap();
    // Every line shows what the model saw: the rendered prompt and its ids.
    for e in jsonl(&out.join("examples.jsonl")) {
        assert!(e["prompt_text"].as_str().unwrap().starts_with("<|begin_of_text|>"), "{e}");
        assert!(e["prompt_ids"].as_array().unwrap().len() > 10, "{e}");
    }
    let mut other = sweep(&cfg, None, "0", &out);
    other.args(["--set", "generate.temperature=0.5", "--set", "eval.num_shots=0"]);
    assert_error(
        &other.output().unwrap(),
        2,
        &["holds completions of another run", "generate.temperature: 1.0 → 0.5", "eval.num_shots: 1 → 0", "prompts_sha256.gsm8k"],
    );
    assert_eq!(std::fs::read(out.join("examples.jsonl")).unwrap(), examples, "journal untouched");
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), report_before, "report untouched");
    // The same settings resume (here: nothing left to generate) and give the same completions.
    let before = completions(&out);
    run(sweep(&cfg, None, "0", &out));
    assert_eq!(completions(&out), before);
}

#[test]
fn a_resume_with_another_checkpoint_at_the_same_path_is_refused() {
    let dir = scratch("eval-identity-ckpt");
    let cfg = config(&dir, 2);
    let ckpt = dir.join("ckpt");
    common::copy_dir(&checkpoint_for("eval-identity-ckpt-a", 0, true, false), &ckpt);
    let out = dir.join("out");
    run(sweep(&cfg, Some(&ckpt), "2", &out));
    let examples = std::fs::read(out.join("examples.jsonl")).unwrap();
    let sha = |p: &Path| report(p)["l2d"]["tensors_sha256"].as_str().unwrap().to_string();
    let old = sha(&out);
    // Same path, same step and shape, other tensors.
    common::copy_dir(&checkpoint_for("eval-identity-ckpt-b", 0, false, false), &ckpt);
    let new = dir.join("fresh");
    run(sweep(&cfg, Some(&ckpt), "2", &new));
    assert_ne!(sha(&new), old);
    let refused = sweep(&cfg, Some(&ckpt), "2", &out).output().unwrap();
    assert_error(&refused, 2, &["holds completions of another run", &format!("l2d.tensors_sha256: \"{old}\" → \"{}\"", sha(&new))]);
    assert!(!common::stderr(&refused).contains("l2d.step"), "only the tensors differ");
    assert_eq!(std::fs::read(out.join("examples.jsonl")).unwrap(), examples, "journal untouched");
}

#[test]
fn sweep_flags_select_tasks_and_override_shots_and_length() {
    let dir = scratch("eval-flags");
    let cfg = config(&dir, 2);
    let out = dir.join("out");
    let mut cmd = sweep(&cfg, None, "0", &out);
    cmd.args(["--tasks", "gsm8k", "--num-shots", "0", "--max-new-tokens", "2"]);
    run(cmd);
    let r = report(&out);
    assert_eq!((r["config"]["eval"]["num_shots"].as_u64(), r["config"]["eval"]["max_new_tokens"].as_u64()), (Some(0), Some(2)));
    assert_eq!(r["protocol"], "paper");
    assert!(jsonl(&out.join("examples.jsonl")).iter().all(|e| e["new_tokens"].as_u64().unwrap() <= 2));

    let mut unknown = sweep(&cfg, None, "0", &dir.join("x"));
    unknown.args(["--tasks", "gsm8k,mmlu"]);
    assert_error(&unknown.output().unwrap(), 2, &["--tasks", "\"mmlu\" is not a configured task", "gsm8k"]);
    let mut zero = sweep(&cfg, None, "0", &dir.join("y"));
    zero.args(["--limit", "0"]);
    assert_error(&zero.output().unwrap(), 2, &["--limit (eval.limit)", "must be >= 1"]);
    let mut bad = sweep(&cfg, None, "0", &dir.join("z"));
    bad.args(["--set", "eval.protocol=\"papr\""]);
    assert_error(&bad.output().unwrap(), 2, &["eval.protocol", "\"paper\"", "papr"]);
}

/// Without a terminal the sweep logs its progress: completions done of the
/// task's total over all settings, the rate and new tokens/s.
#[test]
fn progress_lines_without_a_terminal() {
    let dir = scratch("eval-progress");
    let cfg = config(&dir, 2);
    let out = sweep(&cfg, None, "0", &dir.join("out")).args(["--tasks", "gsm8k", "--num-shots", "0", "--max-new-tokens", "2"]).output().unwrap();
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    let line = err.lines().find(|l| l.contains("eval gsm8k: 2/2 completions (100%)")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("completions/s") && line.contains("new tokens/s") && line.contains("1 settings of 2 completions each"), "{line}");
}
