//! Chat prompts rendered from a model's own chat template, byte for byte the way
//! Hugging Face `transformers` renders them with `apply_chat_template`.
//!
//! `transformers` compiles the template with Jinja2 (`ImmutableSandboxedEnvironment`,
//! `trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension) and adds a
//! `tojson` filter plus the `raise_exception` and `strftime_now` globals. We use
//! minijinja and patch the places where it behaves differently from Jinja2 on a
//! Python runtime: JSON layout, Python's whitespace set for `trim`, Python's
//! spelling of `None`/`True`/floats in output, and insertion-ordered dicts.

use std::path::Path;

use anyhow::Context as _;
use chrono::NaiveDate;
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment};
use serde::{Deserialize, Serialize};

use super::pyjinja::{
    flatten, python_formatter, python_trim, raise_exception, raised_message, strftime_now, tojson, OrderedJson,
    OrderedMap,
};
use crate::error::usage;

/// Name under which the template is registered; it shows up in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn: `role` is `system`, `user`, `assistant` (or `tool`), `content` its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// What they say.
    pub content: String,
}

impl Message {
    /// Builds a message from anything string-like.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The date Llama 3 templates print ("Today Date"): fixed, as the reference fixes
/// it, so that training, generation and evaluation prompts are reproducible.
pub const TEMPLATE_DATE: (i32, u32, u32) = (2024, 7, 26);

/// The parts of a Hugging Face `tokenizer_config.json` that prompt building needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// Jinja source of the chat template (`default` entry when the file lists several).
    pub chat_template: Option<String>,
    /// Beginning-of-sequence token text.
    pub bos_token: Option<String>,
    /// End-of-sequence token text.
    pub eos_token: Option<String>,
    /// Padding token text.
    pub pad_token: Option<String>,
    /// Whether the tokenizer prepends `bos_token` itself.
    pub add_bos_token: Option<bool>,
    /// Longest input the tokenizer accepts; some files store 1e30 to mean "unbounded".
    pub model_max_length: Option<f64>,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json`; a `chat_template.jinja` beside it wins, as in `transformers`.
    pub fn load(path: &Path) -> anyhow::Result<TokenizerConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(usage(format!("{}: file not found", path.display())));
            }
            Err(err) => {
                return Err(
                    anyhow::Error::new(err).context(format!("cannot read {}", path.display()))
                );
            }
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|err| usage(format!("{}: invalid JSON: {err}", path.display())))?;
        let mut config =
            Self::from_json(&json).map_err(|msg| usage(format!("{}: {msg}", path.display())))?;

        // Recent `transformers` saves the template as its own file and lets it
        // override the config entry, so a fine-tuned checkpoint may only have it there.
        let sidecar = path.with_file_name("chat_template.jinja");
        if sidecar.is_file() {
            let source = std::fs::read_to_string(&sidecar)
                .with_context(|| format!("cannot read {}", sidecar.display()))?;
            config.chat_template = Some(source);
        }
        Ok(config)
    }

    /// Builds the model's [`ChatTemplate`] with this config's `bos_token` and `eos_token`.
    pub fn template(&self) -> anyhow::Result<ChatTemplate> {
        let Some(source) = &self.chat_template else {
            return Err(usage(
                "tokenizer config has no chat_template (is this a base model rather than an instruct model?)",
            ));
        };
        ChatTemplate::new(source, self.bos_token.clone(), self.eos_token.clone())
    }

    /// The chat template as l2d renders it everywhere: the model's own with the date
    /// fixed to [`TEMPLATE_DATE`]; none if the config has none.
    pub fn fixed_date_template(&self) -> anyhow::Result<Option<ChatTemplate>> {
        if self.chat_template.is_none() {
            return Ok(None);
        }
        let (y, m, d) = TEMPLATE_DATE;
        let date = NaiveDate::from_ymd_opt(y, m, d).expect("a valid date");
        Ok(Some(self.template()?.with_fixed_date(date)))
    }

    /// Extracts the fields; the error names the offending field.
    fn from_json(json: &serde_json::Value) -> Result<TokenizerConfig, String> {
        let serde_json::Value::Object(obj) = json else {
            return Err("expected a JSON object at the top level".to_string());
        };
        let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
        let chat_template = match field("chat_template") {
            None => None,
            Some(v) => pick_chat_template(v)?,
        };
        let token = |name: &str| -> Result<Option<String>, String> {
            match field(name) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                // `AddedToken` objects serialise as {"content": ..., "lstrip": ..., ...}.
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(format!(
                        "field `{name}` is an object without a string `content`"
                    )),
                },
                Some(_) => Err(format!(
                    "field `{name}` must be a string, an object with `content`, or null"
                )),
            }
        };
        let add_bos_token = match field("add_bos_token") {
            None => None,
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(_) => return Err("field `add_bos_token` must be true, false or null".into()),
        };
        let model_max_length = match field("model_max_length") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or("field `model_max_length` must be a number or null")?,
            ),
        };
        Ok(TokenizerConfig {
            chat_template,
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            add_bos_token,
            model_max_length,
        })
    }
}

/// Picks the template `transformers` uses by default from a string or a `[{name, template}]` list.
fn pick_chat_template(value: &serde_json::Value) -> Result<Option<String>, String> {
    const SHAPE: &str =
        "field `chat_template` must be a string or a list of {\"name\", \"template\"} objects";
    match value {
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Array(items) => {
            let mut named = Vec::with_capacity(items.len());
            for item in items {
                let name = item.get("name").and_then(|v| v.as_str());
                let template = item.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some(name), Some(template)) => named.push((name, template)),
                    _ => return Err(SHAPE.to_string()),
                }
            }
            let chosen = named
                .iter()
                .find(|(name, _)| *name == "default")
                .or_else(|| named.first());
            Ok(chosen.map(|(_, template)| template.to_string()))
        }
        _ => Err(SHAPE.to_string()),
    }
}

/// A compiled chat template plus the variables `transformers` passes to it.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    tools: Option<Value>,
    date_string: Option<String>,
    fixed_date: Option<NaiveDate>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is a usage error naming `chat_template`.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> anyhow::Result<ChatTemplate> {
        let mut env = Environment::new();
        // The settings of transformers' ImmutableSandboxedEnvironment; keeping the
        // trailing newline off matters because most templates end with one.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_filter("trim", python_trim);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now(None));
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|err| usage(format!("chat_template: {}", flatten(&err))))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            tools: None,
            date_string: None,
            fixed_date: None,
        })
    }

    /// Another template `source` compiled with this one's special tokens, date and tools: the
    /// reference's own template in place of the model's (`eval.protocol = "paper"`).
    pub fn with_source(&self, source: &str) -> anyhow::Result<ChatTemplate> {
        let mut other = ChatTemplate::new(source, self.bos_token.clone(), self.eos_token.clone())?;
        other.tools = self.tools.clone();
        other.date_string = self.date_string.clone();
        Ok(match self.fixed_date {
            Some(date) => other.with_fixed_date(date),
            None => other,
        })
    }

    /// Makes `strftime_now` format `date` (at midnight) instead of the clock, so prompts are reproducible.
    pub fn with_fixed_date(mut self, date: NaiveDate) -> ChatTemplate {
        self.env
            .add_function("strftime_now", strftime_now(Some(date)));
        self.fixed_date = Some(date);
        self
    }

    /// Defines `date_string`, which Llama 3.x templates print as "Today Date" when it is set.
    pub fn with_date_string(mut self, date_string: impl Into<String>) -> ChatTemplate {
        self.date_string = Some(date_string.into());
        self
    }

    /// Passes tool schemas (a JSON list) as `tools`, keeping each object's key order as written.
    pub fn with_tools_json(mut self, tools_json: &str) -> anyhow::Result<ChatTemplate> {
        let tools: OrderedJson = serde_json::from_str(tools_json)
            .map_err(|err| usage(format!("tools: invalid JSON: {err}")))?;
        if tools.0.kind() != ValueKind::Seq {
            return Err(usage("tools: expected a JSON list of tool schemas"));
        }
        self.tools = Some(tools.0);
        Ok(self)
    }

    /// Renders the conversation like `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> anyhow::Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| anyhow::anyhow!("chat_template: {}", flatten(&err)))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                OrderedMap::value(vec![
                    (Value::from("role"), Value::from(m.role.as_str())),
                    (Value::from("content"), Value::from(m.content.as_str())),
                ])
            })
            .collect();

        // `transformers` always passes `tools` and `documents` (None when absent), so
        // they are defined-but-none; special tokens are passed only when set.
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(messages)),
            ("tools", self.tools.clone().unwrap_or(Value::from(()))),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        if let Some(bos) = &self.bos_token {
            ctx.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            ctx.push(("eos_token", Value::from(eos.as_str())));
        }
        if let Some(date) = &self.date_string {
            ctx.push(("date_string", Value::from(date.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();

        template
            .render(ctx)
            .map_err(|err| match raised_message(&err) {
                Some(msg) => usage(format!("chat_template raised an exception: {msg}")),
                None => anyhow::anyhow!("chat_template failed to render: {}", flatten(&err)),
            })
    }
}
