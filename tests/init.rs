//! `l2d init`: the generated model directory is complete, self-consistent and
//! deterministic. Run with `--release`: BPE training is slow in debug builds.

use l2d::error::{exit_code, one_line};
use l2d::init::{builtin_corpus, init_model_dir, Arch, InitOptions, Preset};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

const FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

const PROBLEM: &str = "Question: Tom has 12 apples. He buys 3 bags with 5 apples each, \
then gives 7 to Anna. How many apples does he have now?\n\
Answer: He buys 3 * 5 = 15 apples. 12 + 15 - 7 = 20.\n#### 20";

fn options(arch: Arch, preset: Preset, out: &Path, seed: u64) -> InitOptions {
    InitOptions {
        arch,
        preset,
        out: out.to_path_buf(),
        seed,
        corpus: None,
    }
}

fn make(arch: Arch, preset: Preset, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    init_model_dir(&options(arch, preset, &out, seed)).unwrap();
    (tmp, out)
}

fn read_json(dir: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn tokenizer(dir: &Path) -> Tokenizer {
    Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
}

fn id(tok: &Tokenizer, token: &str) -> u64 {
    u64::from(
        tok.token_to_id(token)
            .unwrap_or_else(|| panic!("no token {token}")),
    )
}

/// Renders a chat template the way `transformers` does (trimmed blocks, Python
/// string methods, `raise_exception`, `strftime_now`).
fn render(template: &str, ctx: Value) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| {
        chrono::Local::now().format(&fmt).to_string()
    });
    env.template_from_str(template)?
        .render(minijinja::Value::from_serialize(&ctx))
}

fn chat_template(dir: &Path) -> String {
    read_json(dir, "tokenizer_config.json")["chat_template"]
        .as_str()
        .unwrap()
        .to_string()
}

fn conversation() -> Value {
    json!([
        {"role": "system", "content": "You are a careful math tutor. "},
        {"role": "user", "content": "What is 17 + 25?"},
        {"role": "assistant", "content": "17 + 25 = 42. The answer is 42."},
        {"role": "user", "content": PROBLEM},
    ])
}

fn check_directory(arch: Arch, preset: Preset) {
    let (tmp, dir) = make(arch, preset, 0);
    let listed: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, FILES.iter().map(|s| s.to_string()).collect());
    // Nothing of the staging directory is left beside the result.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    let config = read_json(&dir, "config.json");
    check_config(arch, preset, &config);
    let tok = tokenizer(&dir);
    check_vocabulary(arch, &tok, &config);
    check_special_ids(arch, &tok, &dir);
    check_round_trips(arch, &tok);
    check_chat_round_trip(arch, &tok, &dir);
    check_weights(arch, preset, &dir);
}

fn check_config(arch: Arch, preset: Preset, c: &Value) {
    let s = preset.shape();
    assert_eq!(c["architectures"], json!([arch.hf_class()]));
    assert_eq!(c["model_type"], arch.as_str());
    assert_eq!(c["hidden_size"], s.hidden);
    assert_eq!(c["intermediate_size"], s.intermediate);
    assert_eq!(c["num_hidden_layers"], s.layers);
    assert_eq!(c["num_attention_heads"], s.heads);
    assert_eq!(c["num_key_value_heads"], s.kv_heads);
    assert_eq!(c["vocab_size"], s.vocab);
    assert_eq!(c["max_position_embeddings"], s.max_positions);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["hidden_act"], "silu");
    assert_eq!(c["initializer_range"], expected_std(s.hidden));
    assert_eq!(c["torch_dtype"], "float32");
    assert_eq!(c["use_cache"], true);
    match arch {
        Arch::Llama => {
            assert_eq!(c["head_dim"], s.hidden / s.heads);
            assert_eq!(c["attention_bias"], false);
            assert_eq!(c["rms_norm_eps"], 1e-5);
            assert_eq!(c["rope_theta"], 500000.0);
            assert_eq!(
                c["rope_scaling"],
                json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": s.max_positions / 4})
            );
        }
        Arch::Qwen2 => {
            assert!(c.get("attention_bias").is_none());
            assert_eq!(c["rms_norm_eps"], 1e-6);
            assert_eq!(c["rope_theta"], 1000000.0);
        }
    }
}

