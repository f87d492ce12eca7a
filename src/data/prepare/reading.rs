//! Reading input files into chunks of records, on a thread per file.

use super::*;

/// One record before parsing: its 1-based line (or row) and its body.
pub(super) struct Raw {
    pub(super) line: u64,
    pub(super) body: Body,
}

pub(super) enum Body {
    /// JSON text, parsed by the worker so that parsing runs in parallel.
    Json(Vec<u8>),
    /// An already decoded record (a Parquet row).
    Value(Value),
    /// The reader could not even delimit the record.
    Bad(Malformed),
}

/// Reads one file on its own thread and tokenises its chunks on the rayon pool, in order.
pub(super) fn read_source(
    idx: usize,
    src: &Source,
    ctx: &Ctx,
    col: &mut Collector,
    progress: &Mutex<Progress>,
) -> Result<()> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Vec<Raw>>(2);
        let reader = s.spawn(move || read_file(src, progress, &mut |chunk| tx.send(chunk).is_ok()));
        let mut result = Ok(());
        for chunk in rx.iter() {
            let lines: Vec<u64> = chunk.iter().map(|r| r.line).collect();
            let outcomes: Result<Vec<Outcome>> = chunk
                .into_par_iter()
                .map(|raw| ctx.process(raw, src))
                .collect();
            result = outcomes.and_then(|o| col.absorb(idx, src, &lines, o));
            if result.is_err() {
                break;
            }
            let mut p = lock(progress);
            let read = col.records.read;
            let rate = read as f64 / p.elapsed_s().max(1e-9);
            p.set_message(format!("{read} records, {rate:.0} records/s"));
        }
        // Dropping the receiver makes the reader's next send fail, so it stops early.
        drop(rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("reader thread panicked")));
        result.and(read)
    })
}

/// Sends the records of `src` in chunks; `emit` returning false stops reading quietly.
pub(super) fn read_file(
    src: &Source,
    progress: &Mutex<Progress>,
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    let start = lock(progress).done();
    let advance = |done: u64| lock(progress).set_done(start + done.min(src.bytes));
    match src.format {
        Format::Jsonl | Format::JsonlGz => read_jsonl(src, &advance, emit),
        Format::Json => read_json(src, &advance, emit),
        Format::Parquet => read_parquet(src, &advance, emit),
    }?;
    advance(src.bytes);
    Ok(())
}

