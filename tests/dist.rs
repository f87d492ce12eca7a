//! Data-parallel `l2d train`: two Gloo ranks on loopback (launched by hand
//! and by torchrun) against one process with the same global batch, resume
//! across world sizes, and the failures of a group.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// Pretokenized random sequences of 8-24 tokens for the tiny model.
fn data(name: &str, n: usize) -> PathBuf {
    let path = scratch(name).join("data.jsonl");
    let mut state = 987654321u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as i64
    };
    let lines: Vec<String> = (0..n)
        .map(|_| {
            let ids: Vec<i64> = (0..8 + next() % 17).map(|_| 3 + next() % 490).collect();
            serde_json::json!({ "input_ids": ids }).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// `l2d train` in `mode` on the tiny model: a global batch of 8 in micro-batches
/// of 2 (four per step, two per rank on two ranks), a checkpoint every 2 steps.
fn train_args(mode: &str, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let variant = if mode == "l2d-full" { "full" } else { "lora" };
    let mut args: Vec<String> = vec!["train".into(), "--config".into(), format!("{root}/configs/tiny-l2d-lora.toml")];
    for set in [
        format!("model.path={}", tiny_model("llama").display()),
        format!("data.out={}", data.display()),
        format!("train.mode={mode}"),
        format!("l2d.variant={variant}"),
        "l2d.flow_dim=32".into(),
        "l2d.lora_rank=4".into(),
        "lora.rank=4".into(),
        "train.batch_size=8".into(),
        "train.micro_batch_size=2".into(),
        "train.max_steps=4".into(),
        "train.warmup_steps=2".into(),
        "train.save_every=2".into(),
        "dist.timeout_s=60".into(),
    ] {
        args.extend(["--set".into(), set]);
    }
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs one rank per argument list, all in one group; their outputs in rank order.
fn run_ranks(args: &[Vec<String>]) -> Vec<Output> {
    let port = free_port();
    let children: Vec<Child> = args.iter().enumerate().map(|(r, a)| spawn_rank(r, args.len(), port, a)).collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn single(args: &[String]) -> Output {
    l2d(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn all_ok(outs: Vec<Output>) {
    for (rank, out) in outs.into_iter().enumerate() {
        assert!(out.status.success(), "rank {rank} failed: {}", stderr(&out));
    }
}

/// `(step, loss)` of every training record in the run's metrics.jsonl.
fn loss_log(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

/// The trainable tensors of the newest checkpoint, by name.
fn final_trainable(out: &Path) -> Vec<(String, Tensor)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    let mut t = Tensor::read_safetensors(dirs.last().unwrap().join("trainable.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Loss logs equal to 1e-6 relative and trainable tensors to 1e-6 absolute
/// (weights of order 0.01-1). Two ranks sum each gradient in another order
/// than one process's accumulation (micro-batches 0+2 and 1+3, then the sum),
/// which moves f32 results by rounding (~1e-7 relative); four AdamW steps at
/// lr 1e-4 cannot turn that into more than ~1e-7 of weight.
fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (la, lb) = (loss_log(a), loss_log(b));
    assert_eq!(la.len(), lb.len(), "{what}: {la:?} vs {lb:?}");
    for ((sa, xa), (sb, xb)) in la.iter().zip(&lb) {
        assert_eq!(sa, sb, "{what}");
        assert!((xa - xb).abs() <= 1e-6 * xa.abs(), "{what}: step {sa} loss {xa} vs {xb}");
    }
    let (ta, tb) = (final_trainable(a), final_trainable(b));
    assert_eq!(ta.len(), tb.len(), "{what}");
    let mut worst = 0.0f64;
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb, "{what}");
        worst = worst.max((xa - xb).abs().max().double_value(&[]));
    }
    eprintln!("{what}: largest trainable difference {worst:e}");
    assert!(worst <= 1e-6, "{what}: trainable tensors differ by {worst:e}");
}

#[test]
fn two_ranks_equal_one_rank_with_the_same_global_batch_in_every_mode() {
    let d = data("dist-modes-data", 40);
    for mode in ["l2d-lora", "l2d-full", "lora", "full"] {
        let dir = scratch(&format!("dist-modes-{mode}"));
        let (one, two) = (dir.join("one"), dir.join("two"));
        ok(single(&train_args(mode, &d, &one, &[])));
        all_ok(run_ranks(&[train_args(mode, &d, &two, &[]), train_args(mode, &d, &two, &[])]));
        assert_eq!(loss_log(&two).len(), 4, "{mode}: rank 0 alone logs each step once");
        assert_same_run(&one, &two, mode);
    }
}

/// The AdamW moments of the newest checkpoint, by name.
fn final_moments(out: &Path) -> Vec<(String, Tensor)> {
    let newest = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut t = Tensor::read_safetensors(newest.join("optimizer.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// The runs in `a` and `b` equal as [`assert_same_run`] says, and their saved
/// moments too, to 1e-9 absolute: the second moments are squares of gradients
/// of order 1e-3, the first of the gradients themselves; the two runs differ
/// only by the rounding of the clip factor (the global norm's f64 squares are
/// summed per shard rather than per tensor) and of the gradients' sums.
fn assert_same_state(a: &Path, b: &Path, what: &str) {
    assert_same_run(a, b, what);
    // The global norm (clipping is active: norms 2.7-4.1 > train.grad_clip = 1).
    let norms = |out: &Path| -> Vec<f64> {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter_map(|r| r["grad_norm"].as_f64()).collect()
    };
    let (na, nb) = (norms(a), norms(b));
    assert_eq!(na.len(), nb.len(), "{what}");
    for (x, y) in na.iter().zip(&nb) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "{what}: gradient norm {x} vs {y}");
    }
    let (ma, mb) = (final_moments(a), final_moments(b));
    assert_eq!(ma.iter().map(|(n, _)| n).collect::<Vec<_>>(), mb.iter().map(|(n, _)| n).collect::<Vec<_>>(), "{what}");
    let worst = ma.iter().zip(&mb).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max);
    eprintln!("{what}: largest moment difference {worst:e}");
    assert!(worst <= 1e-9, "{what}: moments differ by {worst:e}");
}

const ZERO1: [&str; 2] = ["--set", "train.zero=1"];

#[test]
fn zero1_on_two_ranks_equals_plain_data_parallelism() {
    let d = data("dist-zero-data", 40);
    for mode in ["l2d-full", "full"] {
        let dir = scratch(&format!("dist-zero-{mode}"));
        let (plain, zero) = (dir.join("plain"), dir.join("zero"));
        all_ok(run_ranks(&[train_args(mode, &d, &plain, &[]), train_args(mode, &d, &plain, &[])]));
        // Small buckets: every collective of the tiny model is split many times.
        let zero_args = train_args(mode, &d, &zero, &[ZERO1[0], ZERO1[1], "--set", "dist.bucket_mb=0.01"]);
        all_ok(run_ranks(&[zero_args.clone(), zero_args]));
        assert_same_state(&plain, &zero, &format!("{mode}: ZeRO-1 vs plain"));
    }
}

#[test]
fn zero1_in_bf16_keeps_f32_masters_in_the_shards_and_resumes_equal() {
    let d = data("dist-zero-bf16-data", 40);
    let dir = scratch("dist-zero-bf16");
    let bf16 = ["--set", "model.dtype=bf16"];
    let zero_bf16 = [&bf16[..], &ZERO1[..]].concat();
    let two_ranks = |out: &Path, extra: &[&str]| {
        let args = train_args("l2d-full", &d, out, extra);
        all_ok(run_ranks(&[args.clone(), args]));
    };
    let (whole, halves, plain) = (dir.join("whole"), dir.join("halves"), dir.join("plain"));
    two_ranks(&whole, &zero_bf16);
    two_ranks(&halves, &[&zero_bf16[..], &["--set", "train.stop_at_step=2"]].concat());
    two_ranks(&halves, &[&zero_bf16[..], &["--resume"]].concat());
    // Resumed from the gathered f32 masters and moments: the same run.
    assert_same_state(&whole, &halves, "ZeRO-1 in bf16, resumed");
    // The checkpoint holds the f32 masters, not the bf16 weights the ranks compute with.
    let off_bf16 = final_trainable(&whole)
        .iter()
        .filter(|(_, t)| t.kind() == tch::Kind::Float && !t.equal(&t.to_kind(tch::Kind::BFloat16).to_kind(tch::Kind::Float)))
        .count();
    assert!(off_bf16 > 0, "every saved tensor is bf16-representable: masters were not saved");
    // Unsharded bf16 accumulates f32 gradients on f32 leaves, ZeRO-1 bf16 ones
    // on the bf16 weights: the same training up to bf16 rounding of the gradients.
    two_ranks(&plain, &bf16);
    for ((s, a), (_, b)) in loss_log(&plain).iter().zip(&loss_log(&whole)) {
        assert!((a - b).abs() <= 1e-2 * a.abs(), "step {s}: unsharded loss {a} vs ZeRO-1 {b}");
    }
    // ... and the moments show it: they differ by the bf16 rounding of the gradients.
    let moved = final_moments(&plain).iter().zip(&final_moments(&whole)).any(|((_, a), (_, b))| !a.equal(b));
    assert!(moved, "ZeRO-1 in bf16 gave the moments of f32 gradients: the trainable tensors were not lowered");
    // `full` lowers the model's own weights: it trains, and its result holds the f32 masters.
    let full = dir.join("full");
    let args = train_args("full", &d, &full, &zero_bf16);
    all_ok(run_ranks(&[args.clone(), args]));
    assert_eq!(loss_log(&full).len(), 4);
    let result = Tensor::read_safetensors(full.join("model/model.safetensors")).unwrap();
    assert!(result.iter().all(|(_, t)| t.kind() == tch::Kind::Float));
    assert!(result.iter().any(|(_, t)| !t.equal(&t.to_kind(tch::Kind::BFloat16).to_kind(tch::Kind::Float))), "the result is the bf16 weights");
}

/// Copies a run directory (its checkpoints, metrics and config).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_tree(&path, &dest) } else { std::fs::copy(&path, &dest).map(|_| ()).unwrap() }
    }
}

#[test]
fn a_zero1_two_rank_run_resumes_on_one_rank_with_or_without_zero_and_ends_equal() {
    let d = data("dist-zero-resume-data", 40);
    let dir = scratch("dist-zero-resume");
    let whole = dir.join("whole");
    ok(single(&train_args("l2d-full", &d, &whole, &[])));
    let half = [ZERO1[0], ZERO1[1], "--set", "train.stop_at_step=2"];
    let first = dir.join("first-half");
    let zero_half = train_args("l2d-full", &d, &first, &half);
    all_ok(run_ranks(&[zero_half.clone(), zero_half]));
    for (name, extra) in [("zero1-world1", &ZERO1[..]), ("zero0", &[][..])] {
        let run = dir.join(name);
        copy_tree(&first, &run);
        let resume: Vec<&str> = extra.iter().copied().chain(["--resume"]).collect();
        ok(single(&train_args("l2d-full", &d, &run, &resume)));
        assert_same_state(&whole, &run, &format!("ZeRO-1 on 2 ranks, then 1 rank with {name}"));
    }
}

#[test]
fn torchrun_launches_the_same_binary_as_a_group() {
    let d = data("dist-torchrun-data", 40);
    let dir = scratch("dist-torchrun");
    let (one, two) = (dir.join("one"), dir.join("two"));
    ok(single(&train_args("l2d-lora", &d, &one, &[])));
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} missing: run scripts/setup.sh", torchrun.display());
    let out = Command::new(torchrun)
        .args(["--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", &free_port().to_string()])
        .arg(env!("CARGO_BIN_EXE_l2d"))
        .args(train_args("l2d-lora", &d, &two, &[]))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "torchrun: {}", stderr(&out));
    assert_same_run(&one, &two, "torchrun");
}

#[test]
fn a_run_resumes_at_another_world_size_and_ends_equal() {
    let d = data("dist-resume-data", 40);
    let dir = scratch("dist-resume");
    let whole = dir.join("whole");
    ok(single(&train_args("l2d-lora", &d, &whole, &[])));
    let half = ["--set", "train.stop_at_step=2"];
    // Two ranks, then one.
    let two_one = dir.join("two-one");
    all_ok(run_ranks(&[train_args("l2d-lora", &d, &two_one, &half), train_args("l2d-lora", &d, &two_one, &half)]));
    ok(single(&train_args("l2d-lora", &d, &two_one, &["--resume"])));
    assert_same_run(&whole, &two_one, "2 ranks then 1");
    // One rank, then two.
    let one_two = dir.join("one-two");
    ok(single(&train_args("l2d-lora", &d, &one_two, &half)));
    all_ok(run_ranks(&[train_args("l2d-lora", &d, &one_two, &["--resume"]), train_args("l2d-lora", &d, &one_two, &["--resume"])]));
    assert_same_run(&whole, &one_two, "1 rank then 2");
}

#[test]
fn ranks_with_different_configs_refuse_naming_the_keys() {
    let d = data("dist-configs-data", 40);
    let out = scratch("dist-configs").join("run");
    let outs = run_ranks(&[train_args("l2d-lora", &d, &out, &[]), train_args("l2d-lora", &d, &out, &["--set", "train.lr=2e-4", "--set", "train.seed=5"])]);
    for o in &outs {
        assert_error(o, 2, &["dist: the ranks were started with different configs: rank 1 differs from rank 0 in train.lr, train.seed"]);
    }
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn a_launch_missing_master_addr_or_a_rank_fails_cleanly_within_the_timeout() {
    let d = data("dist-missing-data", 40);
    let out = scratch("dist-missing").join("run");
    let args = train_args("l2d-lora", &d, &out, &["--set", "dist.timeout_s=3"]);
    let no_addr = Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(&args)
        .env_remove("RUST_LOG")
        .env_remove("MASTER_ADDR")
        .envs([("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "29500")])
        .output()
        .unwrap();
    assert_error(&no_addr, 2, &["dist: MASTER_ADDR is not set"]);
    let started = Instant::now();
    let alone = spawn_rank(0, 2, free_port(), &args).wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert_error(&alone, 1, &["dist: rank 0 of 2 could not join the process group", "within 3 s"]);
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

/// Polls every 100 ms until `ready` holds; fails after 120 s.
fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Number of checkpoints in the run.
fn checkpoints(out: &Path) -> usize {
    std::fs::read_dir(out.join("checkpoints")).map_or(0, |d| d.count())
}

/// Two ranks train with `args` until `ready` holds, then rank `victim` gets
/// `signal`; the outputs of the victim and of the other rank, and how long
/// the other took to exit after the signal.
fn signal_mid_run(args: &[String], victim: usize, signal: i32, ready: impl Fn() -> bool) -> (Output, Output, Duration) {
    let port = free_port();
    let mut ranks = vec![spawn_rank(0, 2, port, args), spawn_rank(1, 2, port, args)];
    wait_until("not ready to signal", ready);
    let signalled = ranks.remove(victim);
    send(signalled.id() as i32, signal);
    let at = Instant::now();
    let other = ranks.remove(0).wait_with_output().unwrap();
    let waited = at.elapsed();
    (signalled.wait_with_output().unwrap(), other, waited)
}

/// Two ranks train until the first checkpoint appears, then rank `victim` is
/// killed (SIGKILL); the survivor's output, how long it took to exit after the
/// kill, and the run directory with the arguments it was started with.
fn kill_mid_run(name: &str, victim: usize) -> (Output, Duration, PathBuf, Vec<String>) {
    let d = data(&format!("{name}-data"), 200);
    let out = scratch(name).join("run");
    let args = train_args("l2d-lora", &d, &out, &["--set", "train.max_steps=100000", "--set", "train.save_every=1", "--set", "dist.timeout_s=20"]);
    let (_, survivor, waited) = signal_mid_run(&args, victim, libc::SIGKILL, || checkpoints(&out) > 0);
    (survivor, waited, out, args)
}

/// The survivor exited 1 within `dist.timeout_s` (20 s) with one error line
/// containing `needle`, and no panic; returns that line.
fn assert_failed_cleanly(survivor: &Output, waited: Duration, needle: &str) -> String {
    let err = stderr(survivor);
    assert!(waited < Duration::from_secs(20), "the survivor took {waited:?}: {err}");
    assert_eq!(survivor.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("{waited:?} after the kill: {}", errors[0]);
    errors[0].to_string()
}

#[test]
fn a_killed_rank_stops_the_others_naming_it_and_the_last_checkpoint_resumes() {
    let (survivor, waited, out, args) = kill_mid_run("dist-kill-1", 1);
    assert_failed_cleanly(&survivor, waited, "failed on rank 0 of 2: rank 1 stopped answering");
    // The newest checkpoint is whole: one process resumes from it for one more step.
    let newest = final_trainable_step(&out);
    let more = format!("train.max_steps={}", newest + 1);
    let resume: Vec<String> = args.iter().cloned().chain(["--resume".into(), "--set".into(), more]).collect();
    ok(single(&resume));
    assert_eq!(loss_log(&out).last().unwrap().0, newest + 1);
}

#[test]
fn a_killed_rank_0_is_named_as_the_store_host_that_is_gone() {
    let (survivor, waited, _, _) = kill_mid_run("dist-kill-0", 0);
    assert_failed_cleanly(&survivor, waited, "failed on rank 1 of 2: rank 0 (which hosts the store at 127.0.0.1:");
}

/// The step of the newest checkpoint.
fn final_trainable_step(out: &Path) -> u64 {
    let state = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path().join("state.json")).max().unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    v["step"].as_u64().unwrap()
}

#[test]
fn bad_dist_settings_are_usage_errors_naming_the_key() {
    let d = data("dist-settings-data", 4);
    let out = scratch("dist-settings").join("run");
    for (set, needle) in [
        ("dist.timeout_s=0", "dist.timeout_s: must be a finite number > 0, got 0"),
        ("dist.bucket_mb=-1", "dist.bucket_mb: must be a finite number > 0, got -1"),
        ("dist.buckets=1", "dist.buckets"),
        ("train.zero=2", "train.zero: must be 0 or 1, got 2"),
        ("train.zero=1", "train.zero: 1 (ZeRO-1) applies to train.mode = \"full\" or \"l2d-full\", not \"l2d-lora\""),
    ] {
        assert_error(&single(&train_args("l2d-lora", &d, &out, &["--dry-run", "--set", set])), 2, &[needle]);
    }
}

/// SIGTERM to either rank of two: the group stops after the same step, rank 0
/// saves that step's checkpoint, and only then do both exit 143, each with one
/// line naming the rank and the signal (torchrun stops the others as soon as
/// one rank ends, so none ends before the checkpoint is whole). The
/// checkpoint resumes to the uninterrupted run.
#[test]
fn sigterm_to_either_rank_stops_both_with_143_after_rank_0_saved_and_the_run_resumes_equal() {
    let d = data("dist-term-data", 200);
    let dir = scratch("dist-term");
    let steps = ["--set", "train.max_steps=12", "--set", "train.save_every=0", "--set", "dist.timeout_s=20"];
    let whole = dir.join("whole");
    ok(single(&train_args("l2d-lora", &d, &whole, &steps)));
    for victim in [0, 1] {
        let out = dir.join(format!("term-{victim}"));
        let args = train_args("l2d-lora", &d, &out, &steps);
        let (signalled, other, waited) = signal_mid_run(&args, victim, libc::SIGTERM, || loss_log_len(&out) >= 2);
        assert!(waited < Duration::from_secs(20), "rank {} took {waited:?} after the signal", 1 - victim);
        eprintln!("SIGTERM to rank {victim}: rank {} exited {waited:?} later", 1 - victim);
        assert_eq!(checkpoints(&out), 1, "the interrupt checkpoint alone (train.save_every=0)");
        let step = final_trainable_step(&out);
        assert!(step < 12, "the run ended before the signal");
        for (rank, o) in [(victim, &signalled), (1 - victim, &other)] {
            let err = stderr(o);
            assert_eq!(o.status.code(), Some(143), "rank {rank}: {err}");
            let saved = if rank == 0 { "checkpoint saved" } else { "rank 0 saved the checkpoint" };
            let line = format!("interrupted at step {step} (SIGTERM to rank {victim}); {saved}, continue with --resume");
            assert!(err.lines().any(|l| l == line), "rank {rank}: {err}");
            assert!(!err.contains("error:") && !err.contains("panicked"), "rank {rank}: {err}");
        }
        assert_resumes_equal(&whole, &out, &args, step);
    }
    // torchrun signalled forwards SIGTERM to both ranks: the same stop.
    let out = dir.join("term-torchrun");
    let args = train_args("l2d-lora", &d, &out, &steps);
    let log = dir.join("torchrun.log");
    let agent = start_torchrun(&args, 0, &log);
    wait_until("no step logged", || loss_log_len(&out) >= 2);
    send(agent.id() as i32, libc::SIGTERM);
    let (ok, log) = finish_torchrun(agent, &log);
    assert!(!ok, "{log}");
    assert_eq!(checkpoints(&out), 1, "{log}");
    let step = final_trainable_step(&out);
    for saved in ["checkpoint saved", "rank 0 saved the checkpoint"] {
        // Both ranks got the signal: the line names whichever counted first.
        let lines = [0, 1].map(|rank| format!("interrupted at step {step} (SIGTERM to rank {rank}); {saved}, continue with --resume"));
        assert!(log.lines().any(|l| lines.iter().any(|line| l == line)), "{log}");
    }
    assert!(!log.contains("error:"), "{log}");
    assert_resumes_equal(&whole, &out, &args, step);
}

/// The run in `out`, interrupted at `step` (its metrics end there), resumed by
/// one process with its `args`, ends equal to `whole`.
fn assert_resumes_equal(whole: &Path, out: &Path, args: &[String], step: u64) {
    assert_eq!(loss_log(out).last().unwrap().0, step);
    let resume: Vec<String> = args.iter().cloned().chain(["--resume".to_string()]).collect();
    ok(single(&resume));
    assert_same_run(whole, out, &format!("{}: interrupted at step {step}, then resumed", out.display()));
}

/// Steps rank 0 has logged so far (0 before `metrics.jsonl` exists).
fn loss_log_len(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().filter(|l| l.contains("\"loss\"")).count())
}

/// The pid of torchrun's worker of rank `rank` in restart `restart`: a child of
/// the agent `agent` with those variables in its environment.
fn torchrun_worker(agent: u32, rank: usize, restart: usize) -> Option<i32> {
    let wanted = [format!("RANK={rank}"), format!("TORCHELASTIC_RESTART_COUNT={restart}")];
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The parent's pid is the second field after the parenthesised name.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        parent == Some(agent) && wanted.iter().all(|w| vars.contains(&w.as_bytes()))
    })
}

/// Starts `l2d train` with `args` under `torchrun --nproc-per-node 2
/// --max-restarts R`, its log (the ranks' stderr included) going to `log`.
fn start_torchrun(args: &[String], max_restarts: u32, log: &Path) -> Child {
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} missing: run scripts/setup.sh", torchrun.display());
    Command::new(torchrun)
        .args(["--no-python", "--nproc-per-node", "2", "--max-restarts", &max_restarts.to_string(), "--master-addr", "127.0.0.1"])
        .args(["--master-port", &free_port().to_string()])
        .arg(env!("CARGO_BIN_EXE_l2d"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        // A file, not a pipe nobody reads while the ranks run.
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for torchrun to end: whether it succeeded, and its log.
fn finish_torchrun(mut agent: Child, log: &Path) -> (bool, String) {
    let status = agent.wait().unwrap();
    (status.success(), std::fs::read_to_string(log).unwrap())
}

/// Sends `signal` to process `pid`.
fn send(pid: i32, signal: i32) {
    // SAFETY: kill only sends a signal.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

const RESTARTED: &str = "torchrun restarted the group: continuing the run in";

/// `torchrun --max-restarts 1`: rank 1 is killed once, after the checkpoint
/// at step 2 or before any checkpoint; torchrun stops rank 0 and restarts the
/// group, which continues the run by itself (from the newest intact
/// checkpoint, or afresh with the first attempt's log lines dropped) and ends
/// equal to an uninterrupted run.
#[test]
fn under_torchrun_max_restarts_the_restarted_group_resumes_and_ends_equal() {
    let d = data("dist-restart-data", 200);
    let dir = scratch("dist-restart");
    let whole = dir.join("whole");
    let each_step = ["--set", "train.max_steps=6", "--set", "train.save_every=1", "--set", "dist.timeout_s=20"];
    let at_end = ["--set", "train.max_steps=6", "--set", "train.save_every=0", "--set", "dist.timeout_s=20"];
    ok(single(&train_args("l2d-lora", &d, &whole, &each_step)));
    let after_step_2: fn(&Path) -> bool = |out| out.join("checkpoints/step-00000002/state.json").exists();
    let before_any_checkpoint: fn(&Path) -> bool = |out| loss_log_len(out) >= 1;
    for (name, steps, ready) in [("after-step-2", each_step, after_step_2), ("no-checkpoint", at_end, before_any_checkpoint)] {
        let out = &dir.join(name);
        let args = train_args("l2d-lora", &d, out, &steps);
        let log = dir.join("torchrun.log");
        let agent = start_torchrun(&args, 1, &log);
        wait_until("not ready to kill", || ready(out) && !out.join("l2d").exists());
        send(torchrun_worker(agent.id(), 1, 0).expect("torchrun's rank 1 of the first attempt"), libc::SIGKILL);
        let (ok, log) = finish_torchrun(agent, &log);
        assert!(ok, "torchrun: {log}");
        assert!(log.contains(RESTARTED) && log.contains("exitcode: -9"), "{log}");
        assert_same_run(&whole, out, &format!("{}: killed once under torchrun --max-restarts 1", out.display()));
    }
}

/// A restart never continues a run the first attempt refused to start over:
/// an existing run without --resume is refused by both attempts, unchanged.
#[test]
fn under_torchrun_max_restarts_an_existing_run_is_refused_by_every_attempt() {
    let d = data("dist-refused-data", 40);
    let dir = scratch("dist-refused");
    let out = dir.join("run");
    let one_step = ["--set", "train.max_steps=1"];
    ok(single(&train_args("l2d-lora", &d, &out, &one_step)));
    let before = loss_log(&out);
    let log = dir.join("torchrun.log");
    let (ok, log) = finish_torchrun(start_torchrun(&train_args("l2d-lora", &d, &out, &one_step), 1, &log), &log);
    assert!(!ok, "{log}");
    assert_eq!(log.matches("already holds a run (checkpoint at step 1); pass --resume to continue it").count(), 2, "{log}");
    assert!(!log.contains(RESTARTED), "{log}");
    assert_eq!(loss_log(&out), before);
}