fn check_vocabulary(arch: Arch, tok: &Tokenizer, config: &Value) {
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    let total = tok.get_vocab_size(true);
    assert!(total <= vocab, "{total} tokens > vocab_size {vocab}");
    let max_id = tok.get_vocab(true).into_values().max().unwrap() as usize;
    assert!(max_id < vocab);
    // The built-in corpus is rich enough to fill the vocabulary exactly.
    assert_eq!(total, vocab);
    for s in arch.special_tokens() {
        assert!(
            tok.get_added_vocabulary().is_special_token(s),
            "{s} is not special"
        );
    }
}

fn check_special_ids(arch: Arch, tok: &Tokenizer, dir: &Path) {
    let config = read_json(dir, "config.json");
    let generation = read_json(dir, "generation_config.json");
    let tc = read_json(dir, "tokenizer_config.json");
    match arch {
        Arch::Llama => {
            let eos = json!([id(tok, "<|end_of_text|>"), id(tok, "<|eot_id|>")]);
            assert_eq!(config["bos_token_id"], id(tok, "<|begin_of_text|>"));
            assert_eq!(config["eos_token_id"], eos);
            assert_eq!(generation["bos_token_id"], id(tok, "<|begin_of_text|>"));
            assert_eq!(generation["eos_token_id"], eos);
            assert_eq!(tc["bos_token"], "<|begin_of_text|>");
            assert_eq!(tc["eos_token"], "<|eot_id|>");
        }
        Arch::Qwen2 => {
            assert_eq!(config["bos_token_id"], id(tok, "<|endoftext|>"));
            assert_eq!(config["eos_token_id"], id(tok, "<|im_end|>"));
            assert_eq!(
                generation["eos_token_id"],
                json!([id(tok, "<|im_end|>"), id(tok, "<|endoftext|>")])
            );
            assert_eq!(generation["pad_token_id"], id(tok, "<|endoftext|>"));
            assert_eq!(tc["bos_token"], Value::Null);
            assert_eq!(tc["eos_token"], "<|im_end|>");
            assert_eq!(tc["pad_token"], "<|endoftext|>");
        }
    }
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    let decoder = tc["added_tokens_decoder"].as_object().unwrap();
    assert_eq!(decoder.len(), arch.special_tokens().len());
    for s in arch.special_tokens() {
        let entry = &decoder[&id(tok, s).to_string()];
        assert_eq!(entry["content"], *s);
        assert_eq!(entry["special"], true);
    }
}

fn check_round_trips(arch: Arch, tok: &Tokenizer) {
    let texts = [
        PROBLEM,
        "The quick brown fox jumps over the lazy dog.  Twice!\n\n\tTabs, 'quotes' & {braces} ~`^|\\",
        " leading and trailing spaces ",
        "12345678901234567890 * 98765 = ?",
        "Unicode too: caf\u{e9}, \u{3c0} \u{2248} 3.14159, \u{1f600}.",
    ];
    for text in texts {
        let with = tok.encode(text, true).unwrap();
        let bos = with.get_ids().first().copied();
        match arch {
            Arch::Llama => assert_eq!(bos, tok.token_to_id("<|begin_of_text|>")),
            Arch::Qwen2 => assert_eq!(with.get_ids(), tok.encode(text, false).unwrap().get_ids()),
        }
        assert_eq!(tok.decode(with.get_ids(), true).unwrap(), text);
        let plain = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(plain.get_ids(), false).unwrap(), text);
    }
}

