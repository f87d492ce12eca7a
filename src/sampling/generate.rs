//! Batched autoregressive generation: left-padded prefill, then KV-cached decode.

use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use super::logits::TokenSampler;
use super::noise::RowNoise;
use crate::data::tokenizer::{TextStream, Tokenizer};
use crate::model::{AttentionMask, KvCache, Llama, Step};

/// How the logits of the next token are produced from the main path's last
/// hidden state: the base LM's head, or L2D's diffusion path over the cache.
pub trait NextTokenLogits {
    /// Logits `[B, V]` from the last hidden state `[B, 1, d]` of each row,
    /// drawing any randomness from `noise` (the same rows, at this token).
    fn logits(&mut self, model: &Llama, hidden: &Tensor, cache: &KvCache, step: &Step, noise: &RowNoise) -> Result<Tensor>;

    /// Network evaluations spent per generated token (1 for the base LM).
    fn evals_per_token(&self) -> f64;
}

/// The base LM: final norm and LM head.
pub struct BaseLm;

impl NextTokenLogits for BaseLm {
    fn logits(&mut self, model: &Llama, hidden: &Tensor, _: &KvCache, _: &Step, _: &RowNoise) -> Result<Tensor> {
        Ok(model.logits(hidden).squeeze_dim(1))
    }

    fn evals_per_token(&self) -> f64 {
        1.0
    }
}

/// Settings of one generation run.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Next-token selection.
    pub sampler: TokenSampler,
    /// Most tokens generated per prompt.
    pub max_new_tokens: usize,
    /// End-of-sequence ids are suppressed until this many tokens exist.
    pub min_new_tokens: usize,
    /// Generation ends when the completion text contains one of these (it is cut there).
    pub stop_strings: Vec<String>,
    /// Token ids that end generation.
    pub eos_ids: Vec<i64>,
    /// Id that fills left padding.
    pub pad_id: i64,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// An end-of-sequence token was generated.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` or the model's positions ran out.
    Length,
}

/// The result for one prompt.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, the final eos included.
    pub token_ids: Vec<i64>,
    /// Decoded completion, special tokens removed, cut at a stop string.
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Seconds of the batch's prefill.
    pub prefill_s: f64,
    /// Seconds from the first decode step until this row finished.
    pub decode_s: f64,
}

/// Per-row state while decoding.
struct Row {
    tokens: Vec<i64>,
    text: String,
    decoded: TextStream,
    streamed: usize,
    finish: Option<Finish>,
    decode_s: f64,
}

/// A batch after its prompt pass: the state decoding continues from.
pub struct Prefill {
    cache: KvCache,
    /// Main-path hidden state of each row's last prompt token, `[B, 1, d]`.
    hidden: Tensor,
    /// The prompt pass restricted to its last position.
    step: Step,
    /// Position of each row's last token, `[B, 1]`.
    positions: Tensor,
    /// `[B, S]` validity of the cached keys, when the prompts were padded.
    key_valid: Option<Tensor>,
    prompt_lens: Vec<usize>,
    /// Tokens that fit after the longest prompt.
    budget: i64,
    /// Seconds of the prompt pass.
    pub seconds: f64,
}

impl Prefill {
    /// An independent copy with its own KV cache, so the same prompts can be
    /// decoded again (another sampler setting) without a second prompt pass.
    pub fn duplicate(&self) -> Prefill {
        Prefill {
            cache: self.cache.duplicate(),
            hidden: self.hidden.shallow_clone(),
            step: self.step.last(),
            positions: self.positions.shallow_clone(),
            key_valid: self.key_valid.as_ref().map(Tensor::shallow_clone),
            prompt_lens: self.prompt_lens.clone(),
            budget: self.budget,
            seconds: self.seconds,
        }
    }
}

/// Runs the main path over the left-padded prompts (token ids) and keeps its KV cache.
pub fn prefill(model: &Llama, prompts: &[Vec<i64>], opts: &GenerateOptions) -> Result<Prefill> {
    prefill_masked(model, prompts, opts, &[])
}

