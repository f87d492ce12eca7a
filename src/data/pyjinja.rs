//! The Python side of Hugging Face chat templates, for minijinja: the places
//! where minijinja behaves differently from Jinja2 on a Python runtime (JSON
//! layout of `tojson`, Python's whitespace set for `trim`, Python's spelling of
//! `None`/`True`/floats in output, insertion-ordered dicts, `strftime_now`,
//! `raise_exception`), written out so that [`super::chat`] renders byte for byte
//! what `transformers` renders.
//!
//! One concept (Python's behaviour as templates see it); a little over 600
//! lines with its tests.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, Output, State};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Marks an error as coming from the template's own `raise_exception` call.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The template global that aborts rendering with the template author's message.
pub(super) fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// Finds the message of a `raise_exception` call in an error's source chain.
pub(super) fn raised_message(err: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        source = cause.source();
    }
    None
}

/// One-line description of a minijinja error with its location.
pub(super) fn flatten(err: &Error) -> String {
    err.to_string().replace('\n', " ")
}

/// `strftime_now(fmt)` over the wall clock, or over `fixed` at midnight.
pub(super) fn strftime_now(
    fixed: Option<NaiveDate>,
) -> impl Fn(&str) -> Result<String, Error> + Send + Sync + 'static {
    move |format: &str| {
        let now = match fixed {
            Some(date) => date.and_time(NaiveTime::MIN),
            None => chrono::Local::now().naive_local(),
        };
        python_strftime(&now, format)
    }
}

/// Formats like Python's `datetime.strftime` on the naive `datetime.now()` that `transformers` uses.
fn python_strftime(time: &NaiveDateTime, format: &str) -> Result<String, Error> {
    // Translate the few specifiers whose meaning differs between Python and chrono.
    let mut translated = String::with_capacity(format.len() + 4);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            translated.push(c);
            continue;
        }
        let mut spec = String::from("%");
        if let Some(&flag) = chars.peek() {
            if matches!(flag, '-' | '_' | '0') {
                spec.push(flag);
                chars.next();
            }
        }
        match chars.next() {
            // A naive datetime has no zone: Python prints nothing for these.
            Some('z') | Some('Z') => {}
            // Python's %f is microseconds; chrono's is nanoseconds.
            Some('f') => translated.push_str("%6f"),
            Some(other) => {
                spec.push(other);
                translated.push_str(&spec);
            }
            None => translated.push_str("%%"),
        }
    }
    let mut out = String::new();
    write!(out, "{}", time.format(&translated)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Python's `str.isspace`, which `str.strip()` uses; Rust's set lacks U+001C..U+001F.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
pub(super) fn python_trim(value: &Value, chars: Option<String>) -> Result<Value, Error> {
    let text = match value.as_str() {
        Some(s) => s.to_owned(),
        None => python_str(value),
    };
    let trimmed = match chars {
        Some(chars) => text.trim_matches(|c| chars.contains(c)),
        None => text.trim_matches(is_python_space),
    };
    Ok(Value::from(trimmed))
}

/// Writes `{{ value }}` the way Python's `str()` would, where that differs from minijinja.
pub(super) fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => out
            .write_str(&python_str(value))
            .map_err(|_| Error::from(ErrorKind::WriteFailure)),
        ValueKind::Number if !value.is_integer() => out
            .write_str(&python_str(value))
            .map_err(|_| Error::from(ErrorKind::WriteFailure)),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `str(x)` for the value kinds a template can hold.
fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => python_repr(value),
    }
}

