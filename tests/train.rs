//! `l2d train`: the loop, crash safety (SIGKILL/SIGTERM and resume), faults, outputs.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Pretokenized random sequences for the tiny models.
fn data(name: &str, n: usize) -> PathBuf {
    let dir = scratch(name);
    let path = dir.join("data.jsonl");
    let mut state = 12345u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as i64
    };
    let mut text = String::new();
    for _ in 0..n {
        let len = 8 + next() % 17;
        let ids: Vec<i64> = (0..len).map(|_| 3 + next() % 490).collect();
        text.push_str(&serde_json::json!({ "input_ids": ids }).to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut args: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        format!("{root}/configs/tiny-l2d-lora.toml"),
        "--set".into(),
        format!("model.path={model}"),
        "--set".into(),
        format!("data.out={data}"),
        "--set".into(),
        "l2d.flow_dim=32".into(),
        "--set".into(),
        "l2d.lora_rank=4".into(),
        "--set".into(),
        "train.warmup_steps=3".into(),
        "--out".into(),
        out.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    l2d(&refs)
}

fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn l2d_training_runs_logs_and_its_checkpoint_generates() {
    let model = tiny_model("llama");
    let d = data("train-basic", 40);
    let out = scratch("train-basic-out").join("run");
    let m = model.to_str().unwrap();
    let args = train_args(m, d.to_str().unwrap(), out.to_str().unwrap(), &["--set", "train.max_steps=6", "--set", "train.epochs=2", "--set", "train.save_every=2", "--set", "train.keep_last=2"]);
    ok(run(&args));
    assert_eq!(loss_log(&out).len(), 6);
    let ckpts: Vec<_> = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(ckpts.len(), 2, "keep_last = 2: {ckpts:?}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("l2d/l2d.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 6);
    // The trained path moved off its zero initialisation.
    let trained = tensors(&out.join("l2d/l2d.safetensors"));
    let gate = trained.iter().find(|(n, _)| n == "model.modulation_head.mlp.2.weight").unwrap();
    assert!(gate.1.abs().max().double_value(&[]) > 0.0);
    let ckpt = out.join("l2d");
    let gen = l2d(&["generate", "--model", m, "--l2d", ckpt.to_str().unwrap(), "--prompt", "Tom has", "--max-new-tokens", "3", "--json"]);
    let rec: serde_json::Value = serde_json::from_str(&ok(gen)).unwrap();
    assert_eq!(rec["nfe_per_token"], 15.0);
    // A second run into the same directory needs --resume.
    assert_error(&run(&args), 2, &["--resume"]);
}

/// Killing the process with SIGKILL at arbitrary moments and resuming ends with
/// bit-identical weights and the same loss log as an uninterrupted run.
#[test]
fn sigkill_and_resume_is_bit_identical() {
    let model = tiny_model("qwen2");
    let d = data("train-kill", 48);
    let (m, dd) = (model.to_str().unwrap().to_string(), d.to_str().unwrap().to_string());
    let extra = ["--set", "train.max_steps=12", "--set", "train.save_every=1", "--set", "train.keep_last=3", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=2"];
    let straight = scratch("train-straight").join("run");
    ok(run(&train_args(&m, &dd, straight.to_str().unwrap(), &extra)));

    let killed = scratch("train-killed").join("run");
    let mut args = train_args(&m, &dd, killed.to_str().unwrap(), &extra);
    let mut kills = 0;
    for attempt in 0..40 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_l2d")).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Vary the moment: model loading, mid-step, mid-save.
        std::thread::sleep(Duration::from_millis(300 + 170 * (attempt % 7) as u64));
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "run failed after {kills} kills");
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
        // A run killed before it wrote its config has nothing to resume.
        if !args.iter().any(|a| a == "--resume") && killed.join("config.toml").exists() {
            args.push("--resume".into());
        }
    }
    if !killed.join("l2d").exists() {
        ok(run(&args)); // finish without further kills
    }
    assert!(kills >= 2, "the test must really interrupt the run ({kills} kills)");
    let (a, b) = (tensors(&straight.join("l2d/l2d.safetensors")), tensors(&killed.join("l2d/l2d.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after {kills} kills");
    }
    assert_eq!(loss_log(&straight), loss_log(&killed));
    assert_eq!(staging_debris(&killed), Vec::<PathBuf>::new(), "after {kills} kills");
}

/// Every `.NAME.tmp-*` entry under `dir`: what a killed save or write leaves.
fn staging_debris(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            found.push(path);
        } else if path.is_dir() {
            found.extend(staging_debris(&path));
        }
    }
    found
}

