//! Benchmark files as JSON records, whatever layout they ship in: JSON lines
//! (plain or gzip-compressed), a JSON array or single object, Parquet, or CSV.
//!
//! Every record keeps where it came from, so that a schema error can name the
//! file and line (or row) the user has to look at.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

use crate::error::{usage, OrUsage};

/// Where a record sits in its file.
#[derive(Debug, Clone)]
pub struct Loc {
    /// The file as the user named it.
    pub file: Arc<str>,
    /// 1-based line (text formats) or row (Parquet).
    pub line: u64,
    /// Whether `line` counts Parquet rows rather than text lines.
    pub is_row: bool,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_row {
            write!(f, "{}: row {}", self.file, self.line)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// One record: a JSON object, or for CSV the row's fields as a JSON array of strings.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it was read.
    pub loc: Loc,
    /// Its content.
    pub value: Value,
    /// The file name without its extensions (MMLU's CSV release names the subject only there).
    pub stem: Arc<str>,
}

/// The file formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    JsonlGz,
    Json,
    Parquet,
    Csv,
}

const EXTENSIONS: &str = ".jsonl, .jsonl.gz, .json, .parquet or .csv";

fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let ends = |s: &str| name.ends_with(s);
    Some(if ends(".jsonl.gz") || ends(".json.gz") || ends(".ndjson.gz") {
        Format::JsonlGz
    } else if ends(".jsonl") || ends(".ndjson") {
        Format::Jsonl
    } else if ends(".json") {
        Format::Json
    } else if ends(".parquet") {
        Format::Parquet
    } else if ends(".csv") {
        Format::Csv
    } else {
        return None;
    })
}

/// Reads every record of `path`: a file, or a directory whose supported files are read in sorted order.
///
/// `key` names the flag or config key the path came from, for the error messages.
pub fn read_records(path: &Path, key: &str) -> Result<Vec<Record>> {
    if !path.exists() {
        crate::bail_usage!("{key}: {}: no such file", path.display());
    }
    let files = if path.is_dir() { files_under(path, key)? } else { vec![path.to_path_buf()] };
    let mut out = Vec::new();
    for file in files {
        let Some(format) = format_of(&file) else {
            crate::bail_usage!("{key}: {}: unknown format (expected {EXTENSIONS})", file.display());
        };
        read_file(&file, format, &mut out)?;
    }
    Ok(out)
}

/// The supported files below `dir`, recursively (MATH's official release nests one problem per file).
fn files_under(dir: &Path, key: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).or_usage(|| format!("{key}: {}", d.display()))?;
        for entry in entries {
            let p = entry.or_usage(|| format!("{key}: {}", d.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if format_of(&p).is_some() {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        crate::bail_usage!("{key}: {}: the directory holds no {EXTENSIONS} file", dir.display());
    }
    // Record order decides index-based ids and shot choice; it must not depend on the file system.
    files.sort();
    Ok(files)
}

fn read_file(path: &Path, format: Format, out: &mut Vec<Record>) -> Result<()> {
    let file: Arc<str> = path.display().to_string().into();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem: Arc<str> = name.split('.').next().unwrap_or("").into();
    let mut push = |line: u64, is_row: bool, value: Value| {
        out.push(Record { loc: Loc { file: file.clone(), line, is_row }, value, stem: stem.clone() })
    };
    let open = || File::open(path).or_usage(|| format!("{file}: cannot read"));
    match format {
        Format::Jsonl => json_lines(BufReader::new(open()?), &file, &mut push),
        Format::JsonlGz => json_lines(BufReader::new(flate2::read::GzDecoder::new(open()?)), &file, &mut push),
        Format::Json => json_file(path, &file, &mut push),
        Format::Parquet => parquet_rows(open()?, &file, &mut push),
        Format::Csv => csv_rows(open()?, &file, &mut push),
    }
}

type Push<'a> = dyn FnMut(u64, bool, Value) + 'a;

fn json_lines(reader: impl BufRead, file: &str, push: &mut Push) -> Result<()> {
    for (i, line) in reader.lines().enumerate() {
        let line = line.or_usage(|| format!("{file}:{}: cannot read", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line).or_usage(|| format!("{file}:{}: invalid JSON", i + 1))?;
        push(i as u64 + 1, false, value);
    }
    Ok(())
}

/// A `.json` file: an array of records, one record (MATH's official layout), or JSON lines misnamed `.json`.
fn json_file(path: &Path, file: &str, push: &mut Push) -> Result<()> {
    let mut text = String::new();
    File::open(path).and_then(|mut f| f.read_to_string(&mut text)).or_usage(|| format!("{file}: cannot read"))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => {
            let lines = element_lines(&text, items.len());
            for (value, line) in items.into_iter().zip(lines) {
                push(line, false, value);
            }
            Ok(())
        }
        Ok(value) => {
            push(1, false, value);
            Ok(())
        }
        Err(_) => json_lines(text.as_bytes(), file, push),
    }
}

/// The 1-based line on which each top-level array element starts.
fn element_lines(text: &str, count: usize) -> Vec<u64> {
    let mut lines = Vec::with_capacity(count);
    let (mut depth, mut in_str, mut escaped, mut line, mut expecting) = (0i32, false, false, 1u64, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if expecting && !c.is_whitespace() && c != ']' {
            lines.push(line);
            expecting = false;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => {
                depth += 1;
                expecting = depth == 1 && c == '[';
            }
            ']' | '}' => depth -= 1,
            ',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    lines.resize(count, line);
    lines
}

fn parquet_rows(file: File, name: &str, push: &mut Push) -> Result<()> {
    use parquet::file::reader::SerializedFileReader;
    use parquet::record::reader::RowIter;
    let reader = SerializedFileReader::new(file).or_usage(|| format!("{name}: not a readable Parquet file"))?;
    let rows = RowIter::from_file(None, &reader).or_usage(|| format!("{name}: cannot read Parquet rows"))?;
    for (i, row) in rows.enumerate() {
        let row = row.or_usage(|| format!("{name}: row {}: cannot decode", i + 1))?;
        push(i as u64 + 1, true, crate::data::parquet_json::to_json(&parquet::record::Field::Group(row)));
    }
    Ok(())
}


/// Header-less CSV (MMLU's original release), each row as an array of strings.
fn csv_rows(file: File, name: &str, push: &mut Push) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(file);
    for row in reader.records() {
        let row = row.map_err(|e| {
            let line = e.position().map_or(String::new(), |p| format!(":{}", p.line()));
            usage(format!("{name}{line}: invalid CSV: {e}"))
        })?;
        let line = row.position().map_or(0, |p| p.line());
        push(line, false, Value::Array(row.iter().map(|s| Value::String(s.to_owned())).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_keep_their_lines() {
        let text = "[\n  {\"a\": \"x,]\"},\n  {\"b\": [1,\n 2]},\n\n  {\"c\": {}}\n]";
        assert_eq!(element_lines(text, 3), vec![2, 3, 6]);
    }

    #[test]
    fn formats_follow_the_name() {
        let f = |n: &str| format_of(Path::new(n));
        assert_eq!(f("HumanEval.jsonl.gz"), Some(Format::JsonlGz));
        assert_eq!(f("test.jsonl"), Some(Format::Jsonl));
        assert_eq!(f("1.json"), Some(Format::Json));
        assert_eq!(f("test-00000-of-00001.parquet"), Some(Format::Parquet));
        assert_eq!(f("abstract_algebra_test.csv"), Some(Format::Csv));
        assert_eq!(f("notes.txt"), None);
    }
}
