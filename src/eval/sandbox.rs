//! Runs model-written Python programs (HumanEval, MBPP) so that they cannot
//! touch anything: each program gets a fresh directory, resource limits, a
//! scrubbed environment, and whatever kernel isolation this machine allows.
//!
//! Process layout. `Command` forks a small supervisor ("I") that never execs:
//! it enters new network, PID and mount namespaces, makes every mount
//! read-only except the program's directory, and forks the program ("G"),
//! which becomes PID 1 of the new PID namespace, starts a new session, sets
//! its rlimits, drops to a per-run unprivileged uid and execs `python3`.
//! Because G is the namespace's init, its death makes the kernel kill every
//! process left in the namespace, including ones that left the process group
//! with `setsid`. I only waits: when G exits, or when the parent closes the
//! control pipe (timeout, or the parent died), it SIGKILLs G's process group,
//! reaps G and reports G's wait status and CPU time on the status pipe. I is
//! needed because a new PID namespace only applies to the caller's children,
//! and the parent must not be that caller (`unshare(CLONE_NEWPID)` in a
//! thread of the evaluation process would affect all its later children).
//!
//! What this machine offers is probed once in a forked child (see
//! [`network_isolation_available`]); every layer that is missing is logged.
//! As root (the usual case in these containers) all layers work:
//! - network namespace: only a loopback device that is down, so no socket
//!   reaches anything, not even 127.0.0.1 of the host;
//! - PID namespace: the program sees and signals only its own processes
//!   (a fresh `/proc` is mounted), and nothing survives it;
//! - mount namespace: all mounts read-only and nosuid, the program's
//!   directory bind-mounted writable, so even world-writable `/tmp` and
//!   `/dev/shm` stay untouched;
//! - uid drop: root is exempt from `RLIMIT_NPROC` and ignores file
//!   permissions, so the program runs as a fresh uid per run (not `nobody`,
//!   which other processes may share: a shared uid would share the process
//!   count and could signal or read those processes' files).
//!
//! Without root the probe falls back to an unprivileged user namespace; with
//! neither, only rlimits, the process group and the timeout remain.
//!
//! Python runs as `python3 -B -s` with `PYTHONSAFEPATH=1` and
//! `PYTHONNOUSERSITE=1` instead of `-I`: `-I` implies `-E`, which would also
//! ignore `PYTHONHASHSEED=0`, and a fixed hash seed makes set iteration
//! order, hence scores, reproducible. The environment is built from scratch,
//! so `-E` has nothing left to protect against.
//!
//! One concept in one file, longer than the usual ~600 lines: the isolation
//! steps, the supervisor and the outcome are each meaningful only beside the
//! others, and splitting them would spread one security boundary over files.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Limits and interpreter for one sandboxed run.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout: Duration,
    /// Address-space limit (RLIMIT_AS) in bytes.
    pub memory_bytes: u64,
    /// CPU-time limit (RLIMIT_CPU) in seconds; keep it above `timeout` so busy loops end as timeouts.
    pub cpu_seconds: u64,
    /// Process and thread limit (RLIMIT_NPROC).
    pub max_processes: u64,
    /// Largest file the program may write (RLIMIT_FSIZE), in bytes.
    pub max_file_bytes: u64,
    /// Open file descriptor limit (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Interpreter: a bare name is looked up on the sandbox PATH (`/usr/local/bin:/usr/bin:/bin`).
    pub python: PathBuf,
    /// A line the program must write on stdout to pass: proof that it ran to its end ([`end_marker`]).
    pub end_marker: Option<String>,
}

impl Default for SandboxOptions {
    /// 3 s, 1 GiB of address space, 4 CPU seconds, 64 processes, 16 MiB files, 256 descriptors, `python3`.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            memory_bytes: 1 << 30,
            // Above the wall limit, so a busy single thread ends as a timeout, not a CPU kill.
            cpu_seconds: 4,
            max_processes: 64,
            max_file_bytes: 16 << 20,
            max_open_files: 256,
            python: PathBuf::from("python3"),
            end_marker: None,
        }
    }
}

