//! Progress of long loops (training steps, eval completions, prepared bytes),
//! one style for every subcommand: a bar when stderr is a terminal, otherwise
//! a log line through `tracing` (target `l2d::progress`, shown at the default
//! level) every few seconds, so that runs under `nohup`, a log file or Slurm
//! say how far they are.

use std::time::{Duration, Instant};

/// How progress is shown; the CLI decides and passes it down.
#[derive(Debug, Clone, Copy)]
pub struct ProgressMode {
    /// Draw a bar (stderr is a terminal) instead of log lines.
    pub terminal: bool,
    /// Seconds between log lines when there is no bar; 0 logs none.
    pub every: Duration,
}

impl ProgressMode {
    /// Neither bar nor log lines (library callers and tests).
    pub fn quiet() -> Self {
        Self { terminal: false, every: Duration::ZERO }
    }
}

/// The tracing target of progress lines; `RUST_LOG=l2d::progress=off` silences them.
pub const TARGET: &str = "l2d::progress";

/// One loop's progress: `done` of `total` units.
pub struct Progress {
    mode: ProgressMode,
    bar: indicatif::ProgressBar,
    label: String,
    unit: &'static str,
    total: u64,
    done: u64,
    /// Units done before this process started (a resumed run): not part of the rate.
    first: u64,
    started: Instant,
    last_line: Instant,
    message: String,
}

impl Progress {
    /// Starts at `done` of `total` `unit`s, e.g. `Progress::new(mode, "train", "steps", 100, 0)`.
    pub fn new(mode: ProgressMode, label: impl Into<String>, unit: &'static str, total: u64, done: u64) -> Self {
        let label = label.into();
        let bar = if mode.terminal {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!("{{prefix}} {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  eta {{eta}}"))
                    .expect("a valid template"),
            );
            bar.set_prefix(label.clone());
            bar.set_position(done);
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let now = Instant::now();
        Self { mode, bar, label, unit, total, done, first: done, started: now, last_line: now, message: String::new() }
    }

    /// Sets the units done and the free-text part of the line (loss, rates).
    pub fn update(&mut self, done: u64, message: impl Into<String>) {
        self.done = done;
        self.message = message.into();
        self.bar.set_position(done);
        self.bar.set_message(self.message.clone());
        if !self.mode.terminal && !self.mode.every.is_zero() && self.last_line.elapsed() >= self.mode.every {
            self.log_line();
        }
    }

    /// Adds `n` units done, keeping the message.
    pub fn inc(&mut self, n: u64) {
        self.set_done(self.done + n);
    }

    /// Sets the units done, keeping the message.
    pub fn set_done(&mut self, done: u64) {
        let message = std::mem::take(&mut self.message);
        self.update(done, message);
    }

    /// Sets the free-text part of the next line.
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
        self.bar.set_message(self.message.clone());
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Seconds since this process started the loop.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Clears the bar; without one, logs the final state (so a log always
    /// says how a loop ended, however short it was).
    pub fn finish(mut self) {
        self.bar.finish_and_clear();
        if !self.mode.terminal && !self.mode.every.is_zero() {
            self.log_line();
        }
    }

    fn log_line(&mut self) {
        self.last_line = Instant::now();
        tracing::info!(target: TARGET, "{}", self.line());
    }

    /// `label: done/total unit (pct%), rate unit/s, eta 1h02m03s[, message]`.
    fn line(&self) -> String {
        let secs = self.elapsed_s().max(1e-9);
        let rate = (self.done.saturating_sub(self.first)) as f64 / secs;
        let pct = if self.total > 0 { 100.0 * self.done as f64 / self.total as f64 } else { 0.0 };
        let eta = match self.total.checked_sub(self.done) {
            Some(left) if rate > 0.0 => clock(left as f64 / rate),
            _ => "?".into(),
        };
        let mut line = format!("{}: {}/{} {} ({pct:.0}%), {} {}/s, eta {eta}", self.label, self.done, self.total, self.unit, rate_text(rate), self.unit);
        if !self.message.is_empty() {
            line.push_str(", ");
            line.push_str(&self.message);
        }
        line
    }
}

fn rate_text(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.2}")
    }
}

/// `1h02m03s`, `4m05s` or `6s`.
pub fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_states_count_rate_and_eta() {
        let mut p = Progress::new(ProgressMode::quiet(), "train", "steps", 100, 20);
        p.started = Instant::now() - Duration::from_secs(10);
        p.update(40, "loss 0.5000");
        // 20 steps in 10 s since this process started: 2 steps/s, 60 left -> 30 s.
        let line = p.line();
        assert!(line.starts_with("train: 40/100 steps (40%), 2."), "{line}");
        assert!(line.contains("steps/s, eta 30s, loss 0.5000"), "{line}");
        assert_eq!(clock(3723.0), "1h02m03s");
        assert_eq!(clock(245.0), "4m05s");
    }
}
