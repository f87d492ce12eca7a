//! `l2d generate`: completions from a model directory.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::parse_flag;
use crate::config::Config;
use crate::data::chat::Message;
use crate::data::tokenizer::Tokenizer;
use crate::error::{usage, OrUsage};
use crate::l2d::checkpoint::Checkpoint;
use crate::l2d::sampler::{L2dHead, SamplerOptions};
use crate::l2d::L2dDecoder;
use crate::sampling::{decode, prefill, BaseLm, GenerateOptions, Generation, NextTokenLogits, RowNoise, TokenSampler};
use crate::session::Session;

/// Flags of `l2d generate`; each overrides the config's `[generate]` / `[model]` value.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArgs,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// One prompt.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// JSONL file, one `{"prompt": ...}` or `{"messages": [...]}` object per line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub prompts: Option<PathBuf>,
    /// Render prompts with the model's chat template and its generation prompt.
    #[arg(long)]
    pub chat: bool,
    /// System message for `--chat` prompts.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most new tokens per prompt.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// End-of-sequence is suppressed until this many tokens exist.
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Random seed: the draws of the i-th prompt depend on (seed, i) alone, not on --batch-size.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the completion contains this text (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// One JSON object per prompt instead of the completion text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub l2d: L2dArgs,
}

/// The L2D flags of `l2d generate`; each overrides the config's `[l2d]` value.
#[derive(Debug, clap::Args)]
pub struct L2dArgs {
    /// L2D checkpoint directory, or a bare `.safetensors` export (hyper-parameters
    /// from `--config`/`--set l2d.*`); without it, the base LM generates.
    #[arg(long, value_name = "CKPT")]
    pub l2d: Option<PathBuf>,
    /// Discretisation levels S of the time grid (midpoint: 2S-1 evaluations per token).
    #[arg(long, requires = "l2d")]
    pub steps: Option<usize>,
    /// ODE solver: euler, midpoint, rk4, bosh3, dopri5, adaptive_heun.
    #[arg(long, requires = "l2d")]
    pub solver: Option<String>,
    /// How x1 is estimated from the logits: sample or average.
    #[arg(long, requires = "l2d")]
    pub x1_estimate: Option<String>,
    /// Constant temperature of the x1 estimate (0 = argmax).
    #[arg(long, requires = "l2d", conflicts_with = "x1_schedule", allow_negative_numbers = true)]
    pub x1_temperature: Option<f64>,
    /// Temperature schedule, e.g. polynomial_1_1.0 ((1 - t/end)^p).
    #[arg(long, requires = "l2d")]
    pub x1_schedule: Option<String>,
    /// Classifier-free guidance towards this class.
    #[arg(long, requires = "l2d")]
    pub guidance_class: Option<i64>,
    /// Guidance weight w (>= 1).
    #[arg(long, requires = "guidance_class", allow_negative_numbers = true)]
    pub guidance_weight: Option<f64>,
    /// Absolute tolerance of adaptive solvers.
    #[arg(long, requires = "l2d")]
    pub atol: Option<f64>,
    /// Relative tolerance of adaptive solvers.
    #[arg(long, requires = "l2d")]
    pub rtol: Option<f64>,
}

/// One prompt line of `--prompts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
}

/// What one prompt is, before tokenization.
enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

