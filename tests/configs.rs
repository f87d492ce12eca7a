//! The config schema and the shipped configs: parsing, Table-3 values,
//! `--set` overrides, and the one-line usage errors (exit code 2).

use std::path::{Path, PathBuf};

use l2d::config::{load, Config, WarmupType, X1Schedule};
use l2d::error::exit_code;

const MODELS: &[(&str, &str, usize)] = &[
    ("llama-3.2-1b-instruct", "models/Llama-3.2-1B-Instruct", 4),
    ("llama-3.1-8b-instruct", "models/Llama-3.1-8B-Instruct", 1),
    ("qwen2.5-1.5b-instruct", "models/Qwen2.5-1.5B-Instruct", 4),
    ("qwen2.5-7b-instruct", "models/Qwen2.5-7B-Instruct", 1),
];
const MODES: &[&str] = &["l2d-lora", "l2d-full", "lora", "full"];
const EXCLUDED: &[&str] = &[
    "advice-seeking",
    "brainstorming",
    "creative-writing",
    "editing",
    "planning",
    "role-playing",
];

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

fn shipped(name: &str) -> Config {
    let path = configs_dir().join(name);
    load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn sets(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A config file with `text` in a fresh temporary directory.
struct TempConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn temp_config(text: &str) -> TempConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, text).unwrap();
    TempConfig { _dir: dir, path }
}

/// Loads and expects a usage error; returns its message after checking it is one line.
fn usage_error(path: Option<&Path>, set: &[&str]) -> String {
    let err = match load(path, &sets(set)) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e,
    };
    assert_eq!(exit_code(&err), 2, "not a usage error: {err:#}");
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    msg
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "{msg:?} does not contain {part:?}");
    }
}

#[test]
fn every_shipped_config_loads_and_validates() {
    let mut names: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    for name in &names {
        shipped(name);
    }
    let mut expected: Vec<String> = MODELS
        .iter()
        .flat_map(|(m, _, _)| MODES.iter().map(move |mode| format!("{m}-{mode}.toml")))
        .collect();
    expected.push("tiny-l2d-lora.toml".into());
    expected.push("tiny-full.toml".into());
    for want in &expected {
        assert!(
            names.contains(want),
            "configs/{want} is missing; found {names:?}"
        );
    }
}

#[test]
fn shipped_configs_carry_table3_values() {
    for (model, path, micro) in MODELS {
        for mode in MODES {
            let name = format!("{model}-{mode}.toml");
            let c = shipped(&name);
            let l2d = mode.starts_with("l2d-");
            assert_eq!(c.model.path, *path, "{name}");
            assert_eq!(c.model.dtype, "bf16", "{name}");
            assert_eq!(c.model.device, "cuda", "{name}");
            assert_eq!(c.train.mode, *mode, "{name}");
            assert_eq!(c.train.lr, if l2d { 1e-4 } else { 1e-5 }, "{name}");
            assert_eq!(c.train.final_lr, 1e-6, "{name}");
            assert_eq!(c.train.warmup_steps, 100, "{name}");
            assert_eq!(c.train.warmup_type, WarmupType::Log, "{name}: the reference's WarmupDecayLR");
            assert_eq!(c.train.decay, "linear", "{name}");
            assert_eq!(c.train.betas, [0.9, 0.95], "{name}");
            assert_eq!(c.train.weight_decay, 0.01, "{name}");
            assert_eq!(c.train.grad_clip, 1.0, "{name}");
            assert_eq!(c.train.batch_size, 32, "{name}");
            assert_eq!(c.train.micro_batch_size, *micro, "{name}");
            assert_eq!(c.train.epochs, 1, "{name}");
            assert_eq!(c.train.max_steps, None, "{name}");
            assert_eq!(c.train.max_seq_len, 2048, "{name}");
            assert_eq!(c.data.train.len(), 5, "{name}");
            assert!(
                c.data
                    .train
                    .iter()
                    .all(|g| g.starts_with("data/smoltalk/data/")),
                "{name}"
            );
            assert!(
                c.data
                    .train
                    .iter()
                    .any(|g| g.contains("/smol-magpie-ultra/train-")),
                "{name}"
            );
            assert_eq!(c.data.exclude_categories, EXCLUDED, "{name}");
            assert_eq!(c.generate.max_new_tokens, 256, "{name}");
            if l2d {
                assert_eq!(c.l2d.variant, mode.trim_start_matches("l2d-"), "{name}");
                assert_eq!((c.l2d.lora_rank, c.l2d.lora_alpha), (32, 32.0), "{name}");
                assert_eq!((c.l2d.flow_dim, c.l2d.sigma), (256, 64.0), "{name}");
                assert_eq!(
                    (c.l2d.solver.name(), c.l2d.steps),
                    ("midpoint", 8),
                    "{name}"
                );
            }
            if *mode == "lora" {
                assert_eq!(
                    (c.lora.rank, c.lora.alpha, c.lora.dropout),
                    (8, 64.0, 0.1),
                    "{name}"
                );
                assert_eq!(c.lora.target_modules.len(), 7, "{name}");
            }
        }
    }
}

