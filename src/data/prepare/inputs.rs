//! Which input files feed which split, and how each is read.

use super::*;

/// Which split an input file feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Train,
    Valid,
}

impl Origin {
    pub(super) fn name(self) -> &'static str {
        match self {
            Origin::Train => "train",
            Origin::Valid => "valid",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Jsonl,
    /// Gzip-compressed JSON lines (`.jsonl.gz`).
    JsonlGz,
    Json,
    Parquet,
}

impl Format {
    pub(super) fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::JsonlGz => "jsonl.gz",
            Format::Json => "json",
            Format::Parquet => "parquet",
        }
    }
}

/// One input file and what is known about it before reading.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) display: String,
    pub(super) format: Format,
    pub(super) origin: Origin,
    pub(super) bytes: u64,
    /// Class from the subset (parent directory) or file stem, for records without a mapped category.
    pub(super) file_class: Option<i32>,
}

/// Expands files and globs in order; a missing file or an empty glob is a usage error naming `key`.
pub(super) fn resolve_inputs(
    patterns: &[String],
    key: &str,
    origin: Origin,
    cfg: &Config,
) -> Result<Vec<Source>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pattern in patterns {
        for path in expand(pattern, key)? {
            if seen.insert(path.clone()) {
                out.push(source(path, key, origin, cfg)?);
            }
        }
    }
    Ok(out)
}

pub(super) fn expand(pattern: &str, key: &str) -> Result<Vec<PathBuf>> {
    if !pattern.contains(['*', '?', '[']) {
        let path = PathBuf::from(pattern);
        if !path.exists() {
            crate::bail_usage!("{key}: {pattern}: no such file");
        }
        return Ok(vec![path]);
    }
    let paths = glob::glob(pattern)
        .map_err(|e| usage(format!("{key}: {pattern}: bad glob pattern: {e}")))?;
    let mut files = Vec::new();
    for p in paths {
        let p = p.map_err(|e| usage(format!("{key}: {pattern}: {e}")))?;
        if p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        crate::bail_usage!("{key}: {pattern}: no file matches");
    }
    // glob yields alphabetical order already; sorting makes it explicit for determinism.
    files.sort();
    Ok(files)
}

pub(super) fn source(path: PathBuf, key: &str, origin: Origin, cfg: &Config) -> Result<Source> {
    let display = path.display().to_string();
    if path.is_dir() {
        crate::bail_usage!(
            "{key}: {display}: is a directory (name files or a glob such as {display}/*.parquet)"
        );
    }
    let format = detect_format(&path, key)?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| usage(format!("{key}: {display}: {e}")))?
        .len();
    let name_class = |name: Option<&std::ffi::OsStr>| {
        name.and_then(|n| n.to_str())
            .and_then(|n| cfg.data.class_map.get(n))
            .map(|&c| c as i32)
    };
    let subset = path.parent().and_then(|p| p.file_name());
    let file_class = name_class(subset).or_else(|| name_class(path.file_stem()));
    Ok(Source {
        path,
        display,
        format,
        origin,
        bytes,
        file_class,
    })
}

/// By extension; a `.json` file that does not start with `[` is read as JSON lines,
/// since many datasets name JSONL files `.json`.
pub(super) fn detect_format(path: &Path, key: &str) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(Format::Jsonl),
        "parquet" => Ok(Format::Parquet),
        "gz" if has_jsonl_stem(path) => Ok(Format::JsonlGz),
        "json" => {
            let mut head = [0u8; 256];
            let n = File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|e| usage(format!("{key}: {}: {e}", path.display())))?;
            let head = head[..n].strip_prefix(UTF8_BOM).unwrap_or(&head[..n]);
            let first = head.iter().find(|b| !b.is_ascii_whitespace());
            Ok(if first == Some(&b'[') {
                Format::Json
            } else {
                Format::Jsonl
            })
        }
        _ => crate::bail_usage!(
            "{key}: {}: unknown input format (expected .jsonl, .jsonl.gz, .json or .parquet)",
            path.display()
        ),
    }
}

/// `name.jsonl.gz`, `name.ndjson.gz` or `name.json.gz` (read as JSON lines).
pub(super) fn has_jsonl_stem(path: &Path) -> bool {
    let stem = path.file_stem().map(Path::new);
    let inner = stem.and_then(Path::extension).and_then(|e| e.to_str());
    matches!(
        inner.map(str::to_ascii_lowercase).as_deref(),
        Some("jsonl" | "ndjson" | "json")
    )
}

/// Training and validation must not share a file, or validation loss would be measured on training data.
pub(super) fn check_disjoint(train: &[Source], valid: &[Source], key: &str) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let train: HashSet<PathBuf> = train.iter().map(|s| canon(&s.path)).collect();
    if let Some(v) = valid.iter().find(|v| train.contains(&canon(&v.path))) {
        crate::bail_usage!("{key}: {} is also a training input", v.display);
    }
    Ok(())
}
