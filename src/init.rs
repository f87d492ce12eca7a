//! `l2d init`: writes a complete, random-initialised Hugging Face model directory.
//!
//! The directory holds what `transformers` and this crate need to load a
//! Llama 3.x or Qwen 2.5 checkpoint: `config.json`, `generation_config.json`,
//! `model.safetensors`, `tokenizer.json` (a byte-level BPE trained here) and
//! `tokenizer_config.json` with the family's chat template. With `--task` it
//! writes a bundled task's data instead ([`init_task_dir`]).

mod corpus;
mod files;
mod lexicon;
mod task;
mod templates;
mod tokenizer;
mod weights;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub use corpus::builtin_corpus;
pub use task::{init_task_dir, Task, TaskOptions};

/// Model family of the generated checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `LlamaForCausalLM`, laid out like Llama 3.2.
    Llama,
    /// `Qwen2ForCausalLM`, laid out like Qwen 2.5.
    Qwen2,
}

impl Arch {
    /// Every family, in the order the CLI lists them.
    pub const ALL: [Arch; 2] = [Arch::Llama, Arch::Qwen2];

    /// Parses the `--arch` value (`llama` or `qwen2`, any case).
    pub fn parse(s: &str) -> Result<Arch> {
        match s.to_ascii_lowercase().as_str() {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            _ => crate::bail_usage!("unknown architecture '{s}' (expected llama or qwen2)"),
        }
    }

    /// The `--arch` spelling, which is also the Hugging Face `model_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// The `architectures` entry of `config.json`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// The special tokens, in id order; they follow the trained BPE vocabulary.
    pub fn special_tokens(self) -> &'static [&'static str] {
        match self {
            Arch::Llama => &[
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            Arch::Qwen2 => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        }
    }

    /// Whether q/k/v projections carry a bias (Qwen 2 always does, Llama not).
    pub fn qkv_bias(self) -> bool {
        matches!(self, Arch::Qwen2)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size preset of the generated checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// About 0.1M parameters: for unit tests.
    Tiny,
    /// About 4M parameters: for quick end-to-end demos.
    Small,
    /// The shapes of Llama-3.2-1B-Instruct (1.24B parameters): for benchmarks on a GPU.
    OneB,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Small, Preset::OneB];

    /// Parses the `--preset` value (`tiny`, `small` or `1b`, any case).
    pub fn parse(s: &str) -> Result<Preset> {
        match s.to_ascii_lowercase().as_str() {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            "1b" => Ok(Preset::OneB),
            _ => crate::bail_usage!("unknown preset '{s}' (expected tiny, small or 1b)"),
        }
    }

    /// The `--preset` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::OneB => "1b",
        }
    }

    /// The transformer dimensions of this preset.
    pub fn shape(self) -> Shape {
        match self {
            Preset::Tiny => Shape {
                hidden: 64,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                intermediate: 172,
                vocab: 512,
                max_positions: 4096,
            },
            Preset::Small => Shape {
                hidden: 256,
                layers: 4,
                heads: 8,
                kv_heads: 4,
                intermediate: 688,
                vocab: 4096,
                max_positions: 2048,
            },
            Preset::OneB => Shape {
                hidden: 2048,
                layers: 16,
                heads: 32,
                kv_heads: 8,
                intermediate: 8192,
                vocab: 128256,
                max_positions: 32768,
            },
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transformer dimensions, named after their `config.json` meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `intermediate_size` of the SwiGLU MLP.
    pub intermediate: usize,
    /// `vocab_size`: rows of the (tied) embedding; the tokenizer never exceeds it.
    pub vocab: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
}

impl Shape {
    /// `head_dim`: `hidden / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// What `l2d init` was asked to produce.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Model family.
    pub arch: Arch,
    /// Size preset.
    pub preset: Preset,
    /// Destination directory; must not exist yet.
    pub out: PathBuf,
    /// Seed of the weight initialisation.
    pub seed: u64,
    /// Plain-text file to train the tokenizer on; `None` uses [`builtin_corpus`].
    pub corpus: Option<PathBuf>,
}

/// Writes the model directory `opts.out` atomically: whole or not at all.
pub fn init_model_dir(opts: &InitOptions) -> Result<()> {
    // Read the corpus first, so that a bad --corpus leaves no trace on disk.
    let text = match &opts.corpus {
        Some(path) => read_corpus(path)?,
        None => builtin_corpus(),
    };
    let staged = crate::io::StagedDir::new(&opts.out)?;
    write_model_files(staged.path(), opts, &text)?;
    staged.commit()?;
    Ok(())
}

fn write_model_files(dir: &Path, opts: &InitOptions, text: &str) -> Result<()> {
    let (arch, shape) = (opts.arch, opts.preset.shape());
    let trained = tokenizer::train(arch, shape.vocab, text)?;
    write(dir, "tokenizer.json", trained.json.as_bytes())?;
    let ids = &trained.ids;
    let json_files = [
        ("config.json", files::config(arch, &shape, ids)),
        (
            "generation_config.json",
            files::generation_config(arch, ids),
        ),
        (
            "tokenizer_config.json",
            files::tokenizer_config(arch, &shape, ids),
        ),
    ];
    for (name, value) in &json_files {
        files::write_json(dir, name, value)?;
    }
    weights::write_safetensors(&dir.join("model.safetensors"), arch, &shape, opts.seed)
}

/// Reads a user corpus; a missing, unreadable or empty file is the user's mistake.
fn read_corpus(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::usage(format!("cannot read corpus file {}: {e}", path.display()))
    })?;
    if text.trim().is_empty() {
        crate::bail_usage!("corpus file {} is empty", path.display());
    }
    Ok(text)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