#[test]
fn tiny_configs_run_on_cpu() {
    for name in ["tiny-l2d-lora.toml", "tiny-full.toml"] {
        let c = shipped(name);
        assert_eq!(
            (c.model.device.as_str(), c.model.dtype.name()),
            ("cpu", "f32"),
            "{name}"
        );
        assert_eq!(
            (c.train.batch_size, c.train.micro_batch_size),
            (8, 4),
            "{name}"
        );
        assert_eq!(c.train.max_seq_len, 256, "{name}");
        assert!(c.train.max_steps.is_some_and(|s| s <= 1000), "{name}");
        assert_eq!(c.train.warmup_type, WarmupType::Linear, "{name}");
    }
    for name in ["demo-full.toml", "demo-l2d-lora.toml"] {
        assert_eq!(shipped(name).train.warmup_type, WarmupType::Linear, "{name}");
    }
    assert_eq!(shipped("tiny-l2d-lora.toml").train.mode, "l2d-lora");
    assert_eq!(shipped("tiny-full.toml").train.mode, "full");
}

#[test]
fn defaults_are_the_papers() {
    let c = load(None, &[]).unwrap();
    assert_eq!(
        (c.train.lr, c.train.final_lr, c.train.warmup_steps, c.train.warmup_type),
        (1e-4, 1e-6, 100, WarmupType::Log)
    );
    assert_eq!(
        (
            c.train.batch_size,
            c.train.micro_batch_size,
            c.train.max_seq_len
        ),
        (32, 4, 2048)
    );
    assert_eq!(
        (c.train.eps, c.train.weight_decay, c.train.grad_clip),
        (1e-8, 0.01, 1.0)
    );
    assert_eq!(
        (c.l2d.flow_dim, c.l2d.sigma, c.l2d.timestep_dim),
        (256, 64.0, 256)
    );
    assert_eq!(
        (c.l2d.lora_rank, c.l2d.lora_alpha, c.l2d.guidance_dropout),
        (32, 32.0, 0.2)
    );
    assert_eq!(
        (c.l2d.solver.name(), c.l2d.steps, c.l2d.atol, c.l2d.rtol),
        ("midpoint", 8, 1e-5, 1e-5)
    );
    assert_eq!(
        (c.l2d.x1_estimate.name(), c.l2d.x1_schedule.to_string().as_str()),
        ("sample", "constant")
    );
    assert_eq!((c.l2d.num_classes, c.l2d.guidance_class), (0, None));
    assert_eq!((c.lora.rank, c.lora.alpha, c.lora.dropout), (8, 64.0, 0.1));
    assert_eq!(
        (c.model.dtype.name(), c.model.device.as_str()),
        ("auto", "auto")
    );
    assert_eq!(
        (
            c.generate.max_new_tokens,
            c.generate.top_k,
            c.generate.top_p
        ),
        (256, 0, 1.0)
    );
    Config::default().validate().unwrap();
}

#[test]
fn set_overrides_numbers_strings_and_arrays() {
    let file = configs_dir().join("llama-3.2-1b-instruct-l2d-lora.toml");
    let c = load(
        Some(&file),
        &sets(&[
            "train.lr=3e-4",
            "train.max_steps=50",
            "model.path=/x/y",
            "model.dtype=\"f16\"",
            "model.device=cuda:1",
            r#"generate.stop=["\n", "</s>"]"#,
            "data.valid=valid.jsonl",
            "l2d.steps=4",
            "l2d.steps=16",
            "train.betas=[0.8, 0.99]",
        ]),
    )
    .unwrap();
    assert_eq!(c.train.lr, 3e-4);
    assert_eq!(c.train.max_steps, Some(50));
    assert_eq!(c.model.path, "/x/y");
    assert_eq!(c.model.dtype, "f16");
    assert_eq!(c.model.device, "cuda:1");
    assert_eq!(c.generate.stop, ["\n", "</s>"]);
    assert_eq!(c.data.valid, ["valid.jsonl"]);
    assert_eq!(c.l2d.steps, 16, "the last --set wins");
    assert_eq!(c.train.betas, [0.8, 0.99]);
    // Untouched values keep the file's.
    assert_eq!(c.train.micro_batch_size, 4);
    assert_eq!(c.data.train.len(), 5);
}

