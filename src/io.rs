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
        .prefix(&staging_prefix(path))
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
/// other failures (a full disk) are runtime failures. Returns the directories
/// it made, so that a run failing before it produced anything can take them away.
pub fn create_output_dir(dir: &Path) -> Result<CreatedDirs> {
    let mut made = Vec::new();
    let mut missing = Some(dir);
    while let Some(d) = missing.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        made.push(d.to_path_buf());
        missing = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| output_location_error(e, &format!("cannot create {}", dir.display())))?;
    Ok(CreatedDirs(made))
}

/// The directories [`create_output_dir`] made, innermost first (none when the
/// directory was there already).
#[derive(Debug, Clone, Default)]
pub struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// Whether any directory was made (then the requested one was).
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// Removes the made directories that are empty, innermost first, stopping at
    /// the first that holds something: a failed run leaves no empty directories.
    pub fn remove_empty(&self) {
        for dir in &self.0 {
            if fs::remove_dir(dir).is_err() {
                return;
            }
        }
    }
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
/// renames the directory into place. Dropped without commit, it is removed,
/// and so are the parent directories made for it.
pub struct StagedDir {
    tmp: Option<tempfile::TempDir>,
    dest: PathBuf,
    made_parents: CreatedDirs,
}

impl StagedDir {
    /// Starts staging `dest`, which must not exist yet.
    pub fn new(dest: &Path) -> Result<Self> {
        if dest.exists() {
            crate::bail_usage!("output directory {} already exists", dest.display());
        }
        let parent = parent_dir(dest);
        let made_parents = create_output_dir(&parent)?;
        let tmp = tempfile::Builder::new()
            .prefix(&staging_prefix(dest))
            .tempdir_in(&parent)
            .map_err(|e| output_location_error(e, &format!("cannot create a temporary directory in {}", parent.display())))?;
        Ok(Self { tmp: Some(tmp), dest: dest.to_path_buf(), made_parents })
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

impl Drop for StagedDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            drop(tmp); // removes the staged files first
            self.made_parents.remove_empty();
        }
    }
}

/// Marks the temporary names of [`write_atomic`] and [`StagedDir`]: `.NAME.tmp-XXXXXX`.
const STAGING_MARK: &str = ".tmp-";

/// The temporary-name prefix of an output at `dest`.
fn staging_prefix(dest: &Path) -> String {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{name}{STAGING_MARK}")
}

/// Whether `name` is a temporary name of [`write_atomic`] or [`StagedDir`].
fn is_staging_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(STAGING_MARK)
}

/// Removes what killed writers left in `dir`: every staged directory and
/// temporary file (`.NAME.tmp-*`). Call it where one process owns `dir`, as it
/// starts. Returns how many were removed.
pub fn remove_staging_debris(dir: &Path) -> Result<usize> {
    remove_debris_where(dir, is_staging_name)
}

/// Removes the staged copies of `dest` that killed writers left beside it.
pub fn remove_staging_debris_of(dest: &Path) -> Result<usize> {
    let prefix = staging_prefix(dest);
    remove_debris_where(&parent_dir(dest), |name| name.starts_with(&prefix))
}

fn remove_debris_where(dir: &Path, debris: impl Fn(&str) -> bool) -> Result<usize> {
    let mut removed = 0;
    for path in dir_entries(dir)? {
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(&debris) {
            continue;
        }
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let gone = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        gone.with_context(|| format!("cannot remove the leftover {}", path.display()))?;
        removed += 1;
    }
    Ok(removed)
}

/// The paths of `dir`'s entries, in no particular order; none when `dir` is no directory.
pub fn dir_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    entries.map(|e| Ok(e.with_context(|| format!("cannot read {}", dir.display()))?.path())).collect()
}

/// On SIGINT or SIGTERM, removes the staged copies of `dest` and exits with
/// 128 + the signal's number, so that an interrupted command leaves no
/// half-written output behind.
pub fn remove_staging_on_signal(dest: &Path) -> Result<()> {
    let dest = dest.to_path_buf();
    on_signal(move || {
        let _ = remove_staging_debris_of(&dest);
    })
}

/// Set once a SIGINT or SIGTERM is being handled: the process is about to end
/// with 128 + the signal's number.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// On SIGINT or SIGTERM, runs `tidy` and exits with 128 + the signal's number.
pub fn on_signal(tidy: impl FnOnce() + Send + 'static) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
            tidy();
            // Not process::exit: its exit handlers tear down libtorch while the
            // main thread may still be computing, which then fails loudly.
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(128 + sig) };
        }
    });
    Ok(())
}

/// Blocks for good if a signal is being handled, so that its exit code (and
/// not an error the tidying caused in the main thread, such as a file it
/// removed) is how the process ends.
pub fn yield_to_signal_exit() {
    if SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
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

    #[test]
    fn staging_debris_is_what_killed_writers_leave_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staged = StagedDir::new(&out).unwrap();
        let kept = staged.path().to_path_buf();
        std::mem::forget(staged); // as a killed process leaves it
        let other = StagedDir::new(&dir.path().join("other")).unwrap();
        let other_path = other.path().to_path_buf();
        std::mem::forget(other);
        let tmp_file = tempfile::Builder::new().prefix(&staging_prefix(&out.join("x.json"))).tempfile_in(dir.path()).unwrap();
        let (_, tmp_file) = tmp_file.keep().unwrap();
        fs::write(dir.path().join(".hidden"), b"user file").unwrap();
        fs::write(dir.path().join("data.tmp-1"), b"user file").unwrap();
        assert_eq!(remove_staging_debris_of(&out).unwrap(), 1);
        assert!(!kept.exists() && other_path.exists() && tmp_file.exists());
        assert_eq!(remove_staging_debris(dir.path()).unwrap(), 2);
        assert!(!other_path.exists() && !tmp_file.exists());
        assert!(dir.path().join(".hidden").exists() && dir.path().join("data.tmp-1").exists());
    }
}
