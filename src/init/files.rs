//! The JSON files of the model directory, keyed as `transformers` writes them.

use super::tokenizer::SpecialIds;
use super::weights::init_std;
use super::{templates, Arch, Shape};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Writes `value` as pretty JSON with a final newline into `dir/name`.
pub(crate) fn write_json(dir: &Path, name: &str, value: &Value) -> Result<()> {
    let path = dir.join(name);
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `config.json`.
pub(crate) fn config(arch: Arch, s: &Shape, ids: &SpecialIds) -> Value {
    let mut c = json!({
        "architectures": [arch.hf_class()],
        "model_type": arch.as_str(),
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "max_position_embeddings": s.max_positions,
        "hidden_act": "silu",
        "initializer_range": init_std(s.hidden),
        "attention_dropout": 0.0,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    let extra = match arch {
        Arch::Llama => llama_config(s, ids),
        Arch::Qwen2 => qwen2_config(s, ids),
    };
    merge(&mut c, extra);
    c
}

fn llama_config(s: &Shape, ids: &SpecialIds) -> Value {
    json!({
        "head_dim": s.head_dim(),
        "attention_bias": false,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            // Below max_position_embeddings, as in the real models (transformers warns otherwise).
            "original_max_position_embeddings": s.max_positions / 4,
        },
        "bos_token_id": ids.get("<|begin_of_text|>"),
        "eos_token_id": llama_eos(ids),
    })
}

/// Qwen 2 has q/k/v biases unconditionally, so its config has no `attention_bias`.
fn qwen2_config(s: &Shape, ids: &SpecialIds) -> Value {
    json!({
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": false,
        "sliding_window": s.max_positions,
        "max_window_layers": s.layers,
        "bos_token_id": ids.get("<|endoftext|>"),
        "eos_token_id": ids.get("<|im_end|>"),
    })
}

/// Llama 3.2 Instruct stops at end of text and at end of turn.
fn llama_eos(ids: &SpecialIds) -> Value {
    json!([ids.get("<|end_of_text|>"), ids.get("<|eot_id|>")])
}

/// `generation_config.json`, with each family's published sampling defaults.
pub(crate) fn generation_config(arch: Arch, ids: &SpecialIds) -> Value {
    match arch {
        Arch::Llama => json!({
            "bos_token_id": ids.get("<|begin_of_text|>"),
            "eos_token_id": llama_eos(ids),
            "do_sample": true,
            "temperature": 0.6,
            "top_p": 0.9,
        }),
        Arch::Qwen2 => json!({
            "bos_token_id": ids.get("<|endoftext|>"),
            "pad_token_id": ids.get("<|endoftext|>"),
            "eos_token_id": [ids.get("<|im_end|>"), ids.get("<|endoftext|>")],
            "do_sample": true,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "repetition_penalty": 1.05,
        }),
    }
}

/// `tokenizer_config.json` for `PreTrainedTokenizerFast`.
pub(crate) fn tokenizer_config(arch: Arch, s: &Shape, ids: &SpecialIds) -> Value {
    let mut c = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added_tokens_decoder(ids),
        "model_max_length": s.max_positions,
        "model_input_names": ["input_ids", "attention_mask"],
        // Cleaning would turn " ," into "," on decode and break round trips.
        "clean_up_tokenization_spaces": false,
    });
    let extra = match arch {
        Arch::Llama => json!({
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "chat_template": templates::LLAMA,
        }),
        Arch::Qwen2 => json!({
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": null,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "split_special_tokens": false,
            "errors": "replace",
            "chat_template": templates::QWEN2,
        }),
    };
    merge(&mut c, extra);
    c
}

/// `{"<id>": {"content": ..., "special": true, ...}}`, as `save_pretrained` writes it.
fn added_tokens_decoder(ids: &SpecialIds) -> Value {
    let entries = ids.by_id().into_iter().map(|(id, content)| {
        let token = json!({
            "content": content,
            "lstrip": false,
            "normalized": false,
            "rstrip": false,
            "single_word": false,
            "special": true,
        });
        (id.to_string(), token)
    });
    Value::Object(entries.collect())
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, extra) {
        a.extend(b);
    }
}
