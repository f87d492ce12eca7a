//! Reading a config: the file, then `--set` overrides in order, then the
//! checks; every mistake is one line naming the file or `--set` and the key.

use std::path::Path;

use super::Config;
use crate::error::usage;

/// Where a value came from, for naming it in an error.
enum Source<'a> {
    File(&'a Path),
    Set(&'a str),
    Defaults,
}

/// Reads `path` (if any), applies `--set section.key=value` overrides in order,
/// and returns the validated config; every user mistake is a usage error.
pub fn load(path: Option<&Path>, sets: &[String]) -> anyhow::Result<Config> {
    let mut root = match path {
        Some(p) => read_table(p)?,
        None => toml::Table::new(),
    };
    let mut set_keys: Vec<String> = Vec::with_capacity(sets.len());
    for set in sets {
        set_keys.push(apply_set(&mut root, set)?);
    }
    let source_of = |key: &str| blame(key, path, &set_keys);

    let cfg: Config = match serde_path_to_error::deserialize(toml::Value::Table(root)) {
        Ok(cfg) => cfg,
        Err(err) => {
            let at = dotted(err.path());
            let msg = err.inner().message().to_owned();
            if let Some(field) = unknown_field(&msg) {
                // serde_path_to_error usually records the rejected key itself.
                let key = if at == field || at.ends_with(&format!(".{field}")) {
                    at
                } else if at.is_empty() {
                    field.to_owned()
                } else {
                    format!("{at}.{field}")
                };
                // The list of valid keys is what makes a typo obvious.
                let known = msg
                    .split_once("`, ")
                    .map(|(_, rest)| format!(" ({})", rest.replace('`', "")))
                    .unwrap_or_default();
                let line = match source_of(&key) {
                    Source::File(p) => format!("{}: unknown key {key}{known}", p.display()),
                    Source::Set(k) if k == key => format!("--set: unknown key {key}{known}"),
                    Source::Set(k) => format!("--set {k}: unknown key {key}{known}"),
                    Source::Defaults => format!("unknown key {key}{known}"),
                };
                return Err(usage(line));
            }
            let key = if at.is_empty() {
                "(top level)".to_owned()
            } else {
                at
            };
            return Err(usage(located(&source_of(&key), &key, &friendly(&msg))));
        }
    };

    if let Err(e) = cfg.check() {
        let src = std::iter::once(e.key)
            .chain(e.also.iter().copied())
            .map(&source_of)
            .find(|s| matches!(s, Source::Set(_)))
            .unwrap_or_else(|| source_of(e.key));
        return Err(usage(located(&src, e.key, &e.msg)));
    }
    Ok(cfg)
}

/// The source of `key`: the last `--set` touching it, else the file.
fn blame<'a>(key: &str, path: Option<&'a Path>, set_keys: &'a [String]) -> Source<'a> {
    // The last override wins, so it is the one to blame.
    if let Some(k) = set_keys.iter().rev().find(|k| overlaps(k, key)) {
        return Source::Set(k);
    }
    path.map_or(Source::Defaults, Source::File)
}

fn located(src: &Source, key: &str, msg: &str) -> String {
    match src {
        Source::File(p) => format!("{}: {key}: {msg}", p.display()),
        Source::Set(k) if overlaps(k, key) => format!("--set {key}: {msg}"),
        // Blamed through a related key: name both the override and the key.
        Source::Set(k) => format!("--set {k}: {key}: {msg}"),
        Source::Defaults => format!("{key}: {msg}"),
    }
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("{}: cannot read config: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|s| line_col(&text, s.start))
            .map(|(l, c)| format!(":{l}:{c}"))
            .unwrap_or_default();
        usage(format!(
            "{}{at}: invalid TOML: {}",
            path.display(),
            e.message().replace('\n', " ")
        ))
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Applies one `section.key=value` override and returns its dotted key.
fn apply_set(root: &mut toml::Table, set: &str) -> anyhow::Result<String> {
    let Some((key, raw)) = set.split_once('=') else {
        return Err(usage(format!("--set {set:?}: expected section.key=value")));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(usage(format!(
            "--set {set:?}: empty key (expected section.key=value)"
        )));
    }
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(usage(format!(
            "--set {set:?}: empty part in key {key:?} (expected section.key=value)"
        )));
    }
    let key = parts.join(".");
    let raw = raw.trim();

    let (last, parents) = parts.split_last().expect("split yields at least one part");
    let mut table = root;
    for (i, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(usage(format!(
                    "--set {key}: {} is not a table",
                    parts[..=i].join(".")
                )))
            }
        };
    }
    if raw.is_empty() {
        // An empty value restores the default, the only way to unset an optional key.
        table.remove(*last);
    } else {
        // A bare word or a path is not TOML; taking it as a string saves quoting.
        let value = raw
            .parse::<toml::Value>()
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned()));
        table.insert(last.to_string(), value);
    }
    Ok(key)
}

/// True if one dotted key is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| {
        long == short
            || long
                .strip_prefix(short)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    inside(a, b) || inside(b, a)
}

fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Rewrites serde's Rust type names into TOML words.
fn friendly(msg: &str) -> String {
    let one_line = msg.replace('\n', " ");
    let Some((head, expected)) = one_line.rsplit_once(", expected ") else {
        return one_line;
    };
    let expected = match expected {
        "f64" | "f32" => "a number",
        "u64" | "u32" | "u16" | "u8" | "usize" => "a non-negative integer",
        "i64" | "i32" | "i16" | "i8" | "isize" => "an integer",
        "a sequence" => "an array",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    format!("{head}, expected {expected}")
}