/// The result of one sandboxed program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit status 0 within the time limit.
    pub passed: bool,
    /// "passed", "failed", "timeout" or "error" (the sandbox could not run it).
    pub status: String,
    /// Why it ended, then the last lines of stderr (stdout if stderr is empty), truncated.
    pub detail: String,
    /// Wall time from start until the whole process tree was gone.
    pub duration: Duration,
}

/// The sandbox's PATH; also where a bare interpreter name is looked up.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Bytes kept from each of stdout and stderr (the most recent ones).
const STREAM_CAP: usize = 64 * 1024;
const DETAIL_LINES: usize = 20;
const DETAIL_BYTES: usize = 2000;
/// Per-run uids start here: above the ranges distributions, systemd
/// (dynamic users, nspawn up to 0x6FFFFFFF) and subuid files hand out.
const UID_BASE: u32 = 0x7000_0000;
/// How long the supervisor gets to kill and reap after the timeout before it is killed itself.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the last output once the program is gone.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// A random line for [`SandboxOptions::end_marker`], drawn from the OS so that no program text can know it.
pub fn end_marker() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let drawn = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if drawn.is_err() {
        // No /dev/urandom: the clock's nanoseconds mixed by the std hasher's per-process random keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        bytes[..8].copy_from_slice(&h.finish().to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("l2d-tests-done-{hex}")
}

/// Runs one Python program; passed = exit status 0 within the time limit (and the end marker, if one is set).
pub fn run_program(code: &str, opts: &SandboxOptions) -> Result<RunOutcome> {
    let iso = isolation();
    let python = resolve_python(&opts.python)?;
    let uid = iso.drop_uid.then(next_uid);
    let dir = tempfile::Builder::new()
        .prefix("l2d-sandbox-")
        .tempdir()
        .context("creating the sandbox directory")?;
    let result = prepare_and_run(code, opts, iso, &python, dir.path(), uid);
    remove_tree(dir);
    result
}

/// Runs many programs on `workers` threads, results in input order.
pub fn run_many(programs: &[String], opts: &SandboxOptions, workers: usize) -> Vec<RunOutcome> {
    let workers = workers.clamp(1, programs.len().max(1));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<RunOutcome>>> = programs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(code) = programs.get(i) else { break };
                let start = Instant::now();
                // A sandbox failure must not stop the evaluation: it counts as an unsolved item.
                let outcome = run_program(code, opts).unwrap_or_else(|e| RunOutcome {
                    passed: false,
                    status: "error".into(),
                    detail: format!("{e:#}"),
                    duration: start.elapsed(),
                });
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every program index is taken by exactly one worker")
        })
        .collect()
}

/// Whether network isolation (a new network namespace) is available here.
pub fn network_isolation_available() -> bool {
    isolation().net_ns
}

// ---------------------------------------------------------------------------
// What the kernel allows here, probed once.

#[derive(Debug, Clone, Copy, Default)]
struct Isolation {
    /// Namespaces need an unprivileged user namespace first (not root).
    user_ns: bool,
    net_ns: bool,
    pid_ns: bool,
    /// Mount namespace with everything read-only but the program's directory.
    mount_ns: bool,
    /// Root: run the program as a fresh unprivileged uid.
    drop_uid: bool,
}

const P_OK: i32 = 1;
const P_USER: i32 = 2;
const P_NET: i32 = 4;
const P_PID: i32 = 8;
const P_MOUNT: i32 = 16;
const P_DROP: i32 = 32;

fn isolation() -> Isolation {
    static ISOLATION: OnceLock<Isolation> = OnceLock::new();
    *ISOLATION.get_or_init(|| {
        let iso = probe_isolation();
        tracing::info!(
            network_namespace = iso.net_ns,
            pid_namespace = iso.pid_ns,
            read_only_mounts = iso.mount_ns,
            unprivileged_uid = iso.drop_uid,
            user_namespace = iso.user_ns,
            "code sandbox isolation"
        );
        if !iso.net_ns {
            tracing::warn!("code sandbox: no network namespace available; programs can reach the network");
        }
        if !iso.pid_ns {
            tracing::warn!("code sandbox: no PID namespace; processes that leave the process group may survive a run");
        }
        if !iso.mount_ns && !iso.drop_uid {
            tracing::warn!("code sandbox: no read-only mounts and no uid drop; programs can write wherever this user can");
        }
        iso
    })
}