#[test]
fn set_with_empty_value_restores_the_default() {
    let tiny = configs_dir().join("tiny-l2d-lora.toml");
    assert_eq!(load(Some(&tiny), &[]).unwrap().train.max_steps, Some(200));
    assert_eq!(
        load(Some(&tiny), &sets(&["train.max_steps="]))
            .unwrap()
            .train
            .max_steps,
        None
    );
    let c = load(None, &sets(&["l2d.num_classes=3", "l2d.guidance_class=2"])).unwrap();
    assert_eq!(c.l2d.guidance_class, Some(2));
    let c = load(
        None,
        &sets(&[
            "l2d.num_classes=3",
            "l2d.guidance_class=2",
            "l2d.guidance_class=",
        ]),
    )
    .unwrap();
    assert_eq!(c.l2d.guidance_class, None);
}

#[test]
fn set_creates_missing_sections_and_maps() {
    let c = load(
        None,
        &sets(&[
            "l2d.num_classes=2",
            "data.class_map.math=1",
            "data.class_map.coding=0",
        ]),
    )
    .unwrap();
    assert_eq!(c.data.class_map.get("math"), Some(&1));
    assert_eq!(c.data.class_map.get("coding"), Some(&0));
}

#[test]
fn unknown_key_in_file_is_named_by_dotted_path() {
    let f = temp_config("[train]\nlr = 1e-4\nlrr = 3e-4\n");
    let msg = usage_error(Some(&f.path), &[]);
    assert_contains(
        &msg,
        &[&f.path.display().to_string(), "unknown key train.lrr"],
    );

    let f = temp_config("[trainn]\nlr = 1e-4\n");
    assert_contains(&usage_error(Some(&f.path), &[]), &["unknown key trainn"]);
}

#[test]
fn unknown_key_in_set_is_named() {
    let msg = usage_error(None, &["train.lrr=1"]);
    assert_contains(&msg, &["--set", "train.lrr"]);
    let msg = usage_error(
        Some(&configs_dir().join("tiny-full.toml")),
        &["generate.top_pp=0.9"],
    );
    assert_contains(&msg, &["--set", "generate.top_pp"]);
}

#[test]
fn wrong_type_names_the_key() {
    let f = temp_config("[train]\nbatch_size = \"many\"\n");
    let msg = usage_error(Some(&f.path), &[]);
    assert_contains(
        &msg,
        &[&f.path.display().to_string(), "train.batch_size", "integer"],
    );

    let f = temp_config("[data]\ntrain = [\"a.parquet\", 3]\n");
    assert_contains(
        &usage_error(Some(&f.path), &[]),
        &["data.train[1]", "string"],
    );

    let msg = usage_error(None, &["train.lr=fast"]);
    assert_contains(&msg, &["--set train.lr", "expected a number"]);
}

#[test]
fn bad_enum_value_names_the_key() {
    let f = temp_config("[l2d]\nsolver = \"heun\"\n");
    assert_contains(
        &usage_error(Some(&f.path), &[]),
        &["l2d.solver", "heun", "midpoint"],
    );
    assert_contains(
        &usage_error(None, &["model.dtype=fp8"]),
        &["--set model.dtype", "fp8"],
    );
    assert_contains(
        &usage_error(None, &["model.device=tpu"]),
        &["model.device", "tpu"],
    );
    assert_contains(
        &usage_error(None, &["train.mode=dpo"]),
        &["train.mode", "dpo"],
    );
    assert_contains(
        &usage_error(None, &["l2d.x1_estimate=mode"]),
        &["l2d.x1_estimate"],
    );
    assert_contains(
        &usage_error(None, &["l2d.x1_schedule=linear"]),
        &["l2d.x1_schedule"],
    );
    assert_contains(
        &usage_error(None, &["data.max_seq_len_policy=pad"]),
        &["data.max_seq_len_policy"],
    );
    assert_contains(
        &usage_error(None, &["train.decay=cosine"]),
        &["train.decay"],
    );
    assert_contains(
        &usage_error(None, &["train.warmup_type=cosine"]),
        &["--set train.warmup_type", "cosine", "log", "linear"],
    );
    let f = temp_config("[train]\nwarmup_type = \"exp\"\n");
    assert_contains(&usage_error(Some(&f.path), &[]), &["train.warmup_type", "exp"]);
}

