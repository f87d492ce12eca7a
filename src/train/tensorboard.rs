//! A TensorBoard event file of scalars, written without TensorFlow or a
//! protobuf crate: TFRecord framing around hand-encoded `Event` messages.
//!
//! Each record is appended and flushed on its own, so a killed run leaves a
//! readable file. A resumed run starts a new file in the same directory;
//! TensorBoard reads a directory's files in name order, and the new file's
//! start marker makes it drop the steps the resumed run writes again.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// An open `events.out.tfevents.*` file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (created if missing), named after the
    /// current time so that it sorts after the files of earlier runs there, for
    /// a run whose first record will be at `first_step`.
    pub fn create(dir: &Path, first_step: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host = hostname();
        let mut secs = wall_time() as u64;
        let (file, path) = loop {
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}"));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                // A run resumed within the same second: the next second's name still sorts last.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => secs += 1,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        };
        let mut writer = Self { file, path };
        let mut version = Vec::new();
        field_bytes(&mut version, 3, b"brain.Event:2");
        writer.write_event(0, &version)?;
        // SessionLog{status: START}: readers drop the earlier files' events from
        // `first_step` on, i.e. what a killed run logged past its checkpoint.
        let mut start = Vec::new();
        field_bytes(&mut start, 7, &[0x08, 0x01]);
        writer.write_event(first_step as i64, &start)?;
        Ok(writer)
    }

    /// Writes `(tag, value)` scalars at `step` as one event.
    pub fn write_scalars(&mut self, step: i64, scalars: &[(String, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            field_bytes(&mut v, 1, tag.as_bytes());
            key(&mut v, 2, 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &v);
        }
        let mut body = Vec::new();
        field_bytes(&mut body, 5, &summary);
        self.write_event(step, &body)
    }

    /// Writes a metrics record (`{"step": N, name: number, group: {name: number}}`)
    /// as scalars tagged by their names, nested ones as `group/name`.
    pub fn write_record(&mut self, record: &serde_json::Value) -> Result<()> {
        let step = record["step"].as_i64().context("a metrics record without a step")?;
        let mut scalars = Vec::new();
        collect_scalars("", record, &mut scalars);
        scalars.retain(|(tag, _)| tag != "step");
        self.write_scalars(step, &scalars)
    }

    /// One `Event{wall_time, step, ..body}` as a TFRecord, flushed.
    fn write_event(&mut self, step: i64, body: &[u8]) -> Result<()> {
        let mut event = Vec::with_capacity(body.len() + 20);
        key(&mut event, 1, 1);
        event.extend_from_slice(&wall_time().to_le_bytes());
        key(&mut event, 2, 0);
        varint(&mut event, step as u64);
        event.extend_from_slice(body);
        let len = (event.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(event.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(&event);
        record.extend_from_slice(&masked_crc32c(&event).to_le_bytes());
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Numbers of a JSON object, depth first, tagged by their key path.
fn collect_scalars(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let tag = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                collect_scalars(&tag, v, out);
            }
        }
        serde_json::Value::Number(n) => out.extend(n.as_f64().map(|x| (prefix.to_string(), x))),
        _ => {}
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok { buf.split(|&b| b == 0).next().unwrap_or_default() } else { b"localhost" };
    // Keep the file name one path component of plain characters.
    String::from_utf8_lossy(name).chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// A protobuf field key: field number and wire type.
fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

/// A length-delimited protobuf field (string, bytes or embedded message).
fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of data
/// holding CRCs does not degenerate.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_use_seven_bits_per_byte() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
    }
}