/// Tries, in a throwaway child, exactly the steps a real run takes.
fn probe_isolation() -> Isolation {
    let root = CString::new("/").expect("no NUL");
    let Ok(tmp) = CString::new(std::env::temp_dir().as_os_str().as_bytes()) else {
        return Isolation::default();
    };
    // SAFETY: the child only makes raw system calls and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let bits = unsafe { probe_child(&root, &tmp) };
        unsafe { libc::_exit(bits) };
    }
    if pid < 0 {
        return Isolation::default();
    }
    let mut status = 0;
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Isolation::default();
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) & P_OK == 0 {
        return Isolation::default();
    }
    let bits = libc::WEXITSTATUS(status);
    Isolation {
        user_ns: bits & P_USER != 0,
        net_ns: bits & P_NET != 0,
        pid_ns: bits & P_PID != 0,
        mount_ns: bits & P_MOUNT != 0,
        drop_uid: bits & P_DROP != 0,
    }
}

/// Runs in a forked child: raw system calls only.
unsafe fn probe_child(root: &CString, tmp: &CString) -> i32 {
    let mut bits = P_OK;
    // Root can create namespaces directly; otherwise a user namespace may grant the right.
    if libc::unshare(libc::CLONE_NEWNET) == 0 {
        bits |= P_NET;
    } else if libc::unshare(libc::CLONE_NEWUSER) == 0 {
        bits |= P_USER;
        if libc::unshare(libc::CLONE_NEWNET) == 0 {
            bits |= P_NET;
        }
    }
    if libc::unshare(libc::CLONE_NEWPID) == 0 {
        bits |= P_PID;
    }
    if libc::unshare(libc::CLONE_NEWNS) == 0 && seal_mounts(root, tmp).is_ok() {
        bits |= P_MOUNT;
    }
    if bits & P_USER == 0 && libc::geteuid() == 0 && drop_privileges(UID_BASE).is_ok() {
        bits |= P_DROP;
    }
    bits
}

// ---------------------------------------------------------------------------
// One run, parent side.

