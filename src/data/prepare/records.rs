//! Turning a JSON record into conversations: the layouts and their checks.

use super::*;

/// Why a record could not be used: a reason code and details.
#[derive(Debug, Clone)]
pub(super) struct Malformed {
    pub(super) reason: &'static str,
    pub(super) detail: String,
}

impl Malformed {
    pub(super) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A record that passed the checks.
pub(super) enum Record {
    Chat {
        messages: Vec<Message>,
        category: Option<String>,
    },
    Pretokenized {
        input_ids: Vec<u32>,
        prompt_len: usize,
        category: Option<String>,
    },
}

impl Record {
    pub(super) fn category(&self) -> Option<&str> {
        match self {
            Record::Chat { category, .. } | Record::Pretokenized { category, .. } => {
                category.as_deref()
            }
        }
    }
}

/// Chat if it has `messages`, pretokenized if it has `input_ids`, else a single turn read
/// through `columns` (or a detected common layout); other fields are ignored.
pub(super) fn parse_record(
    value: Value,
    vocab: u64,
    columns: Option<&ColumnMap>,
) -> Result<Record, Malformed> {
    let Value::Object(mut obj) = value else {
        return Err(Malformed::new(
            "not_an_object",
            "a record must be a JSON object",
        ));
    };
    let category = match obj.remove("category") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(Malformed::new(
                "invalid_category",
                format!("category must be a string, got {}", kind(&other)),
            ))
        }
    };
    if let Some(messages) = obj.remove("messages") {
        return Ok(Record::Chat {
            messages: parse_messages(messages)?,
            category,
        });
    }
    if let Some(ids) = obj.remove("input_ids") {
        let (input_ids, prompt_len) = parse_pretokenized(ids, obj.remove("labels"), vocab)?;
        return Ok(Record::Pretokenized {
            input_ids,
            prompt_len,
            category,
        });
    }
    let detected = columns.or_else(|| detect_layout(&obj));
    let Some(columns) = detected else {
        return Err(Malformed::new(
            "missing_messages",
            "no `messages` (chat), `input_ids` (pretokenized) or single-turn fields (set [data.columns])",
        ));
    };
    Ok(Record::Chat {
        messages: single_turn(&mut obj, columns)?,
        category,
    })
}

/// Single-turn layouts recognised without `[data.columns]`: (user, input, assistant).
pub(super) const LAYOUTS: [(&str, Option<&str>, &str); 3] = [
    ("instruction", Some("input"), "output"),
    ("question", None, "answer"),
    ("prompt", None, "response"),
];

/// The first of [`LAYOUTS`] whose user and assistant fields the record has; a `system`
/// field is used when present.
pub(super) fn detect_layout(obj: &serde_json::Map<String, Value>) -> Option<&'static ColumnMap> {
    static MAPS: std::sync::OnceLock<Vec<ColumnMap>> = std::sync::OnceLock::new();
    let maps = MAPS.get_or_init(|| {
        LAYOUTS
            .iter()
            .map(|&(user, input, assistant)| ColumnMap {
                user: user.into(),
                input: input.map(Into::into),
                assistant: assistant.into(),
                system: Some("system".into()),
            })
            .collect()
    });
    maps.iter()
        .find(|m| obj.contains_key(&m.user) && obj.contains_key(&m.assistant))
}