impl Args {
    /// The config with this command's flags, then the checkpoint's shape, applied on top.
    fn resolved_config(&self, ckpt: Option<&Checkpoint>) -> Result<Config> {
        let mut cfg = self.config.load()?;
        let g = &mut cfg.generate;
        set(&mut g.max_new_tokens, self.max_new_tokens);
        set(&mut g.min_new_tokens, self.min_new_tokens);
        set(&mut g.temperature, self.temperature);
        set(&mut g.top_p, self.top_p);
        set(&mut g.top_k, self.top_k);
        set(&mut g.seed, self.seed);
        if !self.stop.is_empty() {
            g.stop = self.stop.clone();
        }
        let l = &mut cfg.l2d;
        let a = &self.l2d;
        if let Some(ckpt) = ckpt {
            ckpt.apply_shape(l);
        }
        set(&mut l.steps, a.steps);
        set(&mut l.solver, a.solver.as_deref().map(|s| parse_flag("--solver", "l2d.solver", s)).transpose()?);
        set(&mut l.x1_estimate, a.x1_estimate.as_deref().map(|s| parse_flag("--x1-estimate", "l2d.x1_estimate", s)).transpose()?);
        set(&mut l.x1_temperature, a.x1_temperature);
        if let Some(s) = &a.x1_schedule {
            l.x1_schedule = parse_flag("--x1-schedule", "l2d.x1_schedule", s)?;
            l.x1_temperature = 1.0;
        }
        if a.guidance_class.is_some() {
            l.guidance_class = a.guidance_class;
        }
        set(&mut l.guidance_weight, a.guidance_weight);
        set(&mut l.atol, a.atol);
        set(&mut l.rtol, a.rtol);
        self.model.apply(&mut cfg.model)?;
        cfg.validate().map_err(|e| super::name_flags(e, FLAG_KEYS))?;
        Ok(cfg)
    }
}

/// Config keys that this command's flags set, so errors name both and `--help` shows their defaults.
pub(crate) const FLAG_KEYS: &[(&str, &str)] = &[
    ("model.device", "--device"),
    ("model.dtype", "--dtype"),
    ("generate.temperature", "--temperature"),
    ("generate.top_p", "--top-p"),
    ("generate.top_k", "--top-k"),
    ("generate.max_new_tokens", "--max-new-tokens"),
    ("generate.min_new_tokens", "--min-new-tokens"),
    ("generate.seed", "--seed"),
    ("l2d.steps", "--steps"),
    ("l2d.solver", "--solver"),
    ("l2d.x1_estimate", "--x1-estimate"),
    ("l2d.x1_temperature", "--x1-temperature"),
    ("l2d.x1_schedule", "--x1-schedule"),
    ("l2d.guidance_class", "--guidance-class"),
    ("l2d.guidance_weight", "--guidance-weight"),
    ("l2d.atol", "--atol"),
    ("l2d.rtol", "--rtol"),
];

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Loads the model, generates for every prompt, prints text or JSON lines.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.l2d.l2d.as_deref().map(Checkpoint::open).transpose().context("--l2d")?;
    let cfg = args.resolved_config(ckpt.as_ref())?;
    if args.batch_size == 0 {
        crate::bail_usage!("--batch-size: must be at least 1");
    }
    let prompts = match (&args.prompt, &args.prompts) {
        (Some(p), None) => vec![(None, if args.chat { Prompt::Chat(vec![user(p)]) } else { Prompt::Text(p.clone()) })],
        (None, Some(path)) => read_prompts(path, args.chat)?,
        _ => crate::bail_usage!("give --prompt TEXT or --prompts FILE.jsonl"),
    };
    let session = Session::open(&cfg.model)?;
    let (model, tokenizer) = (&session.model, &session.tokenizer);
    let encoded = prompts
        .iter()
        .map(|(_, p)| encode(tokenizer, p, args.system.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let g = &cfg.generate;
    let opts = GenerateOptions {
        sampler: TokenSampler { temperature: g.temperature, top_k: g.top_k as i64, top_p: g.top_p },
        max_new_tokens: g.max_new_tokens,
        min_new_tokens: g.min_new_tokens,
        stop_strings: g.stop.clone(),
        eos_ids: tokenizer.eos_ids.clone(),
        pad_id: tokenizer.pad_id,
    };
    let decoder = match &ckpt {
        Some(ckpt) => Some(L2dDecoder::new(model, &session.load_l2d(ckpt, &cfg.l2d).context("--l2d")?)),
        None => None,
    };
    let mut head: Box<dyn NextTokenLogits + '_> = match &decoder {
        Some(decoder) => Box::new(L2dHead::new(decoder, SamplerOptions::from_config(&cfg.l2d))),
        None => Box::new(BaseLm),
    };
    let stream = prompts.len() == 1 && !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut out = std::io::stdout().lock();
    for (chunk_idx, chunk) in encoded.chunks(args.batch_size).enumerate() {
        let mut on_text = |_: usize, delta: &str| {
            if stream {
                let mut o = std::io::stdout();
                let _ = o.write_all(delta.as_bytes()).and_then(|_| o.flush());
            }
        };
        let first = chunk_idx * args.batch_size;
        let noise = RowNoise::new((first..first + chunk.len()).map(|i| prompt_key(g.seed, i)).collect());
        let state = prefill(model, chunk, &opts)?;
        let results = decode(model, Some(tokenizer), head.as_mut(), state, noise, &opts, &mut on_text)?;
        for (i, gen) in results.iter().enumerate() {
            let (id, prompt) = &prompts[chunk_idx * args.batch_size + i];
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&json_record(id, prompt, gen, head.evals_per_token()))?)?;
            } else if stream {
                writeln!(out)?;
            } else {
                writeln!(out, "{}", gen.text)?;
            }
        }
    }
    Ok(())
}