fn prepare_and_run(
    code: &str,
    opts: &SandboxOptions,
    iso: Isolation,
    python: &Path,
    work: &Path,
    uid: Option<u32>,
) -> Result<RunOutcome> {
    let tmp = work.join("tmp");
    std::fs::create_dir(&tmp).context("creating the sandbox TMPDIR")?;
    let script = work.join("main.py");
    std::fs::write(&script, code).context("writing the program into the sandbox")?;
    for path in [work, &tmp] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Some(uid) = uid {
        for path in [work, &tmp, &script] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid))
                .with_context(|| format!("handing {} to the sandbox uid {uid}", path.display()))?;
        }
    }

    let (ctl_r, ctl_w) = cloexec_pipe()?;
    let (status_r, status_w) = cloexec_pipe()?;
    let limits = Limits {
        address_space: opts.memory_bytes,
        cpu_seconds: opts.cpu_seconds.max(1),
        // Without our own uid the kernel counts every process of this user, so leave room for those.
        processes: if uid.is_some() {
            opts.max_processes
        } else {
            user_tasks() + opts.max_processes
        },
        file_bytes: opts.max_file_bytes,
        open_files: opts.max_open_files,
    };
    let setup = ChildSetup {
        iso,
        ctl: ctl_r.as_raw_fd(),
        status: status_w.as_raw_fd(),
        root: CString::new("/").expect("no NUL"),
        proc_: CString::new("/proc").expect("no NUL"),
        work: CString::new(work.as_os_str().as_bytes()).context("sandbox path contains NUL")?,
        limits,
        uid,
    };

    let mut cmd = Command::new(python);
    cmd.arg("-B")
        .arg("-s")
        .arg(&script)
        .env_clear()
        .env("PATH", SANDBOX_PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", work)
        .env("TMPDIR", &tmp)
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONSAFEPATH", "1")
        .env("PYTHONNOUSERSITE", "1")
        // Parallel workers would oversubscribe the cores, and each BLAS thread counts against RLIMIT_NPROC.
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `ChildSetup::run` only makes async-signal-safe system calls on memory
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || setup.run());
    }

    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| match uid {
        Some(uid) => format!(
            "starting {} in the sandbox as uid {uid} (the interpreter must be readable by every user, e.g. /usr/bin/python3)",
            python.display()
        ),
        None => format!("starting {} in the sandbox", python.display()),
    })?;
    // The supervisor holds the other ends; ours must go so that its exit reads as EOF.
    drop(ctl_r);
    drop(status_w);
    let mut ctl_w = Some(ctl_w);

    let mut stdout = child.stdout.take().map(OwnedFd::from);
    let mut stderr = child.stderr.take().map(OwnedFd::from);
    let mut status_pipe = Some(status_r);
    for fd in [&stdout, &stderr].into_iter().flatten() {
        set_nonblocking(fd.as_raw_fd())?;
    }
    set_nonblocking(status_pipe.as_ref().expect("just set").as_raw_fd())?;
    let mut out = Tail::default();
    let mut err = Tail::default();
    let mut report = Vec::with_capacity(STATUS_LEN);

    let deadline = start + opts.timeout;
    let mut killed_at: Option<Instant> = None;
    loop {
        pump(&mut stdout, &mut out);
        pump(&mut stderr, &mut err);
        pump_into(&mut status_pipe, &mut report);
        // EOF on the status pipe: the supervisor reported and exited (or died).
        if status_pipe.is_none() {
            break;
        }
        let now = Instant::now();
        if killed_at.is_none() && now >= deadline {
            // Closing the control pipe tells the supervisor to kill the whole tree.
            ctl_w = None;
            killed_at = Some(now);
        }
        let wake = match killed_at {
            Some(t) if now >= t + KILL_GRACE => {
                // The supervisor is stuck; killing it fires G's parent-death signal.
                let _ = child.kill();
                break;
            }
            Some(t) => t + KILL_GRACE,
            None => deadline,
        };
        poll_readable(
            &[&stdout, &stderr, &status_pipe],
            wake.saturating_duration_since(now),
        );
    }
    drop(ctl_w);
    child.wait().context("waiting for the sandbox supervisor")?;
    let drain_until = Instant::now() + DRAIN_GRACE;
    while stdout.is_some() || stderr.is_some() {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        poll_readable(&[&stdout, &stderr], drain_until - now);
        pump(&mut stdout, &mut out);
        pump(&mut stderr, &mut err);
    }
    let duration = start.elapsed();
    Ok(classify(
        killed_at.is_some(),
        &report,
        opts,
        &out,
        &err,
        duration,
    ))
}

fn classify(
    timed_out: bool,
    report: &[u8],
    opts: &SandboxOptions,
    out: &Tail,
    err: &Tail,
    duration: Duration,
) -> RunOutcome {
    let decoded = (report.len() == STATUS_LEN).then(|| {
        let wait = i32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
        let cpu_us = u64::from_ne_bytes(report[4..].try_into().expect("8 bytes"));
        (wait, cpu_us)
    });
    let (status, why) = match decoded {
        _ if timed_out => (
            "timeout",
            format!("timed out after {:.1} s", opts.timeout.as_secs_f64()),
        ),
        None => (
            "error",
            "the sandbox supervisor ended without reporting".to_string(),
        ),
        Some((wait, _)) if libc::WIFEXITED(wait) && libc::WEXITSTATUS(wait) == 0 => {
            match &opts.end_marker {
                Some(m) if !marker_written(out, m) => (
                    "failed",
                    "exit status 0 before the tests ran to their end (no end marker on stdout)".to_string(),
                ),
                _ => ("passed", String::new()),
            }
        }
        Some((wait, _)) if libc::WIFEXITED(wait) => {
            ("failed", format!("exit status {}", libc::WEXITSTATUS(wait)))
        }
        Some((wait, cpu_us)) if libc::WIFSIGNALED(wait) => {
            let sig = libc::WTERMSIG(wait);
            // As PID 1 of its namespace the program ignores SIGXCPU, so the CPU limit shows as the hard limit's SIGKILL.
            let cpu_limit = sig == libc::SIGXCPU
                || (sig == libc::SIGKILL && cpu_us >= opts.cpu_seconds.saturating_mul(1_000_000));
            if cpu_limit {
                (
                    "timeout",
                    format!("CPU time limit of {} s exceeded", opts.cpu_seconds),
                )
            } else {
                ("failed", format!("killed by {}", signal_name(sig)))
            }
        }
        Some((wait, _)) => ("failed", format!("ended with wait status {wait:#x}")),
    };
    let passed = status == "passed";
    let stream = if err.total == 0 && !passed { out } else { err };
    let tail = tail_text(stream);
    let detail = match (why.is_empty(), tail.is_empty()) {
        (true, _) => tail,
        (false, true) => why,
        (false, false) => format!("{why}\n{tail}"),
    };
    RunOutcome {
        passed,
        status: status.into(),
        detail,
        duration,
    }
}

