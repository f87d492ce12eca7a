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
        if attempt == 0 {
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
}

#[test]
fn sigterm_saves_and_exits_cleanly() {
    let model = tiny_model("llama");
    let d = data("train-term", 200);
    let out = scratch("train-term-out").join("run");
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
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out_put = child.wait_with_output().unwrap();
    assert_eq!(out_put.status.code(), Some(0), "{}", String::from_utf8_lossy(&out_put.stderr));
    assert!(String::from_utf8_lossy(&out_put.stderr).contains("--resume"));
    let steps = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let saved = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
    assert_eq!(saved, 1, "one checkpoint at the interrupted step");
    assert!(steps < 50, "the run stopped early ({steps} steps)");
    assert!(!out.join("l2d").exists(), "no final result for an interrupted run");
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
    ok(run(&resume));
    let (a, b) = (tensors(&long.join("l2d/l2d.safetensors")), tensors(&short.join("l2d/l2d.safetensors")));
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{na} differs after resuming");
    }
    assert_eq!(loss_log(&long), loss_log(&short));
}