/// [`prefill`], with every prompt token whose id is in `masked` kept out of attention (as a key, for
/// the prompt and every generated token) while keeping its position: what the reference's
/// `attention_mask = input_ids != pad_token_id` does to a prompt's `<|eot_id|>` when pad = eos.
pub fn prefill_masked(model: &Llama, prompts: &[Vec<i64>], opts: &GenerateOptions, masked: &[i64]) -> Result<Prefill> {
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let max_pos = model.config.max_position_embeddings;
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            crate::bail_usage!("prompt {i} is empty after tokenization");
        }
        if p.len() as i64 >= max_pos {
            crate::bail_usage!(
                "prompt {i} has {} tokens, more than the model's {max_pos} positions (max_position_embeddings) allow",
                p.len()
            );
        }
    }
    let budget = (opts.max_new_tokens as i64).min(max_pos - t);
    if budget < opts.max_new_tokens as i64 {
        tracing::warn!(
            "max_new_tokens {} is more than the model's {max_pos} positions (max_position_embeddings) leave after a {t}-token prompt; capped at {budget} new tokens",
            opts.max_new_tokens
        );
    }
    let (ids, valid) = left_pad(prompts, opts.pad_id, device);
    let padded = prompts.iter().any(|p| p.len() as i64 != t);
    let key_valid = if masked.is_empty() {
        padded.then(|| valid.shallow_clone())
    } else {
        let hidden_ids = Tensor::from_slice(masked).to_device(device);
        Some(valid.logical_and(&Tensor::isin(&ids, &hidden_ids, false, true)))
    };
    let positions = (valid.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let mut cache = model.new_cache(t + budget.max(0));

    let start = Instant::now();
    let step = model.step(positions.shallow_clone(), AttentionMask::new(key_valid.as_ref(), t, t, device));
    let hidden = model.forward_hidden(&ids, &step, &mut cache).narrow(1, t - 1, 1);
    sync(device);
    Ok(Prefill {
        cache,
        hidden,
        step: step.last(),
        positions: positions.narrow(1, t - 1, 1),
        key_valid,
        prompt_lens: prompts.iter().map(Vec::len).collect(),
        budget,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Generates a completion for each prompt (token ids), in one batch, each
/// row's draws keyed from libtorch's global generator ([`RowNoise::from_global_rng`]).
///
/// Without a tokenizer only token ids are produced (no text, no stop strings).
/// `on_text(row, delta)` receives completion text as it becomes final, for streaming.
pub fn generate(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    head: &mut dyn NextTokenLogits,
    prompts: &[Vec<i64>],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    let state = prefill(model, prompts, opts)?;
    decode(model, tokenizer, head, state, RowNoise::from_global_rng(prompts.len()), opts, on_text)
}

/// Decodes the completions of a prefilled batch with `head`, each row drawing
/// from its own stream of `noise` (one key per prompt).
pub fn decode(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    head: &mut dyn NextTokenLogits,
    state: Prefill,
    mut noise: RowNoise,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    let _guard = tch::no_grad_guard();
    let device = model.device();
    if tokenizer.is_none() && !opts.stop_strings.is_empty() {
        anyhow::bail!("stop strings need a tokenizer");
    }
    let Prefill { mut cache, hidden, step, mut positions, mut key_valid, prompt_lens, budget, seconds } = state;
    if noise.rows() != prompt_lens.len() {
        anyhow::bail!("{} noise keys for {} prompts", noise.rows(), prompt_lens.len());
    }
    let start = Instant::now();
    let mut logits = head.logits(model, &hidden, &cache, &step, &noise)?;
    sync(device);
    // The first token's logits belong to the prompt pass, as in the usual prefill / decode split.
    let prefill_s = seconds + start.elapsed().as_secs_f64();

    let mut rows: Vec<Row> = (0..prompt_lens.len())
        .map(|_| Row { tokens: Vec::new(), text: String::new(), decoded: TextStream::default(), streamed: 0, finish: None, decode_s: 0.0 })
        .collect();
    let mut active: Vec<usize> = (0..rows.len()).collect();
    let eos = Tensor::from_slice(&opts.eos_ids).to_device(device);
    let decode_start = Instant::now();
    for n in 0..budget as usize {
        if n < opts.min_new_tokens && !opts.eos_ids.is_empty() {
            let _ = logits.index_fill_(1, &eos, f64::NEG_INFINITY);
        }
        let next = opts.sampler.sample(&logits, &noise)?;
        let next_host: Vec<i64> = Vec::try_from(&next.to_device(Device::Cpu))?;
        for (slot, &row_idx) in active.iter().enumerate() {
            let row = &mut rows[row_idx];
            row.tokens.push(next_host[slot]);
            let last_step = n + 1 == budget as usize;
            row.finish = check_finish(row, tokenizer, opts, last_step)?;
            if row.finish.is_some() || last_step {
                row.decode_s = decode_start.elapsed().as_secs_f64();
            }
            stream(row_idx, row, opts, on_text);
        }
        let keep: Vec<i64> = (0..active.len() as i64).filter(|&s| rows[active[s as usize]].finish.is_none()).collect();
        if keep.is_empty() || n + 1 == budget as usize {
            break;
        }
        let mut next = next.unsqueeze(1);
        if keep.len() < active.len() {
            let index = Tensor::from_slice(&keep).to_device(device);
            cache.select_rows(&index);
            next = next.index_select(0, &index);
            positions = positions.index_select(0, &index);
            key_valid = key_valid.map(|k| k.index_select(0, &index));
            active = keep.iter().map(|&s| active[s as usize]).collect();
            noise.keep(&keep);
        }
        noise.advance();
        positions = &positions + 1;
        key_valid = key_valid.map(|k| Tensor::cat(&[k, Tensor::ones([active.len() as i64, 1], (Kind::Bool, device))], 1));
        let step = model.step(positions.shallow_clone(), AttentionMask::new(key_valid.as_ref(), 1, cache.len() + 1, device));
        let hidden = model.forward_hidden(&next, &step, &mut cache);
        logits = head.logits(model, &hidden, &cache, &step, &noise)?;
    }
    Ok(rows
        .into_iter()
        .zip(prompt_lens)
        .map(|(row, prompt_tokens)| Generation {
            finish: row.finish.unwrap_or(Finish::Length),
            token_ids: row.tokens,
            text: row.text,
            prompt_tokens,
            prefill_s,
            decode_s: row.decode_s,
        })
        .collect())
}

/// `[B, T]` ids left-padded with `pad`, and the mask of real tokens.
fn left_pad(prompts: &[Vec<i64>], pad: i64, device: Device) -> (Tensor, Tensor) {
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * t);
    let mut valid = Vec::with_capacity(prompts.len() * t);
    for p in prompts {
        let pad_len = t - p.len();
        ids.extend(std::iter::repeat_n(pad, pad_len).chain(p.iter().copied()));
        valid.extend(std::iter::repeat_n(false, pad_len).chain(std::iter::repeat_n(true, p.len())));
    }
    let shape = [prompts.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&valid).view(shape).to_device(device),
    )
}

/// Extends the row's text by its newest token and decides whether the row has
/// ended. An ended row's text is the decode of all its tokens, cut at the first
/// stop string: exactly what a decode of the whole completion gives.
fn check_finish(row: &mut Row, tokenizer: Option<&Tokenizer>, opts: &GenerateOptions, last_step: bool) -> Result<Option<Finish>> {
    let last = *row.tokens.last().expect("a token was just pushed");
    let eos = opts.eos_ids.contains(&last);
    let Some(tokenizer) = tokenizer else {
        return Ok(eos.then_some(Finish::Eos));
    };
    let searched = row.text.len();
    row.text += &tokenizer.decode_next(&mut row.decoded, &row.tokens)?;
    let stop = first_stop(&row.text, searched, opts).is_some();
    if !(stop || eos || last_step) {
        return Ok(None);
    }
    row.text = tokenizer.decode(&row.tokens)?;
    if let Some(cut) = first_stop(&row.text, 0, opts) {
        row.text.truncate(cut);
        return Ok(Some(Finish::Stop));
    }
    Ok(eos.then_some(Finish::Eos))
}

/// Byte offset of the first stop string in `text` that ends after byte `from`
/// (the text before it was searched already).
fn first_stop(text: &str, from: usize, opts: &GenerateOptions) -> Option<usize> {
    let start = before_stop_prefix(text, from, opts);
    opts.stop_strings.iter().filter_map(|s| text[start..].find(s.as_str())).min().map(|i| start + i)
}

/// `end` moved back by the longest stop string's length less one byte, to a
/// char boundary: the earliest a stop string not yet complete at `end` can start.
fn before_stop_prefix(text: &str, end: usize, opts: &GenerateOptions) -> usize {
    let hold = opts.stop_strings.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
    let mut start = end.saturating_sub(hold);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    start
}

/// Emits the part of the row's text that can no longer change: not a possible
/// prefix of a stop string (incomplete characters never enter the text).
fn stream(row_idx: usize, row: &mut Row, opts: &GenerateOptions, on_text: &mut dyn FnMut(usize, &str)) {
    let end = match row.finish {
        Some(_) => row.text.len(),
        None => before_stop_prefix(&row.text, row.text.len(), opts),
    };
    if end > row.streamed {
        on_text(row_idx, &row.text[row.streamed..end]);
        row.streamed = end;
    }
}

fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}