/// Builds `[system], user, assistant` from the mapped fields; the optional ones may be absent or null.
pub(super) fn single_turn(
    obj: &mut serde_json::Map<String, Value>,
    columns: &ColumnMap,
) -> Result<Vec<Message>, Malformed> {
    let mut field = |name: &str, required: bool| match obj.remove(name) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) if !required => Ok(None),
        None => Err(Malformed::new(
            "missing_column",
            format!("no `{name}` field (see [data.columns])"),
        )),
        Some(other) => Err(Malformed::new(
            "invalid_column",
            format!("`{name}` must be a string, got {}", kind(&other)),
        )),
    };
    let system = match &columns.system {
        Some(name) => field(name, false)?,
        None => None,
    };
    let mut user = field(&columns.user, true)?.unwrap_or_default();
    if let Some(name) = &columns.input {
        if let Some(input) = field(name, false)?.filter(|s| !s.trim().is_empty()) {
            user = format!("{user}\n\n{input}");
        }
    }
    let assistant = field(&columns.assistant, true)?.unwrap_or_default();
    let turn = |role: &str, content: String| Message {
        role: role.into(),
        content,
    };
    Ok(system
        .map(|s| turn("system", s))
        .into_iter()
        .chain([turn("user", user), turn("assistant", assistant)])
        .collect())
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn parse_messages(value: Value) -> Result<Vec<Message>, Malformed> {
    let Value::Array(items) = value else {
        return Err(Malformed::new(
            "invalid_messages",
            format!("messages must be a list, got {}", kind(&value)),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut m) = item else {
            return Err(Malformed::new(
                "invalid_messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        let text = |v: Option<Value>, field: &str| match v {
            Some(Value::String(s)) => Ok(s),
            other => Err(Malformed::new(
                "invalid_messages",
                format!(
                    "messages[{i}].{field} must be a string, got {}",
                    other.as_ref().map_or("nothing", kind)
                ),
            )),
        };
        let role = text(m.remove("role"), "role")?;
        if !ROLES.contains(&role.as_str()) {
            return Err(Malformed::new(
                "unknown_role",
                format!(
                    "messages[{i}].role is {role:?} (expected system, user, assistant or tool)"
                ),
            ));
        }
        let content = text(m.remove("content"), "content")?;
        out.push(Message { role, content });
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err(Malformed::new(
            "no_assistant_turn",
            "the conversation has no assistant message",
        ));
    }
    Ok(out)
}

/// Token ids plus the prompt length implied by `labels` (-100 on a prefix, the tokens after it).
pub(super) fn parse_pretokenized(
    ids: Value,
    labels: Option<Value>,
    vocab: u64,
) -> Result<(Vec<u32>, usize), Malformed> {
    let bad = |detail: String| Malformed::new("invalid_input_ids", detail);
    let Value::Array(items) = ids else {
        return Err(bad(format!("input_ids must be a list, got {}", kind(&ids))));
    };
    let mut input_ids = Vec::with_capacity(items.len());
    for (j, v) in items.iter().enumerate() {
        match v.as_u64() {
            Some(id) if id < vocab => input_ids.push(id as u32),
            _ => {
                return Err(bad(format!(
                    "input_ids[{j}] is {v}, not a token id below the vocabulary size {vocab}"
                )))
            }
        }
    }
    if input_ids.len() < 2 {
        return Err(bad("input_ids needs at least 2 tokens".into()));
    }
    let labels = match labels {
        None | Some(Value::Null) => return Ok((input_ids, 0)),
        Some(Value::Array(l)) => l,
        Some(other) => {
            return Err(Malformed::new(
                "invalid_labels",
                format!("labels must be a list, got {}", kind(&other)),
            ))
        }
    };
    if labels.len() != input_ids.len() {
        return Err(Malformed::new(
            "invalid_labels",
            format!(
                "labels has {} entries, input_ids {}",
                labels.len(),
                input_ids.len()
            ),
        ));
    }
    let prompt_len = labels
        .iter()
        .take_while(|l| l.as_i64() == Some(IGNORE_INDEX))
        .count();
    for (j, (l, &t)) in labels.iter().zip(&input_ids).enumerate().skip(prompt_len) {
        match l.as_i64() {
            Some(x) if x == t as i64 => {}
            Some(IGNORE_INDEX) => {
                return Err(Malformed::new(
                    "labels_not_prefix_mask",
                    format!(
                        "labels[{j}] is -100 after loss positions; shards can only mask a prefix"
                    ),
                ))
            }
            _ => {
                return Err(Malformed::new(
                    "invalid_labels",
                    format!("labels[{j}] is {l}; it must be -100 or input_ids[{j}] ({t})"),
                ))
            }
        }
    }
    Ok((input_ids, prompt_len))
}
