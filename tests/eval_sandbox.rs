//! The code sandbox against hostile programs: each one is contained, nothing
//! outside its directory changes, no process outlives it, and the evaluation
//! goes on with the program counted as failed or timed out.
//!
//! Limits are kept small (1–1.5 s timeouts, 32 processes) so the file runs in
//! seconds, and every hostile program is bounded by construction as well (the
//! fork bomb stops at 256 processes) so a broken sandbox cannot take the
//! machine down.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use l2d::eval::sandbox::*;

fn opts(timeout_ms: u64) -> SandboxOptions {
    SandboxOptions {
        timeout: Duration::from_millis(timeout_ms),
        max_processes: 32,
        ..Default::default()
    }
}

fn run(code: &str, opts: &SandboxOptions) -> RunOutcome {
    run_program(code, opts).expect("the sandbox runs the program")
}

fn marker(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("l2d-sandbox-test-{name}-{}-{nanos}", std::process::id())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Pids of live processes whose command line contains `marker` (zombies have none).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                found.push(pid);
            }
        }
    }
    found
}

/// Counts marked processes while a run is going on; returns the most seen at once.
fn watch(marker: &str) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, marker) = (stop.clone(), marker.to_string());
    let handle = std::thread::spawn(move || {
        let mut most = 0;
        while !flag.load(Ordering::Relaxed) {
            most = most.max(processes_with(&marker).len());
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    });
    (stop, handle)
}

fn assert_no_leftovers(marker: &str) {
    // SIGKILLed processes may take a moment to leave /proc without a PID namespace.
    let until = Instant::now() + Duration::from_millis(500);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "processes survived the sandbox: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn passing_program_passes() {
    let out = run(
        "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n",
        &opts(3000),
    );
    assert!(out.passed, "{out:?}");
    assert_eq!(out.status, "passed");
    assert!(out.duration < Duration::from_secs(3));
}

#[test]
fn failing_assert_fails_with_traceback() {
    let out = run(
        "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5, 'wrong sum'\n",
        &opts(3000),
    );
    assert!(!out.passed);
    assert_eq!(out.status, "failed");
    assert!(
        out.detail.contains("AssertionError: wrong sum"),
        "{}",
        out.detail
    );
    assert!(out.detail.starts_with("exit status 1"), "{}", out.detail);
}

#[test]
fn syntax_error_fails() {
    let out = run("def f(:\n    pass\n", &opts(3000));
    assert_eq!(out.status, "failed");
    assert!(out.detail.contains("SyntaxError"), "{}", out.detail);
}

#[test]
fn program_gets_its_own_writable_directory_which_is_removed() {
    let code = r#"
import os, sys, tempfile
cwd = os.getcwd()
assert os.environ["HOME"] == cwd, os.environ
assert os.environ["TMPDIR"].startswith(cwd), os.environ
assert os.environ["PYTHONHASHSEED"] == "0"
for path in ["own.txt", os.path.join(os.environ["HOME"], "home.txt")]:
    with open(path, "w") as f:
        f.write("mine")
with tempfile.NamedTemporaryFile(delete=False) as f:
    f.write(b"scratch")
assert f.name.startswith(cwd), f.name
os.remove("own.txt")
sys.stderr.write("WORKDIR=" + cwd + "\n")
"#;
    let out = run(code, &opts(3000));
    assert!(out.passed, "{out:?}");
    let dir = out
        .detail
        .lines()
        .find_map(|l| l.strip_prefix("WORKDIR="))
        .expect("the program reports its directory");
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}

#[test]
fn endless_loop_times_out_and_leaves_no_process() {
    let m = marker("loop");
    // Helpers with the marker on their command line, one of them escaping the
    // process group with setsid; then the program itself loops under the marker.
    let code = format!(
        r#"
import os, subprocess, sys
M = "{m}"
subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)", M])
subprocess.Popen([sys.executable, "-c", "import os, time\nos.setsid()\nwhile True: time.sleep(0.05)", M])
os.execv(sys.executable, [sys.executable, "-c", "while True: pass", M])
"#
    );
    let (stop, seen) = watch(&m);
    let out = run(&code, &opts(1000));
    stop.store(true, Ordering::Relaxed);
    let most = seen.join().unwrap();
    assert_eq!(out.status, "timeout", "{out:?}");
    assert!(!out.passed);
    assert!(
        out.duration < Duration::from_millis(1000 + 1500),
        "took {:?}",
        out.duration
    );
    assert!(
        most >= 3,
        "the loop and its two helpers should have been seen running (saw {most})"
    );
    assert_no_leftovers(&m);
}

