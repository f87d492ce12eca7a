//! Bad input gets one clear line naming the file, field or flag, the right
//! exit code, and never a panic or backtrace.

mod common;
use common::*;

fn damaged(name: &str, f: impl FnOnce(&std::path::Path)) -> std::path::PathBuf {
    let dir = scratch(name).join("model");
    copy_dir(&tiny_model("llama"), &dir);
    f(&dir);
    dir
}

fn gen(model: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "2"];
    args.extend_from_slice(extra);
    l2d(&args)
}

#[test]
fn missing_model_directory() {
    let out = gen(std::path::Path::new("/nonexistent/model"), &[]);
    assert_error(&out, 2, &["/nonexistent/model", "does not exist"]);
}

#[test]
fn missing_config_json() {
    let dir = damaged("no-config", |d| std::fs::remove_file(d.join("config.json")).unwrap());
    assert_error(&gen(&dir, &[]), 2, &["config.json"]);
}

#[test]
fn malformed_config_json() {
    let dir = damaged("bad-config", |d| std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap());
    assert_error(&gen(&dir, &[]), 2, &["config.json"]);
}

#[test]
fn unsupported_model_type() {
    let dir = damaged("gpt2", |d| edit_json(&d.join("config.json"), |v| v["model_type"] = "gpt2".into()));
    assert_error(&gen(&dir, &[]), 2, &["config.json", "model_type", "gpt2"]);
}

#[test]
fn config_field_of_wrong_type() {
    let dir = damaged("bad-field", |d| edit_json(&d.join("config.json"), |v| v["hidden_size"] = "wide".into()));
    assert_error(&gen(&dir, &[]), 2, &["config.json", "hidden_size"]);
}

#[test]
fn tensor_missing_is_named() {
    let dir = damaged("missing-tensor", |d| {
        let path = d.join("model.safetensors");
        let mut tensors = tch::Tensor::read_safetensors(&path).unwrap();
        tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
        l2d::model::weights::save(&path, &tensors).unwrap();
    });
    assert_error(&gen(&dir, &[]), 2, &["model.layers.1.mlp.up_proj.weight", "missing"]);
}

#[test]
fn tensor_of_wrong_shape_is_named() {
    let dir = damaged("bad-shape", |d| {
        let path = d.join("model.safetensors");
        let mut tensors = tch::Tensor::read_safetensors(&path).unwrap();
        for (name, t) in tensors.iter_mut() {
            if name == "model.layers.0.self_attn.k_proj.weight" {
                *t = t.narrow(0, 0, 8);
            }
        }
        l2d::model::weights::save(&path, &tensors).unwrap();
    });
    assert_error(&gen(&dir, &[]), 2, &["model.layers.0.self_attn.k_proj.weight", "shape"]);
}

#[test]
fn corrupt_safetensors() {
    let dir = damaged("corrupt-st", |d| std::fs::write(d.join("model.safetensors"), b"garbage").unwrap());
    assert_error(&gen(&dir, &[]), 2, &["model.safetensors"]);
}

