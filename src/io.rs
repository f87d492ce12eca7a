//! Crash-safe file output: every file or directory appears whole or not at all.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary sibling file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    // tempfile's default 0600 would make every output private; 0666 less the
    // umask is what fs::write gives.
    let mut tmp = tempfile::Builder::new()
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(&dir);
    Ok(())
}

/// Creates `dir` and its parents. A location that cannot hold output (a
/// missing or read-only filesystem, a file in the way, no permission) is the
/// user's to fix, so it is a usage error (exit code 2) in every subcommand;
/// other failures (a full disk) are runtime failures.
pub fn create_output_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| output_location_error(e, &format!("cannot create {}", dir.display())))
}

fn output_location_error(e: std::io::Error, what: &str) -> anyhow::Error {
    use std::io::ErrorKind::*;
    let msg = format!("{what}: {e}");
    match e.kind() {
        NotFound | PermissionDenied | NotADirectory | ReadOnlyFilesystem | AlreadyExists => crate::error::usage(msg),
        _ => anyhow::anyhow!(msg),
    }
}

/// `items` as JSON lines (one object per line, each ending in a newline).
pub fn json_lines<T: serde::Serialize>(items: &[T]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for item in items {
        serde_json::to_writer(&mut bytes, item)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// A directory being built under a temporary name beside its destination.
///
/// Files go into [`StagedDir::path`]; [`StagedDir::commit`] syncs them and
/// renames the directory into place. Dropped without commit, it is removed.
pub struct StagedDir {
    tmp: Option<tempfile::TempDir>,
    dest: PathBuf,
}

impl StagedDir {
    /// Starts staging `dest`, which must not exist yet.
    pub fn new(dest: &Path) -> Result<Self> {
        if dest.exists() {
            crate::bail_usage!("output directory {} already exists", dest.display());
        }
        let parent = parent_dir(dest);
        create_output_dir(&parent)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .tempdir_in(&parent)
            .map_err(|e| output_location_error(e, &format!("cannot create a temporary directory in {}", parent.display())))?;
        Ok(Self { tmp: Some(tmp), dest: dest.to_path_buf() })
    }

    /// Where to write the files while staging.
    pub fn path(&self) -> &Path {
        self.tmp.as_ref().expect("staged directory already committed").path()
    }

    /// Fsyncs every file, then renames the directory to its destination.
    pub fn commit(mut self) -> Result<PathBuf> {
        let tmp = self.tmp.take().expect("staged directory already committed");
        for entry in fs::read_dir(tmp.path())? {
            let path = entry?.path();
            if path.is_file() {
                File::open(&path)?.sync_all()?;
            }
        }
        let staged = tmp.keep();
        fs::rename(&staged, &self.dest)
            .with_context(|| format!("cannot move the output into {}", self.dest.display()))?;
        sync_dir(&parent_dir(&self.dest));
        Ok(self.dest.clone())
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename durable; failure only weakens durability, so it is ignored.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_get_the_permissions_of_a_plain_write() {
        let dir = tempfile::tempdir().unwrap();
        let (atomic, plain) = (dir.path().join("atomic.json"), dir.path().join("plain.json"));
        write_atomic(&atomic, b"{}").unwrap();
        fs::write(&plain, b"{}").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }
}