/// Whether `marker` is a whole line of the program's stdout (its last 64 KiB).
fn marker_written(out: &Tail, marker: &str) -> bool {
    String::from_utf8_lossy(out.bytes()).lines().any(|l| l == marker)
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        _ => return format!("signal {sig}"),
    };
    format!("{name} (signal {sig})")
}

/// The last lines of a stream, at most `DETAIL_LINES` lines and `DETAIL_BYTES` bytes.
fn tail_text(tail: &Tail) -> String {
    let text = String::from_utf8_lossy(tail.bytes());
    let text = text.trim_end();
    let mut start = 0;
    if let Some((i, _)) = text.rmatch_indices('\n').nth(DETAIL_LINES - 1) {
        start = i + 1;
    }
    if text.len() - start > DETAIL_BYTES {
        start = text.len() - DETAIL_BYTES;
        while !text.is_char_boundary(start) {
            start += 1;
        }
    }
    let truncated = start > 0 || tail.total > tail.bytes().len() as u64;
    if truncated {
        format!("…{}", &text[start..])
    } else {
        text.to_string()
    }
}

/// The most recent `STREAM_CAP` bytes of a stream, so a flood can't exhaust memory.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    total: u64,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        // Trimming only at twice the cap keeps the copying amortised.
        if self.buf.len() > 2 * STREAM_CAP {
            let cut = self.buf.len() - STREAM_CAP;
            self.buf.drain(..cut);
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.buf.len().saturating_sub(STREAM_CAP)..]
    }
}

/// Reads what is available; closes the pipe at EOF.
fn pump(pipe: &mut Option<OwnedFd>, tail: &mut Tail) {
    let mut buf = [0u8; 16 * 1024];
    while let Some(fd) = pipe {
        match read_fd(fd, &mut buf) {
            Ok(0) => *pipe = None,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => *pipe = None,
        }
    }
}

fn pump_into(pipe: &mut Option<OwnedFd>, out: &mut Vec<u8>) {
    let mut buf = [0u8; 64];
    while let Some(fd) = pipe {
        match read_fd(fd, &mut buf) {
            Ok(0) => *pipe = None,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => *pipe = None,
        }
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // `File` would take ownership; borrow the descriptor for one read instead.
    let mut file =
        std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) });
    file.read(buf)
}

fn poll_readable(pipes: &[&Option<OwnedFd>], wait: Duration) {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .filter_map(|p| p.as_ref())
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    if fds.is_empty() {
        std::thread::sleep(wait.min(Duration::from_millis(10)));
        return;
    }
    // Errors (EINTR) just mean another round of the caller's loop.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("creating a pipe for the sandbox");
    }
    // SAFETY: pipe2 just returned these two new descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error()).context("making a sandbox pipe non-blocking");
    }
    Ok(())
}

fn resolve_python(python: &Path) -> Result<PathBuf> {
    if python.components().count() > 1 {
        // The program's working directory differs from ours, so relative paths must be made absolute.
        let path = std::path::absolute(python)?;
        if !path.is_file() {
            bail!("python interpreter {} not found", path.display());
        }
        return Ok(path);
    }
    // Looked up where the sandbox looks, not on our PATH: shims (pyenv) need the environment we scrub
    // and often live in directories the sandbox uid cannot read.
    for dir in SANDBOX_PATH.split(':') {
        let candidate = Path::new(dir).join(python);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "python interpreter `{}` not found on the sandbox PATH {SANDBOX_PATH}; set the sandbox's python to an absolute path",
        python.display()
    )
}