fn check_chat_round_trip(arch: Arch, tok: &Tokenizer, dir: &Path) {
    let bos = read_json(dir, "tokenizer_config.json")["bos_token"].clone();
    let ctx = json!({"messages": conversation(), "bos_token": bos, "add_generation_prompt": true});
    let rendered = render(&chat_template(dir), ctx).unwrap();
    match arch {
        Arch::Llama => {
            assert!(rendered
                .starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"));
            assert!(rendered.contains("Cutting Knowledge Date: December 2023\nToday Date: "));
            assert!(rendered.contains("You are a careful math tutor.<|eot_id|>"));
            assert!(rendered
                .ends_with("#### 20<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
        }
        Arch::Qwen2 => {
            assert!(rendered
                .starts_with("<|im_start|>system\nYou are a careful math tutor. <|im_end|>\n"));
            assert!(rendered.contains("<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n"));
            assert!(rendered.ends_with("#### 20<|im_end|>\n<|im_start|>assistant\n"));
        }
    }
    // apply_chat_template(tokenize=True) encodes without adding special tokens.
    let ids = tok
        .encode(rendered.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(tok.decode(&ids, false).unwrap(), rendered);
    for s in arch.special_tokens() {
        let id = tok.token_to_id(s).unwrap();
        let count = ids.iter().filter(|&&i| i == id).count();
        assert_eq!(count, rendered.matches(s).count(), "{s} is not one token");
    }
}

fn expected_tensors(arch: Arch, preset: Preset) -> Vec<(String, Vec<usize>)> {
    let s = preset.shape();
    let (d, hd, ffn) = (s.hidden, s.hidden / s.heads, s.intermediate);
    let (q, kv) = (s.heads * hd, s.kv_heads * hd);
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), vec![s.vocab, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        let mut layer = vec![
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![q, d]),
            ("self_attn.k_proj.weight", vec![kv, d]),
            ("self_attn.v_proj.weight", vec![kv, d]),
            ("self_attn.o_proj.weight", vec![d, q]),
            ("mlp.gate_proj.weight", vec![ffn, d]),
            ("mlp.up_proj.weight", vec![ffn, d]),
            ("mlp.down_proj.weight", vec![d, ffn]),
        ];
        if arch == Arch::Qwen2 {
            layer.push(("self_attn.q_proj.bias", vec![q]));
            layer.push(("self_attn.k_proj.bias", vec![kv]));
            layer.push(("self_attn.v_proj.bias", vec![kv]));
        }
        out.extend(
            layer
                .into_iter()
                .map(|(n, shape)| (format!("{p}.{n}"), shape)),
        );
    }
    out.sort();
    out
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn check_weights(arch: Arch, preset: Preset, dir: &Path) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut found: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            (name, view.shape().to_vec())
        })
        .collect();
    found.sort();
    assert_eq!(found, expected_tensors(arch, preset));
    for (name, view) in st.tensors() {
        let values = floats(view.data());
        if name.ends_with("norm.weight") {
            assert!(values.iter().all(|&v| v == 1.0), "{name}");
        } else {
            let n = values.len() as f64;
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = values
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let std = expected_std(preset.shape().hidden);
            // Four standard errors of the sample mean: small tensors (biases) vary.
            assert!(mean.abs() < 4.0 * std / n.sqrt(), "{name}: mean {mean}");
            assert!((var.sqrt() - std).abs() < 0.3 * std, "{name}: std {}", var.sqrt());
        }
    }
}

#[test]
fn llama_tiny_directory_is_complete_and_consistent() {
    check_directory(Arch::Llama, Preset::Tiny);
}

#[test]
fn llama_small_directory_is_complete_and_consistent() {
    check_directory(Arch::Llama, Preset::Small);
}

#[test]
fn qwen2_tiny_directory_is_complete_and_consistent() {
    check_directory(Arch::Qwen2, Preset::Tiny);
}

#[test]
fn qwen2_small_directory_is_complete_and_consistent() {
    check_directory(Arch::Qwen2, Preset::Small);
}

fn file_bytes(dir: &Path) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect()
}

#[test]
fn same_seed_gives_same_bytes_and_another_seed_other_weights() {
    for arch in Arch::ALL {
        let (_a, first) = make(arch, Preset::Tiny, 7);
        let (_b, again) = make(arch, Preset::Tiny, 7);
        let (_c, other) = make(arch, Preset::Tiny, 8);
        assert_eq!(file_bytes(&first), file_bytes(&again), "{arch}");
        for (name, (a, b)) in FILES
            .iter()
            .zip(file_bytes(&first).iter().zip(&file_bytes(&other)))
        {
            // The seed drives the weights only; the tokenizer comes from the corpus.
            assert_eq!(*name == "model.safetensors", a != b, "{arch} {name}");
        }
    }
}

