//! `scripts/install.sh`: an install of `l2d` that users other than the one who
//! built it can run, and the built binary that keeps running in the checkout.
//!
//! The installed binary is run as user `nobody` (uid/gid 65534 on Debian- and
//! Red-Hat-like systems alike) through `setpriv`, so the tests need root; they
//! fail rather than skip without it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: &str = "65534";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh folder under the system's temporary folder that every user can enter
/// (a checkout or `target/` may sit in a home directory `nobody` cannot read).
fn open_temp_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("l2d-install-test-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `program args` run as user `nobody` with a bare environment; panics where that is impossible.
fn as_nobody(program: &str, args: &[&str]) -> Output {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the install tests switch to user nobody and so must run as root");
    Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin"])
        .arg(program)
        .args(args)
        .current_dir("/")
        .output()
        .expect("setpriv (util-linux) runs a command as another user; it is needed here")
}

fn install(args: &[&str]) -> Output {
    Command::new("bash").arg(script()).args(args).output().expect("run bash")
}

/// Asserts a refusal: exit 2, one `install.sh:` line on stderr holding every needle.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = common::stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("install.sh: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// The folder of every library `binary` loads, as `ldd` run by `nobody` resolves it.
fn loaded_dirs(binary: &Path) -> Vec<PathBuf> {
    let out = as_nobody("ldd", &[s(binary)]);
    let text = common::stdout(&out);
    assert!(out.status.success() && !text.contains("not found"), "ldd {}: {text}{}", binary.display(), common::stderr(&out));
    text.lines()
        .filter_map(|l| l.split(" => ").nth(1))
        .filter_map(|rest| rest.split(" (").next())
        .map(|p| std::fs::canonicalize(p).unwrap().parent().unwrap().to_path_buf())
        .collect()
}

/// Where the built binary's libtorch lives (the cache `scripts/setup.sh` filled).
fn build_libtorch_dir() -> PathBuf {
    let out = Command::new("ldd").arg(env!("CARGO_BIN_EXE_l2d")).output().unwrap();
    let text = common::stdout(&out);
    let line = text.lines().find(|l| l.trim_start().starts_with("libtorch_cpu.so =>")).unwrap_or_else(|| panic!("{text}"));
    let path = line.split(" => ").nth(1).unwrap().split(" (").next().unwrap();
    std::fs::canonicalize(path).unwrap().parent().unwrap().to_path_buf()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every entry under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walk(&path));
        }
        all.push(path);
    }
    all
}

#[test]
fn an_unprivileged_user_runs_the_installed_l2d() {
    let tmp = open_temp_dir();
    let prefix = tmp.path().join("usr");
    // Hard links keep the test fast (the libraries are ~3.5 GB); a plain install copies them.
    let out = install(&["--link", "--binary", env!("CARGO_BIN_EXE_l2d"), s(&prefix)]);
    assert!(out.status.success(), "install.sh: {}", common::stderr(&out));
    assert!(common::stderr(&out).contains(&format!("installed {}/bin/l2d", prefix.display())), "{}", common::stderr(&out));

    assert_eq!(mode(&prefix.join("bin/l2d")), 0o755);
    assert!(prefix.join("lib/l2d/torch/lib/libtorch_cpu.so").is_file());
    for p in walk(&prefix.join("lib/l2d")) {
        let m = mode(&p);
        if p.is_dir() {
            assert_eq!(m, 0o755, "{}", p.display());
        } else {
            assert_eq!(m & 0o444, 0o444, "{} is {m:o}, not readable by all", p.display());
        }
    }

    let installed = prefix.join("bin/l2d");
    let info = as_nobody(s(&installed), &["info"]);
    assert!(info.status.success(), "installed l2d info as nobody: {}", common::stderr(&info));
    assert!(common::stdout(&info).contains("libtorch   2.11.0"), "{}", common::stdout(&info));
    // Nothing comes from the build's libtorch cache, even where nobody could read it.
    let cache = build_libtorch_dir().parent().unwrap().parent().unwrap().to_path_buf();
    let prefix = std::fs::canonicalize(&prefix).unwrap();
    for dir in loaded_dirs(&installed) {
        assert!(dir.starts_with(&prefix) || !dir.starts_with(&cache), "{} loads from {}", installed.display(), dir.display());
    }
    assert!(loaded_dirs(&installed).contains(&prefix.join("lib/l2d/torch/lib")));

    // A second install replaces the first and leaves no staging folder.
    let again = install(&["--link", "--binary", env!("CARGO_BIN_EXE_l2d"), s(&prefix)]);
    assert!(again.status.success(), "reinstall: {}", common::stderr(&again));
    let names: Vec<String> = std::fs::read_dir(prefix.join("lib")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["l2d"]);
    assert!(as_nobody(s(&installed), &["info"]).status.success());
}

#[test]
fn the_built_binary_runs_without_ld_library_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_l2d")).arg("info").env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::stdout(&out).contains("libtorch   2.11.0"), "{}", common::stdout(&out));
}

#[test]
fn bad_usage_is_one_line_with_exit_2_and_creates_nothing() {
    let tmp = open_temp_dir();
    let prefix = tmp.path().join("usr");
    let p = s(&prefix);
    assert_refused(&install(&["--prefix", p]), &["unknown option '--prefix'"]);
    assert_refused(&install(&[p, "/opt"]), &["one PREFIX only", "/opt"]);
    assert_refused(&install(&["--binary"]), &["--binary needs a FILE"]);
    assert_refused(&install(&["--binary", "/nonexistent/l2d", p]), &["--binary /nonexistent/l2d", "not an executable file"]);
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert_refused(&install(&["--binary", env!("CARGO_BIN_EXE_l2d"), s(&file.join("usr"))]), &[s(&file), "is not a directory"]);
    assert!(!prefix.exists(), "a refused install created {}", prefix.display());

    // A PREFIX its user cannot write: refused before anything is built or copied.
    let script_copy = tmp.path().join("install.sh");
    std::fs::copy(script(), &script_copy).unwrap();
    let out = as_nobody("bash", &[s(&script_copy), s(&prefix)]);
    assert_refused(&out, &[&format!("PREFIX {p}"), &format!("{} is not writable", tmp.path().display())]);
}
