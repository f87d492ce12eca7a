//! Error kinds that decide the process exit code.

use std::fmt;

/// A mistake in the user's flags, config or input files: exit code 2.
///
/// Wrap the message in this type at the point where the cause is known to be
/// the user's; everything else is a runtime failure (exit code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds an `anyhow::Error` that exits with code 2.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Returns `Err(usage(..))` from the enclosing function.
#[macro_export]
macro_rules! bail_usage {
    ($($arg:tt)*) => {
        return Err($crate::error::usage(format!($($arg)*)))
    };
}

/// Exit code for an error chain: 2 if any cause is a [`UsageError`], else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// Whether the failure was a write into a pipe whose reader has gone (EPIPE).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// One line for the user: the contexts and the root cause joined by ": ".
pub fn one_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    let mut line = String::new();
    for part in parts {
        // `anyhow` repeats a wrapped message in its source; print each once.
        if !line.contains(&part) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&part);
        }
    }
    line.replace('\n', " ")
}

/// Turns an error into a [`UsageError`] carrying `context` in front of it.
pub trait OrUsage<T> {
    /// Maps the error to `usage("{context}: {error}")`.
    fn or_usage(self, context: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E: fmt::Display> OrUsage<T> for Result<T, E> {
    fn or_usage(self, context: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| usage(format!("{}: {e}", context())))
    }
}