#[test]
fn out_of_range_values_are_rejected() {
    assert_contains(&usage_error(None, &["l2d.steps=1"]), &["l2d.steps"]);
    assert_contains(&usage_error(None, &["train.lr=0"]), &["train.lr"]);
    assert_contains(
        &usage_error(None, &["train.micro_batch_size=5"]),
        &["train.micro_batch_size", "32"],
    );
    assert_contains(
        &usage_error(None, &["train.batch_size=30"]),
        &["--set train.batch_size", "train.micro_batch_size", "30"],
    );
    assert_contains(
        &usage_error(None, &["train.final_lr=1e-3"]),
        &["train.final_lr"],
    );
    assert_contains(
        &usage_error(None, &["generate.top_p=0"]),
        &["generate.top_p"],
    );
    assert_contains(
        &usage_error(None, &["train.stop_at_step=0"]),
        &["train.stop_at_step"],
    );
    assert_contains(
        &usage_error(None, &["l2d.guidance_weight=0.5"]),
        &["l2d.guidance_weight"],
    );
    assert_contains(
        &usage_error(None, &["l2d.guidance_class=0"]),
        &["l2d.guidance_class"],
    );
    assert_contains(
        &usage_error(None, &["train.mode=l2d-full"]),
        &["l2d.variant", "l2d-full"],
    );
    assert_contains(
        &usage_error(None, &["train.batch_size=-1"]),
        &["train.batch_size"],
    );
    let f = temp_config("[train]\nmicro_batch_size = 3\n");
    assert_contains(
        &usage_error(Some(&f.path), &[]),
        &[&f.path.display().to_string(), "train.micro_batch_size"],
    );
}

#[test]
fn missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    assert_contains(
        &usage_error(Some(&path), &[]),
        &[&path.display().to_string()],
    );
}

#[test]
fn toml_syntax_error_names_the_file_and_line() {
    let f = temp_config("[train]\nlr = 1e-4\nbatch_size = \n");
    let msg = usage_error(Some(&f.path), &[]);
    assert_contains(&msg, &[&format!("{}:3:", f.path.display())]);
}

#[test]
fn malformed_set_is_rejected() {
    assert_contains(&usage_error(None, &["train.lr"]), &["--set", "train.lr"]);
    assert_contains(&usage_error(None, &["=3"]), &["--set", "empty key"]);
    assert_contains(&usage_error(None, &[" =3"]), &["--set", "empty key"]);
    assert_contains(
        &usage_error(None, &["train..lr=3"]),
        &["--set", "train..lr"],
    );
    assert_contains(
        &usage_error(None, &["train.lr.x=3"]),
        &["--set", "train.lr"],
    );
}

#[test]
fn resolved_config_round_trips() {
    let file = configs_dir().join("qwen2.5-7b-instruct-lora.toml");
    let c = load(
        Some(&file),
        &sets(&[
            "l2d.num_classes=2",
            "data.class_map.math=1",
            "train.out=runs/x",
        ]),
    )
    .unwrap();
    let text = c.to_toml_string();
    let f = temp_config(&text);
    let again = load(Some(&f.path), &[]).unwrap();
    assert_eq!(again.to_toml_string(), text);
    assert_eq!(again.train.out.as_deref(), Some("runs/x"));
    assert_eq!(again.data.class_map.get("math"), Some(&1));
    assert_eq!(again.lora.target_modules, c.lora.target_modules);
}

#[test]
fn validate_reports_usage_errors() {
    let mut c = Config::default();
    // A typed choice cannot hold a bad value; a range still can.
    c.l2d.steps = 1;
    let err = c.validate().unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert_contains(&err.to_string(), &["l2d.steps", "1"]);
}

#[test]
fn x1_schedules_parse() {
    assert_eq!(X1Schedule::parse("constant"), Ok(X1Schedule::Constant));
    assert_eq!(
        X1Schedule::parse("polynomial_1_1.0"),
        Ok(X1Schedule::Polynomial {
            power: 1.0,
            end: 1.0
        })
    );
    assert_eq!(
        X1Schedule::parse("polynomial_2.5_0.8"),
        Ok(X1Schedule::Polynomial {
            power: 2.5,
            end: 0.8
        })
    );
    for bad in [
        "",
        "linear",
        "polynomial_1",
        "polynomial_a_1",
        "polynomial_1_0",
        "polynomial_-1_1",
    ] {
        assert!(X1Schedule::parse(bad).is_err(), "{bad:?} parsed");
    }
    load(None, &sets(&["l2d.x1_schedule=polynomial_1_1.0"])).unwrap();
}

#[test]
fn eval_config_names_the_six_benchmarks_and_the_sweep() {
    let c = shipped("eval-paper.toml");
    let tasks: Vec<&str> = c.eval.tasks.keys().map(String::as_str).collect();
    assert_eq!(tasks, ["gsm8k", "humaneval", "math", "mbpp", "mmlu", "mmlu_pro"]);
    assert_eq!(c.eval.steps, [0, 2, 4, 8, 16]);
    assert_eq!(c.eval.solvers, ["midpoint"]);
    // Every task but HumanEval (no split to draw from) names its shot split.
    assert!(c.eval.tasks.iter().all(|(name, t)| (name == "humaneval") == t.shots.is_none()));
    assert_eq!((c.generate.temperature, c.generate.top_p), (1.0, 1.0));
}
