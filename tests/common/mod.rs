//! Helpers shared by the integration tests that drive the `l2d` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use tch::{Device, Kind, Tensor};

use l2d::l2d::checkpoint::{self, BaseIdentity, Metadata};
use l2d::l2d::L2d;
use l2d::model::Llama;

/// A file of the shared real datasets (`../shared/data`).
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel)
}

/// A benchmark fixture in its real layout (`tests/fixtures/eval`).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval").join(rel)
}

/// `path` read as `task`'s items; a failure panics with its message.
pub fn load(task: l2d::eval::tasks::Task, path: &Path) -> l2d::eval::tasks::Dataset {
    l2d::eval::tasks::Dataset::load(task, path, "--data").unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `l2d` with `args`; stdout and stderr captured.
pub fn l2d(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run l2d")
}

/// Runs `l2d` with `args`, then `--l2d CKPT` if given, then `extra`.
pub fn l2d_with_checkpoint(args: &[&str], ckpt: Option<&Path>, extra: &[&str]) -> Output {
    let ckpt = ckpt.map(|p| p.to_str().unwrap().to_string());
    let mut all = args.to_vec();
    if let Some(c) = &ckpt {
        all.extend_from_slice(&["--l2d", c]);
    }
    all.extend_from_slice(extra);
    l2d(&all)
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "l2d failed: {}", stderr(&out));
    stdout(&out)
}

/// Asserts the error contract: the exit code, one `error:` line on stderr that
/// contains every needle, no panic or backtrace, nothing on stdout.
pub fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error:"), "stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "stderr lacks {n:?}: {err}");
    }
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "stderr shows a panic: {err}");
    }
    assert!(out.stdout.is_empty(), "stdout not empty: {}", stdout(out));
}

/// A usage error from clap: exit 2, clap's whole message (its first line
/// names the flag or value, then usage or a pointer to `--help`), no panic.
pub fn assert_clap_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(err.starts_with("error:"), "stderr: {err}");
    let first = err.lines().next().unwrap_or_default();
    for n in needles {
        assert!(first.contains(n), "the first line lacks {n:?}: {err}");
    }
    assert!(err.contains("Usage:") || err.contains("--help"), "no usage or help pointer: {err}");
    assert!(!err.contains("panicked"), "stderr shows a panic: {err}");
    assert!(out.stdout.is_empty(), "stdout not empty: {}", stdout(out));
}

/// A fresh, empty directory `name` in this test process's scratch folder.
pub fn scratch(name: &str) -> PathBuf {
    let dir = scratch_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// This test process's folder, `target/tmp/<test binary>-<pid>`, made once per
/// process after removing the folders of earlier runs of the same binary whose
/// processes have ended: a failed run's files stay for inspection until the next
/// run, and repeated runs do not fill the disk.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let prefix = concat!(env!("CARGO_CRATE_NAME"), "-");
        for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|pid| !process_exists(pid)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        tmp.join(format!("{prefix}{}", std::process::id()))
    })
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
fn process_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing.
    let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    !gone
}

/// A `tiny` model directory made by `l2d init` once per test process.
pub fn tiny_model(arch: &str) -> PathBuf {
    static LLAMA: OnceLock<PathBuf> = OnceLock::new();
    static QWEN2: OnceLock<PathBuf> = OnceLock::new();
    let cell = if arch == "llama" { &LLAMA } else { &QWEN2 };
    cell.get_or_init(|| {
        let dir = scratch(&format!("tiny-{arch}")).join("model");
        ok(l2d(&["init", "--arch", arch, "--preset", "tiny", "--seed", "3", "--out", dir.to_str().unwrap()]));
        dir
    })
    .clone()
}

/// Copies a model directory so that a test can damage it.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
}

/// The Python of the setup's virtual environment (torch + transformers).
pub fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup.sh --test-deps", py.display());
    py
}

/// Edits a JSON file in place.
pub fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The small L2D shape the tests use (D = 32, rank 4).
pub fn shape(num_classes: i64) -> l2d::l2d::Shape {
    l2d::l2d::Shape { variant: l2d::l2d::Variant::Lora, flow_dim: 32, timestep_dim: 16, lora_rank: 4, lora_alpha: 4.0, num_classes }
}

/// libtorch draws from one global generator and a test binary runs its tests on
/// parallel threads: a test that draws in-process holds this guard from before its
/// first `tch::manual_seed` to after its last draw, so that its draws are its own.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    RNG.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A checkpoint for the tiny llama; `perturbed` moves it off its initialisation,
/// `poison` puts NaN into `map`.
pub fn checkpoint_for(name: &str, num_classes: i64, perturbed: bool, poison: bool) -> PathBuf {
    let base = tiny_model("llama");
    let model = Llama::load(&base, Device::Cpu, Kind::Float).unwrap();
    let rng = rng_lock();
    tch::manual_seed(9);
    let l2d = L2d::init(&model, shape(num_classes), 64.0).unwrap();
    tch::no_grad(|| {
        for (n, p) in &l2d.params {
            let mut p = p.shallow_clone();
            if perturbed {
                let _ = p.g_add_(&(Tensor::randn_like(&p) * 0.2));
            }
            if poison && n.to_string().starts_with("model.flow_token_embedder") {
                let _ = p.fill_(f64::NAN);
            }
        }
    });
    drop(rng);
    let cfg = l2d::config::L2dConfig {
        flow_dim: 32,
        timestep_dim: 16,
        lora_rank: 4,
        lora_alpha: 4.0,
        num_classes,
        ..Default::default()
    };
    let meta = Metadata {
        format: "l2d".into(),
        version: 1,
        shape: l2d.shape.clone(),
        l2d: cfg,
        base: BaseIdentity::of(&model, &base).unwrap(),
        step: 0,
    };
    let dir = scratch(name).join("ckpt");
    checkpoint::save(&dir, &l2d, &meta).unwrap();
    dir
}


/// A run's `metrics.jsonl` records without timings and memory, which differ between runs.
pub fn loss_log(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["elapsed_s", "tokens_per_s", "peak_rss_bytes"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// 24 chat conversations prepared (`l2d prepare`) for `model`, a quarter held out for validation.
pub fn prepared(name: &str, model: &Path) -> PathBuf {
    let dir = scratch(name);
    let chat = dir.join("chat.jsonl");
    let text: String = (0..24)
        .map(|i| {
            let user = format!("How many apples are in basket {i} if Tom adds {}?", i % 5);
            let answer = format!("Basket {i} holds {} apples after Tom adds some.", 3 * i + 1);
            let rec = serde_json::json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]});
            format!("{rec}\n")
        })
        .collect();
    std::fs::write(&chat, text).unwrap();
    let shards = dir.join("shards");
    let (m, s, c) = (model.to_str().unwrap(), shards.to_str().unwrap(), chat.to_str().unwrap());
    ok(l2d(&["prepare", "--model", m, "--out", s, "--input", c, "--set", "data.valid_fraction=0.25"]));
    shards
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `l2d ARGS` as rank `rank` of `world`, the environment set by hand as a
/// launcher would (output piped).
pub fn spawn_rank(rank: usize, world: usize, port: u16, args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        // Two ranks share this machine's cores.
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start l2d")
}
