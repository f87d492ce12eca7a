//! Tokenising conversations into training examples with the chat template.

use super::*;

/// What became of one record.
pub(super) enum Outcome {
    Malformed(Malformed),
    Filtered(&'static str),
    Kept {
        pretokenized: bool,
        examples: Vec<Example>,
        dropped: Vec<&'static str>,
        truncated: u64,
    },
}

/// One example ready for the shards.
pub(super) struct Example {
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: u32,
    pub(super) class_id: i32,
}

/// Everything the workers share, read-only.
pub(super) struct Ctx<'a> {
    /// The raw tokenizer, for `encode_fast` (ids equal `Tokenizer::encode`'s, without offsets).
    pub(super) fast: tokenizers::Tokenizer,
    pub(super) template: Option<&'a ChatTemplate>,
    pub(super) model_dir: &'a Path,
    pub(super) eos: HashSet<u32>,
    pub(super) vocab: u64,
    pub(super) max_len: usize,
    pub(super) drop_long: bool,
    pub(super) include: HashSet<String>,
    pub(super) exclude: HashSet<String>,
    pub(super) class_map: BTreeMap<String, i64>,
    pub(super) columns: Option<ColumnMap>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        cfg: &Config,
        tokenizer: &'a Tokenizer,
        template: Option<&'a ChatTemplate>,
        model_dir: &'a Path,
    ) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        let fast = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| usage(format!("{}: cannot parse: {e}", path.display())))?;
        Ok(Self {
            fast,
            template,
            model_dir,
            eos: tokenizer.eos_ids.iter().map(|&i| i as u32).collect(),
            vocab: tokenizer.vocab_size() as u64,
            max_len: cfg.train.max_seq_len,
            drop_long: cfg.data.max_seq_len_policy == SeqLenPolicy::Drop,
            include: cfg.data.include_categories.iter().cloned().collect(),
            exclude: cfg.data.exclude_categories.iter().cloned().collect(),
            class_map: cfg.data.class_map.clone(),
            columns: cfg.data.columns.clone(),
        })
    }

    /// Parses, filters and tokenises one record; `Err` only for failures that end the run.
    pub(super) fn process(&self, raw: Raw, src: &Source) -> Result<Outcome> {
        let value = match raw.body {
            Body::Json(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Outcome::Malformed(Malformed::new(
                        "invalid_json",
                        e.to_string(),
                    )))
                }
            },
            Body::Value(v) => v,
            Body::Bad(m) => return Ok(Outcome::Malformed(m)),
        };
        let record = match parse_record(value, self.vocab, self.columns.as_ref()) {
            Ok(r) => r,
            Err(m) => return Ok(Outcome::Malformed(m)),
        };
        if let Some(reason) = self.filter(record.category()) {
            return Ok(Outcome::Filtered(reason));
        }
        let class_id = self.class_of(record.category(), src);
        match record {
            Record::Chat { messages, .. } => self.chat_examples(&messages, class_id),
            Record::Pretokenized {
                input_ids,
                prompt_len,
                ..
            } => Ok(self.pretokenized_example(input_ids, prompt_len, class_id)),
        }
    }

    pub(super) fn filter(&self, category: Option<&str>) -> Option<&'static str> {
        match category {
            Some(c) if self.exclude.contains(c) => Some("category_excluded"),
            Some(c) if !self.include.is_empty() && !self.include.contains(c) => {
                Some("category_not_included")
            }
            None if !self.include.is_empty() => Some("no_category"),
            _ => None,
        }
    }

    /// The category's class, else the file's (subset or stem), else -1.
    pub(super) fn class_of(&self, category: Option<&str>, src: &Source) -> i32 {
        category
            .and_then(|c| self.class_map.get(c))
            .map(|&c| c as i32)
            .or(src.file_class)
            .unwrap_or(-1)
    }

    /// One example per assistant turn.
    pub(super) fn chat_examples(&self, messages: &[Message], class_id: i32) -> Result<Outcome> {
        let Some(template) = self.template else {
            crate::bail_usage!(
                "{}: tokenizer_config.json has no chat_template, which chat records need (or give pretokenized input)",
                self.model_dir.display()
            );
        };
        let (mut examples, mut dropped, mut truncated) = (Vec::new(), Vec::new(), 0);
        for (i, _) in messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
        {
            let turn = match self.turn(template, &messages[..i], &messages[..=i]) {
                Ok(t) => t,
                Err(TurnError::Malformed(m)) => return Ok(Outcome::Malformed(m)),
                Err(TurnError::Dropped(reason)) => {
                    dropped.push(reason);
                    continue;
                }
            };
            self.add_fitted(turn.0, turn.1, class_id, &mut examples, &mut dropped, &mut truncated);
        }
        Ok(Outcome::Kept {
            pretokenized: false,
            examples,
            dropped,
            truncated,
        })
    }

    /// Context tokens plus response tokens of the last message of `upto`.
    pub(super) fn turn(
        &self,
        template: &ChatTemplate,
        history: &[Message],
        upto: &[Message],
    ) -> Result<(Vec<u32>, usize), TurnError> {
        let render = |m: &[Message], gen: bool| {
            template.render(m, gen).map_err(|e| {
                TurnError::Malformed(Malformed::new("template_error", crate::error::one_line(&e)))
            })
        };
        let context = self.encode(&render(history, true)?)?;
        let full = self.encode(&render(upto, false)?)?;
        // Both renderings share the context only if the template renders history the same way.
        if !full.starts_with(&context) {
            return Err(TurnError::Dropped("template_not_prefix"));
        }
        let mut response = &full[context.len()..];
        // Templates may add text after end-of-turn (Qwen's "\n"); the model stops at the eos token.
        if let Some(p) = response.iter().position(|t| self.eos.contains(t)) {
            response = &response[..=p];
        }
        if response.is_empty() {
            return Err(TurnError::Dropped("empty_response"));
        }
        let prompt_len = context.len();
        let mut tokens = context;
        tokens.extend_from_slice(response);
        Ok((tokens, prompt_len))
    }

    pub(super) fn encode(&self, text: &str) -> Result<Vec<u32>, TurnError> {
        self.fast
            .encode_fast(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TurnError::Malformed(Malformed::new("tokenize_error", e.to_string())))
    }

    pub(super) fn pretokenized_example(
        &self,
        input_ids: Vec<u32>,
        prompt_len: usize,
        class_id: i32,
    ) -> Outcome {
        let (mut examples, mut dropped, mut truncated) = (Vec::new(), Vec::new(), 0);
        self.add_fitted(input_ids, prompt_len, class_id, &mut examples, &mut dropped, &mut truncated);
        Outcome::Kept {
            pretokenized: true,
            examples,
            dropped,
            truncated,
        }
    }

    /// Fits one sequence and records it as an example, or its drop reason.
    pub(super) fn add_fitted(
        &self,
        tokens: Vec<u32>,
        prompt_len: usize,
        class_id: i32,
        examples: &mut Vec<Example>,
        dropped: &mut Vec<&'static str>,
        truncated: &mut u64,
    ) {
        match self.fit(tokens, prompt_len) {
            Ok((tokens, prompt_len, cut)) => {
                *truncated += cut as u64;
                examples.push(Example { tokens, prompt_len, class_id });
            }
            Err(reason) => dropped.push(reason),
        }
    }

    /// Applies the `max_seq_len` policy: the example, its prompt length and whether it was cut, or why it goes.
    pub(super) fn fit(
        &self,
        mut tokens: Vec<u32>,
        prompt_len: usize,
    ) -> Result<(Vec<u32>, u32, bool), &'static str> {
        let mut cut = false;
        if tokens.len() > self.max_len {
            if self.drop_long {
                return Err("too_long");
            }
            if prompt_len >= self.max_len {
                return Err("context_too_long");
            }
            tokens.truncate(self.max_len);
            cut = true;
        }
        if prompt_len >= tokens.len() {
            return Err("no_loss_tokens");
        }
        Ok((tokens, prompt_len as u32, cut))
    }
}

pub(super) enum TurnError {
    Malformed(Malformed),
    Dropped(&'static str),
}
