//! A run that fails or is stopped before it produced anything leaves no
//! output directory behind (nor the parents made for it); one stopped later
//! keeps what it needs to resume.

mod common;

use common::{assert_error, l2d, prepared, scratch, stderr, tiny_model};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An eval config for the tiny llama on the first `items` GSM8K test items, no shots,
/// every completion exactly `tokens` long.
fn eval_config(dir: &Path, items: usize, tokens: usize) -> PathBuf {
    let text = std::fs::read_to_string("../shared/data/gsm8k/test.jsonl").unwrap();
    let data = dir.join("gsm8k.jsonl");
    std::fs::write(&data, text.lines().take(items).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let path = dir.join("eval.toml");
    let toml = format!(
        "[model]\npath = {:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n\n\
         [generate]\nmax_new_tokens = {tokens}\nmin_new_tokens = {tokens}\n\n\
         [eval]\nbatch_size = 1\nnum_shots = 0\nmax_new_tokens = {tokens}\nsteps = [0]\n\n[eval.tasks.gsm8k]\ndata = {:?}\n",
        s(&tiny_model("llama")),
        s(&data),
    );
    std::fs::write(&path, toml).unwrap();
    path
}

fn eval(cfg: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_l2d"));
    cmd.args(["eval", "--config", s(cfg), "--out", s(out)]).env_remove("RUST_LOG");
    cmd
}

/// Runs the eval of `cfg` into `out`, sends it SIGINT once `ready` holds and
/// asserts that it stopped with 130 (128 + SIGINT) and no error.
fn interrupted_eval(cfg: &Path, out: &Path, ready: impl Fn() -> bool) {
    let mut child = eval(cfg, out).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        assert!(start.elapsed() < Duration::from_secs(120), "the run never got ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill only sends a signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(130), "stderr: {}", stderr(&stopped));
    assert!(!stderr(&stopped).contains("error"), "{}", stderr(&stopped));
}

fn journal_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("examples.jsonl")).map_or(0, |t| t.lines().count())
}

#[test]
fn refused_evals_make_no_output_directory() {
    let dir = scratch("failed-eval-refused");
    let cfg = eval_config(&dir, 2, 2);
    let new = dir.join("new");
    let out = new.join("run");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"cut\n").unwrap();
    let eval_with = |extra: &[&str]| l2d(&[&["eval", "--config", s(&cfg), "--out", s(&out)], extra].concat());
    assert_error(&eval_with(&["--set", &format!("eval.tasks.gsm8k.data={:?}", s(&bad))]), 2, &["bad.jsonl:1"]);
    assert_error(&eval_with(&["--model", s(&dir.join("no-model"))]), 2, &["no-model"]);
    assert_error(&eval_with(&["--steps", "0,1"]), 2, &["--steps (eval.steps)"]);
    let data = dir.join("gsm8k.jsonl");
    assert_error(&l2d(&["eval", "--task", "gsm8k", "--data", s(&data), "--samples", s(&bad), "--out", s(&out)]), 2, &["bad.jsonl:1"]);
    assert!(!new.exists(), "a refused eval left {}", new.display());
}

#[test]
fn an_eval_failing_before_its_first_completion_leaves_nothing() {
    let dir = scratch("failed-eval-write");
    let cfg = eval_config(&dir, 2, 2);
    let new = dir.join("new");
    let mut cmd = eval(&cfg, &new.join("run"));
    // A full disk, as far as the run can tell: no file may grow at all.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &none) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    assert_error(&cmd.output().unwrap(), 1, &["journal-identity.json", "File too large"]);
    assert!(!new.exists(), "the failed eval left {}", new.display());
}

#[test]
fn an_eval_interrupted_before_its_first_completion_leaves_nothing() {
    let dir = scratch("failed-eval-sigint");
    // 200 forced tokens per completion: seconds before the first is done.
    let cfg = eval_config(&dir, 2, 200);
    let new = dir.join("new");
    let out = new.join("run");
    interrupted_eval(&cfg, &out, || out.join("journal-identity.json").exists());
    assert!(!new.exists(), "the interrupted eval left {}", new.display());
}

#[test]
fn an_eval_interrupted_after_completions_keeps_its_journal() {
    let dir = scratch("failed-eval-sigint-late");
    let cfg = eval_config(&dir, 20, 4);
    let out = dir.join("run");
    interrupted_eval(&cfg, &out, || journal_lines(&out) >= 1);
    let kept = journal_lines(&out);
    assert!((1..20).contains(&kept), "{kept} completions kept");
    assert!(out.join("journal-identity.json").is_file());
}

#[test]
fn a_refused_prepare_leaves_no_parent_directories() {
    let dir = scratch("failed-prepare");
    let input = dir.join("chat.jsonl");
    std::fs::write(&input, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"cut").unwrap();
    let new = dir.join("new");
    let out = l2d(&["prepare", "--model", s(&tiny_model("llama")), "--input", s(&input), "--out", s(&new.join("a/shards")), "--strict"]);
    assert_error(&out, 2, &["chat.jsonl:2", "malformed"]);
    assert!(!new.exists(), "the refused prepare left {}", new.display());
}

#[test]
fn a_train_whose_model_does_not_load_leaves_no_run_directory() {
    let dir = scratch("failed-train");
    let model = tiny_model("llama");
    let shards = prepared("failed-train-data", &model);
    // The tiny model less one tensor: its checkpoint header is valid, its load fails.
    let broken = dir.join("broken");
    common::copy_dir(&model, &broken);
    let mut tensors = tch::Tensor::read_safetensors(model.join("model.safetensors")).unwrap();
    let gone = tensors.remove(tensors.iter().position(|(n, _)| n.ends_with("mlp.up_proj.weight")).unwrap()).0;
    tch::Tensor::write_safetensors(&tensors, broken.join("model.safetensors")).unwrap();
    let new = dir.join("new");
    let out = l2d(&[
        "train", "--model", s(&broken), "--set", &format!("data.out={:?}", s(&shards)), "--set", "train.max_steps=1",
        "--out", s(&new.join("run")),
    ]);
    assert_error(&out, 2, &[&gone, "missing"]);
    assert!(!new.exists(), "the failed train left {}", new.display());
}