#[test]
fn background_processes_die_with_the_program() {
    let m = marker("daemon");
    let code = format!(
        r#"
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, time\nos.setsid()\ntime.sleep(30)", "{m}"])
time.sleep(0.3)
"#
    );
    let out = run(&code, &opts(3000));
    assert!(out.passed, "{out:?}");
    assert_no_leftovers(&m);
}

#[test]
fn fork_bomb_is_contained() {
    let m = marker("bomb");
    // At most 2**8 = 256 processes even if nothing else stopped it.
    let bomb = "import os, sys, time
refused = False
for _ in range(8):
    try:
        os.fork()
    except OSError:
        refused = True
if refused:
    sys.stderr.write('fork refused\\n')
    sys.stderr.flush()
time.sleep(60)
";
    // Re-exec'd so that every process of the bomb carries the marker on its command line.
    let code = format!(
        "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb:?}, {m:?}])\n"
    );
    let options = opts(1500);
    let (stop, seen) = watch(&m);
    let started = Instant::now();
    let out = run(&code, &options);
    stop.store(true, Ordering::Relaxed);
    let most = seen.join().unwrap();
    assert_eq!(out.status, "timeout", "{out:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500 + 2000),
        "took {:?}",
        started.elapsed()
    );
    assert!(most > 1, "the bomb never forked (saw {most} processes)");
    assert_no_leftovers(&m);
    if is_root() {
        // As root the program runs under its own uid, where RLIMIT_NPROC holds.
        assert!(
            most as u64 <= options.max_processes,
            "{most} processes despite max_processes = {}",
            options.max_processes
        );
        assert!(out.detail.contains("fork refused"), "{}", out.detail);
    }
    // The machine is still responsive: a normal program runs at once.
    let after = run("print('still here')\n", &opts(3000));
    assert!(
        after.passed && after.duration < Duration::from_secs(2),
        "{after:?}"
    );
}

#[test]
fn memory_hog_fails_without_hurting_the_evaluator() {
    let out = run(
        "x = bytearray(4 * 1024 ** 3)\nprint(len(x))\n",
        &SandboxOptions::default(),
    );
    assert_eq!(out.status, "failed", "{out:?}");
    assert!(out.detail.contains("MemoryError"), "{}", out.detail);
}

#[test]
fn writes_and_deletes_outside_its_directory_are_refused() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let victim = scratch.path().join("victim.txt");
    let other = scratch.path().join("other.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::write(&other, "also precious").unwrap();
    let m = marker("files");
    let tmp_victim = tempfile::Builder::new()
        .prefix(&m)
        .tempfile_in("/tmp")
        .unwrap();
    std::fs::write(tmp_victim.path(), "tmp precious").unwrap();
    let new_in_scratch = scratch.path().join("new.txt");
    let new_in_tmp = format!("/tmp/{m}-created");
    let new_in_shm = format!("/dev/shm/{m}-created");
    let code = format!(
        r#"
import os, sys
done = []
def attempt(name, f):
    try:
        f()
        done.append(name)
    except Exception as e:
        sys.stderr.write(f"{{name}}: {{e!r}}\n")
def overwrite(p):
    with open(p, "w") as f:
        f.write("pwned")
attempt("remove victim", lambda: os.remove({victim:?}))
attempt("overwrite other", lambda: overwrite({other:?}))
attempt("chmod other", lambda: os.chmod({other:?}, 0o777))
attempt("rename victim", lambda: os.rename({victim:?}, {victim:?} + ".moved"))
attempt("remove tmp victim", lambda: os.remove({tmp_victim:?}))
attempt("overwrite tmp victim", lambda: overwrite({tmp_victim:?}))
attempt("create in scratch", lambda: overwrite({new_in_scratch:?}))
attempt("create in /tmp", lambda: overwrite({new_in_tmp:?}))
attempt("create in /dev/shm", lambda: overwrite({new_in_shm:?}))
sys.stderr.write("succeeded: " + repr(done) + "\n")
sys.exit(0 if done else 1)
"#,
        victim = victim.to_str().unwrap(),
        other = other.to_str().unwrap(),
        tmp_victim = tmp_victim.path().to_str().unwrap(),
        new_in_scratch = new_in_scratch.to_str().unwrap(),
    );
    let out = run(&code, &opts(3000));
    assert_eq!(out.status, "failed", "{out:?}");
    assert!(out.detail.contains("succeeded: []"), "{}", out.detail);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "also precious");
    assert_eq!(
        std::fs::read_to_string(tmp_victim.path()).unwrap(),
        "tmp precious"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_ne!(
        std::fs::metadata(&other).unwrap().permissions().mode() & 0o777,
        0o777
    );
    for created in [
        new_in_scratch.as_path(),
        Path::new(&new_in_tmp),
        Path::new(&new_in_shm),
    ] {
        assert!(!created.exists(), "{} was created", created.display());
    }
}