/// The key of prompt `index` (0-based, in input order): its draws depend on the
/// seed and its place alone, not on `--batch-size`.
fn prompt_key(seed: u64, index: usize) -> u64 {
    RowNoise::key(seed, &[&index.to_string()])
}

fn user(text: &str) -> Message {
    Message { role: "user".into(), content: text.into() }
}

fn encode(tokenizer: &Tokenizer, prompt: &Prompt, system: Option<&str>) -> Result<Vec<i64>> {
    match prompt {
        Prompt::Text(text) => tokenizer.encode(text, true),
        Prompt::Chat(messages) => {
            let mut all = Vec::new();
            if let Some(s) = system {
                all.push(Message { role: "system".into(), content: s.into() });
            }
            all.extend(messages.iter().cloned());
            tokenizer.encode_chat(&all).context("--chat")
        }
    }
}

/// Reads `--prompts`; every bad line is named by file and line number.
fn read_prompts(path: &Path, chat: bool) -> Result<Vec<(Option<serde_json::Value>, Prompt)>> {
    let text = std::fs::read_to_string(path).or_usage(|| format!("--prompts: cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let rec: PromptLine = serde_json::from_str(line)
            .map_err(|e| usage(format!("{}: expected {{\"prompt\": TEXT}} or {{\"messages\": [...]}}: {e}", at())))?;
        let prompt = match (rec.prompt, rec.messages) {
            (Some(p), None) if chat => Prompt::Chat(vec![user(&p)]),
            (Some(p), None) => Prompt::Text(p),
            (None, Some(m)) => Prompt::Chat(m),
            _ => crate::bail_usage!("{}: give exactly one of \"prompt\" and \"messages\"", at()),
        };
        out.push((rec.id, prompt));
    }
    if out.is_empty() {
        crate::bail_usage!("--prompts: {} holds no prompts", path.display());
    }
    Ok(out)
}

/// The `--json` record of one prompt.
fn json_record(id: &Option<serde_json::Value>, prompt: &Prompt, g: &Generation, evals_per_token: f64) -> serde_json::Value {
    let prompt = match prompt {
        Prompt::Text(t) => serde_json::Value::String(t.clone()),
        Prompt::Chat(m) => serde_json::to_value(m).unwrap_or_default(),
    };
    // The first new token comes from the prefill; decode time covers the rest.
    let decoded = g.token_ids.len().saturating_sub(1);
    let decode_tokens_per_s = if g.decode_s > 0.0 { decoded as f64 / g.decode_s } else { 0.0 };
    let mut rec = serde_json::json!({
        "prompt": prompt,
        "completion": g.text,
        "completion_token_ids": g.token_ids,
        "prompt_tokens": g.prompt_tokens,
        "new_tokens": g.token_ids.len(),
        "finish_reason": g.finish,
        "prefill_s": g.prefill_s,
        "decode_s": g.decode_s,
        "decode_tokens_per_s": decode_tokens_per_s,
        "nfe_per_token": evals_per_token,
    });
    if let Some(id) = id {
        rec["id"] = id.clone();
    }
    rec
}