/// The progress, also after a reader thread panicked while holding it (it only counts).
pub(super) fn lock(progress: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn open_error(src: &Source, e: impl std::fmt::Display) -> anyhow::Error {
    usage(format!("{}: cannot read: {e}", src.display))
}

pub(super) fn read_jsonl(
    src: &Source,
    advance: &dyn Fn(u64),
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    let file = File::open(&src.path).map_err(|e| open_error(src, e))?;
    // Progress counts decompressed bytes for gzip; `advance` caps it at the file size.
    let plain: Box<dyn Read> = match src.format {
        Format::JsonlGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
        _ => Box::new(file),
    };
    let mut reader = BufReader::with_capacity(1 << 20, plain);
    let (mut chunk, mut chunk_bytes, mut done, mut line) = (Vec::new(), 0usize, 0u64, 0u64);
    loop {
        let mut buf = Vec::new();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| open_error(src, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        done += n as u64;
        if line == 1 && buf.starts_with(UTF8_BOM) {
            buf.drain(..UTF8_BOM.len());
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        chunk_bytes += buf.len();
        chunk.push(Raw {
            line,
            body: Body::Json(buf),
        });
        if chunk.len() >= CHUNK_RECORDS || chunk_bytes >= CHUNK_BYTES {
            advance(done);
            if !emit(std::mem::take(&mut chunk)) {
                return Ok(());
            }
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}

/// A top-level JSON array: each element is delimited here and parsed by a worker.
pub(super) fn read_json(
    src: &Source,
    advance: &dyn Fn(u64),
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    let text = std::fs::read(&src.path).map_err(|e| open_error(src, e))?;
    let body = text.strip_prefix(UTF8_BOM).unwrap_or(&text);
    let mut chunk = Vec::new();
    let mut scan = ArrayScanner::new(body);
    loop {
        match scan.next_element() {
            Ok(Some((line, bytes))) => chunk.push(Raw {
                line,
                body: Body::Json(bytes.to_vec()),
            }),
            Ok(None) => break,
            Err((line, detail)) => {
                // The rest of the file cannot be delimited; report it as one malformed record.
                chunk.push(Raw {
                    line,
                    body: Body::Bad(Malformed::new("invalid_json", detail)),
                });
                break;
            }
        }
        if chunk.len() >= CHUNK_RECORDS {
            advance(scan.pos as u64);
            if !emit(std::mem::take(&mut chunk)) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}

/// Line and reason where a JSON array stopped making sense.
pub(super) type ScanError = (u64, String);

/// Walks the elements of a top-level JSON array without building them.
pub(super) struct ArrayScanner<'a> {
    pub(super) text: &'a [u8],
    pub(super) pos: usize,
    pub(super) line: u64,
    pub(super) started: bool,
    pub(super) done: bool,
}

impl<'a> ArrayScanner<'a> {
    pub(super) fn new(text: &'a [u8]) -> Self {
        Self {
            text,
            pos: 0,
            line: 1,
            started: false,
            done: false,
        }
    }

    /// Moves past whitespace, counting lines.
    pub(super) fn skip_ws(&mut self) {
        while let Some(&b) = self.text.get(self.pos) {
            if !b.is_ascii_whitespace() {
                break;
            }
            if b == b'\n' {
                self.line += 1;
            }
            self.pos += 1;
        }
    }

    /// The next element's line and bytes, `None` after `]`, or the line and reason it stopped.
    pub(super) fn next_element(&mut self) -> Result<Option<(u64, &'a [u8])>, ScanError> {
        if self.done {
            return Ok(None);
        }
        self.skip_ws();
        if !self.started {
            if self.text.get(self.pos) != Some(&b'[') {
                return Err((
                    self.line,
                    "expected a top-level JSON array of records".into(),
                ));
            }
            self.started = true;
            self.pos += 1;
            self.skip_ws();
            if self.text.get(self.pos) == Some(&b']') {
                self.done = true;
                return Ok(None);
            }
        } else {
            match self.text.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.done = true;
                    return Ok(None);
                }
                _ => {
                    return Err((
                        self.line,
                        "expected ',' or ']' between array elements".into(),
                    ))
                }
            }
        }
        let line = self.line;
        let rest = &self.text[self.pos..];
        let mut stream =
            serde_json::Deserializer::from_slice(rest).into_iter::<serde::de::IgnoredAny>();
        match stream.next() {
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                let bytes = &rest[..end];
                self.line += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                self.pos += end;
                Ok(Some((line, bytes)))
            }
            Some(Err(e)) => Err((line + e.line().saturating_sub(1) as u64, e.to_string())),
            None => Err((line, "unexpected end of file inside the array".into())),
        }
    }
}

/// The columns a Parquet file may contribute; others are not even decoded.
pub(super) const PARQUET_COLUMNS: &[&str] = &["messages", "category", "input_ids", "labels"];

pub(super) fn read_parquet(
    src: &Source,
    advance: &dyn Fn(u64),
    emit: &mut dyn FnMut(Vec<Raw>) -> bool,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::reader::RowIter;
    use parquet::schema::types::Type;

    let file = File::open(&src.path).map_err(|e| open_error(src, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| usage(format!("{}: not a readable Parquet file: {e}", src.display)))?;
    let meta = reader.metadata().file_metadata();
    let total_rows = meta.num_rows().max(1) as u64;
    let schema = meta.schema();
    let fields: Vec<_> = schema
        .get_fields()
        .iter()
        .filter(|f| PARQUET_COLUMNS.contains(&f.name()))
        .cloned()
        .collect();
    if !fields
        .iter()
        .any(|f| f.name() == "messages" || f.name() == "input_ids")
    {
        let have: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        crate::bail_usage!(
            "{}: no `messages` or `input_ids` column (has {})",
            src.display,
            have.join(", ")
        );
    }
    let projection = Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()?;
    let rows = RowIter::from_file(Some(projection), &reader)
        .map_err(|e| usage(format!("{}: cannot read Parquet rows: {e}", src.display)))?;
    let mut chunk = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| {
            usage(format!(
                "{}: row {}: cannot decode: {e}",
                src.display,
                i + 1
            ))
        })?;
        let value = Value::Object(
            row.get_column_iter()
                .map(|(k, f)| (k.clone(), crate::data::parquet_json::to_json(f)))
                .collect(),
        );
        chunk.push(Raw {
            line: i as u64 + 1,
            body: Body::Value(value),
        });
        if chunk.len() >= CHUNK_RECORDS {
            advance(src.bytes * (i as u64 + 1) / total_rows);
            if !emit(std::mem::take(&mut chunk)) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}