#[test]
fn loopback_socket_is_unreachable() {
    assert!(
        network_isolation_available(),
        "no network namespace can be created here, so sandboxed programs could reach the network"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')\nprint('connected')\n"
    );
    let out = run(&code, &opts(3000));
    assert_eq!(out.status, "failed", "{out:?}");
    assert!(
        out.detail.contains("OSError") || out.detail.contains("Error"),
        "{}",
        out.detail
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener got a connection from the sandbox: {other:?}"),
    }
}

#[test]
fn parent_environment_is_not_visible() {
    let name = "L2D_SANDBOX_TEST_SECRET";
    let secret = marker("secret");
    std::env::set_var(name, &secret);
    let code = format!(
        r#"
import glob, os, sys
found = []
env = repr(dict(os.environ))
sys.stderr.write(env + "\n")
if "{name}" in env:
    found.append("os.environ")
paths = ["/proc/%d/environ" % os.getppid(), "/proc/1/environ"] + glob.glob("/proc/[0-9]*/environ")
for p in paths:
    try:
        data = open(p, "rb").read().decode("latin-1")
    except Exception as e:
        sys.stderr.write(p + ": " + repr(e) + "\n")
        continue
    if "{name}" in data:
        found.append(p)
        sys.stderr.write(data.replace("\0", "\n") + "\n")
sys.stderr.write("found: " + repr(found) + "\n")
sys.exit(0 if found else 1)
"#
    );
    let out = run(&code, &opts(3000));
    assert_eq!(out.status, "failed", "{out:?}");
    assert!(out.detail.contains("found: []"), "{}", out.detail);
    assert!(
        !out.detail.contains(&secret),
        "the secret leaked: {}",
        out.detail
    );
}

#[test]
fn endless_output_is_capped() {
    let code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)\n";
    let out = run(code, &opts(1000));
    assert_eq!(out.status, "timeout", "{out:?}");
    assert!(
        out.duration < Duration::from_millis(1000 + 1500),
        "took {:?}",
        out.duration
    );
    assert!(
        out.detail.len() < 4096,
        "detail of {} bytes",
        out.detail.len()
    );
}

#[test]
fn missing_interpreter_is_an_error_not_a_failure() {
    let options = SandboxOptions {
        python: "/nonexistent/python3".into(),
        ..opts(1000)
    };
    assert!(run_program("print(1)\n", &options).is_err());
    let outcomes = run_many(&["print(1)\n".to_string()], &options, 2);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].status, "error");
    assert!(!outcomes[0].passed);
}

#[test]
fn run_many_keeps_order_and_goes_on_past_hostile_programs() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let programs: Vec<String> = vec![
        "assert sum([1, 2, 3]) == 6\n".into(),
        "assert 1 == 2\n".into(),
        "while True:\n    pass\n".into(),
        "def f(:\n".into(),
        "x = bytearray(4 * 1024 ** 3)\n".into(),
        format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"),
        "import os, time\nfor _ in range(6):\n    try:\n        os.fork()\n    except OSError:\n        pass\ntime.sleep(30)\n".into(),
        "print('last')\n".into(),
    ];
    let started = Instant::now();
    let outcomes = run_many(&programs, &opts(1000), 3);
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    let expected = [
        "passed", "failed", "timeout", "failed", "failed", "failed", "timeout", "passed",
    ];
    assert_eq!(statuses, expected, "{outcomes:#?}");
    assert_eq!(outcomes.iter().filter(|o| o.passed).count(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
