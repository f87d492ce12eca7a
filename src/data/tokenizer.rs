//! A model directory's tokenizer: `tokenizer.json`, its chat template and its stop tokens.

use anyhow::{Context, Result};
use std::path::Path;

use super::chat::{ChatTemplate, Message, TokenizerConfig};
use super::pyjinja::is_python_space;
use crate::error::{usage, OrUsage};

/// Tokenizer plus what generation needs from the model directory.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
    /// Ids that end generation: `generation_config.json`, else `config.json`, else the eos token.
    pub eos_ids: Vec<i64>,
    /// Id used to fill left padding (never attended to).
    pub pad_id: i64,
    /// `eos_token` of tokenizer_config.json: the one stop token of the reference's evaluation.
    pub eos_token_id: Option<i64>,
    /// `pad_token` of tokenizer_config.json, if it names one.
    pad_token_id: Option<i64>,
}

impl Tokenizer {
    /// Loads the tokenizer files of a Hugging Face model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            crate::bail_usage!("{}: missing (the model directory needs a tokenizer)", path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| usage(format!("{}: cannot parse: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() { Some(TokenizerConfig::load(&cfg_path)?) } else { None };
        let chat = match &cfg {
            Some(c) => c.fixed_date_template().with_context(|| format!("{}: field chat_template", cfg_path.display()))?,
            None => None,
        };
        let mut eos_ids = generation_eos_ids(dir)?;
        if eos_ids.is_empty() {
            eos_ids = config_eos_ids(dir)?;
        }
        if eos_ids.is_empty() {
            if let Some(id) = cfg.as_ref().and_then(|c| c.eos_token.as_deref()).and_then(|t| inner.token_to_id(t)) {
                eos_ids.push(id as i64);
            }
        }
        let pad_token_id =
            cfg.as_ref().and_then(|c| c.pad_token.as_deref()).and_then(|t| inner.token_to_id(t)).map(|id| id as i64);
        let pad_id = pad_token_id.or_else(|| eos_ids.first().copied()).unwrap_or(0);
        let eos_token_id =
            cfg.as_ref().and_then(|c| c.eos_token.as_deref()).and_then(|t| inner.token_to_id(t)).map(|id| id as i64);
        Ok(Self { inner, chat, eos_ids, pad_id, eos_token_id, pad_token_id })
    }

    /// The reference's pad token: `pad_token`, else `eos_token` (`pipeline/util.py:179-180`).
    pub fn reference_pad_id(&self) -> Option<i64> {
        self.pad_token_id.or(self.eos_token_id)
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. Llama's bos).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`, special tokens removed.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, true).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    }

    /// The text that the newest token of `tokens` adds to a completion, decoded
    /// in time independent of the completion's length (see [`TextStream`]).
    pub fn decode_next(&self, stream: &mut TextStream, tokens: &[i64]) -> Result<String> {
        let before = self.decode(&tokens[stream.prefix..stream.read])?;
        let after = self.decode(&tokens[stream.prefix..])?;
        // A trailing U+FFFD is a character whose bytes are still coming.
        match after.get(before.len()..) {
            Some(delta) if !delta.is_empty() && after.starts_with(&before) && !after.ends_with('\u{FFFD}') => {
                stream.prefix = stream.read;
                stream.read = tokens.len();
                Ok(delta.to_string())
            }
            _ => Ok(String::new()),
        }
    }

    /// Token ids of a chat prompt rendered with the model's own template and the
    /// generation prompt, tokenized without extra special tokens as transformers does.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<i64>> {
        self.encode(&self.render_chat(messages, true)?, false)
    }

    /// A chat prompt's text: with the generation prompt, or, when the last turn is the assistant's,
    /// continuing that turn as `continue_final_message` does in transformers 4.46.3 (the reference's
    /// pin): the text is cut after the last occurrence of the turn's stripped content, then right-stripped,
    /// so a trailing newline of the turn is not in the prompt whether the template trims or not.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        let Some(last) = messages.last().filter(|m| m.role == "assistant") else {
            return self.render_chat(messages, true);
        };
        let text = self.render_chat(messages, false)?;
        let needle = last.content.trim_matches(is_python_space);
        let end = text.rfind(needle).map(|p| p + needle.len()).ok_or_else(|| {
            usage("chat_template: the final assistant turn does not appear in the rendered prompt, so it cannot be continued")
        })?;
        Ok(text[..end].trim_end_matches(is_python_space).to_string())
    }

    /// Renders chat prompts with the template `source` instead of the model's own, keeping its special
    /// tokens (the paper protocol's reference template for Llama models).
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        let Some(chat) = &self.chat else {
            crate::bail_usage!("the model directory's tokenizer_config.json has no chat_template");
        };
        self.chat = Some(chat.with_source(source)?);
        Ok(())
    }

    /// The model's chat template applied to `messages`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(chat) = &self.chat else {
            crate::bail_usage!("the model directory's tokenizer_config.json has no chat_template");
        };
        chat.render(messages, add_generation_prompt)
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// Number of tokens the tokenizer knows, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Parses a token id field that is an int, a list of ints, or absent.
pub fn token_ids(value: Option<&serde_json::Value>) -> Vec<i64> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_i64()).collect(),
        _ => Vec::new(),
    }
}

fn generation_eos_ids(dir: &Path) -> Result<Vec<i64>> {
    read_eos_field(&dir.join("generation_config.json"))
}

fn config_eos_ids(dir: &Path) -> Result<Vec<i64>> {
    read_eos_field(&dir.join("config.json"))
}

fn read_eos_field(path: &Path) -> Result<Vec<i64>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).or_usage(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{}: malformed JSON: {e}", path.display())))?;
    Ok(token_ids(value.get("eos_token_id")))
}

/// Where [`Tokenizer::decode_next`] is in a growing completion. Each new
/// token is decoded together with the tokens since the last emitted text and
/// the difference taken: the leading-space and byte-merging rules of the
/// decoder see the same neighbours as in a decode of the whole text, which
/// would cost time linear in its length at every step.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    /// Start of the tokens decoded for context.
    prefix: usize,
    /// Tokens before this are in the emitted text.
    read: usize,
}