/// A uid of its own per run, so runs neither share a process count nor can reach each other's files.
fn next_uid() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // The process id keeps concurrent evaluations on one machine apart; 256 slots each.
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) & 0xFF;
    UID_BASE + ((std::process::id() & 0xFFFF) << 8) + slot
}

/// Tasks (threads) this real uid already runs: RLIMIT_NPROC counts them all.
fn user_tasks() -> u64 {
    let me = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut tasks = 0;
    for entry in entries.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(me as u64) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

/// Removes the run's directory; a program may have left directories without write permission.
fn remove_tree(dir: tempfile::TempDir) {
    let path = dir.path().to_path_buf();
    if dir.close().is_ok() {
        return;
    }
    fn open_up(path: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(&path);
    if let Err(e) = std::fs::remove_dir_all(&path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a sandbox directory");
    }
}

// ---------------------------------------------------------------------------
// The forked side. Everything below runs between fork and exec of a
// multi-threaded process: raw system calls only, no allocation, no locks.

#[derive(Clone, Copy)]
struct Limits {
    address_space: u64,
    cpu_seconds: u64,
    processes: u64,
    file_bytes: u64,
    open_files: u64,
}

struct ChildSetup {
    iso: Isolation,
    /// Read end of the control pipe: readable or closed means "kill now".
    ctl: RawFd,
    /// Write end of the status pipe: G's wait status and CPU time go here.
    status: RawFd,
    root: CString,
    proc_: CString,
    work: CString,
    limits: Limits,
    uid: Option<u32>,
}

/// Wait status (i32) then CPU microseconds (u64), native endian.
const STATUS_LEN: usize = 12;

impl ChildSetup {
    /// Runs in the supervisor I; returns only in the program G, which then execs.
    fn run(&self) -> io::Result<()> {
        unsafe {
            // Out of the evaluator's process group: a terminal's ^C goes to the evaluator,
            // which then closes the control pipe, instead of killing runs half-way.
            check(libc::setpgid(0, 0))?;
            if self.iso.user_ns {
                check(libc::unshare(libc::CLONE_NEWUSER))?;
            }
            let mut flags = 0;
            if self.iso.net_ns {
                flags |= libc::CLONE_NEWNET;
            }
            if self.iso.pid_ns {
                flags |= libc::CLONE_NEWPID;
            }
            if self.iso.mount_ns {
                flags |= libc::CLONE_NEWNS;
            }
            if flags != 0 {
                check(libc::unshare(flags))?;
            }
            if self.iso.mount_ns {
                seal_mounts(&self.root, &self.work)?;
            }
            let g = libc::fork();
            if g < 0 {
                return Err(io::Error::last_os_error());
            }
            if g == 0 {
                return self.program();
            }
            self.supervise(g)
        }
    }

    /// In G: becomes the program.
    unsafe fn program(&self) -> io::Result<()> {
        // Its own session and group, so one kill(-pgid) reaches every descendant
        // even without a PID namespace.
        check(libc::setsid())?;
        if self.iso.pid_ns && self.iso.mount_ns {
            // A /proc of the new PID namespace: other processes' command lines and
            // environments are not even listed. Best effort (user namespaces may refuse).
            libc::mount(
                c"proc".as_ptr(),
                self.proc_.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
        }
        // The cwd inherited from before the bind mount would still be the read-only view.
        check(libc::chdir(self.work.as_ptr()))?;
        mark_cloexec_from(3);
        let l = self.limits;
        set_limit(libc::RLIMIT_AS, l.address_space, l.address_space)?;
        // SIGXCPU at the soft limit, SIGKILL one second later.
        set_limit(libc::RLIMIT_CPU, l.cpu_seconds, l.cpu_seconds + 1)?;
        set_limit(libc::RLIMIT_NPROC, l.processes, l.processes)?;
        set_limit(libc::RLIMIT_FSIZE, l.file_bytes, l.file_bytes)?;
        set_limit(libc::RLIMIT_NOFILE, l.open_files, l.open_files)?;
        set_limit(libc::RLIMIT_CORE, 0, 0)?;
        if let Some(uid) = self.uid {
            drop_privileges(uid)?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        // Set after the uid change, which clears it: if the supervisor dies, so does the program.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        Ok(())
    }

    /// In I: waits for G or for the parent's kill order, then reports. Never returns.
    unsafe fn supervise(&self, g: libc::pid_t) -> ! {
        // Copies of descriptors of other runs in flight (and our stdio) would keep their pipes open.
        close_all_except(self.ctl, self.status);
        let pidfd = libc::syscall(libc::SYS_pidfd_open, g, 0) as RawFd;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.ctl,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let (n, timeout) = if pidfd >= 0 { (2, -1) } else { (1, 10) };
            libc::poll(fds.as_mut_ptr(), n, timeout);
            if fds[0].revents != 0 {
                break;
            }
            // G stays a zombie (WNOWAIT), so its pid, and with it the process
            // group id, cannot be reused before the kill below.
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                g as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r == 0 && info.si_pid() != 0 {
                break;
            }
            if r != 0 && *libc::__errno_location() != libc::EINTR {
                break;
            }
        }
        // Stragglers of G's group (a no-op when the PID namespace already took them).
        libc::kill(-g, libc::SIGKILL);
        libc::kill(g, libc::SIGKILL);
        let mut wait = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        while libc::wait4(g, &mut wait, 0, &mut usage) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        let cpu_us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
        let cpu = cpu_us(usage.ru_utime) + cpu_us(usage.ru_stime);
        let mut msg = [0u8; STATUS_LEN];
        msg[..4].copy_from_slice(&wait.to_ne_bytes());
        msg[4..].copy_from_slice(&cpu.to_ne_bytes());
        libc::write(self.status, msg.as_ptr().cast(), msg.len());
        libc::_exit(0)
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

unsafe fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    check(libc::setrlimit(resource, &lim))
}

unsafe fn drop_privileges(uid: u32) -> io::Result<()> {
    check(libc::setgroups(0, std::ptr::null()))?;
    check(libc::setresgid(uid, uid, uid))?;
    check(libc::setresuid(uid, uid, uid))
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;

/// In a fresh mount namespace: every mount read-only, then `work` writable on top.
unsafe fn seal_mounts(root: &CString, work: &CString) -> io::Result<()> {
    // Private first, or the changes below would propagate to the host's mounts.
    check(libc::mount(
        std::ptr::null(),
        root.as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ))?;
    mount_setattr(
        root,
        libc::AT_RECURSIVE as libc::c_uint,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
        0,
    )?;
    // The bind mount copies the read-only flag of the mount it comes from; clear it on this one only.
    check(libc::mount(
        work.as_ptr(),
        work.as_ptr(),
        std::ptr::null(),
        libc::MS_BIND,
        std::ptr::null(),
    ))?;
    mount_setattr(work, 0, 0, MOUNT_ATTR_RDONLY)
}

unsafe fn mount_setattr(
    path: &CString,
    flags: libc::c_uint,
    set: u64,
    clear: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let r = libc::syscall(
        libc::SYS_mount_setattr,
        libc::AT_FDCWD,
        path.as_ptr(),
        flags,
        &attr as *const MountAttr,
        std::mem::size_of::<MountAttr>(),
    );
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Descriptors the evaluator leaked without O_CLOEXEC must not reach the program.
unsafe fn mark_cloexec_from(first: libc::c_uint) {
    let r = libc::syscall(
        libc::SYS_close_range,
        first,
        libc::c_uint::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    );
    if r == 0 {
        return;
    }
    for fd in first as RawFd..max_fd() {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

unsafe fn close_all_except(a: RawFd, b: RawFd) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let ranges = [(0, lo - 1), (lo + 1, hi - 1), (hi + 1, RawFd::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        let r = libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        );
        if r != 0 {
            for fd in first..=last.min(max_fd()) {
                libc::close(fd);
            }
        }
    }
}

unsafe fn max_fd() -> RawFd {
    let mut lim: libc::rlimit = std::mem::zeroed();
    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
        return 1024;
    }
    lim.rlim_cur.min(1 << 16) as RawFd
}