#[test]
fn existing_output_is_refused_as_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = init_model_dir(&options(Arch::Llama, Preset::Tiny, &out, 0)).unwrap_err();
    assert_eq!(exit_code(&err), 2, "{err:#}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn missing_or_empty_corpus_is_usage_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    for corpus in [tmp.path().join("no-such-corpus.txt"), empty] {
        let out = tmp.path().join("model");
        let opts = InitOptions {
            corpus: Some(corpus.clone()),
            ..options(Arch::Qwen2, Preset::Tiny, &out, 0)
        };
        let err = init_model_dir(&opts).unwrap_err();
        assert_eq!(exit_code(&err), 2, "{err:#}");
        assert!(
            one_line(&err).contains(&corpus.display().to_string()),
            "{err:#}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn custom_corpus_trains_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let text = "seven plus eight is fifteen.\nnine times three is twenty-seven.\n\n".repeat(50);
    std::fs::write(&corpus, &text).unwrap();
    for arch in Arch::ALL {
        let out = tmp.path().join(arch.as_str());
        let opts = InitOptions {
            corpus: Some(corpus.clone()),
            ..options(arch, Preset::Tiny, &out, 0)
        };
        init_model_dir(&opts).unwrap();
        let tok = tokenizer(&out);
        // A corpus this small cannot fill the vocabulary; what it yields is a
        // valid tokenizer that knows its words.
        assert!(tok.get_vocab_size(true) < Preset::Tiny.shape().vocab);
        let ids = tok.encode(" fifteen", false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 1, "{arch}");
        let plain = tok.encode("Zebras? 42!", false).unwrap();
        assert_eq!(tok.decode(plain.get_ids(), false).unwrap(), "Zebras? 42!");
        check_special_ids(arch, &tok, &out);
    }
}

#[test]
fn chat_templates_render_tools_and_raise_on_misuse() {
    for arch in Arch::ALL {
        let (_tmp, dir) = make(arch, Preset::Tiny, 0);
        let template = chat_template(&dir);
        let tool = json!({"type": "function", "function": {"name": "add", "description": "Adds",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}});
        let call = json!({"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]});
        let messages = json!([
            {"role": "user", "content": "Add one."},
            call,
            {"role": "tool", "content": "1"},
        ]);
        let ctx = json!({"messages": messages, "tools": [tool], "bos_token": "<|begin_of_text|>",
            "add_generation_prompt": false});
        let rendered = render(&template, ctx).unwrap();
        assert!(rendered.contains("\"add\""), "{arch}: {rendered}");
        if arch == Arch::Llama {
            let two = json!({"role": "assistant", "tool_calls": [call["tool_calls"][0], call["tool_calls"][0]]});
            let ctx = json!({"messages": [{"role": "user", "content": "x"}, two], "bos_token": ""});
            let err = render(&template, ctx).unwrap_err();
            assert!(format!("{err:#}").contains("single tool-calls"), "{err:#}");
            let no_user = json!({"messages": [], "tools": [tool], "bos_token": ""});
            assert!(render(&template, no_user).is_err());
        }
    }
}

#[test]
fn builtin_corpus_is_deterministic_and_bounded() {
    let text = builtin_corpus();
    assert_eq!(text, builtin_corpus());
    assert!(
        (100_000..400_000).contains(&text.len()),
        "{} bytes",
        text.len()
    );
    assert!(text.contains("\n#### "));
    assert!(text.contains("assistant\n"));
}

#[test]
fn arch_and_preset_parse_their_cli_spellings() {
    assert_eq!(Arch::parse("llama").unwrap(), Arch::Llama);
    assert_eq!(Arch::parse("Qwen2").unwrap(), Arch::Qwen2);
    assert_eq!(Preset::parse("tiny").unwrap(), Preset::Tiny);
    assert_eq!(Preset::parse("SMALL").unwrap(), Preset::Small);
    assert_eq!(exit_code(&Arch::parse("gpt2").unwrap_err()), 2);
    assert_eq!(exit_code(&Preset::parse("huge").unwrap_err()), 2);
}

/// The std `l2d init` draws with: 1/sqrt(hidden), but never below transformers' 0.02.
fn expected_std(hidden: usize) -> f64 {
    (1.0 / (hidden as f64).sqrt()).max(0.02)
}