#[test]
fn missing_tokenizer() {
    let dir = damaged("no-tokenizer", |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert_error(&gen(&dir, &[]), 2, &["tokenizer.json"]);
}

#[test]
fn dtype_unsupported_on_device() {
    assert_error(&gen(&tiny_model("llama"), &["--device", "cpu", "--dtype", "f16"]), 2, &["f16", "cpu"]);
    assert_error(&gen(&tiny_model("llama"), &["--dtype", "f8"]), 2, &["--dtype", "f8"]);
}

#[test]
fn cuda_asked_for_but_absent() {
    let out = gen(&tiny_model("llama"), &["--device", "cuda"]);
    if tch::Cuda::is_available() {
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert_error(&out, 2, &["--device (model.device): cuda", "no CUDA device"]);
    }
    assert_error(&gen(&tiny_model("llama"), &["--device", "tpu"]), 2, &["--device", "tpu"]);
}

#[test]
fn prompt_longer_than_positions() {
    let dir = damaged("short-positions", |d| {
        edit_json(&d.join("config.json"), |v| v["max_position_embeddings"] = 16.into())
    });
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen";
    let out = l2d(&["generate", "--model", dir.to_str().unwrap(), "--prompt", long]);
    assert_error(&out, 2, &["max_position_embeddings", "16"]);
}

#[test]
fn malformed_prompts_file_names_the_line() {
    let dir = scratch("bad-prompts");
    let file = dir.join("p.jsonl");
    std::fs::write(&file, "{\"prompt\": \"ok\"}\n{\"promt\": \"typo\"}\n").unwrap();
    let model = tiny_model("llama");
    let out = l2d(&["generate", "--model", model.to_str().unwrap(), "--prompts", file.to_str().unwrap()]);
    assert_error(&out, 2, &["p.jsonl:2"]);
    let out = l2d(&["generate", "--model", model.to_str().unwrap(), "--prompts", "/nonexistent.jsonl"]);
    assert_error(&out, 2, &["--prompts", "/nonexistent.jsonl"]);
}

#[test]
fn unknown_config_key_and_bad_flags() {
    let model = tiny_model("llama");
    let out = gen(&model, &["--set", "generate.temprature=0.5"]);
    assert_error(&out, 2, &["generate.temprature"]);
    let out = gen(&model, &["--temperature", "-1"]);
    assert_error(&out, 2, &["--temperature"]);
    let out = gen(&model, &["--top-p", "0"]);
    assert_error(&out, 2, &["--top-p"]);
    let out = l2d(&["generate", "--model", model.to_str().unwrap()]);
    assert_error(&out, 2, &["--prompt"]);
    // clap's own usage errors exit 2 as well.
    assert_eq!(l2d(&["generate", "--no-such-flag"]).status.code(), Some(2));
}

/// clap's usage errors in full: what is missing, what was meant, the usage line.
#[test]
fn usage_errors_are_claps_whole_message() {
    let alone = l2d(&[]);
    assert_eq!(alone.status.code(), Some(2));
    let text = format!("{}{}", stdout(&alone), stderr(&alone));
    for part in ["Usage: l2d", "Commands:", "prepare", "train", "generate", "eval", "report"] {
        assert!(text.contains(part), "`l2d` alone lacks {part:?}: {text}");
    }

    let model = tiny_model("llama");
    let m = model.to_str().unwrap();
    let out = l2d(&["generate", "--model", m, "--prompt", "hi", "--guidance-weight", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("required arguments were not provided") && err.contains("--guidance-class"), "{err}");
    assert!(err.contains("Usage: l2d generate"), "{err}");

    let out = l2d(&["generate", "--model", m, "--prompt", "hi", "--max-new-token", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("'--max-new-token'") && err.contains("a similar argument exists: '--max-new-tokens'"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--help` shows the built-in default of each flag that overrides a config key.
#[test]
fn help_shows_the_defaults() {
    let help = stdout(&l2d(&["generate", "--help"]));
    let defaults = l2d::config::Config::default();
    let g = &defaults.generate;
    for (flag, value) in [
        ("--max-new-tokens", g.max_new_tokens.to_string()),
        ("--temperature", format!("{:?}", g.temperature)),
        ("--top-p", format!("{:?}", g.top_p)),
        ("--seed", g.seed.to_string()),
        ("--steps", defaults.l2d.steps.to_string()),
        ("--solver", defaults.l2d.solver.to_string()),
    ] {
        let start = help.find(&format!("{flag} <")).unwrap_or_else(|| panic!("{flag} missing: {help}"));
        let entry = &help[start..];
        let entry = &entry[..entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2)];
        assert!(entry.contains(&format!("[default: {value}]")), "{flag}: {entry}");
    }
    let help = stdout(&l2d(&["eval", "--help"]));
    assert!(help.contains("[default: 0, and l2d.steps with a checkpoint]"), "{help}");
    assert!(help.contains("[default: l2d.solver]"), "{help}");
}

#[test]
fn chat_without_template() {
    let dir = damaged("no-template", |d| {
        edit_json(&d.join("tokenizer_config.json"), |v| {
            v.as_object_mut().unwrap().remove("chat_template");
        })
    });
    assert_error(&gen(&dir, &["--chat"]), 2, &["chat_template"]);
}

#[test]
fn init_refuses_existing_output() {
    let dir = scratch("init-exists");
    let out = l2d(&["init", "--arch", "llama", "--out", dir.to_str().unwrap()]);
    assert_error(&out, 2, &[dir.to_str().unwrap(), "exists"]);
}

/// An `--out` that cannot hold output (here a path through a regular file) is
/// a usage error, exit 2, naming the path, in every subcommand that writes one.
#[test]
fn unwritable_out_is_exit_2_in_every_subcommand() {
    let dir = scratch("unwritable-out");
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = blocker.join("out");
    let o = out.to_str().unwrap();
    let model = tiny_model("llama");
    let m = model.to_str().unwrap();
    let chat = dir.join("chat.jsonl");
    std::fs::write(&chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n").unwrap();
    let shards = prepared("unwritable-out-shards", &model);
    let samples = dir.join("samples.jsonl");
    let gsm8k = format!("{}/../shared/data/gsm8k/test.jsonl", env!("CARGO_MANIFEST_DIR"));
    std::fs::write(&samples, "{\"task_id\": 0, \"completion\": \"#### 3\"}\n").unwrap();
    let tiny_cfg = format!("{}/configs/tiny-l2d-lora.toml", env!("CARGO_MANIFEST_DIR"));
    let data_out = format!("data.out={}", shards.display());
    let model_set = format!("model.path={m}");
    let cases: Vec<Vec<&str>> = vec![
        vec!["init", "--arch", "llama", "--preset", "tiny", "--out", o],
        vec!["init", "--task", "modsum", "--out", o],
        vec!["prepare", "--model", m, "--input", chat.to_str().unwrap(), "--out", o],
        vec!["train", "--config", &tiny_cfg, "--set", &model_set, "--set", &data_out, "--out", o],
        vec!["eval", "--task", "gsm8k", "--data", &gsm8k, "--samples", samples.to_str().unwrap(), "--out", o],
    ];
    for args in cases {
        let res = l2d(&args);
        assert_error(&res, 2, &[blocker.to_str().unwrap()]);
        assert!(!out.exists());
    }
}