/// SIGINT and SIGTERM finish the step, save and exit 130 and 143 (so that
/// `train && eval` stops); `train --resume --out RUN` alone then finishes the
/// run from its own config.
#[test]
fn signals_save_exit_128_plus_the_signal_and_the_run_resumes_from_its_own_config() {
    let model = tiny_model("llama");
    let d = data("train-term", 200);
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let out = scratch(&format!("train-term-out{signal}")).join("run");
        let args = train_args(model.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap(), &["--set", "train.save_every=0", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=2"]);
        let child = Command::new(env!("CARGO_BIN_EXE_l2d")).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // Wait for the first logged step, then ask it to stop.
        let metrics = out.join("metrics.jsonl");
        for _ in 0..600 {
            if std::fs::read_to_string(&metrics).map(|t| t.lines().count() >= 2).unwrap_or(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let out_put = child.wait_with_output().unwrap();
        assert_eq!(out_put.status.code(), Some(code), "{signal}: {}", String::from_utf8_lossy(&out_put.stderr));
        assert!(String::from_utf8_lossy(&out_put.stderr).contains("--resume"));
        let steps = std::fs::read_to_string(&metrics).unwrap().lines().count();
        let saved = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
        assert_eq!(saved, 1, "one checkpoint at the interrupted step");
        assert!(steps < 50, "the run stopped early ({steps} steps)");
        assert!(!out.join("l2d").exists(), "no final result for an interrupted run");

        let resumed = l2d(&["train", "--resume", "--out", out.to_str().unwrap()]);
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        assert!(!stderr(&resumed).contains("→"), "no config change: {}", stderr(&resumed));
        let log = loss_log(&out);
        assert_eq!(log.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
        assert!(out.join("l2d/l2d.safetensors").exists());
    }
}

#[test]
fn non_finite_loss_stops_with_the_step_named_and_checkpoint_intact() {
    let model = tiny_model("llama");
    let d = data("train-nan", 40);
    let out = scratch("train-nan-out").join("run");
    // A huge learning rate after warmup blows the weights up within a few steps.
    let args = train_args(model.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap(), &["--set", "train.lr=1e30", "--set", "train.final_lr=1e30", "--set", "train.warmup_steps=0", "--set", "train.save_every=1", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=2", "--set", "train.keep_last=0"]);
    let res = run(&args);
    assert_error(&res, 1, &["step", "not finite", "last good checkpoint"]);
    let err = stderr(&res);
    let ckpts: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!ckpts.is_empty(), "{err}");
    for c in ckpts {
        for t in tensors(&c.join("trainable.safetensors")) {
            assert!(bool::try_from(t.1.isfinite().all()).unwrap(), "{} in {} is not finite", t.0, c.display());
        }
    }
}

#[test]
fn failed_save_keeps_the_previous_checkpoint_and_says_why() {
    let model = tiny_model("llama");
    let d = data("train-save", 40);
    let out = scratch("train-save-out").join("run");
    let mut args = train_args(model.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap(), &["--set", "train.max_steps=4", "--set", "train.save_every=2", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=2"]);
    args.extend(["--set".into(), "train.keep_last=0".into()]);
    // Something already occupies the step-4 checkpoint's place.
    std::fs::create_dir_all(out.join("checkpoints")).unwrap();
    std::fs::write(out.join("checkpoints/step-00000004"), b"in the way").unwrap();
    let res = run(&args);
    let err = stderr(&res);
    assert_ne!(res.status.code(), Some(0));
    assert!(err.contains("checkpoint at step 4 not saved"), "{err}");
    assert!(out.join("checkpoints/step-00000002/state.json").is_file());
    assert!(!tensors(&out.join("checkpoints/step-00000002/trainable.safetensors")).is_empty());
}

/// `full` finetuning writes a Hugging Face directory that transformers loads
/// with the logits l2d computes.
#[test]
fn full_finetuning_writes_a_transformers_model() {
    let model = tiny_model("qwen2");
    let d = data("train-full", 24);
    let out = scratch("train-full-out").join("run");
    let root = env!("CARGO_MANIFEST_DIR");
    let args: Vec<String> = [
        "train", "--config", &format!("{root}/configs/tiny-full.toml"), "--set", &format!("model.path={}", model.display()),
        "--set", &format!("data.out={}", d.display()), "--set", "train.max_steps=3", "--set", "train.warmup_steps=1",
        "--set", "train.lr=1e-3", "--out", out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ok(run(&args));
    let trained = out.join("model");
    let ours = Tensor::from_slice(&[3i64, 17, 42, 99, 7, 250]).unsqueeze(0);
    let base = l2d::model::Llama::load(&model, Device::Cpu, Kind::Float).unwrap();
    let tuned = l2d::model::Llama::load(&trained, Device::Cpu, Kind::Float).unwrap();
    let (lb, lt) = tch::no_grad(|| (base.forward(&ours), tuned.forward(&ours)));
    assert!((&lb - &lt).abs().max().double_value(&[]) > 1e-4, "weights changed");
    let script = "import json,sys,torch\nfrom transformers import AutoModelForCausalLM\nm=AutoModelForCausalLM.from_pretrained(sys.argv[1],torch_dtype=torch.float32).eval()\nwith torch.no_grad(): print(json.dumps(m(torch.tensor([[3,17,42,99,7,250]])).logits[0].tolist()))";
    let py = Command::new(python()).args(["-c", script, trained.to_str().unwrap()]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let theirs: Vec<Vec<f32>> = serde_json::from_slice(&py.stdout).unwrap();
    let theirs = Tensor::from_slice(&theirs.concat()).view([1, 6, -1]);
    let diff = (&lt - &theirs).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "max |Δlogit| = {diff}");
}

/// Shards made with another model's tokenizer are refused before training starts.
#[test]
fn shards_of_another_tokenizer_are_refused() {
    let dir = scratch("train-other-tokenizer");
    let chat = dir.join("chat.jsonl");
    let rec = serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    std::fs::write(&chat, format!("{rec}\n{rec}\n")).unwrap();
    let llama = tiny_model("llama");
    let shards = dir.join("shards");
    ok(l2d(&["prepare", "--model", llama.to_str().unwrap(), "--out", shards.to_str().unwrap(), "--input", chat.to_str().unwrap(), "--set", "data.valid_fraction=0"]));
    let qwen = tiny_model("qwen2");
    let out = dir.join("run");
    let args = train_args(qwen.to_str().unwrap(), shards.to_str().unwrap(), out.to_str().unwrap(), &[]);
    assert_error(&run(&args), 2, &["tokenizer"]);
    assert!(!out.join("checkpoints").exists(), "nothing was trained");
}

/// `--dry-run` with data plans the steps and tokens the real run then takes:
/// across an epoch boundary, with `max_steps` capping the schedule.
#[test]
fn dry_run_budget_is_what_the_run_takes() {
    let model = tiny_model("llama");
    let d = data("train-budget", 40);
    let out = scratch("train-budget-out").join("run");
    let (m, dd, o) = (model.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap());
    // 40 examples in batches of 2: 20 steps an epoch, batches sorted by length
    // within groups of 32 examples; 2 epochs capped at 27 steps.
    let extra = [
        "--set", "train.batch_size=2", "--set", "train.micro_batch_size=2",
        "--set", "train.epochs=2", "--set", "train.max_steps=27", "--set", "train.max_seq_len=23",
    ];
    let mut plan_args = train_args(m, dd, o, &extra);
    plan_args.extend(["--dry-run".to_string(), "--json".to_string()]);
    let plan: serde_json::Value = serde_json::from_str(&ok(run(&plan_args))).unwrap();
    assert_eq!((plan["train_examples"].as_u64(), plan["steps_per_epoch"].as_u64()), (Some(40), Some(20)));
    assert_eq!((plan["schedule_steps"].as_u64(), plan["planned_steps"].as_u64()), (Some(27), Some(27)));
    assert!(!out.exists(), "a dry run writes nothing");
    ok(run(&train_args(m, dd, o, &extra)));
    let log = loss_log(&out);
    assert_eq!(log.len(), 27);
    let tokens: u64 = log.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
    assert_eq!(plan["planned_tokens"].as_u64(), Some(tokens));
    // Sequences of 8-24 tokens cut at 23: micro-batches of 2 pad a little.
    let padded = plan["planned_padded_tokens"].as_u64().unwrap();
    assert!(padded > tokens && padded <= 27 * 2 * 23, "padded {padded}, tokens {tokens}");
}

/// `data.out` unset, missing, or chat data that was never prepared: one line
/// naming `data.out` (and what to do), before anything is written.
#[test]
fn unusable_training_data_names_data_out() {
    let model = tiny_model("llama");
    let dir = scratch("train-bad-data");
    let m = model.to_str().unwrap();
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let unset = dir.join("unset.toml");
    std::fs::write(&unset, "[train]\nmode = \"l2d-lora\"\n").unwrap();
    let res = l2d(&["train", "--config", unset.to_str().unwrap(), "--set", &format!("model.path={m}"), "--out", o]);
    assert_error(&res, 2, &["data.out", "not set", "l2d prepare"]);
    let missing = dir.join("no-shards");
    assert_error(&run(&train_args(m, missing.to_str().unwrap(), o, &[])), 2, &["data.out", "no-shards", "does not exist"]);
    let chat = dir.join("chat.jsonl");
    std::fs::write(&chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").unwrap();
    assert_error(&run(&train_args(m, chat.to_str().unwrap(), o, &[])), 2, &["data.out", "chat.jsonl:1", "chat data", "l2d prepare"]);
    assert!(!out.exists(), "nothing was written");
}

/// `train.stop_at_step` ends a run part-way through its schedule: the result
/// equals the longer run's checkpoint at that step, the learning rates are the
/// longer run's, and resuming without it finishes the longer run exactly.
#[test]
fn stop_at_step_is_the_longer_run_part_way() {
    let model = tiny_model("llama");
    let d = data("train-stop", 40);
    let (m, dd) = (model.to_str().unwrap().to_string(), d.to_str().unwrap().to_string());
    // The reference's log warmup, so that resuming is checked on it too.
    let extra = ["--set", "train.max_steps=8", "--set", "train.save_every=3", "--set", "train.keep_last=4", "--set", "train.warmup_type=log"];
    let long = scratch("train-stop-long").join("run");
    ok(run(&train_args(&m, &dd, long.to_str().unwrap(), &extra)));

    let short = scratch("train-stop-short").join("run");
    let mut args = train_args(&m, &dd, short.to_str().unwrap(), &extra);
    args.extend(["--set".to_string(), "train.stop_at_step=3".to_string()]);
    ok(run(&args));
    assert!(short.join("l2d/l2d.safetensors").exists(), "the result is written at the stop");
    let result = tensors(&short.join("checkpoints/step-00000003/trainable.safetensors"));
    let part_way = tensors(&long.join("checkpoints/step-00000003/trainable.safetensors"));
    assert_eq!(result.len(), part_way.len());
    for ((na, ta), (_, tb)) in result.iter().zip(&part_way) {
        assert!(ta.equal(tb), "{na} differs from the longer run's step 3");
    }
    let lrs = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64())
            .collect()
    };
    assert_eq!(lrs(&short), lrs(&long)[..3].to_vec(), "the 8-step schedule");
    let cfg = l2d::config::load(Some(&long.join("config.toml")), &[]).unwrap();
    // One epoch of 40 examples in batches of 8 caps the schedule at 5 steps.
    let total = lrs(&long).len() as u64;
    assert_eq!(total, 5);
    let schedule = l2d::train::optim::Schedule::new(&cfg.train, total);
    assert_eq!(lrs(&long), (0..total).map(|s| schedule.at(s)).collect::<Vec<_>>(), "the log schedule, step by step");
    assert_eq!(lrs(&long)[0], cfg.train.final_lr, "the reference's first step runs at the final LR");
    for line in std::fs::read_to_string(long.join("metrics.jsonl")).unwrap().lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        if rec.get("lr").is_some() {
            assert_eq!(rec["warmup_type"], "log", "{line}");
        }
    }
    // Resumed without the stop, it is the longer run.
    let mut resume = train_args(&m, &dd, short.to_str().unwrap(), &extra);
    resume.push("--resume".into());
    let resumed = run(&resume);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("train.stop_at_step: 3 → unset"), "{}", stderr(&resumed));
    let (a, b) = (tensors(&long.join("l2d/l2d.safetensors")), tensors(&short.join("l2d/l2d.safetensors")));
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{na} differs after resuming");
    }
    let (changes, log) = config_changes(&short);
    assert_eq!(changes, [serde_json::json!({"step": 3, "config_change": {"train.stop_at_step": {"old": 3, "new": null}}})]);
    assert_eq!(loss_log(&long), log);
}

/// A run's log split into its `config_change` records and the others.
fn config_changes(out: &Path) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    loss_log(out).into_iter().partition(|r| r.get("config_change").is_some())
}

/// A resumed run may change its length, cadence and learning-rate schedule
/// (each a warning and a `config_change` record); every other difference is
/// refused with exit 2, naming each key `old → new`, before anything changes.
#[test]
fn resume_refuses_another_identity_and_records_allowed_changes() {
    let model = tiny_model("llama");
    let d = data("train-identity", 40);
    let out = scratch("train-identity-out").join("run");
    let (m, dd, o) = (model.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap());
    ok(run(&train_args(m, dd, o, &["--set", "train.max_steps=3", "--set", "train.save_every=1", "--set", "train.keep_last=0"])));
    let before = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let config_before = std::fs::read_to_string(out.join("config.toml")).unwrap();

    let other_data = data("train-identity-other", 41);
    let qwen = tiny_model("qwen2");
    let (qwen_path, other_out) = (format!("model.path={}", qwen.display()), format!("data.out={}", other_data.display()));
    let refused = [
        (vec!["--set", "l2d.lora_rank=16"], vec!["l2d.lora_rank: 4 → 16"]),
        (vec!["--set", "train.seed=1", "--set", "train.batch_size=4", "--set", "train.max_seq_len=64"], vec!["train.seed: 0 → 1", "train.batch_size: 8 → 4", "train.max_seq_len: 256 → 64"]),
        (vec!["--set", "train.mode=l2d-full", "--set", "l2d.variant=full"], vec!["train.mode: \"l2d-lora\" → \"l2d-full\"", "l2d.variant"]),
        (vec!["--set", &qwen_path], vec!["base model", "config sha256", "tensor checksum", "tokenizer sha256"]),
        (vec!["--set", &other_out], vec!["data (data.out", "sha256"]),
    ];
    for (sets, needles) in refused {
        let mut args = vec!["train", "--resume", "--out", o];
        args.extend(sets.iter().copied());
        let mut all = needles.clone();
        all.extend(["another --out", "--resume"]);
        assert_error(&l2d(&args), 2, &all);
    }
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(), before, "a refused resume changes nothing");
    assert_eq!(std::fs::read_to_string(out.join("config.toml")).unwrap(), config_before);

    // The same model in another place is the same run; allowed changes are warned of and recorded.
    let moved = scratch("train-identity-moved").join("model");
    copy_dir(&model, &moved);
    let res = l2d(&[
        "train", "--resume", "--out", o, "--set", &format!("model.path={}", moved.display()),
        "--set", "train.max_steps=5", "--set", "train.lr=5e-4", "--set", "train.warmup_steps=1", "--set", "train.eval_every=2",
    ]);
    let err = stderr(&res);
    assert!(res.status.success(), "{err}");
    for needle in ["train.max_steps: 3 → 5", "train.lr: 0.0001 → 0.0005", "train.warmup_steps: 3 → 1", "train.eval_every: 50 → 2", "model.path: "] {
        assert!(err.contains(needle), "{needle:?} not warned of: {err}");
    }
    let (changes, log) = config_changes(&out);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["step"], 3);
    assert_eq!(changes[0]["config_change"]["train.lr"], serde_json::json!({"old": 1e-4, "new": 5e-4}));
    assert_eq!(log.iter().filter(|r| r.get("loss").is_some()).count(), 5);
    assert!(std::fs::read_to_string(out.join("config.toml")).unwrap().contains("max_steps = 5"));

    // A damaged config.toml of the run is named, never a panic.
    std::fs::write(out.join("config.toml"), "[train\nlr = ").unwrap();
    assert_error(&l2d(&["train", "--resume", "--out", o]), 2, &["config.toml:1", "invalid TOML"]);

    let missing = scratch("train-identity-missing").join("typo");
    assert_error(&l2d(&["train", "--resume", "--out", missing.to_str().unwrap()]), 2, &["--resume", "typo", "no run to resume"]);
    assert_error(&run(&train_args(m, dd, missing.to_str().unwrap(), &["--resume"])), 2, &["--resume", "no run to resume"]);
    assert!(!missing.exists(), "a refused resume creates nothing");
}

/// A damaged newest checkpoint (truncated, garbled, without or with a broken
/// `state.json`, without its log copy): the resumed run says what is wrong,
/// moves it aside, falls back to the newest one that verifies, restores the
/// deleted `metrics.jsonl` from it, removes what killed saves left, and ends
/// equal to an uninterrupted run, log included.
#[test]
fn damaged_checkpoints_fall_back_and_the_run_ends_as_an_uninterrupted_one() {
    let model = tiny_model("llama");
    let d = data("train-damage", 40);
    let (m, dd) = (model.to_str().unwrap().to_string(), d.to_str().unwrap().to_string());
    let extra = ["--set", "train.max_steps=6", "--set", "train.save_every=1", "--set", "train.keep_last=0"];
    let straight = scratch("train-damage-straight").join("run");
    ok(run(&train_args(&m, &dd, straight.to_str().unwrap(), &extra)));
    let straight_tensors = tensors(&straight.join("l2d/l2d.safetensors"));

    type Fault = fn(&Path);
    let faults: [(&str, Fault, &str); 5] = [
        ("truncated", |c| truncate(&c.join("trainable.safetensors")), "trainable.safetensors has"),
        ("garbled", |c| garble(&c.join("trainable.safetensors")), "trainable.safetensors: SHA-256"),
        ("no-state", |c| std::fs::remove_file(c.join("state.json")).unwrap(), "state.json is missing"),
        ("bad-state", |c| std::fs::write(c.join("state.json"), b"{\"step\": 4").unwrap(), "state.json is malformed"),
        ("no-log-copy", |c| std::fs::remove_file(c.join("metrics.jsonl")).unwrap(), "metrics.jsonl is missing"),
    ];
    for (name, damage, why) in faults {
        let out = scratch(&format!("train-damage-{name}")).join("run");
        let mut first = train_args(&m, &dd, out.to_str().unwrap(), &extra);
        first.extend(["--set".into(), "train.stop_at_step=4".into()]);
        ok(run(&first));
        damage(&out.join("checkpoints/step-00000004"));
        // What killed saves and writes leave, and a lost log.
        std::fs::create_dir_all(out.join("checkpoints/.step-00000005.tmp-killed")).unwrap();
        std::fs::write(out.join("checkpoints/.step-00000005.tmp-killed/trainable.safetensors"), b"half").unwrap();
        std::fs::write(out.join(".metrics.jsonl.tmp-killed"), b"half").unwrap();
        std::fs::remove_file(out.join("metrics.jsonl")).unwrap();

        let mut resume = train_args(&m, &dd, out.to_str().unwrap(), &extra);
        resume.push("--resume".into());
        let res = run(&resume);
        let err = stderr(&res);
        assert!(res.status.success(), "{name}: {err}");
        assert!(err.contains(&format!("step-00000004 is damaged ({why}")), "{name}: {err}");
        assert!(err.contains("damaged-step-00000004") && err.contains("restored from"), "{name}: {err}");
        assert!(out.join("checkpoints/damaged-step-00000004").is_dir(), "{name}: moved aside, not deleted");
        for ((na, ta), (_, tb)) in straight_tensors.iter().zip(&tensors(&out.join("l2d/l2d.safetensors"))) {
            assert!(ta.equal(tb), "{name}: {na} differs from the uninterrupted run");
        }
        assert_eq!(config_changes(&out).1, loss_log(&straight), "{name}");
        assert_eq!(staging_debris(&out), Vec::<PathBuf>::new(), "{name}");
    }
}

/// Cuts a file to half its length.
fn truncate(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
}

/// Overwrites bytes in the second half of a file (tensor data, not the header) with others.
fn garble(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() * 3 / 4;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

/// A checkpoint whose files verify but whose tensors do not fit the run (a
/// rank-8 run's under a rank-4 run's checksums): exit 2 naming the tensor and
/// both shapes, never a panic.
#[test]
fn tensors_of_another_shape_name_the_tensor_and_both_shapes() {
    let model = tiny_model("llama");
    let d = data("train-shape", 40);
    let (m, dd) = (model.to_str().unwrap(), d.to_str().unwrap());
    let rank4 = scratch("train-shape-4").join("run");
    let rank8 = scratch("train-shape-8").join("run");
    ok(run(&train_args(m, dd, rank4.to_str().unwrap(), &["--set", "train.max_steps=1"])));
    ok(run(&train_args(m, dd, rank8.to_str().unwrap(), &["--set", "train.max_steps=1", "--set", "l2d.lora_rank=8"])));
    let (ours, theirs) = (rank4.join("checkpoints/step-00000001"), rank8.join("checkpoints/step-00000001"));
    for file in ["trainable.safetensors", "optimizer.safetensors"] {
        std::fs::copy(theirs.join(file), ours.join(file)).unwrap();
    }
    let theirs_state = std::fs::read_to_string(theirs.join("state.json")).unwrap();
    let theirs_files: serde_json::Value = serde_json::from_str::<serde_json::Value>(&theirs_state).unwrap()["files"].clone();
    edit_json(&ours.join("state.json"), |state| {
        for entry in state["files"].as_array_mut().unwrap() {
            let name = entry["name"].as_str().unwrap().to_string();
            if name.ends_with(".safetensors") {
                *entry = theirs_files.as_array().unwrap().iter().find(|e| e["name"] == name.as_str()).unwrap().clone();
            }
        }
    });
    let res = run(&train_args(m, dd, rank4.to_str().unwrap(), &["--set", "train.max_steps=1", "--resume"]));
    assert_error(&res, 2, &["trainable.safetensors", "tensor model.", "has shape [", "the run's is ["]);
}

/// Examples longer than `train.max_seq_len` are cut; one warning counts them.
#[test]
fn examples_longer_than_max_seq_len_are_counted_in_one_warning() {
    let model = tiny_model("llama");
    let shards = prepared("train-cut-data", &model);
    let lengths = l2d::data::shards::Split::open(&shards, "train").unwrap().lengths();
    let max_seq_len = *lengths.iter().min().unwrap() as usize + 2;
    let cut = lengths.iter().filter(|&&l| l as usize > max_seq_len).count();
    assert!(cut > 0 && cut < lengths.len());
    let out = scratch("train-cut").join("run");
    let res = run(&train_args(model.to_str().unwrap(), shards.to_str().unwrap(), out.to_str().unwrap(), &["--set", "train.max_steps=1", "--set", &format!("train.max_seq_len={max_seq_len}")]));
    let err = stderr(&res);
    assert!(res.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("longer than")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    let expected = format!("{cut} of {} training examples are longer than train.max_seq_len ({max_seq_len}) and will be cut", lengths.len());
    assert!(warnings[0].contains(&expected), "{err}");
}

/// Without a terminal, progress comes as log lines at the default level: the
/// loop's closing line (steps, loss, lr, tokens/s) and each validation pass
/// (its batches, capped by `train.eval_max_batches`, and its losses); the
/// final validation loss is printed. `--model`, `--device` and `--dtype` work
/// as in the other subcommands; `--progress-every 0` prints no progress.
#[test]
fn progress_lines_without_a_terminal() {
    let model = tiny_model("llama");
    let d = prepared("train-progress", &model); // with a valid split
    let root = env!("CARGO_MANIFEST_DIR");
    let out = scratch("train-progress-out");
    let args = |run: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--config", &format!("{root}/configs/tiny-l2d-lora.toml"), "--model", model.to_str().unwrap(),
            "--device", "cpu", "--dtype", "f32", "--set", &format!("data.out={}", d.display()), "--set", "l2d.flow_dim=32",
            "--set", "l2d.lora_rank=4", "--set", "train.epochs=5", "--set", "train.max_steps=3", "--set", "train.eval_every=2", "--set", "train.eval_max_batches=1",
            "--out", out.join(run).to_str().unwrap()]
            .iter().map(|s| s.to_string()).collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let res = run(&args("a", &[]));
    let err = stderr(&res);
    assert!(res.status.success(), "{err}");
    let step_line = err.lines().find(|l| l.contains("train: 3/3 steps (100%)")).unwrap_or_else(|| panic!("no closing progress line: {err}"));
    for part in ["steps/s", "eta", "loss ", "lr ", "tokens/s", "valid loss"] {
        assert!(step_line.contains(part), "{part:?} missing: {step_line}");
    }
    // One micro-batch per pass at the t = U(0,1) loss and each of the four t bins.
    for step in [2, 3] {
        let line = err.lines().find(|l| l.contains(&format!("validation at step {step}: 5/5 batches"))).unwrap_or_else(|| panic!("step {step}: {err}"));
        assert!(line.contains("valid loss") && line.contains("t=0.125"), "{line}");
    }
    assert!(err.contains("final validation loss"), "{err}");
    let cfg = l2d::config::load(Some(&out.join("a/config.toml")), &[]).unwrap();
    assert_eq!((cfg.model.path.as_str(), cfg.model.device.as_str()), (model.to_str().unwrap(), "cpu"));

    let quiet = run(&args("b", &["--progress-every", "0"]));
    assert!(quiet.status.success());
    assert!(!stderr(&quiet).contains("steps/s"), "{}", stderr(&quiet));
    assert_error(&run(&args("c", &["--set", "train.eval_max_batches=0"])), 2, &["train.eval_max_batches"]);
    let bad_dtype: Vec<String> = args("d", &[]).into_iter().map(|a| if a == "f32" { "f8".into() } else { a }).collect();
    assert_error(&run(&bad_dtype), 2, &["--dtype", "f8"]);
}