/// Python's `repr(x)`; non-ASCII text is printed as is, as Python does for printable characters.
fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) => python_float(f, false),
            Err(_) => value.to_string(),
        },
        ValueKind::String => python_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = match value.try_iter() {
                Ok(iter) => iter.map(|v| python_repr(&v)).collect(),
                Err(_) => Vec::new(),
            };
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = match value.try_iter() {
                Ok(keys) => keys
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_repr(&k), python_repr(&v))
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(float)`, or its `json.dumps` spelling when `json` is set.
fn python_float(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let s = match (json, f > 0.0) {
            (true, true) => "Infinity",
            (true, false) => "-Infinity",
            (false, true) => "inf",
            (false, false) => "-inf",
        };
        return s.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's repr;
    // only the layout rules differ.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1;
    let mut out = String::new();
    if f < 0.0 {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-decpt) as usize));
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        if decpt >= digits.len() {
            out.push_str(&digits);
            out.push_str(&"0".repeat(decpt - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    out
}

/// Layout options of Python's `json.dumps` as transformers' `tojson` passes them.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
///
/// minijinja's own filter is not used: it emits compact separators and
/// HTML-escapes `<>&'`, which would change what the model sees. `separators`
/// and `sort_keys` are taken by keyword only (minijinja caps a filter's
/// arity); no known template passes them positionally.
pub(super) fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let pick = |positional: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let keyword: Option<Value> = kwargs.get(name)?;
        match (positional, keyword) {
            (Some(_), Some(_)) => Err(Error::new(
                ErrorKind::TooManyArguments,
                format!("tojson got multiple values for argument '{name}'"),
            )),
            (p, k) => Ok(p.or(k).filter(|v| !v.is_none())),
        }
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) if v.kind() == ValueKind::Bool => Some(" ".repeat(usize::from(v.is_true()))),
        Some(v) if v.is_integer() => {
            let n = v.as_i64().unwrap_or(0).max(0);
            Some(" ".repeat(n as usize))
        }
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be an integer or a string",
            ))
        }
    };
    let (item_sep, key_sep) = match pick(None, "separators")? {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter().map(|it| it.collect()).unwrap_or_default();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_owned(),
                    b.as_str().unwrap_or_default().to_owned(),
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        // json.dumps drops the space after ',' when indenting, to avoid trailing blanks.
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let sort_keys = pick(None, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;

    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

/// Serialises `value` the way Python's `json.dumps` lays it out.
fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let f = f64::try_from(value.clone())?;
            out.push_str(&python_float(f, true));
        }
        ValueKind::String => {
            write_json_str(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, style, depth, |out, item, depth| {
                write_json(out, item, style, depth)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                ('{', '}'),
                &entries,
                style,
                depth,
                |out, (key, item), depth| {
                    write_json_str(out, key, style.ensure_ascii);
                    out.push_str(&style.key_sep);
                    write_json(out, item, style, depth)
                },
            )?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Writes a JSON list or object body with json.dumps' newline and indent rules.
fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    style: &JsonStyle,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |depth: usize| {
        style
            .indent
            .as_ref()
            .map(|ind| format!("\n{}", ind.repeat(depth)))
    };
    let inner = newline(depth + 1);
    if let Some(nl) = &inner {
        out.push_str(nl);
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_sep);
            if let Some(nl) = &inner {
                out.push_str(nl);
            }
        }
        write_item(out, item, depth + 1)?;
    }
    if let Some(nl) = newline(depth) {
        out.push_str(&nl);
    }
    out.push(close);
    Ok(())
}

/// Converts a dict key the way json.dumps does (str as is, numbers/bools/None spelled out).
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(python_float(f64::try_from(key.clone())?, true)),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// A JSON string literal with Python's escapes (`ensure_ascii` turns non-ASCII into `\uXXXX`).
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A map that keeps insertion order, as Python dicts do (minijinja's own maps sort keys).
#[derive(Debug)]
pub(super) struct OrderedMap(Vec<(Value, Value)>);

impl OrderedMap {
    /// Wraps the entries as a template value.
    pub(super) fn value(entries: Vec<(Value, Value)>) -> Value {
        Value::from_object(OrderedMap(entries))
    }
}

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }
}

/// JSON parsed straight into template values, keeping object key order.
pub(super) struct OrderedJson(pub(super) Value);

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedJsonVisitor)
    }
}

/// Visitor behind [`OrderedJson`].
struct OrderedJsonVisitor;

impl<'de> Visitor<'de> for OrderedJsonVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
        let mut items = Vec::new();
        while let Some(OrderedJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(OrderedJson(Value::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
        let mut entries: Vec<(Value, Value)> = Vec::new();
        while let Some((key, OrderedJson(item))) = map.next_entry::<String, OrderedJson>()? {
            let key = Value::from(key);
            // Python keeps the first position and the last value of a repeated key.
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = item,
                None => entries.push((key, item)),
            }
        }
        Ok(OrderedJson(OrderedMap::value(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (26.1, "26.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float(f, false), want, "{f:e}");
        }
        assert_eq!(python_float(f64::NAN, true), "NaN");
        assert_eq!(python_float(f64::NEG_INFINITY, true), "-Infinity");
    }

    #[test]
    fn strftime_follows_python() {
        let t = NaiveDate::from_ymd_opt(2024, 7, 26)
            .unwrap()
            .and_time(NaiveTime::MIN);
        assert_eq!(python_strftime(&t, "%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(python_strftime(&t, "%d %B %Y").unwrap(), "26 July 2024");
        assert_eq!(
            python_strftime(&t, "%Y-%m-%d %H:%M:%S.%f%z%Z").unwrap(),
            "2024-07-26 00:00:00.000000"
        );
        assert_eq!(python_strftime(&t, "100%% %-d").unwrap(), "100% 26");
    }

    #[test]
    fn python_whitespace_includes_separators() {
        let v = python_trim(&Value::from("\u{1c} x \u{3000}\n"), None).unwrap();
        assert_eq!(v.as_str(), Some("x"));
    }
}
